"""``memory://``: keys with expiry in this process, bounded in number."""

from __future__ import annotations

import time

from . import StorageError


class MemoryStorage:
    """A bounded dict of expiry times. When full of live keys it refuses new ones (fail closed):
    evicting a live nonce or revocation would reopen a replay or revive a revoked token."""

    def __init__(self, max_keys: int = 1_000_000, clock: object = time.monotonic) -> None:
        self.max_keys = max_keys
        self._clock = clock
        self._expiry: dict[str, float] = {}

    def _now(self) -> float:
        return self._clock()  # type: ignore[operator, no-any-return]

    def _make_room(self, now: float) -> None:
        if len(self._expiry) < self.max_keys:
            return
        self._expiry = {k: t for k, t in self._expiry.items() if t > now}
        if len(self._expiry) >= self.max_keys:
            raise StorageError(f"memory storage holds {self.max_keys} live keys; refusing more")

    async def add(self, key: str, ttl: float) -> bool:
        now = self._now()
        expiry = self._expiry.get(key)
        if expiry is not None and expiry > now:
            return False
        self._make_room(now)
        self._expiry[key] = now + ttl
        return True

    async def put(self, key: str, ttl: float) -> None:
        now = self._now()
        if key not in self._expiry:
            self._make_room(now)
        self._expiry[key] = now + ttl

    async def contains(self, key: str) -> bool:
        expiry = self._expiry.get(key)
        if expiry is None:
            return False
        if expiry <= self._now():
            del self._expiry[key]
            return False
        return True

    async def close(self) -> None:
        self._expiry.clear()
