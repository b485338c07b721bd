"""Anomaly scores and sanctions as OpenTelemetry instruments, for dashboards and alerts on API abuse.

``dsguard.anomaly.score`` (histogram, attribute ``dsguard.anomalous``) receives every scoring of a call
once the baselines are warm (the bucket bounded by the threshold also holds scores equal to it, which are
anomalous: the attribute tells them apart); ``dsguard.anomaly.sanctions`` (counter, attribute
``dsguard.reason``) counts the anomalous scorings once per reason: a held caller is scored, and counted,
on each of its calls. Attributes are bounded: the reasons are feature names (or ``model``), never a
caller's key, address or identity.
"""

from __future__ import annotations

from opentelemetry.metrics import MeterProvider

from .scorer import Score

SCORE = "dsguard.anomaly.score"
SANCTIONS = "dsguard.anomaly.sanctions"
_BUCKET_SHARES = (0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)
"""Histogram bounds as shares of the threshold: resolution around it, where alerts are set."""


class AnomalyMetrics:
    """Records each score handed to the anomaly check's listener."""

    def __init__(self, meter_provider: MeterProvider, threshold: float) -> None:
        meter = meter_provider.get_meter("dsguard.anomaly")
        self.scores = meter.create_histogram(
            SCORE, unit="1", description="Anomaly scores of callers (at or above the threshold: anomalous).",
            explicit_bucket_boundaries_advisory=[share * threshold for share in _BUCKET_SHARES])
        self.sanctions = meter.create_counter(
            SANCTIONS, unit="{sanction}", description="Anomalous scorings of calls, counted once per reason.")

    def record(self, score: Score) -> None:
        if not score.ready:
            return
        self.scores.record(score.value, {"dsguard.anomalous": score.anomalous})
        if score.anomalous:
            for reason in score.reasons or ("unknown",):
                self.sanctions.add(1, {"dsguard.reason": reason})
