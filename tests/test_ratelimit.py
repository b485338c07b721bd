"""Request rate limits: bucket semantics, keys, cost, RateLimit headers, and Redis outages."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from dsguard import GuardMiddleware, GuardWSGIMiddleware
from dsguard.checks.ratelimit import RateLimitCheck
from dsguard.context import Identity, RequestContext
from dsguard.errors import ConfigError
from dsguard.guard import Guard
from dsguard.limits import Bucket, open_limiter
from dsguard.limits.memory import MemoryLimiter
from dsguard.limits.rules import bucket_specs

from .conftest import RedisServer, run_redis_server, run_uvicorn, run_werkzeug
from .helpers import InProcess, config

OPEN = "[transport]\nrequire_https = false\n"


class HeaderClaimsIdentity:
    """Trusts ``x-test-subject``, ``x-test-tenant`` and ``x-test-org``: a stand-in identity source."""

    name = "test-claims-identity"
    stage = "identity"

    def check(self, ctx: RequestContext) -> None:
        subject = ctx.headers.get("x-test-subject")
        if subject:
            org = ctx.headers.get("x-test-org")
            ctx.identity = Identity(subject=subject, method="test", tenant=ctx.headers.get("x-test-tenant"),
                                    claims={"org": org} if org else {})


class CountingIdentity:
    """An identity-stage check that only counts the calls reaching it."""

    name = "counting-identity"
    stage = "identity"

    def __init__(self) -> None:
        self.calls = 0

    def check(self, ctx: RequestContext) -> None:
        self.calls += 1


async def ok(request: Request) -> JSONResponse:
    return JSONResponse({"path": request.url.path})


def app() -> Starlette:
    return Starlette(routes=[Route("/{name:path}", ok, methods=["GET", "POST"])])


def guarded(limits: str, *, sections: str = "", checks: tuple[Any, ...] = ()) -> GuardMiddleware:
    return GuardMiddleware(app(), config=config(OPEN + sections + limits),
                           checks=[HeaderClaimsIdentity(), *checks])


def statuses(send: Callable[[], httpx.Response], times: int) -> list[int]:
    return [send().status_code for _ in range(times)]


def rate_check(guard: GuardMiddleware | GuardWSGIMiddleware, name: str = "rate-limit-ip") -> RateLimitCheck:
    return next(c for c in guard.guard.pipeline.checks if isinstance(c, RateLimitCheck) and c.name == name)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admitted(limiter: MemoryLimiter, bucket: Bucket, times: int) -> int:
    async def run() -> int:
        return sum([(await limiter.acquire([bucket], [1])).allowed for _ in range(times)])

    return asyncio.run(run())


# --- bucket semantics ----------------------------------------------------------------------------------------------

def test_limit_10_per_second_with_burst_20_admits_30_at_once_then_refuses() -> None:
    bucket = bucket_specs("ip", "10/second", burst=20)[0].bucket("192.0.2.1")
    assert admitted(MemoryLimiter(clock=Clock()), bucket, 40) == 30


def test_after_the_burst_one_call_is_admitted_per_interval() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock=clock)
    bucket = bucket_specs("ip", "10/second", burst=20)[0].bucket("192.0.2.1")
    admitted(limiter, bucket, 30)
    clock.now += 0.1
    assert admitted(limiter, bucket, 5) == 1
    clock.now += 0.05
    assert admitted(limiter, bucket, 5) == 0


def test_a_refused_call_learns_how_long_to_wait() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock=clock)
    bucket = bucket_specs("ip", "10/second", burst=20)[0].bucket("192.0.2.1")
    admitted(limiter, bucket, 30)
    clock.now += 0.04
    verdict = asyncio.run(limiter.acquire([bucket], [1]))
    assert not verdict.allowed and verdict.retry_after == pytest.approx(0.06)


def test_an_idle_key_refills_to_limit_plus_burst_and_no_further() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock=clock)
    bucket = bucket_specs("ip", "10/second", burst=20)[0].bucket("192.0.2.1")
    admitted(limiter, bucket, 30)
    clock.now += 3600
    assert admitted(limiter, bucket, 40) == 30


def test_a_call_refused_by_one_window_takes_nothing_from_the_others() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock=clock)
    buckets = [spec.bucket("192.0.2.1") for spec in bucket_specs("ip", "2/second;3/minute")]

    def acquire() -> Any:
        return asyncio.run(limiter.acquire(buckets, [1, 1]))

    assert [acquire().allowed for _ in range(3)] == [True, True, False]
    clock.now += 1
    assert acquire().allowed
    refused = acquire()
    assert not refused.allowed
    per_second, per_minute = refused.states
    assert per_second.remaining == 1 and per_second.wait == 0
    assert per_minute.remaining == 0 and per_minute.wait > 0


@pytest.fixture(params=["memory", "redis"])
def storage_url(request: pytest.FixtureRequest) -> str:
    return "memory://" if request.param == "memory" else str(request.getfixturevalue("redis_server"))


def test_memory_and_redis_admit_exactly_limit_plus_burst(storage_url: str) -> None:
    bucket = bucket_specs("ip", "20/hour", burst=5)[0].bucket(uuid.uuid4().hex)

    async def run() -> list[bool]:
        limiter = open_limiter(storage_url)
        try:
            return [(await limiter.acquire([bucket], [1])).allowed for _ in range(40)]
        finally:
            await limiter.close()

    assert asyncio.run(run()) == [True] * 25 + [False] * 15


def test_memory_and_redis_refund_and_report_the_same_remaining(storage_url: str) -> None:
    bucket = bucket_specs("t", "1000/year", tokens=True)[0].bucket(uuid.uuid4().hex)

    async def run() -> tuple[int, int]:
        limiter = open_limiter(storage_url)
        try:
            taken = await limiter.acquire([bucket], [300])
            await limiter.adjust([bucket], [-120])
            after = await limiter.acquire([bucket], [0])
            return taken.states[0].remaining, after.states[0].remaining
        finally:
            await limiter.close()

    assert asyncio.run(run()) == (700, 820)


# --- keys ------------------------------------------------------------------------------------------------------------

IP_LIMIT = '[[rate_limits]]\nkey = "ip"\nlimit = "3/hour"\nburst = 2\n'


def test_an_ip_flood_without_credentials_is_refused_before_identity_checks_run() -> None:
    counting = CountingIdentity()
    http = InProcess(guarded(IP_LIMIT, sections="[identity]\nanonymous = false\n", checks=(counting,)))
    assert statuses(lambda: http.get("/chat"), 12) == [401] * 5 + [429] * 7
    assert counting.calls == 5


def test_rotating_x_forwarded_for_from_an_untrusted_peer_does_not_escape_the_ip_limit() -> None:
    http = InProcess(guarded(IP_LIMIT), peer="198.51.100.9")
    codes = [http.get("/chat", headers={"x-forwarded-for": f"203.0.113.{i}"}).status_code for i in range(8)]
    assert codes == [200] * 5 + [429] * 3


def test_the_ip_limit_counts_the_client_named_by_a_trusted_proxy() -> None:
    proxied = "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n"
    http = InProcess(guarded(IP_LIMIT, sections=proxied))
    first = statuses(lambda: http.get("/chat", headers={"x-forwarded-for": "203.0.113.1"}), 6)
    second = statuses(lambda: http.get("/chat", headers={"x-forwarded-for": "203.0.113.2"}), 1)
    assert (first, second) == ([200] * 5 + [429], [200])


def test_a_subject_limit_counts_each_subject_separately() -> None:
    http = InProcess(guarded('[[rate_limits]]\nkey = "subject"\nlimit = "2/hour"\n'))
    assert statuses(lambda: http.get("/chat", headers={"x-test-subject": "alice"}), 3) == [200, 200, 429]
    assert http.get("/chat", headers={"x-test-subject": "bob"}).status_code == 200


def test_a_claim_limit_counts_every_caller_with_the_same_claim_value_together() -> None:
    http = InProcess(guarded('[[rate_limits]]\nkey = "claim:org"\nlimit = "2/hour"\n'))

    def call(subject: str, org: str) -> int:
        return http.get("/chat", headers={"x-test-subject": subject, "x-test-org": org}).status_code

    assert [call("alice", "acme"), call("bob", "acme"), call("carol", "acme"), call("dave", "other")] == [
        200, 200, 429, 200]


def test_a_tenant_limit_counts_every_subject_of_the_tenant_together() -> None:
    http = InProcess(guarded('[[rate_limits]]\nkey = "tenant"\nlimit = "1/hour"\n'))

    def call(subject: str, tenant: str) -> int:
        return http.get("/chat", headers={"x-test-subject": subject, "x-test-tenant": tenant}).status_code

    assert [call("alice", "t1"), call("bob", "t1"), call("carol", "t2")] == [200, 429, 200]


def test_a_route_limit_counts_each_path_separately() -> None:
    http = InProcess(guarded('[[rate_limits]]\nkey = "route"\nlimit = "1/hour"\n'))
    assert [http.get(p).status_code for p in ("/a", "/a", "/b")] == [200, 429, 200]


def test_a_model_limit_counts_each_model_named_in_the_json_body() -> None:
    http = InProcess(guarded('[[rate_limits]]\nkey = "model"\nlimit = "1/hour"\n'))

    def call(model: str) -> int:
        return http.post("/v1/chat/completions", json={"model": model, "messages": []}).status_code

    assert [call("deepseek-chat"), call("deepseek-chat"), call("deepseek-reasoner")] == [200, 429, 200]


def test_a_model_name_that_is_not_valid_unicode_is_refused_before_it_is_counted(redis_server: str) -> None:
    name = uuid.uuid4().hex[:12]
    limits = f'[storage]\nurl = "{redis_server}"\n[[rate_limits]]\nkey = "model"\nlimit = "1/hour"\nname = "{name}"\n'
    body = b'{"model": "\\ud800", "messages": []}'
    with run_uvicorn(guarded(limits)) as url:
        answers = [httpx.post(url + "/v1/chat/completions", content=body,
                              headers={"content-type": "application/json"}) for _ in range(2)]
    assert [(a.status_code, a.json()["error"]["code"]) for a in answers] == [(400, "invalid_json")] * 2


def test_long_key_values_are_stored_by_digest_and_still_counted_apart() -> None:
    http = InProcess(guarded('[[rate_limits]]\nkey = "subject"\nlimit = "1/hour"\n'))
    first, second = "a" * 500, "a" * 499 + "b"
    assert [http.get("/chat", headers={"x-test-subject": s}).status_code for s in (first, first, second)] == [
        200, 429, 200]


def test_a_cost_makes_one_call_count_as_several_requests() -> None:
    http = InProcess(guarded('[[rate_limits]]\nkey = "ip"\nlimit = "6/hour"\ncost = 3\n'))
    assert statuses(lambda: http.get("/chat"), 3) == [200, 200, 429]


def test_calls_without_a_value_for_the_key_are_not_counted() -> None:
    http = InProcess(guarded('[[rate_limits]]\nkey = "subject"\nlimit = "1/hour"\n'))
    responses = [http.get("/chat") for _ in range(3)]
    assert [r.status_code for r in responses] == [200] * 3
    assert "ratelimit" not in responses[0].headers


def test_ip_limits_run_before_identity_and_the_others_after_policy() -> None:
    guard = Guard(config(OPEN + IP_LIMIT + '[[rate_limits]]\nkey = "subject"\nlimit = "1/hour"\n'))
    stages = {c.name: c.stage for c in guard.pipeline.checks}
    assert stages["rate-limit-ip"] == "pre-auth" and stages["rate-limit"] == "quota"


# --- headers ---------------------------------------------------------------------------------------------------------

def test_an_admitted_call_carries_ratelimit_policy_and_ratelimit() -> None:
    http = InProcess(guarded('[[rate_limits]]\nkey = "ip"\nlimit = "20/minute"\nburst = 5\n'))
    response = http.get("/chat")
    assert response.headers["ratelimit-policy"] == '"ip";q=20;w=60;dsguard-burst=5'
    assert response.headers["ratelimit"] == '"ip";r=24;t=3'


def test_a_refused_call_carries_retry_after_and_names_the_refused_policy() -> None:
    http = InProcess(guarded('[[rate_limits]]\nkey = "ip"\nlimit = "1/hour"\n'))
    http.get("/chat")
    refused = http.get("/chat")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused.headers["retry-after"] == "3600"
    assert refused.headers["ratelimit-policy"] == '"ip";q=1;w=3600'
    assert refused.headers["ratelimit"] == '"ip";r=0;t=3600'


def test_each_window_of_an_entry_is_advertised_as_its_own_policy() -> None:
    http = InProcess(guarded('[[rate_limits]]\nkey = "ip"\nlimit = "10/second;600/minute"\nname = "edge"\n'))
    response = http.get("/chat")
    assert response.headers["ratelimit-policy"] == '"edge-1s";q=10;w=1, "edge-60s";q=600;w=60'
    assert response.headers["ratelimit"] == '"edge-1s";r=9;t=1, "edge-60s";r=599;t=1'


def test_a_streamed_response_carries_the_ratelimit_headers_at_its_start() -> None:
    release = threading.Event()

    async def events(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"data: one\n\n"
            await asyncio.to_thread(release.wait, 10)
            yield b"data: two\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    guard = GuardMiddleware(Starlette(routes=[Route("/events", events)]),
                            config=config(OPEN + '[[rate_limits]]\nkey = "ip"\nlimit = "5/minute"\n'))
    with run_uvicorn(guard) as url, httpx.stream("GET", url + "/events", timeout=20) as response:
        headers = dict(response.headers)
        first = next(response.iter_raw())
        release.set()
    assert first == b"data: one\n\n"
    assert headers["ratelimit"] == '"ip";r=4;t=12'
    assert headers["ratelimit-policy"] == '"ip";q=5;w=60'


# --- configuration ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("entry", "message"), [
    ('key = "user"\nlimit = "1/hour"\n', "[rate_limits] #1 key: unknown key 'user'"),
    ('key = "ip"\n', "[rate_limits] #1 limit: an entry needs a request `limit`, a `tokens` quota, or both"),
    ('key = "ip"\nlimit = "2/hour"\ncost = 3\n', "[rate_limits] #1 cost: one call would cost more"),
    ('key = "ip"\nlimit = "2/hour"\nburst = -1\n', "[rate_limits] #1 burst: expected an integer of at least 0"),
    ('key = "ip"\nlimit = "2/hour"\nname = "a b"\n', '[rate_limits] #1 name: expected 1 to 64 letters'),
    ('key = "subject"\ntokens = "0/day"\n', "[rate_limits] #1 tokens: every window needs a limit of at least 1"),
])
def test_a_bad_entry_is_refused_naming_its_key(entry: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Guard(config(OPEN + "[[rate_limits]]\n" + entry))
    assert message in str(caught.value)


def test_two_entries_cannot_share_a_name() -> None:
    text = OPEN + '[[rate_limits]]\nkey = "ip"\nlimit = "1/hour"\nname = "x"\n' * 2
    with pytest.raises(ConfigError, match=r"#2 name: another entry is already named 'x'"):
        Guard(config(text))


def test_two_entries_with_the_same_key_keep_separate_counters() -> None:
    http = InProcess(guarded('[[rate_limits]]\nkey = "ip"\nlimit = "1/hour"\n'
                             '[[rate_limits]]\nkey = "ip"\nlimit = "5/hour"\n'))
    response = http.get("/chat")
    assert response.headers["ratelimit"] == '"ip";r=0;t=3600, "ip-2";r=4;t=720'


# --- storage outages -------------------------------------------------------------------------------------------------

@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with run_redis_server() as server:
        yield server


def with_storage(url: str, on_error: str, limit: str = "100000/hour") -> str:
    return (f'[storage]\nurl = "{url}"\non_error = "{on_error}"\n[pipeline]\ncheck_timeout = "3s"\n'
            f'[[rate_limits]]\nkey = "ip"\nlimit = "{limit}"\n')


class Load:
    """Calls a URL in a loop from a thread, recording each status and error code."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.results: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                response = client.get(self.url)
                code = response.json()["error"]["code"] if response.status_code >= 400 else None
                self.results.append((response.status_code, code))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=20)

    def wait_for(self, predicate: Callable[[tuple[int, str | None]], bool], since: int = 0,
                 within: float = 20.0) -> int:
        """Index of the first result from ``since`` on matching ``predicate``."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for index in range(since, len(self.results)):
                if predicate(self.results[index]):
                    return index
            time.sleep(0.02)
        raise AssertionError(f"no matching result within {within} s: {self.results[since:][-5:]}")


def test_fail_closed_refuses_with_503_while_redis_is_stopped_and_recovers_after_restart(
        own_redis: RedisServer) -> None:
    guard = guarded("", sections=with_storage(own_redis.url, "fail-closed"))
    with run_uvicorn(guard) as url, Load(url + "/chat") as load:
        load.wait_for(lambda r: r[0] == 200)
        stopped_at = len(load.results)
        own_redis.stop()
        refused = load.wait_for(lambda r: r[0] == 503, since=stopped_at)
        own_redis.start()
        load.wait_for(lambda r: r[0] == 200, since=refused)
    assert {result for result in load.results if result[0] != 200} == {(503, "storage_unavailable")}


def test_a_refusal_for_unavailable_storage_says_when_to_retry(own_redis: RedisServer) -> None:
    guard = guarded("", sections=with_storage(own_redis.url, "fail-closed"))
    own_redis.stop()
    with run_uvicorn(guard) as url:
        response = httpx.get(url + "/chat")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"


def test_a_hung_redis_costs_a_bounded_wait_not_the_check_timeout(own_redis: RedisServer) -> None:
    guard = guarded("", sections=with_storage(own_redis.url, "fail-closed"))
    assert own_redis.process is not None
    with run_uvicorn(guard) as url:
        assert httpx.get(url + "/chat").status_code == 200
        own_redis.process.send_signal(signal.SIGSTOP)
        try:
            hung = httpx.get(url + "/chat", timeout=10)
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
    assert hung.status_code == 503 and hung.json()["error"]["code"] == "storage_unavailable"


def test_local_fallback_limits_per_process_while_redis_is_down(own_redis: RedisServer) -> None:
    guard = guarded("", sections=with_storage(own_redis.url, "local-fallback", limit="3/hour"))
    own_redis.stop()
    with run_uvicorn(guard) as url:
        codes = [httpx.get(url + "/chat").status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    assert rate_check(guard).fallbacks == 5


def test_local_fallback_serves_through_a_restart_and_returns_to_shared_limits(
        own_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    guard = guarded("", sections=with_storage(own_redis.url, "local-fallback"))
    check = rate_check(guard)
    with run_uvicorn(guard) as url, Load(url + "/chat") as load:
        load.wait_for(lambda r: r[0] == 200)
        assert check.fallbacks == 0
        own_redis.stop()
        deadline = time.monotonic() + 20
        while check.fallbacks == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        own_redis.start()
        shared_again = False
        while not shared_again and time.monotonic() < deadline + 20:
            before = check.fallbacks
            shared_again = httpx.get(url + "/chat").status_code == 200 and check.fallbacks == before
    assert shared_again
    assert {status for status, _ in load.results} == {200}
    assert "limiting per process" in caplog.text


def test_limits_hold_under_the_wsgi_adapter_with_redis(redis_server: str) -> None:
    def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    name = uuid.uuid4().hex[:12]
    text = (OPEN + f'[storage]\nurl = "{redis_server}"\n'
            f'[[rate_limits]]\nkey = "ip"\nlimit = "2/hour"\nname = "{name}"\n')
    with run_werkzeug(GuardWSGIMiddleware(wsgi_app, config=config(text))) as url:
        responses = [httpx.get(url + "/") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[0].headers["ratelimit"] == f'"{name}";r=1;t=1800'
