"""An optional ONNX text classifier for prompt injection, from a directory the operator provides.

The directory holds ``model.onnx`` (inputs ``input_ids`` and ``attention_mask``, and
``token_type_ids`` if the model takes it; output: logits, one per label) and ``tokenizer.json``
(Hugging Face tokenizers). An optional ``config.json`` names the labels (``id2label``), so the
injection label can be chosen by name; without it the label is an index, or the last one.
A long text is classified by its first and last ``max_tokens`` tokens; the higher probability wins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from tokenizers import Tokenizer

from ..errors import DSGuardError


class ClassifierError(DSGuardError):
    """The classifier directory is missing a file, or its model or labels cannot be used."""


def _label_index(directory: Path, label: str, labels: int) -> int:
    config_file = directory / "config.json"
    names: dict[int, str] = {}
    if config_file.is_file():
        try:
            raw = json.loads(config_file.read_text(encoding="utf-8")).get("id2label") or {}
            names = {int(k): str(v) for k, v in raw.items()}
        except (ValueError, AttributeError) as exc:
            raise ClassifierError(f"{config_file}: cannot read id2label ({exc})") from None
    for index, name in names.items():
        if name.lower() == label.lower():
            return index
    if label.isdigit() and int(label) < labels:
        return int(label)
    if names:
        known = ", ".join(names[i] for i in sorted(names))
        raise ClassifierError(f"{config_file}: no label {label!r} (labels: {known})")
    return labels - 1


class InjectionClassifier:
    def __init__(self, directory: Path, *, label: str = "INJECTION", max_tokens: int = 512) -> None:
        model_file, tokenizer_file = directory / "model.onnx", directory / "tokenizer.json"
        for required in (model_file, tokenizer_file):
            if not required.is_file():
                raise ClassifierError(f"{required} is missing")
        try:
            self.session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
            self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # onnxruntime and tokenizers raise their own untyped errors
            raise ClassifierError(f"{directory}: cannot load the classifier ({exc})") from None
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.max_tokens = max_tokens
        self.inputs = {i.name: i.type for i in self.session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - set(self.inputs)
        if missing:
            raise ClassifierError(f"{model_file}: the model has no input {sorted(missing)[0]!r}")
        shape = self.session.get_outputs()[0].shape
        labels = shape[-1] if shape and isinstance(shape[-1], int) else 2
        self.labels = labels
        self.index = _label_index(directory, label, labels)

    def _windows(self, texts: list[str]) -> list[list[int]]:
        windows = []
        for encoding in self.tokenizer.encode_batch(texts):
            ids = encoding.ids
            windows.append(ids[: self.max_tokens])
            if len(ids) > self.max_tokens:
                windows.append(ids[-self.max_tokens:])
        return windows

    def probability(self, texts: list[str]) -> float:
        """The highest probability of the injection label over ``texts`` (0.0 for none)."""
        windows = [w for w in self._windows([t for t in texts if t.strip()]) if w]
        if not windows:
            return 0.0
        width = max(len(w) for w in windows)
        dtype = np.int32 if self.inputs["input_ids"] == "tensor(int32)" else np.int64
        ids = np.zeros((len(windows), width), dtype=dtype)
        mask = np.zeros((len(windows), width), dtype=dtype)
        for row, window in enumerate(windows):
            ids[row, : len(window)] = window
            mask[row, : len(window)] = 1
        feeds: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        logits = np.asarray(self.session.run(None, feeds)[0], dtype=np.float64).reshape(len(windows), -1)
        if logits.shape[1] == 1:
            probabilities = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        else:
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            probabilities = (shifted / shifted.sum(axis=1, keepdims=True))[:, self.index]
        return float(probabilities.max())
