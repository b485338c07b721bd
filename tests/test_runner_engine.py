"""The generation engine on the real bundled tiny model: batching, admission, cancellation, identity of outputs."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from dsguard.config import RunnerConfig
from dsguard.runner.bundle import open_bundle
from dsguard.runner.engine import (
    Completion,
    Engine,
    EngineClosed,
    EngineOverloaded,
    Generation,
    GenerationRequest,
    InvalidGenerationRequest,
    PromptTooLong,
)
from dsguard.runner.errors import BundleError
from dsguard.runner.genai import write_genai_config
from dsguard.runner.generation import Wakes
from dsguard.runner.sampling import SamplingParams
from dsguard.runner.session import DecoderSession
from dsguard.runner.threadplan import BLOCK, TRIAL_BLOCKS, ThreadPlan, wide_session
from dsguard.runner.tiny import ensure_bundled

GREEDY = SamplingParams(temperature=0)
QUESTIONS = ["Hi", "Tell me a long story about a dragon and a knight.", "What is two plus two?",
             "Summarize the plot of a novel you like, in detail, with names."]


@pytest.fixture(scope="module")
def bundle() -> Path:
    return ensure_bundled("tiny-deepseek", ("fp32", "q4", "int8", "fp16", "q4f16"))


def make_engine(bundle: Path, dtype: str = "fp32", *, fuse: bool = True, **limits: int) -> Engine:
    loaded = open_bundle(bundle, dtype)
    return Engine(DecoderSession(loaded, fuse=fuse), loaded.tokenizer, model_id="tiny-deepseek", **limits)


@pytest.fixture(scope="module")
def engines(bundle: Path) -> Iterator[dict[str, Engine]]:
    """Engines on the fused graphs, and one on the graph as exported (the path other providers take)."""
    opened = {dtype: make_engine(bundle, dtype, max_concurrency=4, max_queue=16) for dtype in ("fp32", "q4", "int8")}
    opened["fp32-exported"] = make_engine(bundle, "fp32", fuse=False, max_concurrency=4, max_queue=16)
    loaded = open_bundle(bundle, "fp32")
    narrow = DecoderSession(loaded)
    plan = ThreadPlan(narrow, DecoderSession(loaded, threads=2, spin=True))
    opened["fp32-two-sessions"] = Engine(narrow, loaded.tokenizer, model_id="tiny-deepseek", max_concurrency=4,
                                         max_queue=16, plan=plan)
    yield opened
    for engine in opened.values():
        engine.close()


def prompt(engine: Engine, question: str) -> tuple[int, ...]:
    return tuple(engine.tokenizer.encode_chat([{"role": "user", "content": question}]))


def request(engine: Engine, question: str, max_tokens: int, **options: object) -> GenerationRequest:
    return GenerationRequest(prompt(engine, question), max_tokens, **{"sampling": GREEDY, **options})  # type: ignore[arg-type]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.0002)


def reference_tokens(bundle: Path, dtype: str, prompt_ids: tuple[int, ...], max_tokens: int) -> list[int]:
    """Greedy decoding with the session's prefill and decode steps alone."""
    loaded = open_bundle(bundle, dtype)
    session = DecoderSession(loaded)
    logits, cache = session.prefill(prompt_ids)
    tokens = [int(logits.argmax())]
    while len(tokens) < max_tokens and tokens[-1] not in loaded.eos_token_ids:
        position = len(prompt_ids) + len(tokens) - 1
        logits, cache = session.decode(cache, np.array([tokens[-1]]), np.array([position]))
        tokens.append(int(logits[0].argmax()))
    return [t for t in tokens if t not in loaded.eos_token_ids]


def staggered(engine: Engine, requests: list[GenerationRequest]) -> tuple[list[Completion], int]:
    """Submits each request once the previous one has produced a few tokens; returns results and peak running."""
    generations: list[Generation] = []
    peak = 0
    for index, item in enumerate(requests):
        generations.append(engine.submit(item))

        def started(generation: Generation = generations[-1], want: int = 2 + index) -> bool:
            nonlocal peak
            peak = max(peak, engine.stats().running)
            return generation.completion_tokens >= want or generation.ended

        wait_until(started, f"request {index} to start")
    return [g.collect(timeout=30) for g in generations], peak


def test_greedy_generation_equals_the_session_reference_loop(bundle: Path, engines: dict[str, Engine]) -> None:
    engine = engines["fp32"]
    item = request(engine, QUESTIONS[1], 48, reasoning=False)
    completion = engine.generate(item, timeout=30)
    assert list(completion.token_ids) == reference_tokens(bundle, "fp32", item.prompt_ids, 48)
    assert completion.text == engine.tokenizer.decode(completion.token_ids)
    assert (completion.finish_reason, completion.completion_tokens, completion.prompt_tokens) == (
        "length", 48, len(item.prompt_ids))


@pytest.mark.parametrize("dtype", ["fp32", "q4", "int8"])
def test_fused_graph_computes_what_the_exported_graph_computes(bundle: Path, dtype: str) -> None:
    loaded = open_bundle(bundle, dtype)
    fused, exported = DecoderSession(loaded), DecoderSession(loaded, fuse=False)
    assert fused.fused and not exported.fused
    prompt_ids = tuple(loaded.tokenizer.encode_chat([{"role": "user", "content": QUESTIONS[3]}]))
    (a, cache_a), (b, cache_b) = fused.prefill(prompt_ids), exported.prefill(prompt_ids)
    for step in range(24):
        assert np.abs(a - b).max() <= 1e-4
        token = np.array([int(a.argmax())])
        assert token[0] == int(b.argmax())
        position = np.array([len(prompt_ids) + step])
        a, cache_a = fused.decode(cache_a, token, position)
        a = a[0].copy()
        b, cache_b = exported.decode(cache_b, token, position)
        b = b[0].copy()


@pytest.mark.parametrize("dtype", ["fp32", "q4", "fp32-exported", "fp32-two-sessions"])
def test_batched_outputs_equal_single_runs(engines: dict[str, Engine], dtype: str) -> None:
    engine = engines[dtype]
    requests = [request(engine, q, n) for q, n in zip(QUESTIONS, (300, 37, 90, 61), strict=True)]
    alone = [engine.generate(item, timeout=30) for item in requests]
    together, peak = staggered(engine, requests)
    assert engine.stats().batching
    assert peak >= 2
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    assert [(c.text, c.reasoning, c.finish_reason) for c in together] == [
        (c.text, c.reasoning, c.finish_reason) for c in alone]


def decode_rows(session: DecoderSession, prompts: list[list[int]], steps: int, *,
                together: bool) -> list[list[np.ndarray]]:
    """Greedy logits of each prompt's first ``steps`` decode steps, the rows decoded as one batch or one by one
    (left-padded to the longest prompt where the graph concatenates its cache)."""
    if not together:
        return [decode_rows(session, [p], steps, together=True)[0] for p in prompts]
    prefilled = [session.prefill(p) for p in prompts]
    cache = prefilled[0][1]
    for _, other in prefilled[1:]:
        cache = session.merge(cache, other)
    tokens = np.array([int(logits.argmax()) for logits, _ in prefilled])
    positions = np.array([len(p) for p in prompts])
    pads = None if session.in_place else max(positions) - positions
    rows: list[list[np.ndarray]] = [[] for _ in prompts]
    for _ in range(steps):
        logits, cache = session.decode(cache, tokens, positions, pads)
        for row, values in zip(rows, logits, strict=True):
            row.append(values.copy())
        tokens, positions = logits.argmax(axis=1), positions + 1
    return rows


PROMPTS = [list(range(5, 45)), list(range(100, 117)), list(range(300, 370)), [9, 8, 7]]


@pytest.mark.parametrize(("dtype", "in_place"), [("fp32", True), ("q4", True), ("fp16", False), ("q4f16", False)])
def test_rows_of_different_lengths_decode_to_the_same_bits_batched_as_alone(bundle: Path, dtype: str,
                                                                            in_place: bool) -> None:
    """fp16 graphs keep ONNX Runtime's unfused attention (left-padded rows): their fused norms and rotary
    still compute each row alone."""
    session = DecoderSession(open_bundle(bundle, dtype))
    assert session.fused and session.in_place == in_place
    together = decode_rows(session, PROMPTS, 12, together=True)
    alone = decode_rows(session, PROMPTS, 12, together=False)
    assert all(np.array_equal(a, b) for row_a, row_b in zip(together, alone, strict=True)
               for a, b in zip(row_a, row_b, strict=True))


@pytest.mark.parametrize("dtype", ["fp32", "q4"])
def test_two_spinning_threads_compute_the_same_bits_as_one(bundle: Path, dtype: str) -> None:
    loaded = open_bundle(bundle, dtype)
    one = decode_rows(DecoderSession(loaded), PROMPTS, 8, together=True)
    two = decode_rows(DecoderSession(loaded, threads=2, spin=True), PROMPTS, 8, together=True)
    assert all(np.array_equal(a, b) for row_a, row_b in zip(one, two, strict=True)
               for a, b in zip(row_a, row_b, strict=True))


def run_trial(plan: ThreadPlan, rows: int, narrow: float, wide: float) -> list[DecoderSession]:
    """Steps one trial of ``rows`` on a made-up clock: ``narrow`` / ``wide`` seconds per step of each session."""
    used: list[DecoderSession] = []
    now = 0.0
    plan.pause()
    for _ in range(2 * TRIAL_BLOCKS * BLOCK + 1):
        session = plan.pick(rows, now)
        used.append(session)
        now += narrow if session is plan.sessions[0] else wide
    return used[:-1]


def test_thread_plan_tries_both_sessions_then_keeps_the_faster_per_batch_size(bundle: Path) -> None:
    loaded = open_bundle(bundle, "fp32")
    plan = ThreadPlan(DecoderSession(loaded), DecoderSession(loaded, threads=2, spin=True))
    used = run_trial(plan, 4, narrow=0.002, wide=0.001)
    assert used.count(plan.sessions[0]) == used.count(plan.sessions[1]) == TRIAL_BLOCKS * BLOCK
    run_trial(plan, 1, narrow=0.001, wide=0.002)
    assert (plan.chosen(4), plan.chosen(1)) == (1, 0)
    assert plan.pick(4, 100.0) is plan.sessions[1] and plan.pick(1, 100.1) is plan.sessions[0]


def test_a_second_session_is_paired_only_with_a_small_one_thread_cpu_model(bundle: Path) -> None:
    session = DecoderSession(open_bundle(bundle, "fp32"))
    wide = wide_session(session, cores=2)
    assert wide is not None and (wide.threads, wide.spin) == (2, True)
    assert wide_session(session, cores=1) is None
    assert wide_session(DecoderSession(open_bundle(bundle, "fp32"), threads=2), cores=4) is None


def test_wake_rounds_wait_for_the_interval_unless_forced() -> None:
    wakes = Wakes(interval=10.0)
    woken = [threading.Event() for _ in range(3)]
    try:
        wakes.add(woken[0].set)
        wakes.send(100.0)
        wakes.add(woken[1].set)
        wakes.send(105.0)
        assert woken[0].wait(5) and wakes.pending == 1
        wakes.send(110.0)
        wakes.add(woken[2].set)
        wakes.send(111.0, force=True)
        assert woken[1].wait(5) and woken[2].wait(5) and wakes.pending == 0
    finally:
        wakes.close()


def test_concurrent_readers_on_one_loop_each_receive_their_own_stream(engines: dict[str, Engine]) -> None:
    engine = engines["q4"]
    requests = [request(engine, q, 40, reasoning=False) for q in QUESTIONS]
    expected = [engine.generate(item, timeout=30).text for item in requests]

    async def read_all() -> list[str]:
        async def read(item: GenerationRequest) -> str:
            return "".join([delta.content async for delta in engine.submit(item)])

        return list(await asyncio.gather(*(read(item) for item in requests)))

    assert asyncio.run(read_all()) == expected


def test_a_long_prompt_is_prefilled_between_the_steps_of_running_requests(bundle: Path) -> None:
    with make_engine(bundle, max_concurrency=2, max_queue=0) as engine:
        running = engine.submit(request(engine, QUESTIONS[1], 12))
        long_prompt = tuple(20 + i % 2000 for i in range(15 * 256))
        arriving = engine.submit(GenerationRequest(long_prompt, 1, GREEDY))
        assert running.collect(timeout=30).completion_tokens == 12
        assert arriving.collect(timeout=60).completion_tokens == 1
    assert running.last_token_at is not None and arriving.first_token_at is not None
    assert running.last_token_at < arriving.first_token_at


def test_dynamic_int8_graph_is_detected_and_not_batched(bundle: Path, engines: dict[str, Engine]) -> None:
    assert open_bundle(bundle, "int8").dynamic_quantization
    assert not open_bundle(bundle, "q4").dynamic_quantization
    assert not open_bundle(bundle, "fp32").dynamic_quantization
    assert engines["int8"].stats().batching is False


def test_dynamic_int8_outputs_equal_single_runs_when_interleaved(engines: dict[str, Engine]) -> None:
    engine = engines["int8"]
    requests = [request(engine, q, n) for q, n in zip(QUESTIONS, (200, 30, 45, 20), strict=True)]
    alone = [engine.generate(item, timeout=30) for item in requests]
    together, peak = staggered(engine, requests)
    assert peak >= 2
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]


def test_seeded_sampling_is_reproducible_while_other_requests_run(engines: dict[str, Engine]) -> None:
    engine = engines["fp32"]
    seeded = request(engine, QUESTIONS[2], 40, sampling=SamplingParams(temperature=1.0, top_p=0.9, seed=42))
    first = engine.generate(seeded, timeout=30)
    neighbours = [engine.submit(request(engine, q, 60)) for q in QUESTIONS]
    second = engine.generate(seeded, timeout=30)
    for neighbour in neighbours:
        neighbour.collect(timeout=30)
    assert second.token_ids == first.token_ids


def test_stop_string_ends_the_text_before_it(engines: dict[str, Engine]) -> None:
    engine = engines["fp32"]
    full = engine.generate(request(engine, QUESTIONS[0], 60, reasoning=False), timeout=30)
    stop = full.text[20:24]
    stopped = engine.generate(request(engine, QUESTIONS[0], 60, reasoning=False, stop=(stop,)), timeout=30)
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.index(stop)]
    assert stopped.completion_tokens < full.completion_tokens


def test_async_iteration_streams_the_same_output(engines: dict[str, Engine]) -> None:
    engine = engines["q4"]
    item = request(engine, QUESTIONS[3], 50)
    expected = engine.generate(item, timeout=30)

    async def stream() -> list[tuple[str, str, str | None]]:
        return [(d.content, d.reasoning, d.finish_reason) async for d in engine.submit(item)]

    deltas = asyncio.run(stream())
    assert "".join(d[0] for d in deltas) == expected.text
    assert "".join(d[1] for d in deltas) == expected.reasoning
    assert [d[2] for d in deltas][-1] == "length" and all(d[2] is None for d in deltas[:-1])


def test_submitters_on_several_threads_each_get_their_own_output(engines: dict[str, Engine]) -> None:
    engine = engines["fp32"]
    requests = [request(engine, f"{question} ({n})", 20 + n) for n in range(2) for question in QUESTIONS]
    expected = [engine.generate(item, timeout=30).token_ids for item in requests]
    results: dict[int, tuple[int, ...]] = {}

    def submit(index: int) -> None:
        results[index] = engine.submit(requests[index]).collect(timeout=30).token_ids

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(len(requests))] == expected


def test_full_queue_is_refused_with_a_retry_estimate(bundle: Path) -> None:
    with make_engine(bundle, max_concurrency=1, max_queue=1) as engine:
        running = engine.submit(request(engine, QUESTIONS[1], 3000))
        queued = engine.submit(request(engine, QUESTIONS[0], 10))
        with pytest.raises(EngineOverloaded) as refused:
            engine.submit(request(engine, QUESTIONS[2], 10))
        assert refused.value.retry_after >= 1
        stats = engine.stats()
        assert stats.queue_depth + stats.running == 2
        running.cancel()
        queued.cancel()
        assert queued.collect(timeout=10).finish_reason == "cancelled"


def test_cancel_frees_the_slot_and_ends_as_cancelled(bundle: Path) -> None:
    with make_engine(bundle, max_concurrency=1, max_queue=0) as engine:
        first = engine.submit(request(engine, QUESTIONS[1], 3000))
        wait_until(lambda: first.completion_tokens > 0, "the first token")
        with pytest.raises(EngineOverloaded):
            engine.submit(request(engine, QUESTIONS[0], 5))
        first.cancel()
        cancelled = first.collect(timeout=10)
        assert cancelled.finish_reason == "cancelled" and cancelled.completion_tokens < 3000
        wait_until(lambda: engine.stats().running == 0, "the slot to free")
        assert engine.generate(request(engine, QUESTIONS[0], 5), timeout=10).finish_reason == "length"


def test_close_ends_running_and_waiting_generations_as_cancelled(bundle: Path) -> None:
    engine = make_engine(bundle, max_concurrency=1, max_queue=4)
    running = engine.submit(request(engine, QUESTIONS[1], 3000))
    waiting = engine.submit(request(engine, QUESTIONS[0], 10))
    wait_until(lambda: running.completion_tokens > 0, "the first token")
    engine.close()
    assert running.collect(timeout=10).finish_reason == "cancelled"
    assert waiting.collect(timeout=10).finish_reason == "cancelled"
    with pytest.raises(EngineClosed):
        engine.submit(request(engine, QUESTIONS[0], 5))


def test_prompt_and_max_tokens_beyond_the_context_are_refused(engines: dict[str, Engine]) -> None:
    engine = engines["fp32"]
    with pytest.raises(PromptTooLong, match="context length of 4096"):
        engine.submit(request(engine, QUESTIONS[0], engine.context_length))


@pytest.mark.parametrize(("item", "message"), [
    (GenerationRequest((), 5), "no tokens"),
    (GenerationRequest((1, 2), 0), "max_tokens"),
    (GenerationRequest((1, 99999), 5), "token ids"),
    (GenerationRequest((1, 2), 5, SamplingParams(top_p=0)), "top_p"),
])
def test_unusable_requests_are_refused(engines: dict[str, Engine], item: GenerationRequest, message: str) -> None:
    with pytest.raises(InvalidGenerationRequest, match=message):
        engines["fp32"].submit(item)


def test_stats_count_completed_generations_and_tokens(bundle: Path) -> None:
    with make_engine(bundle) as engine:
        for _ in range(3):
            engine.generate(request(engine, QUESTIONS[0], 30), timeout=10)
        stats = engine.stats()
        assert (stats.completed, stats.generated_tokens, stats.running, stats.queue_depth) == (3, 90, 0, 0)
        assert stats.tokens_per_second > 0 and stats.provider == "CPUExecutionProvider"


def test_open_resolves_the_bundled_model_from_config(bundle: Path) -> None:
    with Engine.open(RunnerConfig(model="bundled:tiny-deepseek", dtype="q4", max_concurrency=2)) as engine:
        assert (engine.model_id, engine.provider, engine.context_length) == ("tiny-deepseek", "CPUExecutionProvider",
                                                                             4096)
        assert engine.generate(request(engine, QUESTIONS[0], 4), timeout=10).completion_tokens == 4


def copy_bundle(bundle: Path, target: Path) -> Path:
    shutil.copytree(bundle, target, ignore=shutil.ignore_patterns("model_*"))
    return target


def test_bundle_without_the_dtype_file_names_it(bundle: Path, tmp_path: Path) -> None:
    copy = copy_bundle(bundle, tmp_path / "b")
    with pytest.raises(BundleError, match=r"onnx/model_q4f16\.onnx: no ONNX graph for dtype 'q4f16'"):
        open_bundle(copy, "q4f16")


def test_bundle_whose_config_disagrees_with_the_graph_names_both(bundle: Path, tmp_path: Path) -> None:
    copy = copy_bundle(bundle, tmp_path / "b")
    config = (copy / "config.json").read_text().replace('"num_key_value_heads": 2', '"num_key_value_heads": 4')
    (copy / "config.json").write_text(config)
    with pytest.raises(BundleError, match=r"model\.onnx: past_key_values\.0\.key: dimension 1 is 2, config\.json"):
        open_bundle(copy, "fp32")


def test_bundle_with_fewer_layers_than_configured_is_refused(bundle: Path, tmp_path: Path) -> None:
    copy = copy_bundle(bundle, tmp_path / "b")
    config = (copy / "config.json").read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": 3')
    (copy / "config.json").write_text(config)
    with pytest.raises(BundleError, match=r"missing inputs past_key_values\.2\.key"):
        open_bundle(copy, "fp32")


def test_paged_attention_graph_is_refused(bundle: Path, tmp_path: Path) -> None:
    copy = copy_bundle(bundle, tmp_path / "b")
    node = helper.make_node("PagedAttention", ["q"], ["y"], domain="com.microsoft")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(copy / "onnx" / "model.onnx"))
    with pytest.raises(BundleError, match="PagedAttention, which needs a paged key/value cache"):
        open_bundle(copy, "fp32")


def test_genai_layout_reads_the_decoder_named_in_genai_config(bundle: Path, tmp_path: Path) -> None:
    copy = copy_bundle(bundle, tmp_path / "b")
    write_genai_config(copy, "fp32")
    (copy / "onnx" / "model.onnx").rename(copy / "decoder.onnx")
    (copy / "onnx" / "model.onnx_data").rename(copy / "model.onnx_data")
    config = (copy / "genai_config.json").read_text().replace('"onnx/model.onnx"', '"decoder.onnx"')
    (copy / "genai_config.json").write_text(config)
    loaded = open_bundle(copy, "fp32")
    assert loaded.model_path == copy / "decoder.onnx"
    assert loaded.names.position_ids == "position_ids"


@pytest.mark.parametrize(("edit", "message"), [
    ({"temperature": "warm"}, r"generation_config\.json: temperature: expected a number, got 'warm'"),
    ({"top_p": 0}, r"generation_config\.json: top_p: top_p must be in \(0, 1\]"),
    ({"top_k": 2.5}, r"generation_config\.json: top_k: expected an integer"),
])
def test_bad_sampling_defaults_of_a_bundle_name_the_key(bundle: Path, tmp_path: Path, edit: dict[str, object],
                                                        message: str) -> None:
    copy = copy_bundle(bundle, tmp_path / "b")
    path = copy / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    with pytest.raises(BundleError, match=message):
        open_bundle(copy, "fp32")


def test_model_sampling_defaults_follow_the_reader_of_each_file(tmp_path: Path) -> None:
    from dsguard.runner.bundle import sampling_defaults

    path = tmp_path / "generation_config.json"
    assert sampling_defaults({"do_sample": False, "temperature": 0.7}, path) == SamplingParams(temperature=0.7)
    assert sampling_defaults({"do_sample": False, "temperature": 0.7}, path, "search.").greedy
    assert sampling_defaults({"temperature": 1e-5, "top_k": 50}, path) == SamplingParams(temperature=0.0, top_k=50)


def test_sampling_defaults_come_from_the_model_unless_configured_otherwise(bundle: Path) -> None:
    assert open_bundle(bundle, "fp32").sampling_defaults == SamplingParams(temperature=0.6, top_p=0.95)
    for setting, expected in (("model", SamplingParams(temperature=0.6, top_p=0.95)), ("openai", SamplingParams())):
        engine = Engine.open(RunnerConfig(model="bundled:tiny-deepseek", dtype="fp32",
                                          sampling_defaults=setting))  # type: ignore[arg-type]
        try:
            assert engine.sampling_defaults == expected
        finally:
            engine.close()
