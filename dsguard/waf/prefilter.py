"""Which values a rule can match at all, decided before any scan.

:func:`required_chars` reads a pattern's syntax tree and returns a set of characters of which
every match contains at least one (``<\\s*script`` needs ``<``; ``union\\s+select`` needs one of
``u U``), or ``None`` when there is no such guarantee. The analysis over-approximates: a
branch needs the union of what its alternatives need, a repeat that may be empty needs nothing.

A *plain* value (:data:`PLAIN`: ASCII letters, digits, single spaces and punctuation that no
transformation rewrites) comes out of every :data:`TEXT_PRESERVING` transformation as itself or
lower-cased, with no character it did not have. So a rule whose required characters are all
outside the plain alphabet never matches a plain value, and the transformations before a rule
that may match need not run: the engine scans the value (or its lower-case form) directly.
"""

from __future__ import annotations

import re
import string
from re import _parser as _sre_parse  # type: ignore[attr-defined]  # Python's own pattern parser
from typing import Any

NON_ASCII = "\U0010ffff"  # stands for every character outside ASCII
_ASCII = frozenset(chr(code) for code in range(128))
_UNIVERSE = _ASCII | {NON_ASCII}
_WORD = frozenset(string.ascii_letters + string.digits + "_") | {NON_ASCII}
_DIGIT = frozenset(string.digits) | {NON_ASCII}
_SPACE = frozenset(" \t\n\r\f\v\x1c\x1d\x1e\x1f") | {NON_ASCII}
_CATEGORIES = {
    "CATEGORY_WORD": _WORD, "CATEGORY_NOT_WORD": _UNIVERSE - _WORD | {NON_ASCII},
    "CATEGORY_DIGIT": _DIGIT, "CATEGORY_NOT_DIGIT": _UNIVERSE - _DIGIT | {NON_ASCII},
    "CATEGORY_SPACE": _SPACE, "CATEGORY_NOT_SPACE": _UNIVERSE - _SPACE | {NON_ASCII},
}
_COMMON = frozenset(string.ascii_lowercase + string.digits + " ")

PLAIN_CHARS = frozenset(string.ascii_letters + string.digits + " _.,:;/=@()!?~|<>[]#-")
PLAIN = re.compile(r"[A-Za-z0-9_.,:;/=@()!?~|<>\[\]#-]+(?: [A-Za-z0-9_.,:;/=@()!?~|<>\[\]#-]+)*")
"""A plain value: the characters above, words separated by single spaces."""

# Transformations that leave a plain value as it is, or lower-case it (``lowercase``, ``sqlnormalize``,
# ``shellnormalize``, ``cmdline`` lower-case; none adds a character).
IDENTITY_ON_PLAIN = frozenset({
    "none", "urldecode", "urldecodeuni", "htmlentitydecode", "jsdecode", "cssdecode", "removenulls",
    "replacenulls", "replacecomments", "utf8tounicode", "decodeall", "foldwidth", "sevenbit", "escapeseqdecode",
    "compresswhitespace", "trimleft", "trimright", "trim",
})
LOWERING_ON_PLAIN = frozenset({"lowercase", "sqlnormalize", "shellnormalize"})
# Transformations whose output has no character the input (or its lower-case form, or a space) lacks.
TEXT_PRESERVING = IDENTITY_ON_PLAIN | LOWERING_ON_PLAIN | frozenset({
    "removewhitespace", "removecomments", "removecommentschar", "cmdline", "normalizepath", "normalisepath",
    "normalizepathwin", "normalisepathwin",
})


def plain_view(chain: tuple[str, ...]) -> str | None:
    """What ``chain`` makes of a plain value: ``"raw"`` (itself), ``"lower"`` (lower-cased), ``"tight"``
    (lower-cased without spaces); ``None`` if it may rewrite it otherwise."""
    lowers = any(t in LOWERING_ON_PLAIN for t in chain)
    rest = [t for t in chain if t not in IDENTITY_ON_PLAIN and t not in LOWERING_ON_PLAIN]
    if not rest:
        return "lower" if lowers else "raw"
    return "tight" if lowers and set(rest) == {"removewhitespace"} else None


def _cased(chars: frozenset[str]) -> frozenset[str]:
    extra = {c.swapcase() for c in chars if c.isascii() and c.isalpha()}
    if any(c in "kKsS" for c in chars):
        extra.add(NON_ASCII)  # the Kelvin sign and long s fold to k and s
    return chars | extra


def _char_class(items: list[tuple[Any, Any]], ignore_case: bool) -> frozenset[str]:
    chars: set[str] = set()
    negate = False
    for op, arg in items:
        name = str(op)
        if name == "NEGATE":
            negate = True
        elif name == "LITERAL":
            chars.add(chr(arg) if arg < 128 else NON_ASCII)
        elif name == "RANGE":
            low, high = arg
            chars.update(chr(c) for c in range(low, min(high, 127) + 1))
            if high >= 128:
                chars.add(NON_ASCII)
        elif name == "CATEGORY":
            chars |= _CATEGORIES.get(str(arg), _UNIVERSE)
        else:
            chars |= _UNIVERSE
    found = frozenset(chars)
    if ignore_case:
        found = _cased(found)
    if negate:
        found = (_UNIVERSE - found) | {NON_ASCII}
    return found


def _rank(chars: frozenset[str]) -> tuple[int, int]:
    return len(chars & _COMMON), len(chars)


def _sequence(items: Any, ignore_case: bool) -> frozenset[str] | None:
    best: frozenset[str] | None = None
    for op, arg in items:
        found = _item(str(op), arg, ignore_case)
        if found is not None and (best is None or _rank(found) < _rank(best)):
            best = found
    return best


def _item(name: str, arg: Any, ignore_case: bool) -> frozenset[str] | None:
    if name == "LITERAL":
        chars = frozenset({chr(arg) if arg < 128 else NON_ASCII})
        return _cased(chars) if ignore_case else chars
    if name == "NOT_LITERAL":
        return (_UNIVERSE - {chr(arg)}) | {NON_ASCII} if arg < 128 else _UNIVERSE
    if name == "IN":
        return _char_class(arg, ignore_case)
    if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
        low, _, body = arg
        return _sequence(body, ignore_case) if low >= 1 else None
    if name == "SUBPATTERN":
        _, add_flags, del_flags, body = arg
        case = (ignore_case or bool(add_flags & re.I)) and not del_flags & re.I
        return _sequence(body, case)
    if name == "ATOMIC_GROUP":
        return _sequence(arg, ignore_case)
    if name == "BRANCH":
        union: set[str] = set()
        for branch in arg[1]:
            found = _sequence(branch, ignore_case)
            if found is None:
                return None
            union |= found
        return frozenset(union)
    return None  # anchors, lookarounds, back references, any character


def required_chars(pattern: str, *, ignore_case: bool = False) -> frozenset[str] | None:
    """Characters of which every match of ``pattern`` contains one; ``None`` if not known."""
    try:
        parsed = _sre_parse.parse(re.sub(r"\\z", r"\\Z", pattern), re.S)
    except (re.error, OverflowError, RecursionError, ValueError):
        return None
    case = ignore_case or bool(parsed.state.flags & re.I)
    try:
        return _sequence(list(parsed), case)
    except RecursionError:
        return None


def never_plain(required: frozenset[str] | None) -> bool:
    """Whether a pattern with these required characters cannot match a plain value, as is or lower-cased."""
    return required is not None and not required & (PLAIN_CHARS | {" "})
