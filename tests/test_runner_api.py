"""The runner's OpenAI-compatible API behind the guard, under a real uvicorn, called by the openai SDK."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dsguard.adapters.asgi import GuardMiddleware
from dsguard.checks.base import Check
from dsguard.config import RunnerConfig, parse_config
from dsguard.context import AfterHook, RequestContext, ResponseInfo
from dsguard.limits.tokens import prompt_estimate
from dsguard.runner.api import create_app
from dsguard.runner.engine import Engine, GenerationRequest
from dsguard.runner.sampling import SamplingParams

from .conftest import run_uvicorn
from .helpers import OPEN_HTTP, HeaderIdentity

MODEL = "tiny-deepseek"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "system", "content": "You are terse."},
                                              {"role": "user", "content": "Hello, who are you?"}]
GREEDY = SamplingParams(temperature=0.0)
Prompt = tuple[list[int], int]


def open_engine(**options: Any) -> Engine:
    settings: dict[str, Any] = {"model": f"bundled:{MODEL}", "dtype": "fp32", "providers": ("CPUExecutionProvider",),
                                "max_concurrency": 2, "max_queue": 8, **options}
    return Engine.open(RunnerConfig(**settings))


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engine = open_engine()
    yield engine
    engine.close()


@contextmanager
def serve(engine: Engine, config: str = OPEN_HTTP, *, checks: Sequence[Check] = (),
          after_hooks: Sequence[AfterHook] = (), meter_provider: MeterProvider | None = None) -> Iterator[str]:
    app = GuardMiddleware(create_app(engine, meter_provider=meter_provider), config=parse_config(config),
                          checks=checks, after_hooks=after_hooks)
    with run_uvicorn(app) as url:
        yield url


@pytest.fixture(scope="module")
def url(engine: Engine) -> Iterator[str]:
    with serve(engine) as url:
        yield url


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)


@pytest.fixture
def client(url: str) -> openai.OpenAI:
    return sdk(url)


def generate(engine: Engine, prompt_ids: Sequence[int], max_tokens: int, *, reasoning: bool,
             sampling: SamplingParams = GREEDY, stop: tuple[str, ...] = ()) -> dict[str, Any]:
    """What the engine itself generates for a prompt: the reference the API must reproduce."""
    async def run() -> dict[str, Any]:
        generation = engine.submit(GenerationRequest(tuple(prompt_ids), max_tokens, sampling, stop, reasoning))
        content, thinking, finish = [], [], None
        async for delta in generation:
            content.append(delta.content)
            thinking.append(delta.reasoning)
            finish = delta.finish_reason or finish
        return {"content": "".join(content), "reasoning": "".join(thinking), "finish_reason": finish,
                "prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens}

    return asyncio.run(run())


def chat_reference(engine: Engine, max_tokens: int, **options: Any) -> dict[str, Any]:
    return generate(engine, engine.tokenizer.encode_chat(MESSAGES), max_tokens, reasoning=True, **options)


def wait_until(condition: Callable[[], bool], seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# --- answers -------------------------------------------------------------------------------------------------


def test_chat_answers_what_the_engine_generates_with_reasoning_content_and_usage(
        engine: Engine, client: openai.OpenAI) -> None:
    expected = chat_reference(engine, 24)
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=24,
                                            temperature=0)
    choice = answer.choices[0]
    assert (choice.message.content, getattr(choice.message, "reasoning_content", None)) == \
        (expected["content"], expected["reasoning"])
    assert choice.finish_reason == expected["finish_reason"]
    assert answer.object == "chat.completion" and answer.model == MODEL and answer.id.startswith("chatcmpl-")
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (
        len(engine.tokenizer.encode_chat(MESSAGES)), expected["completion_tokens"],
        len(engine.tokenizer.encode_chat(MESSAGES)) + expected["completion_tokens"])


def test_chat_stream_sends_the_role_then_deltas_then_the_finish_reason_then_usage(
        engine: Engine, client: openai.OpenAI) -> None:
    expected = chat_reference(engine, 24)
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=24,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [c for c in chunks if c.choices]
    content = "".join(c.choices[0].delta.content or "" for c in with_choices)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in with_choices)
    assert (content, reasoning) == (expected["content"], expected["reasoning"])
    assert [c.choices[0].finish_reason for c in with_choices if c.choices[0].finish_reason] == \
        [expected["finish_reason"]]
    assert with_choices[-1].choices[0].finish_reason == expected["finish_reason"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == \
        (expected["prompt_tokens"], expected["completion_tokens"])
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_a_stream_is_server_sent_events_ending_with_done(url: str) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all("usage" not in event for event in events)
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_completion_answers_what_the_engine_generates_for_the_plain_prompt(
        engine: Engine, client: openai.OpenAI) -> None:
    prompt = "The guard checks every call"
    expected = generate(engine, engine.tokenizer.encode(prompt, add_special=True), 16, reasoning=False)
    answer = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
    assert answer.object == "text_completion"
    assert (answer.choices[0].text, answer.choices[0].finish_reason) == (expected["content"], expected["finish_reason"])
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == \
        (expected["prompt_tokens"], expected["completion_tokens"])


def test_completion_stream_assembles_to_the_same_text(client: openai.OpenAI) -> None:
    options: dict[str, Any] = {"model": MODEL, "prompt": "Tokens per second", "max_tokens": 16, "temperature": 0}
    whole = client.completions.create(**options)
    chunks = list(client.completions.create(**options, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_completion_takes_a_prompt_of_token_ids(engine: Engine, client: openai.OpenAI) -> None:
    ids = engine.tokenizer.encode("Rate limits", add_special=True)
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0)
    by_text = client.completions.create(model=MODEL, prompt="Rate limits", max_tokens=8, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage is not None and by_ids.usage.prompt_tokens == len(ids)


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_seeded_sampling_is_reproducible(client: openai.OpenAI) -> None:
    def sample() -> tuple[str | None, object]:
        answer = client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                max_tokens=24, temperature=1.3, top_p=0.95, seed=1234)
        return answer.choices[0].message.content, getattr(answer.choices[0].message, "reasoning_content", None)

    assert sample() == sample()


def test_sampling_parameters_reach_the_engine(engine: Engine, client: openai.OpenAI) -> None:
    sampling = SamplingParams(temperature=1.5, top_p=0.9, top_k=40, seed=99, repetition_penalty=1.3,
                              frequency_penalty=0.7, presence_penalty=-0.4)
    expected = chat_reference(engine, 24, sampling=sampling)
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=24,
                                            temperature=1.5, top_p=0.9, seed=99, frequency_penalty=0.7,
                                            presence_penalty=-0.4,
                                            extra_body={"top_k": 40, "repetition_penalty": 1.3})
    assert getattr(answer.choices[0].message, "reasoning_content", None) == expected["reasoning"]
    plain = chat_reference(engine, 24, sampling=dataclasses.replace(sampling, frequency_penalty=0.0,
                                                                    presence_penalty=0.0))
    assert plain["reasoning"] != expected["reasoning"]


def test_missing_sampling_fields_take_the_models_generation_config(engine: Engine, client: openai.OpenAI) -> None:
    assert engine.sampling_defaults == SamplingParams(temperature=0.6, top_p=0.95)
    expected = chat_reference(engine, 24, sampling=SamplingParams(temperature=0.6, top_p=0.95, seed=5))
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=24, seed=5)
    assert getattr(answer.choices[0].message, "reasoning_content", None) == expected["reasoning"]
    openai_defaults = chat_reference(engine, 24, sampling=SamplingParams(seed=5))
    assert openai_defaults["reasoning"] != expected["reasoning"]


def test_a_stop_sequence_ends_the_answer_before_it(engine: Engine, client: openai.OpenAI) -> None:
    text = chat_reference(engine, 32)["reasoning"]
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop.strip(), f"the reference text is too short to cut: {text!r}"
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=32,
                                            temperature=0, stop=[stop])
    assert getattr(answer.choices[0].message, "reasoning_content", None) == text[:text.index(stop)]
    assert answer.choices[0].finish_reason == "stop"


# --- refusals ------------------------------------------------------------------------------------------------


def post(url: str, path: str, body: Any) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=60)


def test_a_bad_field_is_refused_with_openai_error_object_and_the_request_id(url: str) -> None:
    response = post(url, "/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "temperature": 3})
    assert response.status_code == 400
    assert response.json() == {
        "error": {"message": "Invalid 'temperature': expected a number at least 0 and at most 2, got 3.",
                  "type": "invalid_request_error", "param": "temperature", "code": "invalid_value"},
        "request_id": response.headers["x-request-id"],
    }


@pytest.mark.parametrize(("field", "param", "code"), [
    ({"temperature": "hot"}, "temperature", "invalid_type"),
    ({"top_p": 1.5}, "top_p", "invalid_value"),
    ({"top_k": -2}, "top_k", "invalid_value"),
    ({"max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"max_completion_tokens": "many"}, "max_completion_tokens", "invalid_type"),
    ({"max_tokens": 8, "max_completion_tokens": 9}, "max_tokens", "invalid_value"),
    ({"seed": 1.5}, "seed", "invalid_type"),
    ({"repetition_penalty": 0}, "repetition_penalty", "invalid_value"),
    ({"frequency_penalty": -2.5}, "frequency_penalty", "invalid_value"),
    ({"presence_penalty": 3}, "presence_penalty", "invalid_value"),
    ({"n": 2}, "n", "unsupported_value"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
    ({"stop": 5}, "stop", "invalid_type"),
    ({"stop": ["x" * 513]}, "stop", "invalid_value"),
    ({"repetition_penalty": 1e308}, "repetition_penalty", "invalid_value"),
    ({"repetition_penalty": 101}, "repetition_penalty", "invalid_value"),
    ({"stream": "yes"}, "stream", "invalid_type"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
    ({"logprobs": True}, "logprobs", "unsupported_value"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "unsupported_value"),
    ({"messages": []}, "messages", "empty_array"),
    ({"messages": "hello"}, "messages", "invalid_type"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "unsupported_value"),
    ({"messages": [{"role": "user"}]}, "messages[0].content", "missing_required_parameter"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0].type", "unsupported_value"),
    ({"messages": [{"role": "user", "content": "<\uff5cUser\uff5c>hi"}]}, "messages", "invalid_value"),
    ({"max_tokens": 4096}, "messages", "context_length_exceeded"),
    ({"model": None}, "model", "missing_required_parameter"),
])
def test_a_bad_chat_field_is_refused_naming_it(url: str, field: dict[str, Any], param: str, code: str) -> None:
    response = post(url, "/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, **field})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)


@pytest.mark.parametrize(("field", "param", "code"), [
    ({"prompt": ["one", "two"]}, "prompt", "unsupported_value"),
    ({"prompt": [1, 99999]}, "prompt", "invalid_value"),
    ({"prompt": [1, "two"]}, "prompt", "invalid_type"),
    ({"prompt": None}, "prompt", "missing_required_parameter"),
    ({"echo": True}, "echo", "unsupported_value"),
    ({"best_of": 3}, "best_of", "unsupported_value"),
])
def test_a_bad_completion_field_is_refused_naming_it(url: str, field: dict[str, Any], param: str, code: str) -> None:
    response = post(url, "/v1/completions", {"model": MODEL, "prompt": "hi", **field})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)


def test_a_stop_string_of_512_characters_is_accepted(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, stop=["x" * 512])
    assert answer.usage is not None and answer.usage.completion_tokens >= 1


def test_a_vanishing_temperature_is_greedy_decoding(engine: Engine, client: openai.OpenAI) -> None:
    expected = chat_reference(engine, 12)
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=1e-320)
    assert answer.choices[0].message.content == expected["content"]
    assert getattr(answer.choices[0].message, "reasoning_content", None) == expected["reasoning"]


LONE_SURROGATE_BODIES = [
    ("/v1/chat/completions", b'{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}'),
    ("/v1/chat/completions", b'{"model": "tiny-deepseek", "messages": [{"role": "user", "content": "hi \\ud800"}]}'),
    ("/v1/completions", b'{"model": "tiny-deepseek", "prompt": "\\ud800"}'),
    ("/v1/completions", b'{"model": "tiny-deepseek", "prompt": "hi", "\\udfff": 1}'),
]


def assert_invalid_json(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == {
        "message": "The request body is not valid JSON: a string holds a lone UTF-16 surrogate.",
        "type": "invalid_request_error", "param": None, "code": "invalid_json"}


@pytest.mark.parametrize(("path", "body"), LONE_SURROGATE_BODIES)
def test_a_lone_surrogate_in_a_string_is_refused_as_invalid_json_by_the_bare_runner(
        engine: Engine, path: str, body: bytes) -> None:
    with run_uvicorn(create_app(engine)) as bare:
        assert_invalid_json(httpx.post(bare + path, content=body, headers={"content-type": "application/json"}))


@pytest.mark.parametrize(("path", "body"), LONE_SURROGATE_BODIES)
def test_a_lone_surrogate_in_a_string_is_refused_behind_the_guard(url: str, path: str, body: bytes) -> None:
    response = httpx.post(url + path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"


def test_an_unexpected_error_is_a_json_internal_error_without_its_details(engine: Engine) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("secret detail of the failure")

    app = create_app(engine)
    app.router.routes.append(Route("/v1/broken", broken, methods=["POST"]))
    guarded = GuardMiddleware(app, config=parse_config(OPEN_HTTP))
    with run_uvicorn(app) as bare, run_uvicorn(guarded) as behind:
        answers = [httpx.post(bare + "/v1/broken", json={}), httpx.post(behind + "/v1/broken", json={})]
    for response in answers:
        assert response.status_code == 500
        assert response.json()["error"] == {"message": "The server had an error while processing the request.",
                                            "type": "server_error", "param": None, "code": "internal_error"}
        assert "secret detail" not in response.text
    assert answers[1].json()["request_id"] == answers[1].headers["x-request-id"]


def test_unknown_fields_are_ignored(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4,
                                            user="someone", extra_body={"not_a_field": {"x": 1}})
    assert answer.usage is not None and answer.usage.completion_tokens >= 1


def test_another_model_is_404_model_not_found(url: str) -> None:
    response = post(url, "/v1/chat/completions", {"model": "gpt-4o", "messages": MESSAGES})
    assert response.status_code == 404
    assert response.json() == {
        "error": {"message": "The model `gpt-4o` does not exist or you do not have access to it.",
                  "type": "invalid_request_error", "param": None, "code": "model_not_found"},
        "request_id": response.headers["x-request-id"],
    }


def test_the_sdk_raises_not_found_for_another_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as error:
        client.completions.create(model="gpt-4o", prompt="hi")
    assert error.value.code == "model_not_found"


# --- load and disconnects ------------------------------------------------------------------------------------


@pytest.fixture
def single_slot() -> Iterator[Engine]:
    engine = open_engine(max_concurrency=1, max_queue=0)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def long_generation(engine: Engine) -> Prompt:
    """A prompt and the most tokens the context leaves for it, whose greedy generation uses them all:
    one that ends early was cancelled."""
    ids = engine.tokenizer.encode("Once upon a time", add_special=True)
    room = engine.context_length - len(ids)
    whole = generate(engine, ids, room, reasoning=False)
    assert (whole["finish_reason"], whole["completion_tokens"]) == ("length", room)
    return ids, room


def test_a_full_queue_answers_503_with_retry_after(single_slot: Engine, long_generation: Prompt) -> None:
    ids, room = long_generation
    with serve(single_slot) as url, httpx.Client(timeout=60) as http:
        body = {"model": MODEL, "prompt": ids, "max_tokens": room, "temperature": 0, "stream": True}
        with http.stream("POST", url + "/v1/completions", json=body) as running:
            lines = running.iter_lines()
            next(lines)
            refused = post(url, "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 4})
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "overloaded"
    assert refused.json()["error"]["type"] == "overloaded_error"


def test_the_sdk_sees_a_full_queue_as_503(single_slot: Engine, long_generation: Prompt) -> None:
    ids, room = long_generation
    with serve(single_slot) as url, httpx.Client(timeout=60) as http:
        body = {"model": MODEL, "prompt": ids, "max_tokens": room, "temperature": 0, "stream": True}
        with http.stream("POST", url + "/v1/completions", json=body) as running:
            lines = running.iter_lines()
            next(lines)
            with pytest.raises(openai.InternalServerError) as error:
                sdk(url).completions.create(model=MODEL, prompt="hi", max_tokens=4)
    assert error.value.status_code == 503


def first_text(lines: Iterator[str]) -> str:
    """Reads a completion stream up to its first generated text."""
    for line in lines:
        if line.startswith("data: {") and json.loads(line.removeprefix("data: "))["choices"][0]["text"]:
            return line
    raise AssertionError("the stream ended without text")


class UsageRecorder:
    """Keeps what each finished call reported as token usage and how its response ended."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ResponseInfo]] = []

    def __call__(self, ctx: RequestContext, response: ResponseInfo) -> None:
        self.calls.append((ctx.attributes.get("llm_usage"), response))


def test_a_client_leaving_a_stream_cancels_its_generation(single_slot: Engine, long_generation: Prompt) -> None:
    ids, room = long_generation
    generated_before = single_slot.stats().generated_tokens
    recorder = UsageRecorder()
    with serve(single_slot, after_hooks=[recorder]) as url:
        body = {"model": MODEL, "prompt": ids, "max_tokens": room, "temperature": 0, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
            first_text(response.iter_lines())
        assert wait_until(lambda: single_slot.stats().running == 0 and bool(recorder.calls))
        stats = single_slot.stats()
    generated = stats.generated_tokens - generated_before
    assert generated < room
    usage, info = recorder.calls[0]
    assert not info.complete
    assert usage["prompt_tokens"] == len(ids) and 1 <= usage["completion_tokens"] <= generated


def test_a_client_leaving_before_the_answer_cancels_its_generation(single_slot: Engine,
                                                                   long_generation: Prompt) -> None:
    ids, room = long_generation
    generated_before = single_slot.stats().generated_tokens
    with serve(single_slot) as url:
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
            body = json.dumps({"model": MODEL, "prompt": ids, "max_tokens": room, "temperature": 0}).encode()
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                         b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            assert wait_until(lambda: single_slot.stats().running == 1)
        assert wait_until(lambda: single_slot.stats().running == 0)
    assert single_slot.stats().generated_tokens - generated_before < room


def test_the_slot_is_free_again_after_a_client_left(single_slot: Engine, long_generation: Prompt) -> None:
    ids, room = long_generation
    with serve(single_slot) as url:
        body = {"model": MODEL, "prompt": ids, "max_tokens": room, "temperature": 0, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
            next(response.iter_lines())
        assert wait_until(lambda: single_slot.stats().running == 0)
        answer = sdk(url).completions.create(model=MODEL, prompt="hi", max_tokens=4)
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_a_stream_the_engine_stops_ends_with_an_error_event(single_slot: Engine, long_generation: Prompt) -> None:
    ids, room = long_generation
    with serve(single_slot) as url:
        body = {"model": MODEL, "prompt": ids, "max_tokens": room, "temperature": 0, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            next(lines)
            single_slot.close()
            rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    assert json.loads(rest[-2].removeprefix("data: ")) == {"error": {
        "message": "The generation was interrupted: the model is shutting down.", "type": "overloaded_error",
        "param": None, "code": "unavailable"}}


def test_a_closed_engine_answers_503(single_slot: Engine) -> None:
    single_slot.close()
    with serve(single_slot) as url:
        response = post(url, "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 4})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"


# --- token quota ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_reported_usage_settles_the_token_quota(engine: Engine, stream: bool) -> None:
    """The first call reserves ceil(chars / 4) + max_tokens but uses more (one token per character here).

    The quota leaves room for the second call's reservation only if the first was charged its
    reservation, not its real usage: so the second call is refused exactly when usage was settled.
    """
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "ü" * 200}]
    second: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    prompt = engine.tokenizer.encode_chat(messages)
    used = len(prompt) + generate(engine, prompt, 8, reasoning=True)["completion_tokens"]
    first_reservation = prompt_estimate({"messages": messages}) + 8
    second_reservation = prompt_estimate({"messages": second}) + 8
    capacity = used + second_reservation - 1
    assert capacity >= first_reservation + second_reservation
    config = OPEN_HTTP + f'[[rate_limits]]\nkey = "subject"\ntokens = "{capacity}/day"\n'
    with serve(engine, config, checks=[HeaderIdentity()]) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0,
                               default_headers={"x-test-subject": "alice"})
        if stream:
            chunks = list(client.chat.completions.create(model=MODEL, messages=messages,
                                                         max_tokens=8, temperature=0, stream=True,
                                                         stream_options={"include_usage": True}))
            assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == used
        else:
            answer = client.chat.completions.create(model=MODEL, messages=messages,
                                                    max_tokens=8, temperature=0)
            assert answer.usage is not None and answer.usage.total_tokens == used
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model=MODEL, messages=second, max_tokens=8)
    assert refused.value.code == "token_quota_exceeded"


# --- metrics -------------------------------------------------------------------------------------------------


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    points: dict[str, list[Any]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def test_metrics_report_engine_load_and_each_call(engine: Engine) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with serve(engine, meter_provider=provider) as url:
        answer = sdk(url).chat.completions.create(model=MODEL, messages=MESSAGES,
                                                  max_tokens=12, temperature=0)
    points = metric_points(reader)
    provider.shutdown()
    assert answer.usage is not None
    assert [p.value for p in points["dsguard.runner.queue_depth"]] == [0]
    assert [p.value for p in points["dsguard.runner.running"]] == [0]
    assert points["dsguard.runner.tokens_per_second"][0].value >= 0
    usage = {p.attributes["gen_ai.token.type"]: p.sum for p in points["gen_ai.client.token.usage"]}
    assert usage == {"input": answer.usage.prompt_tokens, "output": answer.usage.completion_tokens}
    assert all(p.attributes["gen_ai.request.model"] == MODEL for p in points["gen_ai.client.token.usage"])
    for name in ("gen_ai.server.time_to_first_token", "gen_ai.server.request.duration"):
        assert [p.count for p in points[name]] == [1]
        assert points[name][0].attributes["gen_ai.operation.name"] == "chat"
    assert [p.count for p in points.get("gen_ai.server.time_per_output_token", [])] == \
        ([1] if answer.usage.completion_tokens > 1 else [])


def test_events_escape_the_line_separators_clients_split_lines_on() -> None:
    from dsguard.runner.api import _event

    text = "a\x85b\u2028c\u2029d\ne"
    event = _event({"choices": [{"delta": {"content": text}}]}).decode()
    assert event.endswith("\n\n") and len(event.splitlines()) == 2  # the data line, the blank line ending it
    assert json.loads(event.splitlines()[0].removeprefix("data: "))["choices"][0]["delta"]["content"] == text
