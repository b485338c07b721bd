"""The writer's answer for a record whose call waits on it (``[audit] durability = "written"``).

A :class:`Receipt` travels through the writer's queue with its record. The writer thread
settles it once the record's batch is written (and synced under ``fsync = "always"``), or has
failed; the caller awaits :attr:`Receipt.future` on its own event loop, which the writer
thread resolves through ``loop.call_soon_threadsafe`` (once per loop and batch), so the loop
never blocks on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any


class Receipt:
    __slots__ = ("future", "item", "loop", "unwritable")

    def __init__(self, item: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.item = item
        self.loop = loop
        self.future: asyncio.Future[bool] = loop.create_future()
        self.unwritable = False
        """The record itself could not be encoded (its batch may have been written)."""


def _resolve(futures: list[tuple[asyncio.Future[bool], bool]]) -> None:
    for future, written in futures:
        if not future.done():
            future.set_result(written)


def settle(receipts: Iterable[Receipt], written: bool) -> None:
    """Tell each receipt's caller whether its record is written (writer thread; never raises)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[bool], bool]]] = {}
    for receipt in receipts:
        by_loop.setdefault(receipt.loop, []).append((receipt.future, written and not receipt.unwritable))
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_resolve, futures)
