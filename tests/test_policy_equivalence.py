"""The compiled policy decides exactly as casbin's Enforcer does.

For every supported model shape, random policies (users, roles, inheritance chains longer than
casbin's hierarchy limit, domains, keyMatch / keyMatch2 / regexMatch patterns, allow, deny and
unknown effects, ABAC conditions) and random requests are decided by both; the decisions and the
rule casbin's ``enforce_ex`` names must agree. Roles carried by an identity are checked against
an Enforcer whose policy file holds them as ``g`` lines.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import casbin
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsguard.policy import Attributes, PolicyEvaluationError, load_policy

USERS = ["alice", "bob", "carol"]
ROLES = [f"c{i}" for i in range(12)] + ["admin", "user"]
DOMAINS = ["d1", "d2"]
ACTIONS = ["GET", "POST", "chat"]
REQUEST_OBJECTS = ["/a", "/a/b", "/a/b/c", "/a/bc", "/b", "/b/x", "/", "", "/a/b\n", "model:r1", "model:r1-70b"]
PATTERNS = {
    "keyMatch": ["/a", "/a/b", "/a/*", "/a/b*", "/*", "*", "/b/x", "model:r1*", "/a/*/c"],
    "keyMatch2": ["/a", "/a/b", "/a/:id", "/:x/b", "/a/*", "/*", "*", "/b/x", "model:r1", "/a/b.c", "/a/b\n"],
    "regexMatch": ["/a", "^/a/b$", "/a/.*", "b", ".*", "^model:r1(-70b)?$", "/a/b?c?$", ""],
}
ACTION_PATTERNS = {"regexMatch": ["GET", "(GET)|(POST)", "^P", ".*", "chat"]}

MODELS = {
    "rbac-keymatch-allow": ("r = sub, obj, act", "p = sub, obj, act", "g = _, _",
                            "some(where (p.eft == allow))",
                            "g(r.sub, p.sub) && keyMatch(r.obj, p.obj) && r.act == p.act"),
    "rbac-keymatch2-deny-wins": ("r = sub, obj, act", "p = sub, obj, act, eft", "g = _, _",
                                 "some(where (p.eft == allow)) && !some(where (p.eft == deny))",
                                 'g(r.sub, p.sub) && keyMatch2(r.obj, p.obj) && (r.act == p.act || p.act == "*")'),
    "rbac-regex-deny-wins": ("r = sub, obj, act", "p = sub, obj, act, eft", "g = _, _",
                             "some(where (p.eft == allow)) && !some(where (p.eft == deny))",
                             "g(r.sub, p.sub) && regexMatch(r.obj, p.obj) && regexMatch(r.act, p.act)"),
    "rbac-domains": ("r = sub, dom, obj, act", "p = sub, dom, obj, act, eft", "g = _, _, _",
                     "some(where (p.eft == allow)) && !some(where (p.eft == deny))",
                     "g(r.sub, p.sub, r.dom) && r.dom == p.dom && keyMatch(r.obj, p.obj) && r.act == p.act"),
    "rbac-superuser-or": ("r = sub, obj, act", "p = sub, obj, act", "g = _, _",
                          "some(where (p.eft == allow))",
                          'g(r.sub, p.sub) && keyMatch2(r.obj, p.obj) && r.act == p.act || r.sub == "root"'),
    "rbac-deny-override": ("r = sub, obj, act", "p = sub, obj, act, eft", "g = _, _",
                           "!some(where (p.eft == deny))",
                           "g(r.sub, p.sub) && keyMatch(r.obj, p.obj) && r.act == p.act"),
    "acl-no-roles": ("r = sub, obj, act", "p = sub, obj, act, eft", None,
                     "some(where (p.eft == allow)) && !some(where (p.eft == deny))",
                     "r.sub == p.sub && keyMatch2(r.obj, p.obj) && r.act != \"DELETE\" && r.act == p.act"),
    "rbac-priority-ordered": ("r = sub, obj, act", "p = priority, sub, obj, act, eft", "g = _, _",
                              "some(where (p.eft == allow)) && !some(where (p.eft == deny))",
                              "g(r.sub, p.sub) && keyMatch(r.obj, p.obj) && r.act == p.act"),
    "rbac-resource-groups": ("r = sub, obj, act", "p = sub, obj, act", "g = _, _\ng2 = _, _",
                             "some(where (p.eft == allow))",
                             "g(r.sub, p.sub) && g2(r.obj, p.obj) && r.act == p.act"),
    "abac-conditions": ("r = sub, obj, act, attrs", "p = rule, obj, act", None,
                        "some(where (p.eft == allow))",
                        "keyMatch(r.obj, p.obj) && r.act == p.act && eval(p.rule)"),
}
CONDITIONS = ['r.attrs.tier == "free" && r.attrs.max_tokens <= 256', 'r.attrs.tier == "pro"',
              'r.attrs.tier in ("free", "pro") && r.attrs.max_tokens < 1000', "r.attrs.max_tokens > 4096",
              '!(r.attrs.tier == "free")', 'r.sub == "alice" || r.attrs.tier == "pro"']


def model_text(shape: str) -> str:
    request, policy, roles, effect, matcher = MODELS[shape]
    sections = [f"[request_definition]\n{request}", f"[policy_definition]\n{policy}"]
    if roles:
        sections.append(f"[role_definition]\n{roles}")
    sections += [f"[policy_effect]\ne = {effect}", f"[matchers]\nm = {matcher}"]
    return "\n\n".join(sections) + "\n"


def pattern_kind(shape: str) -> str:
    return "regexMatch" if "regex" in shape else "keyMatch2" if "keymatch2" in shape or shape in (
        "rbac-superuser-or", "acl-no-roles") else "keyMatch"


subjects = st.sampled_from(USERS + ROLES + ["root", "nobody"])
domains = st.sampled_from(DOMAINS)


@st.composite
def policies(draw: Any, shape: str) -> list[str]:
    """Policy lines for ``shape``: role links (chains included), then p rules."""
    lines = []
    roles_defined = MODELS[shape][2]
    if roles_defined:
        domain_field = roles_defined.split("\n")[0].count("_") == 3
        chain = draw(st.integers(0, 11))
        for i in range(chain):
            lines.append(f"g, c{i}, c{i + 1}" + (f", {DOMAINS[0]}" if domain_field else ""))
        for _ in range(draw(st.integers(0, 6))):
            child = draw(st.sampled_from(USERS + ROLES))
            parent = draw(st.sampled_from(ROLES))
            lines.append(f"g, {child}, {parent}" + (f", {draw(domains)}" if domain_field else ""))
        if "g2" in roles_defined:
            for _ in range(draw(st.integers(0, 6))):
                member = draw(st.sampled_from([*REQUEST_OBJECTS[:6], "docs"]))
                lines.append(f"g2, {member}, {draw(st.sampled_from(['docs', 'code', '/a']))}")
    kind = pattern_kind(shape)
    effects = ["allow", "allow", "deny", "maybe"]
    for _ in range(draw(st.integers(0, 12))):
        obj = draw(st.sampled_from(PATTERNS[kind]))
        if "\n" in obj:
            continue
        act = draw(st.sampled_from(ACTION_PATTERNS.get(kind, [*ACTIONS, "*"])))
        if shape == "abac-conditions":
            lines.append(f"p, {draw(st.sampled_from(CONDITIONS))}, {obj}, {act}")
            continue
        subject = draw(st.sampled_from(USERS + ROLES))
        fields = [str(draw(st.integers(0, 12)))] if "priority" in MODELS[shape][1] else []
        fields.append(subject)
        if shape == "rbac-domains":
            fields.append(draw(domains))
        if "g2" in (roles_defined or ""):
            obj = draw(st.sampled_from(["docs", "code", "/a", "/a/b"]))
        fields += [obj, act]
        if "eft" in MODELS[shape][1]:
            fields.append(draw(st.sampled_from(effects)))
        lines.append("p, " + ", ".join(fields))
    return draw(st.permutations(lines))  # type: ignore[no-any-return]


@st.composite
def requests(draw: Any) -> dict[str, Any]:
    return {
        "sub": draw(subjects), "dom": draw(domains), "obj": draw(st.sampled_from(REQUEST_OBJECTS)),
        "act": draw(st.sampled_from([*ACTIONS, "POST", "DELETE"])),
        "roles": draw(st.frozensets(st.sampled_from(ROLES), max_size=2)),
        "tier": draw(st.sampled_from(["free", "pro", None])),
        "max_tokens": draw(st.sampled_from([100, 256, 999, 5000, math.inf])),
    }


def casbin_values(enforcer: casbin.Enforcer, request: dict[str, Any], attrs: Attributes) -> list[Any]:
    by_name = {"sub": request["sub"], "dom": request["dom"], "obj": request["obj"], "act": request["act"],
               "attrs": attrs}
    return [by_name[token[2:]] for token in enforcer.model["r"]["r"].tokens]


def casbin_with_roles(model: Path, lines: Sequence[str], shape: str, request: dict[str, Any], folder: Path) -> Any:
    """A fresh Enforcer whose policy file also links the request's subject to its identity roles."""
    domain = f", {request['dom']}" if shape == "rbac-domains" else ""
    extra = [f"g, {request['sub']}, {role}{domain}" for role in sorted(request["roles"])]
    policy = folder / "with-roles.csv"
    policy.write_text("\n".join([*lines, *extra]) + "\n", encoding="utf-8")
    return casbin.Enforcer(str(model), str(policy))


def assert_same_decisions(shape: str, lines: list[str], batch: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = folder / "model.conf"
        model.write_text(model_text(shape), encoding="utf-8")
        policy_file = folder / "policy.csv"
        policy_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        policy = load_policy(model, policy_file)
        assert policy.engine == "compiled", policy.fallback_reason
        enforcer = casbin.Enforcer(str(model), str(policy_file))
        effect = MODELS[shape][3]
        for request in batch:
            attrs = Attributes(tier=request["tier"], max_tokens=request["max_tokens"], sub=request["sub"])
            with_roles = bool(request["roles"]) and MODELS[shape][2] is not None
            reference = casbin_with_roles(model, lines, shape, request, folder) if with_roles else enforcer
            roles = request["roles"] if with_roles else ()
            try:
                allowed, explain = reference.enforce_ex(*casbin_values(reference, request, attrs))
            except RuntimeError:
                with pytest.raises(PolicyEvaluationError):
                    policy.decide(request["sub"], request["obj"], request["act"], request["dom"], attrs, roles)
                continue
            decision = policy.decide(request["sub"], request["obj"], request["act"], request["dom"], attrs, roles)
            assert decision.allowed == allowed, (request, lines)
            if explain:
                assert decision.rule is not None and list(decision.rule.values) == list(explain), (request, lines)
            elif effect == "some(where (p.eft == allow))" or not allowed:
                assert decision.rule is None, (request, lines)


EQUIVALENCE = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("shape", sorted(MODELS))
@EQUIVALENCE
@given(data=st.data())
def test_compiled_decisions_equal_casbin_enforcer(shape: str, data: Any) -> None:
    lines = data.draw(policies(shape), label="policy")
    batch = data.draw(st.lists(requests(), min_size=1, max_size=12), label="requests")
    assert_same_decisions(shape, lines, batch)


def test_inheritance_stops_where_casbin_stops() -> None:
    lines = [f"g, c{i}, c{i + 1}" for i in range(11)] + ["p, c9, /a, GET", "p, c10, /b, GET"]
    batch = [{"sub": "c0", "dom": "d1", "obj": obj, "act": "GET", "roles": frozenset(), "tier": None,
              "max_tokens": 0} for obj in ("/a", "/b")]
    assert_same_decisions("rbac-keymatch-allow", lines, batch)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "m.conf").write_text(model_text("rbac-keymatch-allow"), encoding="utf-8")
        (Path(tmp) / "p.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        policy = load_policy(Path(tmp) / "m.conf", Path(tmp) / "p.csv")
    assert policy.decide("c0", "/a", "GET").allowed
    assert not policy.decide("c0", "/b", "GET").allowed


def test_identity_role_counts_as_one_more_link() -> None:
    lines = [f"g, c{i}, c{i + 1}" for i in range(11)] + ["p, c8, /a, GET", "p, c9, /b, GET"]
    batch = [{"sub": "alice", "dom": "d1", "obj": obj, "act": "GET", "roles": frozenset({"c0"}), "tier": None,
              "max_tokens": 0} for obj in ("/a", "/b")]
    assert_same_decisions("rbac-keymatch-allow", lines, batch)
