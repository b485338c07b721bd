"""Bearer JWT access tokens (RFC 7519, RFC 9068), verified with pyjwt against configured keys.

The token comes only from ``Authorization: Bearer`` or ``Authorization: DPoP`` (the scheme and
token are left in ``ctx.attributes`` for the sender-constraint check). The header and payload
are parsed here first, refusing duplicate JSON keys, then pyjwt checks the signature with a key
chosen by ``kid`` among configured keys only, with the token's ``alg`` only if it fits the key's
type, and validates ``exp``/``nbf``/``iat``/``iss``/``aud``. A verified token is cached by digest
until it expires; its ``jti`` is checked against the revocation list on every call. When that
list cannot be read the call is refused (503 ``storage_unavailable``) whatever ``[storage] on_error``
says: ``local-fallback`` serves rate limits, and a revoked token must never pass.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import time
import types
from collections.abc import Awaitable, Mapping
from typing import Any

import jwt

from ..config import Config, JWTConfig
from ..context import Identity, RequestContext
from ..decision import Denial, Overloaded, Unauthenticated
from ..errors import ConfigError
from ..services import Services
from ..storage import Storage, StorageError
from ..tokens.authorization import access_token, credentials_problem, looks_like_jwt
from ..tokens.cache import TokenCache, VerifiedToken, token_digest
from ..tokens.jwks import KeyStore, open_key_store
from ..tokens.keys import (
    SUPPORTED_ALGORITHMS,
    KeyAlgorithmMismatch,
    KeySourceError,
    KeysUnavailable,
    UnknownKey,
    VerificationKey,
)
from ..tokens.revocation import is_revoked
from .base import Check

logger = logging.getLogger("dsguard.jwt")

_NUMERIC_DATES = ("exp", "nbf", "iat")

# pyjwt's exceptions, most specific first, as (code, message) of the 401 they become.
_PYJWT_DENIALS: tuple[tuple[type[Exception], str, str], ...] = (
    (jwt.ExpiredSignatureError, "token_expired", "the token has expired"),
    (jwt.ImmatureSignatureError, "token_not_yet_valid", "the token is not valid yet"),
    (jwt.InvalidAudienceError, "invalid_audience", "the token is not meant for this service"),
    (jwt.InvalidIssuerError, "invalid_issuer", "the token is not from the expected issuer"),
    (jwt.MissingRequiredClaimError, "missing_claim", "the token lacks a required claim"),
    (jwt.InvalidSignatureError, "invalid_signature", "the token's signature is not valid"),
    (jwt.InvalidAlgorithmError, "algorithm_not_allowed", "the token's signing algorithm is not accepted"),
    (jwt.InvalidKeyError, "invalid_signature", "the token's signature is not valid"),
    (jwt.InvalidTokenError, "invalid_claim", "the token has a malformed claim"),
)


class DuplicateMember(ValueError):
    pass


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise DuplicateMember()
    return members


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_members)


def _decode_segment(segment: str) -> dict[str, Any]:
    """One base64url JSON object of a JWS; raises ``ValueError`` (``DuplicateMember`` on repeats)."""
    if len(segment) % 4 == 1:
        raise ValueError("bad base64url length")
    data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    try:
        value = _DECODER.decode(data.decode("utf-8"))
    except RecursionError:
        raise ValueError("JSON nests too deeply") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _is_numeric_date(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _media_type(typ: str) -> str:
    typ = typ.strip().lower()
    return typ[len("application/"):] if typ.startswith("application/") else typ


def _names(value: object) -> frozenset[str]:
    """Roles or scopes from a claim: a space-separated string or a list of strings."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list | tuple):
        return frozenset(item for item in value if isinstance(item, str) and item)
    return frozenset()


class JWTCheck:
    name = "jwt"
    stage = "identity"

    def __init__(self, config: JWTConfig, keys: KeyStore, storage: Storage, *, revocation: bool = True,
                 opaque_tokens_elsewhere: bool = False) -> None:
        self.config = config
        self.keys = keys
        self.storage = storage
        self.revocation = revocation
        self.opaque_tokens_elsewhere = opaque_tokens_elsewhere
        self.algorithms = frozenset(config.algorithms)
        self.max_token_bytes = config.max_token_bytes
        self.leeway = config.leeway
        self.required_claims = tuple(dict.fromkeys((*config.required_claims, "exp", "sub")))
        self.typ = _media_type(config.require_typ) if config.require_typ else None
        self.cache = TokenCache(config.cache_size) if config.cache_size > 0 else None
        self._pyjwt = jwt.PyJWT(options={
            "require": list(self.required_claims),
            "verify_aud": config.audience is not None,
            "verify_iss": config.issuer is not None,
            "enforce_minimum_key_length": True,
        })

    async def startup(self) -> None:
        await self.keys.startup()

    def check(self, ctx: RequestContext) -> Denial | Awaitable[Denial | None] | None:
        found = access_token(ctx)
        if found is None:
            return None
        scheme, token = found
        problem = credentials_problem(ctx, scheme, token)
        if problem is not None:
            return problem
        ctx.attributes["auth_scheme"] = scheme
        ctx.attributes["access_token"] = token
        if len(token) > self.max_token_bytes:
            return self._deny(scheme, "token_too_large", f"the token is larger than {self.max_token_bytes} bytes")
        cache = self.cache
        digest = None
        if cache is not None:
            digest = token_digest(token)
            entry = cache.get(digest)
            if entry is not None and self.keys.holds(entry.key_fingerprint):
                return self._admit(ctx, entry.identity, scheme)
        if not looks_like_jwt(token):
            if self.opaque_tokens_elsewhere:
                return None
            return self._deny(scheme, "malformed_token", "the token is not a well-formed JWT")
        return self._verify(ctx, token, scheme, digest)

    def _deny(self, scheme: str, code: str, message: str) -> Unauthenticated:
        return Unauthenticated(message, code=code, error="invalid_token", scheme=scheme)

    def _admit(self, ctx: RequestContext, identity: Identity, scheme: str) -> Awaitable[Denial | None] | None:
        if self.revocation and identity.token_id is not None:
            return self._admit_unless_revoked(ctx, identity, identity.token_id, scheme)
        ctx.identity = identity
        return None

    async def _admit_unless_revoked(self, ctx: RequestContext, identity: Identity, jti: str,
                                    scheme: str) -> Denial | None:
        try:
            revoked = await is_revoked(self.storage, jti)
        except StorageError as exc:
            logger.warning("cannot check token revocation (%s); refusing the call", exc)
            return Overloaded("token revocation cannot be checked; try again", code="storage_unavailable",
                              retry_after=1)
        if revoked:
            return self._deny(scheme, "token_revoked", "the token has been revoked")
        ctx.identity = identity
        return None

    async def _verify(self, ctx: RequestContext, token: str, scheme: str, digest: bytes | None) -> Denial | None:
        header = self._parse(token, scheme)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            return self._deny(scheme, "algorithm_not_allowed", "the token's signing algorithm is not accepted")
        if "crit" in header:
            return self._deny(scheme, "unsupported_critical_header", "the token has critical header parameters")
        if self.typ is not None:
            typ = header.get("typ")
            if not isinstance(typ, str) or _media_type(typ) != self.typ:
                return self._deny(scheme, "invalid_token_type", f"the token's type must be {self.config.require_typ}")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            return self._deny(scheme, "malformed_token", "the token's key id is not a string")
        try:
            candidates = await self.keys.find(kid, alg)
        except UnknownKey:
            return self._deny(scheme, "unknown_key", "the token is signed with an unknown key")
        except KeyAlgorithmMismatch:
            return self._deny(scheme, "key_algorithm_mismatch", "the token's algorithm does not fit its key")
        except KeysUnavailable as exc:
            return Overloaded("the identity provider's signing keys are unavailable; try again",
                              code="idp_unavailable", retry_after=exc.retry_after)
        claims, key = self._decode(token, alg, candidates, scheme)
        self._check_claims(claims, scheme)
        identity = self._identity(claims)
        if self.cache is not None and digest is not None:
            self.cache.put(digest, VerifiedToken(identity, float(claims["exp"]) + self.leeway, key.fingerprint))
        outcome = self._admit(ctx, identity, scheme)
        return None if outcome is None else await outcome

    def _parse(self, token: str, scheme: str) -> dict[str, Any]:
        """The token's JOSE header, after checking both JSON segments (pyjwt then reads them again)."""
        header_segment, payload_segment, _ = token.split(".")
        try:
            header = _decode_segment(header_segment)
            payload = _decode_segment(payload_segment)
        except DuplicateMember:
            raise self._deny(scheme, "duplicate_json_key", "the token repeats a JSON member") from None
        except (ValueError, binascii.Error):
            raise self._deny(scheme, "malformed_token", "the token is not a well-formed JWT") from None
        for name in _NUMERIC_DATES:
            if name in payload and not _is_numeric_date(payload[name]):
                raise self._deny(scheme, "invalid_claim", f"the token's {name} claim is not a number")
        return header

    def _decode(self, token: str, alg: str, candidates: list[VerificationKey],
                scheme: str) -> tuple[dict[str, Any], VerificationKey]:
        config = self.config
        failure: Exception | None = None
        for key in candidates:
            try:
                claims = self._pyjwt.decode(token, key.key, algorithms=[alg], audience=config.audience,
                                            issuer=config.issuer, leeway=self.leeway)
                return claims, key
            except (jwt.InvalidSignatureError, jwt.InvalidKeyError) as exc:
                failure = exc
            except jwt.PyJWTError as exc:
                failure = exc
                break
        raise self._pyjwt_denial(failure, scheme)

    def _pyjwt_denial(self, error: Exception | None, scheme: str) -> Unauthenticated:
        if isinstance(error, jwt.MissingRequiredClaimError):
            return self._deny(scheme, "missing_claim", f"the token lacks the required claim {error.claim}")
        for kind, code, message in _PYJWT_DENIALS:
            if isinstance(error, kind):
                return self._deny(scheme, code, message)
        return self._deny(scheme, "malformed_token", "the token is not a well-formed JWT")

    def _check_claims(self, claims: Mapping[str, Any], scheme: str) -> None:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise self._deny(scheme, "missing_claim", "the token lacks the required claim sub")
        if "cnf" in claims and not isinstance(claims["cnf"], dict):
            raise self._deny(scheme, "invalid_claim", "the token's cnf claim is not a JSON object")
        exp = claims["exp"]
        start = claims["iat"] if "iat" in claims else time.time()
        if exp - start > self.config.max_ttl:
            raise self._deny(scheme, "token_ttl_too_long",
                             f"the token's lifetime exceeds {self.config.max_ttl:g} seconds")

    def _identity(self, claims: dict[str, Any]) -> Identity:
        config = self.config
        scopes = claims.get(config.scopes_claim)
        if scopes is None:
            scopes = claims.get("scp")
        tenant = claims.get(config.tenant_claim) if config.tenant_claim else None
        jti = claims.get("jti")
        issuer = claims.get("iss")
        confirmation = claims.get("cnf")
        return Identity(
            subject=claims["sub"],
            method="jwt",
            issuer=issuer if isinstance(issuer, str) else None,
            roles=_names(claims.get(config.roles_claim)),
            scopes=_names(scopes),
            tenant=tenant if isinstance(tenant, str) else None,
            claims=types.MappingProxyType(claims),
            token_id=jti if isinstance(jti, str) else None,
            expires_at=float(claims["exp"]),
            confirmation=None if confirmation is None else types.MappingProxyType(confirmation),
        )


def _config_error(config: Config, setting: str, message: str) -> ConfigError:
    return config.error(message, "identity", "jwt", setting)


def build(config: Config, services: Services) -> list[Check]:
    """The JWT check of ``[identity.jwt]``."""
    jwt_config = config.identity.jwt
    if jwt_config is None:
        return []
    if "none" in (alg.lower() for alg in jwt_config.algorithms):
        raise _config_error(config, "algorithms", 'unsigned tokens ("none") are never accepted')
    unsupported = sorted(set(jwt_config.algorithms) - SUPPORTED_ALGORITHMS)
    if unsupported:
        raise _config_error(config, "algorithms", f"unsupported algorithm {unsupported[0]!r}; expected some of "
                                                  f"{', '.join(sorted(SUPPORTED_ALGORITHMS))}")
    try:
        keys = open_key_store(jwt_config)
    except KeySourceError as exc:
        raise _config_error(config, exc.setting, str(exc)) from None
    check = JWTCheck(jwt_config, keys, services.storage, revocation=config.identity.revocation,
                     opaque_tokens_elsewhere=config.identity.introspection is not None)
    return [check]
