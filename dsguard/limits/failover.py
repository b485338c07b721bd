"""What the limits do while the shared store cannot answer (``[storage] on_error``).

``fail-closed``: the failure propagates (the check refuses the call with 503). ``local-fallback``:
the call is decided by per-process in-memory buckets instead, counted in :attr:`fallbacks` and
logged once per outage. Either way, after a failure the store is left alone for ``cooldown``
seconds, so that an outage costs each call at most one bounded wait and most calls none; the
next call after that tries the store again, which is how the limits reconnect by themselves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from ..storage.outage import COOLDOWN, Failover, Outage
from . import Bucket, Limiter, Verdict

logger = logging.getLogger("dsguard.limits")


class FailoverLimiter:
    """A shared limiter, with an optional local one for when it is down."""

    def __init__(self, primary: Limiter, fallback: Limiter | None = None, *, cooldown: float = COOLDOWN,
                 clock: Callable[[], float] = time.monotonic) -> None:
        outage = Outage("rate limit storage", shared="limits are shared again", local="limiting per process",
                        has_fallback=fallback is not None, logger=logger, cooldown=cooldown, clock=clock)
        self.failover: Failover[Limiter] = Failover(primary, fallback, outage)

    @property
    def fallbacks(self) -> int:
        return self.failover.fallbacks

    async def acquire(self, buckets: Sequence[Bucket], costs: Sequence[int]) -> tuple[Verdict, Limiter]:
        """The verdict, and the limiter that gave it (refunds go back to that one)."""
        return await self.failover.run(lambda limiter: limiter.acquire(buckets, costs))

    async def close(self) -> None:
        await self.failover.close()
