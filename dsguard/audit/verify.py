"""Verify an audit log: every record against its hash, every link, every checkpoint signature.

Each problem is a :class:`Finding` naming the file, line and ``seq``: a record modified (its
content no longer matches its hash), deleted (a gap in ``seq``), inserted (a ``seq`` twice, one
copy not linked from its successor), moved (a ``seq`` out of order), a broken link (a record
rewritten with a recomputed hash), a checkpoint whose signature does not verify or whose key is
not pinned, a rotated file removed (a gap between files) or truncated (no closing checkpoint).
Warnings are not tampering: records after the last signed checkpoint are *unanchored* (their
truncation could not be detected), a torn last line is an interrupted write (a crash).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from ..crypto.keys import PublicKey, public_key_id
from .chain import GENESIS, record_hash
from .files import expand, lines_of
from .record import CHECKPOINT, DECISION, START
from .signing import checkpoint_signature_valid, key_from_jwk

Severity = Literal["error", "warning", "info"]
Visitor = Callable[[Mapping[str, Any]], None]

EXIT_OK = 0
EXIT_TAMPERED = 1
EXIT_UNREADABLE = 2
EXIT_INCOMPLETE = 3


@dataclasses.dataclass(frozen=True)
class Finding:
    severity: Severity
    kind: str
    message: str
    file: str | None = None
    line: int | None = None
    seq: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: " if self.file and self.line else f"{self.file}: " if self.file else ""
        return f"{where}{self.severity}: {self.message}"


@dataclasses.dataclass
class Verification:
    """What :func:`verify_log` found."""

    files: list[str] = dataclasses.field(default_factory=list)
    records: int = 0
    decisions: int = 0
    checkpoints: int = 0
    verified_checkpoints: int = 0
    anchored_seq: int | None = None
    head_seq: int | None = None
    head_hash: str | None = None
    unanchored: int = 0
    key_ids: set[str] = dataclasses.field(default_factory=set)
    pinned: bool = False
    findings: list[Finding] = dataclasses.field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def intact(self) -> bool:
        """No tampering found (warnings allowed)."""
        return not self.errors and self.records > 0

    @property
    def exit_code(self) -> int:
        if self.records == 0 and not self.errors:
            return EXIT_UNREADABLE
        return EXIT_TAMPERED if self.errors else EXIT_INCOMPLETE if self.warnings else EXIT_OK

    def summary(self) -> str:
        status = "TAMPERED" if self.errors else "INCOMPLETE" if self.warnings else "OK"
        anchor = f"anchored up to seq {self.anchored_seq}" if self.anchored_seq is not None else "no signed anchor"
        return (f"{status}: {self.records} records ({self.decisions} decisions) in {len(self.files)} file(s), "
                f"{self.verified_checkpoints}/{self.checkpoints} checkpoints verified, {anchor}, "
                f"{self.unanchored} unanchored; head seq {self.head_seq}")

    def as_json(self) -> dict[str, Any]:
        return {
            "status": "tampered" if self.errors else "incomplete" if self.warnings else "ok",
            "files": self.files, "records": self.records, "decisions": self.decisions,
            "checkpoints": self.checkpoints, "verified_checkpoints": self.verified_checkpoints,
            "anchored_seq": self.anchored_seq, "unanchored": self.unanchored, "head_seq": self.head_seq,
            "head_hash": self.head_hash, "key_ids": sorted(self.key_ids), "pinned": self.pinned,
            "findings": [dataclasses.asdict(f) for f in self.findings],
        }


@dataclasses.dataclass
class _Seen:
    record: dict[str, Any]
    file: str
    line: int

    @property
    def seq(self) -> int:
        return int(self.record["seq"])

    @property
    def hash(self) -> str:
        return str(self.record["hash"])


def _first_seq(path: Path) -> float:
    for _, line, complete in lines_of(path):
        if not complete:
            break
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("seq"), int):
            return float(record["seq"])
    return float("inf")


class _Verifier:
    def __init__(self, pinned: Mapping[str, PublicKey] | None, visit: Visitor | None) -> None:
        self.pinned = pinned
        self.visit = visit
        self.result = Verification(pinned=pinned is not None)
        self.prev: _Seen | None = None
        self.twins: list[_Seen] = []
        self.gaps: dict[int, tuple[_Seen | None, str, int]] = {}
        self.unsigned = 0
        self.closed = False
        self.closing_missing: _Seen | None = None

    def error(self, kind: str, message: str, seen: _Seen | None = None, *, severity: Severity = "error",
              file: str | None = None, line: int | None = None) -> None:
        self.result.findings.append(Finding(severity, kind, message, seen.file if seen else file,
                                            seen.line if seen else line, seen.seq if seen else None))

    def run(self, paths: list[Path]) -> Verification:
        files = sorted(paths, key=_first_seq)
        self.result.files = [str(p) for p in files]
        for index, path in enumerate(files):
            self.file(path, last=index == len(files) - 1)
        self.finish()
        return self.result

    def file(self, path: Path, *, last: bool) -> None:
        name = str(path)
        final: _Seen | None = None
        torn = False
        for number, line, complete in lines_of(path):
            if not complete:
                torn = True
                self.error("torn_line", f"torn last line ({len(line)} bytes): a write interrupted by a crash or a "
                           "truncation in the middle of a record; it is not part of the chain",
                           severity="warning", file=name, line=number)
                break
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("seq"), int) \
                    or not isinstance(record.get("hash"), str) or not isinstance(record.get("prev"), str):
                self.error("malformed", "not an audit record (not JSON, or no seq/prev/hash): the line was "
                           "corrupted or modified", file=name, line=number)
                continue
            final = _Seen(record, name, number)
            self.record(final)
        if final is None:
            if not torn:
                self.error("empty_file", "the file holds no audit record", severity="warning", file=name)
            return
        if not last and not torn and final.record.get("type") != CHECKPOINT:
            self.closing_missing = final

    def record(self, seen: _Seen) -> None:
        record = seen.record
        if self.closing_missing is not None:
            missing, self.closing_missing = self.closing_missing, None
            if record.get("type") != START:
                self.error("truncated_file", f"{missing.file} ends at seq {missing.seq} without the checkpoint "
                           "that closes a rotated file: its end was truncated", missing)
        if record_hash(record) != seen.hash:
            self.error("modified", f"seq {seen.seq}: the record does not match its hash: it was modified", seen)
        kind = record.get("type")
        if self.closed and kind != START:
            self.error("appended", f"seq {seen.seq} follows the closing checkpoint of a clean stop without a restart "
                       "record: it was appended", seen)
        self.link(seen)
        self.result.records += 1
        if kind == CHECKPOINT:
            self.checkpoint(seen)
        else:
            self.result.unanchored += 1
            self.closed = False
        if kind == DECISION:
            self.result.decisions += 1
            if self.visit is not None:
                self.visit(record)
        elif kind == START and record.get("clean") is False:
            cause = "a failed write (the disk full or failing)" if record.get("reason") == "write_error" else \
                "an unclean stop (a crash or a kill)"
            self.error("restart", f"seq {seen.seq}: the writer carried on after {cause}", seen, severity="info")

    def link(self, seen: _Seen) -> None:
        prev = self.prev
        if prev is None:
            if seen.seq != 1:
                self.error("missing_start", f"the chain starts at seq {seen.seq}: records 1 to {seen.seq - 1} are "
                           "missing (the oldest file removed, or the start of the log deleted)", seen)
            elif seen.record["prev"] != GENESIS:
                self.error("broken_link", "seq 1 does not start a chain (its prev is not the genesis hash)", seen)
            self.advance(seen)
            return
        if seen.seq == prev.seq:
            self.twins.append(seen)
            return
        if seen.seq < prev.seq:
            gap = self.gaps.pop(seen.seq, None)
            if gap is not None:
                self.error("reordered", f"seq {seen.seq} appears after seq {prev.seq}: records were moved out of "
                           "order", seen)
            else:
                self.error("inserted", f"seq {seen.seq} appears again after seq {prev.seq}: a record was inserted "
                           "(or copied)", seen)
            return
        if self.twins:
            self.resolve_twins(seen)
            prev = self.prev
            assert prev is not None
        if seen.seq > prev.seq + 1:
            for seq in range(prev.seq + 1, seen.seq):
                self.gaps[seq] = (prev, seen.file, seen.line)
        elif seen.record["prev"] != prev.hash:
            self.error("broken_link", f"seq {seen.seq} does not link to seq {prev.seq}: one of them was rewritten "
                       "(its hash recomputed) or replaced", seen)
        self.advance(seen)

    def resolve_twins(self, following: _Seen) -> None:
        assert self.prev is not None
        copies = [self.prev, *self.twins]
        self.twins = []
        genuine = next((c for c in copies if c.hash == following.record["prev"]), None)
        for copy in copies:
            if copy is not genuine and genuine is not None:
                self.error("inserted", f"seq {copy.seq} is repeated and this copy is not linked from seq "
                           f"{following.seq}: a forged record was inserted", copy)
        if genuine is None:
            lines = ", ".join(str(c.line) for c in copies)
            self.error("inserted", f"seq {copies[0].seq} appears {len(copies)} times (lines {lines}): a record was "
                       "inserted", copies[-1])
            genuine = copies[0]
        self.prev = genuine

    def advance(self, seen: _Seen) -> None:
        self.prev = seen
        self.result.head_seq = seen.seq
        self.result.head_hash = seen.hash

    def checkpoint(self, seen: _Seen) -> None:
        result = self.result
        record = seen.record
        result.checkpoints += 1
        self.closed = record.get("final") is True
        if record.get("signature") is None:
            self.unsigned += 1
            result.unanchored += 1
            return
        key_id = str(record.get("key_id"))
        key = self.key_for(seen, key_id)
        if key is None:
            result.unanchored += 1
            return
        if not checkpoint_signature_valid(record, key):
            self.error("bad_signature", f"checkpoint seq {seen.seq}: the signature does not verify: the checkpoint "
                       "(or the head it anchors) was forged or modified", seen)
            result.unanchored += 1
            return
        result.key_ids.add(key_id)
        result.verified_checkpoints += 1
        result.anchored_seq = seen.seq
        result.unanchored = 0

    def key_for(self, seen: _Seen, key_id: str) -> PublicKey | None:
        if self.pinned is not None:
            key = self.pinned.get(key_id)
            if key is None:
                self.error("unknown_key", f"checkpoint seq {seen.seq} is signed by key {key_id}, which is not one "
                           "of the pinned keys", seen)
            return key
        jwk = seen.record.get("jwk")
        try:
            key = key_from_jwk(jwk if isinstance(jwk, dict) else {})
        except ValueError as exc:
            self.error("bad_signature", f"checkpoint seq {seen.seq}: {exc}", seen)
            return None
        if public_key_id(key) != key_id:
            self.error("bad_signature", f"checkpoint seq {seen.seq}: its key id does not match its public key", seen)
            return None
        return key

    def finish(self) -> None:
        result = self.result
        if self.twins and self.prev is not None:
            lines = ", ".join(str(c.line) for c in [self.prev, *self.twins])
            self.error("inserted", f"seq {self.prev.seq} appears {len(self.twins) + 1} times (lines {lines}): a "
                       "record was inserted", self.twins[-1])
        for first, last, (before, file, line) in _ranges(self.gaps):
            span = f"seq {first}" if first == last else f"seq {first} to {last}"
            count = last - first + 1
            where = (f"between {before.file}:{before.line} and {file}:{line}" if before is not None and
                     before.file == file else f"between the end of {before.file if before else '?'} and {file}")
            hint = "a rotated file was removed" if before is not None and before.file != file else "deleted"
            self.error("deleted", f"{span} missing ({count} record{'s' if count > 1 else ''}: {hint}), {where}",
                       file=file, line=line)
        if self.unsigned:
            self.error("unsigned", f"{self.unsigned} checkpoint(s) are unsigned ([audit] signing_key is not set): "
                       "they anchor nothing", severity="warning")
        if result.unanchored and result.records:
            which = (f"after the last verified checkpoint (seq {result.anchored_seq}) are unanchored"
                     if result.anchored_seq is not None else "are unanchored (no verified checkpoint)")
            self.error("unanchored", f"{result.unanchored} record(s) {which}: a truncation or rewrite of them could "
                       "not be detected", severity="warning")
        if self.pinned is None and result.key_ids:
            self.error("unpinned", "checkpoint signatures were checked with the keys the log names ("
                       f"{', '.join(sorted(result.key_ids))}); pin them with --key or --public-key",
                       severity="info")
        if result.records == 0 and not result.errors:
            self.error("no_records", "no audit record found")


def _ranges(gaps: dict[int, tuple[_Seen | None, str, int]]) -> Iterable[tuple[int, int, tuple[_Seen | None, str,
                                                                                                  int]]]:
    seqs = sorted(gaps)
    start = 0
    for index in range(1, len(seqs) + 1):
        if index == len(seqs) or seqs[index] != seqs[index - 1] + 1 or gaps[seqs[index]] != gaps[seqs[start]]:
            yield seqs[start], seqs[index - 1], gaps[seqs[start]]
            start = index


def verify_log(paths: Iterable[Path], *, public_keys: Mapping[str, PublicKey] | None = None,
               visit: Visitor | None = None) -> Verification:
    """Verify the log made of ``paths`` (files, directories, or an active file with its rotated ones).

    ``public_keys`` pins the checkpoint keys (by key id); without it, each checkpoint is checked with
    the key it names. ``visit`` is called with each decision record, in chain order.
    """
    files = expand(paths)
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: no such audit log file")
    return _Verifier(public_keys, visit).run(files)
