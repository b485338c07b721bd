"""A rule of the prompt-injection heuristics, and the index that picks the rules a text could match.

A rule's regex runs only when its anchors occur in the text. Anchors come in groups: every group
must be present, through any one of its anchors. An anchor that starts with a plain word
(``"ignore"``, ``"system prompt"``) matches a word of the text starting with that word's first
four letters (see :data:`WORD_PREFIX`); any other anchor (symbols, non-ASCII) is a substring, and
so is one marked with a leading ``*`` (``"*gpt"`` for "BasedGPT").
"""

from __future__ import annotations

import dataclasses
import re

_LEADING_WORD = re.compile(r"[a-z0-9_]+(?=$|[ \-])")
WORD_PREFIX = re.compile(r"\b\w{1,4}")
Anchors = tuple[str, ...] | tuple[tuple[str, ...], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class AnchorGroup:
    prefixes: frozenset[str]
    substrings: tuple[str, ...]

    @classmethod
    def of(cls, anchors: tuple[str, ...]) -> AnchorGroup:
        prefixes, substrings = set(), []
        for anchor in anchors:
            word = _LEADING_WORD.match(anchor)
            if word is None or anchor.startswith("*"):
                substrings.append(anchor.removeprefix("*"))
            else:
                prefixes.add(word.group()[:4])
        return cls(frozenset(prefixes), tuple(substrings))

    def present(self, text: str, words: set[str]) -> bool:
        if not self.prefixes.isdisjoint(words):
            return True
        return any(substring in text for substring in self.substrings)


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    name: str
    category: str
    weight: float
    pattern: re.Pattern[str]
    first: AnchorGroup
    others: tuple[AnchorGroup, ...] = ()

    @classmethod
    def of(cls, name: str, category: str, weight: float, anchors: Anchors, pattern: str) -> Rule:
        groups = [g for g in anchors if isinstance(g, tuple)] or [tuple(a for a in anchors if isinstance(a, str))]
        return cls(name, category, weight, re.compile(pattern), AnchorGroup.of(groups[0]),
                   tuple(AnchorGroup.of(g) for g in groups[1:]))


class RuleIndex:
    """The rules by their first anchor group; the other groups are checked on the few found."""

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = rules
        by_prefix: dict[str, set[int]] = {}
        by_substring: dict[str, set[int]] = {}
        for index, rule in enumerate(rules):
            for prefix in rule.first.prefixes:
                by_prefix.setdefault(prefix, set()).add(index)
            for substring in rule.first.substrings:
                by_substring.setdefault(substring, set()).add(index)
        self._by_prefix = by_prefix
        self._prefixes = frozenset(by_prefix)
        self._ascii_substrings = tuple((k, v) for k, v in by_substring.items() if k.isascii())
        self._other_substrings = tuple((k, v) for k, v in by_substring.items() if not k.isascii())

    def candidates(self, text: str) -> list[Rule]:
        words = set(WORD_PREFIX.findall(text))
        hits: set[int] = set()
        for prefix in self._prefixes.intersection(words):
            hits |= self._by_prefix[prefix]
        for substring, indexes in self._ascii_substrings if text.isascii() else (
                *self._ascii_substrings, *self._other_substrings):
            if substring in text:
                hits |= indexes
        found = [self.rules[i] for i in sorted(hits)]
        return [r for r in found if all(group.present(text, words) for group in r.others)]
