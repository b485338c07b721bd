"""The RFC 9421 section 3.3 algorithms dsguard signs and verifies with, by their registered names.

Each name maps to the http-message-signatures class implementing it and to the one key type it
may be used with, so that a key is never used with another algorithm than its own.
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from http_message_signatures.algorithms import (
    ECDSA_P256_SHA256,
    ED25519,
    HMAC_SHA256,
    RSA_PSS_SHA512,
    HTTPSignatureAlgorithm,
)

ALGORITHMS: Mapping[str, type[HTTPSignatureAlgorithm]] = {
    "ed25519": ED25519,
    "ecdsa-p256-sha256": ECDSA_P256_SHA256,
    "rsa-pss-sha512": RSA_PSS_SHA512,
    "hmac-sha256": HMAC_SHA256,
}
SYMMETRIC = frozenset({"hmac-sha256"})
MIN_RSA_BITS = 2048
MIN_HMAC_BYTES = 32

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def algorithm_of(key: PublicKey | PrivateKey) -> str:
    """The algorithm an asymmetric key signs with; raises ``ValueError`` for any other key."""
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"EC keys must be on P-256, not {key.curve.name}")
        return "ecdsa-p256-sha256"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA keys need at least {MIN_RSA_BITS} bits")
        return "rsa-pss-sha512"
    raise ValueError(f"unsupported key type {type(key).__name__}; expected Ed25519, EC P-256 or RSA")
