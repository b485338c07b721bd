"""The audit writer: a bounded queue fed by the request path, one thread appending JSON lines.

Calls hand their record to :meth:`AuditWriter.submit`, which never waits on the disk: the
record is queued, or (queue full) waits asynchronously for room under ``on_full = "block"`` or
is dropped at once under ``"drop"``; every dropped record is counted. Under ``durability =
"written"`` calls await :meth:`AuditWriter.write` instead, whose answer is exact: ``True``, the
record is in the log; ``False``, it is not and never will be. A record whose caller stops waiting
before the thread claims it (see :mod:`.receipt`) is skipped, taking no place in the chain, and
counted as dropped; one already claimed is being written, and its caller waits for the outcome.
After a write that fails part way, the records whose lines were written whole are reported
written. Only a failed sync under ``fsync = "always"`` leaves the outcome unknown: its records
are reported not written, though the file may keep them.

The thread links each record into the hash chain, writes each batch with one ``write``, syncs
per ``fsync``, signs a checkpoint every ``checkpoint_every`` records or ``checkpoint_interval``
seconds, and rotates the file by size or age, the chain continuing in the new file (see
:mod:`.segment`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import AuditConfig
from . import AuditError
from .chain import Chain
from .inbox import Inbox
from .receipt import Receipt, outcome, settle
from .record import CHECKPOINT, START, rfc3339
from .segment import Batch, Segment, WriteFailed, lock_log, resume
from .signing import CheckpointSigner, sign_checkpoint

logger = logging.getLogger("dsguard.audit")

BATCH = 512
IDLE_WAKE = 0.5

Encoder = Callable[[Any], dict[str, Any]]
MINIMAL_FIELDS = ("type", "time", "request_id", "decision", "reason")
"""What a record that cannot be encoded keeps."""


def _plain(value: object) -> str | None:
    return value.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(value, str) else None

__all__ = ["AuditError", "AuditWriter"]


class AuditWriter:
    """One log file's writer; :meth:`start` it, :meth:`submit` records, :meth:`stop` it (final checkpoint)."""

    def __init__(self, config: AuditConfig, *, signer: CheckpointSigner | None = None, encode: Encoder = dict,
                 on_drop: Callable[[int], object] | None = None,
                 on_chain_failure: Callable[[], object] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.path = Path(config.path)
        self.signer = signer
        self.encode = encode
        self.on_drop = on_drop
        self.on_chain_failure = on_chain_failure
        self.clock = clock
        self.drops = 0
        self.written = 0
        self.checkpoints = 0
        self._waiting = 0
        self._drops_logged_at = 0.0
        self._inbox = Inbox(config.queue_size)
        self._stopping = threading.Event()
        self._open_gate = threading.Event()
        self._open_gate.set()
        self._drop_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self._file = Segment(self.path)
        self._chain = Chain()
        self._since_checkpoint = 0
        self._checkpoint_due = 0.0
        self._last_sync = 0.0
        self._broken = False
        self._unsynced: list[Receipt] = []
        """Receipts whose lines are written but not yet synced (``fsync = "always"``)."""

    # --- the request path ------------------------------------------------------------------------------------

    def submit(self, item: Any) -> Awaitable[None] | None:
        """Queue ``item``; ``None`` when queued or dropped, else an awaitable waiting for room (``block``)."""
        stopping = self._stopping.is_set()
        if not stopping and self._inbox.offer(item):
            return None
        if self.config.on_full == "drop" or stopping:
            self._dropped(1)
            return None
        return self._queue_when_room(item)

    async def write(self, item: Any, timeout: float) -> bool:
        """Queue ``item`` and wait until it is written (and synced under ``fsync = "always"``) without blocking the
        event loop. ``True``: the record is in the log. ``False``: it is not, and never will be: it cannot be
        written (writer stopped or failed, a write error, a full queue under ``on_full = "drop"`` or for longer
        than ``full_wait``), or the writer had not claimed it within ``timeout`` seconds, and it is then dropped
        (and counted) rather than written late. A record claimed by then is being written: the call waits for
        that write to end, past ``timeout``, and returns its outcome. Cancelling the call likewise drops a
        record not yet claimed (the cancellation goes on) or waits for one being written (the cancellation is
        then withdrawn and the outcome returned), so what the caller learns always matches the log (but for a
        failed sync, see the module)."""
        receipt = Receipt(item, asyncio.get_running_loop())
        deadline = time.monotonic() + timeout
        if not self.running or self._stopping.is_set():
            self._dropped(1)
            return False
        if not self._inbox.offer(receipt):
            if self.config.on_full == "drop":
                self._dropped(1)
                return False
            if not await self._wait_for_room(receipt, min(deadline, time.monotonic() + self.config.full_wait)):
                return False
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await asyncio.shield(receipt.future)
        except TimeoutError:
            if self._give_up(receipt):
                return False
            return await outcome(receipt)
        except asyncio.CancelledError:
            if self._give_up(receipt):
                raise
            return await outcome(receipt, cancelled=1)

    def _give_up(self, receipt: Receipt) -> bool:
        """Abandon ``receipt``'s record unless the writer has claimed it; an abandoned record counts as dropped."""
        if not receipt.abandon():
            return False
        self._dropped(1)
        return True

    async def _queue_when_room(self, item: Any) -> None:
        await self._wait_for_room(item, time.monotonic() + self.config.full_wait)

    async def _wait_for_room(self, item: Any, deadline: float) -> bool:
        delay = 0.001
        self._count_waiting(1)
        try:
            while True:
                await asyncio.sleep(delay)
                if self._inbox.offer(item):
                    return True
                if time.monotonic() >= deadline:
                    self._dropped(1)
                    return False
                delay = min(delay * 2, 0.05)
        except asyncio.CancelledError:
            self._dropped(1)
            raise
        finally:
            self._count_waiting(-1)

    def _count_waiting(self, change: int) -> None:
        with self._drop_lock:
            self._waiting += change

    def _dropped(self, count: int) -> None:
        with self._drop_lock:
            self.drops += count
            now = time.monotonic()
            report = now - self._drops_logged_at >= 1.0
            if report:
                self._drops_logged_at = now
        if self.on_drop is not None:
            self.on_drop(count)
        if report:
            logger.error("audit log %s: records dropped (queue full, stopped, write failed or not written in time): "
                         "%d so far", self.path, self.drops)

    # --- lifecycle -------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def failed(self) -> bool:
        """The writer thread stopped without being asked to (its records are no longer written)."""
        return self._thread is not None and not self._thread.is_alive() and not self._stopping.is_set()

    def start(self) -> None:
        """Open the log (resuming its chain) and start the writer thread; idempotent."""
        if self._thread is not None:
            return
        try:
            self._lock_fd = lock_log(self.path)
            self._open_log()
        except OSError as exc:
            self._unlock()
            raise AuditError(f"audit log {self.path}: cannot open ({exc.strerror or exc})") from None
        except AuditError:
            self._unlock()
            raise
        self._thread = threading.Thread(target=self._run, name="dsguard-audit", daemon=True)
        self._thread.start()
        atexit.register(self.stop)

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, a final checkpoint, sync and close; idempotent."""
        thread = self._thread
        if thread is None or self._stopping.is_set():
            return
        atexit.unregister(self.stop)
        self._stopping.set()
        self._open_gate.set()
        self._inbox.wake()
        thread.join(timeout)
        if thread.is_alive():
            logger.error("audit log %s: the writer did not finish within %ss", self.path, timeout)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold writes (records queue up meanwhile, ``on_full`` applies; calls waiting on their record under
        ``durability = "written"`` are refused after ``written_timeout``, their records then dropped rather than
        written late), e.g. while the files are copied."""
        self._open_gate.clear()
        try:
            yield
        finally:
            self._open_gate.set()

    def wait_written(self, timeout: float | None = None) -> bool:
        """Wait until every record submitted so far is written (or dropped); ``False`` on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self._inbox) or self._inbox.busy or self._waiting:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- the log file ----------------------------------------------------------------------------------------

    def _open_log(self) -> None:
        now = self.clock()
        state = resume(self.path)
        if not state.verified:
            logger.error("audit log %s: the last record (seq %d) does not match its hash", self.path, state.seq)
            if self.on_chain_failure is not None:
                self.on_chain_failure()
        self._chain = Chain(state.seq, state.head)
        self._file.open(state.seq + 1, now, state.active_head)
        start: dict[str, Any] = {"type": START, "time": rfc3339(now), "clean": state.clean, "pid": os.getpid(),
                                 "version": __version__}
        if state.torn:
            start["torn_bytes"] = state.torn
        self._write_alone(lambda: self._link(start))
        self._sync()
        self._checkpoint_due = now + self.config.checkpoint_interval

    def _link(self, body: dict[str, Any], seal: Callable[[dict[str, Any]], object] | None = None) -> bytes:
        return self._chain.link(body, seal)

    def _write_alone(self, make_line: Callable[[], bytes]) -> None:
        """Write one start or checkpoint line made by ``make_line`` (which links it)."""
        batch = Batch(self._chain)
        batch.add(make_line(), self._chain, record=False)
        self._flush(batch)

    def _flush(self, batch: Batch) -> None:
        try:
            self.written += self._file.write(batch)
        except WriteFailed as failure:
            self._chain = Chain(*failure.head)
            self.written += sum(batch.records) - failure.lost
            raise

    def _sync(self) -> None:
        """Sync the active file; the receipts whose lines it holds are then written."""
        self._file.sync()
        self._last_sync = self.clock()
        for receipt in self._unsynced:
            receipt.written = True
        self._unsynced.clear()

    def _appended(self, batched: list[tuple[int, Receipt]]) -> None:
        """The lines of ``batched`` receipts are in the file: written now, or at the next sync under ``fsync =
        "always"``."""
        if self.config.fsync == "always":
            self._unsynced.extend(receipt for _, receipt in batched)
            return
        for _, receipt in batched:
            receipt.written = True

    def _checkpoint_line(self, *, final: bool = False, reason: str = "count") -> bytes:
        body: dict[str, Any] = {"type": CHECKPOINT, "time": rfc3339(self.clock()), "records": self._since_checkpoint,
                                "final": final, "reason": reason}
        signer = self.signer

        def seal(linked: dict[str, Any]) -> None:
            if signer is None:
                linked["signature"] = None
                return
            try:
                sign_checkpoint(linked, signer)
            except Exception:
                logger.exception("audit log %s: signing checkpoint seq %s failed; written unsigned", self.path,
                                 linked["seq"])
                for name in ("key_id", "alg", "jwk"):
                    linked.pop(name, None)
                linked["signature"] = None

        line = self._link(body, seal)
        self._since_checkpoint = 0
        self._checkpoint_due = self.clock() + self.config.checkpoint_interval
        self.checkpoints += 1
        return line

    def _rotation_due(self, pending: int) -> str | None:
        config = self.config
        size = self._file.size + pending
        if size == 0:
            return None
        if config.rotate_size and size >= config.rotate_size:
            return "size"
        if config.rotate_interval and self.clock() - self._file.started >= config.rotate_interval:
            return "age"
        return None

    def _rotate(self, reason: str) -> None:
        """Close the active file with a checkpoint (a start record follows a failed write), open a fresh one."""
        broken = self._broken
        if self._file.is_open and not broken:
            self._write_alone(lambda: self._checkpoint_line(reason=reason))
            self._sync()
        self._file.move_aside()
        self._file.open(self._chain.seq + 1, self.clock())
        self._broken = False
        if broken:
            restart = {"type": START, "time": rfc3339(self.clock()), "clean": False, "pid": os.getpid(),
                       "version": __version__, "reason": reason}
            self._write_alone(lambda: self._link(restart))

    # --- the thread ------------------------------------------------------------------------------------------

    def _timeout(self) -> float:
        now = self.clock()
        waits = [IDLE_WAKE]
        if self._since_checkpoint:
            waits.append(self._checkpoint_due - now)
        if self.config.fsync == "interval" and self._file.dirty:
            waits.append(self._last_sync + self.config.fsync_interval - now)
        return max(0.001, min(waits))

    def _run(self) -> None:
        inbox = self._inbox
        try:
            while True:
                items = inbox.take(BATCH, self._timeout())
                self._open_gate.wait()
                stopping = self._stopping.is_set()
                if stopping:
                    items += inbox.drain()
                receipts = [item for item in items if type(item) is Receipt]
                try:
                    self._append(items)
                    settle(receipts)
                    receipts = []
                    self._periodic()
                except OSError as exc:
                    logger.error("audit log %s: %s", self.path, exc.strerror or exc)
                    self._broken = True
                finally:
                    inbox.busy = False
                    self._unsynced.clear()
                    settle(receipts)
                if stopping:
                    break
            self._close()
        except Exception:
            logger.exception("audit log %s: the writer stopped", self.path)
        finally:
            self._unlock()
            self._abandon(inbox.drain())
            inbox.busy = False

    def _abandon(self, items: list[Any]) -> None:
        """Records left queued by a writer that stopped on an error: counted as dropped, their callers told."""
        self._drop(items)
        settle([item for item in items if type(item) is Receipt])

    def _drop(self, items: list[Any]) -> None:
        """Count ``items`` as dropped, claiming their receipts first: one its caller abandoned was counted then."""
        dropped = sum(1 for item in items if type(item) is not Receipt or item.claim())
        if dropped:
            self._dropped(dropped)

    def _append(self, items: list[Any]) -> None:
        """Chain and write ``items``, marking each claimed receipt whose record is written (records that cannot be
        written are counted as dropped). A receipt its caller abandoned is skipped before it takes a place in the
        chain; after a write that fails part way, the receipts of the lines written whole are still written."""
        if not items:
            return
        done = 0
        batched: list[tuple[int, Receipt]] = []  # the receipts of the batch being built, with their records' seq
        try:
            if self._broken:
                self._rotate("write_error")
            batch = Batch(self._chain)
            for item in items:
                receipt = item if type(item) is Receipt else None
                if receipt is not None and not receipt.claim():
                    done += 1
                    continue
                reason = self._rotation_due(batch.size)
                if reason is not None:
                    self._flush(batch)
                    self._appended(batched)
                    batched = []
                    self._rotate(reason)
                    batch = Batch(self._chain)
                done += 1
                line = self._line(item if receipt is None else receipt.item)
                if line is None:
                    self._dropped(1)
                    continue
                batch.add(line, self._chain, record=True)
                if receipt is not None:
                    batched.append((self._chain.seq, receipt))
                self._since_checkpoint += 1
                if self._since_checkpoint >= self.config.checkpoint_every:
                    batch.add(self._checkpoint_line(), self._chain, record=False)
            self._flush(batch)
            self._appended(batched)
        except WriteFailed as failure:
            self._broken = True
            logger.error("audit log %s: write failed (%s)", self.path, failure.error.strerror or failure.error)
            self._appended([(seq, receipt) for seq, receipt in batched if seq <= failure.head[0]])
            if failure.lost:
                self._dropped(failure.lost)
            self._drop(items[done:])
        except OSError:
            self._drop(items[done:])
            raise
        if self.config.fsync == "always":
            self._sync()

    def _line(self, item: Any) -> bytes | None:
        """``item``'s chained line; when its record cannot be encoded, a minimal record saying so (request id,
        decision, reason, ``"unencodable": true``); None when not even that can be built."""
        body: Any = None
        try:
            body = self.encode(item)
            return self._link(body)
        except (TypeError, ValueError, RecursionError):
            logger.exception("audit log %s: a record could not be encoded", self.path)
        if not isinstance(body, dict):
            return None
        minimal: dict[str, Any] = {key: _plain(body.get(key)) for key in MINIMAL_FIELDS if key in body}
        minimal["unencodable"] = True
        try:
            return self._link(minimal)
        except (TypeError, ValueError):
            return None

    def _periodic(self) -> None:
        now = self.clock()
        if self._since_checkpoint and now >= self._checkpoint_due:
            self._write_alone(lambda: self._checkpoint_line(reason="interval"))
            if self.config.fsync != "never":
                self._sync()
        if self.config.fsync == "interval" and self._file.dirty and \
                now - self._last_sync >= self.config.fsync_interval:
            self._sync()
        reason = self._rotation_due(0)
        if reason == "age":
            self._rotate(reason)

    def _close(self) -> None:
        try:
            if not self._broken:
                self._write_alone(lambda: self._checkpoint_line(final=True, reason="stop"))
            self._sync()
        except OSError as exc:
            logger.error("audit log %s: final checkpoint failed (%s)", self.path, exc.strerror or exc)
        finally:
            self._file.close()
