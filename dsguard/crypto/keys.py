"""Key providers chosen by URL: signers and key-encryption keys behind two small protocols.

- ``file:/path/key.pem``: a PKCS#8 PEM private key (Ed25519 or EC P-256) for signers;
  ``file:/path/kek.bin``: 32 raw bytes, or their base64, for a key-encryption key (KEK).
- ``env:NAME``: the variable holds base64 of 32 bytes: an Ed25519 private seed, or an AES-256 KEK.
- ``pkcs11:token=...;object=...?module-path=...&pin-source=env:PIN``: a key inside a PKCS#11 token
  (RFC 7512 URI, :mod:`dsguard.crypto.pkcs11`); it never leaves the token.
- any other scheme: a plugin, an entry point of the ``dsguard.keys`` group named after the scheme whose
  object (a module, class or instance) has ``open_signer(url)`` and/or ``open_wrapper(url)``.

Signatures are in JOSE form: Ed25519 (``EdDSA``) 64 bytes, P-256 (``ES256``) ``r || s``, 64 bytes.
KEKs wrap data keys with AES key wrap (RFC 3394), the same bytes from every provider.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from dsguard.crypto.errors import KeyProviderError
from dsguard.tokens.keys import jwk_thumbprint

__all__ = ["ENTRY_POINT_GROUP", "KeyProvider", "KeyProviderError", "LocalSigner", "LocalWrapper", "PublicKey",
           "Signer", "Wrapper", "algorithm_of", "kek_id", "open_signer", "open_wrapper", "public_jwk",
           "public_key_id", "shown", "verify_signature"]

ENTRY_POINT_GROUP = "dsguard.keys"
KEY_BYTES = 32
P256_COORDINATE = 32

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


class Signer(Protocol):
    """A private signing key: it signs, and tells its public key and RFC 7638 key id."""

    algorithm: str
    key_id: str

    def sign(self, data: bytes) -> bytes: ...

    def public_key(self) -> PublicKey: ...


class Wrapper(Protocol):
    """A key-encryption key: wraps and unwraps data keys; ``key_id`` is stable for the same key bytes."""

    key_id: str

    def wrap(self, data_key: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes) -> bytes: ...


class KeyProvider(Protocol):
    """What a ``dsguard.keys`` plugin offers (either method may be absent)."""

    def open_signer(self, url: str) -> Signer: ...

    def open_wrapper(self, url: str) -> Wrapper: ...


def shown(url: str) -> str:
    """``url`` as it may appear in a message: no query (PINs, tokens) and no user information."""
    return re.sub(r"//[^/@?#]*@", "//", url.split("?", 1)[0].split("#", 1)[0])


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_jwk(key: PublicKey) -> dict[str, str]:
    """The public JWK (RFC 8037 OKP or RFC 7518 EC) of an Ed25519 or P-256 key."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    numbers = key.public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": b64url(numbers.x.to_bytes(P256_COORDINATE, "big")),
            "y": b64url(numbers.y.to_bytes(P256_COORDINATE, "big"))}


def public_key_id(key: PublicKey) -> str:
    """RFC 7638 SHA-256 thumbprint of the public key."""
    return jwk_thumbprint(public_jwk(key))


def algorithm_of(key: object) -> str:
    """``EdDSA`` for Ed25519, ``ES256`` for P-256; raises KeyProviderError for anything else."""
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and isinstance(key.curve,
                                                                                               ec.SECP256R1):
        return "ES256"
    raise KeyProviderError(f"unsupported key ({type(key).__name__}); expected Ed25519 or EC P-256")


def verify_signature(public_key: PublicKey, algorithm: str, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` (JOSE form) over ``data`` verifies with ``public_key`` under ``algorithm``."""
    try:
        if algorithm == "EdDSA" and isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
            return True
        if algorithm == "ES256" and isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
                public_key.curve, ec.SECP256R1) and len(signature) == 2 * P256_COORDINATE:
            r = int.from_bytes(signature[:P256_COORDINATE], "big")
            s = int.from_bytes(signature[P256_COORDINATE:], "big")
            public_key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
            return True
    except InvalidSignature:
        return False
    return False


def kek_id(wrap: Any) -> str:
    """A KEK's id: a digest of the wrap of an all-zero key (a key check value), the same in every provider."""
    check = wrap(bytes(KEY_BYTES))
    return "kek-" + b64url(hashlib.sha256(b"dsguard-kek-id\x00" + check).digest()[:12])


class LocalSigner:
    """A private key held in this process (``file:`` and ``env:``)."""

    def __init__(self, key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> None:
        self.algorithm = algorithm_of(key)
        self._key = key
        self.key_id = public_key_id(self.public_key())

    def sign(self, data: bytes) -> bytes:
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            return self._key.sign(data)
        r, s = decode_dss_signature(self._key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(P256_COORDINATE, "big") + s.to_bytes(P256_COORDINATE, "big")

    def public_key(self) -> PublicKey:
        return self._key.public_key()


class LocalWrapper:
    """An AES-256 KEK held in this process (``file:`` and ``env:``); RFC 3394 key wrap."""

    def __init__(self, kek: bytes, source: str) -> None:
        if len(kek) != KEY_BYTES:
            raise KeyProviderError(f"{source}: expected a 32-byte AES-256 key, got {len(kek)} bytes")
        self._kek = kek
        self._source = source
        self.key_id = kek_id(self.wrap)

    def wrap(self, data_key: bytes) -> bytes:
        return aes_key_wrap(self._kek, data_key)

    def unwrap(self, wrapped: bytes) -> bytes:
        try:
            return aes_key_unwrap(self._kek, wrapped)
        except (InvalidUnwrap, ValueError):
            raise KeyProviderError(f"{self._source}: the wrapped key does not unwrap with this KEK",
                                   reason="unwrap") from None


def open_signer(url: str) -> Signer:
    """The signer a key URL names; raises KeyProviderError naming the URL (never a secret)."""
    scheme = _scheme(url)
    if scheme == "file":
        return _pem_signer(_file_bytes(url), url)
    if scheme == "env":
        seed = _env_bytes(url)
        return LocalSigner(ed25519.Ed25519PrivateKey.from_private_bytes(seed))
    if scheme == "pkcs11":
        from dsguard.crypto.pkcs11 import Pkcs11Signer

        return Pkcs11Signer(url)
    return _plugin(scheme, url, "open_signer")  # type: ignore[no-any-return]


def open_wrapper(url: str) -> Wrapper:
    """The key-encryption key a key URL names; raises KeyProviderError naming the URL (never a secret)."""
    scheme = _scheme(url)
    if scheme == "file":
        return LocalWrapper(_kek_bytes(_file_bytes(url), url), shown(url))
    if scheme == "env":
        return LocalWrapper(_env_bytes(url), shown(url))
    if scheme == "pkcs11":
        from dsguard.crypto.pkcs11 import Pkcs11Wrapper

        return Pkcs11Wrapper(url)
    return _plugin(scheme, url, "open_wrapper")  # type: ignore[no-any-return]


def _scheme(url: str) -> str:
    scheme, colon, _ = url.partition(":")
    if not colon or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        raise KeyProviderError(f"{shown(url)!r}: not a key URL; expected file:PATH, env:NAME, pkcs11:... or a "
                               "plugin scheme")
    return scheme.lower()


def file_path(url: str) -> Path:
    """The path of a ``file:`` URL: ``file:relative``, ``file:/absolute`` or ``file:///absolute``."""
    rest = url.partition(":")[2]
    if rest.startswith("//"):
        host, _, path = rest[2:].partition("/")
        if host not in ("", "localhost"):
            raise KeyProviderError(f"{shown(url)}: a file: URL names a local file (no host)")
        rest = "/" + path
    if not rest:
        raise KeyProviderError(f"{url}: no file path")
    return Path(rest).expanduser()


def _file_bytes(url: str) -> bytes:
    path = file_path(url)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyProviderError(f"{path}: cannot read the key ({exc.strerror})", reason="unavailable") from None


def _env_bytes(url: str) -> bytes:
    name = url.partition(":")[2]
    value = os.environ.get(name)
    if not name or value is None:
        raise KeyProviderError(f"{shown(url)}: environment variable {name or '(none)'} is not set",
                               reason="unavailable")
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyProviderError(f"{shown(url)}: expected base64 of 32 bytes") from None
    if len(key) != KEY_BYTES:
        raise KeyProviderError(f"{shown(url)}: expected base64 of 32 bytes, got {len(key)} bytes")
    return key


def _kek_bytes(content: bytes, url: str) -> bytes:
    if len(content) == KEY_BYTES:
        return content
    try:
        key = base64.b64decode(content.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyProviderError(f"{file_path(url)}: expected a 32-byte AES-256 key, raw or base64")
    return key


def _pem_signer(pem: bytes, url: str) -> Signer:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyProviderError(f"{file_path(url)}: not an unencrypted PEM private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise KeyProviderError(f"{file_path(url)}: unsupported key ({type(key).__name__}); expected Ed25519 or "
                               "EC P-256")
    algorithm_of(key)
    return LocalSigner(key)


def _plugin(scheme: str, url: str, method: str) -> Any:
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    entry = found.get(scheme)
    if entry is None:
        names = ", ".join(sorted(found)) or "none installed"
        raise KeyProviderError(f"{shown(url)}: no key provider for the scheme {scheme!r} (file, env, pkcs11; "
                               f"plugins of the {ENTRY_POINT_GROUP} entry point group: {names})")
    try:
        provider = entry.load()
    except Exception as exc:
        raise KeyProviderError(f"{shown(url)}: key provider {entry.value} failed to import: "
                               f"{type(exc).__name__}") from exc
    opener = getattr(provider, method, None)
    if not callable(opener):
        raise KeyProviderError(f"{shown(url)}: key provider {entry.value} has no {method}()")
    try:
        return opener(url)
    except KeyProviderError:
        raise
    except Exception as exc:
        raise KeyProviderError(f"{shown(url)}: key provider {entry.value} failed: {type(exc).__name__}") from exc
