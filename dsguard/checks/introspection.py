"""RFC 7662 token introspection: opaque bearer tokens checked by asking the authorization server.

The token is POSTed to ``[identity.introspection] url`` with the configured client
authentication (``client_secret_basic`` or ``client_secret_post``). ``active: false`` is refused
with 401 ``token_inactive``; an active answer becomes the call's identity. When ``[identity.jwt]``
is configured too, JWT-shaped tokens are left to it. A token check replaces an identity taken
from a client certificate; an identity set by another token check is left alone.

Answers (inactive ones too) are cached by the token's SHA-256 digest, never the token, bounded in
number, each for ``cache_ttl`` at most and never past the token's ``exp``; concurrent calls with
the same token share one request. A revoked ``jti`` is refused on every call, cached or not.

An endpoint that cannot be reached, times out, refuses dsguard's credentials, or answers with
anything but a JSON object holding a boolean ``active`` refuses the call (503 ``idp_unavailable``),
never lets it through; for a short backoff afterwards, uncached tokens are refused without asking.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

import httpx

from ..config import Config, IntrospectionConfig
from ..context import Identity, RequestContext
from ..decision import Denial, Overloaded, Unauthenticated
from ..services import Services
from ..storage import Storage, StorageError
from ..tokens.authorization import access_token, credentials_problem, looks_like_jwt
from ..tokens.cache import token_digest
from ..tokens.revocation import is_revoked
from .base import Check

logger = logging.getLogger("dsguard")

MAX_TOKEN_BYTES = 8192
MAX_ANSWER_BYTES = 64 * 1024
OUTAGE_BACKOFF = 1.0
MAX_OUTAGE_BACKOFF = 30.0
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class EndpointUnavailable(Exception):
    """The introspection endpoint gave no usable answer; the reason is for the log only."""

    def __init__(self, reason: str, retry_after: float = OUTAGE_BACKOFF, *, back_off: bool = True) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.back_off = back_off


class AnswerCache:
    """Answers by token digest, each until its own deadline, least recently used evicted first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, tuple[float, Identity | None]] = OrderedDict()

    def get(self, digest: bytes, now: float) -> tuple[bool, Identity | None]:
        entry = self._entries.get(digest)
        if entry is None:
            return False, None
        deadline, identity = entry
        if deadline <= now:
            del self._entries[digest]
            return False, None
        self._entries.move_to_end(digest)
        return True, identity

    def put(self, digest: bytes, identity: Identity | None, deadline: float) -> None:
        if self.size <= 0:
            return
        self._entries[digest] = (deadline, identity)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def identity_from_answer(answer: Mapping[str, Any]) -> Identity:
    """The caller an active answer describes; ``ValueError`` if a member has the wrong type."""
    subject = answer.get("sub") or answer.get("client_id")
    scope = answer.get("scope", "")
    roles = answer.get("roles", ())
    expires_at = answer.get("exp")
    token_id = answer.get("jti")
    confirmation = answer.get("cnf")
    issuer = answer.get("iss")
    if not isinstance(subject, str) or not subject:
        raise ValueError("no sub or client_id")
    if not isinstance(scope, str):
        raise ValueError("scope is not a string")
    if isinstance(roles, str):
        roles = roles.split()
    if not isinstance(roles, list | tuple) or not all(isinstance(r, str) for r in roles):
        raise ValueError("roles is not a list of strings")
    if expires_at is not None and (isinstance(expires_at, bool) or not isinstance(expires_at, int | float)
                                   or not math.isfinite(expires_at)):
        raise ValueError("exp is not a number")
    if token_id is not None and not isinstance(token_id, str):
        raise ValueError("jti is not a string")
    if confirmation is not None and not isinstance(confirmation, dict):
        raise ValueError("cnf is not an object")
    if issuer is not None and not isinstance(issuer, str):
        raise ValueError("iss is not a string")
    return Identity(
        subject=subject, method="introspection", issuer=issuer, roles=frozenset(roles),
        scopes=frozenset(scope.split()), claims=MappingProxyType(dict(answer)), token_id=token_id,
        expires_at=None if expires_at is None else float(expires_at),
        confirmation=None if confirmation is None else MappingProxyType(confirmation))


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "")
    seconds = float(value) if value.isdigit() else OUTAGE_BACKOFF
    return min(max(seconds, OUTAGE_BACKOFF), MAX_OUTAGE_BACKOFF)


class IntrospectionCheck:
    name = "introspection"
    stage = "identity"

    def __init__(self, config: IntrospectionConfig, storage: Storage, *, revocation: bool = True,
                 defer_jwts: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.storage = storage
        self.revocation = revocation
        self.defer_jwts = defer_jwts
        self.clock = clock
        self.cache = AnswerCache(config.cache_size)
        self._http: httpx.AsyncClient | None = None
        self._credentials: dict[str, str] = {}
        self._in_flight: dict[bytes, asyncio.Future[Identity | None]] = {}
        self._unavailable_until = 0.0

    async def startup(self) -> None:
        secret = self.config.client_secret.reveal()
        client_id = self.config.client_id
        if self.config.auth_method == "client_secret_post":
            self._credentials = {"client_id": client_id, "client_secret": secret}
        else:
            pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
            self._credentials = {"authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        self._http = httpx.AsyncClient(timeout=self.config.timeout, follow_redirects=False)

    async def shutdown(self) -> None:
        for task in list(self._in_flight.values()):
            task.cancel()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def check(self, ctx: RequestContext) -> Denial | Awaitable[Denial | None] | None:
        if ctx.identity is not None and ctx.identity.method != "mtls":
            return None
        found = access_token(ctx)
        if found is None:
            return None
        scheme, token = found
        if self.defer_jwts and looks_like_jwt(token):
            return None
        problem = credentials_problem(ctx, scheme, token)
        if problem is not None:
            return problem
        if len(token) > MAX_TOKEN_BYTES:
            return self._deny(scheme, "token_too_large", f"the token is larger than {MAX_TOKEN_BYTES} bytes")
        if not _B64TOKEN.fullmatch(token):
            return self._deny(scheme, "malformed_token", "the token is malformed")
        return self._authenticate(ctx, scheme, token)

    def _deny(self, scheme: str, code: str, message: str) -> Unauthenticated:
        return Unauthenticated(message, code=code, error="invalid_token", scheme=scheme)

    async def _authenticate(self, ctx: RequestContext, scheme: str, token: str) -> Denial | None:
        digest = token_digest(token)
        hit, identity = self.cache.get(digest, self.clock())
        if not hit:
            try:
                identity = await self._shared_answer(digest, token)
            except EndpointUnavailable as exc:
                return Overloaded("the identity provider is unavailable; try again", code="idp_unavailable",
                                  retry_after=exc.retry_after)
        if identity is None:
            return self._deny(scheme, "token_inactive", "the token is not active")
        if self.revocation and identity.token_id is not None:
            try:
                revoked = await is_revoked(self.storage, identity.token_id)
            except StorageError as exc:
                logger.error("cannot check token revocation (%s); refusing the call (request %s)", exc,
                             ctx.request_id)
                return Overloaded("token revocation cannot be checked; try again", code="storage_unavailable",
                                  retry_after=1)
            if revoked:
                return self._deny(scheme, "token_revoked", "the token has been revoked")
        ctx.identity = identity
        ctx.attributes["auth_scheme"] = scheme
        ctx.attributes["access_token"] = token
        return None

    async def _shared_answer(self, digest: bytes, token: str) -> Identity | None:
        task = self._in_flight.get(digest)
        if task is None:
            remaining = self._unavailable_until - self.clock()
            if remaining > 0:
                raise EndpointUnavailable("backing off after a failure", retry_after=remaining)
            task = asyncio.ensure_future(self._introspect(digest, token))
            self._in_flight[digest] = task
            task.add_done_callback(lambda done: self._settled(digest, done))
        return await asyncio.shield(task)

    def _settled(self, digest: bytes, task: asyncio.Future[Identity | None]) -> None:
        self._in_flight.pop(digest, None)
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, EndpointUnavailable) and exc.back_off:
            self._unavailable_until = self.clock() + exc.retry_after

    async def _introspect(self, digest: bytes, token: str) -> Identity | None:
        answer = await self._ask(token)
        now = self.clock()
        identity = None
        if answer["active"]:
            try:
                identity = identity_from_answer(answer)
            except ValueError as exc:
                logger.error("introspection endpoint %s gave an unusable answer: %s", self.config.url, exc)
                raise EndpointUnavailable(str(exc), back_off=False) from None
        deadline = now + self.config.cache_ttl
        if identity is not None and identity.expires_at is not None:
            deadline = min(deadline, identity.expires_at)
        if deadline > now:
            self.cache.put(digest, identity, deadline)
        return identity

    async def _ask(self, token: str) -> dict[str, Any]:
        """The endpoint's answer: a JSON object with a boolean ``active``."""
        if self._http is None:
            raise RuntimeError("the introspection check was not started")
        url = self.config.url
        form = {"token": token, "token_type_hint": "access_token"}
        headers = {"accept": "application/json"}
        if "authorization" in self._credentials:
            headers["authorization"] = self._credentials["authorization"]
        else:
            form.update(self._credentials)
        try:
            async with asyncio.timeout(self.config.timeout), \
                    self._http.stream("POST", url, data=form, headers=headers) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise EndpointUnavailable(f"answer larger than {MAX_ANSWER_BYTES} bytes")
        except TimeoutError:
            logger.error("introspection endpoint %s did not answer within %ss", url, self.config.timeout)
            raise EndpointUnavailable("timeout") from None
        except httpx.HTTPError as exc:
            logger.error("introspection endpoint %s is unreachable: %s", url, type(exc).__name__)
            raise EndpointUnavailable(type(exc).__name__) from None
        except EndpointUnavailable as exc:
            logger.error("introspection endpoint %s: %s", url, exc)
            raise
        status = response.status_code
        if status in (400, 401, 403):
            logger.error("introspection endpoint %s rejected dsguard's request (HTTP %d); check "
                         "[identity.introspection] client_id, client_secret and auth_method", url, status)
            raise EndpointUnavailable(f"HTTP {status}")
        if status != 200:
            logger.error("introspection endpoint %s answered HTTP %d", url, status)
            raise EndpointUnavailable(f"HTTP {status}", retry_after=_retry_after(response))
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("active"), bool):
            logger.error("introspection endpoint %s answered without a JSON object holding a boolean active", url)
            raise EndpointUnavailable("not an RFC 7662 answer")
        return answer


def build(config: Config, services: Services) -> list[Check]:
    identity = config.identity
    if identity.introspection is None:
        return []
    return [IntrospectionCheck(identity.introspection, services.storage, revocation=identity.revocation,
                               defer_jwts=identity.jwt is not None)]
