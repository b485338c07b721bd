"""Undo the disguises a prompt attack wears before the rules read it.

:func:`normalize` returns the text as the rules see it (NFKC, lower case, invisible characters
removed, letters spaced out joined back), a *skeleton* when look-alike letters or leetspeak were
found (Cyrillic and Greek homoglyphs mapped to Latin, digits inside words to letters), the text
hidden in Unicode tag characters or variation selectors, and the signs of obfuscation seen.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata

# Zero-width, soft hyphen, word joiners, BOM, Mongolian vowel separator: invisible inside a word.
_INVISIBLE = re.compile("[\u00ad\u180e\u200b\u200c\u200d\u2060-\u2064\ufeff]")
_INVISIBLE_IN_WORD = re.compile(r"(?<=\w)[\u00ad\u180e\u200b\u200c\u200d\u2060-\u2064\ufeff]+(?=\w)")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
# Subdivision flags (England, Scotland, Wales) are the one legitimate use of tag characters.
_FLAG_TAGS = re.compile("\U0001f3f4[\U000e0020-\U000e007e]{1,8}\U000e007f")
_TAGS = re.compile("[\U000e0000-\U000e007f]+")
_SELECTORS = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]{4,}")
_SPACED = re.compile(r"\b[a-z]([ .\-_*/|])[a-z](?:\1[a-z])+\b")
_LEET_WORD = re.compile(r"(?<![\w@$])(?=[\w@$]*[a-z][\w@$]*[a-z])(?=[\w@$]*[013457@$][a-z])[a-z013457@$]{3,}"
                        r"(?![\w@$])")
_LEET_GATE = re.compile(r"[013457@$][a-z]")
_LEET = str.maketrans("013457@$", "oieastas")
_WHITESPACE = re.compile(r"[ \t]{2,}|\t")

# Look-alike letters, by code point: Cyrillic, Latin variants, Greek.
_CONFUSABLES = {
    0x0430: "a", 0x0432: "b", 0x0435: "e", 0x0451: "e", 0x043A: "k", 0x043C: "m", 0x043D: "h", 0x043E: "o",
    0x0440: "p", 0x0441: "c", 0x0442: "t", 0x0443: "y", 0x0445: "x", 0x0456: "i", 0x0457: "i", 0x0458: "j",
    0x0455: "s", 0x0501: "d", 0x04BB: "h", 0x051B: "q", 0x051D: "w", 0x04CF: "l", 0x0261: "g", 0x028F: "y",
    0x0131: "i", 0x0269: "i", 0x03B1: "a", 0x03B2: "b", 0x03B5: "e", 0x03B7: "n", 0x03B9: "i", 0x03BA: "k",
    0x03BD: "v", 0x03BF: "o", 0x03C1: "p", 0x03C4: "t", 0x03C5: "u", 0x03C7: "x", 0x03C9: "w", 0x03F2: "c",
    0x03F3: "j",
}
# Small capitals (ɪɢɴᴏʀᴇ): letters of their own that NFKC leaves alone.
_SMALL_CAPITALS = "\u1d00\u0299\u1d04\u1d05\u1d07\u0493\u0262\u029c\u026a\u1d0a"
_SMALL_CAPITALS += "\u1d0b\u029f\u1d0d\u0274\u1d0f\u1d18\u0280\ua731\u1d1b\u1d1c\u1d20\u1d21\u028f\u1d22"
_CONFUSABLES.update({ord(c): latin for c, latin in zip(_SMALL_CAPITALS, "abcdefghijklmnoprstuvwyz", strict=True)})
_CONFUSABLE_CHARS = frozenset(_CONFUSABLES)
_LATIN_AND_OTHER = re.compile(r"\b(?=\w*[a-z])(?=\w*[\u0370-\u03ff\u0400-\u04ff])\w+\b")


@dataclasses.dataclass(frozen=True, slots=True)
class Normalized:
    text: str
    skeleton: str | None
    hidden: str
    signs: tuple[str, ...]


def _decode_tags(match: re.Match[str]) -> str:
    return "".join(chr(ord(c) - 0xE0000) for c in match.group() if 0xE0020 <= ord(c) <= 0xE007E)


def _decode_selectors(run: str) -> str:
    data = bytes(ord(c) - 0xFE00 if ord(c) <= 0xFE0F else ord(c) - 0xE0100 + 16 for c in run)
    return data.decode("utf-8", "ignore")


def _join_spaced(match: re.Match[str]) -> str:
    return match.group()[::2]


def _unleet(match: re.Match[str]) -> str:
    return match.group().translate(_LEET)


def hidden_text(text: str) -> str:
    """Text smuggled in Unicode tag characters or variation selectors (empty if none)."""
    hidden = []
    if _TAGS.search(text):
        hidden += [_decode_tags(m) for m in _TAGS.finditer(_FLAG_TAGS.sub("", text))]
    if _SELECTORS.search(text):
        hidden += [_decode_selectors(m.group()) for m in _SELECTORS.finditer(text)]
    return " ".join(h for h in hidden if h.strip())


def normalize(text: str) -> Normalized:
    signs: list[str] = []
    hidden = "" if text.isascii() else hidden_text(text)
    if len(hidden.strip()) >= 4:
        signs.append("hidden_text")
    if not text.isascii():
        if _INVISIBLE_IN_WORD.search(text) and len(_INVISIBLE_IN_WORD.findall(text)) >= 2:
            signs.append("invisible_characters")
        if _BIDI.search(text):
            signs.append("bidi_controls")
        text = _BIDI.sub(" ", _INVISIBLE.sub("", _TAGS.sub("", _SELECTORS.sub("", text))))
        text = unicodedata.normalize("NFKC", text)
    lowered = text.lower()
    if _SPACED.search(lowered):
        lowered = _SPACED.sub(_join_spaced, lowered)
    joined = _WHITESPACE.sub(" ", lowered) if "  " in lowered or "\t" in lowered else lowered
    skeleton = joined
    if not joined.isascii() and not _CONFUSABLE_CHARS.isdisjoint(map(ord, joined)):
        if _LATIN_AND_OTHER.search(joined):
            signs.append("mixed_script")
        skeleton = joined.translate(_CONFUSABLES)
    if _LEET_GATE.search(skeleton) and _LEET_WORD.search(skeleton):
        skeleton = _LEET_WORD.sub(_unleet, skeleton)
    return Normalized(joined, skeleton if skeleton != joined else None, hidden, tuple(signs))
