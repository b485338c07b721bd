"""Behaviour anomaly scoring (``[anomaly]``): callers whose behaviour departs from the baselines
are flagged, throttled or blocked.

A caller is its verified subject, else its client address. After every response (denied calls
included, whichever check denied them), the call is added to its caller's sliding window, the
window's features are scored against the population's and the caller's own baselines (see
:mod:`dsguard.anomaly`), and then either the caller is *sanctioned* until ``now + hold`` (score at
or above the threshold) or the baselines learn from it. Two checks enforce sanctions:

- ``anomaly-ip`` (``pre-auth``, first in its stage): registers that after-response hook on every
  call, and enforces a sanction on the client address before identity checks spend work on it
  (callers without identity: credential stuffing, probing). A sanctioned address holds back
  every call from it, authenticated or not.
- ``anomaly`` (``anomaly`` stage): enforces a sanction on the verified subject.

Actions: ``flag`` sets ``ctx.attributes["anomaly"] = {"score", "reasons", "action"}`` and lets the
call through (the app reads it at ``request.state.dsguard.attributes``); ``throttle`` holds the
caller to ``throttle_rate`` (429 ``anomaly_throttled`` with ``Retry-After`` beyond it); ``block``
refuses every call (403 ``anomaly_blocked``). The attribute is set under every action.

Cold start: nothing is scored until the population baseline has ``warmup`` observations, nor a
caller with fewer than ``min_requests`` calls in the window, so a fresh deployment never acts.

Storage errors follow ``[storage] on_error``: ``fail-closed`` refuses calls with 503
``storage_unavailable`` while sanctions cannot be read (except under ``flag``, which never
refuses: the call passes unmarked); ``local-fallback`` keeps windows, baselines and sanctions per
process meanwhile (starting cold). A call whose recording fails is logged and not counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from ..anomaly.baseline import hour_surprise
from ..anomaly.features import FEATURE_NAMES, Vector, WindowStats, caller_key, hour_of, ip_key, observe, vector
from ..anomaly.metrics import AnomalyMetrics
from ..anomaly.model import IsolationForestModel, ModelError
from ..anomaly.scorer import Score, Scorer
from ..anomaly.store import FailoverStore, MemoryStore, Sanction, Store, StoreSettings, open_store
from ..config import AnomalyConfig, Config
from ..context import RequestContext, ResponseInfo
from ..decision import Denial, Forbidden, Overloaded, RateLimited
from ..errors import ConfigError
from ..limits import open_limiter
from ..limits.failover import FailoverLimiter
from ..limits.memory import MemoryLimiter
from ..limits.rules import BucketSpec, bucket_specs
from ..services import Services
from ..storage import StorageError
from .base import Check, Outcome

logger = logging.getLogger("dsguard.anomaly")

ATTRIBUTE = "anomaly"
OWN_CHECKS = frozenset({"anomaly-ip", "anomaly"})
Clock = Callable[[], float]


@dataclasses.dataclass(frozen=True, slots=True)
class Scored:
    """One scoring, as handed to a listener (metrics, evaluation)."""

    key: str
    now: float
    window: WindowStats
    values: Vector
    score: Score


Listener = Callable[[Scored], None]


class AnomalyRecorder:
    """The after-response hook: record the call, score its caller, then sanction or learn."""

    def __init__(self, store: Store, scorer: Scorer, settings: StoreSettings, *, hold: float, clock: Clock,
                 listener: Listener | None = None) -> None:
        self.store = store
        self.scorer = scorer
        self.settings = settings
        self.hold = hold
        self.clock = clock
        self.listener = listener

    async def __call__(self, ctx: RequestContext, response: ResponseInfo) -> None:
        key = caller_key(ctx)
        if key is None:
            return
        event = observe(ctx, response, OWN_CHECKS)
        now = self.clock()
        try:
            snapshot = await self.store.record(key, event, now)
            hour = hour_of(now)
            surprise = hour_surprise(hour, snapshot.population, snapshot.identity)
            values = vector(snapshot.window, now, window=self.settings.window, min_span=self.settings.slot_seconds,
                            time_of_day=surprise)
            args = (values, snapshot.population, snapshot.identity, snapshot.window.requests)
            # A trained model costs about a millisecond: keep it off the event loop.
            score = (self.scorer.score(*args) if self.scorer.model is None
                     else await asyncio.to_thread(self.scorer.score, *args))
            if self.listener is not None:
                self.listener(Scored(key, now, snapshot.window, values, score))
            if score.anomalous:
                await self.store.sanction(key, Sanction(score.value, score.reasons, now + self.hold), now)
            elif score.learnable:
                await self.store.learn(key, values, hour, now)
        except StorageError as exc:
            logger.warning("behaviour of request %s was not recorded (%s)", ctx.request_id, exc)


class Enforcer:
    """What a sanction means for the call at hand, under the configured action."""

    def __init__(self, store: Store, action: str, limiter: FailoverLimiter, throttle: tuple[BucketSpec, ...],
                 clock: Clock) -> None:
        self.store = store
        self.action = action
        self.limiter = limiter
        self.throttle = throttle
        self.clock = clock

    async def enforce(self, ctx: RequestContext, key: str) -> Denial | None:
        try:
            sanction = await self.store.sanction_of(key, self.clock())
        except StorageError:
            return self._unavailable()
        if sanction is None:
            return None
        ctx.attributes[ATTRIBUTE] = {"score": round(sanction.score, 2), "reasons": list(sanction.reasons),
                                     "action": self.action}
        if self.action == "flag":
            return None
        if self.action == "block":
            return Forbidden("access is suspended after unusual activity from this caller", code="anomaly_blocked")
        buckets = [spec.bucket(key) for spec in self.throttle]
        try:
            verdict, _ = await self.limiter.acquire(buckets, [1] * len(buckets))
        except StorageError:
            return self._unavailable()
        if verdict.allowed:
            return None
        seconds = max(1, math.ceil(verdict.retry_after))
        return RateLimited(f"calls are slowed after unusual activity from this caller; try again in {seconds} s",
                           code="anomaly_throttled", retry_after=verdict.retry_after)

    def _unavailable(self) -> Denial | None:
        if self.action == "flag":
            return None
        return Overloaded("behaviour checks cannot be made right now; try again", code="storage_unavailable",
                          retry_after=1)


class AnomalyObserver:
    """Records every call after its response, the ones the first checks refuse included (405, 413, bad JSON)."""

    name = "anomaly-observe"
    stage = "transport"
    priority = -100

    def __init__(self, recorder: AnomalyRecorder) -> None:
        self.recorder = recorder

    def check(self, ctx: RequestContext) -> None:
        ctx.after(self.recorder)


class AnomalyIPCheck:
    """Enforces sanctions on client addresses, before the identity checks spend anything on them."""

    name = "anomaly-ip"
    stage = "pre-auth"
    priority = -10

    def __init__(self, enforcer: Enforcer, mode: str | None = None) -> None:
        self.enforcer = enforcer
        self.mode = mode

    def check(self, ctx: RequestContext) -> Outcome:
        key = ip_key(ctx)
        return None if key is None else self.enforcer.enforce(ctx, key)


class AnomalyCheck:
    """Enforces sanctions on verified subjects; owns the state the two checks share."""

    name = "anomaly"
    stage = "anomaly"

    def __init__(self, enforcer: Enforcer, store: Store, limiter: FailoverLimiter, mode: str | None = None) -> None:
        self.enforcer = enforcer
        self.store = store
        self.limiter = limiter
        self.mode = mode

    def check(self, ctx: RequestContext) -> Outcome:
        key = caller_key(ctx) if ctx.identity is not None else None
        return None if key is None else self.enforcer.enforce(ctx, key)

    async def shutdown(self) -> None:
        try:
            await self.store.close()
        finally:
            await self.limiter.close()


def _error(config: Config, key: str, message: str) -> ConfigError:
    return config.error(message, "anomaly", key)


def _validate(config: Config, section: AnomalyConfig) -> tuple[str, ...]:
    for key in ("slots", "warmup", "identity_warmup", "min_requests", "population_span", "identity_span",
                "max_keys"):
        value = getattr(section, key)
        if value < 1:
            raise _error(config, key, f"expected an integer of at least 1, got {value}")
    for key, number in (("threshold", section.threshold), ("window", section.window), ("hold", section.hold),
                        ("retention", section.retention)):
        if not number > 0:
            raise _error(config, key, f"expected more than 0, got {number}")
    unknown = [name for name in section.features if name not in FEATURE_NAMES]
    if unknown:
        raise _error(config, "features", f"unknown feature {unknown[0]!r} (known: {', '.join(FEATURE_NAMES)})")
    return section.features or FEATURE_NAMES


def _limiter(url: str, on_error: str, clock: Clock) -> FailoverLimiter:
    local = urlsplit(url).scheme == "memory"
    shared = MemoryLimiter(clock=clock) if local else open_limiter(url)
    return FailoverLimiter(shared, MemoryLimiter(clock=clock) if on_error == "local-fallback" else None)


def build(config: Config, services: Services, *, clock: Clock = time.time,
          listener: Listener | None = None) -> list[Check]:
    """The two anomaly checks of ``[anomaly]``; ``clock`` (epoch seconds) can be replaced to replay traffic.

    Scores go to the guard's meter provider (:mod:`dsguard.anomaly.metrics`) and to ``listener``."""
    section = config.anomaly
    if section is None:
        return []
    features = _validate(config, section)
    settings = StoreSettings(window=section.window, slots=section.slots, population_span=section.population_span,
                             identity_span=section.identity_span, retention=section.retention,
                             max_keys=section.max_keys)
    model = None
    if section.model is not None:
        try:
            model = IsolationForestModel(section.model, threshold=section.model_threshold)
        except ModelError as exc:
            raise _error(config, "model", str(exc)) from None
    storage = config.storage
    try:
        shared = open_store(storage.url, settings)
        limiter = _limiter(storage.url, storage.on_error, clock)
    except ValueError as exc:
        raise config.error(str(exc), "storage", "url") from None
    fallback = MemoryStore(settings) if storage.on_error == "local-fallback" else None
    store = FailoverStore(shared, fallback)
    scorer = Scorer(features, threshold=section.threshold, warmup=section.warmup,
                    identity_warmup=section.identity_warmup, min_requests=section.min_requests, model=model)
    metrics = AnomalyMetrics(services.meter_provider, section.threshold)

    def listen(scored: Scored) -> None:
        metrics.record(scored.score)
        if listener is not None:
            listener(scored)

    recorder = AnomalyRecorder(store, scorer, settings, hold=section.hold, clock=clock, listener=listen)
    enforcer = Enforcer(store, section.action, limiter, bucket_specs("anomaly", section.throttle_rate), clock)
    return [AnomalyObserver(recorder), AnomalyIPCheck(enforcer, section.mode),
            AnomalyCheck(enforcer, store, limiter, section.mode)]
