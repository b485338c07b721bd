"""A loaded policy: decisions equal to casbin's, at the cost of an index lookup.

:func:`load_policy` reads a model and a policy file and returns a :class:`Policy`. Models the
compiled evaluator handles (see :mod:`dsguard.policy.expression`) are decided by it; any other is
decided by casbin's Enforcer, and ``Policy.engine`` / ``Policy.fallback_reason`` say so.
A ``Policy`` never changes after it is built: reloading builds a new one.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from .compiled import CompiledEvaluator, role_graphs
from .errors import PolicyError
from .expression import Unsupported
from .fallback import CasbinEvaluator
from .request import REQUEST_TOKENS, AccessRequest, attributes
from .roles import RoleContext
from .source import PolicySource, Rule, read_source

logger = logging.getLogger("dsguard.policy")

Engine = Literal["auto", "casbin"]


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """``allowed``, and the policy rule that decided: the first matching deny rule of a denial,
    the first matching allow rule of an allowance, ``None`` when no rule matched."""

    allowed: bool
    rule: Rule | None = None


class Policy:
    """A model and policy ready to decide requests; immutable and safe to share between threads."""

    def __init__(self, source: PolicySource, *, engine: Engine = "auto") -> None:
        self.source = source
        tokens = [token[2:] for token in source.tokens("r", "r")]
        unknown = [token for token in tokens if token not in REQUEST_TOKENS]
        if unknown or len(set(tokens)) != len(tokens):
            raise source.error("r", "r", f"request_definition token {(unknown or tokens)[0]!r}: dsguard fills "
                                         f"{', '.join(REQUEST_TOKENS)}, each at most once")
        self.request_tokens = tuple(tokens)
        order = [REQUEST_TOKENS.index(token) for token in tokens]
        self._pick: Callable[[tuple[Any, ...]], tuple[Any, ...]] = (
            operator.itemgetter(*order) if len(order) > 1 else lambda values: (values[order[0]],))
        self._uses_attrs = "attrs" in tokens
        self.graphs = role_graphs(source)
        self.fallback_reason: str | None = None
        self._evaluator: CompiledEvaluator | CasbinEvaluator
        if engine == "casbin":
            self.fallback_reason = "casbin's Enforcer was asked for"
            self._evaluator = CasbinEvaluator(source)
        else:
            try:
                self._evaluator = CompiledEvaluator(source, self.graphs)
            except Unsupported as exc:
                self.fallback_reason = str(exc)
                logger.warning("%s: %s is not compiled; casbin's Enforcer decides (slower: it reads every rule)",
                               source.model_path, exc)
                self._evaluator = CasbinEvaluator(source)

    @property
    def engine(self) -> str:
        """``"compiled"``, or ``"casbin"`` when casbin's Enforcer decides (see ``fallback_reason``)."""
        return "casbin" if isinstance(self._evaluator, CasbinEvaluator) else "compiled"

    @property
    def full_scan(self) -> bool:
        """Whether some requests are decided by reading every rule (casbin's cost): the model is not
        compiled, or a ``||`` branch of its matcher compares no policy field with the request."""
        evaluator = self._evaluator
        return isinstance(evaluator, CasbinEvaluator) or evaluator.index.full_scan

    @property
    def uses_attributes(self) -> bool:
        """Whether the request definition has ``attrs`` (else building them can be skipped)."""
        return self._uses_attrs

    @property
    def model_path(self) -> str:
        return self.source.model_path

    @property
    def policy_path(self) -> str:
        return self.source.policy_path

    @property
    def digest(self) -> str:
        return self.source.digest

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The ``p`` rules in evaluation order (file order, or by ``priority`` when the model has it)."""
        return self.source.rules.get("p", ())

    @property
    def groupings(self) -> Mapping[str, tuple[Rule, ...]]:
        """The ``g``, ``g2`` ... rules by type, in file order."""
        return {name: rules for name, rules in self.source.rules.items() if name.startswith("g")}

    @property
    def ignored(self) -> tuple[Rule, ...]:
        """Lines whose type the model does not declare (casbin drops them silently)."""
        return self.source.ignored

    def decide(self, sub: str, obj: str, act: str, dom: str | None = None, attrs: Mapping[str, Any] | None = None,
               roles: Iterable[str] = ()) -> Decision:
        """casbin's decision on ``(sub, [dom,] obj, act[, attrs])``, with ``roles`` as extra ``g`` links of ``sub``.

        Raises :class:`~dsguard.policy.PolicyEvaluationError` where casbin's ``enforce`` raises.
        """
        domain = "" if dom is None else dom
        r = self._pick((sub, obj, act, domain, attributes(attrs) if self._uses_attrs else None))
        context = None
        if roles:
            context = RoleContext(sub, domain, roles if isinstance(roles, frozenset) else frozenset(roles))
        allowed, rule = self._evaluator.decide(r, context)
        return Decision(allowed, rule)

    def decide_request(self, request: AccessRequest) -> Decision:
        return self.decide(request.sub, request.obj, request.act, request.dom, request.attrs, request.roles)

    def roles_for(self, user: str, domain: str | None = None) -> list[str]:
        """The roles ``user`` inherits through the policy's ``g`` rules (in ``domain``), sorted."""
        graph = self.graphs.get("g")
        return [] if graph is None else graph.roles_for(user, domain)

    def __repr__(self) -> str:
        return f"<Policy {self.policy_path}: {len(self.rules)} rules, {self.engine}>"


def load_policy(model_path: str | Path, policy_path: str | Path, *, engine: Engine = "auto") -> Policy:
    """Read and compile a model and policy; raises :class:`PolicyError` naming the file and line."""
    return Policy(read_source(model_path, policy_path), engine=engine)


__all__ = ["Decision", "Policy", "PolicyError", "load_policy"]
