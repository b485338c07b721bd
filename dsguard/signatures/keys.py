"""The client key directory: which key verifies a signature with a given ``keyid``.

``[signatures] keys`` names a JSON file::

    {
      "keys": {
        "billing-2025": {"alg": "ed25519", "subject": "billing",
                         "jwk": {"kty": "OKP", "crv": "Ed25519", "x": "..."}},
        "reports":      {"alg": "ecdsa-p256-sha256", "pem": "file:reports.pem"},
        "batch":        {"alg": "hmac-sha256", "secret": "env:DSGUARD_BATCH_SIGNING_SECRET"}
      }
    }

Each entry fixes its algorithm (``alg``, one of :data:`~.algorithms.ALGORITHMS`) and holds one
key: ``jwk`` (a public JWK), ``pem`` (a public PEM, inline or ``file:PATH``) or, for
``hmac-sha256`` only, ``secret`` (``env:NAME`` or ``file:PATH``; an inline secret is refused,
so the directory itself can be kept in git). ``subject`` binds the key to one caller: a signed
request whose verified identity has another subject is denied. ``comment`` is free text.
Relative paths are relative to the directory file. Private keys are refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from http_message_signatures import HTTPSignatureKeyResolver
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from ..units import Secret
from .algorithms import ALGORITHMS, MIN_HMAC_BYTES, SYMMETRIC, PublicKey, algorithm_of

MEMBERS = frozenset({"alg", "jwk", "pem", "secret", "subject", "comment"})
KEY_MEMBERS = ("jwk", "pem", "secret")
_JWK_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_JWK_READERS: Mapping[str, Any] = {"OKP": OKPAlgorithm, "EC": ECAlgorithm, "RSA": RSAAlgorithm}
MAX_KEYID_CHARS = 256


class KeyDirectoryError(ValueError):
    """The directory, or one of its entries, cannot be used; the message names which and why."""


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            raise KeyDirectoryError(f"the member {name!r} appears twice")
        members[name] = value
    return members


@dataclass(frozen=True, slots=True)
class ClientKey:
    """One entry: the key that verifies signatures carrying ``keyid``, and its only algorithm."""

    keyid: str
    algorithm: str
    key: PublicKey | bytes
    subject: str | None = None

    def __repr__(self) -> str:
        return f"ClientKey(keyid={self.keyid!r}, algorithm={self.algorithm!r}, subject={self.subject!r})"


class KeyDirectory(HTTPSignatureKeyResolver):
    """Client keys by ``keyid``; the key resolver http-message-signatures verifies with."""

    def __init__(self, keys: Iterable[ClientKey] = ()) -> None:
        self._keys = {key.keyid: key for key in keys}

    def get(self, keyid: str) -> ClientKey | None:
        return self._keys.get(keyid)

    def resolve_public_key(self, key_id: str) -> PublicKey | bytes | None:
        key = self._keys.get(key_id)
        return None if key is None else key.key

    def resolve_private_key(self, key_id: str) -> bytes:
        raise KeyError("the key directory holds verification keys only")

    def __contains__(self, keyid: object) -> bool:
        return keyid in self._keys

    def __iter__(self) -> Iterator[ClientKey]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)


def _public_key_from_jwk(jwk: object) -> PublicKey:
    if not isinstance(jwk, dict):
        raise KeyDirectoryError('"jwk" must be a JSON object')
    if _JWK_PRIVATE_MEMBERS & jwk.keys():
        raise KeyDirectoryError('"jwk" must hold a public key only (symmetric keys go in "secret")')
    reader = _JWK_READERS.get(jwk.get("kty"))  # type: ignore[arg-type]
    if reader is None:
        raise KeyDirectoryError('"jwk" must have kty "OKP", "EC" or "RSA"')
    try:
        key = reader.from_jwk(jwk)
    except Exception as exc:  # pyjwt raises several unrelated types for a bad JWK
        raise KeyDirectoryError(f'"jwk" cannot be read ({type(exc).__name__})') from None
    if not isinstance(key, PublicKey):
        raise KeyDirectoryError('"jwk" must hold an Ed25519, EC P-256 or RSA public key')
    return key


def _public_key_from_pem(pem: object, base: Path) -> PublicKey:
    if not isinstance(pem, str):
        raise KeyDirectoryError('"pem" must be a string: the PEM text or "file:PATH"')
    if pem.startswith("file:"):
        path = Path(pem[5:])
        try:
            data = (path if path.is_absolute() else base / path).read_bytes()
        except OSError as exc:
            raise KeyDirectoryError(f'"pem": cannot read {pem[5:]} ({exc.strerror})') from None
    else:
        data = pem.encode()
    if b"PRIVATE KEY" in data:
        raise KeyDirectoryError('"pem" must hold a public key, not a private key')
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyDirectoryError('"pem" is not a PEM public key') from None
    if not isinstance(key, PublicKey):
        raise KeyDirectoryError('"pem" must hold an Ed25519, EC P-256 or RSA public key')
    return key


def _secret(reference: object, base: Path) -> bytes:
    if not isinstance(reference, str) or not reference.startswith(("env:", "file:")):
        raise KeyDirectoryError('"secret" must be a reference, "env:NAME" or "file:PATH", never the secret itself')
    try:
        value = Secret(reference, base).reveal().encode()
    except LookupError as exc:
        raise KeyDirectoryError(f'"secret": {exc}') from None
    if len(value) < MIN_HMAC_BYTES:
        raise KeyDirectoryError(f'"secret" must be at least {MIN_HMAC_BYTES} bytes')
    return value


def _client_key(keyid: str, entry: object, base: Path) -> ClientKey:
    if not isinstance(entry, dict):
        raise KeyDirectoryError("expected a JSON object")
    unknown = sorted(set(entry) - MEMBERS)
    if unknown:
        raise KeyDirectoryError(f"unknown member {unknown[0]!r} (known: {', '.join(sorted(MEMBERS))})")
    algorithm = entry.get("alg")
    if algorithm not in ALGORITHMS:
        raise KeyDirectoryError(f'"alg" must be one of {", ".join(ALGORITHMS)}')
    given = [name for name in KEY_MEMBERS if name in entry]
    if len(given) != 1:
        raise KeyDirectoryError('expected exactly one of "jwk", "pem" or "secret"')
    subject = entry.get("subject")
    if subject is not None and (not isinstance(subject, str) or not subject):
        raise KeyDirectoryError('"subject" must be a non-empty string')
    key: PublicKey | bytes
    if algorithm in SYMMETRIC:
        if given[0] != "secret":
            raise KeyDirectoryError(f'{algorithm} keys are shared secrets: give "secret", not "{given[0]}"')
        key = _secret(entry["secret"], base)
    else:
        if given[0] == "secret":
            raise KeyDirectoryError(f'{algorithm} verifies with a public key: give "jwk" or "pem", not "secret"')
        key = _public_key_from_jwk(entry["jwk"]) if given[0] == "jwk" else _public_key_from_pem(entry["pem"], base)
        try:
            fitting = algorithm_of(key)
        except ValueError as exc:
            raise KeyDirectoryError(str(exc)) from None
        if fitting != algorithm:
            raise KeyDirectoryError(f'the key is for {fitting}, not for its "alg" {algorithm}')
    return ClientKey(keyid, algorithm, key, subject)


def parse_key_directory(document: object, *, base: Path) -> KeyDirectory:
    """The directory of a parsed JSON document; ``base`` anchors relative ``file:`` paths."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), dict):
        raise KeyDirectoryError('expected a JSON object with a "keys" object mapping keyids to entries')
    keys = []
    for keyid, entry in document["keys"].items():
        if not keyid or len(keyid) > MAX_KEYID_CHARS or not keyid.isprintable() or not keyid.isascii():
            raise KeyDirectoryError(f"keyid {keyid[:64]!r}: expected 1 to {MAX_KEYID_CHARS} printable ASCII characters")
        try:
            keys.append(_client_key(keyid, entry, base))
        except KeyDirectoryError as exc:
            raise KeyDirectoryError(f"keyid {keyid!r}: {exc}") from None
    return KeyDirectory(keys)


def load_key_directory(path: Path) -> KeyDirectory:
    """Read and check the key directory at ``path``; raises :class:`KeyDirectoryError`."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_members)
    except OSError as exc:
        raise KeyDirectoryError(f"cannot read {path} ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyDirectoryError(f"{path} is not JSON: {exc}") from None
    return parse_key_directory(document, base=path.resolve().parent)
