"""Access tokens: verification keys (JWKS), the verified-token cache and revocation."""

from __future__ import annotations

from .cache import TokenCache, VerifiedToken, token_digest
from .jwks import KeySet, KeyStore, KeysUnavailable, RemoteJWKS, VerificationKey, open_key_store
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
    "open_key_store",
    "revoke",
    "token_digest",
]
