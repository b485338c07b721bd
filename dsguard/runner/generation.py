"""One request's handle: token ids arrive from the scheduler thread; text is assembled where it is read.

The scheduler only appends token ids (and, at the end, a finish reason); detokenizing, stop strings
and the reasoning split run in the consumer's thread, off the decode loop's critical path. A stop
string found by the consumer ends the text there and releases the sequence's slot.

Waking a reader on an asyncio loop writes to the loop's socket, which hands the interpreter lock to the
loop's thread: the scheduler would then wait for it to come back, on a busy machine for longer than a
decode step. So the scheduler only collects the wake-ups of its steps (:class:`Wakes`); a helper thread
sends them, one per loop, at most every ``WAKE_INTERVAL``, while the next step runs without the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable

from dsguard.runner.text import Delta, TextAssembler

WAKE_INTERVAL = 0.002
"""Seconds between two rounds of wake-ups of waiting readers while tokens keep coming: one per token would
cost more thread hand-offs than decoding a token of a small model; the end of a generation wakes at once."""

Wake = Callable[[], None]

logger = logging.getLogger("dsguard.runner")


@dataclasses.dataclass(frozen=True)
class Completion:
    """A whole generation, read synchronously."""

    text: str
    reasoning: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    token_ids: tuple[int, ...]
    """The generated tokens that made the text (the end-of-sequence token left out)."""


def _resolve(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


def _wake_loop(loop: asyncio.AbstractEventLoop, waiters: list[asyncio.Future[None]]) -> None:
    with contextlib.suppress(RuntimeError):  # a closed loop has nobody left to wake
        loop.call_soon_threadsafe(_resolve, waiters)


@dataclasses.dataclass(frozen=True)
class _LoopWake:
    """Resolves a reader's future on its event loop (from any thread)."""

    loop: asyncio.AbstractEventLoop
    waiter: asyncio.Future[None]

    def __call__(self) -> None:
        _wake_loop(self.loop, [self.waiter])


class Wakes:
    """Wake-ups collected by the scheduler, sent in rounds by a helper thread: one loop call per event loop."""

    def __init__(self, interval: float = WAKE_INTERVAL) -> None:
        self.interval = interval
        self._pending: list[Wake] = []
        self._sent_at = -interval
        self._rounds: queue.SimpleQueue[list[Wake] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._deliver, name="dsguard-runner-wakes", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Wake-ups collected and not yet handed over."""
        return len(self._pending)

    def add(self, wake: Wake | None) -> None:
        if wake is not None:
            self._pending.append(wake)

    def send(self, now: float, *, force: bool = False) -> None:
        """Hands the collected wake-ups over, if ``interval`` has passed since the last round (or ``force``)."""
        pending = self._pending
        if not pending or (not force and now - self._sent_at < self.interval):
            return
        self._pending, self._sent_at = [], now
        self._rounds.put(pending)

    def close(self) -> None:
        """Delivers what is pending, then stops the helper thread."""
        self._rounds.put(self._pending)
        self._pending = []
        self._rounds.put(None)
        self._thread.join()

    def _deliver(self) -> None:
        while (pending := self._rounds.get()) is not None:
            loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
            for wake in pending:
                if isinstance(wake, _LoopWake):
                    loops.setdefault(wake.loop, []).append(wake.waiter)
                    continue
                try:
                    wake()
                except Exception:  # one reader's failure must not leave every other reader waiting
                    logger.exception("waking a reader failed")
            for loop, waiters in loops.items():
                _wake_loop(loop, waiters)


class Generation:
    """The output of one submitted request: ``async for delta in generation`` (or :meth:`collect`).

    ``cancel()`` (a client went away) stops the sequence at the engine's next step and frees its slot;
    the last delta then carries ``finish_reason="cancelled"``.
    """

    def __init__(self, prompt_tokens: int, assembler: TextAssembler,
                 on_cancel: Callable[[Generation], None] | None = None) -> None:
        self.prompt_tokens = prompt_tokens
        self.finish_reason: str | None = None
        self.cancelled = False
        self.first_token_at: float | None = None
        """When the scheduler produced the first token (``time.monotonic()``)."""
        self.last_token_at: float | None = None
        self._assembler = assembler
        self._on_cancel = on_cancel
        self._lock = threading.Lock()
        self._tokens: list[int] = []
        self._generated = 0
        self._end: str | None = None
        self._wake: Wake | None = None
        self._woken = False
        self._consumed = 0
        self._output: list[int] = []
        self._stopped_at: int | None = None
        self._taken = threading.Event()

    @property
    def completion_tokens(self) -> int:
        """Tokens generated for this request (up to the stop string when one ended it); final after the last delta."""
        return self._stopped_at if self._stopped_at is not None else self._generated

    def cancel(self) -> None:
        """Stop generating (idempotent); the engine frees the slot at its next step."""
        if not self.cancelled:
            self.cancelled = True
            if self._on_cancel is not None:
                self._on_cancel(self)

    def push(self, token: int, now: float, *, text: bool = True) -> Wake | None:
        """Scheduler side: one more generated token, at monotonic time ``now`` (``text=False``: the end-of-sequence
        token). Returns the waiting reader's wake-up, for the caller to call (or collect in :class:`Wakes`).
        """
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now
        with self._lock:
            if text:
                self._tokens.append(token)
            self._generated += 1
            wake = self._wake
            if wake is not None:
                self._wake, self._woken = None, True
        return wake

    def end(self, reason: str) -> None:
        """Scheduler side: no more tokens will come; ``reason`` is "stop", "length" or "cancelled"."""
        with self._lock:
            if self._end is not None:
                return
            self._end = reason
            wake, self._wake = self._wake, None
        if wake is not None:
            wake()

    def hand_over(self, timeout: float) -> None:
        """Scheduler side, after the first token: if a reader is waiting, give it up to ``timeout`` seconds to take it.

        Without this the reader's thread may wait for the interpreter lock until the decode loop next sleeps
        (milliseconds), which is what a client sees as time to first token.
        """
        with self._lock:
            waiting = self._wake is None and self._woken
        if waiting:
            self._taken.wait(timeout)

    @property
    def ended(self) -> bool:
        """The scheduler is done with this sequence."""
        return self._end is not None

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[Delta]:
        loop = asyncio.get_running_loop()
        done = False
        try:
            while not done:
                delta, done = self._next()
                if delta is not None:
                    yield delta
                elif not done:
                    waiter: asyncio.Future[None] = loop.create_future()
                    if self._arm(_LoopWake(loop, waiter)):
                        await waiter
        finally:
            if not done:
                self.cancel()

    def collect(self, timeout: float | None = None) -> Completion:
        """Blocks until the generation ends; raises TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        content: list[str] = []
        reasoning: list[str] = []
        while True:
            delta, done = self._next()
            if delta is not None:
                content.append(delta.content)
                reasoning.append(delta.reasoning)
            if done:
                break
            if delta is None:
                event = threading.Event()
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if self._arm(event.set) and not event.wait(remaining):
                    raise TimeoutError(f"the generation did not end within {timeout} s")
        assert self.finish_reason is not None
        return Completion("".join(content), "".join(reasoning), self.finish_reason, self.prompt_tokens,
                          self.completion_tokens, tuple(self._output))

    def _arm(self, wake: Wake) -> bool:
        """Registers ``wake`` for the next token or the end; False when one is already there."""
        with self._lock:
            if self._tokens or self._end is not None:
                return False
            self._wake = wake
            return True

    def _next(self) -> tuple[Delta | None, bool]:
        """Text of the tokens that arrived since the last call, as one delta, and whether it is the last."""
        if self.finish_reason is not None:
            return None, True
        with self._lock:
            tokens, self._tokens = self._tokens, []
            end = self._end
        if tokens and not self._taken.is_set():
            self._taken.set()
        assembler = self._assembler
        content: list[str] = []
        reasoning: list[str] = []
        finish: str | None = None
        delta, used = assembler.push_many(tokens)
        if delta is not None:
            content.append(delta.content)
            reasoning.append(delta.reasoning)
        if assembler.stopped:
            self._stopped_at = self._consumed + used
            finish = "stop"
            tokens = tokens[:used]
            self.cancel()
        self._consumed += len(tokens)
        self._output.extend(tokens)
        if finish is None and end is not None:
            finish = end
        if finish is not None:
            last = assembler.finish(finish)
            content.append(last.content)
            reasoning.append(last.reasoning)
            self.finish_reason = last.finish_reason
        if not any(content) and not any(reasoning) and finish is None:
            return None, False
        return Delta("".join(content), "".join(reasoning), self.finish_reason), finish is not None
