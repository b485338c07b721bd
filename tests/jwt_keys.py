"""Real signing keys, tokens and a JWKS endpoint for the JWT tests."""

from __future__ import annotations

import base64
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dsguard import GuardMiddleware
from dsguard.config import Config
from dsguard.tokens.jwks import RemoteJWKS

from .conftest import run_uvicorn
from .helpers import InProcess

ISSUER = "https://idp.test"
AUDIENCE = "deepseek-api"
HS_SECRET = "a-test-hmac-secret-of-at-least-32-bytes!"


class SigningKey:
    """A private key with its ``kid`` and ``alg``; publishes its public JWK and signs tokens."""

    def __init__(self, kid: str, alg: str, private: Any) -> None:
        self.kid = kid
        self.alg = alg
        self.private = private

    def public_jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        jwk = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(claims, self.private, algorithm=self.alg, headers={"kid": self.kid, **header})


RSA_A = SigningKey("rsa-a", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))
RSA_B = SigningKey("rsa-b", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))
EC_P256 = SigningKey("ec-1", "ES256", ec.generate_private_key(ec.SECP256R1()))
ED25519 = SigningKey("ed-1", "EdDSA", ed25519.Ed25519PrivateKey.generate())
ATTACKER = SigningKey("rsa-a", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300,
            "jti": uuid.uuid4().hex}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_raw(key: SigningKey, header_json: str, payload_json: str) -> str:
    """A JWS over exactly these JSON texts (to send what a JSON encoder would not write)."""
    signing_input = f"{b64url(header_json.encode())}.{b64url(payload_json.encode())}"
    signature = jwt.get_algorithm_by_name(key.alg).sign(signing_input.encode(), key.private)
    return f"{signing_input}.{b64url(signature)}"


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [k.public_jwk() for k in keys]}


class JWKSEndpoint:
    """A real HTTP JWKS endpoint: what it serves can change, and it counts its hits."""

    def __init__(self, *keys: SigningKey) -> None:
        self.document: dict[str, Any] = jwks(*keys)
        self.failing = False
        self.hits = 0
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/jwks.json", self._serve)])

    def serve(self, *keys: SigningKey) -> None:
        self.document = jwks(*keys)

    async def _serve(self, request: Request) -> Response:
        with self._lock:
            self.hits += 1
        if self.failing:
            return Response("identity provider down", status_code=503)
        return JSONResponse(self.document)

    @contextmanager
    def running(self) -> Iterator[str]:
        """Serves the JWKS; yields its URL."""
        with run_uvicorn(self.app) as base:
            yield base + "/jwks.json"


JWT_CONFIG = """
[transport]
require_https = false
[identity.jwt]
algorithms = {algorithms}
issuer = "{issuer}"
audience = "{audience}"
jwks_url = "{url}"
sender_constraint = "off"
{extra}
"""


def jwt_config_text(url: str, *, algorithms: str = '["RS256", "ES256", "EdDSA"]', extra: str = "") -> str:
    return JWT_CONFIG.format(algorithms=algorithms, issuer=ISSUER, audience=AUDIENCE, url=url, extra=extra)


async def identity_view(request: Request) -> JSONResponse:
    identity = request.state.identity
    ctx = request.state.dsguard
    return JSONResponse({
        "subject": identity.subject,
        "method": identity.method,
        "issuer": identity.issuer,
        "roles": sorted(identity.roles),
        "scopes": sorted(identity.scopes),
        "tenant": identity.tenant,
        "token_id": identity.token_id,
        "expires_at": identity.expires_at,
        "confirmation": dict(identity.confirmation) if identity.confirmation else None,
        "auth_scheme": ctx.attributes.get("auth_scheme"),
    })


def identity_app() -> Starlette:
    return Starlette(routes=[Route("/me", identity_view)])


class ManualClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class GuardedApp:
    """The identity app behind a real :class:`GuardMiddleware`, called in-process with httpx."""

    def __init__(self, config: Config, clock: ManualClock | None = None) -> None:
        self.middleware = GuardMiddleware(identity_app(), config=config)
        self.client = InProcess(self.middleware)
        self.check: Any = next(c for c in self.middleware.guard.pipeline.checks if c.name == "jwt")
        self.storage = self.middleware.guard.services.storage
        if clock is not None:
            self.remote.clock = clock

    @property
    def remote(self) -> RemoteJWKS:
        remote = self.check.keys.remote
        assert remote is not None
        return remote

    def call(self, token: str | None, scheme: str = "Bearer", **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"{scheme} {token}"} if token is not None else {}
        return self.client.get("/me", headers=headers, **kwargs)


_CHALLENGE_ERROR = re.compile(r'error="([^"]*)"')


def challenge_error(response: httpx.Response) -> str | None:
    """The RFC 6750 ``error`` of the response's ``WWW-Authenticate`` challenge."""
    match = _CHALLENGE_ERROR.search(response.headers.get("www-authenticate", ""))
    return match.group(1) if match else None


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])
