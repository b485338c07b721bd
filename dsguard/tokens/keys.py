"""JSON Web Keys: each verification key bound to the algorithms of its own type, RFC 7638 thumbprints.

RSA keys verify RS*/PS*, EC keys the ES* of their curve, OKP keys EdDSA and symmetric keys HS*,
so a token cannot choose how its key is used (no ``alg: none``, no HS256 with an RSA public key).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import jwt

logger = logging.getLogger("dsguard.jwks")

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}
HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}  # RFC 7518 3.2: at least the hash size
SUPPORTED_ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_ALGORITHMS.values()) | {"EdDSA"} | frozenset(HMAC_MIN_BYTES)
THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"),
                      "oct": ("k", "kty")}
MIN_RSA_BITS = 2048
MAX_KEYS = 100
MAX_CANDIDATES = 4


class KeySourceError(ValueError):
    """A configured key source cannot be used; ``setting`` names the ``[identity.jwt]`` key."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


class UnusableKey(ValueError):
    """One JWK that is skipped (private, unsupported, not for signatures ...)."""


class JWKSError(ValueError):
    """A JWKS document that cannot be used at all."""


class KeysUnavailable(Exception):
    """The JWKS endpoint cannot be reached and no earlier keys are within their grace period."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("signing keys are unavailable")
        self.retry_after = retry_after


class UnknownKey(Exception):
    """No configured key has the token's ``kid``."""


class KeyAlgorithmMismatch(Exception):
    """The token's ``kid`` names a key of another type than its ``alg``."""


class VerificationKey:
    """A public (or, for HS*, secret) key and the algorithms it may verify."""

    __slots__ = ("algorithms", "fingerprint", "key", "kid")

    def __init__(self, kid: str | None, algorithms: frozenset[str], key: Any, fingerprint: str) -> None:
        self.kid = kid
        self.algorithms = algorithms
        self.key = key
        self.fingerprint = fingerprint

    def __repr__(self) -> str:
        return f"VerificationKey(kid={self.kid!r}, algorithms={sorted(self.algorithms)})"


class KeySet:
    """An immutable set of keys, indexed by ``kid``."""

    __slots__ = ("fingerprints", "keys", "kids")

    def __init__(self, keys: Iterable[VerificationKey] = ()) -> None:
        self.keys = tuple(keys)
        self.kids = frozenset(k.kid for k in self.keys if k.kid is not None)
        self.fingerprints = frozenset(k.fingerprint for k in self.keys)

    def candidates(self, kid: str | None, alg: str) -> list[VerificationKey]:
        """Keys that may have signed a token with this ``kid`` and ``alg``, exact ``kid`` first."""
        exact = [k for k in self.keys if k.kid == kid and alg in k.algorithms] if kid is not None else []
        loose = [k for k in self.keys if (kid is None or k.kid is None) and alg in k.algorithms]
        return (exact + loose)[:MAX_CANDIDATES]

    def __len__(self) -> int:
        return len(self.keys)


def _algorithms(jwk: Mapping[str, Any], key: Any) -> frozenset[str]:
    kty = jwk["kty"]
    if kty == "RSA":
        if key.key_size < MIN_RSA_BITS:
            raise UnusableKey(f"RSA keys need at least {MIN_RSA_BITS} bits")
        return RSA_ALGORITHMS
    if kty == "EC":
        return frozenset({EC_ALGORITHMS[jwk["crv"]]})
    if kty == "OKP":
        return frozenset({"EdDSA"})
    fitting = frozenset(alg for alg, size in HMAC_MIN_BYTES.items() if len(key) >= size)
    if not fitting:
        raise UnusableKey("symmetric keys need at least 32 bytes")
    return fitting


def _fingerprint(jwk: Mapping[str, Any], algorithms: frozenset[str]) -> str:
    """RFC 7638 thumbprint, with the ``kid`` and the algorithms the key is bound to."""
    members = {name: jwk[name] for name in THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"))
    bound = f"{jwk.get('kid')}|{','.join(sorted(algorithms))}|{canonical}"
    return hashlib.sha256(bound.encode()).hexdigest()


def key_from_jwk(jwk: Mapping[str, Any], *, allow_symmetric: bool = False) -> VerificationKey:
    """A verification key from one JWK; raises :class:`UnusableKey` saying why it is skipped."""
    kty = jwk.get("kty")
    if kty not in THUMBPRINT_MEMBERS:
        raise UnusableKey("unsupported key type")
    if jwk.get("use", "sig") != "sig":
        raise UnusableKey('its "use" is not "sig"')
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise UnusableKey('its "key_ops" do not include "verify"')
    if "d" in jwk:
        raise UnusableKey("it is a private key")
    if kty == "oct" and not allow_symmetric:
        raise UnusableKey("symmetric keys are accepted only from a local file or the secret setting")
    crv = jwk.get("crv")
    if (kty == "EC" and (not isinstance(crv, str) or crv not in EC_ALGORITHMS)) or (kty == "OKP" and crv != "Ed25519"):
        raise UnusableKey("unsupported curve")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise UnusableKey('its "kid" is not a string')
    try:
        key = jwt.PyJWK({name: value for name, value in jwk.items() if name != "alg"}).key
    except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
        raise UnusableKey(f"it cannot be read ({type(exc).__name__})") from None
    algorithms = _algorithms(jwk, key)
    alg = jwk.get("alg")
    if alg is not None:
        if alg not in algorithms:
            raise UnusableKey(f'its "alg" does not fit a {kty} key')
        algorithms = frozenset({alg})
    return VerificationKey(kid, algorithms, key, _fingerprint(jwk, algorithms))


def parse_jwks(document: object, *, source: str, allow_symmetric: bool = False) -> KeySet:
    """The usable keys of a JWKS document; unusable keys are skipped with a warning."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JWKSError('not a JWKS (expected an object with a "keys" list)')
    keys = []
    for jwk in document["keys"][:MAX_KEYS]:
        if not isinstance(jwk, dict):
            logger.warning("%s: skipping a JWKS entry that is not an object", source)
            continue
        try:
            keys.append(key_from_jwk(jwk, allow_symmetric=allow_symmetric))
        except UnusableKey as exc:
            logger.warning("%s: skipping key %.64r: %s", source, jwk.get("kid"), exc)
    if not keys:
        logger.warning("%s: the JWKS holds no usable signing key", source)
    return KeySet(keys)


def secret_key(secret: str) -> VerificationKey:
    """The HS* key of the ``secret`` setting."""
    raw = secret.encode()
    algorithms = frozenset(alg for alg, size in HMAC_MIN_BYTES.items() if len(raw) >= size)
    if not algorithms:
        raise KeySourceError("secret", "the HMAC secret must be at least 32 bytes (RFC 7518 3.2)")
    digest = hashlib.sha256(b"dsguard-secret-fingerprint|" + raw).hexdigest()
    return VerificationKey(None, algorithms, raw, digest)


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK; raises ``ValueError`` for an unknown ``kty``."""
    members = THUMBPRINT_MEMBERS.get(jwk.get("kty"))  # type: ignore[arg-type]
    if members is None or not all(isinstance(jwk.get(m), str) for m in members):
        raise ValueError("the key lacks the members of its type")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())
