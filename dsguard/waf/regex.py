"""Regular expressions for rules: google-re2 (linear time, many patterns in one pass) when installed.

:class:`PatternSet` answers "which of these patterns occur in this text" in one scan with
``re2.Set``; without google-re2, or for a pattern RE2 cannot run (backreferences,
lookaround), Python's ``re`` takes over for that pattern. Patterns follow ModSecurity's
defaults: ``.`` matches a newline and ``$`` is the end of the text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

try:
    import re2 as _re2
except ImportError:  # pragma: no cover - exercised where google-re2 is not installed
    _re2 = None

HAVE_RE2 = _re2 is not None
_MAX_MEM = 256 << 20
_CHUNK = 48


class Searcher(Protocol):
    def search(self, text: str) -> Any: ...


class UnsupportedPattern(ValueError):
    """A pattern neither engine can compile."""


def _python_pattern(pattern: str) -> re.Pattern[str]:
    flags = re.S
    # Python only accepts global inline flags at the very start; ModSecurity patterns put them anywhere.
    inline = re.match(r"^\(\?([a-zA-Z]+)\)", pattern)
    if inline:
        pattern = pattern[inline.end():]
        flags |= re.I if "i" in inline.group(1) else 0
        flags |= re.M if "m" in inline.group(1) else 0
    pattern = re.sub(r"\\z", r"\\Z", pattern)
    try:
        return re.compile(pattern, flags)
    except (re.error, OverflowError, RecursionError) as exc:
        raise UnsupportedPattern(str(exc)) from None


def _re2_options() -> Any:
    assert _re2 is not None
    options = _re2.Options()
    options.dot_nl = True
    options.max_mem = _MAX_MEM
    options.log_errors = False
    return options


def compile_pattern(pattern: str, *, prefer_re2: bool = True) -> Searcher:
    """One pattern, compiled by RE2 where it can be, else by Python's ``re``."""
    if prefer_re2 and _re2 is not None:
        try:
            return _re2.compile(pattern, _re2_options())  # type: ignore[no-any-return]
        except Exception:  # google-re2 raises its own error type, or ValueError on bad UTF-8
            pass
    return _python_pattern(pattern)


def re2_accepts(pattern: str) -> bool:
    if _re2 is None:
        return False
    try:
        _re2.compile(pattern, _re2_options())
    except Exception:
        return False
    return True


class PatternSet:
    """Which of several patterns occur in a text, in as few scans as possible."""

    __slots__ = ("_python", "_sets", "size")

    def __init__(self, patterns: Sequence[str], *, prefer_re2: bool = True) -> None:
        self.size = len(patterns)
        self._sets: list[tuple[Any, list[int]]] = []
        self._python: list[tuple[int, Searcher]] = []
        batch: list[tuple[int, str]] = []
        for index, pattern in enumerate(patterns):
            if prefer_re2 and re2_accepts(pattern):
                batch.append((index, pattern))
            else:
                self._python.append((index, _python_pattern(pattern)))
        for start in range(0, len(batch), _CHUNK):
            self._add_set(batch[start:start + _CHUNK])

    def _add_set(self, batch: list[tuple[int, str]]) -> None:
        assert _re2 is not None
        pattern_set = _re2.Set.SearchSet(_re2_options())
        for _, pattern in batch:
            pattern_set.Add(pattern)
        pattern_set.Compile()
        # The compiled set itself takes UTF-8 bytes; its Python wrapper only adds an encoding step.
        match = getattr(getattr(pattern_set, "_set", None), "Match", None)
        if match is None:  # pragma: no cover - another google-re2 layout
            self._sets.append((lambda data, wrapped=pattern_set: wrapped.Match(data),
                               [index for index, _ in batch]))
        else:
            self._sets.append((match, [index for index, _ in batch]))

    def matches(self, text: str) -> list[int]:
        """Indexes of the patterns found in ``text``, in no particular order."""
        found: list[int] = []
        if self._sets:
            data = text.encode("utf-8", "replace") if not text.isascii() else text.encode()
            for match, indexes in self._sets:
                hits = match(data)
                if hits:
                    found.extend(indexes[i] for i in hits)
        for index, compiled in self._python:
            if compiled.search(text) is not None:
                found.append(index)
        return found
