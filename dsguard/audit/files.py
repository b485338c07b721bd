"""The files of one audit log: the active file and the rotated ones beside it.

``audit.jsonl`` is written to; rotation renames it ``audit.<first seq, 12 digits>.jsonl``. The
chain runs through the rotated files in the order of their first ``seq``, then the active file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

TAIL_CHUNK = 64 * 1024


def rotated_name(active: Path, first_seq: int) -> Path:
    """Where the active file goes on rotation (a free name if that one is taken)."""
    candidate = active.with_name(f"{active.stem}.{first_seq:012d}{active.suffix}")
    counter = 1
    while candidate.exists():
        candidate = active.with_name(f"{active.stem}.{first_seq:012d}-{counter}{active.suffix}")
        counter += 1
    return candidate


def _rotated_pattern(active: Path) -> re.Pattern[str]:
    return re.compile(re.escape(active.stem) + r"\.\d{12}(?:-\d+)?" + re.escape(active.suffix))


def rotated_files(active: Path) -> list[Path]:
    """The rotated files of ``active``'s log, oldest first (by name: first seq)."""
    pattern = _rotated_pattern(active)
    try:
        names = [p for p in active.parent.iterdir() if pattern.fullmatch(p.name)]
    except FileNotFoundError:
        return []
    return sorted(names, key=lambda p: p.name)


def log_files(active: Path) -> list[Path]:
    """Every file of ``active``'s log, rotated ones first, the active one (if it exists) last."""
    files = rotated_files(active)
    if active.exists():
        files.append(active)
    return files


def expand(paths: Iterable[Path]) -> list[Path]:
    """The files named: a directory gives its ``*.jsonl`` files, an active file its rotated ones too."""
    found: dict[Path, None] = {}
    for path in paths:
        if path.is_dir():
            for child in sorted(path.glob("*.jsonl")):
                found[child] = None
            continue
        siblings = rotated_files(path) if not _is_rotated(path) else []
        for sibling in siblings:
            found[sibling] = None
        found[path] = None
    return list(found)


def _is_rotated(path: Path) -> bool:
    return re.fullmatch(r".+\.\d{12}(?:-\d+)?\.[^.]+", path.name) is not None


def read_tail(path: Path, limit: int = 64 * 1024 * 1024) -> tuple[bytes | None, bytes]:
    """The last complete line of ``path`` (without its newline) and the torn bytes after it."""
    with path.open("rb") as file:
        end = file.seek(0, os.SEEK_END)
        position, data = end, b""
        while True:
            last = data.rfind(b"\n")
            if last != -1:
                before = data.rfind(b"\n", 0, last)
                if before != -1 or position == 0:
                    return data[before + 1:last], data[last + 1:]
            if position == 0 or end - position >= limit:
                return None, data if last == -1 else data[last + 1:]
            step = min(TAIL_CHUNK, position)
            position -= step
            file.seek(position)
            data = file.read(step) + data


def read_head(path: Path) -> dict[str, Any] | None:
    """The first record of ``path``, or ``None`` when it has no complete, readable first line."""
    with path.open("rb") as file:
        line = file.readline()
    if not line.endswith(b"\n"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def lines_of(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """``(line number, line, complete)`` for each line; only the last may be incomplete (torn)."""
    with path.open("rb") as file:
        for number, line in enumerate(file, 1):
            if line.endswith(b"\n"):
                yield number, line[:-1], True
            else:
                yield number, line, False


def fsync_directory(path: Path) -> None:
    """Make a rename or creation in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
