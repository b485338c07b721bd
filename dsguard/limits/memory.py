"""``memory://``: token buckets in this process, the same GCRA as the Redis script.

The ``limits`` library's strategies (fixed window, moving window, sliding window counter) have
no burst on top of the rate, no all-or-nothing check of several windows, and no refund, so the
buckets are kept here: one theoretical arrival time per key, bounded in number.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from . import Bucket, BucketState, StorageError, Verdict

# Float slack when comparing instants: far below one unit's interval, so it never admits an extra call.
EPSILON = 1e-9


def remaining_units(bucket: Bucket, backlog: float) -> int:
    """Whole units left in ``bucket`` when it is ``backlog`` seconds from full."""
    return max(0, math.floor((bucket.capacity * bucket.interval - backlog) / bucket.interval + 1e-6))


class MemoryLimiter:
    """Buckets in a dict of theoretical arrival times. When full of live buckets it refuses new
    ones (:class:`StorageError`): forgetting a live bucket would hand its caller a fresh quota."""

    def __init__(self, max_keys: int = 1_000_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_keys = max_keys
        self._clock = clock
        self._tat: dict[str, float] = {}

    def _make_room(self, now: float, needed: int) -> None:
        if len(self._tat) + needed <= self.max_keys:
            return
        self._tat = {k: t for k, t in self._tat.items() if t > now}
        if len(self._tat) + needed > self.max_keys:
            raise StorageError(f"memory limiter holds {self.max_keys} live buckets; refusing more")

    async def acquire(self, buckets: Sequence[Bucket], costs: Sequence[int]) -> Verdict:
        now = self._clock()
        tats = self._tat
        arrivals = []
        allowed = True
        for bucket, cost in zip(buckets, costs, strict=True):
            tat = max(tats.get(bucket.key, now), now)
            arrival = tat + cost * bucket.interval
            wait = arrival - now - bucket.capacity * bucket.interval
            if wait > EPSILON:
                allowed = False
            arrivals.append((tat, arrival, wait))
        if not allowed:
            return Verdict(False, tuple(
                BucketState(remaining_units(b, tat - now), tat - now, max(wait, 0.0))
                for b, (tat, _, wait) in zip(buckets, arrivals, strict=True)))
        self._make_room(now, sum(1 for b in buckets if b.key not in tats))
        states = []
        for bucket, (_, arrival, _) in zip(buckets, arrivals, strict=True):
            tats[bucket.key] = arrival
            states.append(BucketState(remaining_units(bucket, arrival - now), arrival - now))
        return Verdict(True, tuple(states))

    async def adjust(self, buckets: Sequence[Bucket], amounts: Sequence[int]) -> None:
        now = self._clock()
        tats = self._tat
        for bucket, amount in zip(buckets, amounts, strict=True):
            tat = max(tats.get(bucket.key, now), now) + amount * bucket.interval
            if tat <= now:
                tats.pop(bucket.key, None)
            else:
                if bucket.key not in tats:
                    self._make_room(now, 1)
                tats[bucket.key] = tat

    async def close(self) -> None:
        self._tat.clear()

    def __repr__(self) -> str:
        return f"MemoryLimiter({len(self._tat)} buckets)"
