"""The writer's answer for a record whose call waits on it (``[audit] durability = "written"``).

A :class:`Receipt` travels through the writer's queue with its record. Exactly one side decides
its fate, under a lock: the writer thread :meth:`~Receipt.claim`\\ s it before chaining the
record, or the caller :meth:`~Receipt.abandon`\\ s it when it stops waiting (timeout,
cancellation). An abandoned record is skipped by the writer, so it is never written; a claimed
one is being written, and its caller waits for the outcome. The writer thread settles each
receipt once the record's batch is written (and synced under ``fsync = "always"``), or has
failed, with whether the record's own line is in the file; the caller awaits
:attr:`Receipt.future` on its own event loop, which the writer thread resolves through
``loop.call_soon_threadsafe`` (once per loop and batch), so the loop never blocks on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable
from typing import Any, Literal

State = Literal["pending", "claimed", "abandoned"]

_deciding = threading.Lock()
"""Serialises :meth:`Receipt.claim` and :meth:`Receipt.abandon` (held for one comparison and assignment)."""


class Receipt:
    """A record whose call waits on it: its outcome, and whether the writer or the caller decided its fate."""

    __slots__ = ("future", "item", "loop", "state", "written")

    def __init__(self, item: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.item = item
        self.loop = loop
        self.future: asyncio.Future[bool] = loop.create_future()
        self.state: State = "pending"
        self.written = False
        """Set by the writer thread once the record's line is written whole (and synced where required)."""

    def claim(self) -> bool:
        """Writer thread, before the record takes a place in the chain: ``False`` if its caller gave up on it."""
        with _deciding:
            if self.state == "abandoned":
                return False
            self.state = "claimed"
            return True

    def abandon(self) -> bool:
        """Caller, when it stops waiting: ``False`` if the writer has claimed the record (its outcome follows)."""
        with _deciding:
            if self.state == "claimed":
                return False
            self.state = "abandoned"
            return True


def _resolve(futures: list[tuple[asyncio.Future[bool], bool]]) -> None:
    for future, written in futures:
        if not future.done():
            future.set_result(written)


def settle(receipts: Iterable[Receipt]) -> None:
    """Tell each receipt's caller whether its record is written (writer thread; never raises)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[bool], bool]]] = {}
    for receipt in receipts:
        by_loop.setdefault(receipt.loop, []).append((receipt.future, receipt.written))
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_resolve, futures)


async def outcome(receipt: Receipt, cancelled: int = 0) -> bool:
    """Whether ``receipt``'s claimed record was written, once its write ends: the caller learns the outcome
    even past its timeout or when cancelled, since the record may already be in the log. The ``cancelled``
    requests already caught, and any arriving meanwhile, are withdrawn (:meth:`asyncio.Task.uncancel`): the
    call then goes on with the outcome."""
    future = receipt.future
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled += 1
    task = asyncio.current_task()
    if task is not None:
        for _ in range(cancelled):
            task.uncancel()
    return future.result()
