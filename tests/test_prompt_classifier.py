"""The optional ONNX injection classifier, with a tiny model and tokenizer built here (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from dsguard import GuardMiddleware
from dsguard.checks import prompt
from dsguard.errors import ConfigError
from dsguard.promptguard.classifier import ClassifierError, InjectionClassifier
from dsguard.services import Services
from dsguard.storage.memory import MemoryStorage

from .helpers import OPEN_HTTP, InProcess, config, starlette_app

TRIGGER = "zorblax"  # a word the heuristics know nothing about; the model calls it an injection


def build_classifier(directory: Path, *, labels: dict[int, str] | None = None) -> Path:
    """A bag-of-words model: logits = [1, 0] + sum of each token's row; TRIGGER's row is [0, 10]."""
    vocab = {"[UNK]": 0, TRIGGER: 1, "hello": 2, "please": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(directory / "tokenizer.json"))
    embeddings = np.zeros((len(vocab), 2), dtype=np.float32)
    embeddings[1] = [0.0, 10.0]
    nodes = [
        helper.make_node("Gather", ["embeddings", "input_ids"], ["per_token"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_float"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_float", "last_axis"], ["mask_3d"]),
        helper.make_node("Mul", ["per_token", "mask_3d"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "sequence_axis"], ["summed"], keepdims=0),
        helper.make_node("Add", ["summed", "bias"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny-injection-classifier",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(embeddings, "embeddings"),
                     numpy_helper.from_array(np.array([1.0, 0.0], dtype=np.float32), "bias"),
                     numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
                     numpy_helper.from_array(np.array([1], dtype=np.int64), "sequence_axis")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(directory / "model.onnx"))
    labels = {0: "SAFE", 1: "INJECTION"} if labels is None else labels
    (directory / "config.json").write_text(json.dumps({"id2label": {str(k): v for k, v in labels.items()}}))
    return directory


def chat(text: str) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": text}]}


def test_classifier_scores_the_trigger_as_an_injection(tmp_path: Path) -> None:
    classifier = InjectionClassifier(build_classifier(tmp_path))
    assert classifier.probability([f"hello {TRIGGER} please"]) > 0.99
    assert classifier.probability(["hello please"]) < 0.5


def test_a_long_text_is_judged_by_its_end_too(tmp_path: Path) -> None:
    classifier = InjectionClassifier(build_classifier(tmp_path), max_tokens=8)
    assert classifier.probability(["hello " * 50 + TRIGGER]) > 0.99


def test_the_injection_label_is_found_by_name(tmp_path: Path) -> None:
    classifier = InjectionClassifier(build_classifier(tmp_path, labels={0: "JAILBREAK", 1: "BENIGN"}),
                                     label="jailbreak")
    assert classifier.probability(["hello please"]) > 0.5


def test_an_unknown_label_names_the_labels_there_are(tmp_path: Path) -> None:
    with pytest.raises(ClassifierError, match="labels: SAFE, INJECTION"):
        InjectionClassifier(build_classifier(tmp_path), label="MALICIOUS")


def test_a_directory_without_a_model_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    cfg = config(OPEN_HTTP + f'[prompt_guard]\nclassifier = "{tmp_path}"\n')
    with pytest.raises(ConfigError, match=r"\[prompt_guard\] classifier: .*model.onnx is missing"):
        prompt.build(cfg, Services(cfg, MemoryStorage()))


def test_the_guard_refuses_what_only_the_classifier_catches(tmp_path: Path) -> None:
    build_classifier(tmp_path)
    app = GuardMiddleware(starlette_app(), config=config(OPEN_HTTP + f'[prompt_guard]\nclassifier = "{tmp_path}"\n'))
    client = InProcess(app)
    refused = client.post("/whoami", json=chat(f"please {TRIGGER} now"))
    admitted = client.post("/whoami", json=chat("hello please"))
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "prompt_injection")
    assert "injection classifier" in refused.json()["error"]["message"]
    assert admitted.status_code == 200


def test_the_classifier_reads_untrusted_roles_only(tmp_path: Path) -> None:
    build_classifier(tmp_path)
    section = f'[prompt_guard]\nclassifier = "{tmp_path}"\ninjection_trusted_roles = ["system"]\n'
    app = GuardMiddleware(starlette_app(), config=config(OPEN_HTTP + section))
    body = {"messages": [{"role": "system", "content": TRIGGER}, {"role": "user", "content": "hello"}]}
    assert InProcess(app).post("/whoami", json=body).status_code == 200
