"""What the built-in rules share: normalised views of a value, inspected variables, pattern helpers.

Each rule looks at one *view* of every inspected value (see :mod:`dsguard.waf.normalize`):
``DECODED`` (every encoding layer peeled, lower-cased), ``SQL`` (plus SQL comments as
spaces), ``SHELL`` (plus shell quoting undone), ``MARKUP`` (plus JavaScript escapes and 7-bit
folding), ``SCRIPT`` (markup with comments and whitespace removed, as a JavaScript parser
skips them) or ``PHP``. Patterns are written for RE2 and Python's ``re`` alike: no lookaround.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..model import Operator, Rule, Selector

DECODED = ("decodeall", "lowercase")
SQL = ("decodeall", "sqlnormalize")
SHELL = ("decodeall", "shellnormalize")
MARKUP = ("decodeall", "jsdecode", "sevenbit", "lowercase")
MARKUP_TIGHT = (*MARKUP, "removewhitespace")
SCRIPT = ("decodeall", "jsdecode", "sevenbit", "lowercase", "replacecomments", "removewhitespace")
UNESCAPED = ("decodeall", "jsdecode", "lowercase")
UNESCAPED_CODE = ("decodeall", "jsdecode", "replacecomments", "compresswhitespace", "lowercase")
RAW = ("decodeall",)

# Header fields whose values are structured by the protocol (tokens, media types, signatures):
# inspecting them finds nothing and flags base64 and quoting by accident.
STRUCTURED_HEADERS = (
    "authorization", "proxy-authorization", "cookie", "host", "content-length", "content-type",
    "content-encoding", "transfer-encoding", "accept", "accept-encoding", "accept-language", "accept-charset",
    "connection", "te", "upgrade", "signature", "signature-input", "content-digest", "digest", "dpop",
    "traceparent", "tracestate", "if-none-match", "if-match", "etag", "cache-control", "pragma",
    "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest", "sec-fetch-user", "sec-ch-ua", "sec-ch-ua-mobile",
    "sec-ch-ua-platform", "x-request-id", "priority", "upgrade-insecure-requests", "dnt", "keep-alive",
)

INPUTS = (
    Selector("ARGS"), Selector("ARGS_NAMES"), Selector("REQUEST_COOKIES"), Selector("REQUEST_COOKIES_NAMES"),
    Selector("XML"), Selector("FILES"), Selector("REQUEST_HEADERS"),
    *(Selector("REQUEST_HEADERS", key=name, exclude=True) for name in STRUCTURED_HEADERS),
)
WITH_PATH = (*INPUTS, Selector("REQUEST_FILENAME"))
# The name of an uploaded file: multipart file names and the headers upload APIs carry it in.
UPLOADED_NAMES = (Selector("FILES"), Selector("REQUEST_HEADERS", key_pattern=r"^x[-_.]file[-_.]?name$"))


def rule(rule_id: int, family: str, pattern: str, view: tuple[str, ...], *, paranoia: int = 1, score: int = 5,
         targets: tuple[Selector, ...] = INPUTS, message: str = "") -> Rule:
    return Rule(rule_id, family, paranoia, score, targets, Operator("rx", pattern=pattern), view, message)


def one_of(words: Iterable[str]) -> str:
    """Alternatives, longest first so that a prefix never shadows a longer word."""
    return "|".join(sorted(set(words), key=len, reverse=True))


def spelled(word: str, gap: str) -> str:
    """``word`` with ``gap`` allowed between its letters (``j\\s*a\\s*v\\s*a``)."""
    return gap.join(word)


def spelled_with_break(word: str, gap: str) -> str:
    """``word`` with ``gap`` between its letters, and at least one gap that is not empty."""
    branches = []
    for cut in range(1, len(word)):
        branches.append(gap.join(word[:cut]) + gap.replace("*", "+", 1) + gap.join(word[cut:]))
    return "(?:" + "|".join(branches) + ")"


def _class(chars: Iterable[str]) -> str:
    return "[" + "".join("\\" + c if c in "\\]^-[" else c for c in sorted(chars)) + "]"


def other_than(word: str, alphabet: str) -> str:
    """A run of characters from ``alphabet`` (literal characters) that is anything but ``word``."""
    n = len(word)
    every = _class(alphabet)
    branches = [f"{every}{{1,{n - 1}}}", f"{every}{{{n + 1},}}"]
    for i, letter in enumerate(word):
        rest = f"{every}{{{n - i - 1}}}" if i < n - 1 else ""
        branches.append(word[:i] + _class(set(alphabet) - {letter}) + rest)
    return "(?:" + "|".join(branches) + ")"
