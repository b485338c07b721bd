"""Request rate limits and LLM token quotas: token buckets (GCRA) behind one protocol, chosen by URL.

A bucket is a rate ``amount`` per ``period`` and a capacity. It starts full; a call takes
``cost`` units if every bucket it touches has room for them, else it takes nothing and learns
how long to wait. Buckets refill evenly, one unit every ``period / amount`` seconds, up to their
capacity. Stored per key is one number, the *theoretical arrival time* (GCRA): the instant the
bucket would be full again. A call of cost ``c`` is admitted when
``max(tat, now) + c * interval - now <= capacity * interval``.

Request limits (``[[rate_limits]] limit``) have capacity ``amount + burst``: a fresh key takes
``limit + burst`` calls at once, then ``limit`` per window, evenly spread. ``"20/minute"`` with
``burst = 5`` admits 25 calls at once and one more every 3 s. (nginx's ``rate=10r/s burst=20``
admits 21 at once: here a window's whole ``limit`` may arrive at once, as under a fixed window,
and ``burst`` comes on top.) Token quotas (``tokens``) have capacity ``amount``.

``memory://`` keeps the buckets in this process; ``redis://`` shares them between replicas,
each decision one atomic Lua script (EVALSHA) timed by the Redis server's clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit

from ..storage import StorageError


@dataclasses.dataclass(frozen=True, slots=True)
class Bucket:
    """One stored bucket: its key, the seconds one unit takes to refill, and how many units it holds."""

    key: str
    interval: float
    capacity: int


@dataclasses.dataclass(frozen=True, slots=True)
class BucketState:
    """A bucket after a decision: ``remaining`` units, seconds until ``full`` again, and the
    seconds to ``wait`` before the call would fit (0 when it did)."""

    remaining: int
    full: float
    wait: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a call was admitted, and each of its buckets (in the order asked)."""

    allowed: bool
    states: tuple[BucketState, ...]

    @property
    def retry_after(self) -> float:
        return max((s.wait for s in self.states), default=0.0)


class Limiter(Protocol):
    """Buckets in one store. Every method raises :class:`StorageError` when the store cannot answer."""

    async def acquire(self, buckets: Sequence[Bucket], costs: Sequence[int]) -> Verdict:
        """Take ``costs[i]`` units from each ``buckets[i]``, all or none, in one atomic step."""
        ...

    async def adjust(self, buckets: Sequence[Bucket], amounts: Sequence[int]) -> None:
        """Charge ``amounts[i]`` more units to each bucket (negative amounts refund), unconditionally."""
        ...

    async def close(self) -> None: ...


def open_limiter(url: str) -> Limiter:
    """The limiter for a ``[storage] url``; raises ``ValueError`` for an unknown scheme."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from .memory import MemoryLimiter

        return MemoryLimiter()
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisLimiter

        return RedisLimiter(url)
    raise ValueError(f"unknown storage URL scheme {scheme!r}; expected memory:// or redis://")


__all__ = ["Bucket", "BucketState", "Limiter", "StorageError", "Verdict", "open_limiter"]
