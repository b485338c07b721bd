"""Line numbers for keys of a TOML document, so configuration errors can point at them.

``tomllib`` does not report positions; this scanner understands the subset people write in
configuration files (tables, arrays of tables, bare/quoted/dotted keys) and returns ``None``
for anything it cannot place, in which case errors name the file without a line.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r'^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\'))*)\s*=')

Path_ = tuple[str | int, ...]


def _split_key(text: str) -> list[str]:
    parts = re.findall(r'"([^"]*)"|\'([^\']*)\'|([A-Za-z0-9_-]+)', text)
    return [a or b or c for a, b, c in parts]


def key_lines(text: str) -> dict[Path_, int]:
    """Map each key path (``("rate_limits", 1, "limit")``) and table path to its 1-based line."""
    lines: dict[Path_, int] = {}
    arrays: dict[tuple[str, ...], int] = {}
    current: Path_ = ()
    for lineno, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            names = tuple(_split_key(header.group(2)))
            if header.group(1) == "[[":
                index = arrays.get(names, -1) + 1
                arrays[names] = index
                current = (*names, index)
                lines.setdefault(names, lineno)
            else:
                current = _resolve_arrays(names, arrays)
            lines.setdefault(current, lineno)
            continue
        key = _KEY.match(line)
        if key:
            lines.setdefault((*current, *_split_key(key.group(1))), lineno)
    return lines


def _resolve_arrays(names: tuple[str, ...], arrays: dict[tuple[str, ...], int]) -> Path_:
    """``[a.b]`` under the latest ``[[a]]`` element is ``("a", n, "b")``."""
    path: list[str | int] = []
    for i, name in enumerate(names):
        path.append(name)
        index = arrays.get(names[: i + 1])
        if index is not None and i < len(names) - 1:
            path.append(index)
    return tuple(path)


def nearest_line(lines: dict[Path_, int], path: Path_) -> int | None:
    """The line of ``path``, or of its closest enclosing table that has one."""
    for end in range(len(path), 0, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return None
