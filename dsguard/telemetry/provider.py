"""The OpenTelemetry SDK providers of ``[telemetry]``: Prometheus scrape, optional OTLP push.

Each guard owns its meter and tracer providers (and its own Prometheus registry). With
``global_providers`` they also become OpenTelemetry's global providers, unless the process
already has SDK ones, so instruments created through the OpenTelemetry API (the runner's on the
meter ``dsguard.runner``, the app's) are exported with dsguard's. ``services.meter_provider``
hands them to components built with the guard.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
from urllib.parse import urlsplit

from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from prometheus_client import CollectorRegistry

from ..config import Config, TelemetryConfig
from ..errors import ConfigError
from .instruments import CallMetrics
from .labels import RouteNames
from .otlp import CallMetricsExporter, ExporterMissing, otlp_exporters
from .prometheus import CallMetricsCollector

logger = logging.getLogger("dsguard.telemetry")


@dataclasses.dataclass(eq=False)
class TelemetryProviders:
    settings: TelemetryConfig
    meter_provider: MeterProvider
    tracer_provider: TracerProvider
    call_metrics: CallMetrics
    registry: CollectorRegistry | None
    span_processors: list[SpanProcessor] = dataclasses.field(default_factory=list)
    global_meters: bool = False
    global_tracers: bool = False
    stopped: list[MeterProvider | TracerProvider] = dataclasses.field(default_factory=list)

    def add_span_processor(self, processor: SpanProcessor) -> None:
        """Send the guard's spans, and those made with :attr:`tracer_provider`, to ``processor``."""
        self.span_processors.append(processor)
        self.tracer_provider.add_span_processor(processor)

    def shutdown(self, *, at_exit: bool = False) -> None:
        """Flush and stop the exporters. Providers installed as OpenTelemetry's global ones serve
        the whole process: they are only flushed here, and stopped at interpreter exit."""
        for provider, process_wide in ((self.tracer_provider, self.global_tracers),
                                       (self.meter_provider, self.global_meters)):
            if provider in self.stopped:
                continue
            try:
                if process_wide and not at_exit:
                    provider.force_flush()
                else:
                    self.stopped.append(provider)
                    provider.shutdown()
            except Exception:
                logger.exception("telemetry exporter did not shut down cleanly")
        if len(self.stopped) == 2:
            atexit.unregister(self.stop_at_exit)

    def stop_at_exit(self) -> None:
        self.shutdown(at_exit=True)


def _error(config: Config, key: str, message: str) -> ConfigError:
    return config.error(message, "telemetry", key)


def check_settings(config: Config, settings: TelemetryConfig) -> None:
    """Refuse settings that cannot work, naming the key and line."""
    paths = {"health_path": settings.health_path, "ready_path": settings.ready_path}
    if settings.prometheus:
        paths["metrics_path"] = settings.metrics_path
    seen: dict[str, str] = {}
    for key, path in paths.items():
        if not path:
            continue
        if not path.startswith("/"):
            raise _error(config, key, f'expected a path starting with "/", got {path!r}')
        if path in seen:
            raise _error(config, key, f"{path!r} is already the {seen[path]}")
        seen[path] = key
    if not 0.0 <= settings.trace_sample_ratio <= 1.0:
        raise _error(config, "trace_sample_ratio", f"expected a number from 0 to 1, got {settings.trace_sample_ratio}")
    if settings.otlp_endpoint:
        parts = urlsplit(settings.otlp_endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _error(config, "otlp_endpoint", 'expected an http(s) URL like "http://otel-collector:4318"')
    if settings.otlp_interval <= 0:
        raise _error(config, "otlp_interval", "expected a duration above zero")
    try:
        RouteNames(settings.routes)
    except ValueError as exc:
        raise _error(config, "routes", str(exc)) from None


def install_globals(providers: TelemetryProviders) -> None:
    if not isinstance(metrics.get_meter_provider(), MeterProvider):
        metrics.set_meter_provider(providers.meter_provider)
        providers.global_meters = True
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(providers.tracer_provider)
        providers.global_tracers = True


def open_providers(config: Config) -> TelemetryProviders | None:
    """The providers of ``[telemetry]``, or ``None`` without that section."""
    settings = config.telemetry
    if settings is None:
        return None
    check_settings(config, settings)
    resource = Resource.create({"service.name": settings.service_name})
    call_metrics = CallMetrics()
    readers: list[MetricReader] = []
    registry = None
    if settings.prometheus:
        registry = CollectorRegistry()
        readers.append(PrometheusMetricReader(registry=registry))
        registry.register(CallMetricsCollector(call_metrics))
    span_exporter = None
    if settings.otlp_endpoint:
        try:
            span_exporter, metric_exporter = otlp_exporters(settings.otlp_endpoint)
        except ExporterMissing as exc:
            raise _error(config, "otlp_endpoint", str(exc)) from None
        readers.append(PeriodicExportingMetricReader(CallMetricsExporter(metric_exporter, call_metrics, resource),
                                                     export_interval_millis=settings.otlp_interval * 1000))
    providers = TelemetryProviders(
        settings,
        MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False),
        TracerProvider(resource=resource, sampler=TraceIdRatioBased(settings.trace_sample_ratio),
                       shutdown_on_exit=False),
        call_metrics, registry)
    if span_exporter is not None and settings.traces:
        providers.add_span_processor(BatchSpanProcessor(span_exporter))
    atexit.register(providers.stop_at_exit)
    if settings.global_providers:
        install_globals(providers)
    return providers
