"""``redis://``: token buckets shared by every replica, one atomic script per decision.

Each call is one round trip: ``EVALSHA`` of :data:`~dsguard.limits.lua.ACQUIRE` or
:data:`~dsguard.limits.lua.ADJUST` (the script is loaded again if Redis answers ``NOSCRIPT``, after
a restart). Every call is bounded by the storage timeout (0.5 s, or ``?timeout=`` in the URL),
retries a dropped connection once, and fails with :class:`StorageError`. Keys live under
``dsguard:rl:``. A Redis Cluster is not supported: one call's buckets may hash to several slots.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

from ..storage.redis import FAILURES, PREFIX, RedisConnection
from . import Bucket, BucketState, StorageError, Verdict
from .lua import ACQUIRE, ADJUST

MICROSECONDS = 1_000_000


def _sha1(script: str) -> str:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


class RedisLimiter:
    """Buckets under ``dsguard:rl:`` in one Redis database, decided by the server's clock."""

    prefix = PREFIX + "rl:"

    def __init__(self, url: str) -> None:
        self.connection = RedisConnection(url)
        self.location = self.connection.location
        self.timeout = self.connection.timeout
        self._shas = {ACQUIRE: _sha1(ACQUIRE), ADJUST: _sha1(ADJUST)}

    async def _run(self, script: str, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        client = self.connection.client()
        sha = self._shas[script]
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    return await client.evalsha(sha, len(keys), *keys, *args)
                except NoScriptError:
                    await client.script_load(script)
                    return await client.evalsha(sha, len(keys), *keys, *args)
        except (*FAILURES, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            raise StorageError(f"redis at {self.location} did not answer: {reason}") from None

    async def acquire(self, buckets: Sequence[Bucket], costs: Sequence[int]) -> Verdict:
        args: list[str | int] = []
        for bucket, cost in zip(buckets, costs, strict=True):
            args += [repr(bucket.interval * MICROSECONDS), bucket.capacity, cost]
        reply = await self._run(ACQUIRE, [self.prefix + b.key for b in buckets], args)
        states = tuple(BucketState(int(reply[i]), int(reply[i + 1]) / 1000, int(reply[i + 2]) / 1000)
                       for i in range(1, len(reply), 3))
        return Verdict(reply[0] == 1, states)

    async def adjust(self, buckets: Sequence[Bucket], amounts: Sequence[int]) -> None:
        args: list[str | int] = []
        for bucket, amount in zip(buckets, amounts, strict=True):
            args += [repr(bucket.interval * MICROSECONDS), amount]
        await self._run(ADJUST, [self.prefix + b.key for b in buckets], args)

    async def close(self) -> None:
        await self.connection.close()

    def __repr__(self) -> str:
        return f"RedisLimiter({self.location!r})"
