"""Sender-constrained access tokens: RFC 8705 certificate-bound and RFC 9449 DPoP-bound.

Runs after every check that verifies a token (priority 50, before the identity gate). It reads
what they leave: ``ctx.identity.confirmation`` (the token's ``cnf``), ``ctx.attributes
["access_token"]`` and ``ctx.attributes["auth_scheme"]`` (``"Bearer"`` or ``"DPoP"``). Calls
without a token (mTLS alone, anonymous) are not its business.

- ``cnf["x5t#S256"]``: the call must come with that client certificate (the mTLS check's
  thumbprint, or the TLS connection's certificate when ``[identity.mtls]`` is not configured).
- ``cnf["jkt"]``: the token must be sent with the ``DPoP`` scheme and one valid proof signed by
  that key, whose ``jti`` is remembered in ``[storage]`` so the proof cannot be replayed.
- A token without ``cnf`` passes in ``optional`` mode and is refused in ``required`` mode
  (``[identity.jwt] sender_constraint``; ``optional`` when only introspection is configured).

A token whose ``cnf`` holds only methods this check cannot verify is refused: accepting it as a
bearer token would drop the binding its issuer asked for.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Literal
from urllib.parse import quote

from ..config import Config, DPoPConfig
from ..context import RequestContext
from ..decision import Denial, Overloaded, Unauthenticated
from ..services import Services
from ..storage import Storage, StorageError
from ..tokens.dpop import DPoPError, DPoPProof, DPoPVerifier
from .base import Check, Outcome
from .mtls import certificate_thumbprint

Mode = Literal["off", "optional", "required"]


def _same(presented: object, expected: object) -> bool:
    return (isinstance(presented, str) and isinstance(expected, str)
            and hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8")))


def request_uri(ctx: RequestContext) -> str:
    """The URI a DPoP proof must name: scheme as resolved by transport, Host header, path."""
    raw = ctx.raw_path.decode("latin-1")
    path = raw if raw.startswith("/") else quote(ctx.path)
    return f"{ctx.scheme}://{ctx.headers.get('host', '')}{path}"


class SenderConstraintCheck:
    name = "sender-constraint"
    stage = "identity"
    priority = 50  # after the checks that verify tokens, before the identity gate

    def __init__(self, mode: Mode, verifier: DPoPVerifier, storage: Storage, *, thumbprint_from_tls: bool) -> None:
        self.required = mode == "required"
        self.verifier = verifier
        self.storage = storage
        self.thumbprint_from_tls = thumbprint_from_tls
        self._algs = " ".join(verifier.algorithms)

    def check(self, ctx: RequestContext) -> Outcome:
        token = ctx.attributes.get("access_token")
        identity = ctx.identity
        if not isinstance(token, str) or identity is None:
            return None
        dpop_scheme = str(ctx.attributes.get("auth_scheme", "Bearer")).lower() == "dpop"
        scheme = "DPoP" if dpop_scheme else "Bearer"
        cnf = identity.confirmation
        if not cnf:
            if dpop_scheme:
                return self._invalid_token("the access token is not bound to a DPoP key", "dpop_unbound_token", scheme)
            if self.required:
                return self._invalid_token("the access token must be sender-constrained (cnf)",
                                           "sender_constraint_required", scheme)
            return None
        if not isinstance(cnf, Mapping):
            return self._invalid_token("the access token's cnf claim is malformed", "bad_confirmation", scheme)
        thumbprint, jkt = cnf.get("x5t#S256"), cnf.get("jkt")
        if thumbprint is None and jkt is None:
            return self._invalid_token("the access token is bound by a confirmation method that is not supported",
                                       "unsupported_confirmation", scheme)
        if thumbprint is not None:
            denial = self._certificate_binding(ctx, thumbprint, scheme)
            if denial is not None:
                return denial
        if jkt is not None:
            return self._dpop_binding(ctx, jkt, token, dpop_scheme)
        if dpop_scheme:
            return self._invalid_token("the access token is not bound to a DPoP key", "dpop_unbound_token", scheme)
        return None

    def _certificate_binding(self, ctx: RequestContext, expected: object, scheme: str) -> Denial | None:
        presented = ctx.attributes.get("client_cert_thumbprint")
        if presented is None and self.thumbprint_from_tls and ctx.tls is not None and ctx.tls.client_cert:
            presented = certificate_thumbprint(ctx.tls.client_cert)
        if presented is None:
            return self._invalid_token("the access token is bound to a client certificate the call does not present",
                                       "certificate_mismatch", scheme)
        if not _same(presented, expected):
            return self._invalid_token("the access token is bound to another client certificate",
                                       "certificate_mismatch", scheme)
        return None

    def _dpop_binding(self, ctx: RequestContext, jkt: object, token: str, dpop_scheme: bool) -> Outcome:
        if not dpop_scheme:
            return self._invalid_token("a DPoP-bound access token must be sent with the DPoP scheme and a proof",
                                       "dpop_required", "DPoP")
        proofs = ctx.headers.getlist("dpop")
        if len(proofs) != 1:
            message = "a DPoP proof is required" if not proofs else "send exactly one DPoP proof"
            return self._invalid_proof(message, "dpop_proof_missing" if not proofs else "dpop_proof_multiple")
        try:
            proof = self.verifier.verify(proofs[0].strip(), method=ctx.method, uri=request_uri(ctx),
                                         access_token=token)
        except DPoPError as exc:
            return self._invalid_proof(exc.message, exc.code)
        if not _same(proof.jkt, jkt):
            return self._invalid_proof("the DPoP proof is signed by another key than the token is bound to",
                                       "dpop_key_mismatch")
        return self._first_use(ctx, proof)

    async def _first_use(self, ctx: RequestContext, proof: DPoPProof) -> Denial | None:
        try:
            first = await self.storage.add(f"dpop:{proof.jkt}:{proof.jti}", ttl=self.verifier.replay_window)
        except StorageError:
            return Overloaded("the DPoP replay store is unavailable; try again", retry_after=1,
                              code="storage_unavailable")
        if not first:
            return self._invalid_proof("the DPoP proof has been used before", "dpop_replay")
        ctx.attributes["dpop_jkt"] = proof.jkt
        return None

    def _invalid_token(self, message: str, code: str, scheme: str) -> Denial:
        # RFC 9449 section 7.1: a DPoP challenge names the proof algorithms accepted.
        challenge = [("algs", self._algs)] if scheme == "DPoP" else []
        return Unauthenticated(message, code=code, error="invalid_token", scheme=scheme, challenge=challenge)

    def _invalid_proof(self, message: str, code: str) -> Denial:
        return Unauthenticated(message, code=code, error="invalid_dpop_proof", scheme="DPoP",
                               challenge=[("algs", self._algs)])


def build(config: Config, services: Services) -> list[Check]:
    identity = config.identity
    mode: Mode = identity.jwt.sender_constraint if identity.jwt is not None else "optional"
    if mode == "off":
        return []
    verifier = DPoPVerifier(identity.dpop or DPoPConfig())
    return [SenderConstraintCheck(mode, verifier, services.storage, thumbprint_from_tls=identity.mtls is None)]
