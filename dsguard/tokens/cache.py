"""Verified tokens by digest, so a token seen again skips signature and claim checks.

Entries are keyed by the SHA-256 of the token (never the token itself), expire with the token
(``exp`` plus the allowed clock skew), and the least recently used go first when the cache is
full. A hit still has its expiry checked against the clock; revocation is the caller's to check
on every call.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

from ..context import Identity


class VerifiedToken:
    """What verification established: the identity, until when it holds, and the key used."""

    __slots__ = ("identity", "key_fingerprint", "valid_until")

    def __init__(self, identity: Identity, valid_until: float, key_fingerprint: str) -> None:
        self.identity = identity
        self.valid_until = valid_until
        self.key_fingerprint = key_fingerprint


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("latin-1")).digest()


class TokenCache:
    """A bounded LRU map from token digest to :class:`VerifiedToken`."""

    __slots__ = ("_clock", "_entries", "max_size")

    def __init__(self, max_size: int, clock: Callable[[], float] = time.time) -> None:
        self.max_size = max_size
        self._clock = clock
        self._entries: OrderedDict[bytes, VerifiedToken] = OrderedDict()

    def get(self, digest: bytes) -> VerifiedToken | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry.valid_until <= self._clock():
            self._entries.pop(digest, None)
            return None
        with contextlib.suppress(KeyError):  # removed meanwhile by another thread
            self._entries.move_to_end(digest)
        return entry

    def put(self, digest: bytes, entry: VerifiedToken) -> None:
        if self.max_size <= 0 or entry.valid_until <= self._clock():
            return
        entries = self._entries
        entries[digest] = entry
        entries.move_to_end(digest)
        while len(entries) > self.max_size:
            entries.popitem(last=False)

    def discard(self, digest: bytes) -> None:
        self._entries.pop(digest, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, digest: object) -> bool:
        return digest in self._entries
