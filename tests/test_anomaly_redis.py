"""Anomaly state shared through a real redis-server: replicas count one caller together, and a Redis
outage follows ``[storage] on_error``."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest
import redis

from dsguard.anomaly.features import FEATURE_NAMES, Event
from dsguard.anomaly.redis import RedisStore
from dsguard.anomaly.store import MemoryStore, Snapshot, StoreSettings

from .conftest import run_redis_server
from .test_anomaly_check import (
    Caller,
    Scorings,
    SimClock,
    anomaly_section,
    build_checks,
    ordinary_traffic,
    served,
    warm_up,
)

DATABASE = 9


@pytest.fixture
def shared_url(redis_server: str) -> Iterator[str]:
    """The session's redis-server, on a database of its own, emptied for each test."""
    url = redis_server.rsplit("/", 1)[0] + f"/{DATABASE}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    yield url


def storage(url: str, on_error: str = "fail-closed") -> str:
    return f'[storage]\nurl = "{url}"\non_error = "{on_error}"\n'


def test_two_replicas_count_one_callers_calls_together(shared_url: str) -> None:
    clock, scorings = SimClock(), Scorings()
    section = anomaly_section("block")
    replicas = [build_checks(section, clock, scorings, storage(shared_url)) for _ in range(2)]
    with served(replicas[0]) as first, served(replicas[1]) as second:
        callers = [Caller(url, clock, scorings, "good dora") for url in (first, second)]
        for n in range(12):
            assert callers[n % 2].call("/v1/models", after=2).status_code == 200
    windows = [s.window for s in scorings.of("sub:dora")]
    assert [w.requests for w in windows] == list(range(1, 13))
    assert windows[-1].gaps == 11


def test_scraping_burst_split_across_two_replicas_is_blocked_on_both(shared_url: str) -> None:
    clock, scorings = SimClock(), Scorings()
    section = anomaly_section("block")
    replicas = [build_checks(section, clock, scorings, storage(shared_url)) for _ in range(2)]
    warm_up(replicas[0], clock, ordinary_traffic())
    with served(replicas[0]) as first, served(replicas[1]) as second:
        callers = [Caller(url, clock, scorings, "good mallory") for url in (first, second)]
        responses = [callers[n % 2].call(f"/v1/files/file-{n}", after=0.2) for n in range(40)]
    statuses = [r.status_code for r in responses]
    assert statuses[:5] == [200] * 5
    assert statuses[-2:] == [403, 403]
    assert {r.json()["error"]["code"] for r in responses[-2:]} == {"anomaly_blocked"}


def test_memory_and_redis_stores_compute_identical_windows_and_baselines(shared_url: str) -> None:
    settings = StoreSettings(window=600, slots=10, population_span=50, identity_span=20)
    rng = random.Random(4)

    async def compare() -> tuple[Snapshot, Snapshot]:
        """Both stores fed the same calls and observations; their answers must match at every step."""
        memory, shared = MemoryStore(settings), RedisStore(shared_url, settings)
        t = 1_736_157_600.0
        for _ in range(300):
            t += rng.expovariate(1 / 7)
            key = f"sub:member-{rng.randint(0, 4)}"
            call = Event(route=f"/v1/r{rng.randint(0, 3)}", model=rng.choice(["a", "b", None]),
                         ip=f"10.0.0.{rng.randint(0, 2)}", denied=rng.random() < 0.2, tokens=rng.randint(0, 900),
                         prompt_tokens=rng.choice([None, rng.randint(1, 500)]),
                         max_tokens=rng.choice([None, 256, 1024]))
            in_memory, in_redis = await memory.record(key, call, t), await shared.record(key, call, t)
            assert in_redis == in_memory
            values = {name: rng.gauss(1, 2) if rng.random() < 0.9 else None for name in FEATURE_NAMES}
            hour = rng.randint(0, 23)
            assert await shared.learn(key, values, hour, t) == await memory.learn(key, values, hour, t)
        await shared.close()
        return in_memory, in_redis

    _, in_redis = asyncio.run(compare())
    assert in_redis.population.observations > 50


def outage(on_error: str, action: str = "block") -> tuple[int, int, dict[str, object]]:
    """Status of a call while Redis answers, then of one after it went down, and that call's body."""
    clock, scorings = SimClock(), Scorings()
    with run_redis_server() as server:
        checks = build_checks(anomaly_section(action), clock, scorings, storage(server.url, on_error))
        with served(checks) as url:
            caller = Caller(url, clock, scorings, "good erin")
            before = caller.call("/v1/models", after=1).status_code
            server.stop()
            clock.now += 1
            after = caller.http.get("/v1/models", headers={"x-test-key": "good erin"})
    return before, after.status_code, after.json()


def test_redis_down_with_fail_closed_refuses_calls_with_503() -> None:
    before, after, body = outage("fail-closed")
    assert (before, after) == (200, 503)
    assert body["error"]["code"] == "storage_unavailable"  # type: ignore[index]


def test_redis_down_with_local_fallback_lets_calls_through() -> None:
    before, after, body = outage("local-fallback")
    assert (before, after) == (200, 200)
    assert body == {"anomaly": None}


def test_redis_down_never_refuses_calls_that_would_only_be_flagged() -> None:
    before, after, body = outage("fail-closed", action="flag")
    assert (before, after) == (200, 200)
    assert body == {"anomaly": None}
