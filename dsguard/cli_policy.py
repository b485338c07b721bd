"""`dsguard policy lint|test|explain`: tooling for Casbin policies kept in git.

A policy directory holds ``model.conf``, ``policy.csv`` and ``tests.yaml`` (see policies/README.md).
Exit codes are made for CI: ``lint`` exits 1 on an error (or, with ``--strict``, a warning);
``test`` exits 1 when a case fails and 2 when a file is broken.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING
from xml.etree import ElementTree

import click

from .policy.tooling.files import MODEL_FILE, POLICY_FILE, TESTS_FILE, PolicyFileError, PolicyLine, split_policy_line

if TYPE_CHECKING:
    from .policy.tooling.cases import CallSettings, Case, Decider
    from .policy.tooling.lint import Finding

BROKEN = 2


@click.group("policy")
def policy_group() -> None:
    """Policy as code: lint, test and explain Casbin models and policies."""


@policy_group.command("lint")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path, dir_okay=False), metavar="[MODEL POLICY]")
@click.option("--dir", "directories", multiple=True, type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="A policy directory (model.conf, policy.csv, tests.yaml); repeatable.")
@click.option("--role", "roles", multiple=True,
              help="A role that tokens carry, so granting it is not reported as unassigned; repeatable.")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too.")
def policy_lint(files: tuple[Path, ...], directories: tuple[Path, ...], roles: tuple[str, ...], strict: bool) -> None:
    """Report problems in a model and policy, one `FILE:LINE: severity: message` line each."""
    if len(files) not in (0, 2):
        raise click.UsageError("expected MODEL and POLICY, or --dir DIR")
    targets: list[tuple[Path, Path, Path | None]] = [(files[0], files[1], None)] if files else []
    targets += [(d / MODEL_FILE, d / POLICY_FILE, d / TESTS_FILE) for d in directories]
    if not targets:
        raise click.UsageError("expected MODEL and POLICY, or --dir DIR")
    findings: list[Finding] = []
    for model_path, policy_path, tests_path in targets:
        findings += _lint_one(model_path, policy_path, tests_path, roles)
    for finding in findings:
        click.echo(str(finding))
    errors = sum(finding.severity == "error" for finding in findings)
    warnings = len(findings) - errors
    click.echo(f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}", err=True)
    if errors or (strict and warnings):
        raise SystemExit(1)


def _lint_one(model_path: Path, policy_path: Path, tests_path: Path | None, roles: tuple[str, ...]) -> list[Finding]:
    from .policy.tooling.cases import load_cases
    from .policy.tooling.files import read_model, read_policy
    from .policy.tooling.lint import Finding, lint

    known = set(roles)
    try:
        model = read_model(model_path)
        lines = read_policy(policy_path)
        if tests_path is not None and tests_path.exists():
            for case in load_cases(tests_path):
                if case.identity is not None:
                    known |= {case.identity.sub, *case.identity.roles}
    except PolicyFileError as exc:
        return [Finding(str(exc.path), exc.line or 1, "error", exc.message)]
    return lint(model, lines, known)


@policy_group.command("test")
@click.option("--dir", "directories", multiple=True, type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="A policy directory with model.conf, policy.csv and tests.yaml; repeatable (default: .).")
@click.option("--junit", "junit_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the results as JUnit XML for CI.")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="dsguard.toml whose [policy] actions and anonymous_subject shape the requests.")
def policy_test(directories: tuple[Path, ...], junit_path: Path | None, config_path: Path | None) -> None:
    """Run each directory's tests.yaml; exit 1 on a failed case, 2 on a broken file."""
    settings = _settings(config_path)
    results = [_run_directory(directory, settings) for directory in directories or (Path("."),)]
    passed = sum(len(result.passed) for result in results)
    failed = sum(len(result.failed) for result in results)
    broken = sum(result.error is not None for result in results)
    if junit_path is not None:
        _write_junit(junit_path, results)
    summary = f"{passed} passed, {failed} failed"
    if broken:
        summary += f", {broken} broken director{'ies' if broken != 1 else 'y'}"
    click.echo(summary)
    if broken:
        raise SystemExit(BROKEN)
    if failed:
        raise SystemExit(1)


@dataclasses.dataclass
class _Results:
    directory: Path
    passed: list[Case] = dataclasses.field(default_factory=list)
    failed: list[tuple[Case, str]] = dataclasses.field(default_factory=list)
    error: str | None = None


def _run_directory(directory: Path, settings: CallSettings) -> _Results:
    from .policy.tooling.cases import Decider, load_cases

    results = _Results(directory)
    tests_path = directory / TESTS_FILE
    try:
        decider = Decider(directory / MODEL_FILE, directory / POLICY_FILE, settings)
        cases = load_cases(tests_path)
        for case in cases:
            problem = _judge(decider, case, tests_path)
            if problem is None:
                results.passed.append(case)
                click.echo(f"PASS {case.name}")
            else:
                results.failed.append((case, problem))
                click.echo(f"FAIL {case.name}\n    {problem}")
    except PolicyFileError as exc:
        results.error = str(exc)
        click.echo(f"ERROR {exc}")
    return results


def _judge(decider: Decider, case: Case, tests_path: Path) -> str | None:
    from .policy import PolicyEvaluationError

    try:
        decision = decider.decide(case.identity, case.request)
    except PolicyEvaluationError as exc:
        raise PolicyFileError(tests_path, case.line, f"case {case.name!r}: the matcher fails on it: {exc}") from None
    where = f"{tests_path}:{case.line}"
    decided = _describe(decision.rule, decision.allowed)
    if decision.allowed != case.allow:
        return f"{where}: expected {'allow' if case.allow else 'deny'}, got {decided}"
    if case.rule is not None:
        expected = None if case.rule == "default" else split_policy_line(case.rule)
        actual = None if decision.rule is None else [decision.rule.ptype, *decision.rule.values]
        if expected != actual:
            return f"{where}: expected the decision to come from {case.rule!r}, got {decided}"
    return None


def _describe(rule: PolicyLine | None, allowed: bool) -> str:
    if rule is not None:
        return f"{'allow' if allowed else 'deny'} by {rule.where}: {rule.text}"
    return "allow: no deny rule matched (default allow)" if allowed else "deny: no rule matched (default deny)"


def _write_junit(path: Path, results: list[_Results]) -> None:
    suites = ElementTree.Element("testsuites")
    for result in results:
        failures = len(result.failed)
        suite = ElementTree.SubElement(suites, "testsuite", name=str(result.directory),
                                       tests=str(len(result.passed) + failures + (result.error is not None)),
                                       failures=str(failures), errors=str(int(result.error is not None)))
        for case in result.passed:
            ElementTree.SubElement(suite, "testcase", name=case.name, classname=str(result.directory))
        for case, problem in result.failed:
            element = ElementTree.SubElement(suite, "testcase", name=case.name, classname=str(result.directory))
            ElementTree.SubElement(element, "failure", message=problem)
        if result.error is not None:
            element = ElementTree.SubElement(suite, "testcase", name=TESTS_FILE, classname=str(result.directory))
            ElementTree.SubElement(element, "error", message=result.error)
    try:
        ElementTree.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
    except OSError as exc:
        raise click.ClickException(f"{path}: cannot write ({exc.strerror})") from None


@policy_group.command("explain")
@click.option("--dir", "directory", default=".", show_default=True,
              type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="The policy directory (model.conf and policy.csv).")
@click.option("--sub", required=True, help="Subject of the verified identity.")
@click.option("--roles", "roles", multiple=True, help="Roles from the token, comma-separated or repeated.")
@click.option("--scopes", "scopes", multiple=True, help="Scopes from the token, space-separated or repeated.")
@click.option("--tenant", help="Tenant of the identity (the domain).")
@click.option("--claim", "claims", multiple=True, metavar="NAME=VALUE",
              help="A token claim, VALUE as JSON or else text (repeatable).")
@click.option("--method", default="GET", show_default=True, help="HTTP method.")
@click.option("--path", "request_path", required=True, help="Request path, e.g. /v1/chat/completions.")
@click.option("--model", help="The model named in the JSON body of an LLM call.")
@click.option("--max-tokens", type=click.IntRange(min=0), help="max_tokens of the JSON body.")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="dsguard.toml whose [policy] actions shape the request.")
def policy_explain(directory: Path, sub: str, roles: tuple[str, ...], scopes: tuple[str, ...], tenant: str | None,
                   claims: tuple[str, ...], method: str, request_path: str, model: str | None,
                   max_tokens: int | None, config_path: Path | None) -> None:
    """Decide one request and name the rule that decided it."""
    from .policy import PolicyEvaluationError
    from .policy.tooling.cases import Decider, Identity, Request

    identity = Identity(sub, tuple(role.strip() for item in roles for role in item.split(",") if role.strip()),
                        tenant, _claims(claims), tuple(scope for item in scopes for scope in item.split()))
    try:
        decider = Decider(directory / MODEL_FILE, directory / POLICY_FILE, _settings(config_path))
        decision = decider.decide(identity, Request(method.upper(), request_path, model, max_tokens))
    except PolicyFileError as exc:
        raise click.ClickException(str(exc)) from None
    except PolicyEvaluationError as exc:
        raise click.ClickException(f"{directory / MODEL_FILE}: the matcher fails on this request: {exc}") from None
    shown = [repr(value) if isinstance(value, str) else "attrs" for value in decision.request]
    click.echo(f"request: ({', '.join(shown)})" + (f" with token roles {', '.join(identity.roles)}"
                                                    if identity.roles else ""))
    for value in decision.request:
        if isinstance(value, dict):
            click.echo(f"attrs: {_plain(value)!r}")
    click.echo(_describe(decision.rule, decision.allowed))


def _plain(value: object) -> object:
    return {key: _plain(item) for key, item in value.items()} if isinstance(value, dict) else value


def _settings(config_path: Path | None) -> CallSettings:
    from .config import load_config
    from .errors import ConfigError
    from .policy.tooling.cases import CallSettings

    if config_path is None:
        return CallSettings()
    try:
        policy = load_config(config_path).policy
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if policy is None:
        raise click.ClickException(f"{config_path}: no [policy] section")
    return CallSettings(dict(policy.actions), policy.anonymous_subject)


def _claims(items: tuple[str, ...]) -> dict[str, object]:
    claims: dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.ClickException(f"--claim {item!r}: expected NAME=VALUE")
        try:
            claims[name] = json.loads(value)
        except json.JSONDecodeError:
            claims[name] = value
    return claims

