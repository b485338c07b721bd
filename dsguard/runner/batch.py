"""A decode batch: the sequences stepping together, each row's next token, position and padding, and the cache.

Rows join a batch when their prompt is prefilled and leave it when they end; the cache is merged or compacted
only then, never between steps of an unchanged batch. With a graph that takes per-row lengths (fused
attention) rows are never padded; otherwise they are left-padded to the longest and the padding every
remaining row shares is trimmed when rows leave.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from dsguard.runner.kvcache import KVCache
from dsguard.runner.session import DecoderSession

Row = TypeVar("Row")
IntArray = npt.NDArray[np.int64]


class Batch(Generic[Row]):
    """Rows decoding together: ``tokens``, ``positions`` and ``pads`` hold one entry per row, in row order."""

    def __init__(self, cache: KVCache, rows: list[Row], tokens: list[int], positions: list[int]) -> None:
        self.cache = cache
        self.rows = rows
        self.tokens: IntArray = np.array(tokens, dtype=np.int64)
        self.positions: IntArray = np.array(positions, dtype=np.int64)
        self.pads: IntArray = np.zeros(len(rows), dtype=np.int64)
        self.greedy = False
        self.cancels_seen = -1

    @property
    def padding(self) -> IntArray | None:
        """Left padding per row, or None when no row has any."""
        return self.pads if self.pads.any() else None

    def join(self, session: DecoderSession, other: Batch[Row]) -> None:
        """Appends ``other``'s rows (and merges its cache into this batch's)."""
        merged = session.merge(self.cache, other.cache)
        pads = other.pads
        if not session.in_place:
            self.pads += merged.length - self.cache.length
            pads = other.pads + merged.length - other.cache.length
        self.cache = merged
        self.rows = self.rows + other.rows
        self.tokens = np.concatenate([self.tokens, other.tokens])
        self.positions = np.concatenate([self.positions, other.positions])
        self.pads = np.concatenate([self.pads, pads])

    def keep(self, session: DecoderSession, indices: list[int]) -> None:
        """Keeps only the rows at ``indices`` (in that order), trimming the padding they all share."""
        index = np.array(indices, dtype=np.int64)
        pads = self.pads[index]
        drop = int(pads.min()) if pads.size else 0
        if pads.size:
            self.cache = session.select(self.cache, index, drop)
        self.rows = [self.rows[i] for i in indices]
        self.tokens = self.tokens[index]
        self.positions = self.positions[index]
        self.pads = pads - drop
