"""A bounded hand-off from the request path to the writer thread: appending takes no lock.

Producers (the event loop, WSGI threads) :meth:`~Inbox.offer` records; the one consumer thread
:meth:`~Inbox.take`\\ s them in batches and is woken only when it sleeps, so a busy writer costs
the request path a ``deque.append``. The bound is checked before appending: concurrent
producers may overshoot it by a few records, never without limit.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any


class Inbox:
    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.busy = False
        """The consumer holds records it has taken and not finished writing."""
        self._items: deque[Any] = deque()
        self._wake = threading.Event()
        self._sleeping = False

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, item: Any) -> bool:
        """Append ``item``; ``False`` when the inbox is full."""
        if len(self._items) >= self.size:
            return False
        self._items.append(item)
        if self._sleeping:
            self._wake.set()
        return True

    def wake(self) -> None:
        self._wake.set()

    def take(self, limit: int, timeout: float) -> list[Any]:
        """Up to ``limit`` records, waiting up to ``timeout`` seconds for the first (consumer only)."""
        items = self._items
        if not items:
            self._sleeping = True
            if not items:
                self._wake.wait(timeout)
            self._sleeping = False
            self._wake.clear()
        self.busy = True
        batch: list[Any] = []
        while items and len(batch) < limit:
            batch.append(items.popleft())
        if not batch:
            self.busy = False
        return batch

    def drain(self) -> list[Any]:
        """Everything left (consumer only)."""
        self.busy = True
        batch = list(self._items)
        for _ in batch:
            self._items.popleft()
        return batch
