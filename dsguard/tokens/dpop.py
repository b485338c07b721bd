"""RFC 9449 DPoP: verifying the proof of possession a client sends in the ``DPoP`` header.

:meth:`DPoPVerifier.verify` runs the checks of RFC 9449 section 4.3 that need no shared state:
one compact JWS of type ``dpop+jwt``, an asymmetric algorithm from the allowlist, a public
``jwk`` that verifies the signature, ``htm`` and ``htu`` naming this request, ``iat`` inside
the window and ``ath`` hashing the access token. It returns the proof key's RFC 7638
thumbprint and the ``jti``; comparing the thumbprint with the token's ``cnf.jkt`` and
remembering the ``jti`` (replay) are left to the caller, which holds the token and the storage.
Every failure is a :class:`DPoPError` with a stable ``code``; messages never quote the proof.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt

from ..config import DPoPConfig
from .keys import b64url, jwk_thumbprint

MAX_PROOF_CHARS = 4096  # an RSA-4096 proof is about 2 KiB
MAX_JTI_CHARS = 256
PROOF_TYPES = frozenset({"dpop+jwt", "application/dpop+jwt"})
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class DPoPError(Exception):
    """A proof that does not hold; ``code`` is the stable reason."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True, slots=True)
class DPoPProof:
    """A proof that passed every stateless check."""

    jkt: str
    jti: str
    issued_at: float


def access_token_hash(access_token: str) -> str:
    """The ``ath`` of RFC 9449: base64url SHA-256 of the token (ASCII), without padding."""
    return b64url(hashlib.sha256(access_token.encode("utf-8")).digest())


def _normalize_percent(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def _remove_dot_segments(path: str) -> str:
    if "." not in path:
        return path
    segments = path.split("/")
    output: list[str] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment in (".", ".."):
            if segment == ".." and len(output) > 1:
                output.pop()
            if index == last:
                output.append("")
        else:
            output.append(segment)
    return "/".join(output)


def normalize_uri(uri: str) -> str | None:
    """``uri`` for comparison (RFC 3986 sections 6.2.2 and 6.2.3): scheme and host lower-cased,
    default port dropped, percent-encoding normalised, dot segments removed, query and fragment
    dropped. ``None`` if it is not an absolute http(s) URI."""
    try:
        parts = urlsplit(uri.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or parts.username is not None:
        return None
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = _remove_dot_segments(_PERCENT.sub(_normalize_percent, parts.path)) or "/"
    return f"{scheme}://{netloc}{path}"


@dataclass(frozen=True, slots=True)
class _ProofKey:
    jwk: dict[str, Any]
    pyjwk: jwt.PyJWK


class DPoPVerifier:
    """Verifies DPoP proofs under ``[identity.dpop]``; symmetric algorithms and ``none`` never pass."""

    def __init__(self, config: DPoPConfig, clock: Callable[[], float] = time.time) -> None:
        self.algorithms = tuple(a for a in config.algorithms if a.lower() != "none" and not a.upper().startswith("HS"))
        self.max_age = config.max_age
        self.leeway = config.leeway
        self._clock = clock

    @property
    def replay_window(self) -> float:
        """How long a ``jti`` must be remembered: as long as a proof carrying it is accepted."""
        return self.max_age + 2 * self.leeway

    def verify(self, proof: str, *, method: str, uri: str, access_token: str | None) -> DPoPProof:
        """Check ``proof`` for a request ``method uri`` presenting ``access_token``."""
        if len(proof) > MAX_PROOF_CHARS:
            raise DPoPError("the DPoP proof is too large", "dpop_proof_malformed")
        header = self._header(proof)
        alg = header["alg"]
        key = self._public_key(header.get("jwk"), alg)
        claims = self._claims(proof, key, alg)
        self._check_request(claims, method, uri)
        self._check_time(claims["iat"])
        if access_token is not None and not _same(claims.get("ath"), access_token_hash(access_token)):
            raise DPoPError("the DPoP proof is not bound to the presented access token (ath)", "dpop_ath_mismatch")
        return DPoPProof(jkt=jwk_thumbprint(key.jwk), jti=claims["jti"], issued_at=float(claims["iat"]))

    def _header(self, proof: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(proof)
        except jwt.PyJWTError:
            raise DPoPError("the DPoP proof is not a well-formed JWS", "dpop_proof_malformed") from None
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in PROOF_TYPES:
            raise DPoPError('the DPoP proof must have typ "dpop+jwt"', "dpop_proof_type")
        if header.get("alg") not in self.algorithms:
            raise DPoPError(f"the DPoP proof algorithm must be one of {', '.join(self.algorithms)}",
                            "dpop_algorithm")
        return header

    def _public_key(self, jwk: object, alg: str) -> _ProofKey:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kty"), str):
            raise DPoPError("the DPoP proof header must carry the public key as a jwk", "dpop_key_invalid")
        if _PRIVATE_MEMBERS & jwk.keys():
            raise DPoPError("the DPoP proof jwk must hold a public key only", "dpop_private_key")
        if jwk.get("alg", alg) != alg:
            raise DPoPError("the DPoP proof jwk is meant for another algorithm", "dpop_key_invalid")
        try:
            jwk_thumbprint(jwk)
            return _ProofKey(jwk, jwt.PyJWK(jwk, algorithm=alg))
        except (ValueError, jwt.PyJWTError):
            raise DPoPError(f"the DPoP proof jwk is not a usable {alg} public key", "dpop_key_invalid") from None

    def _claims(self, proof: str, key: _ProofKey, alg: str) -> dict[str, Any]:
        options: Any = {"verify_iat": False, "verify_aud": False, "verify_iss": False,
                        "enforce_minimum_key_length": True}
        try:
            claims: dict[str, Any] = jwt.decode(proof, key.pyjwk, algorithms=[alg], options=options,
                                                leeway=self.leeway)
        except jwt.InvalidSignatureError:
            raise DPoPError("the DPoP proof signature does not verify with its jwk", "dpop_bad_signature") from None
        except jwt.InvalidKeyError:
            raise DPoPError(f"the DPoP proof jwk is not a usable {alg} public key", "dpop_key_invalid") from None
        except jwt.PyJWTError:
            raise DPoPError("the DPoP proof is not a well-formed JWS", "dpop_proof_malformed") from None
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_CHARS:
            raise DPoPError(f"the DPoP proof needs a jti of 1 to {MAX_JTI_CHARS} characters", "dpop_proof_malformed")
        for name in ("htm", "htu"):
            if not isinstance(claims.get(name), str):
                raise DPoPError(f"the DPoP proof needs a {name} claim", "dpop_proof_malformed")
        iat = claims.get("iat")
        if not isinstance(iat, int | float) or isinstance(iat, bool):
            raise DPoPError("the DPoP proof needs a numeric iat claim", "dpop_proof_malformed")
        return claims

    def _check_request(self, claims: Mapping[str, Any], method: str, uri: str) -> None:
        if claims["htm"] != method:
            raise DPoPError("the DPoP proof was made for another HTTP method (htm)", "dpop_method_mismatch")
        expected = normalize_uri(uri)
        if expected is None or normalize_uri(claims["htu"]) != expected:
            raise DPoPError("the DPoP proof was made for another URI (htu)", "dpop_uri_mismatch")

    def _check_time(self, iat: float) -> None:
        now = self._clock()
        if iat < now - self.max_age - self.leeway:
            raise DPoPError("the DPoP proof is too old (iat)", "dpop_proof_expired")
        if iat > now + self.leeway:
            raise DPoPError("the DPoP proof is issued in the future (iat)", "dpop_proof_not_yet_valid")


def _same(claimed: object, expected: str) -> bool:
    return isinstance(claimed, str) and hmac.compare_digest(claimed.encode("utf-8"), expected.encode("ascii"))
