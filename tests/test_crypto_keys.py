"""Key providers by URL: file: and env: signers and key-encryption keys, signature checks, plugins, safe errors."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap

from dsguard.cli import main
from dsguard.crypto.keys import KeyProviderError, open_signer, open_wrapper, public_key_id, verify_signature

PLUGIN_MODULE = '''
import hashlib
from dsguard.crypto.keys import LocalWrapper


def open_wrapper(url):
    return LocalWrapper(hashlib.sha256(url.encode()).digest(), url)
'''


def write_private_key(path: Path, key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
                      ) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


@pytest.mark.parametrize(("algorithm", "key"), [("EdDSA", ed25519.Ed25519PrivateKey.generate()),
                                                ("ES256", ec.generate_private_key(ec.SECP256R1()))],
                         ids=["ed25519", "p256"])
def test_file_signer_signs_with_its_key(tmp_path: Path, algorithm: str,
                                        key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> None:
    signer = open_signer(f"file:{write_private_key(tmp_path / 'key.pem', key)}")
    signature = signer.sign(b"checkpoint 42")
    assert signer.algorithm == algorithm
    assert len(signature) == 64
    assert verify_signature(key.public_key(), algorithm, b"checkpoint 42", signature)
    assert not verify_signature(key.public_key(), algorithm, b"checkpoint 43", signature)


def test_signer_key_id_is_the_kid_dsguard_keys_generate_writes(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["keys", "generate", "--type", "ed25519", "--out-jwks",
                                       str(tmp_path / "jwks.json"), "--out-private", str(tmp_path / "key.pem")])
    assert result.exit_code == 0, result.output
    kid = json.loads((tmp_path / "jwks.json").read_text())["keys"][0]["kid"]
    assert open_signer(f"file:{tmp_path / 'key.pem'}").key_id == kid


def test_env_signer_uses_the_ed25519_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    seed = os.urandom(32)
    monkeypatch.setenv("TEST_SIGNING_SEED", base64.b64encode(seed).decode())
    signer = open_signer("env:TEST_SIGNING_SEED")
    expected = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key()
    assert signer.key_id == public_key_id(expected)
    assert verify_signature(expected, "EdDSA", b"data", signer.sign(b"data"))


def test_a_signature_claimed_under_another_algorithm_does_not_verify() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    assert not verify_signature(key.public_key(), "ES256", b"data", key.sign(b"data"))


def test_file_kek_raw_or_base64_is_the_same_key(tmp_path: Path) -> None:
    kek = os.urandom(32)
    (tmp_path / "raw.bin").write_bytes(kek)
    (tmp_path / "text.b64").write_text(base64.b64encode(kek).decode() + "\n")
    raw, text = open_wrapper(f"file:{tmp_path / 'raw.bin'}"), open_wrapper(f"file://{tmp_path / 'text.b64'}")
    data_key = os.urandom(32)
    assert raw.key_id == text.key_id
    assert text.unwrap(raw.wrap(data_key)) == data_key


def test_wrapping_is_rfc3394_aes_key_wrap(monkeypatch: pytest.MonkeyPatch) -> None:
    kek = os.urandom(32)
    monkeypatch.setenv("TEST_KEK", base64.b64encode(kek).decode())
    data_key = os.urandom(32)
    assert aes_key_unwrap(kek, open_wrapper("env:TEST_KEK").wrap(data_key)) == data_key


def test_a_key_wrapped_by_another_kek_does_not_unwrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KEK_A", base64.b64encode(os.urandom(32)).decode())
    monkeypatch.setenv("TEST_KEK_B", base64.b64encode(os.urandom(32)).decode())
    first, second = open_wrapper("env:TEST_KEK_A"), open_wrapper("env:TEST_KEK_B")
    assert first.key_id != second.key_id
    with pytest.raises(KeyProviderError) as caught:
        second.unwrap(first.wrap(os.urandom(32)))
    assert caught.value.reason == "unwrap"


def test_unset_variable_is_named() -> None:
    with pytest.raises(KeyProviderError, match="environment variable TEST_NOT_SET_ANYWHERE is not set"):
        open_wrapper("env:TEST_NOT_SET_ANYWHERE")


def test_a_malformed_env_key_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_BAD_KEK", "hunter2-not-base64!")
    with pytest.raises(KeyProviderError) as caught:
        open_wrapper("env:TEST_BAD_KEK")
    assert "hunter2" not in str(caught.value)
    assert "TEST_BAD_KEK" in str(caught.value)


def test_a_short_kek_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "short.bin").write_bytes(os.urandom(31))
    with pytest.raises(KeyProviderError, match="expected a 32-byte AES-256 key"):
        open_wrapper(f"file:{tmp_path / 'short.bin'}")


def test_an_rsa_signing_key_is_refused(tmp_path: Path) -> None:
    path = write_private_key(tmp_path / "rsa.pem", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(KeyProviderError, match="expected Ed25519 or EC P-256"):
        open_signer(f"file:{path}")


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(KeyProviderError, match=f"{tmp_path / 'absent.pem'}: cannot read the key"):
        open_signer(f"file:{tmp_path / 'absent.pem'}")


def test_an_unknown_scheme_is_refused_without_echoing_credentials_in_the_url() -> None:
    with pytest.raises(KeyProviderError) as caught:
        open_wrapper("vault://operator:s3cret@vault.internal/transit/keys/weights?token=abc123")
    message = str(caught.value)
    assert "no key provider for the scheme 'vault'" in message
    assert "s3cret" not in message and "abc123" not in message


@pytest.fixture
def memkms_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed distribution whose ``dsguard.keys`` entry point maps the ``memkms`` scheme to a module."""
    (tmp_path / "memkms_provider.py").write_text(PLUGIN_MODULE)
    info = tmp_path / "memkms_provider-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: memkms-provider\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[dsguard.keys]\nmemkms = memkms_provider\n")
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.usefixtures("memkms_plugin")
def test_a_plugin_scheme_opens_its_provider() -> None:
    wrapper = open_wrapper("memkms:weights")
    data_key = os.urandom(32)
    assert wrapper.unwrap(wrapper.wrap(data_key)) == data_key
    assert wrapper.key_id != open_wrapper("memkms:other").key_id


@pytest.mark.usefixtures("memkms_plugin")
def test_a_plugin_without_signers_says_so() -> None:
    with pytest.raises(KeyProviderError, match=r"memkms_provider has no open_signer\(\)"):
        open_signer("memkms:audit")
