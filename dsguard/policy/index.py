"""Which policy rules can match a request, found without looking at the others.

The matcher is read as ``D1 || D2 || ...``, each ``Di`` as ``C1 && C2 && ...``. A conjunct that
compares a policy field with something the request alone determines is a *dimension*:

- ``g(r.sub, p.sub[, r.dom])``: the field is one of the roles the request's subject holds;
- ``r.act == p.act`` (or ``(r.act == p.act || p.act == "*")``): the field is one of a few values;
- ``keyMatch(r.obj, p.obj)``: the field equals the object, or is a ``prefix*`` of it;
- ``keyMatch2(r.obj, p.obj)``: the field equals the object, or is a pattern.

Each ``Di`` gets a trie over its dimensions; a request walks it with the keys it can match and
reaches the rules that may match. Every rule left out fails one conjunct of every ``Di`` (each
conjunct yields a bool, checked when compiling), so the candidates are a superset of the matching
rules; the full matcher is then evaluated on each candidate, so decisions are casbin's exactly.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from casbin.util.builtin_operators import KEY_MATCH2_PATTERN

from .expression import Compiled, Scope, compile_node, references_rule
from .roles import _NO_DOMAIN, RoleContext, RoleGraph

_REGEX_SPECIALS = frozenset(".^$*+?{}[]\\|()")


def key_match2_regex(pattern: str) -> str:
    """The regular expression casbin's ``keyMatch2`` builds from a pattern."""
    pattern = pattern.replace("/*", "/.*")
    pattern = KEY_MATCH2_PATTERN.sub(r"\g<1>[^\/]+\g<2>", pattern, 0)
    if pattern == "*":
        pattern = "(.*)"
    return "^" + pattern + "$"


def key_match2_literal(pattern: str) -> bool:
    """Whether ``keyMatch2(key, pattern)`` holds only for ``pattern`` (and ``pattern + "\\n"``)."""
    return ":" not in pattern and not _REGEX_SPECIALS.intersection(pattern)


@dataclasses.dataclass(frozen=True)
class Dimension:
    kind: str
    field: int
    request: Sequence[Callable[[Any, Any], Any]] = ()
    constants: tuple[Any, ...] = ()
    graph: RoleGraph | None = None
    domain: Callable[[Any, Any], Any] | None = None

    def keys(self, r: Any, x: RoleContext | None) -> tuple[Any, Any]:
        """The exact keys a request looks up in this dimension, and the value prefixes are taken from."""
        if self.kind == "member":
            assert self.graph is not None
            domain = _NO_DOMAIN if self.domain is None else self.domain(r, x)
            return self.graph.reach_for(x, self.request[0](r, x), domain), None
        if self.kind == "equal":
            return [fn(r, x) for fn in self.request] + list(self.constants), None
        value = self.request[0](r, x)
        if self.kind == "keyMatch2" and isinstance(value, str) and value.endswith("\n"):
            return (value, value[:-1]), value
        return (value,), value

    def place(self, value: str) -> tuple[str, Any]:
        """Where a rule with ``value`` in this field goes: an exact key, a prefix, or with the patterns."""
        if self.kind == "keyMatch" and "*" in value:
            return "prefix", value[:value.find("*")]
        if self.kind == "keyMatch2" and not key_match2_literal(value):
            return "other", None
        return "exact", value


class Node:
    __slots__ = ("exact", "lengths", "other", "prefixes")

    def __init__(self) -> None:
        self.exact: dict[Hashable, Any] = {}
        self.prefixes: dict[str, Any] = {}
        self.lengths: tuple[int, ...] = ()
        self.other: Any = None


class Disjunct:
    """One ``||`` branch of the matcher: its dimensions and the trie of rules over them."""

    def __init__(self, dimensions: list[Dimension], request_only: Compiled | None) -> None:
        self.dimensions = dimensions
        self.request_only = request_only
        self.root: Any = Node() if dimensions else []

    def add(self, position: int, values: Sequence[str]) -> None:
        if not self.dimensions:
            self.root.append(position)
            return
        node = self.root
        last = len(self.dimensions) - 1
        for level, dimension in enumerate(self.dimensions):
            where, key = dimension.place(values[dimension.field])
            fresh: Any = [] if level == last else Node()
            if where == "exact":
                node = node.exact.setdefault(key, fresh)
            elif where == "prefix":
                node = node.prefixes.setdefault(key, fresh)
            else:
                if node.other is None:
                    node.other = fresh
                node = node.other
        node.append(position)

    def order(self, rules: Sequence[Sequence[str]]) -> None:
        """Roles first, then the dimension with the most distinct values (it narrows the most)."""
        sample = rules[::max(1, len(rules) // 5000)]

        def distinct(dimension: Dimension) -> int:
            return len({dimension.place(values[dimension.field]) for values in sample})

        self.dimensions.sort(key=lambda d: (d.kind != "member", -distinct(d)))

    def finish(self) -> None:
        pending = [self.root] if self.dimensions else []
        while pending:
            node = pending.pop()
            if isinstance(node, Node):
                node.lengths = tuple(sorted({len(prefix) for prefix in node.prefixes}))
                pending.extend(node.exact.values())
                pending.extend(node.prefixes.values())
                if node.other is not None:
                    pending.append(node.other)

    def candidates(self, r: Any, x: RoleContext | None) -> list[int]:
        if not self.dimensions:
            return self.root  # type: ignore[no-any-return]
        nodes = [self.root]
        for dimension in self.dimensions:
            keys, value = dimension.keys(r, x)
            member = dimension.kind == "member"
            found: list[Any] = []
            for node in nodes:
                exact = node.exact
                if member and len(exact) < len(keys):
                    found += [child for key, child in exact.items() if key in keys]
                else:
                    for key in keys:
                        child = exact.get(key)
                        if child is not None:
                            found.append(child)
                if node.lengths:
                    prefixes = node.prefixes
                    for length in node.lengths:
                        if length > len(value):
                            break
                        child = prefixes.get(value[:length])
                        if child is not None:
                            found.append(child)
                if node.other is not None:
                    found.append(node.other)
            if not found:
                return []
            nodes = found
        if len(nodes) == 1:
            return nodes[0]  # type: ignore[no-any-return]
        return sorted(position for leaf in nodes for position in leaf)


def _conjuncts(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
        return [part for value in node.values for part in _conjuncts(value)]
    return [node]


def _disjuncts(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
        return [part for value in node.values for part in _disjuncts(value)]
    return [node]


class _Analysis:
    def __init__(self, scope: Scope, graphs: dict[str, RoleGraph]) -> None:
        self.scope = dataclasses.replace(scope, per_rule_slots=False)
        self.graphs = graphs

    def request_fn(self, node: ast.expr) -> Callable[[Any, Any], Any]:
        return compile_node(node, self.scope, self.graphs, params="r, x")[0]

    def p_field(self, node: ast.expr) -> int | None:
        if isinstance(node, ast.Name) and node.id.startswith("p_") and node.id[2:] in self.scope.p_tokens:
            return list(self.scope.p_tokens).index(node.id[2:])
        return None

    def _equality(self, node: ast.expr) -> tuple[int, ast.expr] | None:
        if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)):
            return None
        left, right = node.left, node.comparators[0]
        for field_node, other in ((left, right), (right, left)):
            field = self.p_field(field_node)
            if field is not None and not references_rule(other):
                return field, other
        return None

    def dimension(self, node: ast.expr) -> Dimension | None:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) in (2, 3):
            name, args = node.func.id, node.args
            field = self.p_field(args[1])
            others = [args[0], *args[2:]]
            if field is None or any(references_rule(a) for a in others) or node.keywords:
                return None
            if name in self.graphs:
                domain = self.request_fn(args[2]) if len(args) == 3 else None
                return Dimension("member", field, (self.request_fn(args[0]),), graph=self.graphs[name],
                                 domain=domain)
            if name in ("keyMatch", "keyMatch2") and len(args) == 2:
                return Dimension(name, field, (self.request_fn(args[0]),))
            return None
        alternatives = node.values if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) else [node]
        fields, requests, constants = set(), [], []
        for alternative in alternatives:
            equality = self._equality(alternative)
            if equality is None:
                return None
            field, other = equality
            fields.add(field)
            if isinstance(other, ast.Constant) and isinstance(other.value, str):
                constants.append(other.value)
            else:
                requests.append(self.request_fn(other))
        if len(fields) != 1:
            return None
        return Dimension("equal", fields.pop(), tuple(requests), tuple(constants))

    def disjunct(self, node: ast.expr) -> Disjunct:
        if not references_rule(node):
            return Disjunct([], self.request_fn(node))
        chosen: dict[int, Dimension] = {}
        for conjunct in _conjuncts(node):
            dimension = self.dimension(conjunct)
            if dimension is not None and dimension.field not in chosen:
                chosen[dimension.field] = dimension
        return Disjunct(list(chosen.values()), None)


class RuleIndex:
    """Candidate rules for a request, over every ``||`` branch of the matcher."""

    def __init__(self, matcher: ast.expr, scope: Scope, graphs: dict[str, RoleGraph],
                 rules: Sequence[Sequence[str]], decisive: Sequence[bool]) -> None:
        analysis = _Analysis(scope, graphs)
        self.disjuncts = [analysis.disjunct(node) for node in _disjuncts(matcher)]
        self.full_scan = any(not d.dimensions and d.request_only is None for d in self.disjuncts)
        for disjunct in self.disjuncts:
            if disjunct.request_only is None:
                disjunct.order([values for values, keep in zip(rules, decisive, strict=True) if keep])
                for position, values in enumerate(rules):
                    if decisive[position]:
                        disjunct.add(position, values)
                disjunct.finish()

    def candidates(self, r: Any, x: RoleContext | None) -> Sequence[int] | None:
        """Positions of the rules that may match, in order; ``None`` means all of them."""
        if len(self.disjuncts) == 1:
            disjunct = self.disjuncts[0]
            if disjunct.request_only is not None:
                return None if disjunct.request_only(r, x) else ()
            return disjunct.candidates(r, x)
        found: set[int] = set()
        for disjunct in self.disjuncts:
            if disjunct.request_only is not None:
                if disjunct.request_only(r, x):
                    return None
                continue
            found.update(disjunct.candidates(r, x))
        return sorted(found)


def compile_pattern(kind: str, pattern: str) -> Callable[[Any], bool]:
    """casbin's ``kind(key, pattern)`` as a function of ``key`` (raises ``re.error`` for a bad pattern)."""
    if kind == "keyMatch":
        star = pattern.find("*")
        if star == -1:
            return lambda key: bool(key == pattern)
        prefix = pattern[:star]
        return lambda key: bool(key.startswith(prefix))
    if kind == "keyMatch2" and key_match2_literal(pattern):
        with_newline = pattern + "\n"
        return lambda key: bool(key in (pattern, with_newline))
    match = re.compile(key_match2_regex(pattern) if kind == "keyMatch2" else pattern).match
    return lambda key: match(key) is not None
