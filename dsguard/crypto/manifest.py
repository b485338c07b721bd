"""Signed manifests: the SHA-256 digest and size of every file of a model bundle, signed by a Signer.

``dsguard-manifest.json`` at the bundle's root::

    {"manifest": {"format": "dsguard-manifest/1", "created": "...", "files": [{"path": "onnx/model.onnx",
     "size": 28378, "sha256": "..."}, ...]},
     "signature": {"alg": "EdDSA", "kid": "<RFC 7638 thumbprint>", "value": "<base64url>"}}

The signature covers the canonical JSON of ``manifest`` (sorted keys, no spaces, ASCII). A bundle is
accepted only when the manifest is signed by a trusted key and lists exactly the files present, each
with its size and digest; every refusal names the file at fault.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from dsguard.crypto.errors import KeyProviderError, ManifestError
from dsguard.crypto.keys import PublicKey, Signer, algorithm_of, b64url, public_key_id, verify_signature

MANIFEST_NAME = "dsguard-manifest.json"
FORMAT = "dsguard-manifest/1"
MAX_MANIFEST_BYTES = 16 << 20


@dataclasses.dataclass(frozen=True)
class FileDigest:
    path: str
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class VerifiedManifest:
    """A manifest whose signature verified and whose files all matched, by path."""

    files: Mapping[str, FileDigest]
    key_id: str
    algorithm: str


class TrustedKeys:
    """Public keys a manifest may be signed with, by key id: one PEM public key, or a JWKS."""

    def __init__(self, keys: Mapping[str, PublicKey], source: str) -> None:
        self.keys = dict(keys)
        self.source = source

    @classmethod
    def from_file(cls, path: Path) -> TrustedKeys:
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise KeyProviderError(f"{path}: cannot read the public key ({exc.strerror})",
                                   reason="unavailable") from None
        if content.lstrip().startswith(b"{"):
            return cls(_jwks_keys(content, path), str(path))
        try:
            key = serialization.load_pem_public_key(content)
            algorithm_of(key)
        except (ValueError, TypeError, UnsupportedAlgorithm, KeyProviderError):
            raise KeyProviderError(f"{path}: expected an Ed25519 or P-256 public key (PEM) or a JWKS") from None
        assert isinstance(key, PublicKey)
        return cls({public_key_id(key): key}, str(path))


def _jwks_keys(content: bytes, path: Path) -> dict[str, PublicKey]:
    try:
        document = json.loads(content)
        entries = document["keys"]
        if not isinstance(entries, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise KeyProviderError(f'{path}: not a JWKS (expected {{"keys": [...]}})') from None
    keys: dict[str, PublicKey] = {}
    for entry in entries:
        if not isinstance(entry, dict) or "d" in entry:
            continue
        try:
            key = (OKPAlgorithm if entry.get("kty") == "OKP" else ECAlgorithm).from_jwk(entry)
            algorithm_of(key)
        except Exception:  # pyjwt raises InvalidKeyError, ValueError and others for keys it cannot use
            continue
        if isinstance(key, PublicKey):
            keys[public_key_id(key)] = key
    if not keys:
        raise KeyProviderError(f"{path}: the JWKS holds no Ed25519 or P-256 public key")
    return keys


def digest_file(root: Path, relative: str) -> FileDigest:
    """Size and SHA-256 of one file, read in bounded memory."""
    with (root / relative).open("rb") as reader:
        digest = hashlib.file_digest(reader, "sha256")
        size = os.fstat(reader.fileno()).st_size
    return FileDigest(relative, size, digest.hexdigest())


def bundle_files(bundle: Path) -> list[str]:
    """Relative paths of every file of ``bundle`` but the manifest; links and special files are refused."""
    found = []
    for path in sorted(bundle.rglob("*")):
        relative = path.relative_to(bundle).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise ManifestError("a link or special file; a pinned bundle holds regular files only",
                                reason="unsafe-path", file=path)
        if path.is_file() and relative != MANIFEST_NAME:
            found.append(relative)
    return found


def canonical(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign_bundle(bundle: Path, signer: Signer) -> Path:
    """Write ``bundle/dsguard-manifest.json`` pinning every file of ``bundle``; returns its path."""
    files = [digest_file(bundle, relative) for relative in bundle_files(bundle)]
    manifest = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": [dataclasses.asdict(entry) for entry in files]}
    signature = {"alg": signer.algorithm, "kid": signer.key_id, "value": b64url(signer.sign(canonical(manifest)))}
    target = bundle / MANIFEST_NAME
    partial = target.with_name(f".{MANIFEST_NAME}.partial")
    partial.write_text(json.dumps({"manifest": manifest, "signature": signature}, indent=1) + "\n")
    partial.replace(target)
    return target


def verify_bundle(bundle: Path, trusted: TrustedKeys) -> VerifiedManifest:
    """Check the signature, then that the files present are exactly those listed with their sizes and digests."""
    manifest_path = bundle / MANIFEST_NAME
    manifest, signature = _read(manifest_path)
    key = trusted.keys.get(signature["kid"])
    if key is None:
        raise ManifestError(f"signed by key {signature['kid']}, which is not trusted ({trusted.source})",
                            reason="untrusted-key", file=manifest_path)
    if not verify_signature(key, signature["alg"], canonical(manifest), signature["value"]):
        raise ManifestError("the signature does not verify: the manifest was altered or signed by another key",
                            reason="signature", file=manifest_path)
    listed = _entries(manifest, manifest_path)
    present = set(bundle_files(bundle))
    for relative in sorted(present - set(listed)):
        raise ManifestError("not in the signed manifest", reason="file-extra", file=bundle / relative)
    for relative, entry in listed.items():
        if relative not in present:
            raise ManifestError("listed in the signed manifest but missing", reason="file-missing",
                                file=bundle / relative)
        if (bundle / relative).stat().st_size != entry.size or digest_file(bundle, relative) != entry:
            raise ManifestError("does not match its signed SHA-256 digest", reason="file-changed",
                                file=bundle / relative)
    return VerifiedManifest(listed, signature["kid"], signature["alg"])


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ManifestError("manifest too large", reason="malformed", file=path)
        document = json.loads(path.read_bytes(), object_pairs_hook=_unique_keys)
    except FileNotFoundError:
        raise ManifestError("no signed manifest: the bundle is unsigned (dsguard model sign)", reason="unsigned",
                            file=path) from None
    except (OSError, UnicodeDecodeError, ValueError):
        raise ManifestError("not a readable manifest", reason="malformed", file=path) from None
    manifest = document.get("manifest") if isinstance(document, dict) else None
    signature = document.get("signature") if isinstance(document, dict) else None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"not a {FORMAT} manifest", reason="malformed", file=path)
    if not isinstance(signature, dict) or not all(isinstance(signature.get(k), str) for k in ("alg", "kid", "value")):
        raise ManifestError("no signature: the manifest is unsigned", reason="unsigned", file=path)
    try:
        value = base64.urlsafe_b64decode(signature["value"] + "=" * (-len(signature["value"]) % 4))
    except (binascii.Error, ValueError):
        raise ManifestError("the signature is not base64url", reason="malformed", file=path) from None
    return manifest, {**signature, "value": value}


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _entries(manifest: Mapping[str, Any], path: Path) -> dict[str, FileDigest]:
    files = manifest.get("files")
    if not isinstance(files, list):
        raise ManifestError("expected a list of files", reason="malformed", file=path)
    entries: dict[str, FileDigest] = {}
    for item in files:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str) or not isinstance(
                item.get("size"), int) or not isinstance(item.get("sha256"), str):
            raise ManifestError("expected files of {path, size, sha256}", reason="malformed", file=path)
        relative = item["path"]
        pure = PurePosixPath(relative)
        if pure.is_absolute() or ".." in pure.parts or relative != pure.as_posix() or relative == MANIFEST_NAME:
            raise ManifestError(f"unsafe path {relative!r} in the manifest", reason="unsafe-path", file=path)
        if relative in entries:
            raise ManifestError(f"{relative!r} listed twice", reason="malformed", file=path)
        entries[relative] = FileDigest(relative, item["size"], item["sha256"])
    return entries
