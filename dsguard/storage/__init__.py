"""Shared state (revocations, nonces, counters) behind one protocol, chosen by URL.

``memory://`` keeps it in this process; ``redis://host:port/db`` shares it between replicas.
Every backend raises :class:`StorageError` (never its own exception types) when it cannot
answer, so checks can fail closed in one place.
"""

from __future__ import annotations

from typing import Protocol
from urllib.parse import urlsplit

from ..errors import DSGuardError


class StorageError(DSGuardError):
    """The backend could not answer (unreachable, timed out, full)."""


class Storage(Protocol):
    """Keys with a time to live. Keys are namespaced by the caller (``"jti:..."``, ``"dpop:..."``)."""

    async def add(self, key: str, ttl: float) -> bool:
        """Store ``key`` for ``ttl`` seconds unless present; True if it was absent (a first use)."""
        ...

    async def put(self, key: str, ttl: float) -> None:
        """Store ``key`` for ``ttl`` seconds, replacing any earlier expiry."""
        ...

    async def contains(self, key: str) -> bool:
        """Whether ``key`` is stored and not expired."""
        ...

    async def close(self) -> None: ...


def open_storage(url: str) -> Storage:
    """The backend for ``url``; raises ``ValueError`` for an unknown scheme."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from .memory import MemoryStorage

        return MemoryStorage()
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisStorage  # type: ignore[import-not-found, unused-ignore]

        return RedisStorage(url)  # type: ignore[no-any-return, unused-ignore]
    raise ValueError(f"unknown storage URL scheme {scheme!r}; expected memory:// or redis://")


__all__ = ["Storage", "StorageError", "open_storage"]
