"""RFC 9180 Hybrid Public Key Encryption, base mode, with DHKEM(X25519, HKDF-SHA256) and HKDF-SHA256.

The AEAD is AES-128-GCM, AES-256-GCM or ChaCha20-Poly1305. Built on ``cryptography``'s X25519 and
AEAD primitives, with HKDF (RFC 5869) over the standard library's HMAC-SHA256; checked against the
RFC's test vectors (Appendix A.1, A.2). A :class:`Context` seals or opens a sequence of messages
and exports secrets (section 5.3).
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

MODE_BASE = 0
KEM_X25519_SHA256 = 0x0020
KDF_HKDF_SHA256 = 0x0001
N_SECRET = N_ENC = N_PK = N_SK = N_H = 32
_VERSION = b"HPKE-v1"
_KEM_SUITE = b"KEM" + KEM_X25519_SHA256.to_bytes(2, "big")


class HPKEError(Exception):
    """A message did not open (wrong key, tampered, reordered), or the encapsulated key is invalid."""


@dataclasses.dataclass(frozen=True)
class AEAD:
    id: int
    key_size: int
    make: Callable[[bytes], AESGCM | ChaCha20Poly1305]
    nonce_size: int = 12
    tag_size: int = 16


AES_128_GCM = AEAD(0x0001, 16, AESGCM)
AES_256_GCM = AEAD(0x0002, 32, AESGCM)
CHACHA20_POLY1305 = AEAD(0x0003, 32, ChaCha20Poly1305)


def _extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869): an empty salt is HMAC's zero key."""
    return hmac.digest(salt, ikm, "sha256")


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869)."""
    if length > 255 * N_H:
        raise ValueError("HKDF-Expand cannot derive that many bytes")
    blocks, block = [], b""
    for counter in range(1, -(-length // N_H) + 1):
        block = hmac.digest(prk, block + info + bytes((counter,)), "sha256")
        blocks.append(block)
    return b"".join(blocks)[:length]


def labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, _VERSION + suite_id + label + ikm)


def labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return _expand(prk, length.to_bytes(2, "big") + _VERSION + suite_id + label + info, length)


def public_bytes(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def derive_key_pair(ikm: bytes) -> X25519PrivateKey:
    """DeriveKeyPair (section 7.1.3): the same key pair from the same input keying material."""
    dkp_prk = labeled_extract(_KEM_SUITE, b"", b"dkp_prk", ikm)
    return X25519PrivateKey.from_private_bytes(labeled_expand(_KEM_SUITE, dkp_prk, b"sk", b"", N_SK))


def _shared_secret(dh: bytes, enc: bytes, recipient: bytes) -> bytes:
    eae_prk = labeled_extract(_KEM_SUITE, b"", b"eae_prk", dh)
    return labeled_expand(_KEM_SUITE, eae_prk, b"shared_secret", enc + recipient, N_SECRET)


def encap(recipient: X25519PublicKey, ephemeral: X25519PrivateKey | None = None) -> tuple[bytes, bytes]:
    """``(shared_secret, enc)``; ``ephemeral`` is for test vectors only, a fresh key is made otherwise."""
    ephemeral = ephemeral or X25519PrivateKey.generate()
    try:
        dh = ephemeral.exchange(recipient)
    except ValueError:
        raise HPKEError("the recipient public key is invalid") from None
    enc = public_bytes(ephemeral.public_key())
    return _shared_secret(dh, enc, public_bytes(recipient)), enc


def decap(enc: bytes, recipient: X25519PrivateKey) -> bytes:
    if len(enc) != N_ENC:
        raise HPKEError("the encapsulated key has the wrong length")
    try:
        dh = recipient.exchange(X25519PublicKey.from_public_bytes(enc))
    except ValueError:
        raise HPKEError("the encapsulated key is invalid") from None
    return _shared_secret(dh, enc, public_bytes(recipient.public_key()))


class Context:
    """An HPKE encryption context: ``seal``/``open`` in sequence order, and ``export``."""

    __slots__ = ("_aead", "_seq", "base_nonce", "exporter_secret", "key", "suite_id")

    def __init__(self, aead: AEAD, suite_id: bytes, key: bytes, base_nonce: bytes, exporter_secret: bytes) -> None:
        self.suite_id = suite_id
        self.key = key
        self.base_nonce = base_nonce
        self.exporter_secret = exporter_secret
        self._aead = aead.make(key)
        self._seq = 0

    def _nonce(self) -> bytes:
        seq = self._seq
        if seq >= 1 << 96:
            raise HPKEError("the message sequence number overflowed")
        self._seq = seq + 1
        return xor_counter(self.base_nonce, seq)

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        return self._aead.encrypt(self._nonce(), plaintext, aad)

    def open(self, aad: bytes, ciphertext: bytes) -> bytes:
        nonce = xor_counter(self.base_nonce, self._seq)
        try:
            plaintext = self._aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise HPKEError("the message does not open with this context") from None
        self._seq += 1
        return plaintext

    def export(self, exporter_context: bytes, length: int) -> bytes:
        return labeled_expand(self.suite_id, self.exporter_secret, b"sec", exporter_context, length)


def xor_counter(base_nonce: bytes, seq: int) -> bytes:
    """``base_nonce`` XOR the big-endian ``seq`` (section 5.2); also used for exporter-keyed streams."""
    size = len(base_nonce)
    return (int.from_bytes(base_nonce, "big") ^ seq).to_bytes(size, "big")


def suite_id(aead: AEAD) -> bytes:
    return (b"HPKE" + KEM_X25519_SHA256.to_bytes(2, "big") + KDF_HKDF_SHA256.to_bytes(2, "big")
            + aead.id.to_bytes(2, "big"))


def key_schedule(aead: AEAD, shared_secret: bytes, info: bytes) -> Context:
    """KeySchedule (section 5.1) in base mode: no PSK."""
    sid = suite_id(aead)
    psk_id_hash = labeled_extract(sid, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(sid, b"", b"info_hash", info)
    context = MODE_BASE.to_bytes(1, "big") + psk_id_hash + info_hash
    secret = labeled_extract(sid, shared_secret, b"secret", b"")
    key = labeled_expand(sid, secret, b"key", context, aead.key_size)
    base_nonce = labeled_expand(sid, secret, b"base_nonce", context, aead.nonce_size)
    exporter_secret = labeled_expand(sid, secret, b"exp", context, N_H)
    return Context(aead, sid, key, base_nonce, exporter_secret)


def setup_base_s(aead: AEAD, recipient: X25519PublicKey, info: bytes,
                 ephemeral: X25519PrivateKey | None = None) -> tuple[bytes, Context]:
    """SetupBaseS: ``(enc, context)`` for sending to ``recipient``."""
    shared_secret, enc = encap(recipient, ephemeral)
    return enc, key_schedule(aead, shared_secret, info)


def setup_base_r(aead: AEAD, enc: bytes, recipient: X25519PrivateKey, info: bytes) -> Context:
    """SetupBaseR: the recipient's context for ``enc``."""
    return key_schedule(aead, decap(enc, recipient), info)
