"""The token revocation list: ``jti`` values refused until the token would have expired anyway.

Entries live in the shared :mod:`dsguard.storage` (memory, or Redis shared by replicas) under
``revoked:<jti>``; a revoked token is refused on every call, whether or not it is cached.
"""

from __future__ import annotations

import time

from ..storage import Storage

MIN_TTL = 1.0


def revocation_key(jti: str) -> str:
    return f"revoked:{jti}"


async def revoke(storage: Storage, jti: str, until: float) -> None:
    """Refuse the token with this ``jti`` until ``until`` (seconds since the epoch, its ``exp``)."""
    await storage.put(revocation_key(jti), max(until - time.time(), MIN_TTL))


async def is_revoked(storage: Storage, jti: str) -> bool:
    """Whether the token with this ``jti`` is revoked; raises ``StorageError`` if unknown."""
    return await storage.contains(revocation_key(jti))
