"""Access tokens: verification keys (JWKS), the verified-token cache and revocation."""

from __future__ import annotations

from .cache import TokenCache, VerifiedToken, token_digest
from .jwks import KeyStore, RemoteJWKS, open_key_store
from .keys import KeySet, KeysUnavailable, VerificationKey, jwk_thumbprint
from .revocation import is_revoked, revoke

__all__ = [
    "KeySet",
    "KeyStore",
    "KeysUnavailable",
    "RemoteJWKS",
    "TokenCache",
    "VerificationKey",
    "VerifiedToken",
    "is_revoked",
    "jwk_thumbprint",
    "open_key_store",
    "revoke",
    "token_digest",
]
