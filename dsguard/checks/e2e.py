"""End-to-end encrypted bodies (``[e2e]``, protocol in :mod:`dsguard.crypto.e2e`).

:class:`E2EOpen` runs in the hygiene stage, after the header checks and before the JSON body is
parsed: a body sent as ``application/dsguard-e2e+json`` is opened there, so the JSON check, the
WAF, the prompt guard, the policy and the app all see the plaintext (``ctx.body``, ``ctx.json``
and the body the app reads). A captured request sent again is refused: each request's
encapsulated key is remembered in ``[storage]`` for the acceptance window. On the ``paths`` of
``[e2e]`` a plaintext call is refused when ``required``.

:class:`E2ESeal` runs last and seals the app's answer (streamed or not) with keys exported from
the request's HPKE context, after every other response filter (the prompt guard's redaction)
has seen the plaintext. Denials of the guard itself are not sealed: they carry no request data.

The public key is answered at ``key_path`` by the guard, before any check.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable

from ..config import Config, E2EConfig
from ..context import RequestContext
from ..crypto.e2e import (
    MEDIA_TYPE,
    E2EError,
    Envelope,
    PrivateServerKey,
    b64url,
    key_document,
    load_private_key,
    open_request,
    parse_envelope,
)
from ..crypto.e2e_records import ResponseSealer
from ..crypto.hpke import Context
from ..decision import BadRequest, Denial, Overloaded
from ..errors import ConfigError
from ..services import Services
from ..storage import Storage, StorageError
from ..telemetry.endpoints import READ_METHODS, Answer, answer, method_not_allowed
from .base import Check, Outcome

logger = logging.getLogger("dsguard.e2e")

SESSION = "e2e"
"""``ctx.attributes`` key of the :class:`E2ESession` of an encrypted call."""


@dataclasses.dataclass(frozen=True, slots=True)
class E2ESession:
    kid: str
    context: Context = dataclasses.field(repr=False)


class KeyDocument:
    """The endpoint publishing the server's public key (an :data:`dsguard.telemetry.endpoints.Endpoint`)."""

    def __init__(self, key: PrivateServerKey) -> None:
        self.body = json.dumps(key_document([key.public]), separators=(",", ":")).encode()

    async def __call__(self, method: str, authorization: str | None) -> Answer:
        if method not in READ_METHODS:
            return method_not_allowed(method)
        return answer(method, 200, b"application/json", self.body)


def _target(ctx: RequestContext) -> bytes:
    return ctx.raw_path + b"?" + ctx.query_string if ctx.query_string else ctx.raw_path


class E2EOpen:
    name = "e2e"
    stage = "hygiene"
    needs_body = True

    def __init__(self, config: E2EConfig, keys: Iterable[PrivateServerKey], storage: Storage,
                 clock: Callable[[], float] = time.time) -> None:
        ordered = list(keys)
        self.keys = {key.kid: key for key in ordered}
        self.required = config.required
        self._exact = frozenset(p for p in config.paths if not p.endswith("*"))
        self._prefixes = tuple(p[:-1] for p in config.paths if p.endswith("*"))
        self.max_age = config.max_age
        self.clock_skew = config.clock_skew
        self.storage = storage
        self.clock = clock
        self.endpoints = {config.key_path: KeyDocument(ordered[0])}
        self._required = BadRequest(f"this route accepts only end-to-end encrypted bodies ({MEDIA_TYPE}); the "
                                    f"key is published at {config.key_path}", code="e2e_required")

    def covers(self, path: str) -> bool:
        return path in self._exact or path.startswith(self._prefixes)

    def check(self, ctx: RequestContext) -> Outcome:
        if ctx.media_type != MEDIA_TYPE:
            return self._required if self.required and self.covers(ctx.path) else None
        try:
            envelope = parse_envelope(ctx.body or b"")
            self._check_age(envelope.timestamp)
            plaintext, context = open_request(self.keys, envelope, ctx.method, _target(ctx))
        except E2EError as exc:
            return BadRequest(exc.message, code=exc.code)
        return self._accept(ctx, envelope, plaintext, context)

    def _check_age(self, timestamp: int) -> None:
        now = self.clock()
        if timestamp > now + self.clock_skew:
            raise E2EError("e2e_future", "the encrypted request is dated in the future; check the client's clock")
        if timestamp < now - self.max_age - self.clock_skew:
            raise E2EError("e2e_expired", f"the encrypted request is older than {self.max_age:g}s")

    async def _accept(self, ctx: RequestContext, envelope: Envelope, plaintext: bytes,
                      context: Context) -> Denial | None:
        try:
            first = await self.storage.add(f"e2e:{envelope.kid}:{b64url(envelope.enc)}",
                                           ttl=self.max_age + 2 * self.clock_skew)
        except StorageError as exc:
            logger.warning("cannot record the encrypted request (%s); refusing the call", exc)
            return Overloaded("encrypted request replays cannot be checked; try again", code="storage_unavailable",
                              retry_after=1)
        if not first:
            return BadRequest("this encrypted request has already been received", code="e2e_replayed")
        ctx.attributes[SESSION] = E2ESession(envelope.kid, context)
        ctx.body = plaintext
        ctx.replace_body(plaintext)
        return None


class E2ESeal:
    name = "e2e-seal"
    stage = "anomaly"
    priority = 1 << 30

    def check(self, ctx: RequestContext) -> None:
        session = ctx.attributes.get(SESSION)
        if isinstance(session, E2ESession):
            ctx.filter_response(ResponseSealer(session.context))


def _config_error(config: Config, setting: str, message: str) -> ConfigError:
    return config.error(message, "e2e", setting)


def build(config: Config, services: Services) -> list[Check]:
    """The opening and sealing checks of ``[e2e]``."""
    e2e = config.e2e
    if e2e is None:
        return []
    if e2e.max_age <= 0:
        raise _config_error(config, "max_age", "expected a duration above zero")
    if not e2e.key_path.startswith("/"):
        raise _config_error(config, "key_path", "expected a path starting with /")
    keys = []
    for setting, secret in [("private_key", e2e.private_key), *(("retired_keys", s) for s in e2e.retired_keys)]:
        try:
            keys.append(load_private_key(secret))
        except ValueError as exc:
            raise _config_error(config, setting, str(exc)) from None
    return [E2EOpen(e2e, keys, services.storage), E2ESeal()]
