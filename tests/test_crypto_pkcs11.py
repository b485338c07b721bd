"""PKCS#11 keys in a real SoftHSM2 token: RFC 7512 URIs, signing and key wrapping inside the token, keys that
never leave it, and an encrypted, signed bundle served from keys held only by the token."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from dsguard.cli import main
from dsguard.crypto import pkcs11 as provider
from dsguard.crypto.envelope import decrypt_to_memory, encrypt_file
from dsguard.crypto.keys import KeyProviderError, LocalWrapper, open_signer, open_wrapper, verify_signature
from dsguard.crypto.pkcs11 import generate_key
from dsguard.crypto.rfc7512 import Pkcs11URI
from dsguard.crypto.softhsm import SoftHSMToken, create_token, softhsm_module

PIN = "4321-test-pin"
PIN_ENV = "DSGUARD_TEST_HSM_PIN"

needs_softhsm = pytest.mark.skipif(softhsm_module() is None or shutil.which("softhsm2-util") is None,
                                   reason="SoftHSM2 is not installed (Debian package softhsm2)")


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHSMToken]:
    if softhsm_module() is None or shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM2 is not installed (Debian package softhsm2)")
    created = create_token(tmp_path_factory.mktemp("softhsm"), "dsguard-test", PIN)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOFTHSM2_CONF", str(created.config))
        patch.setenv(PIN_ENV, PIN)
        provider.close_all()
        try:
            yield created
        finally:
            provider.close_all()


def url(token: SoftHSMToken, label: str) -> str:
    return token.url(label, pin_source=f"env:{PIN_ENV}")


@pytest.fixture(scope="module")
def ed25519_url(token: SoftHSMToken) -> str:
    generate_key(url(token, "audit-signing"), "ed25519")
    return url(token, "audit-signing")


@pytest.fixture(scope="module")
def kek_url(token: SoftHSMToken) -> str:
    generate_key(url(token, "weights-kek"), "aes-256")
    return url(token, "weights-kek")


def token_object(token: SoftHSMToken, label: str, object_class: str) -> dict[str, object]:
    """Attributes of an object read through PKCS#11 directly, as any other application of the token would."""
    import pkcs11

    session = pkcs11.lib(token.module).get_token(token_label=token.label).open()
    try:
        key = session.get_key(object_class=pkcs11.ObjectClass[object_class], label=label)
        attributes = {name: key[pkcs11.Attribute[name]] for name in
                      ("EXTRACTABLE", "SENSITIVE", "NEVER_EXTRACTABLE", "ALWAYS_SENSITIVE")}
        try:
            attributes["VALUE"] = key[pkcs11.Attribute.VALUE]
        except pkcs11.PKCS11Error as exc:
            attributes["VALUE"] = type(exc).__name__
        return attributes
    finally:
        session.close()


def test_uri_attributes_are_percent_decoded() -> None:
    uri = Pkcs11URI.parse("pkcs11:token=My%20Token;object=audit%3Bsigning;id=%01%ff;type=private"
                          "?module-path=/usr/lib/x.so&pin-source=env:PIN")
    assert uri.text("token") == "My Token"
    assert uri.object_selector() == {"label": "audit;signing", "id": b"\x01\xff"}
    assert uri.query["pin-source"] == "env:PIN"


def test_uri_with_a_pin_value_is_refused_without_echoing_it() -> None:
    with pytest.raises(KeyProviderError) as caught:
        Pkcs11URI.parse("pkcs11:token=t;object=k?pin-value=123456")
    assert "pin-source" in str(caught.value) and "123456" not in str(caught.value)


@pytest.mark.parametrize("text", ["pkcs11:token=a;token=b", "pkcs11:tokn=a", "pkcs11:token", "pkcs11:type=secret"],
                         ids=["duplicate", "unknown-attribute", "no-value", "bad-type"])
def test_malformed_uris_are_refused(text: str) -> None:
    with pytest.raises(KeyProviderError):
        Pkcs11URI.parse(text)


@needs_softhsm
def test_module_name_is_found_in_the_usual_directories() -> None:
    assert Pkcs11URI.parse("pkcs11:?module-name=softhsm2").module() == softhsm_module()


def test_ed25519_key_signs_inside_the_token(ed25519_url: str) -> None:
    signer = open_signer(ed25519_url)
    signature = signer.sign(b"audit checkpoint")
    assert signer.algorithm == "EdDSA"
    assert verify_signature(signer.public_key(), "EdDSA", b"audit checkpoint", signature)
    assert not verify_signature(signer.public_key(), "EdDSA", b"audit checkpoinT", signature)


def test_p256_key_signs_inside_the_token(token: SoftHSMToken) -> None:
    generate_key(url(token, "p256-signing"), "ec-p256")
    signer = open_signer(url(token, "p256-signing"))
    assert signer.algorithm == "ES256"
    assert verify_signature(signer.public_key(), "ES256", b"manifest", signer.sign(b"manifest"))


def test_signing_key_never_leaves_the_token(token: SoftHSMToken, ed25519_url: str) -> None:
    attributes = token_object(token, "audit-signing", "PRIVATE_KEY")
    assert attributes["EXTRACTABLE"] is False and attributes["NEVER_EXTRACTABLE"] is True
    assert attributes["SENSITIVE"] is True and attributes["ALWAYS_SENSITIVE"] is True
    assert attributes["VALUE"] == "AttributeSensitive"


def test_key_encryption_key_never_leaves_the_token(token: SoftHSMToken, kek_url: str) -> None:
    attributes = token_object(token, "weights-kek", "SECRET_KEY")
    assert attributes["EXTRACTABLE"] is False and attributes["SENSITIVE"] is True
    assert attributes["VALUE"] == "AttributeSensitive"


def test_kek_wraps_and_unwraps_inside_the_token(kek_url: str) -> None:
    wrapper = open_wrapper(kek_url)
    data_key = os.urandom(32)
    wrapped = wrapper.wrap(data_key)
    assert wrapped != data_key and wrapper.unwrap(wrapped) == data_key


def test_a_wrapped_key_altered_in_transit_does_not_unwrap(kek_url: str) -> None:
    wrapper = open_wrapper(kek_url)
    wrapped = bytearray(wrapper.wrap(os.urandom(32)))
    wrapped[3] ^= 0x01
    with pytest.raises(KeyProviderError) as caught:
        wrapper.unwrap(bytes(wrapped))
    assert caught.value.reason == "unwrap"


def test_token_kek_wraps_the_same_bytes_as_a_file_kek_of_the_same_key(token: SoftHSMToken) -> None:
    import pkcs11

    material = os.urandom(32)
    session = pkcs11.lib(token.module).get_token(token_label=token.label).open(rw=True)
    try:
        session.create_object({
            pkcs11.Attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY, pkcs11.Attribute.KEY_TYPE: pkcs11.KeyType.AES,
            pkcs11.Attribute.VALUE: material, pkcs11.Attribute.LABEL: "escrowed-kek", pkcs11.Attribute.TOKEN: True,
            pkcs11.Attribute.WRAP: True, pkcs11.Attribute.UNWRAP: True, pkcs11.Attribute.SENSITIVE: True,
            pkcs11.Attribute.EXTRACTABLE: False})
    finally:
        session.close()
    in_token, in_file = open_wrapper(url(token, "escrowed-kek")), LocalWrapper(material, "escrow")
    data_key = os.urandom(32)
    assert in_token.key_id == in_file.key_id
    assert in_token.wrap(data_key) == in_file.wrap(data_key)
    assert in_file.unwrap(in_token.wrap(data_key)) == data_key


def test_envelope_round_trips_with_the_token_kek(kek_url: str, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    (tmp_path / "plain").write_bytes(data)
    encrypt_file(tmp_path / "plain", tmp_path / "sealed", open_wrapper(kek_url), chunk_size=16384)
    assert decrypt_to_memory(tmp_path / "sealed", open_wrapper(kek_url)) == data


def test_threads_sign_concurrently_through_the_shared_token_session(ed25519_url: str) -> None:
    signer = open_signer(ed25519_url)
    failures: list[str] = []

    def sign_many(worker: int) -> None:
        for index in range(50):
            message = f"{worker}:{index}".encode()
            try:
                if not verify_signature(signer.public_key(), "EdDSA", message, signer.sign(message)):
                    failures.append(f"{message!r}: bad signature")
            except KeyProviderError as exc:
                failures.append(f"{message!r}: {exc}")

    threads = [threading.Thread(target=sign_many, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_a_missing_object_is_named(token: SoftHSMToken) -> None:
    with pytest.raises(KeyProviderError, match="object=no-such-key: no private key"):
        open_signer(url(token, "no-such-key"))


def test_a_label_already_in_use_is_not_generated_again(ed25519_url: str) -> None:
    with pytest.raises(KeyProviderError, match="already holds an object"):
        generate_key(ed25519_url, "ed25519")


def test_a_wrong_pin_is_refused_without_echoing_it(token: SoftHSMToken, monkeypatch: pytest.MonkeyPatch) -> None:
    provider.close_all()
    monkeypatch.setenv("DSGUARD_TEST_WRONG_PIN", "0000-wrong")
    try:
        with pytest.raises(KeyProviderError) as caught:
            open_signer(token.url("audit-signing", pin_source="env:DSGUARD_TEST_WRONG_PIN"))
    finally:
        provider.close_all()
    assert caught.value.reason == "login"
    assert "0000-wrong" not in str(caught.value)


def test_pin_is_read_from_a_pin_source_file(token: SoftHSMToken, ed25519_url: str, tmp_path: Path) -> None:
    provider.close_all()
    (tmp_path / "pin").write_text(PIN + "\n")
    signer = open_signer(token.url("audit-signing", pin_source=f"file:{tmp_path / 'pin'}"))
    assert signer.key_id == open_signer(ed25519_url).key_id


def test_hsm_generate_writes_a_public_key_that_verifies_the_token_signatures(token: SoftHSMToken,
                                                                           tmp_path: Path) -> None:
    key_url = url(token, "cli-signing")
    result = CliRunner().invoke(main, ["keys", "hsm-generate", key_url, "--type", "ed25519",
                                       "--out-public", str(tmp_path / "public.pem")])
    assert result.exit_code == 0, result.output
    public = serialization.load_pem_public_key((tmp_path / "public.pem").read_bytes())
    signer = open_signer(key_url)
    assert result.output.strip() == signer.key_id
    assert verify_signature(public, "EdDSA", b"x", signer.sign(b"x"))  # type: ignore[arg-type]


def test_bundle_sealed_and_signed_by_the_token_is_served_from_memory(token: SoftHSMToken, ed25519_url: str,
                                                                     kek_url: str, tmp_path: Path) -> None:
    from dsguard.config import RunnerConfig
    from dsguard.crypto.manifest import sign_bundle
    from dsguard.crypto.weights import encrypt_bundle
    from dsguard.runner.bundle import open_bundle
    from dsguard.runner.session import DecoderSession
    from dsguard.runner.tiny import write_bundle

    bundle = write_bundle(tmp_path / "bundle", dtypes=("q4",))
    expected, _ = DecoderSession(open_bundle(bundle, "q4")).prefill([1, 2, 3])
    encrypt_bundle(bundle, open_wrapper(kek_url))
    sign_bundle(bundle, open_signer(ed25519_url))
    (tmp_path / "public.pem").write_bytes(open_signer(ed25519_url).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    policy = RunnerConfig(model=str(bundle), manifest_public_key=tmp_path / "public.pem", decryption_key=kek_url)
    logits, _ = DecoderSession(open_bundle(bundle, "q4", policy=policy)).prefill([1, 2, 3])
    assert not (bundle / "onnx" / "model_q4.onnx").exists()
    assert (logits == expected).all()
