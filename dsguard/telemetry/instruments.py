"""dsguard's own metrics: what each call recorded, and counters read from the checks.

Per call (aggregated in process, see :mod:`dsguard.telemetry.aggregate`):

- ``dsguard.requests`` {decision, code, route}: calls by decision (``allow``, ``deny``, ``report``:
  a report-mode check would have denied), the denial code (``none`` when allowed) and route.
- ``dsguard.guard.duration`` {decision, route}: seconds spent in the checks (``Server-Timing``).
- ``dsguard.check.duration`` {check}: seconds per check.
- ``dsguard.rate_limit.hits`` {check, code}: calls a rate limit or token quota refused.
- ``http.server.request.duration`` {http.request.method, http.route, http.response.status_code}:
  from the first check to the end of the response (OpenTelemetry HTTP semantic conventions).

Read when collected (OpenTelemetry observable counters on the meter ``dsguard``):

- ``dsguard.policy.reload_errors`` / ``dsguard.policy.reloads``: the policy check's counters.
- ``dsguard.rate_limit.fallbacks``: calls limited per process while the shared storage was down.

Fed by the audit log (meter ``dsguard.audit``; exported at 0 until it exists): ``dsguard.audit.drops``,
records it could not write, and ``dsguard.audit.chain_failures``, hash-chain verification failures.
It gets them with :func:`audit_instruments` from ``services.meter_provider``.

The runner's queue depth and the GenAI semantic-convention histograms are its own instruments on
the meter ``dsguard.runner``, exported through the same providers.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Sequence
from time import time_ns
from typing import Any

from opentelemetry.metrics import CallbackOptions, Counter, Meter, MeterProvider, Observation

from .aggregate import CounterTable, HistogramTable, MetricSpec

REQUESTS = MetricSpec("dsguard.requests", "dsguard_requests", "{request}",
                      "Calls decided by the guard, by decision, denial code and route.", ("decision", "code", "route"))
GUARD_DURATION = MetricSpec("dsguard.guard.duration", "dsguard_guard_duration_seconds", "s",
                            "Time spent in the guard's checks per call.", ("decision", "route"))
CHECK_DURATION = MetricSpec("dsguard.check.duration", "dsguard_check_duration_seconds", "s",
                            "Time spent in each check.", ("check",))
RATE_LIMIT_HITS = MetricSpec("dsguard.rate_limit.hits", "dsguard_rate_limit_hits", "{request}",
                             "Calls refused by a rate limit or token quota.", ("check", "code"))
HTTP_DURATION = MetricSpec("http.server.request.duration", "http_server_request_duration_seconds", "s",
                           "Duration of HTTP server requests.",
                           ("http.request.method", "http.route", "http.response.status_code"))

CHECK_BOUNDS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0)
HTTP_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
RATE_LIMIT_CODES = frozenset({"rate_limited", "token_quota_exceeded", "token_request_too_large"})

AUDIT_DROPS = "dsguard.audit.drops"
AUDIT_CHAIN_FAILURES = "dsguard.audit.chain_failures"


class CallMetrics:
    """The per-call tables, updated together under one lock (WSGI servers record from many threads)."""

    def __init__(self) -> None:
        self.requests = CounterTable(REQUESTS)
        self.rate_limit_hits = CounterTable(RATE_LIMIT_HITS)
        self.guard_duration = HistogramTable(GUARD_DURATION, CHECK_BOUNDS)
        self.check_duration = HistogramTable(CHECK_DURATION, CHECK_BOUNDS)
        self.http_duration = HistogramTable(HTTP_DURATION, HTTP_BOUNDS)
        self.started_ns = time_ns()
        self.lock = threading.Lock()

    @property
    def counters(self) -> tuple[CounterTable, ...]:
        return self.requests, self.rate_limit_hits

    @property
    def histograms(self) -> tuple[HistogramTable, ...]:
        return self.guard_duration, self.check_duration, self.http_duration

    def record(self, decision: str, code: str, route: str, method: str, status: int,
               timings: Sequence[tuple[str, int]], elapsed: float | None, limited: Iterable[tuple[str, str]]) -> None:
        guard_ns = 0
        with self.lock:
            observe = self.check_duration.observe
            for name, duration in timings:
                guard_ns += duration
                observe((name,), duration / 1e9)
            self.requests.add((decision, code, route))
            self.guard_duration.observe((decision, route), guard_ns / 1e9)
            if elapsed is not None:
                self.http_duration.observe((method, route, str(status)), elapsed)
            for check, limit_code in limited:
                self.rate_limit_hits.add((check, limit_code))


def observe_checks(meter: Meter, checks: Sequence[Any]) -> None:
    """Observable counters over what the policy and rate-limit checks count themselves."""
    policies = [c for c in checks if hasattr(c, "reload_errors")]
    limiters = list({id(getattr(c, "limiter", c)): c for c in checks if hasattr(c, "fallbacks")}.values())
    if policies:
        def reload_errors(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(sum(check.reload_errors for check in policies))]

        def reloads(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(sum(check.reloads for check in policies))]

        meter.create_observable_counter("dsguard.policy.reload_errors", [reload_errors], unit="{reload}",
                                        description="Policy reloads that failed (the last good policy stayed).")
        meter.create_observable_counter("dsguard.policy.reloads", [reloads], unit="{reload}",
                                        description="Policies swapped in by a reload.")
    if limiters:
        def fallbacks(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(sum(check.fallbacks for check in limiters))]

        meter.create_observable_counter("dsguard.rate_limit.fallbacks", [fallbacks], unit="{request}",
                                        description="Calls limited per process while the shared storage was down.")


@dataclasses.dataclass(frozen=True)
class AuditInstruments:
    drops: Counter
    chain_failures: Counter


def audit_instruments(meter_provider: MeterProvider) -> AuditInstruments:
    """The audit log's counters (the same instruments on every call with the same provider)."""
    meter = meter_provider.get_meter("dsguard.audit")
    return AuditInstruments(
        meter.create_counter(AUDIT_DROPS, unit="{record}", description="Audit records that could not be written."),
        meter.create_counter(AUDIT_CHAIN_FAILURES, unit="{verification}",
                             description="Audit hash-chain verifications that failed."),
    )
