"""RFC 7662 introspection of opaque tokens against a real authorization server over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from flask import Flask, request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dsguard import GuardMiddleware, GuardWSGIMiddleware
from dsguard.checks.introspection import IntrospectionCheck

from .conftest import free_port, run_uvicorn, run_werkzeug
from .helpers import config
from .idp import OPAQUE_SERVICE, IdentityProvider, identity_provider  # noqa: F401

SECRET_ENV = "DSGUARD_INTROSPECTION_SECRET"


def introspection_config(url: str, hygiene: str = "", **options: Any) -> str:
    lines = [f"{key} = {json.dumps(value)}" for key, value in options.items()]
    return "\n".join([
        "[transport]", "require_https = false", "[hygiene]", hygiene,
        "[identity.introspection]", f'url = "{url}"', 'client_id = "dsguard"', f'client_secret = "env:{SECRET_ENV}"',
        *lines, "",
    ])


async def whoami(request: Request) -> JSONResponse:
    identity = request.state.identity
    attributes = request.state.dsguard.attributes
    return JSONResponse({
        "subject": identity.subject, "method": identity.method, "issuer": identity.issuer,
        "scopes": sorted(identity.scopes), "roles": sorted(identity.roles), "token_id": identity.token_id,
        "client_id": identity.claims.get("client_id"), "auth_scheme": attributes.get("auth_scheme"),
        "token_handed_on": attributes.get("access_token") == request.headers["authorization"].split(" ", 1)[1],
    })


@pytest.fixture(autouse=True)
def introspection_secret(monkeypatch: pytest.MonkeyPatch, idp: IdentityProvider) -> None:
    monkeypatch.setenv(SECRET_ENV, idp.introspection_secret)


@contextmanager
def guarded_app(url: str, hygiene: str = "", **options: Any) -> Iterator[tuple[httpx.Client, IntrospectionCheck]]:
    """A Starlette app behind the guard, served by uvicorn; yields a client and the check."""
    middleware = GuardMiddleware(Starlette(routes=[Route("/whoami", whoami)]),
                                 config=config(introspection_config(url, hygiene, **options)))
    check = next(c for c in middleware.guard.pipeline.checks if isinstance(c, IntrospectionCheck))
    with run_uvicorn(middleware) as base, httpx.Client(base_url=base, timeout=10) as http:
        yield http, check


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def test_an_active_opaque_token_reaches_the_app_as_the_introspected_caller(idp: IdentityProvider) -> None:
    token = idp.mint("alice", scope="chat:write models:read", opaque=True)
    with guarded_app(f"{idp.url}/introspect") as (http, _):
        response = http.get("/whoami", headers=bearer(token))
    assert response.status_code == 200
    body = response.json()
    assert (body["subject"], body["method"], body["issuer"]) == ("alice", "introspection", idp.issuer)
    assert body["scopes"] == ["chat:write", "models:read"]
    assert body["roles"] == ["user"]
    assert body["token_id"] == idp.issued(token).jti


def test_a_client_credentials_token_identifies_the_service(idp: IdentityProvider) -> None:
    token = idp.mint(OPAQUE_SERVICE, client_id=OPAQUE_SERVICE)
    with guarded_app(f"{idp.url}/introspect") as (http, _):
        body = http.get("/whoami", headers=bearer(token)).json()
    assert (body["subject"], body["client_id"], body["roles"]) == (OPAQUE_SERVICE, OPAQUE_SERVICE, ["service"])


def test_the_scheme_and_token_are_handed_on_for_the_sender_constraint_check(idp: IdentityProvider) -> None:
    with guarded_app(f"{idp.url}/introspect") as (http, _):
        body = http.get("/whoami", headers=bearer(idp.mint(opaque=True))).json()
    assert body["auth_scheme"] == "Bearer" and body["token_handed_on"] is True


def test_a_revoked_token_is_refused_401_token_inactive_with_an_invalid_token_challenge(
        idp: IdentityProvider) -> None:
    token = idp.mint(opaque=True)
    idp.revoke(token)
    with guarded_app(f"{idp.url}/introspect") as (http, _):
        response = http.get("/whoami", headers=bearer(token))
    assert response.status_code == 401 and error_code(response) == "token_inactive"
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert token not in response.text and token not in response.headers["www-authenticate"]


def test_an_unknown_token_is_refused_as_inactive(idp: IdentityProvider) -> None:
    with guarded_app(f"{idp.url}/introspect") as (http, _):
        response = http.get("/whoami", headers=bearer("never-issued-by-this-server"))
    assert response.status_code == 401 and error_code(response) == "token_inactive"


def test_a_second_call_with_the_same_token_is_answered_from_the_cache(idp: IdentityProvider) -> None:
    token = idp.mint(opaque=True)
    with guarded_app(f"{idp.url}/introspect") as (http, _):
        first = http.get("/whoami", headers=bearer(token))
        second = http.get("/whoami", headers=bearer(token))
    assert first.status_code == second.status_code == 200
    assert idp.hits["introspect"] == 1


def test_an_inactive_answer_is_cached_too(idp: IdentityProvider) -> None:
    with guarded_app(f"{idp.url}/introspect") as (http, _):
        statuses = [http.get("/whoami", headers=bearer("not-a-real-token")).status_code for _ in range(3)]
    assert statuses == [401, 401, 401]
    assert idp.hits["introspect"] == 1


def test_a_cached_answer_does_not_outlive_the_token(idp: IdentityProvider) -> None:
    token = idp.mint(opaque=True, ttl=60)
    expires = idp.issued(token).issued_at + 60
    with guarded_app(f"{idp.url}/introspect", cache_ttl="1h") as (http, check):
        now = [float(expires - 30)]
        check.clock = lambda: now[0]
        http.get("/whoami", headers=bearer(token))
        now[0] = expires - 1.0
        http.get("/whoami", headers=bearer(token))
        assert idp.hits["introspect"] == 1
        now[0] = expires + 1.0
        http.get("/whoami", headers=bearer(token))
    assert idp.hits["introspect"] == 2


def test_a_cached_answer_is_asked_again_after_cache_ttl(idp: IdentityProvider) -> None:
    token = idp.mint(opaque=True)
    with guarded_app(f"{idp.url}/introspect", cache_ttl="10s") as (http, check):
        now = [1_000_000.0]
        check.clock = lambda: now[0]
        http.get("/whoami", headers=bearer(token))
        now[0] += 11
        http.get("/whoami", headers=bearer(token))
    assert idp.hits["introspect"] == 2


def test_the_cache_keeps_at_most_cache_size_answers(idp: IdentityProvider) -> None:
    first, second, third = (idp.mint(opaque=True) for _ in range(3))
    with guarded_app(f"{idp.url}/introspect", cache_size=2) as (http, check):
        for token in (first, second, third, second, third):
            assert http.get("/whoami", headers=bearer(token)).status_code == 200
        assert idp.hits["introspect"] == 3 and len(check.cache) == 2
        http.get("/whoami", headers=bearer(first))
    assert idp.hits["introspect"] == 4


def test_concurrent_calls_with_one_new_token_share_one_introspection(idp: IdentityProvider) -> None:
    token = idp.mint(opaque=True)
    idp.stall(0.2)
    with guarded_app(f"{idp.url}/introspect") as (http, _):

        async def burst() -> list[int]:
            async with httpx.AsyncClient(base_url=str(http.base_url), timeout=10) as client:
                calls = [client.get("/whoami", headers=bearer(token)) for _ in range(8)]
                return [r.status_code for r in await asyncio.gather(*calls)]

        statuses = asyncio.run(burst())
    assert statuses == [200] * 8
    assert idp.hits["introspect"] == 1


def test_an_identity_provider_that_is_down_refuses_with_503_idp_unavailable(
        idp: IdentityProvider) -> None:
    idp.down()
    with guarded_app(f"{idp.url}/introspect") as (http, _):
        response = http.get("/whoami", headers=bearer(idp.mint(opaque=True)))
    assert response.status_code == 503 and error_code(response) == "idp_unavailable"
    assert int(response.headers["retry-after"]) >= 1


def test_an_unreachable_endpoint_refuses_with_503(idp: IdentityProvider) -> None:
    with guarded_app(f"http://127.0.0.1:{free_port()}/introspect") as (http, _):
        response = http.get("/whoami", headers=bearer(idp.mint(opaque=True)))
    assert response.status_code == 503 and error_code(response) == "idp_unavailable"


def test_an_endpoint_slower_than_the_timeout_refuses_with_503(idp: IdentityProvider) -> None:
    idp.stall(2.0)
    with guarded_app(f"{idp.url}/introspect", timeout="100ms") as (http, _):
        response = http.get("/whoami", headers=bearer(idp.mint(opaque=True)))
    assert response.status_code == 503 and error_code(response) == "idp_unavailable"


def test_a_non_json_answer_refuses_with_503(idp: IdentityProvider) -> None:
    idp.break_endpoint("introspect", 200, b"<html>maintenance</html>")
    with guarded_app(f"{idp.url}/introspect") as (http, _):
        response = http.get("/whoami", headers=bearer(idp.mint(opaque=True)))
    assert response.status_code == 503 and error_code(response) == "idp_unavailable"


def test_an_answer_whose_active_is_not_a_boolean_refuses_with_503(idp: IdentityProvider) -> None:
    idp.break_endpoint("introspect", 200, b'{"active": "true", "sub": "mallory"}', "application/json")
    with guarded_app(f"{idp.url}/introspect") as (http, _):
        response = http.get("/whoami", headers=bearer(idp.mint(opaque=True)))
    assert response.status_code == 503 and error_code(response) == "idp_unavailable"


def test_a_rejected_client_secret_is_logged_and_refused_with_503(
        idp: IdentityProvider, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(SECRET_ENV, "not-the-secret")
    caplog.set_level(logging.ERROR, logger="dsguard")
    with guarded_app(f"{idp.url}/introspect") as (http, _):
        response = http.get("/whoami", headers=bearer(idp.mint(opaque=True)))
    assert response.status_code == 503 and error_code(response) == "idp_unavailable"
    assert "HTTP 401" in caplog.text and "client_secret" in caplog.text
    assert "not-the-secret" not in caplog.text and "not-the-secret" not in response.text


def test_client_secret_basic_is_the_default_authentication(idp: IdentityProvider) -> None:
    with guarded_app(f"{idp.url}/introspect") as (http, _):
        assert http.get("/whoami", headers=bearer(idp.mint(opaque=True))).status_code == 200
    assert idp.introspection_auth_methods == ["client_secret_basic"]


def test_client_secret_post_authenticates_to_the_endpoint(idp: IdentityProvider) -> None:
    with guarded_app(f"{idp.url}/introspect", auth_method="client_secret_post") as (http, _):
        assert http.get("/whoami", headers=bearer(idp.mint(opaque=True))).status_code == 200
    assert idp.introspection_auth_methods == ["client_secret_post"]


def test_an_outage_is_not_hammered_by_new_tokens(idp: IdentityProvider) -> None:
    tokens = [idp.mint(opaque=True) for _ in range(5)]
    idp.down()
    with guarded_app(f"{idp.url}/introspect") as (http, check):
        check.clock = lambda: 1_000_000.0
        statuses = [http.get("/whoami", headers=bearer(t)).status_code for t in tokens]
    assert statuses == [503] * 5
    assert idp.hits["introspect"] == 1


def test_the_endpoint_is_asked_again_once_the_outage_backoff_has_passed(idp: IdentityProvider) -> None:
    token = idp.mint(opaque=True)
    idp.down()
    with guarded_app(f"{idp.url}/introspect") as (http, check):
        now = [1_000_000.0]
        check.clock = lambda: now[0]
        assert http.get("/whoami", headers=bearer(token)).status_code == 503
        idp.up()
        now[0] += 60
        response = http.get("/whoami", headers=bearer(token))
    assert response.status_code == 200


def test_cached_tokens_keep_working_while_the_identity_provider_is_down(idp: IdentityProvider) -> None:
    token = idp.mint(opaque=True)
    with guarded_app(f"{idp.url}/introspect") as (http, _):
        assert http.get("/whoami", headers=bearer(token)).status_code == 200
        idp.down()
        assert http.get("/whoami", headers=bearer(token)).status_code == 200


def test_a_revoked_jti_is_refused_even_when_the_answer_is_cached(idp: IdentityProvider) -> None:
    token = idp.mint(opaque=True)
    with guarded_app(f"{idp.url}/introspect") as (http, check):
        assert http.get("/whoami", headers=bearer(token)).status_code == 200
        asyncio.run(check.storage.put(f"revoked:{idp.issued(token).jti}", 900))
        response = http.get("/whoami", headers=bearer(token))
    assert response.status_code == 401 and error_code(response) == "token_revoked"
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert idp.hits["introspect"] == 1


def test_an_oversized_token_is_refused_without_asking_the_identity_provider(
        idp: IdentityProvider) -> None:
    with guarded_app(f"{idp.url}/introspect", hygiene='max_header_bytes = "16KiB"') as (http, _):
        response = http.get("/whoami", headers=bearer("a" * 9000))
    assert response.status_code == 401 and error_code(response) == "token_too_large"
    assert idp.hits["introspect"] == 0


def test_a_token_outside_the_bearer_alphabet_is_refused_without_asking(idp: IdentityProvider) -> None:
    with guarded_app(f"{idp.url}/introspect") as (http, _):
        response = http.get("/whoami", headers=bearer('abc"def'))
    assert response.status_code == 401 and error_code(response) == "malformed_token"
    assert idp.hits["introspect"] == 0


def test_a_call_without_a_token_is_left_to_the_identity_gate(idp: IdentityProvider) -> None:
    with guarded_app(f"{idp.url}/introspect") as (http, _):
        response = http.get("/whoami")
    assert response.status_code == 401 and error_code(response) == "unauthenticated"
    assert idp.hits["introspect"] == 0


def test_a_jwt_is_introspected_when_no_jwt_check_is_configured(idp: IdentityProvider) -> None:
    with guarded_app(f"{idp.url}/introspect") as (http, _):
        response = http.get("/whoami", headers=bearer(idp.mint("bob", opaque=False)))
    assert response.status_code == 200 and response.json()["subject"] == "bob"


def flask_whoami() -> Flask:
    app = Flask(__name__)

    @app.get("/whoami")
    def whoami() -> dict[str, object]:
        identity = request.environ["dsguard.identity"]
        return {"subject": identity.subject, "method": identity.method}

    return app


def test_introspection_runs_behind_the_wsgi_adapter(idp: IdentityProvider) -> None:
    guarded = GuardWSGIMiddleware(flask_whoami(), config=config(introspection_config(f"{idp.url}/introspect")))
    token = idp.mint(opaque=True)
    with run_werkzeug(guarded) as url:
        responses = [httpx.get(f"{url}/whoami", headers=bearer(token)) for _ in range(2)]
    guarded.close()
    assert [r.json() for r in responses] == [{"subject": "alice", "method": "introspection"}] * 2
    assert idp.hits["introspect"] == 1


def test_a_missing_client_secret_refuses_calls_until_it_is_set(
        idp: IdentityProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV)
    guarded = GuardWSGIMiddleware(flask_whoami(), config=config(introspection_config(f"{idp.url}/introspect")))
    token = idp.mint(opaque=True)
    with run_werkzeug(guarded) as url:
        refused = httpx.get(f"{url}/whoami", headers=bearer(token))
        monkeypatch.setenv(SECRET_ENV, idp.introspection_secret)
        accepted = httpx.get(f"{url}/whoami", headers=bearer(token))
    guarded.close()
    assert refused.status_code == 503 and error_code(refused) == "guard_unavailable"
    assert accepted.status_code == 200
