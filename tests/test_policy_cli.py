"""`dsguard policy lint|test|explain` on policies planted with known problems."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner, Result

from dsguard.cli import main

POLICIES = Path(__file__).parent.parent / "policies"

RBAC_MODEL = """\
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

RBAC_POLICY = """\
g, analyst, user
g, admin, analyst
p, user, /v1/models, GET, allow
p, analyst, model:small, chat, allow
p, admin, model:large, chat, allow
p, intern, model:small, chat, deny
"""

PASSING_CASE = """\
- name: an analyst chats with the small model
  identity: {sub: bob, roles: [analyst]}
  request: {method: POST, path: /v1/chat/completions, model: small}
  expect: allow
"""


def dsguard(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def policy_dir(tmp_path: Path, policy: str = RBAC_POLICY, tests: str = PASSING_CASE, model: str = RBAC_MODEL) -> Path:
    (tmp_path / "model.conf").write_text(model)
    (tmp_path / "policy.csv").write_text(policy)
    (tmp_path / "tests.yaml").write_text(tests)
    return tmp_path


def lint(directory: Path, *options: str) -> Result:
    return dsguard("policy", "lint", str(directory / "model.conf"), str(directory / "policy.csv"), *options)


# --- lint ---------------------------------------------------------------------------------------------------------


def test_lint_of_a_clean_policy_exits_zero(tmp_path: Path) -> None:
    result = lint(policy_dir(tmp_path), "--role", "intern")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "0 errors, 0 warnings"


def test_lint_warns_of_a_role_granted_but_never_assigned(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, RBAC_POLICY + "p, anlyst, model:large, chat, allow\n")
    result = lint(directory, "--role", "intern")
    assert result.exit_code == 0
    assert f"{directory / 'policy.csv'}:7: warning: 'anlyst' is granted permissions but never assigned" in result.output


def test_lint_strict_turns_warnings_into_exit_one(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, RBAC_POLICY + "p, anlyst, model:large, chat, allow\n")
    assert lint(directory, "--role", "intern", "--strict").exit_code == 1


def test_lint_takes_roles_named_in_the_test_cases_as_assigned(tmp_path: Path) -> None:
    tests = PASSING_CASE + """\
- name: an intern may not chat
  identity: {sub: ian, roles: [intern]}
  request: {method: POST, path: /v1/chat/completions, model: small}
  expect: deny
"""
    result = dsguard("policy", "lint", "--strict", "--dir", str(policy_dir(tmp_path, tests=tests)))
    assert result.exit_code == 0, result.output


def test_lint_warns_of_a_role_assigned_but_granting_nothing(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, "g, bob, auditor\n" + RBAC_POLICY)
    result = lint(directory, "--role", "intern")
    assert "policy.csv:1: warning: role 'auditor' is assigned here but grants nothing" in result.output


def test_lint_warns_of_a_duplicate_line(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, RBAC_POLICY + "p, user, /v1/models, GET, allow\n")
    result = lint(directory, "--role", "intern")
    assert result.exit_code == 0
    assert f"{directory / 'policy.csv'}:7: warning: duplicate of line 3" in result.output


def test_lint_warns_of_an_allow_already_granted_through_inheritance(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, RBAC_POLICY + "p, admin, model:small, chat, allow\n")
    result = lint(directory, "--role", "intern")
    assert "policy.csv:7: warning: redundant: line 4 already allows every request it matches" in result.output


def test_lint_warns_of_an_allow_that_a_deny_always_overrides(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, RBAC_POLICY + "p, intern, model:small, chat, allow\n")
    result = lint(directory)
    assert "policy.csv:7: warning: never allows: line 6 denies every request it matches" in result.output


def test_lint_warns_of_a_deny_that_no_allow_could_reach(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, RBAC_POLICY + "p, intern, /admin/keys, DELETE, deny\n")
    result = lint(directory, "--role", "intern")
    assert "policy.csv:7: warning: unreachable deny: no allow rule matches the requests it denies" in result.output


def test_lint_rejects_a_deny_rule_under_an_allow_only_effect(tmp_path: Path) -> None:
    model = RBAC_MODEL.replace(" && !some(where (p.eft == deny))", "")
    result = lint(policy_dir(tmp_path, model=model), "--role", "intern")
    assert result.exit_code == 1
    assert "policy.csv:6: error: deny rule has no effect" in result.output


def test_lint_rejects_a_wildcard_granted_to_the_base_role(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, RBAC_POLICY + "p, user, model:*, chat, allow\n")
    result = lint(directory, "--role", "intern")
    assert result.exit_code == 1
    assert (f"{directory / 'policy.csv'}:7: error: obj 'model:*' matches every model and is granted to the base "
            "role 'user'") in result.output


def test_lint_warns_of_a_wildcard_granted_to_a_narrow_role(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, RBAC_POLICY + "p, admin, *, GET, allow\n")
    result = lint(directory, "--role", "intern")
    assert result.exit_code == 0
    assert "policy.csv:7: warning: obj '*' matches everything; granted to 'admin'" in result.output


def test_lint_explains_that_keymatch2_reads_model_names_as_parameters(tmp_path: Path) -> None:
    model = RBAC_MODEL.replace("keyMatch(", "keyMatch2(")
    result = lint(policy_dir(tmp_path, model=model), "--role", "intern")
    assert ("policy.csv:4: warning: obj 'model:small' matches every model (keyMatch2 reads ':name' as a path "
            "parameter); granted to 'analyst'") in result.output


def test_lint_rejects_a_line_of_the_wrong_arity(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, RBAC_POLICY + "p, admin, /admin/keys, GET\n")
    result = lint(directory, "--role", "intern")
    assert result.exit_code == 1
    assert (f"{directory / 'policy.csv'}:7: error: p line has 3 fields, the model expects 4 (sub, obj, act, eft)"
            in result.output)


def test_lint_rejects_a_policy_type_the_model_does_not_define(tmp_path: Path) -> None:
    result = lint(policy_dir(tmp_path, RBAC_POLICY + "g2, bob, admin\n"), "--role", "intern")
    assert result.exit_code == 1
    assert "policy.csv:7: error: unknown policy type 'g2': the model defines p, g (casbin would ignore this line)" \
        in result.output


def test_lint_rejects_an_effect_that_is_neither_allow_nor_deny(tmp_path: Path) -> None:
    result = lint(policy_dir(tmp_path, RBAC_POLICY + "p, admin, /x, GET, denny\n"), "--role", "intern")
    assert result.exit_code == 1
    assert "policy.csv:7: error: effect 'denny' is neither allow nor deny" in result.output


def test_lint_rejects_a_matcher_field_the_model_does_not_define(tmp_path: Path) -> None:
    model = RBAC_MODEL.replace("r.act == p.act", "r.act == p.action")
    result = lint(policy_dir(tmp_path, model=model), "--role", "intern")
    assert result.exit_code == 1
    assert "model.conf:14: error: matcher uses p.action, which policy_definition does not define" in result.output


def test_lint_reports_a_model_without_matchers_as_an_error_finding(tmp_path: Path) -> None:
    model = RBAC_MODEL.split("[matchers]")[0]
    result = lint(policy_dir(tmp_path, model=model))
    assert result.exit_code == 1
    assert f"{tmp_path / 'model.conf'}:1: error: missing [matchers] with m = ..." in result.output
    assert "Traceback" not in result.output


def test_lint_warns_of_a_default_allow_effect(tmp_path: Path) -> None:
    model = RBAC_MODEL.replace("some(where (p.eft == allow)) && !some", "!some")
    result = lint(policy_dir(tmp_path, model=model), "--role", "intern")
    assert "model.conf:11: warning: default allow: every request no deny rule matches is allowed" in result.output


def test_lint_without_files_is_a_usage_error() -> None:
    result = dsguard("policy", "lint")
    assert result.exit_code == 2
    assert "expected MODEL and POLICY, or --dir DIR" in result.output


# --- test ---------------------------------------------------------------------------------------------------------

FAILING_CASE = """\
- name: an analyst chats with the large model
  identity: {sub: bob, roles: [analyst]}
  request: {method: POST, path: /v1/chat/completions, model: large}
  expect: allow
"""


def test_a_failing_case_makes_policy_test_exit_one_and_names_it(tmp_path: Path) -> None:
    result = dsguard("policy", "test", "--dir", str(policy_dir(tmp_path, tests=PASSING_CASE + FAILING_CASE)))
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == "PASS an analyst chats with the small model"
    assert lines[1] == "FAIL an analyst chats with the large model"
    assert lines[2].strip() == f"{tmp_path / 'tests.yaml'}:5: expected allow, got deny: no rule matched (default deny)"
    assert lines[-1] == "1 passed, 1 failed"


def test_a_case_that_names_the_wrong_deciding_rule_fails(tmp_path: Path) -> None:
    tests = PASSING_CASE + "  rule: p, user, /v1/models, GET, allow\n"
    result = dsguard("policy", "test", "--dir", str(policy_dir(tmp_path, tests=tests)))
    assert result.exit_code == 1
    assert "expected the decision to come from 'p, user, /v1/models, GET, allow', got allow by" in result.output
    assert "policy.csv:4: p, analyst, model:small, chat, allow" in result.output


def test_roles_from_one_case_do_not_leak_into_the_next(tmp_path: Path) -> None:
    tests = PASSING_CASE + """\
- name: the same subject without the role in its token
  identity: {sub: bob}
  request: {method: POST, path: /v1/chat/completions, model: small}
  expect: deny
"""
    result = dsguard("policy", "test", "--dir", str(policy_dir(tmp_path, tests=tests)))
    assert result.exit_code == 0, result.output


def test_a_token_role_also_assigned_in_the_policy_file_stays_assigned(tmp_path: Path) -> None:
    tests = """\
- name: carol's token repeats the role the policy gives her
  identity: {sub: carol, roles: [admin]}
  request: {method: POST, path: /v1/chat/completions, model: large}
  expect: allow
- name: carol keeps the role the policy gives her
  identity: {sub: carol}
  request: {method: POST, path: /v1/chat/completions, model: large}
  expect: allow
"""
    result = dsguard("policy", "test", "--dir", str(policy_dir(tmp_path, "g, carol, admin\n" + RBAC_POLICY, tests)))
    assert result.exit_code == 0, result.output


def test_a_case_without_identity_is_decided_as_the_anonymous_subject(tmp_path: Path) -> None:
    tests = """\
- name: the model list is public
  identity: null
  request: {method: GET, path: /v1/models}
  expect: allow
  rule: p, anonymous, /v1/models, GET, allow
"""
    directory = policy_dir(tmp_path, RBAC_POLICY + "p, anonymous, /v1/models, GET, allow\n", tests)
    result = dsguard("policy", "test", "--dir", str(directory))
    assert result.exit_code == 0, result.output


def test_config_supplies_the_llm_routes_and_the_anonymous_subject(tmp_path: Path) -> None:
    tests = """\
- name: a chat on the app's own route is decided on the model
  identity: {sub: bob, roles: [analyst]}
  request: {method: POST, path: /api/chat, model: small}
  expect: allow
- name: an anonymous call is decided as the configured subject
  request: {method: GET, path: /v1/models}
  expect: allow
"""
    directory = policy_dir(tmp_path, RBAC_POLICY + "p, guest, /v1/models, GET, allow\n", tests)
    config = tmp_path / "dsguard.toml"
    config.write_text('[policy]\nmodel = "model.conf"\npolicy = "policy.csv"\nanonymous_subject = "guest"\n'
                      '[policy.actions]\n"/api/chat" = "chat"\n')
    assert dsguard("policy", "test", "--dir", str(directory)).exit_code == 1
    result = dsguard("policy", "test", "--dir", str(directory), "--config", str(config))
    assert result.exit_code == 0, result.output


def test_invalid_yaml_is_a_broken_file_exit_two(tmp_path: Path) -> None:
    result = dsguard("policy", "test", "--dir", str(policy_dir(tmp_path, tests=PASSING_CASE + "- name: [unclosed\n")))
    assert result.exit_code == 2
    assert f"ERROR {tmp_path / 'tests.yaml'}:6: not valid YAML" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("written", "mistake", "message"), [
    ("expect: allow", "expect: maybe", "expect must be allow or deny, not 'maybe'"),
    ("model: small}", "modle: small}", "request: unknown key 'modle'"),
    ("sub: bob,", "sub: '',", "identity.sub must be a non-empty string"),
])
def test_a_malformed_case_is_a_broken_file_naming_its_line(tmp_path: Path, written: str, mistake: str,
                                                           message: str) -> None:
    tests = PASSING_CASE + PASSING_CASE.replace("small model", "model again").replace(written, mistake)
    result = dsguard("policy", "test", "--dir", str(policy_dir(tmp_path, tests=tests)))
    assert result.exit_code == 2
    assert f"{tmp_path / 'tests.yaml'}:5: case 'an analyst chats with the model again': {message}" in result.output


def test_a_policy_line_of_the_wrong_arity_is_a_broken_file(tmp_path: Path) -> None:
    result = dsguard("policy", "test", "--dir", str(policy_dir(tmp_path, RBAC_POLICY + "p, admin, /x, GET\n")))
    assert result.exit_code == 2
    assert f"ERROR {tmp_path / 'policy.csv'}:7: p line has 3 fields, the model expects 4" in result.output
    assert result.output.splitlines()[-1] == "0 passed, 0 failed, 1 broken directory"


def test_junit_report_records_passes_and_failures(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, tests=PASSING_CASE + FAILING_CASE)
    report = tmp_path / "policy-tests.xml"
    result = dsguard("policy", "test", "--dir", str(directory), "--junit", str(report))
    assert result.exit_code == 1
    suite = ElementTree.parse(report).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "0")
    failed = [case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None]
    assert failed == ["an analyst chats with the large model"]


# --- explain ------------------------------------------------------------------------------------------------------


def explain(directory: Path, *args: str) -> Result:
    return dsguard("policy", "explain", "--dir", str(directory), *args)


def test_explain_names_the_rule_that_allowed(tmp_path: Path) -> None:
    result = explain(policy_dir(tmp_path), "--sub", "bob", "--roles", "analyst", "--method", "POST",
                     "--path", "/v1/chat/completions", "--model", "small")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "request: ('bob', 'model:small', 'chat') with token roles analyst",
        f"allow by {tmp_path / 'policy.csv'}:4: p, analyst, model:small, chat, allow",
    ]


def test_explain_names_the_deny_rule_that_decided(tmp_path: Path) -> None:
    result = explain(policy_dir(tmp_path), "--sub", "ian", "--roles", "analyst,intern", "--method", "POST",
                     "--path", "/v1/chat/completions", "--model", "small")
    assert result.output.splitlines()[-1] == f"deny by {tmp_path / 'policy.csv'}:6: p, intern, model:small, chat, deny"


def test_explain_says_when_no_rule_matched(tmp_path: Path) -> None:
    result = explain(policy_dir(tmp_path), "--sub", "bob", "--roles", "analyst", "--path", "/admin/keys")
    assert result.exit_code == 0
    assert result.output.splitlines()[-1] == "deny: no rule matched (default deny)"


def test_explain_decides_in_the_tenant_of_the_identity() -> None:
    args = ("--sub", "alice", "--method", "POST", "--path", "/v1/chat/completions", "--model", "deepseek-r1-70b")
    assert explain(POLICIES / "rbac-tenants", *args, "--tenant", "tenant-a").output.splitlines()[-1].startswith(
        "allow by ")
    assert explain(POLICIES / "rbac-tenants", *args, "--tenant", "tenant-b").output.splitlines()[-1] == \
        "deny: no rule matched (default deny)"


def test_explain_reads_claims_and_max_tokens_for_abac() -> None:
    args = ("--sub", "u1", "--claim", "tier=free", "--method", "POST", "--path", "/v1/chat/completions",
            "--model", "deepseek-r1-distill-qwen-1.5b")
    assert explain(POLICIES / "abac-tier", *args, "--max-tokens", "200").output.splitlines()[-1].startswith(
        "allow by ")
    assert explain(POLICIES / "abac-tier", *args, "--max-tokens", "300").output.splitlines()[-1] == \
        "deny: no rule matched (default deny)"


def test_explain_on_a_broken_policy_is_a_clear_error(tmp_path: Path) -> None:
    result = explain(policy_dir(tmp_path, RBAC_POLICY + "p, admin, /x\n"), "--sub", "bob", "--path", "/")
    assert result.exit_code == 1
    assert f"Error: {tmp_path / 'policy.csv'}:7: p line has 2 fields" in result.output
    assert "Traceback" not in result.output


# --- ABAC ---------------------------------------------------------------------------------------------------------

ABAC_MODEL = """\
[request_definition]
r = sub, obj, act, attrs

[policy_definition]
p = rule, obj, act

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = keyMatch(r.obj, p.obj) && r.act == p.act && eval(p.rule)
"""

EMBED_CASE = """\
- name: a token with the embed scope builds embeddings
  identity: {sub: svc, scopes: [embed]}
  request: {method: POST, path: /v1/embeddings, model: small}
  expect: allow
- name: a token without it may not
  identity: {sub: svc, scopes: [chat]}
  request: {method: POST, path: /v1/embeddings, model: small}
  expect: deny
"""


def test_scopes_of_the_identity_reach_the_attributes(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, 'p, "embed" in r.attrs.scopes, model:*, embed\n', EMBED_CASE, ABAC_MODEL)
    result = dsguard("policy", "test", "--dir", str(directory))
    assert result.exit_code == 0, result.output


def test_lint_rejects_an_abac_rule_naming_no_request_field(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, "p, r.attrs.claims.tier == free, /v1/models, GET\n", model=ABAC_MODEL)
    result = lint(directory)
    assert result.exit_code == 1
    assert f"{directory / 'policy.csv'}:1: error: rule uses free, which is not a request field" in result.output


def test_a_matcher_that_fails_on_a_case_is_a_broken_file(tmp_path: Path) -> None:
    tests = """\
- name: a request the condition cannot compare
  identity: {sub: svc}
  request: {method: GET, path: /v1/models}
  expect: deny
"""
    directory = policy_dir(tmp_path, 'p, r.attrs.max_tokens < "many", /v1/models, GET\n', tests, ABAC_MODEL)
    result = dsguard("policy", "test", "--dir", str(directory))
    assert result.exit_code == 2
    assert f"ERROR {directory / 'tests.yaml'}:1: case 'a request the condition cannot compare': the matcher fails" \
        in result.output
