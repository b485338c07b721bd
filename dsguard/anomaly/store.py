"""Where callers' windows, baselines and sanctions live: this process, or Redis shared by every replica.

A store answers four things, each in one step (one Redis round trip):

- :meth:`Store.record`: add a finished call to its caller's window and return the window with the
  population's and the caller's baselines;
- :meth:`Store.learn`: teach both baselines one observation of the caller, at most once per slot
  per caller (so a chatty caller does not outweigh the rest); ``False`` when it was too soon;
- :meth:`Store.sanction` / :meth:`Store.sanction_of`: mark a caller anomalous until a time, and read it.

Every method raises :class:`~dsguard.storage.StorageError` when the backend cannot answer;
:class:`FailoverStore` applies ``[storage] on_error``. Times are the caller's clock (injectable,
so that traffic can be replayed faster than real time).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

from ..storage.outage import COOLDOWN, Failover, Outage
from .baseline import Baseline
from .features import FLOORS, Event, WindowStats, next_gap_stats

logger = logging.getLogger("dsguard.anomaly")

MAX_DISTINCT = 4096
T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class StoreSettings:
    window: float
    slots: int
    population_span: int
    identity_span: int
    retention: float = 7 * 86400.0
    max_keys: int = 100_000

    @property
    def slot_seconds(self) -> float:
        return self.window / self.slots


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """A caller's window and the two baselines it is scored against (the memory store hands out its
    live baselines: read them before the next store call)."""

    window: WindowStats
    population: Baseline
    identity: Baseline


@dataclasses.dataclass(frozen=True, slots=True)
class Sanction:
    """A caller found anomalous: its score, the reasons, and until when it stands."""

    score: float
    reasons: tuple[str, ...]
    until: float


class Store(Protocol):
    async def record(self, key: str, event: Event, now: float) -> Snapshot: ...

    async def learn(self, key: str, values: Mapping[str, float | None], hour: int, now: float) -> bool: ...

    async def sanction(self, key: str, sanction: Sanction, now: float) -> None: ...

    async def sanction_of(self, key: str, now: float) -> Sanction | None: ...

    async def close(self) -> None: ...


class _Slot:
    __slots__ = ("asked", "budgets", "denied", "index", "ips", "models", "prompt_tokens", "prompts", "requests",
                 "routes", "tokens")

    def __init__(self, index: int) -> None:
        self.index = index
        self.requests = self.denied = self.prompts = self.budgets = 0
        self.tokens = self.prompt_tokens = self.asked = 0.0
        self.routes: set[str] = set()
        self.models: set[str] = set()
        self.ips: set[str] = set()


class _Caller:
    __slots__ = ("baseline", "gap_mean", "gap_var", "gaps", "last", "learned", "since", "slots")

    def __init__(self) -> None:
        self.slots: list[_Slot] = []
        self.last: float | None = None
        self.since = 0.0
        self.gaps = 0
        self.gap_mean = self.gap_var = 0.0
        self.baseline = Baseline()
        self.learned: float | None = None


def _add(values: set[str], value: str | None) -> None:
    if value is not None and len(values) < MAX_DISTINCT:
        values.add(value)


class MemoryStore:
    """State in this process, for at most ``max_keys`` callers (the least recently seen are forgotten)."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self.population = Baseline()
        self._callers: OrderedDict[str, _Caller] = OrderedDict()
        self._sanctions: dict[str, Sanction] = {}

    def _caller(self, key: str) -> _Caller:
        callers = self._callers
        caller = callers.get(key)
        if caller is None:
            caller = callers[key] = _Caller()
            if len(callers) > self.settings.max_keys:
                callers.popitem(last=False)
        else:
            callers.move_to_end(key)
        return caller

    async def record(self, key: str, event: Event, now: float) -> Snapshot:
        settings = self.settings
        caller = self._caller(key)
        last = caller.last
        if last is None or now - last > settings.window:
            caller.since = now
        if last is not None:
            gap = min(max(now - last, 0.0), settings.window)
            caller.gaps, caller.gap_mean, caller.gap_var = next_gap_stats(
                caller.gaps, caller.gap_mean, caller.gap_var, gap)
        caller.last = now
        index = math.floor(now / settings.slot_seconds)
        slots = [s for s in caller.slots if s.index > index - settings.slots]
        slot = slots[-1] if slots and slots[-1].index == index else None
        if slot is None:
            slot = _Slot(index)
            slots.append(slot)
        caller.slots = slots
        slot.requests += 1
        slot.denied += event.denied
        slot.tokens += event.tokens
        if event.prompt_tokens is not None:
            slot.prompts += 1
            slot.prompt_tokens += event.prompt_tokens
        if event.max_tokens is not None:
            slot.budgets += 1
            slot.asked += event.max_tokens
        _add(slot.routes, event.route)
        _add(slot.models, event.model)
        _add(slot.ips, event.ip)
        stats = WindowStats(
            requests=sum(s.requests for s in slots), denied=sum(s.denied for s in slots),
            tokens=sum(s.tokens for s in slots), prompts=sum(s.prompts for s in slots),
            prompt_tokens=sum(s.prompt_tokens for s in slots), budgets=sum(s.budgets for s in slots),
            max_tokens=sum(s.asked for s in slots),
            routes=len(set().union(*(s.routes for s in slots))),
            models=len(set().union(*(s.models for s in slots))),
            ips=len(set().union(*(s.ips for s in slots))),
            since=caller.since, gaps=caller.gaps, gap_mean=caller.gap_mean, gap_var=caller.gap_var)
        return Snapshot(stats, self.population, caller.baseline)

    async def learn(self, key: str, values: Mapping[str, float | None], hour: int, now: float) -> bool:
        caller = self._caller(key)
        if caller.learned is not None and now - caller.learned < self.settings.slot_seconds:
            return False
        caller.learned = now
        self.population.learn(values, hour, FLOORS, self.settings.population_span)
        caller.baseline.learn(values, hour, FLOORS, self.settings.identity_span)
        return True

    async def sanction(self, key: str, sanction: Sanction, now: float) -> None:
        sanctions = self._sanctions
        if key not in sanctions and len(sanctions) >= self.settings.max_keys:
            self._sanctions = sanctions = {k: s for k, s in sanctions.items() if s.until > now}
            if len(sanctions) >= self.settings.max_keys:
                sanctions.pop(next(iter(sanctions)))
        sanctions[key] = sanction

    async def sanction_of(self, key: str, now: float) -> Sanction | None:
        sanction = self._sanctions.get(key)
        if sanction is not None and sanction.until <= now:
            del self._sanctions[key]
            return None
        return sanction

    async def close(self) -> None:
        self._callers.clear()
        self._sanctions.clear()


class FailoverStore:
    """A shared store, and for ``local-fallback`` a memory store used while it cannot answer.

    After a failure the shared store is left alone for ``cooldown`` seconds (real time), so that an
    outage costs each call at most one bounded wait; the next call after that tries it again.
    The memory store starts cold: callers are scored again once its own baseline is warm.
    """

    def __init__(self, primary: Store, fallback: Store | None = None, *, cooldown: float = COOLDOWN,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        outage = Outage("anomaly storage", shared="behaviour is shared again", local="scoring per process",
                        has_fallback=fallback is not None, logger=logger, cooldown=cooldown, clock=monotonic)
        self.failover: Failover[Store] = Failover(primary, fallback, outage)

    @property
    def fallbacks(self) -> int:
        return self.failover.fallbacks

    async def _run(self, operation: Callable[[Store], Awaitable[T]]) -> T:
        return (await self.failover.run(operation))[0]

    async def record(self, key: str, event: Event, now: float) -> Snapshot:
        return await self._run(lambda store: store.record(key, event, now))

    async def learn(self, key: str, values: Mapping[str, float | None], hour: int, now: float) -> bool:
        return await self._run(lambda store: store.learn(key, values, hour, now))

    async def sanction(self, key: str, sanction: Sanction, now: float) -> None:
        await self._run(lambda store: store.sanction(key, sanction, now))

    async def sanction_of(self, key: str, now: float) -> Sanction | None:
        return await self._run(lambda store: store.sanction_of(key, now))

    async def close(self) -> None:
        await self.failover.close()


def open_store(url: str, settings: StoreSettings) -> Store:
    """The store for a ``[storage] url``; ``ValueError`` for an unknown scheme."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryStore(settings)
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisStore

        return RedisStore(url, settings)
    raise ValueError(f"unknown storage URL scheme {scheme!r}; expected memory:// or redis://")
