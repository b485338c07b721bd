"""Folders written by onnxruntime-genai's model builder: GroupQueryAttention graphs, ``genai_config.json``.

The graphs are the builder's own output for the bundled tiny model (``tests/data/genai_builder``); the
weights are the bundled model's, so every run here must produce what the Optimum-layout bundle produces.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import openai
import pytest

from dsguard.adapters.asgi import GuardMiddleware
from dsguard.config import RunnerConfig, parse_config
from dsguard.runner.api import create_app
from dsguard.runner.bundle import open_bundle
from dsguard.runner.engine import Engine
from dsguard.runner.errors import BundleError
from dsguard.runner.sampling import SamplingParams
from dsguard.runner.session import DecoderSession
from dsguard.runner.tiny import TINY, ensure_bundled
from dsguard.runner.tokenizer import ASSISTANT

from .conftest import run_uvicorn
from .genai_builder import builder_bundle
from .helpers import OPEN_HTTP
from .test_runner_engine import PROMPTS, QUESTIONS, decode_rows, request, staggered

OPTIMUM_DTYPE = {"fp32": "fp32", "int4": "q4"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("builder")
    return {precision: builder_bundle(precision, root / precision) for precision in OPTIMUM_DTYPE}


@pytest.fixture(scope="module")
def engines(folders: dict[str, Path]) -> Iterator[dict[str, Engine]]:
    optimum = ensure_bundled("tiny-deepseek", ("fp32", "q4"))
    opened = {}
    for precision, dtype in OPTIMUM_DTYPE.items():
        for name, directory in ((precision, folders[precision]), (f"optimum-{dtype}", optimum)):
            loaded = open_bundle(directory, dtype)
            opened[name] = Engine(DecoderSession(loaded), loaded.tokenizer, model_id="tiny-deepseek",
                                  max_concurrency=4, max_queue=16)
    yield opened
    for engine in opened.values():
        engine.close()


def test_builder_folder_is_read_from_genai_config_and_the_graph(folders: dict[str, Path]) -> None:
    for precision, directory in folders.items():
        assert not (directory / "config.json").exists() and not (directory / "generation_config.json").exists()
        loaded = open_bundle(directory, OPTIMUM_DTYPE[precision])
        assert loaded.shape == TINY
        assert loaded.in_place_attention and not loaded.dynamic_quantization
        assert loaded.names.position_ids is None
        assert loaded.model_path == directory / "model.onnx"
        assert 2042 in loaded.eos_token_ids
        assert loaded.sampling_defaults == SamplingParams(temperature=0.6, top_p=0.95, top_k=50)
        prompt = loaded.tokenizer.render_chat([{"role": "user", "content": "Hi"}])
        assert prompt.endswith(ASSISTANT + "<think>\n")


def test_builder_graph_runs_in_place_without_the_load_time_fusion(folders: dict[str, Path]) -> None:
    session = DecoderSession(open_bundle(folders["fp32"], "fp32"))
    assert session.in_place and not session.fused
    assert session.empty_cache(2, 64).capacity == 64


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_builder_graph_generates_what_the_optimum_export_generates(engines: dict[str, Engine],
                                                                   precision: str) -> None:
    builder, optimum = engines[precision], engines[f"optimum-{OPTIMUM_DTYPE[precision]}"]
    for question, length in zip(QUESTIONS, (120, 40, 60, 80), strict=True):
        ours = builder.generate(request(builder, question, length), timeout=30)
        reference = optimum.generate(request(optimum, question, length), timeout=30)
        assert ours.token_ids == reference.token_ids
        assert (ours.text, ours.reasoning) == (reference.text, reference.reasoning)


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_builder_graph_batched_outputs_equal_single_runs(engines: dict[str, Engine], precision: str) -> None:
    engine = engines[precision]
    requests = [request(engine, q, n) for q, n in zip(QUESTIONS, (300, 37, 90, 61), strict=True)]
    alone = [engine.generate(item, timeout=30) for item in requests]
    together, peak = staggered(engine, requests)
    assert engine.stats().batching and peak >= 2
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_builder_rows_of_different_lengths_decode_to_the_same_bits_batched_as_alone(
        folders: dict[str, Path], precision: str) -> None:
    session = DecoderSession(open_bundle(folders[precision], OPTIMUM_DTYPE[precision]))
    together = decode_rows(session, PROMPTS, 12, together=True)
    alone = decode_rows(session, PROMPTS, 12, together=False)
    assert all(np.array_equal(a, b) for row_a, row_b in zip(together, alone, strict=True)
               for a, b in zip(row_a, row_b, strict=True))


def test_a_long_prompt_is_prefilled_in_chunks_into_the_builder_cache(folders: dict[str, Path]) -> None:
    builder = DecoderSession(open_bundle(folders["fp32"], "fp32"))
    optimum = DecoderSession(open_bundle(ensure_bundled("tiny-deepseek", ("fp32",)), "fp32"))
    prompt = [int(i) for i in np.random.default_rng(3).integers(5, 2000, size=600)]
    (a, _), (b, _) = builder.prefill(prompt), optimum.prefill(prompt)
    assert np.abs(a - b).max() <= 1e-4


def test_onnxruntime_genai_runs_the_builder_folder_to_the_same_tokens(folders: dict[str, Path],
                                                                       engines: dict[str, Engine]) -> None:
    og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    engine = engines["int4"]
    item = request(engine, QUESTIONS[1], 24)
    model = og.Model(str(folders["int4"]))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(item.prompt_ids) + 24, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(list(item.prompt_ids))
    tokens: list[int] = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    ours = engine.generate(item, timeout=30).token_ids
    assert tuple(tokens) == tuple(ours)[: len(tokens)] and len(tokens) >= 1


def test_openai_sdk_is_served_from_a_builder_folder_behind_the_guard(folders: dict[str, Path],
                                                                    engines: dict[str, Engine]) -> None:
    engine = Engine.open(RunnerConfig(model=str(folders["int4"]), dtype="q4", max_concurrency=2, max_queue=4))
    reference = engines["optimum-q4"]
    messages = [{"role": "user", "content": QUESTIONS[2]}]
    expected = reference.generate(request(reference, QUESTIONS[2], 20), timeout=30)
    app = GuardMiddleware(create_app(engine), config=parse_config(OPEN_HTTP))
    try:
        with run_uvicorn(app) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
            assert [m.id for m in client.models.list().data] == [engine.model_id]
            reply = client.chat.completions.create(model=engine.model_id, messages=messages,  # type: ignore[arg-type]
                                                   max_tokens=20, temperature=0)
            assert reply.usage is not None and reply.usage.completion_tokens == 20
            stream = client.chat.completions.create(model=engine.model_id, messages=messages,  # type: ignore[arg-type]
                                                    max_tokens=20, temperature=0, stream=True)
            deltas = [chunk.choices[0].delta for chunk in stream if chunk.choices]
    finally:
        engine.close()
    assert expected.reasoning
    message = reply.choices[0].message
    assert ((message.content or ""), (message.model_extra or {}).get("reasoning_content")) == (
        expected.text, expected.reasoning)
    assert "".join(d.content or "" for d in deltas) == expected.text
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == expected.reasoning


def test_builder_folder_without_a_readable_mlp_width_asks_for_config_json(folders: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    copy = tmp_path / "b"
    copy.mkdir()
    for item in folders["fp32"].iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    model = onnx.load(str(copy / "model.onnx"), load_external_data=False)
    for node in model.graph.node:
        node.name = node.name.replace("down_proj", "w2")
    onnx.save(model, str(copy / "model.onnx"))
    with pytest.raises(BundleError, match=r"genai_config\.json: cannot read the MLP width .* config\.json"):
        open_bundle(copy, "fp32")
    (copy / "config.json").write_text(json.dumps({"model_type": "qwen2", **TINY.to_config()}))
    assert open_bundle(copy, "fp32").shape == TINY


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c["model"].pop("vocab_size"), r"genai_config\.json: model\.vocab_size: missing"),
    (lambda c: c["model"]["decoder"].update(num_key_value_heads=3),
     r"model\.decoder\.num_key_value_heads: 4 attention heads cannot be shared by 3 groups"),
    (lambda c: c["model"]["decoder"].update(head_size=64), r"model\.decoder\.head_size: 64 does not match"),
    (lambda c: c["model"].update(eos_token_id="end"), r"model\.eos_token_id: expected a token id"),
    (lambda c: c.update(model=[]), r"genai_config\.json: model\.decoder: expected model\.decoder\.filename"),
])
def test_bad_genai_config_names_the_key(folders: dict[str, Path], tmp_path: Path, edit: object,
                                        message: str) -> None:
    copy = tmp_path / "b"
    copy.mkdir()
    for item in folders["fp32"].iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    config = json.loads((copy / "genai_config.json").read_text())
    edit(config)  # type: ignore[operator]
    (copy / "genai_config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match=message):
        open_bundle(copy, "fp32")
