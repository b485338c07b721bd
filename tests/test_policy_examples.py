"""The worked policies under policies/: each directory's tests.yaml passes and its files lint clean."""

from __future__ import annotations

from pathlib import Path

import casbin
import pytest
from click.testing import CliRunner, Result

from dsguard.cli import main
from dsguard.policy.tooling.cases import access, load_cases

POLICIES = Path(__file__).parent.parent / "policies"
EXAMPLES = ("abac-tier", "rbac-models", "rbac-tenants")


def dsguard(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_every_example_directory_is_tested() -> None:
    assert sorted(path.name for path in POLICIES.iterdir() if path.is_dir()) == sorted(EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_policy_passes_its_tests(example: str) -> None:
    result = dsguard("policy", "test", "--dir", str(POLICIES / example))
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output
    passed = result.output.count("PASS ")
    assert passed >= 10
    assert result.output.splitlines()[-1] == f"{passed} passed, 0 failed"


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_policy_lints_clean_in_strict_mode(example: str) -> None:
    result = dsguard("policy", "lint", "--strict", "--dir", str(POLICIES / example))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "0 errors, 0 warnings"


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_cases_hold_under_casbins_own_enforcer(example: str) -> None:
    directory = POLICIES / example
    enforcer = casbin.Enforcer(str(directory / "model.conf"), str(directory / "policy.csv"))
    tokens = [token[2:] for token in enforcer.model["r"]["r"].tokens]
    domains, has_roles = "dom" in tokens, enforcer.model["g"] is not None
    for case in load_cases(directory / "tests.yaml"):
        call = access(case.identity, case.request)
        values = {"sub": call.sub, "dom": call.dom or "", "obj": call.obj, "act": call.act, "attrs": call.attrs}
        links = [[call.sub, role, *([values["dom"]] if domains else [])] for role in sorted(call.roles) if has_roles]
        added = [link for link in links if enforcer.add_grouping_policy(*link)]
        try:
            allowed = enforcer.enforce(*(values[token] for token in tokens))
        finally:
            for link in added:
                enforcer.remove_grouping_policy(*link)
        assert allowed is case.allow, case.name


def test_all_examples_run_in_one_invocation() -> None:
    result = dsguard("policy", "test", *(arg for example in EXAMPLES for arg in ("--dir", str(POLICIES / example))))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].endswith(" passed, 0 failed")
