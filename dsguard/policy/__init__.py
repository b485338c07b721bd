"""Casbin policies, decided by a compiled index with exactly casbin's decisions.

API (used by the policy check and by ``dsguard policy``)::

    policy = load_policy("policies/model.conf", "policies/policy.csv")   # raises PolicyError
    decision = policy.decide(sub, obj, act, dom=None, attrs=None, roles=())
    decision.allowed          # bool: what casbin.Enforcer(model, policy).enforce(...) answers
    decision.rule             # Rule | None: the deciding line (rule.values, rule.file, rule.line)
    policy.decide_request(access_request(identity, method, path, json_body))   # as the guard does
    policy.roles_for("alice", domain=None)   # roles inherited through g rules, sorted
    policy.engine             # "compiled", or "casbin" (policy.fallback_reason says why)
    policy.full_scan          # True when some requests read every rule (not indexable)
    policy.rules, policy.groupings, policy.ignored, policy.request_tokens, policy.digest

- ``decide`` fills the model's request tokens by name: ``sub``, ``obj``, ``act``, ``dom``
  (``""`` when None) and ``attrs`` (an :class:`Attributes`; a missing name reads as None).
  ``roles`` are extra ``g`` links from ``sub`` (in ``dom`` for domain models) for this decision,
  as if ``g, sub, role[, dom]`` lines were in the file.
- ``decision.rule`` is the first matching deny rule of a denial and the first matching allow
  rule of an allowance (casbin's ``enforce_ex`` names no rule when a deny-wins model allows),
  ``None`` when no rule matched.
- :class:`PolicyError` (a :class:`~dsguard.errors.ConfigError`) names ``file:line``; it is raised
  for files casbin would fail on later too (a ``p`` line of the wrong size, a bad regex).
  :class:`PolicyEvaluationError` is raised by ``decide`` where casbin's ``enforce`` raises.
- Compiled: role inheritance (``g = _, _`` and ``g = _, _, _``, casbin's limit of 10 levels),
  ``==`` ``!=`` ``<`` ``<=`` ``>`` ``>=`` ``in``, ``&&`` ``||`` ``!``, casbin's match functions,
  attribute access (``r.attrs.claims.tier``) and ``eval(p.rule)``; effects allow-override,
  deny-wins and deny-override. Anything else (priority effects, conditional roles, arithmetic,
  ``timeMatch``) is decided by casbin's Enforcer, logged once at load.
"""

from __future__ import annotations

from .engine import Decision, Policy, load_policy
from .errors import PolicyError, PolicyEvaluationError
from .request import AccessRequest, Attributes, access_request
from .source import Rule

__all__ = ["AccessRequest", "Attributes", "Decision", "Policy", "PolicyError", "PolicyEvaluationError", "Rule",
           "access_request", "load_policy"]
