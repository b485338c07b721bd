"""LLM token quotas: reserve before the call (never overshoot), settle with reported usage after it."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from dsguard import GuardMiddleware
from dsguard.context import RequestContext, ResponseInfo
from dsguard.guard import Guard
from dsguard.limits.tokens import completion_cap, prompt_estimate

from .conftest import run_uvicorn
from .helpers import AsyncDenyHeader, InProcess, config
from .test_ratelimit import OPEN, HeaderClaimsIdentity

QUOTA = '[[rate_limits]]\nkey = "subject"\ntokens = "{quota}/year"\n'
# 4 characters of role + 36 of content = 10 prompt tokens, plus 90 completion tokens: 100 reserved.
CHAT = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "x" * 36}], "max_tokens": 90}
PROBE = {"messages": [], "max_tokens": 0}


class ChatApp:
    """A chat endpoint reporting the usage, status and stream the test asks for in the query."""

    def __init__(self) -> None:
        self.calls = 0
        self.streamed: list[int] = []

    async def chat(self, request: Request) -> JSONResponse:
        await request.body()
        query = request.query_params
        if "usage" in query:
            request.state.dsguard.attributes["llm_usage"] = {"total_tokens": int(query["usage"])}
        self.calls += 1
        return JSONResponse({"choices": []}, status_code=int(query.get("status", "200")))

    async def stream(self, request: Request) -> StreamingResponse:
        await request.body()
        ctx = request.state.dsguard

        async def events() -> AsyncIterator[bytes]:
            sent = 0
            try:
                for _ in range(2000):
                    yield b"data: token\n\n"
                    sent += 1
                    await asyncio.sleep(0.005)
            finally:
                ctx.attributes["llm_usage"] = {"prompt_tokens": 10, "completion_tokens": sent}
                self.streamed.append(10 + sent)

        return StreamingResponse(events(), media_type="text/event-stream")

    def asgi(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["GET", "POST"]),
                                 Route("/v1/stream", self.stream, methods=["POST"])])


def guarded(chat: ChatApp, quota: int = 1000, *, storage: str = "memory://", checks: tuple[Any, ...] = ()
            ) -> GuardMiddleware:
    text = OPEN + f'[storage]\nurl = "{storage}"\n' + QUOTA.format(quota=quota)
    return GuardMiddleware(chat.asgi(), config=config(text), checks=[HeaderClaimsIdentity(), *checks])


@pytest.fixture(params=["memory", "redis"])
def storage_url(request: pytest.FixtureRequest) -> str:
    return "memory://" if request.param == "memory" else str(request.getfixturevalue("redis_server"))


@pytest.fixture
def subject() -> str:
    return f"user-{uuid.uuid4().hex}"


def token_remaining(response: httpx.Response) -> int:
    match = re.search(r'"subject-tokens";r=(\d+)', response.headers.get("ratelimit", ""))
    assert match, response.headers
    return int(match.group(1))


class Settled:
    """A pipeline after-hook: it runs after each call's own hooks, so it marks their settlement done."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, ctx: RequestContext, response: ResponseInfo) -> None:
        self.count += 1

    def wait(self, count: int, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while self.count < count:
            assert time.monotonic() < deadline, "the call was never settled"
            time.sleep(0.01)


class Served:
    """A guarded chat app under uvicorn whose calls can be awaited until they are settled."""

    def __init__(self, chat: ChatApp, url: str, settled: Settled) -> None:
        self.chat = chat
        self.url = url
        self.settled = settled

    def call(self, subject: str, query: str = "", body: dict[str, Any] = CHAT,
             headers: dict[str, str] | None = None) -> httpx.Response:
        before = self.settled.count
        response = httpx.post(f"{self.url}/v1/chat/completions{query}", json=body,
                              headers={"x-test-subject": subject, **(headers or {})})
        self.settled.wait(before + 1)
        return response

    def remaining(self, subject: str) -> int:
        return token_remaining(self.call(subject, body=PROBE))


@contextmanager
def serve(storage: str, quota: int = 1000, checks: tuple[Any, ...] = ()) -> Iterator[Served]:
    chat, settled = ChatApp(), Settled()
    text = OPEN + f'[storage]\nurl = "{storage}"\n' + QUOTA.format(quota=quota)
    guard = GuardMiddleware(chat.asgi(), config=config(text), checks=[HeaderClaimsIdentity(), *checks],
                            after_hooks=[settled])
    with run_uvicorn(guard) as url:
        yield Served(chat, url, settled)


@pytest.fixture
def served(storage_url: str) -> Iterator[Served]:
    with serve(storage_url) as server:
        yield server


# --- estimates -------------------------------------------------------------------------------------------------------

def test_the_prompt_estimate_is_a_quarter_of_the_characters_rounded_up() -> None:
    assert prompt_estimate({"messages": [{"role": "user", "content": "hello"}]}) == 3


def test_the_prompt_estimate_counts_text_parts_and_leaves_images_out() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 4000}}
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "abcdefgh"}, image]}]}
    assert prompt_estimate(body) == 7  # "user", "text", "abcdefgh", "image_url" (the part's type)


def test_the_prompt_estimate_reads_completion_prompts_and_embedding_inputs() -> None:
    assert prompt_estimate({"prompt": ["abcd", "efgh"]}) == 2
    assert prompt_estimate({"input": "abcdefghi"}) == 3


def test_the_completion_cap_is_the_largest_max_tokens_field_times_n() -> None:
    assert completion_cap({"max_tokens": 100, "max_completion_tokens": 300, "n": 2}, 4096) == 600


def test_the_completion_cap_defaults_to_the_configured_cap_when_the_body_sets_none() -> None:
    assert completion_cap({"messages": []}, 512) == 512


def test_max_tokens_as_a_numeric_string_is_reserved_as_lenient_servers_read_it() -> None:
    assert completion_cap({"max_tokens": "100000"}, 512) == 100000
    assert completion_cap({"max_tokens": "many"}, 512) == 512


# --- reservation -----------------------------------------------------------------------------------------------------

def test_the_call_that_would_cross_the_quota_is_refused_before_the_app_runs() -> None:
    chat = ChatApp()
    http = InProcess(guarded(chat, quota=250))
    codes = [http.post("/v1/chat/completions", json=CHAT, headers={"x-test-subject": "alice"}) for _ in range(3)]
    assert [c.status_code for c in codes] == [200, 200, 429]
    assert codes[2].json()["error"]["code"] == "token_quota_exceeded"
    assert chat.calls == 2


def test_a_refused_reservation_says_when_it_would_fit() -> None:
    http = InProcess(guarded(ChatApp(), quota=100))
    http.post("/v1/chat/completions", json=CHAT, headers={"x-test-subject": "alice"})
    refused = http.post("/v1/chat/completions", json=CHAT, headers={"x-test-subject": "alice"})
    assert refused.headers["ratelimit"] == f'"subject-tokens";r=0;t={refused.headers["retry-after"]}'
    assert int(refused.headers["retry-after"]) == pytest.approx(31104000, abs=2)


def test_a_call_that_could_never_fit_the_quota_is_refused_without_retry_after() -> None:
    http = InProcess(guarded(ChatApp(), quota=1000))
    response = http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 5000}, headers={"x-test-subject": "a"})
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "token_request_too_large"
    assert "retry-after" not in response.headers


def test_a_json_body_sent_as_text_plain_still_reserves_tokens() -> None:
    chat = ChatApp()
    http = InProcess(guarded(chat, quota=150))
    smuggled = [http.post("/v1/chat/completions", content=httpx.Request("POST", "/", json=CHAT).content,
                          headers={"x-test-subject": "mallory", "content-type": "text/plain"}) for _ in range(2)]
    assert [r.status_code for r in smuggled] == [200, 429]


def test_calls_without_a_generation_body_reserve_nothing() -> None:
    http = InProcess(guarded(ChatApp(), quota=10))
    responses = [http.get("/v1/chat/completions", headers={"x-test-subject": "a"}),
                 http.post("/v1/chat/completions", json={"model": "m"}, headers={"x-test-subject": "a"})]
    assert [r.status_code for r in responses] == [200, 200]
    assert all("ratelimit" not in r.headers for r in responses)


def test_an_admitted_call_advertises_the_token_quota() -> None:
    response = InProcess(guarded(ChatApp())).post("/v1/chat/completions", json=CHAT, headers={"x-test-subject": "a"})
    assert response.headers["ratelimit-policy"] == '"subject-tokens";q=1000;w=31104000;dsguard-unit="tokens"'
    assert token_remaining(response) == 900


def test_an_ip_entry_counts_requests_before_identity_and_reserves_tokens_after_it() -> None:
    text = OPEN + '[[rate_limits]]\nkey = "ip"\nlimit = "5/second"\ntokens = "1000/day"\n'
    checks = {c.name: c for c in Guard(config(text)).pipeline.checks}
    assert checks["rate-limit-ip"].stage == "pre-auth" and not checks["rate-limit-ip"].needs_body  # type: ignore
    assert checks["rate-limit"].stage == "quota" and checks["rate-limit"].needs_body  # type: ignore


# --- settlement ------------------------------------------------------------------------------------------------------

def test_reported_usage_refunds_the_unused_part_of_the_reservation(served: Served, subject: str) -> None:
    assert token_remaining(served.call(subject, "?usage=30")) == 900
    assert served.remaining(subject) == 970


def test_usage_above_the_reservation_is_charged_when_settled(served: Served, subject: str) -> None:
    served.call(subject, "?usage=150")
    assert served.remaining(subject) == 850


def test_unreported_usage_keeps_the_whole_reservation_charged(served: Served, subject: str) -> None:
    assert served.call(subject).status_code == 200
    assert served.remaining(subject) == 900


def test_an_error_response_without_usage_refunds_the_whole_reservation(served: Served, subject: str) -> None:
    assert served.call(subject, "?status=500").status_code == 500
    assert served.remaining(subject) == 1000


def test_a_denial_by_a_later_check_refunds_the_whole_reservation(storage_url: str, subject: str) -> None:
    with serve(storage_url, checks=(AsyncDenyHeader(),)) as server:
        assert server.call(subject, headers={"x-deny": "1"}).status_code == 403
        assert server.remaining(subject) == 1000


def test_a_client_that_disconnects_mid_stream_is_charged_only_for_the_tokens_generated(
        storage_url: str, subject: str) -> None:
    with serve(storage_url, quota=5000) as server:
        before = server.settled.count
        body = {**CHAT, "max_tokens": 1000, "stream": True}
        with httpx.stream("POST", server.url + "/v1/stream", json=body, headers={"x-test-subject": subject},
                          timeout=20) as response:
            assert token_remaining(response) == 5000 - 1010
            received = b""
            for chunk in response.iter_raw():
                received += chunk
                if received.count(b"data:") >= 3:
                    break
        server.settled.wait(before + 1)
        used = server.chat.streamed[0]
        assert used < 1010
        assert server.remaining(subject) == 5000 - used
