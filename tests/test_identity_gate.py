"""The identity gate: calls no identity check identified are refused once [identity] is configured."""

from __future__ import annotations

from dsguard import GuardMiddleware
from dsguard.guard import Guard

from .helpers import HeaderIdentity, InProcess, config, starlette_app

GATED = """
[transport]
require_https = false
[identity]
public_paths = ["/healthz", "/public/*"]
"""


def gated(text: str = GATED) -> InProcess:
    return InProcess(GuardMiddleware(starlette_app(), config=config(text), checks=[HeaderIdentity()]))


def test_a_call_without_identity_is_401_with_a_bearer_challenge() -> None:
    response = gated().get("/whoami")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"
    assert response.headers["www-authenticate"] == 'Bearer realm="dsguard"'


def test_an_identity_from_a_plugin_check_of_the_identity_stage_passes_the_gate() -> None:
    assert gated().get("/whoami", headers={"x-test-subject": "alice"}).json()["subject"] == "alice"


def test_the_gate_runs_after_every_identity_check_whatever_their_order() -> None:
    guard = Guard(config(GATED), checks=[HeaderIdentity()])
    assert [c.name for c in guard.pipeline.checks][-2:] == ["test-identity", "identity-required"]


def test_public_paths_exact_and_prefix_need_no_identity() -> None:
    http = gated()
    assert http.get("/healthz").status_code == 404
    assert http.get("/public/docs").status_code == 404
    assert http.get("/healthz/x").status_code == 401
    assert http.get("/publicity").status_code == 401


def test_anonymous_calls_can_be_allowed_explicitly() -> None:
    http = gated(GATED + "anonymous = true\n")
    assert http.get("/whoami").json()["subject"] is None


def test_no_identity_section_means_no_gate() -> None:
    assert "identity-required" not in [c.name for c in Guard(config()).pipeline.checks]
