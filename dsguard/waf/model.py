"""What a WAF rule is: variables to inspect, transformations, one operator, a score.

Built-in rules (:mod:`dsguard.waf.rules`) and rules loaded from SecLang files
(:mod:`dsguard.waf.seclang`) are the same :class:`Rule`, so one engine runs both.
"""

from __future__ import annotations

import dataclasses
import re

FAMILIES = {
    "sqli": "SQL injection",
    "xss": "cross-site scripting",
    "lfi": "path traversal",
    "rfi": "remote file inclusion",
    "rce": "command injection",
    "php": "PHP injection",
    "nodejs": "Node.js injection",
    "java": "Java injection",
    "protocol": "protocol attack",
    "other": "attack",
}

SEVERITY_SCORES = {"critical": 5, "error": 4, "warning": 3, "notice": 2}


@dataclasses.dataclass(frozen=True, slots=True)
class Selector:
    """One variable of a rule: a collection, optionally narrowed to a key or a key pattern.

    ``exclude`` selectors (``!ARGS:token``) remove what the others select.
    """

    collection: str
    key: str | None = None
    key_pattern: str | None = None
    exclude: bool = False

    def selects(self, collection: str, key: str) -> bool:
        if collection != self.collection:
            return False
        if self.key is not None:
            return key.lower() == self.key
        if self.key_pattern is not None:
            return _key_regex(self.key_pattern).search(key) is not None
        return True

    def __str__(self) -> str:
        suffix = f":{self.key}" if self.key is not None else f":/{self.key_pattern}/" if self.key_pattern else ""
        return f"{'!' if self.exclude else ''}{self.collection}{suffix}"


_KEY_REGEXES: dict[str, re.Pattern[str]] = {}


def _key_regex(pattern: str) -> re.Pattern[str]:
    compiled = _KEY_REGEXES.get(pattern)
    if compiled is None:
        try:
            compiled = re.compile(pattern, re.I)
        except re.error:
            compiled = re.compile(re.escape(pattern), re.I)
        _KEY_REGEXES[pattern] = compiled
    return compiled


def selects(selectors: tuple[Selector, ...], collection: str, key: str) -> bool:
    """Whether a variable is inspected by a rule with these selectors."""
    chosen = False
    for selector in selectors:
        if selector.selects(collection, key):
            if selector.exclude:
                return False
            chosen = True
    return chosen


@dataclasses.dataclass(frozen=True, slots=True)
class Operator:
    """``@name argument``; regex-like operators carry the equivalent ``pattern``."""

    name: str
    argument: str = ""
    negated: bool = False
    pattern: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    id: int
    family: str
    paranoia: int
    score: int
    selectors: tuple[Selector, ...]
    operator: Operator
    transforms: tuple[str, ...] = ()
    message: str = ""
    chain: Rule | None = None

    @property
    def links(self) -> tuple[Rule, ...]:
        links: list[Rule] = []
        rule: Rule | None = self
        while rule is not None:
            links.append(rule)
            rule = rule.chain
        return tuple(links)


@dataclasses.dataclass(frozen=True, slots=True)
class Hit:
    """One rule that matched, and where (never the matched text: it may be a secret)."""

    rule: int
    family: str
    score: int
    collection: str
    key: str


def family_of_rule_id(rule_id: int) -> str:
    """The attack family of a CRS rule id (``942100`` is SQL injection)."""
    prefix = str(rule_id)[:3]
    return {"930": "lfi", "931": "rfi", "932": "rce", "933": "php", "934": "nodejs", "941": "xss", "942": "sqli",
            "943": "other", "944": "java", "920": "protocol", "921": "protocol"}.get(prefix, "other")
