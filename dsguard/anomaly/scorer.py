"""Feature deviations combined into one score, with the features that drove it as reasons.

For each scored feature, the deviation is how many spreads (scaled MADs) the caller's value lies
on the anomalous side of the population baseline's median (0 on the other side), capped at the
feature's ``cap``: ``rate`` at 6 and ``time_of_day`` at 3, so that neither alone reaches the
default threshold (8): a high rate alone is the rate limiter's business, an odd hour alone is
no abuse. Once the caller's own baseline has ``identity_warmup`` observations of that feature, the
deviation is the smaller of the two: a caller is anomalous in a feature only when it is unusual
both for the population and for itself. The score is the root of the summed squares;
``reasons`` name the features at least :data:`REASON_DEVIATION` spreads out, largest first.

Cold start: until the population baseline has ``warmup`` observations, or the caller has fewer
than ``min_requests`` calls in the window, the score is not *ready* and never anomalous; a
feature whose own population statistics have fewer than ``warmup`` observations does not count.

Baselines learn only from observations that are not anomalous (``learnable``): a caller found
anomalous is not taught to the population or to its own baseline, where it would hide itself
and others like it.

With a trained model (:mod:`dsguard.anomaly.model`), the model's score decides instead and the
deviations still supply the reasons (``("model",)`` when none stands out) and gate learning.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Protocol

from .baseline import Baseline
from .features import BY_NAME, Feature, Values

REASON_DEVIATION = 3.0


class Model(Protocol):
    threshold: float

    def score(self, values: Values) -> float:
        """Higher is more anomalous."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class Score:
    value: float
    reasons: tuple[str, ...]
    anomalous: bool
    ready: bool
    learnable: bool = True


NOT_READY = Score(0.0, (), anomalous=False, ready=False)


class Scorer:
    def __init__(self, features: Sequence[str], *, threshold: float, warmup: int, identity_warmup: int,
                 min_requests: int, model: Model | None = None) -> None:
        self.features: tuple[Feature, ...] = tuple(BY_NAME[name] for name in features)
        self.threshold = threshold
        self.warmup = warmup
        self.identity_warmup = identity_warmup
        self.min_requests = min_requests
        self.model = model

    def ready(self, population: Baseline, requests: int) -> bool:
        return population.observations >= self.warmup and requests >= self.min_requests

    def deviations(self, values: Values, population: Baseline, identity: Baseline) -> dict[str, float]:
        found = {}
        for feature in self.features:
            value = values.get(feature.name)
            stat = population.stat(feature.name)
            if value is None or stat is None or stat.count < self.warmup:
                continue
            deviation = feature.direction * stat.deviation(value, feature.floor)
            own = identity.stat(feature.name)
            if own is not None and own.count >= self.identity_warmup:
                deviation = min(deviation, feature.direction * own.deviation(value, feature.floor))
            if deviation > 0:
                found[feature.name] = min(deviation, feature.cap)
        return found

    def score(self, values: Values, population: Baseline, identity: Baseline, requests: int) -> Score:
        if not self.ready(population, requests):
            return NOT_READY
        deviations = self.deviations(values, population, identity)
        ranked = sorted(deviations.items(), key=lambda item: -item[1])
        reasons = tuple(name for name, deviation in ranked if deviation >= REASON_DEVIATION)
        value = math.sqrt(sum(d * d for d in deviations.values()))
        if self.model is None:
            anomalous = value >= self.threshold
            return Score(value, reasons, anomalous, ready=True, learnable=not anomalous)
        decision = self.model.score(values)
        anomalous = decision >= self.model.threshold
        return Score(decision, reasons or ("model",), anomalous, ready=True,
                     learnable=not anomalous and value < self.threshold)
