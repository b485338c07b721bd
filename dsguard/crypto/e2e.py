"""End-to-end encryption of request bodies to the runner's X25519 key (``dsguard-e2e`` version 1).

The server publishes its public key at ``/.well-known/dsguard-e2e``. A client seals the JSON
body with HPKE (RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) and
sends the envelope ``{"v": 1, "kid", "enc", "ts", "ct"}`` as ``application/dsguard-e2e+json``:

- ``info`` binds the protocol version and the key id;
- the AEAD's associated data binds the method, the request target and the timestamp, so a body
  cannot be moved to another route or have its age changed;
- ``enc`` (fresh per request) is remembered by the server for the acceptance window: a captured
  request replayed is refused.

The response is sealed with keys exported from the same HPKE context (:mod:`.e2e_records`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from ..errors import DSGuardError
from ..units import Secret
from . import hpke

VERSION = 1
MEDIA_TYPE = "application/dsguard-e2e+json"
KEY_PATH = "/.well-known/dsguard-e2e"
AEAD = hpke.AES_256_GCM
SUITE = {"kem": "DHKEM(X25519, HKDF-SHA256)", "kdf": "HKDF-SHA256", "aead": "AES-256-GCM",
         "kem_id": hpke.KEM_X25519_SHA256, "kdf_id": hpke.KDF_HKDF_SHA256, "aead_id": AEAD.id}
_ENVELOPE_KEYS = frozenset({"v", "kid", "enc", "ts", "ct"})


class E2EError(DSGuardError):
    """A message of the protocol is refused; ``code`` names why (``e2e_malformed``, ``e2e_decrypt_failed``...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    """Strict base64url without padding (RFC 4648 section 5); raises ``ValueError``."""
    if "=" in text:
        raise ValueError("padding is not allowed")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except binascii.Error:
        raise ValueError("not base64url") from None


def thumbprint(public_key: X25519PublicKey) -> str:
    """The key id: the RFC 7638 JWK thumbprint (SHA-256) of the OKP X25519 public key."""
    canonical = json.dumps({"crv": "X25519", "kty": "OKP", "x": b64url(hpke.public_bytes(public_key))},
                           separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


@dataclasses.dataclass(frozen=True)
class ServerKey:
    """A server's public key as clients know it."""

    kid: str
    public_key: X25519PublicKey

    @classmethod
    def of(cls, public_key: X25519PublicKey) -> ServerKey:
        return cls(thumbprint(public_key), public_key)

    def jwk(self) -> dict[str, str]:
        return {"kty": "OKP", "crv": "X25519", "kid": self.kid, "x": b64url(hpke.public_bytes(self.public_key))}


@dataclasses.dataclass(frozen=True)
class PrivateServerKey:
    kid: str
    private_key: X25519PrivateKey = dataclasses.field(repr=False)

    @classmethod
    def of(cls, private_key: X25519PrivateKey) -> PrivateServerKey:
        return cls(thumbprint(private_key.public_key()), private_key)

    @property
    def public(self) -> ServerKey:
        return ServerKey(self.kid, self.private_key.public_key())


def load_private_key(secret: Secret) -> PrivateServerKey:
    """An X25519 key from ``file:`` (PKCS#8 PEM or base64 of 32 raw bytes) or ``env:`` (base64 of 32 bytes).

    Raises ``ValueError`` naming the reference, never the key.
    """
    if secret.source == "literal":
        raise ValueError("the private key must be an env: or file: reference, not a literal")
    try:
        text = secret.reveal()
    except LookupError as exc:
        raise ValueError(str(exc)) from None
    if text.startswith("-----BEGIN"):
        try:
            key = load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError):
            raise ValueError(f"{secret.source} is not an unencrypted PKCS#8 PEM private key") from None
        if not isinstance(key, X25519PrivateKey):
            raise ValueError(f"{secret.source} is not an X25519 private key")
        return PrivateServerKey.of(key)
    standard = text.replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"{secret.source} is neither a PEM key nor base64 of 32 bytes") from None
    if len(raw) != 32:
        raise ValueError(f"{secret.source} holds {len(raw)} bytes; an X25519 private key is 32")
    return PrivateServerKey.of(X25519PrivateKey.from_private_bytes(raw))


def key_document(keys: Iterable[ServerKey]) -> dict[str, Any]:
    """What ``/.well-known/dsguard-e2e`` answers: the version, the suite and the current key first."""
    return {"version": VERSION, "media_type": MEDIA_TYPE, "suite": SUITE, "keys": [key.jwk() for key in keys]}


def parse_key_document(document: object, pinned_kid: str | None = None) -> ServerKey:
    """The key to encrypt to, from a key document; with ``pinned_kid``, only that key is accepted."""
    if not isinstance(document, dict) or document.get("version") != VERSION or document.get("suite") != SUITE:
        raise E2EError("e2e_key_document", "the key document is not a dsguard-e2e version 1 document")
    keys = document.get("keys")
    if not isinstance(keys, list):
        raise E2EError("e2e_key_document", "the key document lists no keys")
    for jwk in keys:
        key = _key_from_jwk(jwk)
        if pinned_kid is None or key.kid == pinned_kid:
            return key
    raise E2EError("e2e_key_document", "the key document does not hold the pinned key")


def _key_from_jwk(jwk: object) -> ServerKey:
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "X25519":
        raise E2EError("e2e_key_document", "a key of the document is not an X25519 JWK")
    try:
        key = ServerKey.of(X25519PublicKey.from_public_bytes(unb64url(str(jwk.get("x", "")))))
    except ValueError:
        raise E2EError("e2e_key_document", "a key of the document is malformed") from None
    if jwk.get("kid") != key.kid:
        raise E2EError("e2e_key_document", "a key id of the document is not its key's thumbprint")
    return key


def request_info(kid: str) -> bytes:
    return b"dsguard-e2e/1 request\x00" + kid.encode("ascii")


def request_aad(method: str, target: bytes, timestamp: int) -> bytes:
    """Associated data of a request body: method, raw path and query as sent, and the timestamp."""
    return method.upper().encode("ascii") + b"\n" + target + b"\n" + str(timestamp).encode("ascii")


def seal_request(key: ServerKey, method: str, target: bytes, body: bytes, timestamp: int) -> tuple[bytes, hpke.Context]:
    """The envelope for ``body`` and the HPKE context that opens the response."""
    enc, context = hpke.setup_base_s(AEAD, key.public_key, request_info(key.kid))
    ct = context.seal(request_aad(method, target, timestamp), body)
    envelope = {"v": VERSION, "kid": key.kid, "enc": b64url(enc), "ts": timestamp, "ct": b64url(ct)}
    return json.dumps(envelope, separators=(",", ":")).encode(), context


@dataclasses.dataclass(frozen=True)
class Envelope:
    kid: str
    enc: bytes
    timestamp: int
    ciphertext: bytes


def parse_envelope(body: bytes) -> Envelope:
    """The envelope's fields, strictly: exactly its keys, of their types and sizes."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise E2EError("e2e_malformed", "the encrypted body is not a JSON envelope") from None
    if not isinstance(raw, dict) or raw.keys() != _ENVELOPE_KEYS:
        raise E2EError("e2e_malformed", "the envelope must hold exactly v, kid, enc, ts and ct")
    if raw["v"] != VERSION or isinstance(raw["v"], bool):
        raise E2EError("e2e_unsupported_version", "this server speaks dsguard-e2e version 1")
    kid, ts, enc, ct = raw["kid"], raw["ts"], raw["enc"], raw["ct"]
    if not isinstance(kid, str) or not isinstance(ts, int) or isinstance(ts, bool) \
            or not isinstance(enc, str) or not isinstance(ct, str):
        raise E2EError("e2e_malformed", "an envelope field has the wrong type")
    try:
        envelope = Envelope(kid, unb64url(enc), ts, unb64url(ct))
    except ValueError:
        raise E2EError("e2e_malformed", "enc and ct must be base64url without padding") from None
    if len(envelope.enc) != hpke.N_ENC or len(envelope.ciphertext) < AEAD.tag_size:
        raise E2EError("e2e_malformed", "enc or ct has the wrong length")
    return envelope


def open_request(keys: Mapping[str, PrivateServerKey], envelope: Envelope, method: str,
                 target: bytes) -> tuple[bytes, hpke.Context]:
    """The plaintext body and the HPKE context that seals the response."""
    key = keys.get(envelope.kid)
    if key is None:
        raise E2EError("e2e_unknown_key", f"the key id is not one of this server's keys; fetch {KEY_PATH}")
    try:
        context = hpke.setup_base_r(AEAD, envelope.enc, key.private_key, request_info(key.kid))
        return context.open(request_aad(method, target, envelope.timestamp), envelope.ciphertext), context
    except hpke.HPKEError:
        raise E2EError("e2e_decrypt_failed", "the encrypted body does not open: it was altered, sent to "
                                             "another route, or sealed to another key") from None
