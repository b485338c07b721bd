"""Anomaly checks end to end: uvicorn, GuardMiddleware, httpx, a simulated clock.

The population baseline is warmed up by replaying ordinary traffic through the same check objects
in-process (the clock is simulated, so 15 minutes of traffic take a moment); then a caller talks to
the served app over HTTP. Each HTTP call is followed by waiting for its after-response recording,
so the clock the test sets is the clock every recording reads.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dsguard import GuardMiddleware
from dsguard.checks import anomaly
from dsguard.checks.anomaly import Scored
from dsguard.checks.base import Check
from dsguard.config import Config
from dsguard.context import Identity, RequestContext, ResponseInfo
from dsguard.decision import Denial, Unauthenticated
from dsguard.errors import ConfigError
from dsguard.pipeline import Pipeline
from dsguard.services import Services
from dsguard.storage.memory import MemoryStorage

from .conftest import run_uvicorn
from .helpers import config

OPEN = "[transport]\nrequire_https = false\n"
START = 1_736_157_600.0  # a Monday, 10:00 UTC
WARMUP_MINUTES = 15


def anomaly_section(action: str, extra: str = "") -> str:
    return f'[anomaly]\naction = "{action}"\nwarmup = 50\nmin_requests = 5\n{extra}'


class SimClock:
    """Epoch seconds that only move when the test moves them."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Scorings:
    """The checks' listener: every scoring, and a way to wait until the n-th has happened."""

    def __init__(self) -> None:
        self.seen: list[Scored] = []
        self._changed = threading.Condition()

    def __call__(self, scored: Scored) -> None:
        with self._changed:
            self.seen.append(scored)
            self._changed.notify_all()

    def wait(self, count: int) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.seen) >= count, timeout=30):
                raise AssertionError(f"only {len(self.seen)} of {count} calls were recorded")

    def of(self, key: str) -> list[Scored]:
        return [s for s in self.seen if s.key == key]


class KeyIdentity:
    """Stands in for token verification: ``x-test-key: good <subject>`` or a 401."""

    name = "test-key-identity"
    stage = "identity"

    def check(self, ctx: RequestContext) -> Denial | None:
        key = ctx.headers.get("x-test-key", "")
        if key.startswith("good "):
            ctx.identity = Identity(subject=key[5:], method="test")
            return None
        return Unauthenticated("invalid API key", code="invalid_token", error="invalid_token")


class DirectIO:
    async def read_body(self, limit: int) -> bytes:
        return b""

    async def wait(self, awaitable: Awaitable[Any], timeout: float | None) -> Any:
        return await awaitable


def build_checks(section: str, clock: SimClock, listener: Scorings | None = None, storage: str = "") -> list[Check]:
    settings: Config = config(OPEN + storage + section)
    return anomaly.build(settings, Services(settings, MemoryStorage()), clock=clock, listener=listener)


def ordinary_traffic(seed: int = 7, callers: int = 30, minutes: int = WARMUP_MINUTES
                     ) -> list[tuple[float, str, dict[str, Any]]]:
    """Callers chatting at random intervals (about one call every 20 s), sorted by time."""
    rng = random.Random(seed)
    calls = []
    for index in range(callers):
        t = START + rng.uniform(0, 20)
        prompt = rng.randint(200, 2000)
        while t < START + minutes * 60:
            body = {"model": "deepseek-chat", "max_tokens": 512,
                    "messages": [{"role": "user", "content": "x" * int(prompt * rng.uniform(0.7, 1.3))}]}
            calls.append((t, f"member-{index}", body))
            t += rng.expovariate(1 / 20)
    return sorted(calls, key=lambda call: call[0])


def warm_up(checks: Sequence[Check], clock: SimClock, traffic: list[tuple[float, str, dict[str, Any]]]) -> None:
    """Replay ``traffic`` through the checks in-process, each call answered 200 with its token usage."""
    pipeline = Pipeline([*checks], check_timeout=None)
    io = DirectIO()

    async def replay() -> None:
        for t, subject, body in traffic:
            clock.now = t
            ctx = RequestContext("POST", "/v1/chat/completions", b"/v1/chat/completions", b"", [],
                                 f"10.0.0.{len(subject) % 250}", "https")
            ctx.identity = Identity(subject=subject, method="test")
            ctx.json = body
            denial = await pipeline.evaluate(ctx, io)
            assert denial is None
            ctx.attributes["llm_usage"] = {"total_tokens": 300}
            await pipeline.finish(ctx, ResponseInfo(status=200, complete=True), io)

    asyncio.run(replay())
    clock.now = START + WARMUP_MINUTES * 60 + 60


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"anomaly": request.state.dsguard.attributes.get("anomaly")})


def app() -> Starlette:
    return Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])


@contextmanager
def served(checks: Sequence[Check], guard_sections: str = "") -> Iterator[str]:
    guard = GuardMiddleware(app(), config=config(OPEN + guard_sections), checks=[KeyIdentity(), *checks])
    with run_uvicorn(guard) as url:
        yield url


class Caller:
    """One HTTP client whose every call advances the simulated clock and waits to be recorded."""

    def __init__(self, url: str, clock: SimClock, scorings: Scorings, key: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)
        self.clock = clock
        self.scorings = scorings
        self.key = key

    def call(self, path: str, *, after: float, body: dict[str, Any] | None = None) -> httpx.Response:
        self.clock.now += after
        expected = len(self.scorings.seen) + 1
        if body is None:
            response = self.http.get(path, headers={"x-test-key": self.key})
        else:
            response = self.http.post(path, json=body, headers={"x-test-key": self.key})
        self.scorings.wait(expected)
        return response


def scrape(caller: Caller, pages: int) -> list[httpx.Response]:
    """A scraper walking distinct routes, five calls a second."""
    return [caller.call(f"/v1/files/file-{n}", after=0.2) for n in range(pages)]


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


@pytest.fixture
def scorings() -> Scorings:
    return Scorings()


def warmed(action: str, clock: SimClock, scorings: Scorings, extra: str = "") -> list[Check]:
    checks = build_checks(anomaly_section(action, extra), clock, scorings)
    warm_up(checks, clock, ordinary_traffic())
    return checks


def test_scraping_burst_after_warmup_is_flagged_for_the_app(clock: SimClock, scorings: Scorings) -> None:
    with served(warmed("flag", clock, scorings)) as url:
        responses = scrape(Caller(url, clock, scorings, "good mallory"), 40)
    assert [r.status_code for r in responses] == [200] * 40
    flags = [r.json()["anomaly"] for r in responses]
    assert flags[:5] == [None] * 5
    flagged = [flag for flag in flags if flag is not None]
    assert flagged, "the scraper was never flagged"
    assert flagged[-1]["action"] == "flag"
    assert flagged[-1]["score"] >= 8
    assert {"rate", "routes"} <= set(flagged[-1]["reasons"])


def test_scraping_burst_after_warmup_is_throttled_with_retry_after(clock: SimClock, scorings: Scorings) -> None:
    with served(warmed("throttle", clock, scorings, 'throttle_rate = "6/minute"\n')) as url:
        responses = scrape(Caller(url, clock, scorings, "good mallory"), 40)
    statuses = [r.status_code for r in responses]
    assert statuses[:5] == [200] * 5
    assert 429 in statuses
    first = statuses.index(429)
    throttled = responses[first]
    assert throttled.json()["error"]["code"] == "anomaly_throttled"
    assert int(throttled.headers["retry-after"]) >= 1
    assert statuses[first:].count(200) <= 6  # at most the throttle rate's bucket afterwards


def test_scraping_burst_after_warmup_is_blocked(clock: SimClock, scorings: Scorings) -> None:
    with served(warmed("block", clock, scorings)) as url:
        responses = scrape(Caller(url, clock, scorings, "good mallory"), 40)
    statuses = [r.status_code for r in responses]
    assert statuses[:5] == [200] * 5
    first = statuses.index(403)
    assert statuses[first:] == [403] * (40 - first)
    error = responses[-1].json()["error"]
    assert error["code"] == "anomaly_blocked"
    assert "mallory" not in responses[-1].text


def test_ordinary_caller_after_warmup_is_never_flagged(clock: SimClock, scorings: Scorings) -> None:
    rng = random.Random(11)
    with served(warmed("block", clock, scorings)) as url:
        caller = Caller(url, clock, scorings, "good carol")
        responses = [caller.call("/v1/chat/completions", after=rng.expovariate(1 / 20),
                                 body={"model": "deepseek-chat", "max_tokens": 512,
                                       "messages": [{"role": "user", "content": "x" * rng.randint(700, 1500)}]})
                     for _ in range(40)]
    assert [r.status_code for r in responses] == [200] * 40
    assert all(r.json()["anomaly"] is None for r in responses)
    assert all(s.score.ready and not s.score.anomalous for s in scorings.of("sub:carol")[5:])


def test_cold_start_never_acts_on_a_scraping_burst(clock: SimClock, scorings: Scorings) -> None:
    checks = build_checks(anomaly_section("block"), clock, scorings)
    with served(checks) as url:
        responses = scrape(Caller(url, clock, scorings, "good mallory"), 60)
    assert [r.status_code for r in responses] == [200] * 60
    assert not any(s.score.ready for s in scorings.seen)


def test_credential_stuffing_address_is_blocked_before_identity(clock: SimClock, scorings: Scorings) -> None:
    with served(warmed("block", clock, scorings)) as url:
        stuffer = Caller(url, clock, scorings, "stolen")
        attempts = [stuffer.call("/v1/chat/completions", after=0.5, body={"messages": []}) for _ in range(20)]
        statuses = [r.status_code for r in attempts]
        assert statuses[:5] == [401] * 5
        assert statuses[-1] == 403
        assert attempts[-1].json()["error"]["code"] == "anomaly_blocked"
        guessed = Caller(url, clock, scorings, "good victim").call("/v1/models", after=1)
    assert guessed.status_code == 403
    assert guessed.json()["error"]["code"] == "anomaly_blocked"


def test_block_ends_once_the_hold_has_passed(clock: SimClock, scorings: Scorings) -> None:
    with served(warmed("block", clock, scorings, 'hold = "2m"\n')) as url:
        caller = Caller(url, clock, scorings, "good mallory")
        assert scrape(caller, 40)[-1].status_code == 403
        later = caller.call("/v1/models", after=11 * 60)
    assert later.status_code == 200
    assert later.json()["anomaly"] is None


def test_report_mode_logs_a_block_and_lets_the_call_through(clock: SimClock, scorings: Scorings) -> None:
    with served(warmed("block", clock, scorings, 'mode = "report"\n')) as url:
        responses = scrape(Caller(url, clock, scorings, "good mallory"), 40)
    assert [r.status_code for r in responses] == [200] * 40
    assert responses[-1].json()["anomaly"]["action"] == "block"


def test_unknown_feature_is_a_config_error_naming_the_key(clock: SimClock) -> None:
    with pytest.raises(ConfigError, match=r"\[anomaly\] features: unknown feature 'mood'"):
        build_checks(anomaly_section("flag", 'features = ["rate", "mood"]\n'), clock)


def test_a_model_file_not_written_by_train_is_a_config_error(clock: SimClock, tmp_path: Any) -> None:
    model = tmp_path / "forest.onnx"
    model.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match=r"\[anomaly\] model: cannot load anomaly model"):
        build_checks(anomaly_section("flag", f'model = "{model}"\n'), clock)



def test_calls_refused_by_the_first_checks_are_recorded_too(clock: SimClock, scorings: Scorings) -> None:
    checks = build_checks(anomaly_section("flag"), clock, scorings)
    with served(checks) as url:
        response = httpx.request("TRACE", url + "/v1/models")
        scorings.wait(1)
    assert response.status_code == 405
    assert scorings.seen[0].window.denied == 1


def test_an_anomaly_section_puts_its_checks_into_the_guard_pipeline() -> None:
    guard = GuardMiddleware(app(), config=config(OPEN + anomaly_section("block")))
    stages = {check.name: check.stage for check in guard.guard.pipeline.checks}
    assert (stages["anomaly-observe"], stages["anomaly-ip"], stages["anomaly"]) == ("transport", "pre-auth", "anomaly")
    with run_uvicorn(guard) as url:
        response = httpx.get(url + "/v1/models")
    assert response.status_code == 200


class MeteredServices(Services):
    """The guard's services with a meter provider of the test's own (telemetry reads it the same way)."""

    def __init__(self, config: Config, provider: MeterProvider) -> None:
        super().__init__(config, MemoryStorage())
        self._provider = provider

    @property
    def meter_provider(self) -> MeterProvider:
        return self._provider


def test_scores_and_sanctions_are_exported_as_metrics_with_bounded_attributes(clock: SimClock,
                                                                              scorings: Scorings) -> None:
    reader = InMemoryMetricReader()
    settings: Config = config(OPEN + anomaly_section("flag", ""))
    checks = anomaly.build(settings, MeteredServices(settings, MeterProvider(metric_readers=[reader])), clock=clock,
                           listener=scorings)
    warm_up(checks, clock, ordinary_traffic())
    with served(checks) as url:
        scrape(Caller(url, clock, scorings, "good mallory"), 40)
    data = reader.get_metrics_data()
    assert data is not None
    metrics = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    points = list(metrics["dsguard.anomaly.score"].data.data_points)
    by_flag = {point.attributes["dsguard.anomalous"]: point for point in points}  # type: ignore[index]
    assert set(by_flag) == {True, False}
    assert by_flag[True].min >= 8 and by_flag[False].max < 8  # type: ignore[attr-defined]
    assert list(by_flag[True].explicit_bounds) == [1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0]  # type: ignore[attr-defined]
    sanctions = {p.attributes["dsguard.reason"]: p.value  # type: ignore[index,attr-defined]
                 for p in metrics["dsguard.anomaly.sanctions"].data.data_points}
    expected = Counter(reason for s in scorings.seen if s.score.anomalous for reason in s.score.reasons)
    assert sanctions == dict(expected) and {"rate", "routes"} <= set(sanctions)
    assert all(set(p.attributes) == {"dsguard.reason"} for p in metrics["dsguard.anomaly.sanctions"].data.data_points)
