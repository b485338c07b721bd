"""Counters and histograms aggregated in process, cheap enough to update on every call.

An OpenTelemetry SDK instrument costs several microseconds per measurement (attribute
normalisation, hashing, locks); a call records half a dozen. These tables cost a dictionary
lookup and an increment each, and are read only when a scraper or the OTLP exporter asks
(:mod:`dsguard.telemetry.prometheus`, :mod:`dsguard.telemetry.otlp`). A table holds at most
``max_series`` label sets; further ones are counted under ``("other", ...)``, so an attacker who
finds an unbounded label cannot exhaust memory.
"""

from __future__ import annotations

import dataclasses
import math
from bisect import bisect_left
from collections.abc import Sequence

Labels = tuple[str, ...]
MAX_SERIES = 2000


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One metric: its OpenTelemetry name, unit and attributes, and its Prometheus name."""

    name: str
    prometheus: str
    unit: str
    description: str
    attributes: tuple[str, ...]


class CounterTable:
    """A monotonic sum per label set."""

    __slots__ = ("max_series", "spec", "values")

    def __init__(self, spec: MetricSpec, *, max_series: int = MAX_SERIES) -> None:
        self.spec = spec
        self.max_series = max_series
        self.values: dict[Labels, int] = {}

    def add(self, labels: Labels, amount: int = 1) -> None:
        values = self.values
        if labels in values:
            values[labels] += amount
        elif len(values) < self.max_series:
            values[labels] = amount
        else:
            overflow = ("other",) * len(labels)
            values[overflow] = values.get(overflow, 0) + amount

    def snapshot(self) -> list[tuple[Labels, int]]:
        return list(self.values.items())


@dataclasses.dataclass(slots=True)
class HistogramPoint:
    """Counts per bucket (``counts[i]``: values up to ``bounds[i]``, the last one above all bounds)."""

    counts: list[int]
    total: float = 0.0
    count: int = 0
    low: float = math.inf
    high: float = -math.inf

    def copy(self) -> HistogramPoint:
        return HistogramPoint(list(self.counts), self.total, self.count, self.low, self.high)


class HistogramTable:
    """Explicit-bucket histograms per label set (OpenTelemetry and Prometheus bucket semantics)."""

    __slots__ = ("bounds", "max_series", "series", "spec")

    def __init__(self, spec: MetricSpec, bounds: Sequence[float], *, max_series: int = MAX_SERIES) -> None:
        self.spec = spec
        self.bounds = tuple(sorted(bounds))
        self.max_series = max_series
        self.series: dict[Labels, HistogramPoint] = {}

    def observe(self, labels: Labels, value: float) -> None:
        point = self.series.get(labels)
        if point is None:
            point = self._new(labels)
        point.counts[bisect_left(self.bounds, value)] += 1
        point.total += value
        point.count += 1
        if value < point.low:
            point.low = value
        if value > point.high:
            point.high = value

    def _new(self, labels: Labels) -> HistogramPoint:
        if len(self.series) >= self.max_series:
            labels = ("other",) * len(labels)
            existing = self.series.get(labels)
            if existing is not None:
                return existing
        point = self.series[labels] = HistogramPoint([0] * (len(self.bounds) + 1))
        return point

    def snapshot(self) -> list[tuple[Labels, HistogramPoint]]:
        return [(labels, point.copy()) for labels, point in self.series.items()]
