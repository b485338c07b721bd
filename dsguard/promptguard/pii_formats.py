"""The check digits and number plans that tell a real identifier from a number that looks like one.

Each check takes the regex match and returns the span to redact, or ``None`` when the candidate
is not valid (an IBAN's span is cut to its country's length, so text after it is kept).
"""

from __future__ import annotations

import datetime
import re

Span = tuple[int, int] | None

IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21,
    "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18,
    "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23,
    "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27,
    "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29,
    "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26,
    "UA": 29, "VG": 24, "XK": 20,
}
# Issuer prefixes and the lengths each brand issues: Visa, Mastercard, Amex, Diners, JCB, Discover,
# UnionPay, Maestro.
_CARD_BRANDS = tuple((re.compile(prefix), lengths) for prefix, lengths in (
    (r"4", {13, 16, 19}),
    (r"5[1-5]|2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)", {16}),
    (r"3[47]", {15}),
    (r"3(?:0[0-5]|[689])", {14, 15, 16, 17, 18, 19}),
    (r"35(?:2[89]|[3-8]\d)", {16, 17, 18, 19}),
    (r"6(?:011|4[4-9]|5)", {16, 17, 18, 19}),
    (r"62", {16, 17, 18, 19}),
    (r"5018|5020|5038|5893|6304|6759|676[1-3]", {13, 14, 15, 16, 17, 18, 19}),
))
_CARD_GROUPS = {(4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4), (4, 4, 4, 1), (4, 4, 4, 2), (4, 4, 4, 3),
                (4, 4, 4, 4, 1), (4, 4, 4, 4, 2), (4, 4, 4, 3)}
_CN_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_CHECK = "10X98765432"


def luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def card_ok(match: re.Match[str]) -> Span:
    raw = match.group()
    separators = {c for c in raw if not c.isdigit()}
    digits = "".join(c for c in raw if c.isdigit())
    if len(separators) > 1 or not 13 <= len(digits) <= 19 or len(set(digits)) == 1:
        return None
    if separators:
        groups = tuple(len(g) for g in raw.split(separators.pop()))
        if groups not in _CARD_GROUPS:
            return None
    if not any(prefix.match(digits) and len(digits) in lengths for prefix, lengths in _CARD_BRANDS):
        return None
    if not luhn_ok(digits):
        return None
    return match.span()


def iban_ok(match: re.Match[str]) -> Span:
    """``match`` is the country code and check digits; the rest is read from the text after it."""
    start = match.start()
    length = IBAN_LENGTHS.get(match.group()[:2])
    if length is None:
        return None
    text = match.string
    taken: list[str] = []
    end = start
    while end < len(text) and len(taken) < length:
        char = text[end]
        if char.isascii() and (char.isdigit() or char.isupper()):
            taken.append(char)
        elif char != " " or text[end - 1] == " ":
            break
        end += 1
    if len(taken) < length or (end < len(text) and text[end].isalnum()):
        return None
    rearranged = "".join(taken[4:] + taken[:4])
    if int("".join(str(int(c, 36)) for c in rearranged)) % 97 != 1:
        return None
    return start, end


def cn_resident_id_ok(match: re.Match[str]) -> Span:
    value = match.group().upper()
    try:
        datetime.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return None
    total = sum(int(d) * w for d, w in zip(value[:17], _CN_WEIGHTS, strict=True))
    return match.span() if _CN_CHECK[total % 11] == value[17] else None


def phone_ok(match: re.Match[str]) -> Span:
    raw = match.group()
    digits = "".join(c for c in raw if c.isdigit())
    if raw.count("(") != raw.count(")"):
        return None
    if raw.startswith("+"):
        return match.span() if 8 <= len(digits) <= 15 and digits[0] != "0" else None
    if len(digits) != 10 or digits[0] in "01" or digits[3] in "01":
        return None
    return match.span()
