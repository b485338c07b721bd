"""The policy check through a real app: who may call which route and model, how a denial
looks, and what a broken or unsupported policy does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dsguard import GuardMiddleware
from dsguard.checks.policy import PolicyCheck
from dsguard.context import Identity, RequestContext
from dsguard.errors import ConfigError
from dsguard.guard import Guard
from dsguard.policy import PolicyError, load_policy

from .conftest import run_uvicorn
from .helpers import HeaderIdentity, InProcess, config

RBAC_MODEL = """
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act, eft

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = g(r.sub, p.sub) && keyMatch(r.obj, p.obj) && r.act == p.act
"""
RBAC_POLICY = """
g, contractor, user
g, carol, admin
p, user, /v1/models, GET, allow
p, user, model:small, chat, allow
p, admin, model:big, chat, allow
p, admin, /admin/keys/*, DELETE, allow
p, anonymous, /public, GET, allow
p, contractor, model:small, chat, deny
"""
TENANT_MODEL = """
[request_definition]
r = sub, dom, obj, act

[policy_definition]
p = sub, dom, obj, act

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub, r.dom) && r.dom == p.dom && keyMatch2(r.obj, p.obj) && r.act == p.act
"""
TENANT_POLICY = """
g, alice, admin, acme
p, admin, acme, /admin/keys, GET
p, user, globex, /v1/models, GET
"""
TIER_MODEL = """
[request_definition]
r = sub, obj, act, attrs

[policy_definition]
p = rule, obj, act

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = keyMatch(r.obj, p.obj) && r.act == p.act && eval(p.rule)
"""
TIER_POLICY = """
p, r.attrs.claims.tier == "free" && r.attrs.max_tokens <= 256, model:small, chat
p, r.attrs.claims.tier == "pro" && r.attrs.max_tokens <= 4096, model:*, chat
p, r.attrs.claims.org.name == "acme", /orgs, GET
"""


class ClaimsIdentity:
    """Trusts test headers for subject, roles, tenant and a ``tier`` claim: a stand-in identity source."""

    name = "test-claims-identity"
    stage = "identity"

    def check(self, ctx: RequestContext) -> None:
        subject = ctx.headers.get("x-test-subject")
        if subject:
            tier = ctx.headers.get("x-test-tier")
            ctx.identity = Identity(subject=subject, method="test", tenant=ctx.headers.get("x-test-tenant"),
                                    roles=frozenset(ctx.headers.get("x-test-roles", "").split()),
                                    claims={"tier": tier} if tier else {})


async def ok(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True, "path": request.url.path})


APP_ROUTES = [Route(path, ok, methods=["GET", "POST", "DELETE"])
              for path in ("/v1/models", "/v1/chat/completions", "/admin/keys", "/admin/keys/{id}", "/public",
                           "/orgs")]


def policy_dir(folder: Path, model: str, policy: str) -> Path:
    (folder / "model.conf").write_text(model, encoding="utf-8")
    (folder / "policy.csv").write_text(policy, encoding="utf-8")
    return folder


def policy_config(folder: Path, extra: str = "") -> str:
    return f"""
[transport]
require_https = false
[policy]
model = "{folder / 'model.conf'}"
policy = "{folder / 'policy.csv'}"
reload = false
{extra}
"""


def guarded(folder: Path, identity: object, extra: str = "") -> GuardMiddleware:
    return GuardMiddleware(Starlette(routes=APP_ROUTES), config=config(policy_config(folder, extra)),
                           checks=[identity])


@pytest.fixture(scope="module")
def rbac_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = policy_dir(tmp_path_factory.mktemp("rbac"), RBAC_MODEL, RBAC_POLICY)
    with run_uvicorn(guarded(folder, ClaimsIdentity())) as url:
        yield url


def call(url: str, method: str, path: str, subject: str | None = None, roles: str = "",
         **kwargs: object) -> httpx.Response:
    headers = {"x-test-subject": subject, "x-test-roles": roles} if subject else {}
    return httpx.request(method, url + path, headers=headers, timeout=10, **kwargs)  # type: ignore[arg-type]


def chat(url: str, subject: str, model: str, roles: str = "") -> httpx.Response:
    return call(url, "POST", "/v1/chat/completions", subject, roles, json={"model": model, "messages": []})


def test_route_granted_to_a_role_of_the_identity_reaches_the_app(rbac_url: str) -> None:
    assert call(rbac_url, "GET", "/v1/models", "alice", roles="user").status_code == 200


def test_route_no_rule_grants_is_403_policy_denied(rbac_url: str) -> None:
    response = call(rbac_url, "GET", "/admin/keys", "alice", roles="user")
    assert response.status_code == 403
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("permission_error", "policy_denied")
    assert response.json()["request_id"]


def test_denial_reveals_nothing_of_the_policy(rbac_url: str) -> None:
    response = chat(rbac_url, "contractor", "small")
    assert response.status_code == 403
    text = response.text
    for secret in ("contractor", "model:small", "deny", "admin", "keyMatch", "policy.csv"):
        assert secret not in text


def test_chat_call_is_decided_on_the_model_named_in_its_body(rbac_url: str) -> None:
    assert chat(rbac_url, "alice", "small", roles="user").status_code == 200
    assert chat(rbac_url, "alice", "big", roles="user").status_code == 403


def test_role_from_the_policy_file_grants_the_bigger_model(rbac_url: str) -> None:
    assert chat(rbac_url, "carol", "big").status_code == 200


def test_deny_rule_wins_over_an_inherited_grant(rbac_url: str) -> None:
    assert chat(rbac_url, "contractor", "small").status_code == 403


def test_wildcard_route_grants_everything_below_it(rbac_url: str) -> None:
    assert call(rbac_url, "DELETE", "/admin/keys/k1", "carol").status_code == 200
    assert call(rbac_url, "DELETE", "/admin/keys/k1", "alice", roles="user").status_code == 403


def test_keymatch2_reads_a_colon_as_a_parameter_as_casbin_does(tmp_path: Path) -> None:
    folder = policy_dir(tmp_path, RBAC_MODEL.replace("keyMatch(", "keyMatch2("), RBAC_POLICY)
    policy = load_policy(folder / "model.conf", folder / "policy.csv")
    assert policy.decide("alice", "model:big", "chat", roles={"user"}).allowed


def test_model_named_in_the_body_of_another_route_grants_nothing(rbac_url: str) -> None:
    response = call(rbac_url, "POST", "/admin/keys", "alice", roles="user", json={"model": "small"})
    assert response.status_code == 403


def test_anonymous_call_is_decided_as_the_anonymous_subject(tmp_path: Path) -> None:
    folder = policy_dir(tmp_path, RBAC_MODEL, RBAC_POLICY)
    client = InProcess(guarded(folder, ClaimsIdentity(), extra="[identity]\nanonymous = true"))
    assert client.get("/public").status_code == 200
    assert client.get("/v1/models").json()["error"]["code"] == "policy_denied"


def test_header_identity_roles_are_role_assignments(tmp_path: Path) -> None:
    folder = policy_dir(tmp_path, RBAC_MODEL, RBAC_POLICY)
    client = InProcess(guarded(folder, HeaderIdentity()))
    assert client.get("/v1/models", headers={"x-test-subject": "dave"}).status_code == 200


def test_tenant_of_the_identity_is_the_domain(tmp_path: Path) -> None:
    client = InProcess(guarded(policy_dir(tmp_path, TENANT_MODEL, TENANT_POLICY), ClaimsIdentity()))
    as_acme = {"x-test-subject": "alice", "x-test-tenant": "acme"}
    as_globex = {"x-test-subject": "alice", "x-test-tenant": "globex"}
    assert client.get("/admin/keys", headers=as_acme).status_code == 200
    assert client.get("/admin/keys", headers=as_globex).status_code == 403


def test_token_role_applies_only_in_the_token_tenant(tmp_path: Path) -> None:
    client = InProcess(guarded(policy_dir(tmp_path, TENANT_MODEL, TENANT_POLICY), ClaimsIdentity()))
    headers = {"x-test-subject": "bob", "x-test-roles": "user", "x-test-tenant": "globex"}
    assert client.get("/v1/models", headers=headers).status_code == 200
    assert client.get("/v1/models", headers={**headers, "x-test-tenant": "acme"}).status_code == 403


def test_tier_claim_caps_max_tokens(tmp_path: Path) -> None:
    client = InProcess(guarded(policy_dir(tmp_path, TIER_MODEL, TIER_POLICY), ClaimsIdentity()))
    free = {"x-test-subject": "erin", "x-test-tier": "free"}

    def status(headers: dict[str, str], body: dict[str, object]) -> int:
        return client.post("/v1/chat/completions", headers=headers, json=body).status_code

    assert status(free, {"model": "small", "max_tokens": 200}) == 200
    assert status(free, {"model": "small", "max_tokens": 300}) == 403
    assert status(free, {"model": "small"}) == 403
    assert status({**free, "x-test-tier": "pro"}, {"model": "big", "max_tokens": 4000}) == 200
    assert status({"x-test-subject": "erin"}, {"model": "small", "max_tokens": 10}) == 403


def test_matcher_that_fails_on_a_request_refuses_it_with_503(tmp_path: Path) -> None:
    client = InProcess(guarded(policy_dir(tmp_path, TIER_MODEL, TIER_POLICY), ClaimsIdentity()))
    response = client.get("/orgs", headers={"x-test-subject": "erin"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "policy_error"


def test_report_mode_lets_a_denied_call_through(tmp_path: Path) -> None:
    folder = policy_dir(tmp_path, RBAC_MODEL, RBAC_POLICY)
    client = InProcess(guarded(folder, ClaimsIdentity(), extra='mode = "report"'))
    assert client.get("/admin/keys", headers={"x-test-subject": "alice"}).status_code == 200


def test_deciding_rule_is_left_for_the_audit_log(tmp_path: Path) -> None:
    folder = policy_dir(tmp_path, RBAC_MODEL, RBAC_POLICY)
    guard = Guard(config(policy_config(folder)))
    check = next(c for c in guard.pipeline.checks if isinstance(c, PolicyCheck))
    ctx = RequestContext("GET", "/v1/models", b"/v1/models", b"", [], "127.0.0.1", "http")
    ctx.identity = Identity(subject="dave", method="test", roles=frozenset({"user"}))
    assert check.check(ctx) is None
    rule = ctx.attributes["policy.rule"]
    assert (rule.values, rule.line) == (("user", "/v1/models", "GET", "allow"), 4)


def test_policy_line_of_the_wrong_size_refuses_to_start_naming_its_line(tmp_path: Path) -> None:
    folder = policy_dir(tmp_path, RBAC_MODEL, "p, user, /v1/models, GET, allow\n\np, user, /v1/chat\n")
    with pytest.raises(ConfigError) as refused:
        Guard(config(policy_config(folder)))
    assert str(refused.value).startswith(f"{folder / 'policy.csv'}:3: ")


def test_invalid_regular_expression_names_its_line(tmp_path: Path) -> None:
    model = RBAC_MODEL.replace("keyMatch(", "keyMatch2(")
    folder = policy_dir(tmp_path, model, "g, a, b\np, user, /v1/**, GET, allow\n")
    with pytest.raises(PolicyError) as refused:
        load_policy(folder / "model.conf", folder / "policy.csv")
    assert refused.value.line == 2
    assert "regular expression" in refused.value.message


def test_matcher_naming_an_undefined_field_names_the_matcher_line(tmp_path: Path) -> None:
    folder = policy_dir(tmp_path, RBAC_MODEL.replace("r.act == p.act", "r.act == p.action"), RBAC_POLICY)
    with pytest.raises(PolicyError) as refused:
        load_policy(folder / "model.conf", folder / "policy.csv")
    assert (refused.value.file, refused.value.line) == (str(folder / "model.conf"), 15)
    assert "p.action" in refused.value.message


def test_request_token_the_guard_cannot_fill_is_refused(tmp_path: Path) -> None:
    folder = policy_dir(tmp_path, RBAC_MODEL.replace("r = sub, obj, act", "r = sub, obj, act, ip"), RBAC_POLICY)
    with pytest.raises(PolicyError, match="'ip'"):
        load_policy(folder / "model.conf", folder / "policy.csv")


def test_unsupported_model_is_decided_by_casbin_and_says_why(tmp_path: Path) -> None:
    priority = RBAC_MODEL.replace("some(where (p.eft == allow)) && !some(where (p.eft == deny))",
                                  "priority(p.eft) || deny")
    folder = policy_dir(tmp_path, priority, RBAC_POLICY)
    policy = load_policy(folder / "model.conf", folder / "policy.csv")
    assert policy.engine == "casbin"
    assert "priority" in (policy.fallback_reason or "")
    assert policy.decide("alice", "/v1/models", "GET", roles={"user"}).allowed
    assert not policy.decide("alice", "/v1/models", "GET").allowed


def test_roles_for_lists_inherited_roles(tmp_path: Path) -> None:
    folder = policy_dir(tmp_path, RBAC_MODEL, RBAC_POLICY + "g, user, member\n")
    policy = load_policy(folder / "model.conf", folder / "policy.csv")
    assert policy.roles_for("contractor") == ["member", "user"]
    assert policy.roles_for("nobody") == []


def test_decision_names_the_rule_that_decided(tmp_path: Path) -> None:
    folder = policy_dir(tmp_path, RBAC_MODEL, RBAC_POLICY)
    policy = load_policy(folder / "model.conf", folder / "policy.csv")
    denied = policy.decide("contractor", "model:small", "chat")
    assert (denied.allowed, denied.rule and denied.rule.line) == (False, 9)
    assert str(denied.rule) == "p, contractor, model:small, chat, deny"
    assert policy.decide("nobody", "/v1/models", "GET").rule is None
    assert json.dumps(policy.decide("carol", "model:big", "chat").rule.values)  # type: ignore[union-attr]


def test_matcher_comparing_no_field_exactly_is_reported_as_a_full_scan(tmp_path: Path) -> None:
    regex_only = RBAC_MODEL.replace("g(r.sub, p.sub) && keyMatch(r.obj, p.obj) && r.act == p.act",
                                    "regexMatch(r.obj, p.obj) && regexMatch(r.act, p.act)")
    folder = policy_dir(tmp_path, RBAC_MODEL, RBAC_POLICY)
    assert not load_policy(folder / "model.conf", folder / "policy.csv").full_scan
    (folder / "model.conf").write_text(regex_only, encoding="utf-8")
    assert load_policy(folder / "model.conf", folder / "policy.csv").full_scan
