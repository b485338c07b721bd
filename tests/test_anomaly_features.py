"""Behaviour features: what one call contributes, and what a caller's sliding window adds up to."""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import pytest

from dsguard.anomaly.baseline import Baseline, hour_surprise
from dsguard.anomaly.features import Event, WindowStats, caller_key, hour_of, observe, vector
from dsguard.anomaly.store import MemoryStore, StoreSettings
from dsguard.context import Identity, RequestContext, ResponseInfo

OWN = frozenset({"anomaly", "anomaly-ip"})
T0 = 1_736_157_600.0
SETTINGS = StoreSettings(window=600, slots=10, population_span=1000, identity_span=100)


def context(body: dict[str, Any] | None = None, *, subject: str | None = "alice", ip: str = "203.0.113.9",
            path: str = "/v1/chat/completions") -> RequestContext:
    ctx = RequestContext("POST", path, path.encode(), b"", [], ip, "https")
    if subject is not None:
        ctx.identity = Identity(subject=subject, method="test")
    ctx.json = body
    return ctx


def chat(content: str, **fields: Any) -> dict[str, Any]:
    return {"model": "deepseek-chat", "messages": [{"role": "user", "content": content}], **fields}


def ok() -> ResponseInfo:
    return ResponseInfo(status=200, complete=True)


def event(route: str = "/v1/chat/completions", *, model: str | None = "deepseek-chat", ip: str | None = "10.0.0.1",
          denied: bool = False, tokens: int = 100, prompt: int | None = 50, max_tokens: int | None = None) -> Event:
    return Event(route=route, model=model, ip=ip, denied=denied, tokens=tokens, prompt_tokens=prompt,
                 max_tokens=max_tokens)


def window(events: list[tuple[float, Event]], key: str = "sub:alice") -> WindowStats:
    store = MemoryStore(SETTINGS)

    async def run() -> WindowStats:
        stats = None
        for t, e in events:
            stats = (await store.record(key, e, t)).window
        assert stats is not None
        return stats

    return asyncio.run(run())


def features(stats: WindowStats, now: float) -> dict[str, float | None]:
    return vector(stats, now, window=SETTINGS.window, min_span=SETTINGS.slot_seconds, time_of_day=None)


def test_prompt_length_counts_message_text_in_estimated_tokens() -> None:
    seen = observe(context(chat("x" * 400)), ok(), OWN)
    assert seen.prompt_tokens == math.ceil((len("user") + 400) / 4)


def test_calls_without_a_prompt_have_no_prompt_length() -> None:
    assert observe(context(None), ok(), OWN).prompt_tokens is None


def test_reported_usage_is_the_calls_token_count() -> None:
    ctx = context(chat("hello", max_tokens=4000))
    ctx.attributes["llm_usage"] = {"prompt_tokens": 12, "completion_tokens": 30}
    assert observe(ctx, ok(), OWN).tokens == 42


def test_without_reported_usage_a_served_call_counts_its_prompt_and_budget() -> None:
    seen = observe(context(chat("x" * 396, max_tokens=1000)), ok(), OWN)
    assert seen.tokens == 100 + 1000
    assert seen.max_tokens == 1000


def test_a_refused_call_without_reported_usage_counts_no_tokens() -> None:
    refused = ResponseInfo(status=403, complete=True, denied_by="prompt-guard")
    assert observe(context(chat("x" * 396, max_tokens=1000)), refused, OWN).tokens == 0


def test_a_body_without_a_completion_budget_has_none() -> None:
    assert observe(context(chat("hi")), ok(), OWN).max_tokens is None


@pytest.mark.parametrize(("response", "denied"), [
    (ResponseInfo(status=401, complete=True, denied_by="jwt"), True),
    (ResponseInfo(status=403, complete=True, denied_by="prompt-guard"), True),
    (ResponseInfo(status=401, complete=True), True),
    (ResponseInfo(status=429, complete=True), True),
    (ResponseInfo(status=404, complete=True), False),
    (ResponseInfo(status=200, complete=True), False),
    (ResponseInfo(status=None, disconnected=True), False),
])
def test_guard_denials_and_refusals_by_the_app_count_as_denials(response: ResponseInfo, denied: bool) -> None:
    assert observe(context(), response, OWN).denied is denied


def test_the_anomaly_checks_own_refusals_are_not_counted_as_denials() -> None:
    blocked = ResponseInfo(status=403, complete=True, denied_by="anomaly")
    assert observe(context(), blocked, OWN).denied is False


def test_the_model_named_in_the_body_is_recorded() -> None:
    assert observe(context(chat("hi")), ok(), OWN).model == "deepseek-chat"


def test_the_caller_is_the_verified_subject_else_the_client_address() -> None:
    assert caller_key(context(subject="alice")) == "sub:alice"
    assert caller_key(context(subject=None, ip="198.51.100.4")) == "ip:198.51.100.4"


def test_rate_is_per_minute_of_the_callers_active_span() -> None:
    stats = window([(T0 + 10 * i, event()) for i in range(30)])  # 30 calls over 290 s
    assert features(stats, T0 + 290)["rate"] == pytest.approx(math.log1p(30 / (290 / 60)))


def test_a_fresh_burst_is_counted_over_at_least_one_slot() -> None:
    stats = window([(T0 + 0.1 * i, event()) for i in range(10)])
    assert features(stats, T0 + 0.9)["rate"] == pytest.approx(math.log1p(10))


def test_the_window_forgets_calls_older_than_the_window() -> None:
    early = [(T0 + i, event(denied=True)) for i in range(5)]
    stats = window([*early, (T0 + 700, event()), (T0 + 701, event())])
    assert (stats.requests, stats.denied) == (2, 0)


def test_a_pause_longer_than_the_window_starts_a_new_active_span() -> None:
    stats = window([(T0, event()), (T0 + 1000, event())])
    assert stats.since == T0 + 1000


def test_distinct_routes_models_and_addresses_are_counted() -> None:
    calls = [event(f"/v1/files/{i % 7}", model=f"m{i % 3}", ip=f"10.0.0.{i % 2}") for i in range(21)]
    stats = window([(T0 + i, e) for i, e in enumerate(calls)])
    assert (stats.routes, stats.models, stats.ips) == (7, 3, 2)


def test_denial_ratio_is_shrunk_toward_zero_for_few_calls() -> None:
    one = features(window([(T0, event(denied=True))]), T0)
    many = features(window([(T0 + i, event(denied=True)) for i in range(36)]), T0 + 35)
    assert one["denial_ratio"] == pytest.approx(1 / 5)
    assert many["denial_ratio"] == pytest.approx(36 / 40)


def test_token_and_budget_features_average_over_the_calls_that_have_them() -> None:
    calls = [event(tokens=1000, max_tokens=2000), event(tokens=3000, max_tokens=None), event(prompt=None, tokens=0)]
    values = features(window([(T0 + i, e) for i, e in enumerate(calls)]), T0 + 2)
    assert values["tokens"] == pytest.approx(math.log1p(2000))
    assert values["max_tokens"] == pytest.approx(math.log1p(2000))


def test_steady_pacing_reads_as_regular_and_random_gaps_do_not() -> None:
    rng = random.Random(5)
    steady = window([(T0 + 30 * i * rng.uniform(0.999, 1.001), event()) for i in range(20)])
    t, human = T0, []
    for _ in range(20):
        t += rng.expovariate(1 / 30)
        human.append((t, event()))
    paced = features(steady, T0 + 600)["regularity"]
    random_gaps = features(window(human), t)["regularity"]
    assert paced is not None and random_gaps is not None
    assert paced < math.log(0.1)
    assert random_gaps > math.log(0.5)


def test_regularity_is_unmeasured_before_eight_gaps() -> None:
    stats = window([(T0 + 30 * i, event()) for i in range(8)])
    assert features(stats, T0 + 210)["regularity"] is None


def test_time_of_day_surprise_is_higher_outside_the_usual_hours() -> None:
    population = Baseline()
    for _ in range(5):
        for hour in (9, 10, 11, 14, 15, 16):
            population.learn({}, hour, {}, span=1000)
    fresh = Baseline()
    assert hour_of(T0) == 10
    usual = hour_surprise(10, population, fresh)
    night = hour_surprise(3, population, fresh)
    assert usual is not None and night is not None
    assert night > usual + 2


def test_time_of_day_is_unmeasured_before_any_activity_was_learned() -> None:
    assert hour_surprise(3, Baseline(), Baseline()) is None
