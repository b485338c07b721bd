"""OTLP/HTTP export, with the per-call tables sent alongside the SDK's own metrics.

opentelemetry-exporter-otlp-proto-http is imported only when ``otlp_endpoint`` is set; without
it the configuration is refused with the package to install.
"""

from __future__ import annotations

from time import time_ns
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from .aggregate import MetricSpec
from .instruments import CallMetrics

PACKAGE = "opentelemetry-exporter-otlp-proto-http"


class ExporterMissing(ImportError):
    """The OTLP exporter package is not installed."""


def otlp_exporters(endpoint: str) -> tuple[SpanExporter, MetricExporter]:
    """Span and metric exporters posting to ``endpoint``/v1/traces and ``endpoint``/v1/metrics."""
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ExporterMissing(f"otlp_endpoint needs the {PACKAGE} package (pip install {PACKAGE})") from None
    base = endpoint.rstrip("/")
    return OTLPSpanExporter(endpoint=f"{base}/v1/traces"), OTLPMetricExporter(endpoint=f"{base}/v1/metrics")


def _attributes(spec: MetricSpec, labels: tuple[str, ...]) -> dict[str, str]:
    return dict(zip(spec.attributes, labels, strict=True))


class CallMetricsExporter(MetricExporter):
    """Passes each export to ``inner`` with the per-call tables added as cumulative metrics."""

    def __init__(self, inner: MetricExporter, metrics: CallMetrics, resource: Resource) -> None:
        super().__init__()
        self.inner = inner
        self.metrics = metrics
        self.resource = resource
        self.scope = InstrumentationScope("dsguard")

    def call_metrics(self) -> ScopeMetrics:
        metrics = self.metrics
        start, now = metrics.started_ns, time_ns()
        found: list[Metric] = []
        with metrics.lock:
            counters = [(table.spec, table.snapshot()) for table in metrics.counters]
            histograms = [(table.spec, table.bounds, table.snapshot()) for table in metrics.histograms]
        for spec, values in counters:
            sums = [NumberDataPoint(_attributes(spec, labels), start, now, value) for labels, value in values]
            found.append(Metric(spec.name, spec.description, spec.unit, Sum(sums, AggregationTemporality.CUMULATIVE,
                                                                            is_monotonic=True)))
        for spec, bounds, points in histograms:
            data = [HistogramDataPoint(_attributes(spec, labels), start, now, point.count, point.total, point.counts,
                                       bounds, point.low, point.high) for labels, point in points]
            found.append(Metric(spec.name, spec.description, spec.unit,
                                Histogram(data, AggregationTemporality.CUMULATIVE)))
        return ScopeMetrics(self.scope, found, "")

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        ours = self.call_metrics()
        resources = list(metrics_data.resource_metrics) if metrics_data is not None else []
        if resources:
            first = resources[0]
            resources[0] = ResourceMetrics(first.resource, [*first.scope_metrics, ours], first.schema_url)
        else:
            resources = [ResourceMetrics(self.resource, [ours], "")]
        return self.inner.export(MetricsData(resources), timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)
