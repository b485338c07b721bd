"""`dsguard backup`: policies, keys (wrapped only) and audit logs; a restore checks everything before writing."""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from dsguard.audit.verify import verify_log
from dsguard.backup import BackupError, check_backup, create_backup, restore_backup
from dsguard.cli import main
from dsguard.config import load_config
from dsguard.crypto.keys import open_signer

from .audit_logs import new_signing_key, write_log

MODEL = Path(__file__).parent.parent / "dsguard" / "defaults" / "policy" / "model.conf"


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    """A deployment: policies, an audit signing key, a weights KEK, an audit log with a rotated file."""
    root = tmp_path / "deployment"
    (root / "policies").mkdir(parents=True)
    (root / "policies" / "model.conf").write_text(MODEL.read_text())
    (root / "policies" / "policy.csv").write_text("p, alice, model:tiny, chat, allow\n")
    (root / "keys").mkdir()
    new_signing_key(root / "keys" / "audit.pem")
    (root / "keys" / "weights.kek").write_bytes(secrets.token_bytes(32))
    (root / "dsguard.toml").write_text("""
[policy]
model = "policies/model.conf"
policy = "policies/policy.csv"
[runner]
decryption_key = "file:keys/weights.kek"
[audit]
path = "audit/audit.jsonl"
signing_key = "file:keys/audit.pem"
""")
    write_log(root / "audit" / "audit.jsonl", 30, signer=open_signer(f"file:{root / 'keys' / 'audit.pem'}"),
              checkpoint_every=5, rotate_size=2000)
    return root


@pytest.fixture
def backup_kek(tmp_path: Path) -> str:
    path = tmp_path / "backup.kek"
    path.write_bytes(secrets.token_bytes(32))
    return f"file:{path}"


@pytest.fixture
def archive(tmp_path: Path, deployment: Path, backup_kek: str) -> Path:
    output = tmp_path / "backup.tar"
    create_backup(load_config(deployment / "dsguard.toml"), output, wrap_url=backup_kek)
    return output


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def rewrite(path: Path, change: Callable[[dict[str, bytes]], None]) -> None:
    """The archive with its members changed by ``change``, as someone editing it would write it."""
    contents = members(path)
    change(contents)
    with tarfile.open(path, "w") as tar:
        for name, data in contents.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_restore_round_trip_gives_back_policies_keys_and_audit_logs(tmp_path: Path, deployment: Path,
                                                                     archive: Path, backup_kek: str) -> None:
    target = tmp_path / "restored"
    checked = restore_backup(archive, target, unwrap_url=backup_kek)
    assert (target / "policies" / "0" / "policy.csv").read_bytes() == (deployment / "policies" / "policy.csv"
                                                                      ).read_bytes()
    assert (target / "keys" / "audit.signing_key").read_bytes() == (deployment / "keys" / "audit.pem").read_bytes()
    assert (target / "keys" / "runner.decryption_key").read_bytes() == (deployment / "keys" / "weights.kek"
                                                                       ).read_bytes()
    assert (target / "keys" / "audit.signing_key").stat().st_mode & 0o077 == 0
    originals = sorted(p.name for p in (deployment / "audit").glob("*.jsonl"))
    assert sorted(p.name for p in (target / "audit").glob("*.jsonl")) == originals and len(originals) > 1
    signer = open_signer(f"file:{deployment / 'keys' / 'audit.pem'}")
    result = verify_log([target / "audit"], public_keys={signer.key_id: signer.public_key()})
    assert result.findings == [] and result.decisions == 30
    assert {entry["role"] for entry in checked.manifest["files"]} == {"config", "policy", "wrapped-key", "audit"}


def test_no_private_key_is_stored_in_plaintext(deployment: Path, archive: Path) -> None:
    data = archive.read_bytes()
    pem = (deployment / "keys" / "audit.pem").read_bytes()
    body = b"".join(pem.splitlines()[1:-1])
    assert body not in data and pem not in data
    assert (deployment / "keys" / "weights.kek").read_bytes() not in data
    sealed = json.loads(members(archive)["keys/audit.signing_key.sealed.json"])
    assert sealed["format"] == "dsguard-sealed-key/1" and sealed["cipher"] == "A256GCM"


def test_without_a_wrap_key_private_keys_are_left_out_and_named(tmp_path: Path, deployment: Path) -> None:
    output = tmp_path / "plain.tar"
    manifest = create_backup(load_config(deployment / "dsguard.toml"), output)
    assert not any(name.startswith("keys/") for name in members(output))
    assert [(k["setting"], k["stored"]) for k in manifest["keys"]] == [("audit.signing_key", False),
                                                                       ("runner.decryption_key", False)]
    assert "never written to a backup" in manifest["keys"][0]["reason"]


def test_a_key_held_in_an_hsm_is_named_in_the_manifest_not_stored(tmp_path: Path, deployment: Path,
                                                                    backup_kek: str) -> None:
    config = deployment / "dsguard.toml"
    hsm_key = "pkcs11:token=dsguard;object=audit?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:P"
    config.write_text(config.read_text().replace('"file:keys/audit.pem"', f'"{hsm_key}"'))
    manifest = create_backup(load_config(config), tmp_path / "hsm.tar", wrap_url=backup_kek)
    note = manifest["keys"][0]
    assert (note["setting"], note["stored"], note["reference"]) == ("audit.signing_key", False,
                                                                    "pkcs11:token=dsguard;object=audit")
    assert "HSM" in note["reason"]


def _modify_audit(contents: dict[str, bytes]) -> None:
    name = next(n for n in contents if n.startswith("audit/"))
    contents[name] = contents[name].replace(b'"decision":"allow"', b'"decision":"deny!"', 1)


def _add_member(contents: dict[str, bytes]) -> None:
    contents["policies/0/backdoor.csv"] = b"p, mallory, *, *, allow\n"


def _remove_member(contents: dict[str, bytes]) -> None:
    del contents[next(n for n in contents if n.startswith("audit/"))]


def _traverse(contents: dict[str, bytes]) -> None:
    manifest = json.loads(contents["manifest.json"])
    data = b"evil\n"
    manifest["files"].append({"path": "../evil", "role": "policy", "sha256": hashlib.sha256(data).hexdigest(),
                              "size": len(data), "source": None})
    contents["manifest.json"] = json.dumps(manifest).encode()
    contents["../evil"] = data


@pytest.mark.parametrize(("change", "message"), [
    (_modify_audit, "does not match its SHA-256 in the manifest (modified)"),
    (_add_member, "is not in the manifest (added after the backup)"),
    (_remove_member, "is listed in the manifest but missing (removed)"),
    (_traverse, "is not a plain file with a relative path"),
], ids=["modified member", "added member", "removed member", "path traversal"])
def test_a_tampered_archive_is_refused_before_anything_is_written(tmp_path: Path, archive: Path,
                                                                    backup_kek: str, change: Callable[..., None],
                                                                    message: str) -> None:
    rewrite(archive, change)
    target = tmp_path / "restored"
    with pytest.raises(BackupError, match=message.replace("(", r"\(").replace(")", r"\)")):
        restore_backup(archive, target, unwrap_url=backup_kek)
    assert not target.exists()
    assert not (tmp_path / "evil").exists()


def test_a_signed_manifest_edited_with_its_digests_fails_its_signature(tmp_path: Path, deployment: Path) -> None:
    sign = f"file:{deployment / 'keys' / 'audit.pem'}"
    output = tmp_path / "signed.tar"
    create_backup(load_config(deployment / "dsguard.toml"), output, sign_url=sign)
    signer = open_signer(sign)
    pinned = {signer.key_id: signer.public_key()}
    assert check_backup(output, public_keys=pinned).signed_by == signer.key_id

    def forge(contents: dict[str, bytes]) -> None:
        _add_member(contents)
        manifest = json.loads(contents["manifest.json"])
        data = contents["policies/0/backdoor.csv"]
        manifest["files"].append({"path": "policies/0/backdoor.csv", "role": "policy", "source": None,
                                  "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
        contents["manifest.json"] = json.dumps(manifest).encode()

    rewrite(output, forge)
    with pytest.raises(BackupError, match="the manifest signature does not verify"):
        check_backup(output, public_keys=pinned)


def test_restore_never_writes_into_a_directory_that_holds_files(tmp_path: Path, archive: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(BackupError, match="restore into a new or empty directory"):
        restore_backup(archive, target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_a_sealed_key_does_not_open_with_another_kek(tmp_path: Path, archive: Path) -> None:
    other = tmp_path / "other.kek"
    other.write_bytes(secrets.token_bytes(32))
    with pytest.raises(BackupError, match="was wrapped by KEK"):
        restore_backup(archive, tmp_path / "restored", unwrap_url=f"file:{other}")
    assert not (tmp_path / "restored").exists()


def test_backup_commands_round_trip(tmp_path: Path, deployment: Path, backup_kek: str) -> None:
    output = tmp_path / "cli.tar"
    public = tmp_path / "audit.pub"
    signer = open_signer(f"file:{deployment / 'keys' / 'audit.pem'}")
    public.write_bytes(signer.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo))
    runner = CliRunner()
    created = runner.invoke(main, ["backup", "create", "--config", str(deployment / "dsguard.toml"), "--output",
                                   str(output), "--wrap-key", backup_kek, "--sign-key",
                                   f"file:{deployment / 'keys' / 'audit.pem'}"])
    assert created.exit_code == 0, created.output
    checked = runner.invoke(main, ["backup", "verify", str(output), "--public-key", str(public)])
    assert checked.exit_code == 0 and f"manifest signed by {signer.key_id}" in checked.stdout
    restored = runner.invoke(main, ["backup", "restore", str(output), "--target", str(tmp_path / "r"),
                                    "--unwrap-key", backup_kek, "--public-key", str(public)])
    assert restored.exit_code == 0, restored.output
    assert "audit log: OK: 42 records (30 decisions)" in restored.stderr
    assert (tmp_path / "r" / "keys" / "audit.signing_key").read_bytes() == (deployment / "keys" / "audit.pem"
                                                                           ).read_bytes()
