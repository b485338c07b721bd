"""The optional trained model: an IsolationForest exported to ONNX with skl2onnx, run on onnxruntime."""

from __future__ import annotations

import json
import random
from pathlib import Path

import onnx
import pytest

from dsguard.anomaly.features import FEATURE_NAMES, Vector
from dsguard.anomaly.model import FEATURES_KEY, THRESHOLD_KEY, IsolationForestModel, train

from .test_anomaly_check import (
    Caller,
    Scorings,
    SimClock,
    anomaly_section,
    build_checks,
    ordinary_traffic,
    scrape,
    served,
    warm_up,
)

pytest.importorskip("sklearn", reason="training needs scikit-learn (the dev extra)")
pytest.importorskip("skl2onnx", reason="exporting the forest needs skl2onnx (the dev extra)")

TREES = 25  # skl2onnx's export time grows fast with the number of trees


def ordinary_vectors(count: int = 600, seed: int = 3) -> list[Vector]:
    rng = random.Random(seed)
    return [{"rate": rng.gauss(1.2, 0.3), "denial_ratio": abs(rng.gauss(0, 0.02)), "tokens": rng.gauss(6.5, 0.6),
             "max_tokens": rng.gauss(6.2, 0.5), "prompt_length": rng.gauss(5.5, 0.6), "routes": 0.69,
             "models": 0.69, "ips": 0.69, "time_of_day": rng.gauss(2.5, 0.5), "regularity": rng.gauss(0.4, 0.25)}
            for _ in range(count)]


def test_a_trained_forest_scores_an_outlier_above_its_threshold_and_ordinary_calls_below(tmp_path: Path) -> None:
    vectors = ordinary_vectors()
    model = IsolationForestModel(train(vectors, tmp_path / "forest.onnx", quantile=0.99, n_estimators=TREES))
    outlier = {**vectors[0], "rate": 4.5, "denial_ratio": 0.9, "tokens": 2.0, "max_tokens": 10.0,
               "prompt_length": 9.0, "time_of_day": 5.0, "regularity": -2.5}
    assert model.score(outlier) >= model.threshold
    held_out = ordinary_vectors(200, seed=4)
    assert sum(score >= model.threshold for score in model.scores(held_out)) <= 10


def test_the_model_file_records_its_feature_order_and_threshold(tmp_path: Path) -> None:
    path = train(ordinary_vectors(), tmp_path / "forest.onnx", features=("rate", "routes"), quantile=0.9,
                 n_estimators=TREES)
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(metadata[FEATURES_KEY]) == ["rate", "routes"]
    assert IsolationForestModel(path).threshold == pytest.approx(float(metadata[THRESHOLD_KEY]))
    assert IsolationForestModel(path, threshold=0.3).threshold == 0.3


def test_unmeasured_features_take_their_neutral_value(tmp_path: Path) -> None:
    model = IsolationForestModel(train(ordinary_vectors(), tmp_path / "forest.onnx", n_estimators=TREES))
    partial = {name: value for name, value in ordinary_vectors(1)[0].items() if name != "regularity"}
    assert model.score(partial) == pytest.approx(model.score({**partial, "regularity": 0.0488}), abs=1e-3)


def test_training_refuses_unknown_features(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown features: mood"):
        train(ordinary_vectors(), tmp_path / "forest.onnx", features=("rate", "mood"))


def test_scraping_burst_after_warmup_is_blocked_by_the_model(tmp_path: Path) -> None:
    clock, scorings = SimClock(), Scorings()
    warm_up(build_checks(anomaly_section("flag"), clock, scorings), clock, ordinary_traffic())
    path = train([s.values for s in scorings.seen if s.score.ready], tmp_path / "forest.onnx", quantile=1.0,
                 n_estimators=TREES)

    clock, scorings = SimClock(), Scorings()
    checks = build_checks(anomaly_section("block", f'model = "{path}"\n'), clock, scorings)
    warm_up(checks, clock, ordinary_traffic())
    assert not any(s.score.anomalous for s in scorings.seen)
    with served(checks) as url:
        responses = scrape(Caller(url, clock, scorings, "good mallory"), 40)
    statuses = [r.status_code for r in responses]
    assert statuses[:5] == [200] * 5
    assert statuses[-1] == 403
    verdict = next(s.score for s in scorings.of("sub:mallory") if s.score.anomalous)
    assert verdict.value >= IsolationForestModel(path).threshold
    assert set(verdict.reasons) <= {*FEATURE_NAMES, "model"}


def test_a_caller_far_beyond_the_training_range_scores_higher_than_one_at_its_edge(tmp_path: Path) -> None:
    vectors = ordinary_vectors()
    model = IsolationForestModel(train(vectors, tmp_path / "forest.onnx", n_estimators=TREES))
    edge = max(v["rate"] or 0.0 for v in vectors)
    ordinary = vectors[0]
    assert model.score({**ordinary, "rate": edge + 3.0}) > model.score({**ordinary, "rate": edge}) + 0.02
