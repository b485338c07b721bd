"""An optional trained model: scikit-learn's IsolationForest, exported to ONNX, run on onnxruntime.

:func:`train` fits the forest on feature vectors of normal traffic (as :func:`dsguard.anomaly.
features.vector` computes them), exports it with skl2onnx and stores in the file's metadata the
feature order and a threshold: the ``quantile`` of the training vectors' scores. scikit-learn and
skl2onnx are needed for training only; serving needs onnxruntime alone.

A forest isolates only as far as its training data reaches: a value beyond every training value
is no more isolated than the most extreme training value, so "far outside" would score like "at
the edge". Training therefore adds a sparse uniform background (``background`` times the number
of vectors) over the training range widened by ``margin`` ranges on each side: the trees get
splits out there, and the farther out a caller is, the shorter its path. The threshold is taken
on the real vectors only.

The score is the negated ``decision_function`` of the forest (higher is more anomalous; 0 is
scikit-learn's own boundary with ``contamination="auto"``). Unmeasured features take their
``neutral`` value.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .features import BY_NAME, FEATURE_NAMES, Values

FEATURES_KEY = "dsguard.features"
THRESHOLD_KEY = "dsguard.threshold"


class ModelError(ValueError):
    """The model file is missing, unreadable, or not a dsguard anomaly model."""


def matrix(vectors: Iterable[Values], features: Sequence[str]) -> Any:
    """Rows of feature values in ``features`` order, unmeasured ones at their neutral value."""
    neutral = [BY_NAME[name].neutral for name in features]
    rows = [[v if (v := values.get(name)) is not None else n for name, n in zip(features, neutral, strict=True)]
            for values in vectors]
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(features))


def train(vectors: Sequence[Values], path: str | Path, *, features: Sequence[str] = FEATURE_NAMES,
          n_estimators: int = 100, max_samples: int = 256, quantile: float = 0.999, background: float = 0.05,
          margin: float = 1.0, seed: int = 0) -> Path:
    """Fit an IsolationForest on ``vectors`` (normal traffic) and write it to ``path`` as ONNX."""
    from skl2onnx import to_onnx
    from sklearn.ensemble import IsolationForest

    unknown = [name for name in features if name not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown features: {', '.join(unknown)}")
    data = matrix(vectors, features)
    if len(data) < 2:
        raise ValueError("training needs at least two vectors")
    low, high = data.min(axis=0), data.max(axis=0)
    reach = margin * np.maximum(high - low, 1.0)
    rng = np.random.default_rng(seed)
    spread = rng.uniform(low - reach, high + reach, size=(int(len(data) * background), data.shape[1]))
    forest = IsolationForest(n_estimators=n_estimators, max_samples=min(max_samples, len(data)),
                             random_state=seed).fit(np.vstack([data, spread.astype(np.float32)]))
    threshold = float(np.quantile(-forest.decision_function(data), quantile))
    onnx_model = to_onnx(forest, data[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    for key, value in ((FEATURES_KEY, json.dumps(list(features))), (THRESHOLD_KEY, repr(threshold))):
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, value
    path = Path(path)
    path.write_bytes(onnx_model.SerializeToString())
    return path


class IsolationForestModel:
    """A model file loaded for scoring (one thread: the forest is small, and calls are single rows)."""

    def __init__(self, path: str | Path, *, threshold: float | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            raise ModelError(f"cannot load anomaly model {path}: {type(exc).__name__}") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        try:
            features = json.loads(metadata[FEATURES_KEY])
            stored = float(metadata[THRESHOLD_KEY])
        except (KeyError, ValueError):
            raise ModelError(f"{path} was not written by dsguard.anomaly.model.train") from None
        if not isinstance(features, list) or not all(name in BY_NAME for name in features):
            raise ModelError(f"{path} names features this version does not compute")
        self.features: tuple[str, ...] = tuple(features)
        self.threshold = stored if threshold is None else threshold
        self._input = self.session.get_inputs()[0].name
        outputs = [output.name for output in self.session.get_outputs()]
        self._output = "scores" if "scores" in outputs else outputs[-1]

    def scores(self, vectors: Iterable[Values]) -> Any:
        """Scores of many vectors at once (higher is more anomalous)."""
        result = self.session.run([self._output], {self._input: matrix(vectors, self.features)})[0]
        return -np.asarray(result, dtype=np.float64).reshape(-1)

    def score(self, values: Values) -> float:
        return float(self.scores([values])[0])
