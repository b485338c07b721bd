"""The files the writer appends to: the active file, its lock, and the chain state found at startup.

Each batch of lines is appended with one ``write``; if a write fails part way, the chain goes
back to the last line written whole. At startup the chain resumes from the last complete
record; a file ending in a torn line (a crash mid-write) is moved aside untouched, so the torn
line stays the last line of its file.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from . import AuditError
from .chain import GENESIS, Chain, record_hash
from .files import fsync_directory, log_files, read_head, read_tail, rotated_name
from .record import CHECKPOINT

logger = logging.getLogger("dsguard.audit")


def lock_log(active: Path) -> int:
    """An exclusive lock on ``active``'s log (``<name>.lock`` beside it): one writer per log."""
    active.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(active.with_name(active.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise AuditError(f"audit log {active} is being written by another process") from None
    return fd


@dataclasses.dataclass(frozen=True)
class Resumed:
    """Where a writer starting on an existing log carries on."""

    seq: int = 0
    head: str = GENESIS
    clean: bool = True
    """The log ended with the closing checkpoint of a clean stop (or did not exist)."""
    verified: bool = True
    """The last record matches its hash."""
    torn: int = 0
    """Bytes of a torn last line (the file holding it was moved aside)."""
    active_head: dict[str, Any] | None = None
    """The first record of the active file the writer appends to, if it holds one."""


def resume(active: Path) -> Resumed:
    """The chain state of ``active``'s log; a torn or headless active file is moved aside first."""
    last: bytes | None = None
    torn = b""
    if active.exists() and active.stat().st_size > 0:
        last, torn = read_tail(active)
    if last is None:
        rotated = [p for p in log_files(active) if p != active]
        if rotated:
            last, _ = read_tail(rotated[-1])
    state = Resumed(torn=len(torn))
    if last is not None:
        try:
            record = json.loads(last)
            state = dataclasses.replace(state, seq=int(record["seq"]), head=str(record["hash"]),
                                        clean=record.get("type") == CHECKPOINT and record.get("final") is True,
                                        verified=record_hash(record) == record["hash"])
        except (ValueError, KeyError, TypeError):
            raise AuditError(f"audit log {active}: its last record is unreadable, so the chain cannot be continued; "
                             "verify the log and move the file aside") from None
    head = read_head(active) if active.exists() else None
    if torn or (active.exists() and active.stat().st_size > 0 and head is None):
        first = head.get("seq") if head is not None else None
        target = rotated_name(active, first if isinstance(first, int) else state.seq + 1)
        active.rename(target)
        logger.warning("audit log %s ended in a torn line (%d bytes): moved to %s", active, len(torn), target)
        head = None
    return dataclasses.replace(state, active_head=head)


def record_epoch(text: object) -> float | None:
    """The POSIX time of a record's ISO 8601 ``time``, or None when it is not one."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class WriteFailed(Exception):
    """A write failed: ``lost`` records were not written; the chain resumes after ``head``."""

    def __init__(self, lost: int, head: tuple[int, str], error: OSError) -> None:
        super().__init__(str(error))
        self.lost = lost
        self.head = head
        self.error = error


class Batch:
    """Lines written with one ``write``, and the chain head after each (to resume after a partial write)."""

    __slots__ = ("heads", "lines", "records", "size", "start")

    def __init__(self, chain: Chain) -> None:
        self.start = (chain.seq, chain.head)
        self.lines: list[bytes] = []
        self.heads: list[tuple[int, str]] = []
        self.records: list[int] = []
        self.size = 0

    def add(self, line: bytes, chain: Chain, *, record: bool) -> None:
        self.lines.append(line)
        self.heads.append((chain.seq, chain.head))
        self.records.append(1 if record else 0)
        self.size += len(line)

    def whole_lines(self, written: int) -> int:
        total = 0
        for count, line in enumerate(self.lines):
            total += len(line)
            if total > written:
                return count
        return len(self.lines)

    def head_after(self, whole: int) -> tuple[int, str]:
        return self.heads[whole - 1] if whole else self.start


class Segment:
    """The active file: appended to, synced, and renamed aside on rotation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1
        self.size = 0
        self.first_seq = 1
        self.started = 0.0
        self.dirty = False

    @property
    def is_open(self) -> bool:
        return self.fd >= 0

    def open(self, next_seq: int, now: float, head: dict[str, Any] | None = None) -> None:
        """Open (or create) the active file; ``head`` is its first record when it already holds some."""
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.size = os.fstat(self.fd).st_size
        if head is not None and isinstance(head.get("seq"), int):
            self.first_seq = head["seq"]
            self.started = record_epoch(head.get("time")) or now
        else:
            self.first_seq, self.started = next_seq, now
        fsync_directory(self.path.parent)

    def write(self, batch: Batch) -> int:
        """Append ``batch``; the number of records written. Raises :class:`WriteFailed`."""
        data = b"".join(batch.lines)
        done = 0
        try:
            while done < len(data):
                done += os.write(self.fd, data[done:])
        except OSError as exc:
            self.size += done
            self.dirty = self.dirty or done > 0
            whole = batch.whole_lines(done)
            raise WriteFailed(sum(batch.records[whole:]), batch.head_after(whole), exc) from None
        self.size += done
        self.dirty = self.dirty or done > 0
        return sum(batch.records)

    def sync(self) -> None:
        if self.dirty:
            os.fsync(self.fd)
            self.dirty = False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def move_aside(self) -> None:
        """Close the file and rename it ``<name>.<first seq>.jsonl``."""
        self.close()
        if self.path.exists():
            self.path.rename(rotated_name(self.path, self.first_seq))
