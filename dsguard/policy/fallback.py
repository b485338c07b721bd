"""casbin's own Enforcer, for the model shapes the compiled evaluator does not handle.

Correct but slow (it evaluates the matcher on every policy line). The Enforcer is fed the rules
already read (not the file again, which may have changed since). Roles from a verified identity
are added as ``g`` rules for the one decision and removed afterwards, under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import casbin
from casbin.persist.adapter import Adapter

from .errors import PolicyError, PolicyEvaluationError
from .roles import RoleContext
from .source import PolicySource, Rule


class _LoadedRules(Adapter):  # type: ignore[misc]
    """An adapter handing casbin rules that were read already; changes are not written anywhere."""

    def __init__(self, rules: dict[str, tuple[Rule, ...]]) -> None:
        self.rules = rules

    def load_policy(self, model: Any) -> None:
        for ptype, rules in self.rules.items():
            model.model[ptype[0]][ptype].policy.extend(list(rule.values) for rule in rules)


class CasbinEvaluator:
    """Decisions from ``casbin.Enforcer.enforce_ex``."""

    def __init__(self, source: PolicySource) -> None:
        try:
            self.enforcer = casbin.Enforcer(source.model, _LoadedRules(source.rules))
        except Exception as exc:  # casbin reports model problems as bare exceptions
            raise PolicyError(f"casbin cannot load this model and policy: {exc}", file=source.model_path) from None
        self.enforcer.enable_auto_notify_watcher(False)
        self.rules = source.rules.get("p", ())
        self._by_values: dict[tuple[str, ...], Rule] = {}
        for rule in self.rules:
            self._by_values.setdefault(rule.values, rule)
        definition = (source.model["g"] or {}).get("g")
        self._role_arity = 0 if definition is None else int(definition.value.count("_"))
        self._lock = threading.Lock()

    def decide(self, r: Sequence[Any], x: RoleContext | None) -> tuple[bool, Rule | None]:
        links = self._links(x)
        with self._lock:
            added = [link for link in links if not self.enforcer.has_named_grouping_policy("g", *link)]
            for link in added:
                self.enforcer.add_named_grouping_policy("g", *link)
            try:
                allowed, explain = self.enforcer.enforce_ex(*r)
            except Exception as exc:
                raise PolicyEvaluationError(f"casbin failed: {type(exc).__name__}: {exc}") from None
            finally:
                for link in added:
                    self.enforcer.remove_named_grouping_policy("g", *link)
        rule = self._by_values.get(tuple(explain)) if explain else None
        return bool(allowed), rule

    def _links(self, x: RoleContext | None) -> list[list[str]]:
        if x is None or not self._role_arity:
            return []
        if self._role_arity == 2:
            return [[x.subject, role] for role in sorted(x.roles)]
        return [[x.subject, role, x.domain] for role in sorted(x.roles)]
