"""Backups of what a deployment cannot rebuild: the configuration, policies, keys (wrapped) and audit logs.

A backup is a tar archive whose first member, ``manifest.json``, lists every other member with
its SHA-256 and size (and, with a signing key, ``manifest.sig`` signs it). Private keys are
never stored in plaintext: a ``file:`` or ``env:`` key is sealed with AES-256-GCM under a fresh
data key wrapped by a key-encryption key (``--wrap-key``), or left out and named in the
manifest; a ``pkcs11:`` key stays in its HSM (back it up with the HSM's own procedure). Public
keys (manifest key, JWKS, client keys) are stored as they are. Audit logs are stored with every
rotated file and their checkpoints, as written.

A restore reads the whole archive and checks every digest (and the signature, when keys are
pinned) before it writes anything, into an empty directory laid out as the archive is.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import io
import json
import os
import secrets
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from . import __version__
from .config import Config
from .crypto.keys import PublicKey, open_signer, open_wrapper, public_jwk, public_key_id, shown, verify_signature
from .errors import DSGuardError
from .units import Secret

FORMAT = "dsguard-backup/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
CHUNK = 1024 * 1024
SEALED_FORMAT = "dsguard-sealed-key/1"


class BackupError(DSGuardError):
    """A backup that cannot be made, or an archive refused on restore (nothing is written then)."""


@dataclasses.dataclass(frozen=True)
class KeySource:
    setting: str
    reference: str
    read: Callable[[], bytes] | None = None
    """Reads a key held in a file or a variable; ``None`` for one held in an HSM."""


def _base(config: Config) -> Path:
    source = config.source
    return Path(source).resolve().parent if source and not source.startswith("<") else Path.cwd()


def _url_reader(url: str, base: Path) -> Callable[[], bytes] | None:
    scheme, _, rest = url.partition(":")
    if scheme == "file":
        path = Path(rest).expanduser()
        return (base / path).read_bytes if not path.is_absolute() else path.read_bytes
    if scheme == "env":
        return lambda: os.environ[rest].encode()
    return None


def _reveal(secret: Secret) -> bytes:
    return secret.reveal().encode()


def private_keys(config: Config) -> list[KeySource]:
    """The private keys and key-encryption keys the configuration names."""
    base = _base(config)
    keys = []
    if config.audit is not None and config.audit.signing_key:
        keys.append(KeySource("audit.signing_key", config.audit.signing_key,
                              _url_reader(config.audit.signing_key, base)))
    if config.runner is not None and config.runner.decryption_key:
        keys.append(KeySource("runner.decryption_key", config.runner.decryption_key,
                              _url_reader(config.runner.decryption_key, base)))
    if config.e2e is not None:
        for index, secret in enumerate((config.e2e.private_key, *config.e2e.retired_keys)):
            name = "e2e.private_key" if index == 0 else f"e2e.retired_key.{index}"
            keys.append(KeySource(name, secret.source, functools.partial(_reveal, secret)))
    return keys


def public_files(config: Config) -> list[tuple[str, Path]]:
    files = []
    if config.runner is not None and config.runner.manifest_public_key is not None:
        files.append(("runner.manifest_public_key", config.runner.manifest_public_key))
    if config.identity.jwt is not None and config.identity.jwt.jwks_file is not None:
        files.append(("identity.jwt.jwks_file", config.identity.jwt.jwks_file))
    if config.signatures is not None and config.signatures.keys is not None:
        files.append(("signatures.keys", config.signatures.keys))
    return files


def _tree(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield path


def _seal(setting: str, key: bytes, wrap_url: str) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    wrapper = open_wrapper(wrap_url)
    data_key = secrets.token_bytes(32)
    nonce = secrets.token_bytes(12)
    aad = f"{SEALED_FORMAT}\x00{setting}".encode()
    sealed = {"format": SEALED_FORMAT, "setting": setting, "kek_id": wrapper.key_id, "cipher": "A256GCM",
              "wrapped_key": _b64(wrapper.wrap(data_key)), "nonce": _b64(nonce),
              "ciphertext": _b64(AESGCM(data_key).encrypt(nonce, key, aad))}
    return json.dumps(sealed, indent=2).encode() + b"\n"


def unseal(document: bytes, unwrap_url: str) -> bytes:
    """The key inside a sealed-key document; ``BackupError`` if it does not open with ``unwrap_url``'s KEK."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        sealed = json.loads(document)
        setting = sealed["setting"]
        wrapper = open_wrapper(unwrap_url)
        if sealed.get("kek_id") != wrapper.key_id:
            raise BackupError(f"key {setting} was wrapped by KEK {sealed.get('kek_id')}, not by {shown(unwrap_url)}")
        data_key = wrapper.unwrap(_unb64(sealed["wrapped_key"]))
        aad = f"{SEALED_FORMAT}\x00{setting}".encode()
        return AESGCM(data_key).decrypt(_unb64(sealed["nonce"]), _unb64(sealed["ciphertext"]), aad)
    except (KeyError, TypeError, ValueError, InvalidTag):
        raise BackupError("a sealed key is damaged or does not open with this KEK") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


class _Archive:
    """Members collected for a backup (files are read when the archive is written)."""

    def __init__(self) -> None:
        self.files: list[dict[str, Any]] = []
        self.contents: dict[str, bytes | Path] = {}

    def add(self, name: str, role: str, content: bytes | Path, source: str | None = None) -> None:
        if name in self.contents:
            raise BackupError(f"two files would be stored as {name}")
        digest, size = hashlib.sha256(), 0
        if isinstance(content, bytes):
            digest.update(content)
            size = len(content)
        else:
            with content.open("rb") as file:
                while chunk := file.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
        self.files.append({"path": name, "role": role, "sha256": digest.hexdigest(), "size": size,
                           "source": source})
        self.contents[name] = content


def create_backup(config: Config, output: Path, *, wrap_url: str | None = None, sign_url: str | None = None,
                  now: float | None = None) -> dict[str, Any]:
    """Write the backup of ``config``'s deployment to ``output``; returns its manifest."""
    from .audit.files import log_files

    archive = _Archive()
    if config.source and not config.source.startswith("<"):
        archive.add(f"config/{Path(config.source).name}", "config", Path(config.source), config.source)
    if config.policy is not None:
        roots = {config.policy.model.parent, config.policy.policy.parent}
        for index, root in enumerate(sorted(roots)):
            for path in _tree(root):
                archive.add(f"policies/{index}/{path.relative_to(root).as_posix()}", "policy", path, str(path))
    keys: list[dict[str, Any]] = []
    for key in private_keys(config):
        note: dict[str, Any] = {"setting": key.setting, "reference": shown(key.reference)}
        if key.read is None:
            note.update(stored=False, reason="held in the HSM: back it up with the HSM's own procedure")
        elif wrap_url is None:
            note.update(stored=False, reason="not stored: a plaintext private key is never written to a backup; "
                        "pass --wrap-key to store it wrapped")
        else:
            try:
                material = key.read()
            except (OSError, KeyError, LookupError) as exc:
                raise BackupError(f"{key.setting} = {shown(key.reference)}: cannot read the key ({exc})") from None
            name = f"keys/{key.setting}.sealed.json"
            archive.add(name, "wrapped-key", _seal(key.setting, material, wrap_url))
            note.update(stored=True, path=name, kek=shown(wrap_url))
        keys.append(note)
    for setting, path in public_files(config):
        archive.add(f"keys/public/{setting}/{path.name}", "public-key", path, str(path))
    if config.audit is not None:
        for path in log_files(Path(config.audit.path)):
            archive.add(f"audit/{path.name}", "audit", path, str(path))
    created = time.time() if now is None else now
    manifest = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
                "dsguard": __version__, "config": config.source, "files": archive.files, "keys": keys}
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    signature = _sign(manifest_bytes, sign_url) if sign_url else None
    _write_tar(output, manifest_bytes, signature, archive, created)
    return manifest


def _sign(data: bytes, url: str) -> bytes:
    signer = open_signer(url)
    document = {"key_id": signer.key_id, "alg": signer.algorithm, "jwk": public_jwk(signer.public_key()),
                "signature": _b64(signer.sign(data))}
    return json.dumps(document, indent=2).encode() + b"\n"


def _write_tar(output: Path, manifest: bytes, signature: bytes | None, archive: _Archive, created: float) -> None:
    partial = output.with_name(f".{output.name}.{secrets.token_hex(4)}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            members: list[tuple[str, bytes | Path]] = [(MANIFEST, manifest)]
            if signature is not None:
                members.append((SIGNATURE, signature))
            members += list(archive.contents.items())
            for name, content in members:
                info = tarfile.TarInfo(name)
                info.mode, info.mtime = 0o600, int(created)
                if isinstance(content, bytes):
                    info.size = len(content)
                    tar.addfile(info, io.BytesIO(content))
                else:
                    with content.open("rb") as file:
                        info.size = os.fstat(file.fileno()).st_size
                        tar.addfile(info, file)
            raw.flush()
            os.fsync(raw.fileno())
        partial.replace(output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


@dataclasses.dataclass
class Checked:
    """An archive whose every member matched its manifest."""

    manifest: dict[str, Any]
    signed_by: str | None
    keys: dict[str, bytes]


def _safe_name(name: str) -> bool:
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name and \
        path.as_posix() == name


def check_backup(archive: Path, *, public_keys: Mapping[str, PublicKey] | None = None,
                 unwrap_url: str | None = None) -> Checked:
    """Read ``archive`` whole and check it against its manifest; ``BackupError`` on any mismatch."""
    try:
        with tarfile.open(archive, mode="r:") as tar:
            members = tar.getmembers()
            if not members or members[0].name != MANIFEST or not members[0].isfile():
                raise BackupError(f"{archive}: not a dsguard backup (its first member is not {MANIFEST})")
            manifest_bytes = _read(tar, members[0])
            manifest = json.loads(manifest_bytes)
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise BackupError(f"{archive}: unknown backup format")
            listed = {entry["path"]: entry for entry in manifest["files"]}
            seen: set[str] = set()
            signature: bytes | None = None
            keys: dict[str, bytes] = {}
            for member in members[1:]:
                name = member.name
                if not member.isfile() or not _safe_name(name):
                    raise BackupError(f"{archive}: member {name!r} is not a plain file with a relative path")
                if name in seen:
                    raise BackupError(f"{archive}: member {name} appears twice")
                seen.add(name)
                if name == SIGNATURE:
                    signature = _read(tar, member)
                    continue
                entry = listed.get(name)
                if entry is None:
                    raise BackupError(f"{archive}: member {name} is not in the manifest (added after the backup)")
                digest, size = _digest(tar, member)
                if digest != entry["sha256"] or size != entry["size"]:
                    raise BackupError(f"{archive}: {name} does not match its SHA-256 in the manifest (modified)")
                if entry["role"] == "wrapped-key" and unwrap_url is not None:
                    keys[name] = unseal(_read(tar, member), unwrap_url)
            missing = sorted(set(listed) - seen)
            if missing:
                raise BackupError(f"{archive}: {missing[0]} is listed in the manifest but missing (removed)")
    except (tarfile.TarError, OSError, ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{archive}: unreadable backup ({exc})") from None
    signed_by = _check_signature(archive, manifest_bytes, signature, public_keys)
    return Checked(manifest, signed_by, keys)


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    file = tar.extractfile(member)
    if file is None:
        raise BackupError(f"member {member.name} cannot be read")
    return file.read()


def _digest(tar: tarfile.TarFile, member: tarfile.TarInfo) -> tuple[str, int]:
    file = tar.extractfile(member)
    if file is None:
        raise BackupError(f"member {member.name} cannot be read")
    digest, size = hashlib.sha256(), 0
    while chunk := file.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _check_signature(archive: Path, manifest: bytes, signature: bytes | None,
                     public_keys: Mapping[str, PublicKey] | None) -> str | None:
    if signature is None:
        if public_keys is not None:
            raise BackupError(f"{archive}: the manifest is not signed, and a signing key was pinned")
        return None
    try:
        document = json.loads(signature)
        key_id = str(document["key_id"])
        from .audit.signing import key_from_jwk

        key = public_keys.get(key_id) if public_keys is not None else key_from_jwk(document["jwk"])
        if key is None:
            raise BackupError(f"{archive}: the manifest is signed by key {key_id}, which is not pinned")
        valid = public_key_id(key) == key_id and verify_signature(key, document["alg"], manifest,
                                                                  _unb64(document["signature"]))
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise BackupError(f"{archive}: the manifest signature does not verify (the manifest was modified)")
    return key_id


def restore_backup(archive: Path, target: Path, *, public_keys: Mapping[str, PublicKey] | None = None,
                   unwrap_url: str | None = None) -> Checked:
    """Check ``archive``, then write its files under the empty (or new) directory ``target``.

    Sealed keys are unsealed into ``keys/<setting>`` (mode 0600) when ``unwrap_url`` is given,
    else restored sealed.
    """
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"{target}: restore into a new or empty directory (nothing is overwritten)")
    checked = check_backup(archive, public_keys=public_keys, unwrap_url=unwrap_url)
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, mode="r:") as tar:
        for member in tar.getmembers():
            name = member.name
            if name in checked.keys:
                setting = name.removeprefix("keys/").removesuffix(".sealed.json")
                _write_private(target / "keys" / setting, checked.keys[name])
                continue
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            with destination.open("xb") as out:
                source = tar.extractfile(member)
                assert source is not None
                while chunk := source.read(CHUNK):
                    out.write(chunk)
            os.chmod(destination, 0o600)
    return checked


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
