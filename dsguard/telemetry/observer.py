"""What ``[telemetry]`` adds to a guard: per-call metrics and spans, and the endpoints it answers.

Everything is recorded by one after-response hook from what the pipeline already keeps (the
checks' timings, the denial, the response status), so the checks run exactly as without
telemetry. Without ``[telemetry]`` none of this module is imported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from time import time_ns

from opentelemetry.sdk.trace import SpanProcessor

from ..checks.base import Check
from ..config import Config, TelemetryConfig
from ..context import AfterHook, RequestContext, ResponseInfo
from ..guard import DENIAL_CODE
from ..pipeline import Pipeline
from ..services import Services
from ..types import Mode
from ..units import NetworkSet
from .endpoints import Endpoint
from .health import Liveness, Readiness, ReadinessEndpoint, policy_probe, storage_probe
from .instruments import RATE_LIMIT_CODES, audit_instruments, observe_checks
from .labels import RouteNames, method_name
from .prometheus import MetricsEndpoint
from .provider import TelemetryProviders
from .timing import STARTED_NS, ObservedPipeline
from .tracing import CallTracer


class Telemetry:
    def __init__(self, config: Config, providers: TelemetryProviders, services: Services,
                 checks: Sequence[Check]) -> None:
        settings = providers.settings
        self.settings = settings
        self.providers = providers
        self.routes = RouteNames(settings.routes)
        self.metrics = providers.call_metrics if settings.prometheus or settings.otlp_endpoint else None
        self.tracer = None
        if settings.traces:
            self.tracer = CallTracer(providers.span_processors, providers.tracer_provider.resource,
                                     settings.trace_sample_ratio, settings.trace_context,
                                     NetworkSet(config.server.trusted_proxies))
        observe_checks(providers.meter_provider.get_meter("dsguard"), checks)
        audit = audit_instruments(providers.meter_provider)
        audit.drops.add(0)
        audit.chain_failures.add(0)
        readiness = services.readiness
        readiness.register("storage", storage_probe(services.storage))
        policies = [check for check in checks if hasattr(check, "reload_errors")]
        if policies:
            readiness.register("policy", policy_probe(policies))
        self.endpoints = self._endpoints(config, settings, readiness)

    def _endpoints(self, config: Config, settings: TelemetryConfig, readiness: Readiness) -> dict[str, Endpoint]:
        endpoints: dict[str, Endpoint] = {}
        if settings.health_path:
            endpoints[settings.health_path] = Liveness()
        if settings.ready_path:
            endpoints[settings.ready_path] = ReadinessEndpoint(readiness, settings.ready_timeout)
        registry = self.providers.registry
        if registry is not None:
            token = None
            if settings.metrics_token is not None:
                try:
                    token = settings.metrics_token.reveal()
                    if not token:
                        raise LookupError(f"the metrics token is empty ({settings.metrics_token.source})")
                except LookupError as exc:
                    raise config.error(str(exc), "telemetry", "metrics_token") from None
            endpoints[settings.metrics_path] = MetricsEndpoint(registry, token)
        return endpoints

    @property
    def tracing(self) -> bool:
        """Whether spans are made: traces on, and an exporter or processor to take them."""
        return self.tracer is not None and bool(self.providers.span_processors)

    def add_span_processor(self, processor: SpanProcessor) -> None:
        """Send the guard's spans to ``processor`` too (an exporter of the app's, a test's in-memory one)."""
        self.providers.add_span_processor(processor)

    def pipeline(self, checks: Iterable[Check], *, mode: Mode, body_limit: int, check_timeout: float | None,
                 after_hooks: Iterable[AfterHook]) -> Pipeline:
        return ObservedPipeline(checks, mode=mode, body_limit=body_limit, check_timeout=check_timeout,
                                after_hooks=[*after_hooks, self.record], server_timing=self.settings.server_timing,
                                on_start=self.tracer.begin if self.tracer is not None else None)

    def record(self, ctx: RequestContext, response: ResponseInfo) -> None:
        """The after-response hook: one call into the metrics and, when tracing, one span tree."""
        status = response.status
        if status is None:
            if response.disconnected:
                return
            status = 500
        end_ns = time_ns()
        attributes = ctx.attributes
        started: int | None = attributes.get(STARTED_NS)
        denied_by = response.denied_by
        limited: list[tuple[str, str]] = []
        if denied_by is not None:
            decision, code = "deny", str(attributes.get(DENIAL_CODE, "unknown"))
            if code in RATE_LIMIT_CODES:
                limited.append((denied_by, code))
        elif ctx.denials_reported:
            decision, code = "report", ctx.denials_reported[0].code
            limited += [(d.check or "unknown", d.code) for d in ctx.denials_reported if d.code in RATE_LIMIT_CODES]
        else:
            decision, code = "allow", "none"
        route = self.routes(ctx.path)
        method = method_name(ctx.method)
        if self.metrics is not None:
            elapsed = None if started is None else (end_ns - started) / 1e9
            self.metrics.record(decision, code, route, method, status, ctx.timings, elapsed, limited)
        if self.tracer is not None and started is not None and self.providers.span_processors:
            self.tracer.record(ctx, method=method, route=route, status=status, decision=decision, code=code,
                               denied_by=denied_by, start_ns=started, end_ns=end_ns)

    def shutdown(self) -> None:
        self.providers.shutdown()

