"""Personal data and secrets in text: detection with validity checks, and redaction.

Each kind is a pattern plus the check its format defines: the Luhn digit of payment cards, the
ISO 13616 mod-97 of IBANs, the invalid ranges of US social security numbers, the allowed
prefixes of UK national insurance numbers, the ISO 7064 check digit and birth date of Chinese
resident IDs. Detection needs no context words, so a text scanned in pieces (a stream) gives
the same answer as the whole. Redaction replaces each finding with ``[REDACTED:<kind>]``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from .pii_formats import Span, card_ok, cn_resident_id_ok, iban_ok, phone_ok

CATEGORIES = ("email", "phone", "card", "iban", "us_ssn", "uk_nino", "cn_resident_id", "aws_access_key",
              "github_token", "slack_token", "api_key", "private_key", "jwt", "secret")
_RESERVED_DOMAINS = re.compile(r"(?:^|\.)(?:example\.(?:com|org|net)|example|test|invalid|localhost)$", re.I)
_PLACEHOLDER = re.compile(r"^(?:x+|\*+|\.+|-+|<.*>|\$\{.*\}|\{\{.*\}\}|%.*%|your[_\-].*|changeme|secret|"
                          r"password\d*|example.*|null|none|true|false|undefined|redacted.*)$", re.I)
_IDENTIFIER_PATH = re.compile(r"^[A-Za-z_$][\w$]*(?:(?:\.|::|->)[A-Za-z_$][\w$]*)+$")
_DOC_EXAMPLES = frozenset({"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"})


@dataclasses.dataclass(frozen=True, slots=True)
class Match:
    category: str
    start: int
    end: int


def _entropy(value: str) -> float:
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def _email_ok(match: re.Match[str]) -> Span:
    local, _, domain = match.group().rpartition("@")
    return None if local.lower() == "git" or _RESERVED_DOMAINS.search(domain) else match.span()


def _ssn_ok(match: re.Match[str]) -> Span:
    area, group, serial = match.group("area", "group", "serial")
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return None
    return None if match.group() in ("078-05-1120", "219-09-9999", "123-45-6789") else match.span()


def _secret_ok(match: re.Match[str]) -> Span:
    value = match.group("value").rstrip(".")
    if len(value) < 8 or _PLACEHOLDER.match(value) or _IDENTIFIER_PATH.match(value) or value in _DOC_EXAMPLES:
        return None
    if value.startswith(("/", "./", "~/", "http:", "https:", "$", "%", "os.", "process.", "env")):
        return None
    has_letter = any(c.isalpha() for c in value)
    has_digit = any(c.isdigit() for c in value)
    if not has_letter or not (has_digit or len(value) >= 16) or _entropy(value) < 3.0:
        return None
    start = match.start("value")
    return start, start + len(value)


def _api_key_ok(match: re.Match[str]) -> Span:
    value = match.group()
    return match.span() if any(c.isdigit() for c in value) and any(c.isalpha() for c in value) else None


def _aws_ok(match: re.Match[str]) -> Span:
    return None if match.group() in _DOC_EXAMPLES else match.span()


def _nino_ok(match: re.Match[str]) -> Span:
    return None if match.group()[:2] in ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ") else match.span()


def _always(match: re.Match[str]) -> Span:
    return match.span()


_DIGIT_RUN = re.compile(r"\d[\d \-().+/]*")
_SEPARATORS = str.maketrans("", "", " -().+/")


def longest_number(text: str) -> int:
    """Digits in the longest run of digits and separators (a cheap gate for number-shaped kinds)."""
    return max((len(run.translate(_SEPARATORS)) for run in _DIGIT_RUN.findall(text)), default=0)


Gate = Callable[[str, int], bool]
Finder = Callable[[re.Pattern[str], str], Iterator[re.Match[str]]]


def _everywhere(pattern: re.Pattern[str], text: str) -> Iterator[re.Match[str]]:
    return pattern.finditer(text)


_LOCAL_PART = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")


def _around_at_signs(pattern: re.Pattern[str], text: str) -> Iterator[re.Match[str]]:
    at = text.find("@")
    while at != -1:
        start = at
        while start > 0 and at - start < 64 and text[start - 1] in _LOCAL_PART:
            start -= 1
        while start < at and not text[start].isalnum():
            start += 1
        match = pattern.match(text, start) if start < at else None
        if match is not None:
            yield match
            at = text.find("@", match.end())
        else:
            at = text.find("@", at + 1)


_SECRET_NAMES = ("secret", "passw", "pwd", "token", "apikey", "api_key", "api-key", "access_key", "access-key",
                 "accesskey", "private_key", "private-key", "privatekey", "auth_key", "signing_key",
                 "encryption_key", "credential")


def _at_secret_names(pattern: re.Pattern[str], text: str) -> Iterator[re.Match[str]]:
    lowered = text.lower()
    starts = set()
    for name in _SECRET_NAMES:
        at = lowered.find(name)
        while at != -1:
            starts.add(at)
            at = lowered.find(name, at + 1)
    covered = 0
    for start in sorted(starts):
        match = pattern.match(text, start) if start >= covered else None
        if match is not None:
            covered = match.end()
            yield match


@dataclasses.dataclass(frozen=True, slots=True)
class Detector:
    category: str
    pattern: re.Pattern[str]
    span: Callable[[re.Match[str]], Span]
    gate: Gate
    finditer: Finder = _everywhere


def _has(*needles: str) -> Gate:
    def gate(text: str, digits: int) -> bool:
        return any(needle in text for needle in needles)

    return gate


def _has_digits(count: int) -> Gate:
    return lambda text, digits: digits >= count


_SECRET_GATE = ("secret", "passw", "pwd", "token", "key", "credential")


def _has_secret_name(text: str, digits: int) -> bool:
    lowered = text.lower()
    return any(name in lowered for name in _SECRET_GATE)


# Patterns start with a character class so the regex engine can skip ahead; a look-behind placed
# after the first character checks what precedes it.
DETECTORS: tuple[Detector, ...] = (
    Detector("private_key", re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
        r"(?:.*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|.*)", re.S), _always, _has("PRIVATE KEY")),
    Detector("jwt", re.compile(r"eyJ(?<!\w...)[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{16,}"),
             _always, _has("eyJ")),
    Detector("aws_access_key", re.compile(r"A(?<!\wA)(?:KIA|SIA|BIA|CCA|3T[A-Z0-9])[A-Z0-9]{16}\b"), _aws_ok,
             _has("AKIA", "ASIA", "ABIA", "ACCA", "A3T")),
    Detector("github_token", re.compile(r"g(?<!\wg)(?:h[pousr]_[A-Za-z0-9]{36,251}|ithub_pat_[A-Za-z0-9_]{22,255})\b"),
             _always, _has("gh", "github_pat_")),
    Detector("slack_token", re.compile(
        r"x(?<!\wx)(?:ox[abposre]-[A-Za-z0-9\-]{10,}|app-\d-[A-Za-z0-9\-]{10,})"
        r"|https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+"),
        _always, _has("xox", "xapp-", "hooks.slack")),
    Detector("api_key", re.compile(
        r"[sr](?<!\w[sr])(?:(?<=s)k-[A-Za-z0-9_\-]{20,}|k_(?:live|test)_[A-Za-z0-9]{16,})"
        r"|A(?<!\wA)Iza[0-9A-Za-z_\-]{35}\b|h(?<!\wh)f_[A-Za-z0-9]{30,}\b|g(?<!\wg)lpat-[A-Za-z0-9_\-]{20,}"),
        _api_key_ok, _has("sk-", "k_live_", "k_test_", "AIza", "hf_", "glpat-")),
    Detector("secret", re.compile(
        r"(?i)(?:secret|passw(?:or)?d|passwd|pwd|token|api[_\-]?key|apikey|access[_\-]?key|private[_\-]?key|"
        r"auth[_\-]?key|credentials?|signing[_\-]?key|encryption[_\-]?key)"
        r"[a-z0-9_\-]*[\"']?\s*(?::=|=>|->|:|=|\bis\b)\s*[\"']?(?P<value>[^\s\"'`,;<>(){}\[\]]{8,256})"),
        _secret_ok, _has_secret_name, _at_secret_names),
    Detector("iban", re.compile(r"[A-Z](?<!\w[A-Z])[A-Z]\d{2}(?= ?[A-Z0-9])"), iban_ok, _has_digits(2)),
    Detector("card", re.compile(r"\d(?<![\w\-.+]\d)(?:[ \-]?\d){12,18}(?![\w\-]|\.\d)"), card_ok, _has_digits(13)),
    Detector("cn_resident_id", re.compile(
        r"[1-8](?<![\dA-Za-z][1-8])\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]"
        r"(?![\dA-Za-z])"), cn_resident_id_ok, _has_digits(17)),
    Detector("us_ssn", re.compile(
        r"(?P<area>\d(?<![\w\-]\d)\d\d)(?P<sep>[\- ])(?P<group>\d{2})(?P=sep)(?P<serial>\d{4})(?![\w\-])"), _ssn_ok,
        _has_digits(9)),
    Detector("uk_nino", re.compile(
        r"[ABCEGHJ-PRSTW-Z](?<!\w.)[ABCEGHJ-NPRSTW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"), _nino_ok, _has_digits(6)),
    Detector("phone", re.compile(
        r"[+(\d](?<![\w+\-./][+(\d])(?:(?<=\+)\d{1,3}(?:[ .\-]?\(?\d{1,5}\)?){2,6}|(?<=\()\d{3}\) ?\d{3}[ .\-]\d{4}"
        r"|(?<=\d)\d\d[ .\-]\d{3}[ .\-]\d{4})(?![\w\-]|\.\d)"), phone_ok, _has_digits(8)),
    Detector("email", re.compile(
        r"[A-Za-z0-9](?<![\w.+\-].)(?:[A-Za-z0-9._%+\-]{0,62}[A-Za-z0-9_%+\-])?@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}"
        r"[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w\-])"), _email_ok, _has("@"), _around_at_signs),
)
assert tuple(sorted(d.category for d in DETECTORS)) == tuple(sorted(CATEGORIES))


class PIIScanner:
    """Finds and redacts the enabled kinds. Earlier detectors win where findings overlap."""

    def __init__(self, categories: Iterable[str] = CATEGORIES) -> None:
        wanted = set(categories)
        unknown = wanted - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown PII kind {sorted(unknown)[0]!r} (known: {', '.join(CATEGORIES)})")
        self.categories = tuple(c for c in CATEGORIES if c in wanted)
        self.detectors = tuple(d for d in DETECTORS if d.category in wanted)

    def find(self, text: str) -> list[Match]:
        """Non-overlapping findings, in text order."""
        taken: list[Match] = []
        digits = longest_number(text)
        for detector in self.detectors:
            if not detector.gate(text, digits):
                continue
            for found in detector.finditer(detector.pattern, text):
                span = detector.span(found)
                if span is None or any(m.start < span[1] and span[0] < m.end for m in taken):
                    continue
                taken.append(Match(detector.category, *span))
        taken.sort(key=lambda m: m.start)
        return taken

    def redact(self, text: str, matches: Iterable[Match] | None = None) -> str:
        found = self.find(text) if matches is None else list(matches)
        if not found:
            return text
        parts, last = [], 0
        for match in found:
            parts += [text[last:match.start], placeholder(match.category)]
            last = match.end
        parts.append(text[last:])
        return "".join(parts)


def placeholder(category: str) -> str:
    return f"[REDACTED:{category}]"

