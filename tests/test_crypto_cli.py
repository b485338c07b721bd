"""`dsguard model encrypt|decrypt|sign|verify` and `dsguard keys generate-kek`: results and one-line errors."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from dsguard.cli import main
from dsguard.crypto.manifest import MANIFEST_NAME
from dsguard.runner.tiny import write_bundle


def dsguard(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def failed(result: Result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("cli") / "plain", dtypes=("q4",))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("keys")
    assert dsguard("keys", "generate-kek", "--out", str(root / "kek.bin")).exit_code == 0
    assert dsguard("keys", "generate-kek", "--out", str(root / "other-kek.bin")).exit_code == 0
    result = dsguard("keys", "generate", "--type", "ed25519", "--out-jwks", str(root / "jwks.json"),
                     "--out-private", str(root / "signer.pem"))
    assert result.exit_code == 0, result.output
    return {"kek": f"file:{root / 'kek.bin'}", "other_kek": f"file:{root / 'other-kek.bin'}",
            "signer": f"file:{root / 'signer.pem'}", "jwks": str(root / "jwks.json")}


@pytest.fixture
def sealed(plain: Path, keys: dict[str, str], tmp_path: Path) -> Path:
    result = dsguard("model", "encrypt", str(plain), "--key", keys["kek"], "--output", str(tmp_path / "sealed"),
                     "--sign-key", keys["signer"])
    assert result.exit_code == 0, result.output
    return tmp_path / "sealed"


def test_generate_kek_writes_a_private_32_byte_key(tmp_path: Path) -> None:
    result = dsguard("keys", "generate-kek", "--out", str(tmp_path / "kek.bin"))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("kek-")
    assert (tmp_path / "kek.bin").stat().st_size == 32
    assert stat.S_IMODE((tmp_path / "kek.bin").stat().st_mode) == 0o600


def test_generate_kek_never_overwrites_a_key(tmp_path: Path) -> None:
    (tmp_path / "kek.bin").write_bytes(b"existing key material, 32 bytes")
    failed(dsguard("keys", "generate-kek", "--out", str(tmp_path / "kek.bin")), "is never overwritten")
    assert (tmp_path / "kek.bin").read_bytes() == b"existing key material, 32 bytes"


def test_encrypt_writes_encrypted_weights_and_a_signed_manifest(sealed: Path, keys: dict[str, str]) -> None:
    assert (sealed / "onnx" / "model_q4.onnx.dsenc").is_file()
    assert not (sealed / "onnx" / "model_q4.onnx").exists()
    result = dsguard("model", "verify", str(sealed), "--public-key", keys["jwks"])
    assert result.exit_code == 0, result.output
    assert "ok," in result.output


def test_decrypt_restores_the_original_files(sealed: Path, plain: Path, keys: dict[str, str], tmp_path: Path) -> None:
    result = dsguard("model", "decrypt", str(sealed), "--key", keys["kek"], "--output", str(tmp_path / "restored"))
    assert result.exit_code == 0, result.output
    graph = Path("onnx") / "model_q4.onnx"
    assert (tmp_path / "restored" / graph).read_bytes() == (plain / graph).read_bytes()
    assert not (tmp_path / "restored" / MANIFEST_NAME).exists()


def test_decrypt_with_another_kek_names_the_file_and_the_key(sealed: Path, keys: dict[str, str]) -> None:
    result = dsguard("model", "decrypt", str(sealed), "--key", keys["other_kek"])
    failed(result, "model_q4.onnx.dsenc: encrypted with the key-encryption key kek-")
    assert (sealed / "onnx" / "model_q4.onnx.dsenc").is_file()


def test_verify_names_a_tampered_file(sealed: Path, keys: dict[str, str]) -> None:
    target = sealed / "onnx" / "model_q4.onnx.dsenc"
    data = bytearray(target.read_bytes())
    data[1000] ^= 0x10
    target.write_bytes(data)
    failed(dsguard("model", "verify", str(sealed), "--public-key", keys["jwks"]),
           f"{target}: does not match its signed SHA-256 digest")


def test_verify_refuses_an_unsigned_bundle(plain: Path, keys: dict[str, str]) -> None:
    failed(dsguard("model", "verify", str(plain), "--public-key", keys["jwks"]), "the bundle is unsigned")


def test_sign_then_verify_a_plaintext_bundle(keys: dict[str, str], tmp_path: Path) -> None:
    copy = write_bundle(tmp_path / "copy", dtypes=("q4",))
    assert dsguard("model", "sign", str(copy), "--key", keys["signer"]).exit_code == 0
    assert dsguard("model", "verify", str(copy), "--public-key", keys["jwks"]).exit_code == 0


def test_encrypt_with_an_unusable_key_url_fails_cleanly(plain: Path, tmp_path: Path) -> None:
    failed(dsguard("model", "encrypt", str(plain), "--key", "env:DSGUARD_TEST_UNSET_KEK", "--output",
                   str(tmp_path / "out")), "environment variable DSGUARD_TEST_UNSET_KEK is not set")


def test_encrypt_refuses_a_missing_bundle(keys: dict[str, str], tmp_path: Path) -> None:
    failed(dsguard("model", "encrypt", str(tmp_path / "absent"), "--key", keys["kek"]),
           "model bundle directory does not exist")


def test_encrypt_refuses_a_non_empty_output(plain: Path, keys: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "something").write_text("x")
    failed(dsguard("model", "encrypt", str(plain), "--key", keys["kek"], "--output", str(tmp_path / "out")),
           "exists and is not empty")
