"""The Prometheus scrape endpoint: dsguard's per-call tables and every OpenTelemetry instrument.

The OpenTelemetry instruments (the runner's, the checks' observable counters, the app's when
the providers are global) reach the exposition through opentelemetry-exporter-prometheus; the
per-call tables through :class:`CallMetricsCollector`. Both are registered in a registry of
this guard's own, not prometheus_client's global one.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, exposition, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from ..decision import Unauthenticated
from .endpoints import READ_METHODS, Answer, answer, denial_answer, method_not_allowed
from .instruments import CallMetrics

# The classic text format (what generate_latest writes with its default escaping), understood by every Prometheus.
CONTENT_TYPE = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST).encode()


def label_names(attributes: tuple[str, ...]) -> list[str]:
    return [name.replace(".", "_") for name in attributes]


class CallMetricsCollector:
    """Renders :class:`CallMetrics` as Prometheus counter and histogram families."""

    def __init__(self, metrics: CallMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        with metrics.lock:
            counters = [(table.spec, table.snapshot()) for table in metrics.counters]
            histograms = [(table.spec, table.bounds, table.snapshot()) for table in metrics.histograms]
        for spec, values in counters:
            counter = CounterMetricFamily(spec.prometheus, spec.description, labels=label_names(spec.attributes))
            for labels, value in values:
                counter.add_metric(list(labels), value)
            yield counter
        for spec, bounds, points in histograms:
            histogram = HistogramMetricFamily(spec.prometheus, spec.description, labels=label_names(spec.attributes))
            for labels, point in points:
                cumulative, buckets = 0, []
                for bound, count in zip(bounds, point.counts, strict=False):
                    cumulative += count
                    buckets.append((repr(float(bound)), cumulative))
                buckets.append(("+Inf", point.count))
                histogram.add_metric(list(labels), buckets, point.total)
            yield histogram


def bearer_matches(authorization: str | None, token: str) -> bool:
    if authorization is None:
        return False
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if not credentials or not token:
        return False
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.encode(), token.encode())


class MetricsEndpoint:
    """``GET /metrics``: the exposition of ``registry``, behind ``token`` when one is configured."""

    def __init__(self, registry: CollectorRegistry, token: str | None) -> None:
        self.registry = registry
        self.token = token

    async def __call__(self, method: str, authorization: str | None) -> Answer:
        if method not in READ_METHODS:
            return method_not_allowed(method)
        if self.token is not None and not bearer_matches(authorization, self.token):
            return denial_answer(method, Unauthenticated("the metrics endpoint needs its bearer token",
                                                         code="metrics_token_required", realm="metrics"))
        return answer(method, 200, CONTENT_TYPE, generate_latest(self.registry))
