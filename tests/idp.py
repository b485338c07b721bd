"""A real OAuth 2.0 authorization server for tests, built from authlib's server components.

It serves, over real HTTP (werkzeug in a thread):

- ``/authorize``: Authorization Code grant; PKCE with S256 is required. There is no login
  page: the fixed test user named by ``?user=`` approves at once.
- ``/token``: ``authorization_code``, ``client_credentials`` and ``refresh_token``.
  Access tokens are RFC 9068 JWTs (``typ: at+jwt``) signed with the current key, or opaque
  random strings for clients configured that way.
- ``/jwks.json``: the published public keys. ``rotate_key()`` adds a key and signs with it;
  ``drop_old_keys()`` stops publishing the others.
- ``/introspect`` (RFC 7662, client authentication required) and ``/revoke`` (RFC 7009).

Tests can take it down (503), stall it, break one endpoint's answers, and read ``hits`` to
assert that the guard does not hammer it.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, ClientMixin, InvalidRequestError, TokenMixin, grants
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from flask import Flask, Response, jsonify, request
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from .conftest import run_werkzeug

AUDIENCE = "deepseek-api"
ACCESS_TOKEN_TTL = 900
CODE_TTL = 300
REDIRECT_URI = "http://127.0.0.1:9/callback"
PUBLIC_CLIENT = "chat-web"
JWT_SERVICE = "batch-service"
JWT_SERVICE_SECRET = "batch-service-secret"
OPAQUE_SERVICE = "legacy-service"
OPAQUE_SERVICE_SECRET = "legacy-service-secret"
RESOURCE_SERVER = "dsguard"
USERS = {"alice": ("user",), "bob": ("admin", "user")}

SigningKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


@dataclasses.dataclass
class User:
    name: str
    roles: tuple[str, ...]

    def get_user_id(self) -> str:
        return self.name


@dataclasses.dataclass
class Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    secret: str | None
    grant_types: frozenset[str]
    scope: str
    token_format: str = "jwt"
    redirect_uris: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    may_introspect: bool = False

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope: str | None) -> str:
        allowed = self.scope.split()
        if not scope:
            return " ".join(allowed)
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return self.secret is not None and secrets.compare_digest(self.secret, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.secret is None:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclasses.dataclass
class AuthorizationCode(AuthorizationCodeMixin):  # type: ignore[misc]
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: User
    code_challenge: str | None
    code_challenge_method: str | None
    expires_at: float

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclasses.dataclass
class IssuedToken(TokenMixin):  # type: ignore[misc]
    access_token: str
    refresh_token: str | None
    client: Client
    user: User | None
    scope: str
    jti: str
    issued_at: int
    expires_in: int
    token_format: str
    revoked: bool = False

    @property
    def subject(self) -> str:
        return self.user.name if self.user else self.client.client_id

    def check_client(self, client: Client) -> bool:
        return self.client.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> User | None:
        return self.user

    def get_client(self) -> Client:
        return self.client


class S256Challenge(CodeChallenge):  # type: ignore[misc]
    """PKCE as OAuth 2.1 requires it: every authorization request carries an S256 challenge."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge") or data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("a PKCE code_challenge with code_challenge_method=S256 is required")
        super().validate_code_challenge(grant, redirect_uri)


class IdentityProvider:
    """The authorization server's state and controls; ``url`` is set once it is served."""

    def __init__(self) -> None:
        self.url = ""
        self.hits: Counter[str] = Counter()
        self.introspection_auth_methods: list[str] = []
        self.introspection_secret = secrets.token_urlsafe(24)
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[str, SigningKey]] = {}
        self._published: list[str] = []
        self._signing_kid = ""
        self.codes: dict[str, AuthorizationCode] = {}
        self._tokens: dict[str, IssuedToken] = {}
        self._refresh: dict[str, IssuedToken] = {}
        self._down = False
        self._stall = 0.0
        self._broken: dict[str, tuple[int, bytes, str]] = {}
        self.users = {name: User(name, roles) for name, roles in USERS.items()}
        self.clients = {c.client_id: c for c in (
            Client(PUBLIC_CLIENT, None, frozenset({"authorization_code", "refresh_token"}),
                   "chat:write models:read", redirect_uris=(REDIRECT_URI,)),
            Client(JWT_SERVICE, JWT_SERVICE_SECRET, frozenset({"client_credentials"}),
                   "chat:write batch:submit", roles=("service",)),
            Client(OPAQUE_SERVICE, OPAQUE_SERVICE_SECRET, frozenset({"client_credentials"}),
                   "chat:write models:read", token_format="opaque", roles=("service",)),
            Client(RESOURCE_SERVER, self.introspection_secret, frozenset(), "", may_introspect=True),
        )}
        self.rotate_key()
        self.app = self._build_app()

    @property
    def issuer(self) -> str:
        return self.url

    @property
    def signing_kid(self) -> str:
        return self._signing_kid

    # Keys

    def rotate_key(self, algorithm: str = "EdDSA") -> str:
        """Publish a new key and sign new tokens with it; the old keys stay published."""
        key: SigningKey = ed25519.Ed25519PrivateKey.generate() if algorithm == "EdDSA" \
            else ec.generate_private_key(ec.SECP256R1())
        kid = f"key-{len(self._keys) + 1}-{secrets.token_hex(4)}"
        self._keys[kid] = (algorithm, key)
        self._published = [*self._published, kid]
        self._signing_kid = kid
        return kid

    def drop_old_keys(self) -> None:
        """Stop publishing every key but the signing one (their private halves stay for ``mint``)."""
        self._published = [self._signing_kid]

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in self._published:
            algorithm, key = self._keys[kid]
            public = key.public_key()
            jwk = OKPAlgorithm.to_jwk(public, as_dict=True) if isinstance(public, ed25519.Ed25519PublicKey) \
                else ECAlgorithm.to_jwk(public, as_dict=True)
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": algorithm})
        return {"keys": keys}

    # Availability

    def down(self) -> None:
        """Answer every request with 503 until ``up()``."""
        self._down = True

    def up(self) -> None:
        """Serve normally again: no outage, no stall, no broken endpoint."""
        self._down = False
        self._stall = 0.0
        self._broken.clear()

    def stall(self, seconds: float) -> None:
        """Wait ``seconds`` before answering each request."""
        self._stall = seconds

    def break_endpoint(self, endpoint: str, status: int, body: bytes, content_type: str = "text/html") -> None:
        """Answer ``endpoint`` ("introspect", "jwks", ...) with this response instead of the real one."""
        self._broken[endpoint] = (status, body, content_type)

    # Tokens

    def mint(self, subject: str = "alice", *, client_id: str = PUBLIC_CLIENT, scope: str | None = None,
             ttl: int = ACCESS_TOKEN_TTL, opaque: bool | None = None, kid: str | None = None,
             claims: dict[str, Any] | None = None, headers: dict[str, Any] | None = None) -> str:
        """Issue an access token directly (no HTTP flow); the server knows it for introspection.

        ``kid`` signs with any key ever made, published or not; ``claims``/``headers`` override
        what would be issued.
        """
        client = self.clients[client_id]
        user = self.users.get(subject) if subject != client_id else None
        if user is None and subject != client_id:
            user = User(subject, ())
        granted = client.get_allowed_scope(None) if scope is None else scope
        token_format = ("opaque" if opaque else "jwt") if opaque is not None else client.token_format
        record = self._issue(client, user, granted, ttl, token_format, kid=kid, claims=claims, headers=headers)
        return record.access_token

    def revoke(self, token: str) -> None:
        self._tokens[token].revoked = True

    def issued(self, token: str) -> IssuedToken:
        return self._tokens[token]

    def _issue(self, client: Client, user: User | None, scope: str, ttl: int, token_format: str, *,
               refresh: bool = False, kid: str | None = None, claims: dict[str, Any] | None = None,
               headers: dict[str, Any] | None = None) -> IssuedToken:
        now = int(time.time())
        jti = secrets.token_hex(16)
        subject = user.name if user else client.client_id
        if token_format == "opaque":
            access_token = secrets.token_urlsafe(32)
        else:
            kid = kid or self._signing_kid
            algorithm, key = self._keys[kid]
            payload = {
                "iss": self.issuer, "aud": AUDIENCE, "sub": subject, "client_id": client.client_id,
                "scope": scope, "jti": jti, "iat": now, "exp": now + ttl,
                "roles": list(user.roles if user else client.roles), **(claims or {}),
            }
            access_token = jwt.encode(payload, key, algorithm=algorithm,
                                      headers={"typ": "at+jwt", "kid": kid, **(headers or {})})
        record = IssuedToken(access_token, secrets.token_urlsafe(32) if refresh else None, client, user, scope, jti,
                             now, ttl, token_format)
        with self._lock:
            self._tokens[access_token] = record
            if record.refresh_token:
                self._refresh[record.refresh_token] = record
        return record

    def _generate(self, grant_type: str, client: Client, user: User | None = None, scope: str | None = None,
                  expires_in: int | None = None, include_refresh_token: bool = True) -> dict[str, Any]:
        granted = client.get_allowed_scope(scope)
        refresh = include_refresh_token and client.check_grant_type("refresh_token")
        record = self._issue(client, user, granted, expires_in or ACCESS_TOKEN_TTL, client.token_format,
                             refresh=refresh)
        answer = {"token_type": "Bearer", "access_token": record.access_token, "expires_in": record.expires_in,
                  "scope": granted}
        if record.refresh_token:
            answer["refresh_token"] = record.refresh_token
        return answer

    def find(self, token: str, hint: str | None = None) -> IssuedToken | None:
        if hint == "refresh_token":
            return self._refresh.get(token)
        return self._tokens.get(token)

    def introspection_answer(self, record: IssuedToken) -> dict[str, Any]:
        return {
            "active": True, "sub": record.subject, "scope": record.scope, "client_id": record.client.client_id,
            "exp": record.issued_at + record.expires_in, "iat": record.issued_at, "iss": self.issuer,
            "aud": AUDIENCE, "jti": record.jti, "token_type": "Bearer",
            "roles": list(record.user.roles if record.user else record.client.roles),
        }

    # The authorization server

    def _build_app(self) -> Flask:
        app = Flask("test-idp")
        server = AuthorizationServer(app, query_client=self.clients.get, save_token=lambda token, req: None)
        server.provider = self
        server.register_token_generator("default", self._generate)
        server.register_grant(_CodeGrant, [S256Challenge(required=True)])
        server.register_grant(_ClientCredentials)
        server.register_grant(_Refresh)
        server.register_endpoint(_Introspection)
        server.register_endpoint(_Revocation)

        @app.before_request
        def count_and_misbehave() -> Response | None:
            endpoint = request.endpoint or request.path
            with self._lock:
                self.hits[endpoint] += 1
            if self._stall:
                time.sleep(self._stall)
            if self._down:
                response = jsonify(error="temporarily_unavailable")
                response.status_code = 503
                response.headers["Retry-After"] = "1"
                return response
            broken = self._broken.get(endpoint)
            if broken is not None:
                status, body, content_type = broken
                return Response(body, status=status, content_type=content_type)
            return None

        @app.get("/authorize", endpoint="authorize")
        def authorize() -> Any:
            user = self.users.get(request.args.get("user", ""))
            try:
                grant = server.get_consent_grant(end_user=user)
            except OAuth2Error as error:
                return server.handle_error_response(None, error)
            return server.create_authorization_response(grant=grant, grant_user=user)

        app.add_url_rule("/token", "token", server.create_token_response, methods=["POST"])
        app.add_url_rule("/introspect", "introspect", lambda: server.create_endpoint_response("introspection"),
                         methods=["POST"])
        app.add_url_rule("/revoke", "revoke", lambda: server.create_endpoint_response("revocation"),
                         methods=["POST"])
        app.add_url_rule("/jwks.json", "jwks", lambda: jsonify(self.jwks()))
        return app


class _CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def save_authorization_code(self, code: str, req: Any) -> None:
        data = req.payload.data
        self.server.provider.codes[code] = AuthorizationCode(
            code, req.client.client_id, req.payload.redirect_uri or "", req.scope, req.user,
            data.get("code_challenge"), data.get("code_challenge_method"), time.time() + CODE_TTL)

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        found: AuthorizationCode | None = self.server.provider.codes.get(code)
        if found is None or found.client_id != client.client_id or found.expires_at < time.time():
            return None
        return found

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        self.server.provider.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: AuthorizationCode) -> User:
        return authorization_code.user


class _ClientCredentials(grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


class _Refresh(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> IssuedToken | None:
        found: IssuedToken | None = self.server.provider.find(refresh_token, "refresh_token")
        return None if found is None or found.revoked else found

    def authenticate_user(self, refresh_token: IssuedToken) -> User | None:
        return refresh_token.user

    def revoke_old_credential(self, refresh_token: IssuedToken) -> None:
        refresh_token.revoked = True


class _Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def authenticate_endpoint_client(self, req: Any) -> Client:
        client: Client = super().authenticate_endpoint_client(req)
        self.server.provider.introspection_auth_methods.append(req.auth_method)
        return client

    def query_token(self, token_string: str, token_type_hint: str | None) -> IssuedToken | None:
        found: IssuedToken | None = self.server.provider.find(token_string, token_type_hint)
        return found

    def check_permission(self, token: IssuedToken, client: Client, req: Any) -> bool:
        return client.may_introspect

    def introspect_token(self, token: IssuedToken) -> dict[str, Any]:
        answer: dict[str, Any] = self.server.provider.introspection_answer(token)
        return answer


class _Revocation(RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> IssuedToken | None:
        provider = self.server.provider
        found: IssuedToken | None = provider.find(token_string) or provider.find(token_string, "refresh_token")
        return found

    def revoke_token(self, token: IssuedToken, req: Any) -> None:
        token.revoked = True


@pytest.fixture(name="idp")
def identity_provider() -> Iterator[IdentityProvider]:
    """A running authorization server on a free loopback port."""
    provider = IdentityProvider()
    with run_werkzeug(provider.app) as url:
        provider.url = url
        yield provider
