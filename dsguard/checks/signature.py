"""Signed requests: RFC 9421 HTTP Message Signatures with an RFC 9530 Content-Digest.

Runs after the identity stage with the whole body read. A request carrying ``Signature-Input``
and ``Signature`` is verified (:mod:`dsguard.signatures.verify`) against the key directory of
``[signatures] keys``; its ``@target-uri`` is rebuilt from the scheme the transport check
resolved, the Host field, the raw path and the raw query. Then:

- a key bound to a subject refuses a caller whose verified identity is someone else, and, when
  no identity check identified the caller, makes that subject the identity;
- the nonce (or, without one, the signature itself) is stored in ``[storage]`` for as long as
  the signature is accepted, so a captured request cannot be replayed, on any replica sharing
  that storage. When the storage cannot answer, the call is refused (503 ``storage_unavailable``).

Unsigned requests are refused when ``required`` (the default) and pass otherwise; a signature
that is present but does not hold is refused either way. Refusals are 401 with a
``WWW-Authenticate: Signature`` challenge and an ``Accept-Signature`` field (RFC 9421 section
5.1) naming the components a signature must cover.
"""

from __future__ import annotations

import logging
from typing import Any

import http_sf

from ..config import Config, SignaturesConfig
from ..context import Identity, RequestContext
from ..decision import Denial, Overloaded, Unauthenticated
from ..errors import ConfigError
from ..services import Services
from ..signatures.keys import KeyDirectory, KeyDirectoryError, load_key_directory
from ..signatures.message import request_message, target_uri
from ..signatures.verify import (
    SignatureError,
    SignatureVerifier,
    VerifiedSignature,
    check_algorithms,
    check_components,
)
from ..storage import Storage, StorageError
from .base import Check, Outcome
from .hygiene import ENCODED_BODY

logger = logging.getLogger("dsguard.signatures")

ACCEPT_LABEL = "sig1"


def accept_signature(config: SignaturesConfig) -> str:
    """The ``Accept-Signature`` value (RFC 9421 section 5.1) asking for what this guard requires."""
    params: dict[str, Any] = {"created": True}
    if config.nonce_required:
        params["nonce"] = True
    if config.tag is not None:
        params["tag"] = config.tag
    member: Any = ([(name, {}) for name in config.components], params)
    return http_sf.ser({ACCEPT_LABEL: member})


class SignatureCheck:
    name = "signature"
    stage = "signature"
    needs_body = True

    def __init__(self, config: SignaturesConfig, verifier: SignatureVerifier, storage: Storage) -> None:
        self.mode = config.mode
        self.required = config.required
        self.verifier = verifier
        self.storage = storage
        self._accept = ("Accept-Signature", accept_signature(config))

    def check(self, ctx: RequestContext) -> Outcome:
        headers = ctx.headers
        if "signature-input" not in headers and "signature" not in headers:
            return self._deny("signature_missing", "the request must be signed") if self.required else None
        return self._verify(ctx)

    def _deny(self, code: str, message: str) -> Unauthenticated:
        error = None if code == "signature_missing" else code
        return Unauthenticated(message, code=code, error=error, scheme="Signature", headers=[self._accept])

    async def _verify(self, ctx: RequestContext) -> Denial | None:
        url = target_uri(ctx)
        if url is None:
            return self._deny("signature_invalid", "a signed request needs exactly one Host field")
        try:
            # Content-Digest covers the content as sent, before any content coding is removed
            body = ctx.attributes.get(ENCODED_BODY, ctx.body)
            verified = self.verifier.verify(request_message(ctx, url), body or b"")
        except SignatureError as exc:
            return self._deny(exc.code, exc.message)
        identity = ctx.identity
        if verified.subject is not None and identity is not None and identity.subject != verified.subject:
            return self._deny("key_subject_mismatch", "the signing key belongs to another caller")
        denial = await self._remember(verified)
        if denial is not None:
            return denial
        ctx.attributes["signature"] = verified
        if identity is None and verified.subject is not None:
            ctx.identity = Identity(subject=verified.subject, method="signature")
        return None

    async def _remember(self, verified: VerifiedSignature) -> Denial | None:
        try:
            first = await self.storage.add(f"sig:{verified.keyid}:{verified.replay_id}",
                                           ttl=self.verifier.replay_window)
        except StorageError as exc:
            logger.warning("cannot record the signature nonce (%s); refusing the call", exc)
            return Overloaded("signature replays cannot be checked; try again", code="storage_unavailable",
                              retry_after=1)
        if not first:
            return self._deny("signature_replayed", "this signed request has already been received")
        return None


def _config_error(config: Config, setting: str, message: str) -> ConfigError:
    return config.error(message, "signatures", setting)


def build(config: Config, services: Services) -> list[Check]:
    """The signature check of ``[signatures]``."""
    signatures = config.signatures
    if signatures is None:
        return []
    if signatures.keys is None:
        raise _config_error(config, "keys", "a key directory is required to verify signatures")
    if signatures.max_age <= 0:
        raise _config_error(config, "max_age", "expected a duration above zero")
    try:
        keys: KeyDirectory = load_key_directory(signatures.keys)
    except KeyDirectoryError as exc:
        raise _config_error(config, "keys", str(exc)) from None
    try:
        check_algorithms(signatures.algorithms)
    except ValueError as exc:
        raise _config_error(config, "algorithms", str(exc)) from None
    try:
        check_components(signatures.components)
    except ValueError as exc:
        raise _config_error(config, "components", str(exc)) from None
    verifier = SignatureVerifier(keys, components=signatures.components, algorithms=signatures.algorithms,
                                 max_age=signatures.max_age, clock_skew=signatures.clock_skew,
                                 nonce_required=signatures.nonce_required, tag=signatures.tag)
    if not keys:
        logger.warning("%s: [signatures] keys: the key directory is empty; every signature will be refused",
                       config.source or "config")
    return [SignatureCheck(signatures, verifier, services.storage)]
