"""Online baselines (streaming median and MAD) and the score built on them, cold start included."""

from __future__ import annotations

import random

import pytest

from dsguard.anomaly.baseline import Baseline, Stat
from dsguard.anomaly.features import FEATURE_NAMES, FLOORS
from dsguard.anomaly.scorer import Scorer

SPAN = 5000


def learned(values: list[float], floor: float = 0.1) -> Stat:
    stat = Stat()
    for value in values:
        stat.learn(value, floor, SPAN)
    return stat


def population(rates: list[float], routes: float = 0.7) -> Baseline:
    baseline = Baseline()
    for rate in rates:
        baseline.learn({"rate": rate, "routes": routes, "denial_ratio": 0.0}, 10, FLOORS, SPAN)
    return baseline


def ordinary_rates(count: int = 2000, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(1.0, 0.5) for _ in range(count)]


def scorer(**overrides: object) -> Scorer:
    settings: dict[str, object] = {"threshold": 8.0, "warmup": 100, "identity_warmup": 20, "min_requests": 5}
    settings.update(overrides)
    return Scorer(FEATURE_NAMES, **settings)  # type: ignore[arg-type]


def test_median_and_scaled_mad_settle_on_normal_data() -> None:
    rng = random.Random(2)
    stat = learned([rng.gauss(5.0, 2.0) for _ in range(5000)])
    assert stat.center == pytest.approx(5.0, abs=0.2)
    assert stat.scale == pytest.approx(2.0, rel=0.15)


def test_a_fifth_of_extreme_values_barely_moves_the_median() -> None:
    rng = random.Random(3)
    values = [rng.gauss(0.0, 1.0) if rng.random() < 0.8 else 50.0 for _ in range(5000)]
    stat = learned(values)
    assert abs(stat.center) < 0.5  # a mean would sit near 10
    assert stat.scale < 2.5


def test_the_floor_bounds_the_spread_of_a_feature_that_never_varied() -> None:
    stat = learned([0.0] * 500, floor=0.05)
    assert stat.scale == 0.0
    assert stat.deviation(0.5, 0.05) == pytest.approx(10.0)


def test_a_baseline_survives_its_stored_form() -> None:
    baseline = population(ordinary_rates(50))
    restored = Baseline.from_fields(baseline.to_fields(), FEATURE_NAMES)
    assert restored == baseline


def test_nothing_is_scored_before_the_population_warmup() -> None:
    cold = population(ordinary_rates(99))
    score = scorer().score({"rate": 40.0, "routes": 9.0}, cold, Baseline(), requests=500)
    assert not score.ready
    assert not score.anomalous
    assert score.learnable


def test_a_caller_with_fewer_than_min_requests_is_not_scored() -> None:
    warm = population(ordinary_rates())
    assert not scorer().score({"rate": 40.0}, warm, Baseline(), requests=4).anomalous
    assert scorer().score({"rate": 40.0, "routes": 9.0}, warm, Baseline(), requests=5).anomalous


def test_a_feature_still_in_its_own_warmup_does_not_count() -> None:
    warm = population(ordinary_rates())
    for _ in range(50):
        warm.learn({"regularity": 0.5}, 10, FLOORS, SPAN)
    score = scorer().score({"rate": 1.0, "regularity": -3.0}, warm, Baseline(), requests=50)
    assert score.ready
    assert score.value == 0.0


def test_deviations_combine_into_a_score_with_the_largest_reasons_first() -> None:
    warm = population(ordinary_rates())
    score = scorer().score({"rate": 3.0, "routes": 5.0, "denial_ratio": 0.0}, warm, Baseline(), requests=50)
    assert score.anomalous
    assert score.reasons == ("routes", "rate")
    assert not score.learnable


def test_a_value_on_the_harmless_side_adds_nothing() -> None:
    warm = population(ordinary_rates())
    assert scorer().score({"rate": -5.0, "routes": 0.0}, warm, Baseline(), requests=50).value == 0.0


def test_rate_alone_never_reaches_the_threshold() -> None:
    warm = population(ordinary_rates())
    score = scorer().score({"rate": 100.0}, warm, Baseline(), requests=5000)
    assert score.value == pytest.approx(6.0)
    assert not score.anomalous


def test_a_callers_own_history_excuses_what_it_always_did() -> None:
    warm = population(ordinary_rates())
    heavy = Baseline()
    for _ in range(30):
        heavy.learn({"rate": 3.5, "routes": 3.0}, 10, FLOORS, 200)
    values = {"rate": 3.5, "routes": 3.0}
    assert scorer().score(values, warm, Baseline(), requests=50).anomalous
    assert not scorer().score(values, warm, heavy, requests=50).anomalous


def test_a_callers_own_history_is_consulted_only_after_its_warmup() -> None:
    warm = population(ordinary_rates())
    brief = Baseline()
    for _ in range(19):
        brief.learn({"rate": 3.5, "routes": 3.0}, 10, FLOORS, 200)
    assert scorer().score({"rate": 3.5, "routes": 3.0}, warm, brief, requests=50).anomalous


def test_disabled_features_are_not_scored() -> None:
    warm = population(ordinary_rates())
    only_rate = Scorer(("rate",), threshold=8.0, warmup=100, identity_warmup=20, min_requests=5)
    assert only_rate.score({"rate": 3.0, "routes": 9.0}, warm, Baseline(), requests=50).reasons == ("rate",)
