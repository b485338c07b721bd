"""RFC 9180 HPKE (dsguard.crypto.hpke) against the RFC's own test vectors and OpenSSL's implementation."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from dsguard.crypto import hpke

# RFC 9180 Appendix A: mode 0 (Base), kem_id 32, kdf_id 1; the encryptions all seal `pt` with aad "Count-<seq>".
INFO = bytes.fromhex("4f6465206f6e2061204772656369616e2055726e")
PT = bytes.fromhex("4265617574792069732074727574682c20747275746820626561757479")
VECTORS: dict[str, dict[str, Any]] = {
    "A.1.1 AES-128-GCM": {
        "aead": hpke.AES_128_GCM,
        "ikmE": "7268600d403fce431561aef583ee1613527cff655c1343f29812e66706df3234",
        "skEm": "52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736",
        "ikmR": "6db9df30aa07dd42ee5e8181afdb977e538f5e1fec8a06223f33f7013e525037",
        "skRm": "4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8",
        "pkRm": "3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d",
        "enc": "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431",
        "shared_secret": "fe0e18c9f024ce43799ae393c7e8fe8fce9d218875e8227b0187c04e7d2ea1fc",
        "key": "4531685d41d65f03dc48f6b8302c05b0",
        "base_nonce": "56d890e5accaaf011cff4b7d",
        "exporter_secret": "45ff1c2e220db587171952c0592d5f5ebe103f1561a2614e38f2ffd47e99e3f8",
        "ct": {
            0: "f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea87e13c512a",
            1: "af2d7e9ac9ae7e270f46ba1f975be53c09f8d875bdc8535458c2494e8a6eab251c03d0c22a56b8ca42c2063b84",
            2: "498dfcabd92e8acedc281e85af1cb4e3e31c7dc394a1ca20e173cb72516491588d96a19ad4a683518973dcc180",
            4: "583bd32bc67a5994bb8ceaca813d369bca7b2a42408cddef5e22f880b631215a09fc0012bc69fccaa251c0246d",
            255: "7175db9717964058640a3a11fb9007941a5d1757fda1a6935c805c21af32505bf106deefec4a49ac38d71c9e0a",
            256: "957f9800542b0b8891badb026d79cc54597cb2d225b54c00c5238c25d05c30e3fbeda97d2e0e1aba483a2df9f2",
        },
        "exports": {
            "": "3853fe2b4035195a573ffc53856e77058e15d9ea064de3e59f4961d0095250ee",
            "00": "2e8f0b54673c7029649d4eb9d5e33bf1872cf76d623ff164ac185da9e88c21a5",
            "54657374436f6e74657874": "e9e43065102c3836401bed8c3c3c75ae46be1639869391d62c61f1ec7af54931",
        },
    },
    "A.2.1 ChaCha20-Poly1305": {
        "aead": hpke.CHACHA20_POLY1305,
        "ikmE": "909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b",
        "skEm": "f4ec9b33b792c372c1d2c2063507b684ef925b8c75a42dbcbf57d63ccd381600",
        "ikmR": "1ac01f181fdf9f352797655161c58b75c656a6cc2716dcb66372da835542e1df",
        "skRm": "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb",
        "pkRm": "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a",
        "enc": "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a",
        "shared_secret": "0bbe78490412b4bbea4812666f7916932b828bba79942424abb65244930d69a7",
        "key": "ad2744de8e17f4ebba575b3f5f5a8fa1f69c2a07f6e7500bc60ca6e3e3ec1c91",
        "base_nonce": "5c4d98150661b848853b547f",
        "exporter_secret": "a3b010d4994890e2c6968a36f64470d3c824c8f5029942feb11e7a74b2921922",
        "ct": {
            0: "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28",
            1: "6b53c051e4199c518de79594e1c4ab18b96f081549d45ce015be002090bb119e85285337cc95ba5f59992dc98c",
            2: "71146bd6795ccc9c49ce25dda112a48f202ad220559502cef1f34271e0cb4b02b4f10ecac6f48c32f878fae86b",
            4: "63357a2aa291f5a4e5f27db6baa2af8cf77427c7c1a909e0b37214dd47db122bb153495ff0b02e9e54a50dbe16",
            255: "18ab939d63ddec9f6ac2b60d61d36a7375d2070c9b683861110757062c52b8880a5f6b3936da9cd6c23ef2a95c",
            256: "7a4a13e9ef23978e2c520fd4d2e757514ae160cd0cd05e556ef692370ca53076214c0c40d4c728d6ed9e727a5b",
        },
        "exports": {
            "": "4bbd6243b8bb54cec311fac9df81841b6fd61f56538a775e7c80a9f40160606e",
            "00": "8c1df14732580e5501b00f82b10a1647b40713191b7c1240ac80e2b68808ba69",
            "54657374436f6e74657874": "5acb09211139c43b3090489a9da433e8a30ee7188ba8b0a9a1ccf0c229283e53",
        },
    },
}
SUITES = pytest.mark.parametrize("name", list(VECTORS))


def raw(key: X25519PrivateKey) -> str:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()


def sender(vector: dict[str, Any]) -> tuple[bytes, hpke.Context]:
    ephemeral = hpke.derive_key_pair(bytes.fromhex(vector["ikmE"]))
    recipient = hpke.derive_key_pair(bytes.fromhex(vector["ikmR"]))
    return hpke.setup_base_s(vector["aead"], recipient.public_key(), INFO, ephemeral)


def aad(seq: int) -> bytes:
    return f"Count-{seq}".encode()


@SUITES
def test_derive_key_pair_gives_the_rfc_keys(name: str) -> None:
    vector = VECTORS[name]
    recipient = hpke.derive_key_pair(bytes.fromhex(vector["ikmR"]))
    assert raw(hpke.derive_key_pair(bytes.fromhex(vector["ikmE"]))) == vector["skEm"]
    assert raw(recipient) == vector["skRm"]
    assert hpke.public_bytes(recipient.public_key()).hex() == vector["pkRm"]


@SUITES
def test_encap_and_key_schedule_give_the_rfc_secrets(name: str) -> None:
    vector = VECTORS[name]
    ephemeral = hpke.derive_key_pair(bytes.fromhex(vector["ikmE"]))
    recipient = hpke.derive_key_pair(bytes.fromhex(vector["ikmR"]))
    shared_secret, enc = hpke.encap(recipient.public_key(), ephemeral)
    context = hpke.key_schedule(vector["aead"], shared_secret, INFO)
    assert (enc.hex(), shared_secret.hex()) == (vector["enc"], vector["shared_secret"])
    assert (context.key.hex(), context.base_nonce.hex(), context.exporter_secret.hex()) == (
        vector["key"], vector["base_nonce"], vector["exporter_secret"])


@SUITES
def test_seal_in_sequence_gives_the_rfc_ciphertexts(name: str) -> None:
    vector = VECTORS[name]
    _, context = sender(vector)
    sealed = {seq: context.seal(aad(seq), PT).hex() for seq in range(257)}
    assert {seq: sealed[seq] for seq in vector["ct"]} == vector["ct"]


@SUITES
def test_recipient_opens_the_rfc_ciphertexts_in_sequence(name: str) -> None:
    vector = VECTORS[name]
    recipient = X25519PrivateKey.from_private_bytes(bytes.fromhex(vector["skRm"]))
    context = hpke.setup_base_r(vector["aead"], bytes.fromhex(vector["enc"]), recipient, INFO)
    assert [context.open(aad(seq), bytes.fromhex(vector["ct"][seq])) for seq in (0, 1, 2)] == [PT, PT, PT]


@SUITES
def test_export_gives_the_rfc_values(name: str) -> None:
    vector = VECTORS[name]
    _, context = sender(vector)
    assert {c: context.export(bytes.fromhex(c), 32).hex() for c in vector["exports"]} == vector["exports"]


def test_a_message_opened_out_of_order_is_refused() -> None:
    vector = VECTORS["A.1.1 AES-128-GCM"]
    recipient = X25519PrivateKey.from_private_bytes(bytes.fromhex(vector["skRm"]))
    context = hpke.setup_base_r(vector["aead"], bytes.fromhex(vector["enc"]), recipient, INFO)
    with pytest.raises(hpke.HPKEError):
        context.open(aad(1), bytes.fromhex(vector["ct"][1]))


def test_a_flipped_ciphertext_bit_is_refused() -> None:
    vector = VECTORS["A.1.1 AES-128-GCM"]
    recipient = X25519PrivateKey.from_private_bytes(bytes.fromhex(vector["skRm"]))
    context = hpke.setup_base_r(vector["aead"], bytes.fromhex(vector["enc"]), recipient, INFO)
    tampered = bytearray.fromhex(vector["ct"][0])
    tampered[3] ^= 0x01
    with pytest.raises(hpke.HPKEError):
        context.open(aad(0), bytes(tampered))


def test_a_low_order_encapsulated_key_is_refused() -> None:
    with pytest.raises(hpke.HPKEError):
        hpke.setup_base_r(hpke.AES_256_GCM, bytes(32), X25519PrivateKey.generate(), INFO)


def test_aes_256_gcm_suite_interoperates_with_openssl_hpke() -> None:
    native = pytest.importorskip("cryptography.hazmat.primitives.hpke")
    suite = native.Suite(native.KEM.X25519, native.KDF.HKDF_SHA256, native.AEAD.AES_256_GCM)
    recipient = X25519PrivateKey.generate()
    theirs = suite.encrypt(PT, recipient.public_key(), info=INFO)
    context = hpke.setup_base_r(hpke.AES_256_GCM, theirs[:hpke.N_ENC], recipient, INFO)
    assert context.open(b"", theirs[hpke.N_ENC:]) == PT
    enc, ours = hpke.setup_base_s(hpke.AES_256_GCM, recipient.public_key(), INFO)
    assert suite.decrypt(enc + ours.seal(b"", PT), recipient, info=INFO) == PT
