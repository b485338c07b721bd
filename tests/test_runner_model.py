"""The bundled tiny DeepSeek-R1-Distill-Qwen model: its ONNX graphs against a numpy reference, and its cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from dsguard.runner import reference
from dsguard.runner.errors import BundleError
from dsguard.runner.genai import genai_config, write_genai_config
from dsguard.runner.graph import build_decoder
from dsguard.runner.shape import TINY, ModelShape
from dsguard.runner.tiny import (
    DTYPES,
    MARKER,
    RandomWeights,
    ensure_bundled,
    model_filename,
    resolve_model,
    write_bundle,
)

Feed = dict[str, np.ndarray[Any, Any]]


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("bundle") / "tiny-deepseek", TINY, seed=0)


@pytest.fixture(scope="session")
def weights() -> dict[str, np.ndarray[Any, Any]]:
    return dict(RandomWeights(TINY, seed=0))


def _session(bundle: Path, dtype: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(bundle / "onnx" / model_filename(dtype)), options,
                                providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def fp32(tiny_bundle: Path) -> ort.InferenceSession:
    return _session(tiny_bundle, "fp32")


def _empty_past(batch: int, dtype: type[np.floating[Any]] = np.float32) -> list[np.ndarray[Any, Any]]:
    empty = np.zeros((batch, TINY.num_key_value_heads, 0, TINY.head_dim), dtype)
    return [empty] * (2 * TINY.num_hidden_layers)


def _feed(ids: np.ndarray[Any, Any], mask: np.ndarray[Any, Any], positions: np.ndarray[Any, Any],
          past: list[np.ndarray[Any, Any]]) -> Feed:
    feed: Feed = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64),
                  "position_ids": positions.astype(np.int64)}
    for layer in range(TINY.num_hidden_layers):
        feed[f"past_key_values.{layer}.key"] = past[2 * layer]
        feed[f"past_key_values.{layer}.value"] = past[2 * layer + 1]
    return feed


def _prefill(session: ort.InferenceSession, prompt: list[int],
             dtype: type[np.floating[Any]] = np.float32) -> list[np.ndarray[Any, Any]]:
    ids = np.array([prompt])
    return list(session.run(None, _feed(ids, np.ones_like(ids), np.arange(len(prompt))[None], _empty_past(1, dtype))))


def _greedy_with_cache(session: ort.InferenceSession, prompt: list[int], count: int) -> list[int]:
    outputs = _prefill(session, prompt)
    tokens = [int(outputs[0][0, -1].argmax())]
    while len(tokens) < count:
        total = len(prompt) + len(tokens)
        feed = _feed(np.array([[tokens[-1]]]), np.ones((1, total)), np.array([[total - 1]]), outputs[1:])
        outputs = session.run(None, feed)
        tokens.append(int(outputs[0][0, -1].argmax()))
    return tokens


def _greedy_recomputed(session: ort.InferenceSession, prompt: list[int], count: int) -> list[int]:
    tokens: list[int] = []
    while len(tokens) < count:
        tokens.append(int(_prefill(session, prompt + tokens)[0][0, -1].argmax()))
    return tokens


PROMPT = [5, 77, 300, 12, 9, 1000, 42, 1500]


def test_prefill_logits_match_numpy_reference(fp32: ort.InferenceSession, weights: dict[str, Any]) -> None:
    ids = np.array([PROMPT, PROMPT[::-1]])
    positions = np.tile(np.arange(len(PROMPT)), (2, 1))
    logits, *present = fp32.run(None, _feed(ids, np.ones_like(ids), positions, _empty_past(2)))
    expected, expected_present = reference.forward(weights, TINY, ids, np.ones_like(ids), positions)
    assert np.abs(logits - expected).max() <= 1e-4
    assert np.abs(present[0] - expected_present[0][0]).max() <= 1e-4


def test_decode_step_with_past_matches_numpy_reference(fp32: ort.InferenceSession, weights: dict[str, Any]) -> None:
    ids = np.array([PROMPT])
    prefill = _prefill(fp32, PROMPT)
    ones = np.ones((1, len(PROMPT) + 1))
    logits, *present = fp32.run(None, _feed(np.array([[7]]), ones, np.array([[len(PROMPT)]]), prefill[1:]))
    _, past = reference.forward(weights, TINY, ids, np.ones_like(ids), np.arange(len(PROMPT))[None])
    expected, expected_present = reference.forward(weights, TINY, np.array([[7]]), ones.astype(np.int64),
                                                   np.array([[len(PROMPT)]]), past)
    assert np.abs(logits - expected).max() <= 1e-4
    assert present[2].shape == (1, TINY.num_key_value_heads, len(PROMPT) + 1, TINY.head_dim)
    assert np.abs(present[2] - expected_present[1][0]).max() <= 1e-4


@pytest.mark.parametrize("heads,kv_heads", [(6, 6), (12, 2)], ids=["one-query-head-per-kv-head", "six-per-kv-head"])
def test_graph_matches_numpy_reference_for_other_head_groupings(heads: int, kv_heads: int) -> None:
    shape = ModelShape(vocab_size=256, hidden_size=192, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, rope_theta=1e6)
    weights = dict(RandomWeights(shape, seed=3))
    session = ort.InferenceSession(build_decoder(shape, weights).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    ids = np.array([[0, 0, 7, 8, 9, 10], [1, 2, 3, 4, 5, 6]])
    mask = np.array([[0, 0, 1, 1, 1, 1], [1] * 6])
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    empty = np.zeros((2, kv_heads, 0, shape.head_dim), np.float32)
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
            **{f"past_key_values.{i}.{kind}": empty for i in range(2) for kind in ("key", "value")}}
    logits = session.run(["logits"], feed)[0]
    expected, _ = reference.forward(weights, shape, ids, mask, positions)
    assert np.abs(logits - expected)[mask == 1].max() <= 1e-4


def test_logits_are_spread_so_greedy_choices_are_not_near_ties(weights: dict[str, Any]) -> None:
    ids = np.array([PROMPT])
    logits, _ = reference.forward(weights, TINY, ids, np.ones_like(ids), np.arange(len(PROMPT))[None])
    assert 2.0 <= logits.std() <= 5.0


def test_greedy_tokens_identical_with_and_without_kv_cache(fp32: ort.InferenceSession) -> None:
    cached = _greedy_with_cache(fp32, PROMPT, 24)
    assert cached == _greedy_recomputed(fp32, PROMPT, 24)
    assert len(set(cached)) > 1


def _left_padded_batch(fp32: ort.InferenceSession, prompts: list[list[int]]) -> tuple[Feed, list[Any]]:
    width = max(map(len, prompts))
    ids = np.array([[0] * (width - len(p)) + p for p in prompts])
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    feed = _feed(ids, mask, positions, _empty_past(len(prompts)))
    return feed, list(fp32.run(None, feed))


def test_left_padded_batch_gives_each_prompt_its_own_logits(fp32: ort.InferenceSession) -> None:
    prompts = [PROMPT[:3], PROMPT]
    feed, outputs = _left_padded_batch(fp32, prompts)
    step = _feed(np.array([[11], [11]]), np.concatenate([feed["attention_mask"], [[1], [1]]], axis=1),
                 feed["position_ids"][:, -1:] + 1, outputs[1:])
    decoded = fp32.run(None, step)
    for row, prompt in enumerate(prompts):
        alone = _prefill(fp32, prompt)
        assert np.abs(outputs[0][row, -1] - alone[0][0, -1]).max() <= 1e-5
        alone_step = fp32.run(None, _feed(np.array([[11]]), np.ones((1, len(prompt) + 1)),
                                          np.array([[len(prompt)]]), alone[1:]))
        assert np.abs(decoded[0][row, -1] - alone_step[0][0, -1]).max() <= 1e-5


def test_left_padding_positions_stay_finite(fp32: ort.InferenceSession) -> None:
    _, outputs = _left_padded_batch(fp32, [PROMPT[:2], PROMPT])
    assert all(np.isfinite(output).all() for output in outputs)


def test_fp16_graph_runs_on_cpu_close_to_fp32(tiny_bundle: Path, fp32: ort.InferenceSession) -> None:
    half = _prefill(_session(tiny_bundle, "fp16"), PROMPT, np.float16)
    full = _prefill(fp32, PROMPT)
    assert half[0].dtype == np.float16 and half[1].dtype == np.float16
    assert np.abs(half[0].astype(np.float32) - full[0]).max() <= 0.1
    assert half[0][0, -1].argmax() == full[0][0, -1].argmax()


@pytest.mark.parametrize("dtype", DTYPES)
def test_each_dtype_file_has_the_contract_inputs_and_outputs(tiny_bundle: Path, dtype: str) -> None:
    session = _session(tiny_bundle, dtype)
    float_type = "tensor(float16)" if dtype in ("fp16", "q4f16") else "tensor(float)"
    layers = range(TINY.num_hidden_layers)
    inputs = {i.name: i.type for i in session.get_inputs()}
    outputs = {o.name: o.type for o in session.get_outputs()}
    assert inputs == {"input_ids": "tensor(int64)", "attention_mask": "tensor(int64)",
                      "position_ids": "tensor(int64)",
                      **{f"past_key_values.{i}.{kind}": float_type for i in layers for kind in ("key", "value")}}
    assert outputs == {"logits": float_type,
                       **{f"present.{i}.{kind}": float_type for i in layers for kind in ("key", "value")}}
    assert (tiny_bundle / "onnx" / model_filename(dtype)).is_file()


def test_config_json_reads_back_as_the_tiny_shape(tiny_bundle: Path) -> None:
    config = json.loads((tiny_bundle / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2ForCausalLM"]
    assert ModelShape.from_config(config, source="config.json") == TINY


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("hidden_size", None, "config.json: hidden_size: missing"),
    ("num_attention_heads", "four", "config.json: num_attention_heads: expected a positive integer, got 'four'"),
    ("num_key_value_heads", 3, "config.json: num_key_value_heads: 4 attention heads cannot be shared by 3"),
    ("rms_norm_eps", True, "config.json: rms_norm_eps: expected a positive number"),
])
def test_from_config_errors_name_the_file_and_key(key: str, value: object, expected: str) -> None:
    config = TINY.to_config()
    if value is None:
        del config[key]
    else:
        config[key] = value
    with pytest.raises(BundleError) as caught:
        ModelShape.from_config(config, source="config.json")
    assert str(caught.value).startswith(expected)
    assert caught.value.key == key


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DSGUARD_CACHE_DIR", str(tmp_path))
    return tmp_path


def _recording() -> tuple[list[str], Callable[[str], None]]:
    messages: list[str] = []
    return messages, messages.append


def test_ensure_bundled_reuses_a_complete_cache(cache: Path) -> None:
    first = ensure_bundled("tiny-deepseek", ("fp32",))
    messages, record = _recording()
    assert ensure_bundled("tiny-deepseek", ("fp32",), progress=record) == first
    assert messages == []
    assert first.parent == cache / "models" and (first / "onnx" / "model.onnx_data").is_file()


def test_ensure_bundled_rebuilds_a_damaged_cache(cache: Path) -> None:
    bundle = ensure_bundled("tiny-deepseek", ("fp32",))
    data = bundle / "onnx" / "model.onnx_data"
    intact = data.read_bytes()
    data.write_bytes(intact[:100])
    messages, record = _recording()
    assert ensure_bundled("tiny-deepseek", ("fp32",), progress=record) == bundle
    assert messages and data.read_bytes() == intact


def test_ensure_bundled_rebuilds_a_cache_without_its_completion_marker(cache: Path) -> None:
    bundle = ensure_bundled("tiny-deepseek", ("fp32",))
    (bundle / MARKER).unlink()
    messages, record = _recording()
    ensure_bundled("tiny-deepseek", ("fp32",), progress=record)
    assert messages and (bundle / MARKER).is_file()


def test_ensure_bundled_adds_a_missing_dtype_next_to_the_existing_files(cache: Path) -> None:
    bundle = ensure_bundled("tiny-deepseek", ("fp32",))
    before = (bundle / "onnx" / "model.onnx_data").stat().st_ino
    ensure_bundled("tiny-deepseek", ("fp32", "fp16"))
    assert (bundle / "onnx" / "model_fp16.onnx_data").is_file()
    assert (bundle / "onnx" / "model.onnx_data").stat().st_ino == before
    assert sorted(p.name for p in bundle.parent.iterdir() if p.is_dir()) == [bundle.name]


def test_racing_processes_build_the_bundle_once(cache: Path) -> None:
    script = ("import sys; from dsguard.runner.tiny import ensure_bundled; built = []; "
              "path = ensure_bundled('tiny-deepseek', ('fp32',), progress=built.append); "
              "print(path, bool(built))")
    env = {**os.environ, "DSGUARD_CACHE_DIR": str(cache)}
    racers = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
              for _ in range(2)]
    results = [racer.communicate(timeout=60)[0].split() for racer in racers]
    assert all(racer.returncode == 0 for racer in racers)
    assert results[0][0] == results[1][0]
    assert sorted(built for _, built in results) == ["False", "True"]


def test_resolve_model_names_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does-not-exist: model bundle directory does not exist"):
        resolve_model(str(tmp_path / "does-not-exist"))


def test_resolve_model_rejects_an_unknown_bundled_name(cache: Path) -> None:
    with pytest.raises(BundleError, match="bundled:huge-deepseek: unknown bundled model; known: medium-deepseek"):
        resolve_model("bundled:huge-deepseek")


def test_write_bundle_is_deterministic_for_a_seed(tiny_bundle: Path, tmp_path: Path) -> None:
    again = write_bundle(tmp_path / "again", TINY, seed=0, dtypes=("fp32", "fp16"))
    written = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert Path("onnx/model_fp16.onnx_data") in written and Path("tokenizer.json") in written
    assert all((again / name).read_bytes() == (tiny_bundle / name).read_bytes() for name in written)
    other = write_bundle(tmp_path / "other", TINY, seed=1, dtypes=("fp32",))
    assert (other / "onnx/model.onnx_data").read_bytes() != (again / "onnx/model.onnx_data").read_bytes()


def test_genai_config_points_at_the_dtype_graph_with_separate_past_and_present(tiny_bundle: Path) -> None:
    config = genai_config(tiny_bundle, "q4")
    decoder = config["model"]["decoder"]
    assert decoder["filename"] == "onnx/model_q4.onnx"
    assert (decoder["head_size"], decoder["num_key_value_heads"]) == (TINY.head_dim, TINY.num_key_value_heads)
    assert decoder["inputs"]["past_key_names"] == "past_key_values.%d.key"
    assert config["search"]["past_present_share_buffer"] is False


def test_genai_config_names_a_missing_graph(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"onnx/model_int8.onnx: no ONNX graph for dtype 'int8'"):
        genai_config(tmp_path, "int8")


def test_onnxruntime_genai_generates_the_same_greedy_tokens(tiny_bundle: Path, tmp_path: Path,
                                                           fp32: ort.InferenceSession) -> None:
    og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    bundle = tmp_path / "genai"
    shutil.copytree(tiny_bundle, bundle, ignore=lambda _, names: [n for n in names if n.startswith("model_")])
    write_genai_config(bundle, "fp32")
    model = og.Model(str(bundle))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(PROMPT) + 16, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(PROMPT)
    tokens: list[int] = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    assert tokens == _greedy_with_cache(fp32, PROMPT, 16)
