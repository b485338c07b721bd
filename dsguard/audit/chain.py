"""The hash chain: each record carries its ``seq``, the ``prev`` record's hash and its own ``hash``.

A record's hash is the SHA-256 of its canonical JSON without the ``hash`` member: keys sorted,
no insignificant whitespace, UTF-8, no NaN or infinity. Its line in the log is that canonical
JSON with ``hash`` appended as the last member. The first record of a log links to
:data:`GENESIS`. Changing, removing, inserting or moving a record breaks a link.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

GENESIS = "0" * 64
"""``prev`` of the first record of a log."""

HASH = "hash"
PREV = "prev"
SEQ = "seq"


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical(value: Any) -> bytes:
    """The canonical JSON encoding hashed and signed: sorted keys, compact, UTF-8."""
    return _ENCODER.encode(value).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``record``'s canonical JSON, its own ``hash`` member left out."""
    body = {key: value for key, value in record.items() if key != HASH}
    return hashlib.sha256(canonical(body)).hexdigest()


class Chain:
    """The head of a chain: links new records after it."""

    __slots__ = ("head", "seq")

    def __init__(self, seq: int = 0, head: str = GENESIS) -> None:
        self.seq = seq
        self.head = head

    def link(self, body: dict[str, Any], seal: Callable[[dict[str, Any]], object] | None = None) -> bytes:
        """Set ``seq``, ``prev`` and ``hash`` on ``body``, move the head to it, and return its line.

        ``seal`` sees the body once ``seq`` and ``prev`` are set, before it is hashed (to sign it).
        """
        body[SEQ] = self.seq + 1
        body[PREV] = self.head
        body.pop(HASH, None)
        if seal is not None:
            seal(body)
        encoded = canonical(body)
        digest = hashlib.sha256(encoded).hexdigest()
        body[HASH] = digest
        self.seq += 1
        self.head = digest
        return encoded[:-1] + b',"hash":"' + digest.encode() + b'"}\n'

    def __repr__(self) -> str:
        return f"Chain(seq={self.seq}, head={self.head[:12]}...)"
