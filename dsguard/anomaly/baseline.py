"""Online baselines: what normal looks like, per feature, for the population and for each caller.

Each feature keeps robust statistics (:class:`Stat`): a streaming median and a streaming median
absolute deviation (scaled by 1.4826 to read as a standard deviation under normal data). Steps
shrink as ``1/(n+1)`` over the first observations and then stay at ``1/span``, so the baseline
settles fast and then follows slow drift. Robustness matters here: a steady bot is active day and
night and contributes far more observations than any person, and a mean and variance would drift
toward it (and hide it and its kind); a median and MAD move only as far as the bots' share
requires, and callers scored anomalous are not learned from at all. The spread is never taken
below the feature's floor, so a feature that was constant so far (no denials ever) does not make
every change infinite.

The hour-of-day histogram is an exponentially weighted share per hour (summing to 1).

The Redis store runs the same arithmetic in Lua (:mod:`dsguard.anomaly.redis`); both serialize
a baseline to the same flat fields (``n``, ``h0``..``h23``, ``<feature>:n|c|s``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping

STEP = 1.5
MAD_SCALE = 1.4826
HOURS = 24
UNIFORM_SHARE = 0.1
IDENTITY_HOUR_PRIOR = 20


def _weight(count: int, span: int) -> float:
    return max(1 / (count + 1), 1 / span)


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


@dataclasses.dataclass(slots=True)
class Stat:
    """One feature's running median (``center``) and scaled median absolute deviation (``scale``).

    Both are streaming quantile estimates: each observation moves them a step toward itself,
    ``STEP * weight * spread`` long, whatever its size, so an outlier weighs no more than any
    other value and contamination below half barely moves them.
    """

    count: int = 0
    center: float = 0.0
    scale: float = 0.0

    def spread(self, floor: float) -> float:
        return max(self.scale, floor)

    def learn(self, value: float, floor: float, span: int) -> None:
        if self.count == 0:
            self.center = value
        else:
            step = STEP * _weight(self.count, span) * self.spread(floor)
            self.center += step * _sign(value - self.center)
            self.scale = max(0.0, self.scale + step * _sign(MAD_SCALE * abs(value - self.center) - self.scale))
        self.count += 1

    def deviation(self, value: float, floor: float) -> float:
        """How many spreads ``value`` lies above the median (negative below)."""
        return (value - self.center) / self.spread(floor)


@dataclasses.dataclass(slots=True)
class Baseline:
    """The learned behaviour of the population, or of one caller."""

    observations: int = 0
    hours: list[float] = dataclasses.field(default_factory=lambda: [0.0] * HOURS)
    stats: dict[str, Stat] = dataclasses.field(default_factory=dict)

    def learn(self, values: Mapping[str, float | None], hour: int, floors: Mapping[str, float], span: int) -> None:
        alpha = _weight(self.observations, span)
        hours = self.hours
        for h in range(HOURS):
            hours[h] *= 1 - alpha
        hours[hour] += alpha
        for name, value in values.items():
            if value is not None:
                stat = self.stats.get(name)
                if stat is None:
                    stat = self.stats[name] = Stat()
                stat.learn(value, floors[name], span)
        self.observations += 1

    def stat(self, name: str) -> Stat | None:
        return self.stats.get(name)

    def hour_share(self, hour: int) -> float | None:
        """Share of past activity in ``hour``, mixed with a uniform share; ``None`` before any."""
        total = sum(self.hours)
        if total <= 0:
            return None
        return (1 - UNIFORM_SHARE) * self.hours[hour] / total + UNIFORM_SHARE / HOURS

    def to_fields(self) -> dict[str, str]:
        fields = {"n": repr(self.observations)}
        fields.update((f"h{h}", repr(share)) for h, share in enumerate(self.hours))
        for name, stat in self.stats.items():
            fields[f"{name}:n"] = repr(stat.count)
            fields[f"{name}:c"] = repr(stat.center)
            fields[f"{name}:s"] = repr(stat.scale)
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[str, str | bytes], names: Iterable[str]) -> Baseline:
        def number(key: str) -> float:
            value = fields.get(key)
            return float(value) if value is not None else 0.0

        baseline = cls(observations=int(number("n")), hours=[number(f"h{h}") for h in range(HOURS)])
        for name in names:
            count = int(number(f"{name}:n"))
            if count:
                baseline.stats[name] = Stat(count, number(f"{name}:c"), number(f"{name}:s"))
        return baseline


def hour_surprise(hour: int, population: Baseline, identity: Baseline) -> float | None:
    """``-ln p(hour)``: the caller's own hour histogram, trusted as it fills, blended with the population's."""
    share = population.hour_share(hour)
    if share is None:
        return None
    own = identity.hour_share(hour)
    if own is not None:
        trust = identity.observations / (identity.observations + IDENTITY_HOUR_PRIOR)
        share = trust * own + (1 - trust) * share
    return -math.log(share)
