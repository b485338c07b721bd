"""Signed manifests: a bundle verifies only when signed by a trusted key and every file matches, none more or less."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from dsguard.crypto.errors import ManifestError
from dsguard.crypto.keys import LocalSigner, b64url
from dsguard.crypto.manifest import MANIFEST_NAME, TrustedKeys, canonical, sign_bundle, verify_bundle

SIGNING_KEY = ed25519.Ed25519PrivateKey.generate()
SIGNER = LocalSigner(SIGNING_KEY)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    root = tmp_path / "bundle"
    (root / "onnx").mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "qwen2"}\n')
    (root / "onnx" / "model.onnx").write_bytes(os.urandom(2048))
    (root / "onnx" / "model.onnx_data").write_bytes(os.urandom(8192))
    sign_bundle(root, SIGNER)
    return root


@pytest.fixture
def trusted(tmp_path: Path) -> TrustedKeys:
    path = tmp_path / "trusted.pem"
    path.write_bytes(SIGNING_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo))
    return TrustedKeys.from_file(path)


def refused(bundle: Path, trusted: TrustedKeys, reason: str) -> ManifestError:
    with pytest.raises(ManifestError) as caught:
        verify_bundle(bundle, trusted)
    assert caught.value.reason == reason, str(caught.value)
    return caught.value


def test_a_signed_bundle_verifies(bundle: Path, trusted: TrustedKeys) -> None:
    verified = verify_bundle(bundle, trusted)
    assert sorted(verified.files) == ["config.json", "onnx/model.onnx", "onnx/model.onnx_data"]
    assert verified.key_id == SIGNER.key_id


def test_a_p256_signed_bundle_verifies_against_a_jwks(bundle: Path, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signer = LocalSigner(key)
    sign_bundle(bundle, signer)
    other = LocalSigner(ed25519.Ed25519PrivateKey.generate())
    jwks = {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": _x(other)}, _ec_jwk(key)]}
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    assert verify_bundle(bundle, TrustedKeys.from_file(tmp_path / "jwks.json")).algorithm == "ES256"


def test_file_changed_is_refused(bundle: Path, trusted: TrustedKeys) -> None:
    path = bundle / "onnx" / "model.onnx_data"
    data = bytearray(path.read_bytes())
    data[4000] ^= 0x01
    path.write_bytes(data)
    assert refused(bundle, trusted, "file-changed").file == str(path)


def test_file_added_is_refused(bundle: Path, trusted: TrustedKeys) -> None:
    (bundle / "onnx" / "model_backdoor.onnx").write_bytes(b"extra graph")
    assert refused(bundle, trusted, "file-extra").file == str(bundle / "onnx" / "model_backdoor.onnx")


def test_file_removed_is_refused(bundle: Path, trusted: TrustedKeys) -> None:
    (bundle / "config.json").unlink()
    assert refused(bundle, trusted, "file-missing").file == str(bundle / "config.json")


def test_signature_from_another_key_is_refused(bundle: Path, trusted: TrustedKeys) -> None:
    sign_bundle(bundle, LocalSigner(ed25519.Ed25519PrivateKey.generate()))
    assert "not trusted" in refused(bundle, trusted, "untrusted-key").message


def test_manifest_re_signed_by_another_key_under_the_trusted_kid_is_refused(bundle: Path,
                                                                            trusted: TrustedKeys) -> None:
    (bundle / "config.json").write_text('{"model_type": "evil"}\n')
    attacker = LocalSigner(ed25519.Ed25519PrivateKey.generate())
    sign_bundle(bundle, attacker)
    document = json.loads((bundle / MANIFEST_NAME).read_text())
    document["signature"]["kid"] = SIGNER.key_id
    (bundle / MANIFEST_NAME).write_text(json.dumps(document))
    refused(bundle, trusted, "signature")


def test_manifest_digest_edited_to_match_a_tampered_file_is_refused(bundle: Path, trusted: TrustedKeys) -> None:
    (bundle / "config.json").write_text('{"model_type": "evil"}\n')
    document = json.loads((bundle / MANIFEST_NAME).read_text())
    sign_bundle(bundle, LocalSigner(ed25519.Ed25519PrivateKey.generate()))
    forged = json.loads((bundle / MANIFEST_NAME).read_text())["manifest"]
    document["manifest"] = forged
    (bundle / MANIFEST_NAME).write_text(json.dumps(document))
    refused(bundle, trusted, "signature")


def test_unsigned_bundle_is_refused(bundle: Path, trusted: TrustedKeys) -> None:
    (bundle / MANIFEST_NAME).unlink()
    assert "unsigned" in refused(bundle, trusted, "unsigned").message


def test_manifest_without_a_signature_is_refused(bundle: Path, trusted: TrustedKeys) -> None:
    document = json.loads((bundle / MANIFEST_NAME).read_text())
    del document["signature"]
    (bundle / MANIFEST_NAME).write_text(json.dumps(document))
    refused(bundle, trusted, "unsigned")


def test_manifest_with_a_duplicated_key_is_refused(bundle: Path, trusted: TrustedKeys) -> None:
    text = (bundle / MANIFEST_NAME).read_text()
    (bundle / MANIFEST_NAME).write_text(text.replace('"manifest":', '"manifest": {}, "manifest":', 1))
    refused(bundle, trusted, "malformed")


def test_a_signed_path_outside_the_bundle_is_refused(bundle: Path, trusted: TrustedKeys) -> None:
    manifest = {"format": "dsguard-manifest/1", "created": "2025-01-01T00:00:00Z",
                "files": [{"path": "../outside.onnx", "size": 1, "sha256": "00"}]}
    signature = {"alg": "EdDSA", "kid": SIGNER.key_id, "value": b64url(SIGNER.sign(canonical(manifest)))}
    (bundle / MANIFEST_NAME).write_text(json.dumps({"manifest": manifest, "signature": signature}))
    refused(bundle, trusted, "unsafe-path")


def test_a_symbolic_link_in_the_bundle_is_refused(bundle: Path, trusted: TrustedKeys, tmp_path: Path) -> None:
    (tmp_path / "elsewhere.onnx").write_bytes(b"graph")
    (bundle / "onnx" / "linked.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    refused(bundle, trusted, "unsafe-path")


def _x(signer: LocalSigner) -> str:
    public = signer.public_key()
    assert isinstance(public, ed25519.Ed25519PublicKey)
    return b64url(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def _ec_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big"))}
