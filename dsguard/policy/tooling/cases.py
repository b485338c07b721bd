"""Policy test cases (``tests.yaml``) and the decisions they are checked against.

A case states an identity (subject, roles, scopes, tenant, claims) and a request (method, path,
model, max_tokens) and the decision expected; :func:`access` turns it into the request the
guard's policy check builds for such a call, and :class:`Decider` decides it as the guard does
(:mod:`dsguard.policy`), roles from the token counting as ``g`` assignments for that one call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ...context import Identity as VerifiedIdentity
from .. import AccessRequest, PolicyError, access_request, load_policy
from ..request import LLM_ACTIONS
from .files import PolicyFileError, PolicyLine, read_model, read_policy, structural_errors

IDENTITY_KEYS = frozenset({"sub", "roles", "scopes", "tenant", "claims"})
REQUEST_KEYS = frozenset({"method", "path", "model", "max_tokens"})
CASE_KEYS = frozenset({"name", "identity", "request", "expect", "rule"})


@dataclasses.dataclass(frozen=True)
class Identity:
    sub: str
    roles: tuple[str, ...] = ()
    tenant: str | None = None
    claims: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    scopes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str
    model: str | None = None
    max_tokens: int | None = None


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    identity: Identity | None
    """None: a call without an identity, which ``[identity] anonymous = true`` lets through."""
    request: Request
    allow: bool
    rule: str | None = None
    """The policy line expected to decide, as written in policy.csv; "default" for no rule."""
    line: int = 0


@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: PolicyLine | None
    request: tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class CallSettings:
    """The ``[policy]`` settings that shape the request: LLM routes, and the subject of anonymous calls."""

    actions: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(LLM_ACTIONS))
    anonymous_subject: str = "anonymous"


def access(identity: Identity | None, request: Request, settings: CallSettings | None = None) -> AccessRequest:
    """The request as the policy check builds it for a call with this identity, method, path and body."""
    settings = settings or CallSettings()
    verified = None if identity is None else VerifiedIdentity(
        identity.sub, "token", roles=frozenset(identity.roles), scopes=frozenset(identity.scopes),
        tenant=identity.tenant, claims=identity.claims)
    body = {name: value for name, value in (("model", request.model), ("max_tokens", request.max_tokens))
            if value is not None}
    return access_request(verified, request.method, request.path, body, actions=settings.actions,
                          anonymous_subject=settings.anonymous_subject)


class Decider:
    """The guard's decisions for one model and policy, with the file and line of the deciding rule."""

    def __init__(self, model_path: Path, policy_path: Path, settings: CallSettings | None = None) -> None:
        self.settings = settings or CallSettings()
        problems = structural_errors(read_model(model_path), read_policy(policy_path))
        if problems:
            line, message = problems[0]
            raise PolicyFileError(line.path, line.line, message)
        try:
            self.policy = load_policy(model_path, policy_path)
        except PolicyError as exc:
            raise PolicyFileError(Path(exc.file or model_path), exc.line, exc.message) from None

    def decide(self, identity: Identity | None, request: Request) -> Decision:
        """Raises :class:`PolicyEvaluationError` where the matcher fails on this request."""
        call = access(identity, request, self.settings)
        decision = self.policy.decide_request(call)
        rule = decision.rule
        line = None if rule is None else PolicyLine(Path(rule.file), rule.line, rule.ptype, rule.values)
        values = {"sub": call.sub, "dom": call.dom or "", "obj": call.obj, "act": call.act, "attrs": call.attrs}
        return Decision(decision.allowed, line, tuple(values[token] for token in self.policy.request_tokens))


def load_cases(path: Path) -> list[Case]:
    try:
        text = path.read_text(encoding="utf-8")
        document = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except FileNotFoundError:
        raise PolicyFileError(path, None, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyFileError(path, None, f"cannot read ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyFileError(path, mark.line + 1 if mark else None, f"not valid YAML: {problem}") from None
    if isinstance(document, dict) and "cases" in document:
        document = document["cases"]
        root = next(value for key, value in root.value if key.value == "cases")
    if not isinstance(document, list) or not document:
        raise PolicyFileError(path, None, "expected a non-empty list of cases (or a mapping with cases:)")
    lines = [node.start_mark.line + 1 for node in root.value]
    cases = [_case(path, index, item, line) for index, (item, line) in enumerate(zip(document, lines, strict=True),
                                                                                  start=1)]
    seen: dict[str, int] = {}
    for case in cases:
        if case.name in seen:
            raise PolicyFileError(path, case.line, f"case name {case.name!r} is already used on line {seen[case.name]}")
        seen[case.name] = case.line
    return cases


def _case(path: Path, index: int, item: object, line: int) -> Case:
    if not isinstance(item, dict):
        raise PolicyFileError(path, line, f"case {index}: expected a mapping with name, identity, request, expect")

    def fail(message: str) -> PolicyFileError:
        return PolicyFileError(path, line, f"case {item.get('name', index)!r}: {message}")

    extra = set(item) - CASE_KEYS
    if extra:
        raise fail(f"unknown key {sorted(extra)[0]!r}; expected {', '.join(sorted(CASE_KEYS))}")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PolicyFileError(path, line, f"case {index}: name must be a non-empty string")
    expect = item.get("expect")
    if expect not in ("allow", "deny"):
        raise fail(f"expect must be allow or deny, not {expect!r}")
    rule = item.get("rule")
    if rule is not None and not isinstance(rule, str):
        raise fail('rule must be a policy line as written in the policy file, or "default"')
    return Case(name, _identity(item.get("identity"), fail), _request(item.get("request"), fail), expect == "allow",
                rule, line)


def _identity(raw: object, fail: Any) -> Identity | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise fail("identity must be a mapping with sub (and roles, scopes, tenant, claims), or null")
    extra = set(raw) - IDENTITY_KEYS
    if extra:
        raise fail(f"identity: unknown key {sorted(extra)[0]!r}; expected {', '.join(sorted(IDENTITY_KEYS))}")
    sub, tenant, claims = raw.get("sub"), raw.get("tenant"), raw.get("claims", {})
    if not isinstance(sub, str) or not sub:
        raise fail("identity.sub must be a non-empty string")
    roles, scopes = _names(raw.get("roles", []), "roles", fail), _names(raw.get("scopes", []), "scopes", fail)
    if tenant is not None and not isinstance(tenant, str):
        raise fail("identity.tenant must be a string")
    if not isinstance(claims, dict):
        raise fail("identity.claims must be a mapping of claim names to values")
    return Identity(sub, roles, tenant, dict(claims), scopes)


def _names(raw: object, key: str, fail: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = raw.split()
    if not isinstance(raw, list) or not all(isinstance(name, str) and name for name in raw):
        raise fail(f"identity.{key} must be a list of names")
    return tuple(raw)


def _request(raw: object, fail: Any) -> Request:
    if not isinstance(raw, dict):
        raise fail("request must be a mapping with method and path (and model, max_tokens)")
    extra = set(raw) - REQUEST_KEYS
    if extra:
        raise fail(f"request: unknown key {sorted(extra)[0]!r}; expected {', '.join(sorted(REQUEST_KEYS))}")
    method, path, model, max_tokens = raw.get("method"), raw.get("path"), raw.get("model"), raw.get("max_tokens")
    if not isinstance(method, str) or not method.isalpha():
        raise fail("request.method must be an HTTP method such as GET or POST")
    if not isinstance(path, str) or not path.startswith("/"):
        raise fail("request.path must be a path starting with /")
    if model is not None and (not isinstance(model, str) or not model):
        raise fail("request.model must be a model name")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0):
        raise fail("request.max_tokens must be a non-negative integer")
    return Request(method.upper(), path, model, max_tokens)
