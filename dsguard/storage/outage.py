"""How a user of the shared store rides out an outage (``[storage] on_error``).

After a failure the store is left alone for ``cooldown`` seconds, so that an outage costs each
call at most one bounded wait and most calls none; the next call after that tries the store
again, which is how its users reconnect by themselves. The outage and the recovery are logged
once each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from . import StorageError

COOLDOWN = 1.0


class Outage:
    """Whether the shared store is worth asking now, for one of its users (rate limits, anomaly state)."""

    def __init__(self, store: str, *, shared: str, local: str, has_fallback: bool, logger: logging.Logger,
                 cooldown: float = COOLDOWN, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.shared = shared
        self.action = local if has_fallback else "refusing calls"
        self.logger = logger
        self.cooldown = cooldown
        self.clock = clock
        self._down = False
        self._down_until = 0.0

    def worth_trying(self) -> bool:
        return not self._down or self.clock() >= self._down_until

    def failed(self, exc: Exception) -> None:
        self._down_until = self.clock() + self.cooldown
        if not self._down:
            self._down = True
            self.logger.warning("%s failed (%s); %s until it answers again", self.store, exc, self.action)

    def answered(self) -> None:
        if self._down:
            self._down = False
            self.logger.warning("%s answers again; %s", self.store, self.shared)


class _Closable(Protocol):
    async def close(self) -> None: ...


B = TypeVar("B", bound=_Closable)
T = TypeVar("T")


class Failover(Generic[B]):
    """A shared backend, and for ``local-fallback`` a per-process one used while the shared one is down."""

    def __init__(self, primary: B, fallback: B | None, outage: Outage) -> None:
        self.primary = primary
        self.fallback = fallback
        self.outage = outage
        self.fallbacks = 0

    async def run(self, operation: Callable[[B], Awaitable[T]]) -> tuple[T, B]:
        """``operation`` on the shared backend, else on the fallback; the result and the backend that gave it."""
        if self.outage.worth_trying():
            try:
                result = await operation(self.primary)
            except StorageError as exc:
                self.outage.failed(exc)
            else:
                self.outage.answered()
                return result, self.primary
        if self.fallback is None:
            raise StorageError(f"{self.outage.store} is unavailable")
        self.fallbacks += 1
        return await operation(self.fallback), self.fallback

    async def close(self) -> None:
        try:
            await self.primary.close()
        finally:
            if self.fallback is not None:
                await self.fallback.close()
