"""The compiled evaluator: a model and its rules turned into an index and one matcher function.

It follows ``CoreEnforcer.enforce_ex`` step by step: the same rules in the same order (priority
sorted), the same matcher result checks (a bool, or a float that is not 0), the same effect
reduction and early stop (the first matching allow for ``some(where (p.eft == allow))``, the
first matching deny when deny rules count), and the empty-policy case (the matcher evaluated once
with every policy field ``""``). Only the rules the index names are evaluated; see
:mod:`dsguard.policy.index` for why that cannot change a decision.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from casbin.constant.constants import (
    ALLOW_AND_DENY_EFFECT,
    ALLOW_OVERRIDE_EFFECT,
    DENY_OVERRIDE_EFFECT,
    PRIORITY_EFFECT,
    SUBJECT_PRIORITY_EFFECT,
)
from casbin.util import escape_assertion

from .errors import PolicyError, PolicyEvaluationError
from .expression import Compiled, MatcherError, Scope, Unsupported, compile_node, is_boolean, parse
from .index import RuleIndex, compile_pattern
from .roles import RoleContext, RoleGraph
from .source import PolicySource, Rule

ALLOW, INDETERMINATE, DENY = 0, 1, 2
EFFECTS = {ALLOW_OVERRIDE_EFFECT: "allow-override", ALLOW_AND_DENY_EFFECT: "deny-wins",
           DENY_OVERRIDE_EFFECT: "deny-override"}


def role_graphs(source: PolicySource) -> dict[str, RoleGraph]:
    """One graph per role definition of the model, with the policy's links."""
    graphs = {}
    definitions = source.model["g"] or {}
    for name, assertion in definitions.items():
        arity = assertion.value.count("_")
        links = [rule.values[:arity] for rule in source.rules.get(name, ())]
        graphs[name] = RoleGraph(name, links, domains=len(assertion.tokens) > 2, primary=name == "g")
    return graphs


class CompiledEvaluator:
    """Decisions from the index and the compiled matcher; raises :class:`Unsupported` for other models."""

    def __init__(self, source: PolicySource, graphs: dict[str, RoleGraph]) -> None:
        model = source.model
        for name, assertion in (model["g"] or {}).items():
            if assertion.params_tokens:
                raise Unsupported(f"conditional role definition {name} (link parameters)")
            if len(assertion.tokens) > 3:
                raise source.error("g", name, "a role definition may have one domain at most")
        effect = model["e"]["e"].value
        if effect in (PRIORITY_EFFECT, SUBJECT_PRIORITY_EFFECT):
            raise Unsupported(f"the policy effect {effect.replace('p_', 'p.')!r}")
        if effect not in EFFECTS:
            raise source.error("e", "e", f"casbin does not support the policy effect {effect!r}")
        self.effect = EFFECTS[effect]
        self.graphs = graphs
        self.scope = Scope([t[2:] for t in model["r"]["r"].tokens], [t[2:] for t in model["p"]["p"].tokens],
                           list(graphs))
        try:
            matcher = parse(model["m"]["m"].value)
            if not is_boolean(matcher, self.scope.graphs):
                raise Unsupported("a matcher that can yield something other than true or false")
            self.matcher, self.slots = compile_node(matcher, self.scope, graphs)
        except MatcherError as exc:
            raise source.error("m", "m", str(exc)) from None
        self._conditions: dict[str, Compiled] = {}
        self.rules = source.rules.get("p", ())
        self.compiled = [self._compile_rule(rule) for rule in self.rules]
        eft = self.scope.p_tokens.index("eft") if "eft" in self.scope.p_tokens else None
        self.effects = [ALLOW if eft is None else {"allow": ALLOW, "deny": DENY}.get(r.values[eft], INDETERMINATE)
                        for r in self.rules]
        self.index = RuleIndex(matcher, self.scope, graphs, [r.values for r in self.rules],
                               [e != INDETERMINATE for e in self.effects])
        self._empty_rule = None if self.rules or any(s.kind == "eval" for s in self.slots) else \
            self._compile_rule(Rule("p", ("",) * len(self.scope.p_tokens), source.policy_path, 0))

    def _compile_rule(self, rule: Rule) -> tuple[Callable[..., Any], ...]:
        artifacts: list[Callable[..., Any]] = []
        for slot in self.slots:
            value = rule.values[slot.field]
            try:
                if slot.kind == "eval":
                    artifacts.append(self._condition(value))
                else:
                    artifacts.append(compile_pattern(slot.kind, value))
            except re.error as exc:
                raise PolicyError(f"{slot.kind} pattern {value!r} is not a valid regular expression: {exc}",
                                  file=rule.file, line=rule.line) from None
            except MatcherError as exc:
                raise PolicyError(f"condition {value!r} cannot be evaluated: {exc}", file=rule.file,
                                  line=rule.line) from None
            except Unsupported as exc:
                raise Unsupported(f"{exc} (in the condition on {rule.location})") from None
        return tuple(artifacts)

    def _condition(self, text: str) -> Compiled:
        """An ``eval()``'d field: casbin substitutes it into the matcher; here it is compiled once."""
        found = self._conditions.get(text)
        if found is None:
            node = parse(escape_assertion(text))
            if not is_boolean(node, self.scope.graphs):
                raise Unsupported("a condition that can yield something other than true or false")
            scope = Scope(self.scope.r_tokens, self.scope.p_tokens, self.scope.graphs, per_rule_slots=False)
            found = compile_node(node, scope, self.graphs, params="r, p, x")[0]
            self._conditions[text] = found
        return found

    def decide(self, r: Sequence[Any], x: RoleContext | None) -> tuple[bool, Rule | None]:
        if not self.rules:
            return self._decide_empty(r, x)
        try:
            positions: Iterable[int] | None = self.index.candidates(r, x)
        except Exception:
            positions = None  # the request cannot be keyed: evaluate every rule, as casbin does
        return self._evaluate(r, x, range(len(self.rules)) if positions is None else positions)

    def _evaluate(self, r: Sequence[Any], x: RoleContext | None, positions: Iterable[int]) -> tuple[bool, Rule | None]:
        matcher, compiled, effects = self.matcher, self.compiled, self.effects
        effect = self.effect
        allow = deny = None
        for position in positions:
            try:
                result = matcher(r, self.rules[position].values, compiled[position], x)
            except PolicyEvaluationError:
                raise
            except Exception as exc:
                raise PolicyEvaluationError(f"the matcher failed: {type(exc).__name__}: {exc}") from None
            if result.__class__ is not bool:
                if not isinstance(result, float):
                    raise PolicyEvaluationError("matcher result should be bool, int or float")
                result = result != 0
            if not result:
                continue
            eft = effects[position]
            if eft == ALLOW:
                if allow is None:
                    allow = position
                    if effect == "allow-override":
                        break
            elif eft == DENY:
                deny = position
                if effect != "allow-override":
                    break
        if effect == "allow-override":
            return (True, self.rules[allow]) if allow is not None else (False, None)
        if deny is not None:
            return False, self.rules[deny]
        if effect == "deny-wins" and allow is None:
            return False, None
        return True, None if allow is None else self.rules[allow]

    def _decide_empty(self, r: Sequence[Any], x: RoleContext | None) -> tuple[bool, Rule | None]:
        if self._empty_rule is None:
            raise PolicyEvaluationError("the matcher uses eval() and the policy has no rules")
        values = ("",) * len(self.scope.p_tokens)
        try:
            matched = bool(self.matcher(r, values, self._empty_rule, x))
            return matched or self.effect == "deny-override", None
        except PolicyEvaluationError:
            raise
        except Exception as exc:
            raise PolicyEvaluationError(f"the matcher failed: {type(exc).__name__}: {exc}") from None
