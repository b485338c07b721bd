"""Prompt-injection and jailbreak heuristics: a score with the reasons behind it.

The rules of :mod:`.rules` read the normalized text, then its skeleton (homoglyphs and
leetspeak undone), the text hidden in invisible Unicode tag characters, the base64 and hex
payloads it carries, and its rot13 reading. Every rule that matches adds its weight once; signs
of obfuscation (invisible characters inside words, bidi controls, mixed-script words) add a
little more. A rule matched where the text only *talks about* an attack (quoted in a question
about prompt injection, or "attacks that tell the model to ...") counts for less.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from .encodings import decoded_payloads, rot13
from .normalize import normalize
from .rules import MENTION_BEFORE, MENTION_CONTEXT, QUOTED, RULES
from .ruleset import Rule, RuleIndex

MENTION_FACTOR = 0.3
SIGN_WEIGHTS = {"hidden_text": 1.0, "invisible_characters": 0.4, "bidi_controls": 0.3, "mixed_script": 0.4}
_ROT13_ANCHORS = ("ignore", "instruction", "system prompt", "disregard", "forget", "jailbr", "anything now",
                  "reveal", "pretend")

CATEGORY_NAMES = {
    "override": "instruction override",
    "jailbreak": "jailbreak role-play",
    "extraction": "system prompt extraction",
    "delimiter": "fake role or special-token injection",
    "encoded": "encoded instructions",
    "obfuscation": "hidden or obfuscated text",
    "classifier": "injection classifier",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    rule: str
    category: str
    weight: float
    via: str = ""  # "", "skeleton", "hidden", "base64", "hex" or "rot13": where the rule matched

    @property
    def reason(self) -> str:
        return f"{self.category}:{self.rule}" + (f"@{self.via}" if self.via else "")


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    score: float
    findings: tuple[Finding, ...]

    @property
    def categories(self) -> tuple[str, ...]:
        """Categories of the findings, strongest first, each once."""
        ordered = sorted(self.findings, key=lambda f: -f.weight)
        return tuple(dict.fromkeys(f.category for f in ordered))

    @property
    def reasons(self) -> list[str]:
        return [f.reason for f in sorted(self.findings, key=lambda f: -f.weight)]


class _Mentions:
    """Whether a match sits where the text discusses an attack rather than makes one."""

    __slots__ = ("_context", "_quoted", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._quoted: list[tuple[int, int]] | None = None
        self._context: bool | None = None

    def __call__(self, start: int, end: int) -> bool:
        if MENTION_BEFORE.search(self.text, max(0, start - 80), start):
            return True
        if self._context is None:
            self._context = MENTION_CONTEXT.search(self.text) is not None
        if not self._context:
            return False
        if self._quoted is None:
            self._quoted = [m.span() for m in QUOTED.finditer(self.text)]
        return any(q_start <= start and end <= q_end for q_start, q_end in self._quoted)


def match_rules(text: str, index: RuleIndex, *, via: str = "", mentions: bool = True) -> dict[str, Finding]:
    """The rules matching ``text`` (already normalized), by name."""
    found: dict[str, Finding] = {}
    mention = _Mentions(text) if mentions else None
    for rule in index.candidates(text):
        weight = 0.0
        for match in rule.pattern.finditer(text):
            if mention is not None and mention(*match.span()):
                weight = max(weight, rule.weight * MENTION_FACTOR)
            else:
                weight = rule.weight
                break
        if weight:
            found[rule.name] = Finding(rule.name, rule.category, weight, via)
    return found


def _merge(found: dict[str, Finding], more: dict[str, Finding]) -> None:
    for name, finding in more.items():
        if name not in found or found[name].weight < finding.weight:
            found[name] = finding


class InjectionDetector:
    def __init__(self, threshold: float = 1.0, rules: Iterable[Rule] = RULES) -> None:
        self.threshold = threshold
        self.index = RuleIndex(tuple(rules))

    def analyze(self, text: str) -> Verdict:
        normalized = normalize(text)
        found = match_rules(normalized.text, self.index)
        if normalized.skeleton is not None:
            _merge(found, match_rules(normalized.skeleton, self.index, via="skeleton"))
        if normalized.hidden:
            _merge(found, match_rules(normalize(normalized.hidden).text, self.index, via="hidden", mentions=False))
        for encoding, payload in decoded_payloads(text):
            inner = match_rules(normalize(payload).text, self.index, via=encoding, mentions=False)
            if inner:
                _merge(found, inner)
                _merge(found, {"encoded_payload": Finding("encoded_payload", "encoded", 0.2, encoding)})
        rotated = rot13(normalized.text)
        if any(anchor in rotated for anchor in _ROT13_ANCHORS):
            _merge(found, match_rules(rotated, self.index, via="rot13", mentions=False))
        for sign in normalized.signs:
            found[sign] = Finding(sign, "obfuscation", SIGN_WEIGHTS[sign])
        findings = tuple(found.values())
        return Verdict(round(sum(f.weight for f in findings), 3), findings)

    def is_attack(self, verdict: Verdict) -> bool:
        return verdict.score >= self.threshold


