"""Run a rule set over a request's collections and score it, CRS style.

Rules are grouped by transformations: each group's patterns are matched in one scan per value
(:class:`~dsguard.waf.regex.PatternSet`). A value's transformations are computed once per
request and shared by every group with the same prefix of transformations. A *plain* value
(letters, digits, spaces, punctuation no transformation rewrites: most API values) skips the
transformations: the rules that can match it at all (:mod:`dsguard.waf.prefilter`) run in one
merged scan per distinct view (the value, lower-cased, without spaces). Which rules inspect a
variable is worked out once per (collection, key). The result for a value is remembered across
requests in a bounded cache, so values that repeat (a User-Agent, a model name) cost one lookup.

Anomaly scoring: each matched rule adds its score once; a request whose total reaches the
threshold (CRS's default inbound threshold is 5, one critical rule) is blocked. Rules above the
configured paranoia level are not compiled at all.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable

from .model import FAMILIES, Hit, Operator, Rule, selects
from .normalize import TRANSFORMS
from .prefilter import PLAIN, PLAIN_CHARS, TEXT_PRESERVING, never_plain, plain_view, required_chars
from .regex import PatternSet, Searcher, compile_pattern
from .targets import Collections, Pair

Chain = tuple[str, ...]
HitFilter = Callable[[Hit], bool]

_CACHE_LIMIT = 16384
_CACHEABLE_LENGTH = 512
_PLAN_LIMIT = 8192
_MATCHED = ("MATCHED_VAR", "MATCHED_VARS")


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    score: int
    threshold: int
    hits: tuple[Hit, ...]

    @property
    def blocked(self) -> bool:
        return self.score >= self.threshold

    @property
    def families(self) -> list[str]:
        seen: dict[str, None] = {}
        for hit in self.hits:
            seen.setdefault(hit.family)
        return list(seen)

    def describe(self) -> str:
        return ", ".join(FAMILIES.get(family, family) for family in self.families)


class _Group:
    """The rules sharing one chain of transformations, matched in one scan."""

    __slots__ = ("chain", "patterns", "rules", "trigger")

    def __init__(self, chain: Chain, position: int) -> None:
        self.chain = chain
        self.rules: list[int] = [position]
        self.patterns: PatternSet | None = None
        self.trigger: re.Pattern[str] | None = None


class _PlainScan:
    """For plain values of one class of variables: the rules of every view, one scan per distinct text.

    A plain value's views are itself, its lower-case form and that form without spaces; where
    they coincide (no capital, no space: most values), the rules of those views share one scan.
    """

    __slots__ = ("_by_view", "_prefer_re2", "_sets", "fallback", "rules")

    def __init__(self, rules: list[Rule], by_view: dict[str, list[int]], fallback: tuple[_Group, ...],
                 prefer_re2: bool) -> None:
        self.rules = rules
        self._by_view = by_view
        self.fallback = fallback
        self._prefer_re2 = prefer_re2
        self._sets: dict[tuple[str, ...], tuple[PatternSet, list[int]] | None] = {}

    def _set(self, views: tuple[str, ...]) -> tuple[PatternSet, list[int]] | None:
        if views not in self._sets:
            positions = [p for view in views for p in self._by_view.get(view, ())]
            self._sets[views] = (PatternSet([self.rules[p].operator.pattern or "" for p in positions],
                                            prefer_re2=self._prefer_re2), positions) if positions else None
        return self._sets[views]

    def scan(self, value: str, found: list[int]) -> None:
        lower = value.lower()
        texts: tuple[tuple[str, ...], ...]
        if " " in value:
            texts = _SPACED_SAME if value == lower else _SPACED
            tight = lower.replace(" ", "")
        else:
            texts = _UNSPACED_SAME if value == lower else _UNSPACED
            tight = lower
        for views in texts:
            scan = self._set(views)
            if scan is not None:
                text = value if views[0] == "raw" else tight if views[0] == "tight" else lower
                positions = scan[1]
                found += [positions[hit] for hit in scan[0].matches(text)]


_UNSPACED_SAME = (("raw", "lower", "tight"),)
_UNSPACED = (("raw",), ("lower", "tight"))
_SPACED_SAME = (("raw", "lower"), ("tight",))
_SPACED = (("raw",), ("lower",), ("tight",))


class _Plan:
    """For one variable: the groups to scan, the rules that inspect it (``None``: every rule), how to
    scan a plain value, and the rules evaluated one by one (negated, numeric, libinjection stand-ins)."""

    __slots__ = ("allowed", "groups", "plain", "slow")

    def __init__(self, groups: tuple[int, ...], allowed: frozenset[int] | None, plain: _PlainScan,
                 slow: tuple[tuple[int, Chain, _Condition], ...]) -> None:
        self.groups = groups
        self.allowed = allowed
        self.plain = plain
        self.slow = slow


def _transform(chain: Chain, value: str, memo: dict[tuple[Chain, str], str]) -> str:
    if not chain:
        return value
    key = (chain, value)
    result = memo.get(key)
    if result is None:
        result = TRANSFORMS[chain[-1]](_transform(chain[:-1], value, memo))
        memo[key] = result
    return result


def _number(text: str) -> int | None:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return None


class _Condition:
    """An operator evaluated on its own (negated, numeric, or a later link of a chain)."""

    __slots__ = ("compare", "operator", "searcher")

    def __init__(self, operator: Operator, prefer_re2: bool,
                 approximations: dict[str, Callable[[str], bool]]) -> None:
        self.operator = operator
        self.searcher: Searcher | None = None
        self.compare: Callable[[str], bool] | None = approximations.get(operator.name)
        if operator.pattern is not None:
            self.searcher = compile_pattern(operator.pattern, prefer_re2=prefer_re2)

    def __call__(self, text: str) -> bool:
        operator = self.operator
        if self.searcher is not None:
            found = self.searcher.search(text.encode("utf-8", "replace").decode("utf-8")) is not None
        elif self.compare is not None:
            found = self.compare(text)
        else:
            found = _numeric(operator.name, text, operator.argument)
        return found != operator.negated


def _numeric(name: str, text: str, argument: str) -> bool:
    left, right = _number(text), _number(argument)
    if name == "unconditionalmatch":
        return True
    if left is None or right is None:
        return False
    return {"eq": left == right, "ge": left >= right, "gt": left > right, "lt": left < right,
            "le": left <= right}.get(name, False)


class Engine:
    """A compiled rule set at one paranoia level."""

    def __init__(self, rules: Iterable[Rule], *, paranoia: int = 1, threshold: int = 5, prefer_re2: bool = True,
                 approximations: dict[str, Callable[[str], bool]] | None = None) -> None:
        self.paranoia = paranoia
        self.threshold = threshold
        self.rules: list[Rule] = [rule for rule in rules if rule.paranoia <= paranoia]
        approximations = approximations or {}
        groups: dict[Chain, _Group] = {}
        self._slow: list[tuple[int, Chain, _Condition]] = []
        self._later: dict[int, list[tuple[Rule, _Condition]]] = {}
        for position, rule in enumerate(self.rules):
            chain = tuple(t for t in rule.transforms if t != "none")
            links = rule.links
            if len(links) > 1:
                self._later[position] = [(link, _Condition(link.operator, prefer_re2, approximations))
                                         for link in links[1:]]
            if rule.operator.pattern is None or rule.operator.negated:
                self._slow.append((position, chain, _Condition(rule.operator, prefer_re2, approximations)))
                continue
            group = groups.get(chain)
            if group is None:
                groups[chain] = _Group(chain, position)
            else:
                group.rules.append(position)
        self._groups = list(groups.values())
        for group in self._groups:
            group.patterns = PatternSet([self.rules[i].operator.pattern or "" for i in group.rules],
                                        prefer_re2=prefer_re2)
        self._prefer_re2 = prefer_re2
        self._required = {p: required_chars(self.rules[p].operator.pattern or "") for g in self._groups
                          for p in g.rules}
        self._plain_scans: dict[frozenset[int], _PlainScan] = {}
        self._plans: dict[tuple[str, str], _Plan] = {}
        self._results: dict[tuple[str, str, str], tuple[int, ...]] = {}
        self.collections = frozenset(
            selector.collection for rule in self.rules for link in rule.links for selector in link.selectors)

    def _plain_scan(self, positions: frozenset[int]) -> _PlainScan:
        """For plain values of variables these rules inspect: merged scans by view, other groups behind triggers."""
        found = self._plain_scans.get(positions)
        if found is not None:
            return found
        by_view: dict[str, list[int]] = {}
        fallback: list[_Group] = []
        for group in self._groups:
            view = plain_view(group.chain)
            possible = [p for p in group.rules if p in positions and not never_plain(self._required[p])]
            if not possible:
                continue
            if view is not None:
                by_view.setdefault(view, []).extend(possible)
                continue
            fallback.append(group)
            # From every rule of the group, not only this variable's: the trigger is shared.
            requirements = [self._required[p] for p in group.rules if not never_plain(self._required[p])]
            chars = {c for required in requirements for c in required or ()} & PLAIN_CHARS
            if group.trigger is None and all(t in TEXT_PRESERVING for t in group.chain) and all(
                    r is not None for r in requirements) and " " not in chars:  # a transformation may add a space
                chars |= {c.swapcase() for c in chars}  # and lower-case a letter
                group.trigger = re.compile("[" + "".join(re.escape(c) for c in sorted(chars)) + "]")
        found = _PlainScan(self.rules, by_view, tuple(fallback), self._prefer_re2)
        self._plain_scans[positions] = found
        return found

    @property
    def group_count(self) -> int:
        return len(self._groups)

    def _plan(self, collection: str, key: str) -> _Plan:
        found = self._plans.get((collection, key))
        if found is None:
            groups: list[int] = []
            allowed: set[int] = set()
            every = True
            for index, group in enumerate(self._groups):
                chosen = [p for p in group.rules if selects(self.rules[p].selectors, collection, key)]
                if chosen:
                    groups.append(index)
                    allowed.update(chosen)
                every = every and len(chosen) == len(group.rules)
            slow = tuple(entry for entry in self._slow if selects(self.rules[entry[0]].selectors, collection, key))
            found = _Plan(tuple(groups), None if every else frozenset(allowed), self._plain_scan(frozenset(allowed)),
                          slow)
            if len(self._plans) < _PLAN_LIMIT:
                self._plans[(collection, key)] = found
        return found

    def _match_value(self, collection: str, key: str, value: str,
                     memo: dict[tuple[Chain, str], str]) -> tuple[int, ...]:
        plan = self._plan(collection, key)
        found: list[int] = []
        if not plan.groups:
            pass
        elif PLAIN.fullmatch(value) is not None:
            plain = plan.plain
            plain.scan(value, found)
            for group in plain.fallback:
                if group.trigger is None or group.trigger.search(value) is not None:
                    self._scan_group(group, value, memo, plan.allowed, found)
        else:
            for index in plan.groups:
                self._scan_group(self._groups[index], value, memo, plan.allowed, found)
        if plan.slow:
            found += [position for position, chain, condition in plan.slow
                      if condition(_transform(chain, value, memo))]
        result = tuple(found)
        if len(value) <= _CACHEABLE_LENGTH:
            if len(self._results) >= _CACHE_LIMIT:
                self._results.clear()
            self._results[(collection, key, value)] = result
        return result

    @staticmethod
    def _scan_group(group: _Group, value: str, memo: dict[tuple[Chain, str], str], allowed: frozenset[int] | None,
                    found: list[int]) -> None:
        assert group.patterns is not None
        hits = group.patterns.matches(_transform(group.chain, value, memo))
        if hits:
            rules = group.rules
            found += [rules[hit] for hit in hits if allowed is None or rules[hit] in allowed]

    def inspect(self, collections: Collections, keep: HitFilter | None = None) -> Verdict:
        """Score one request; ``keep`` drops hits excluded for its route."""
        memo: dict[tuple[Chain, str], str] = {}
        matched: dict[int, list[tuple[str, str, str]]] = {}
        results = self._results
        inspected = self.collections
        for collection, pairs in collections.items():
            if collection not in inspected:
                continue
            for key, value in pairs:
                positions = results.get((collection, key, value))
                if positions is None:
                    positions = self._match_value(collection, key, value, memo)
                for position in positions:
                    matched.setdefault(position, []).append((collection, key, value))
        return self._score(matched, collections, memo, keep)

    def _score(self, matched: dict[int, list[tuple[str, str, str]]], collections: Collections,
               memo: dict[tuple[Chain, str], str], keep: HitFilter | None) -> Verdict:
        hits: list[Hit] = []
        score = 0
        for position in sorted(matched):
            rule = self.rules[position]
            variables = matched[position]
            kept = [(c, k) for c, k, _ in variables
                    if keep is None or keep(Hit(rule.id, rule.family, rule.score, c, k))]
            if not kept:
                continue
            if position in self._later and not self._chain_holds(position, variables, collections, memo):
                continue
            hits.append(Hit(rule.id, rule.family, rule.score, kept[0][0], kept[0][1]))
            score += rule.score
        return Verdict(score, self.threshold, tuple(hits))

    def _chain_holds(self, position: int, variables: list[tuple[str, str, str]], collections: Collections,
                     memo: dict[tuple[Chain, str], str]) -> bool:
        previous: list[Pair] = [(k, v) for _, k, v in variables]
        for link, condition in self._later[position]:
            chain = tuple(t for t in link.transforms if t != "none")
            values: list[Pair] = []
            for name in dict.fromkeys(s.collection for s in link.selectors if not s.exclude):
                if name in _MATCHED:
                    values += previous
                else:
                    values += [(k, v) for k, v in collections.get(name, ()) if selects(link.selectors, name, k)]
            previous = [(k, v) for k, v in values if condition(_transform(chain, v, memo))]
            if not previous:
                return False
        return True

