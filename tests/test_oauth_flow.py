"""OAuth 2.0 end to end: tokens from a real authorization server, used on an app behind the guard.

The authorization server (tests/idp.py) and the guarded Starlette app both serve real HTTP;
a real httpx client runs the Authorization Code + PKCE flow, then calls the app with the token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dsguard import GuardMiddleware

from .conftest import run_uvicorn
from .helpers import config
from .idp import (
    JWT_SERVICE,
    JWT_SERVICE_SECRET,
    OPAQUE_SERVICE,
    OPAQUE_SERVICE_SECRET,
    PUBLIC_CLIENT,
    REDIRECT_URI,
    IdentityProvider,
    identity_provider,  # noqa: F401
)

SECRET_ENV = "DSGUARD_INTROSPECTION_SECRET"


def jwt_config(idp: IdentityProvider, *, introspection: bool = False, **options: Any) -> str:
    lines = [
        "[transport]", "require_https = false",
        "[identity.jwt]", 'algorithms = ["EdDSA", "ES256"]', f'issuer = "{idp.issuer}"', 'audience = "deepseek-api"',
        f'jwks_url = "{idp.url}/jwks.json"', 'require_typ = "at+jwt"',
        *(f"{key} = {json.dumps(value)}" for key, value in options.items()),
    ]
    if introspection:
        lines += ["[identity.introspection]", f'url = "{idp.url}/introspect"', 'client_id = "dsguard"',
                  f'client_secret = "env:{SECRET_ENV}"']
    return "\n".join([*lines, ""])


async def whoami(request: Request) -> JSONResponse:
    identity = request.state.identity
    return JSONResponse({"subject": identity.subject, "method": identity.method, "scopes": sorted(identity.scopes),
                         "roles": sorted(identity.roles), "client_id": identity.claims.get("client_id")})


@contextmanager
def guarded_app(text: str) -> Iterator[httpx.Client]:
    middleware = GuardMiddleware(Starlette(routes=[Route("/whoami", whoami)]), config=config(text))
    with run_uvicorn(middleware) as base, httpx.Client(base_url=base, timeout=10) as http:
        yield http


@pytest.fixture
def oauth(idp: IdentityProvider) -> Iterator[httpx.Client]:
    """A client of the authorization server that never follows redirects (they point at the app)."""
    with httpx.Client(base_url=idp.url, follow_redirects=False, timeout=10) as client:
        yield client


def pkce_pair() -> tuple[str, str]:
    """An RFC 7636 code verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorize(oauth: httpx.Client, challenge: str | None, *, method: str = "S256",
              scope: str = "chat:write models:read") -> httpx.URL:
    """The redirect the authorization endpoint answers with, for alice approving the request."""
    state = secrets.token_urlsafe(16)
    params = {"response_type": "code", "client_id": PUBLIC_CLIENT, "redirect_uri": REDIRECT_URI, "scope": scope,
              "state": state, "user": "alice"}
    if challenge is not None:
        params |= {"code_challenge": challenge, "code_challenge_method": method}
    response = oauth.get("/authorize", params=params)
    assert response.status_code == 302
    location = httpx.URL(response.headers["location"])
    assert str(location.copy_with(query=None)) == REDIRECT_URI
    assert location.params["state"] == state
    return location


def exchange(oauth: httpx.Client, code: str, verifier: str) -> httpx.Response:
    return oauth.post("/token", data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
                                      "client_id": PUBLIC_CLIENT, "code_verifier": verifier})


def sign_in(oauth: httpx.Client) -> dict[str, Any]:
    """The whole Authorization Code + PKCE flow; the token response."""
    verifier, challenge = pkce_pair()
    code = authorize(oauth, challenge).params["code"]
    response = exchange(oauth, code, verifier)
    assert response.status_code == 200, response.text
    return dict(response.json())


def client_credentials(oauth: httpx.Client, client_id: str, secret: str) -> str:
    response = oauth.post("/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret))
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def test_authorization_code_with_pkce_gives_a_token_the_guarded_app_accepts(
        idp: IdentityProvider, oauth: httpx.Client) -> None:
    tokens = sign_in(oauth)
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 900
    with guarded_app(jwt_config(idp)) as http:
        response = http.get("/whoami", headers=bearer(tokens["access_token"]))
    assert response.status_code == 200
    assert response.json() == {"subject": "alice", "method": "jwt", "scopes": ["chat:write", "models:read"],
                               "roles": ["user"], "client_id": PUBLIC_CLIENT}


def test_the_flow_yields_an_rfc_9068_access_token(oauth: httpx.Client, idp: IdentityProvider) -> None:
    token = sign_in(oauth)["access_token"]
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert header["typ"] == "at+jwt" and header["kid"] == idp.signing_kid
    assert (payload["iss"], payload["aud"], payload["sub"]) == (idp.issuer, "deepseek-api", "alice")
    assert payload["exp"] - payload["iat"] == 900


def test_a_pkce_verifier_that_does_not_match_gets_no_token(oauth: httpx.Client) -> None:
    _, challenge = pkce_pair()
    code = authorize(oauth, challenge).params["code"]
    response = exchange(oauth, code, pkce_pair()[0])
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant" and "access_token" not in response.json()


def test_an_authorization_request_without_pkce_is_refused(oauth: httpx.Client) -> None:
    location = authorize(oauth, None)
    assert location.params["error"] == "invalid_request" and "code" not in location.params


def test_an_authorization_request_with_plain_pkce_is_refused(oauth: httpx.Client) -> None:
    verifier, _ = pkce_pair()
    location = authorize(oauth, verifier, method="plain")
    assert location.params["error"] == "invalid_request" and "code" not in location.params


def test_an_authorization_code_is_exchanged_only_once(oauth: httpx.Client) -> None:
    verifier, challenge = pkce_pair()
    code = authorize(oauth, challenge).params["code"]
    assert exchange(oauth, code, verifier).status_code == 200
    replay = exchange(oauth, code, verifier)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"


def test_a_refreshed_access_token_is_accepted(idp: IdentityProvider, oauth: httpx.Client) -> None:
    refresh_token = sign_in(oauth)["refresh_token"]
    refreshed = oauth.post("/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token,
                                           "client_id": PUBLIC_CLIENT})
    assert refreshed.status_code == 200
    with guarded_app(jwt_config(idp)) as http:
        response = http.get("/whoami", headers=bearer(refreshed.json()["access_token"]))
    assert response.status_code == 200 and response.json()["subject"] == "alice"


def test_a_client_credentials_token_identifies_the_service(idp: IdentityProvider, oauth: httpx.Client) -> None:
    token = client_credentials(oauth, JWT_SERVICE, JWT_SERVICE_SECRET)
    with guarded_app(jwt_config(idp)) as http:
        body = http.get("/whoami", headers=bearer(token)).json()
    assert (body["subject"], body["roles"]) == (JWT_SERVICE, ["service"])
    assert body["scopes"] == ["batch:submit", "chat:write"]


def test_opaque_tokens_are_introspected_and_jwts_are_not(
        idp: IdentityProvider, oauth: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, idp.introspection_secret)
    opaque = client_credentials(oauth, OPAQUE_SERVICE, OPAQUE_SERVICE_SECRET)
    signed = sign_in(oauth)["access_token"]
    with guarded_app(jwt_config(idp, introspection=True)) as http:
        signed_call = http.get("/whoami", headers=bearer(signed))
        assert idp.hits["introspect"] == 0
        opaque_call = http.get("/whoami", headers=bearer(opaque))
    assert (signed_call.json()["subject"], signed_call.json()["method"]) == ("alice", "jwt")
    assert (opaque_call.json()["subject"], opaque_call.json()["method"]) == (OPAQUE_SERVICE, "introspection")
    assert idp.hits["introspect"] == 1


@contextmanager
def steady_traffic(http: httpx.Client, token: str) -> Iterator[list[int]]:
    """Calls with ``token`` in a loop on another thread while the block runs; yields their statuses."""
    statuses: list[int] = []
    stop = threading.Event()

    def run() -> None:
        with httpx.Client(base_url=str(http.base_url), timeout=10) as client:
            while not stop.is_set() or not statuses:
                statuses.append(client.get("/whoami", headers=bearer(token)).status_code)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(timeout=20)


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256"])
def test_keys_rotate_mid_traffic_without_restart(idp: IdentityProvider, oauth: httpx.Client, algorithm: str) -> None:
    old_token = client_credentials(oauth, JWT_SERVICE, JWT_SERVICE_SECRET)
    with guarded_app(jwt_config(idp, jwks_ttl="200ms")) as http:
        with steady_traffic(http, old_token) as statuses:
            assert http.get("/whoami", headers=bearer(old_token)).status_code == 200
            idp.rotate_key(algorithm)
            new_token = client_credentials(oauth, JWT_SERVICE, JWT_SERVICE_SECRET)
            assert http.get("/whoami", headers=bearer(new_token)).status_code == 200
            assert http.get("/whoami", headers=bearer(old_token)).status_code == 200
        assert set(statuses) == {200}


def test_tokens_of_a_dropped_key_fail_once_the_keys_are_refreshed(
        idp: IdentityProvider, oauth: httpx.Client) -> None:
    old_token = client_credentials(oauth, JWT_SERVICE, JWT_SERVICE_SECRET)
    with guarded_app(jwt_config(idp, jwks_ttl="200ms")) as http:
        assert http.get("/whoami", headers=bearer(old_token)).status_code == 200
        idp.rotate_key()
        new_token = client_credentials(oauth, JWT_SERVICE, JWT_SERVICE_SECRET)
        idp.drop_old_keys()
        fetches = idp.hits["jwks"]
        time.sleep(0.3)
        dropped = http.get("/whoami", headers=bearer(old_token))
        assert idp.hits["jwks"] > fetches
        current = http.get("/whoami", headers=bearer(new_token))
    assert dropped.status_code == 401 and error_code(dropped) == "unknown_key"
    assert current.status_code == 200


def test_random_kids_do_not_make_the_guard_hammer_the_jwks_endpoint(idp: IdentityProvider) -> None:
    forged = [idp.mint(headers={"kid": secrets.token_hex(8)}) for _ in range(20)]
    with guarded_app(jwt_config(idp)) as http:
        fetches = idp.hits["jwks"]
        statuses = [http.get("/whoami", headers=bearer(token)).status_code for token in forged]
    assert statuses == [401] * 20
    assert idp.hits["jwks"] - fetches <= 1


def test_cached_keys_keep_working_while_the_identity_provider_is_down(
        idp: IdentityProvider, oauth: httpx.Client) -> None:
    token = sign_in(oauth)["access_token"]
    unseen = idp.mint("bob")
    with guarded_app(jwt_config(idp, jwks_ttl="200ms")) as http:
        assert http.get("/whoami", headers=bearer(token)).status_code == 200
        idp.down()
        time.sleep(0.3)
        seen_call = http.get("/whoami", headers=bearer(token))
        unseen_call = http.get("/whoami", headers=bearer(unseen))
    assert idp.hits["jwks"] >= 2
    assert seen_call.status_code == 200 and unseen_call.status_code == 200


def test_calls_fail_with_503_once_the_stale_grace_is_over(idp: IdentityProvider, oauth: httpx.Client) -> None:
    token = sign_in(oauth)["access_token"]
    with guarded_app(jwt_config(idp, jwks_ttl="200ms", jwks_stale_grace="500ms")) as http:
        assert http.get("/whoami", headers=bearer(token)).status_code == 200
        idp.down()
        time.sleep(0.9)
        response = http.get("/whoami", headers=bearer(token))
    assert response.status_code == 503 and error_code(response) == "idp_unavailable"
    assert int(response.headers["retry-after"]) >= 1
