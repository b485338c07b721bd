"""How a user of the shared store rides out an outage (``[storage] on_error``).

After a failure the store is left alone for ``cooldown`` seconds, so that an outage costs each
call at most one bounded wait and most calls none; the next call after that tries the store
again, which is how its users reconnect by themselves. The outage and the recovery are logged
once each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

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
