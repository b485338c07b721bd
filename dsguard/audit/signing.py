"""Signed checkpoints: the chain head signed through a key provider (Ed25519 or P-256).

A checkpoint record carries ``key_id`` (RFC 7638 thumbprint), ``alg``, the signer's public
``jwk`` and ``signature`` (base64url, JOSE form) over the canonical JSON of the record without
its ``signature`` and ``hash`` members. Its ``prev`` is the head it anchors. A verifier pins the
keys it trusts; the key a checkpoint carries only says which one signed it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from ..crypto.keys import PublicKey, public_jwk, public_key_id, verify_signature
from .chain import HASH, canonical

SIGNATURE = "signature"


class CheckpointSigner(Protocol):
    """What the audit log needs of a :mod:`dsguard.crypto.keys` signer."""

    algorithm: str
    key_id: str

    def sign(self, data: bytes) -> bytes: ...

    def public_key(self) -> PublicKey: ...


def resolve_key_url(url: str, base: Path | None) -> str:
    """``url`` with a relative ``file:`` path made absolute against ``base`` (the configuration's directory)."""
    if url.startswith("file:") and not url.startswith("file://") and base is not None:
        path = Path(url[5:]).expanduser()
        if not path.is_absolute():
            return f"file:{base / path}"
    return url


def open_checkpoint_signer(url: str) -> CheckpointSigner:
    """The signer of a key URL (``KeyProviderError`` naming the URL if it cannot be opened)."""
    from ..crypto.keys import open_signer

    signer: CheckpointSigner = open_signer(url)
    return signer


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("expected base64url text")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_from_jwk(jwk: Mapping[str, Any]) -> PublicKey:
    """The public key of an Ed25519 (OKP) or P-256 (EC) JWK; ``ValueError`` for anything else."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    try:
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(_unb64(jwk.get("x")))
        if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
            x, y = (int.from_bytes(_unb64(jwk.get(name)), "big") for name in ("x", "y"))
            return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except ValueError as exc:
        raise ValueError(f"unusable public key: {exc}") from None
    raise ValueError(f"unsupported public key (kty {jwk.get('kty')!r}, crv {jwk.get('crv')!r})")


def load_public_keys(path: Path) -> dict[str, PublicKey]:
    """Pinned checkpoint keys from a PEM public key, a JWK or a JWKS file, by key id."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        key = load_pem_public_key(data)
        if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
            raise ValueError(f"{path}: expected an Ed25519 or EC P-256 public key")
        return {public_key_id(key): key}
    document = json.loads(data)
    jwks = document.get("keys", [document]) if isinstance(document, dict) else None
    if not isinstance(jwks, list) or not all(isinstance(jwk, dict) for jwk in jwks):
        raise ValueError(f"{path}: expected a PEM public key, a JWK or a JWKS")
    keys = [key_from_jwk(jwk) for jwk in jwks]
    return {public_key_id(key): key for key in keys}


def signed_bytes(record: Mapping[str, Any]) -> bytes:
    return canonical({k: v for k, v in record.items() if k not in (SIGNATURE, HASH)})


def sign_checkpoint(body: dict[str, Any], signer: CheckpointSigner) -> dict[str, Any]:
    """``body`` with the signer's ``key_id``, ``alg``, ``jwk`` and ``signature`` (before it is hashed)."""
    body["key_id"] = signer.key_id
    body["alg"] = signer.algorithm
    body["jwk"] = public_jwk(signer.public_key())
    body.pop(SIGNATURE, None)
    body[SIGNATURE] = base64.urlsafe_b64encode(signer.sign(signed_bytes(body))).rstrip(b"=").decode()
    return body


def checkpoint_signature_valid(record: Mapping[str, Any], public_key: PublicKey) -> bool:
    """Whether ``record``'s signature verifies with ``public_key``."""
    algorithm = record.get("alg")
    if not isinstance(algorithm, str):
        return False
    try:
        signature = _unb64(record.get(SIGNATURE))
    except ValueError:
        return False
    return verify_signature(public_key, algorithm, signed_bytes(record), signature)
