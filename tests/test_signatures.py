"""RFC 9421 request signatures: a request signed by a key of the directory, covering what the
guard requires and fresh, passes once; the key directory and the configuration are checked
before the guard starts. The attacks are in test_signature_attacks.py, the clients in
test_signature_clients.py."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from dsguard import GuardMiddleware
from dsguard.checks.base import Check
from dsguard.config import Config, parse_config, unavailable_features
from dsguard.errors import ConfigError
from dsguard.guard import Guard
from dsguard.signatures import (
    DigestMismatch,
    KeyDirectoryError,
    content_digest,
    load_key_directory,
    parse_key_directory,
    verify_content_digest,
)
from dsguard.signatures.algorithms import PrivateKey
from dsguard.signatures.client import HTTPSignatureAuth, RequestSigner

from .conftest import free_port, run_uvicorn
from .helpers import HeaderIdentity, InProcess, starlette_app

ALGORITHMS = ("ed25519", "ecdsa-p256-sha256", "rsa-pss-sha512", "hmac-sha256")
KEYIDS = {alg: f"{alg}-client" for alg in ALGORITHMS}
BOUND_SUBJECT = "alice"
BODY = b'{"model":"deepseek-chat","messages":[{"role":"user","content":"hi"}]}'
JSON = {"content-type": "application/json"}


@functools.cache
def private_keys() -> dict[str, PrivateKey | bytes]:
    """One key per algorithm, made once per test run (RSA key generation is slow)."""
    return {
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
        "ecdsa-p256-sha256": ec.generate_private_key(ec.SECP256R1()),
        "rsa-pss-sha512": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "hmac-sha256": secrets.token_urlsafe(32).encode(),
    }


def public_pem(key: PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def write_key_directory(directory: Path) -> Path:
    """The test clients' directory: each kind of entry (JWK, PEM file, secret file) once."""
    keys = private_keys()
    ed, ecdsa, rsa_key, secret = (keys[alg] for alg in ALGORITHMS)
    assert isinstance(ed, ed25519.Ed25519PrivateKey) and isinstance(ecdsa, ec.EllipticCurvePrivateKey)
    assert isinstance(rsa_key, rsa.RSAPrivateKey) and isinstance(secret, bytes)
    (directory / "rsa-client.pem").write_text(public_pem(rsa_key))
    (directory / "hmac.secret").write_bytes(secret + b"\n")
    document = {"keys": {
        KEYIDS["ed25519"]: {"alg": "ed25519", "subject": BOUND_SUBJECT,
                            "jwk": OKPAlgorithm.to_jwk(ed.public_key(), as_dict=True)},
        KEYIDS["ecdsa-p256-sha256"]: {"alg": "ecdsa-p256-sha256",
                                      "jwk": ECAlgorithm.to_jwk(ecdsa.public_key(), as_dict=True)},
        KEYIDS["rsa-pss-sha512"]: {"alg": "rsa-pss-sha512", "pem": "file:rsa-client.pem"},
        KEYIDS["hmac-sha256"]: {"alg": "hmac-sha256", "secret": "file:hmac.secret"},
    }}
    path = directory / "keys.json"
    path.write_text(json.dumps(document, indent=2))
    return path


def signer(alg: str = "ed25519", **options: Any) -> RequestSigner:
    return RequestSigner(private_keys()[alg], KEYIDS[alg], **options)


def signatures_config(directory: Path, signatures: str = "", storage: str = "memory://") -> Config:
    write_key_directory(directory)
    text = (f'[transport]\nrequire_https = false\n[storage]\nurl = "{storage}"\n'
            f'[signatures]\nkeys = "keys.json"\n{signatures}')
    return parse_config(text, file=str(directory / "dsguard.toml"), base=directory)


def signed_app(config: Config, checks: Iterable[Check] = ()) -> GuardMiddleware:
    return GuardMiddleware(starlette_app(), config=config, checks=checks)


def signed_post(url: str, body: bytes = BODY, *, sign_with: RequestSigner | None = None,
                **headers: str) -> httpx.Response:
    """POST ``body`` to ``url`` with the signature fields of ``sign_with`` (ed25519 by default)."""
    fields = (sign_with or signer()).sign("POST", url, body=body)
    return httpx.post(url, content=body, headers={**JSON, **fields, **headers})


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A guarded app on uvicorn requiring signatures with the default settings."""
    with run_uvicorn(signed_app(signatures_config(tmp_path_factory.mktemp("signatures")))) as url:
        yield url


# --- accepted signatures ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ALGORITHMS)
def test_a_request_signed_with_each_algorithm_passes(server: str, alg: str) -> None:
    response = httpx.post(f"{server}/whoami?stream=false", content=BODY, headers=JSON,
                          auth=HTTPSignatureAuth(signer(alg)))
    assert response.status_code == 200, response.text
    assert response.json()["body"] == BODY.decode()[:64]


def test_a_sha512_content_digest_is_accepted(server: str) -> None:
    assert signed_post(f"{server}/whoami", sign_with=signer(digest="sha-512")).status_code == 200


def test_a_get_is_signed_over_the_digest_of_the_empty_body(server: str) -> None:
    fields = signer().sign("GET", f"{server}/whoami")
    assert fields["Content-Digest"] == content_digest(b"")
    assert httpx.get(f"{server}/whoami", headers=fields).status_code == 200


def test_a_signature_with_an_expiry_in_the_future_passes(server: str) -> None:
    assert signed_post(f"{server}/whoami", sign_with=signer(expires_in=60)).status_code == 200


def test_a_key_bound_to_a_subject_identifies_the_caller(server: str) -> None:
    response = signed_post(f"{server}/whoami")
    assert response.json()["subject"] == BOUND_SUBJECT


def test_a_key_without_subject_leaves_the_caller_unidentified(server: str) -> None:
    response = signed_post(f"{server}/whoami", sign_with=signer("ecdsa-p256-sha256"))
    assert response.status_code == 200
    assert response.json()["subject"] is None


# --- what the guard asks for ------------------------------------------------------------------------------------

def test_an_unsigned_request_is_refused_with_the_signature_challenge(server: str) -> None:
    response = httpx.post(f"{server}/whoami", content=BODY, headers=JSON)
    assert response.status_code == 401
    assert error_code(response) == "signature_missing"
    assert response.headers["www-authenticate"] == 'Signature realm="dsguard"'
    assert response.headers["accept-signature"] == 'sig1=("@method" "@target-uri" "content-digest");created'


def test_a_refused_signature_names_its_error_in_the_challenge(server: str) -> None:
    response = signed_post(f"{server}/whoami", sign_with=signer(components=("@method", "content-digest")))
    assert response.headers["www-authenticate"].startswith('Signature realm="dsguard", error="components_missing"')
    assert "accept-signature" in response.headers


def test_accept_signature_lists_the_configured_requirements(tmp_path: Path) -> None:
    config = signatures_config(tmp_path, 'components = ["@method", "@authority", "@path", "content-digest"]\n'
                                         'nonce_required = true\ntag = "llm-gateway"\n')
    response = InProcess(signed_app(config)).get("/whoami")
    assert response.headers["accept-signature"] == (
        'sig1=("@method" "@authority" "@path" "content-digest");created;nonce;tag="llm-gateway"')


def test_unsigned_requests_pass_when_signatures_are_optional(tmp_path: Path) -> None:
    client = InProcess(signed_app(signatures_config(tmp_path, "required = false\n")))
    assert client.post("/whoami", content=BODY, headers=JSON).status_code == 200


def test_an_invalid_signature_is_refused_even_when_signatures_are_optional(tmp_path: Path) -> None:
    client = InProcess(signed_app(signatures_config(tmp_path, "required = false\n")))
    fields = signer().sign("POST", "http://testserver/whoami", body=BODY)
    response = client.post("/whoami", content=BODY + b" ", headers={**JSON, **fields})
    assert response.status_code == 401
    assert error_code(response) == "digest_mismatch"


def test_custom_covered_components_are_verified(tmp_path: Path) -> None:
    components = ("@method", "@authority", "@path", "@query", "content-type", "content-digest")
    client = InProcess(signed_app(signatures_config(tmp_path, f"components = {json.dumps(components)}\n")))
    fields = signer(components=components).sign("POST", "http://testserver/whoami?n=1", JSON.items(), BODY)
    assert client.post("/whoami?n=1", content=BODY, headers={**JSON, **fields}).status_code == 200
    fields = signer(components=components).sign("POST", "http://testserver/whoami?n=1", JSON.items(), BODY)
    tampered = {**fields, "content-type": "text/plain"}
    assert error_code(client.post("/whoami?n=1", content=BODY, headers=tampered)) == "signature_invalid"


def test_the_tag_selects_one_signature_among_several(tmp_path: Path) -> None:
    client = InProcess(signed_app(signatures_config(tmp_path, 'tag = "llm-gateway"\n')))
    url = "http://testserver/whoami"
    ours = signer(tag="llm-gateway").sign("POST", url, body=BODY)
    other = signer("ecdsa-p256-sha256", tag="edge-proxy", label="proxy").sign("POST", url, body=BODY)
    headers = {**JSON, "Content-Digest": ours["Content-Digest"],
               "Signature-Input": f'{ours["Signature-Input"]}, {other["Signature-Input"]}',
               "Signature": f'{ours["Signature"]}, {other["Signature"]}'}
    assert client.post("/whoami", content=BODY, headers=headers).status_code == 200


def test_a_signature_without_the_configured_tag_counts_as_missing(tmp_path: Path) -> None:
    client = InProcess(signed_app(signatures_config(tmp_path, 'tag = "llm-gateway"\n')))
    fields = signer(tag="another-app").sign("POST", "http://testserver/whoami", body=BODY)
    assert error_code(client.post("/whoami", content=BODY, headers={**JSON, **fields})) == "signature_missing"


def test_a_signature_without_nonce_is_refused_when_nonces_are_required(tmp_path: Path) -> None:
    client = InProcess(signed_app(signatures_config(tmp_path, "nonce_required = true\n")))
    fields = signer(nonce=False).sign("POST", "http://testserver/whoami", body=BODY)
    assert error_code(client.post("/whoami", content=BODY, headers={**JSON, **fields})) == "nonce_missing"


def test_a_key_whose_algorithm_is_not_accepted_is_refused(tmp_path: Path) -> None:
    client = InProcess(signed_app(signatures_config(tmp_path, 'algorithms = ["ed25519"]\n')))
    fields = signer("hmac-sha256").sign("POST", "http://testserver/whoami", body=BODY)
    response = client.post("/whoami", content=BODY, headers={**JSON, **fields})
    assert response.status_code == 401
    assert error_code(response) == "unsupported_algorithm"


# --- identity binding ------------------------------------------------------------------------------------------

def test_a_key_bound_to_the_callers_own_subject_passes(tmp_path: Path) -> None:
    client = InProcess(signed_app(signatures_config(tmp_path), checks=[HeaderIdentity()]))
    fields = signer().sign("POST", "http://testserver/whoami", body=BODY)
    response = client.post("/whoami", content=BODY, headers={**JSON, **fields, "x-test-subject": BOUND_SUBJECT})
    assert response.status_code == 200


def test_a_key_bound_to_another_subject_than_the_caller_is_refused(tmp_path: Path) -> None:
    client = InProcess(signed_app(signatures_config(tmp_path), checks=[HeaderIdentity()]))
    fields = signer().sign("POST", "http://testserver/whoami", body=BODY)
    response = client.post("/whoami", content=BODY, headers={**JSON, **fields, "x-test-subject": "mallory"})
    assert response.status_code == 401
    assert error_code(response) == "key_subject_mismatch"


# --- replay store --------------------------------------------------------------------------------------------

def test_without_a_nonce_the_signature_itself_is_remembered(tmp_path: Path) -> None:
    client = InProcess(signed_app(signatures_config(tmp_path)))
    fields = signer(nonce=False).sign("POST", "http://testserver/whoami", body=BODY)
    assert client.post("/whoami", content=BODY, headers={**JSON, **fields}).status_code == 200
    assert error_code(client.post("/whoami", content=BODY, headers={**JSON, **fields})) == "signature_replayed"


def test_two_signatures_made_in_the_same_second_are_both_accepted(tmp_path: Path) -> None:
    client = InProcess(signed_app(signatures_config(tmp_path)))
    now = time.time()
    first, second = (signer(clock=lambda: now).sign("POST", "http://testserver/whoami", body=BODY) for _ in "12")
    assert client.post("/whoami", content=BODY, headers={**JSON, **first}).status_code == 200
    assert client.post("/whoami", content=BODY, headers={**JSON, **second}).status_code == 200


def test_an_unreachable_replay_store_refuses_the_call(tmp_path: Path) -> None:
    config = signatures_config(tmp_path, storage=f"redis://127.0.0.1:{free_port()}/0?timeout=200ms")
    client = InProcess(signed_app(config))
    fields = signer().sign("POST", "http://testserver/whoami", body=BODY)
    response = client.post("/whoami", content=BODY, headers={**JSON, **fields})
    assert response.status_code == 503
    assert error_code(response) == "storage_unavailable"


def test_a_content_digest_in_an_unsupported_algorithm_does_not_verify() -> None:
    md5 = base64.b64encode(hashlib.md5(BODY).digest()).decode()
    with pytest.raises(DigestMismatch):
        verify_content_digest(f"md5=:{md5}:", BODY)


def test_every_member_of_a_content_digest_must_match() -> None:
    sha512_of_other = content_digest(b"other", "sha-512")
    with pytest.raises(DigestMismatch):
        verify_content_digest(f"{content_digest(BODY)}, {sha512_of_other}", BODY)
    verify_content_digest(f"{content_digest(BODY)}, {content_digest(BODY, 'sha-512')}", BODY)


# --- the key directory --------------------------------------------------------------------------------------------

def test_the_key_directory_fixes_each_keys_algorithm_and_subject(tmp_path: Path) -> None:
    directory = load_key_directory(write_key_directory(tmp_path))
    assert {key.keyid: key.algorithm for key in directory} == {KEYIDS[alg]: alg for alg in ALGORITHMS}
    assert {key.keyid: key.subject for key in directory}[KEYIDS["ed25519"]] == BOUND_SUBJECT


def test_an_hmac_secret_can_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSGUARD_TEST_HMAC_SECRET", "s" * 32)
    directory = parse_key_directory(
        {"keys": {"batch": {"alg": "hmac-sha256", "secret": "env:DSGUARD_TEST_HMAC_SECRET"}}}, base=tmp_path)
    assert directory.resolve_public_key("batch") == b"s" * 32


def key_directory_error(entry: dict[str, Any], base: Path = Path(".")) -> str:
    with pytest.raises(KeyDirectoryError) as error:
        parse_key_directory({"keys": {"client": entry}}, base=base)
    return str(error.value)


def test_an_inline_hmac_secret_is_refused() -> None:
    message = key_directory_error({"alg": "hmac-sha256", "secret": "a-secret-written-into-the-file-0123456789"})
    assert "env:NAME" in message
    assert "a-secret-written" not in message


def test_a_missing_secret_variable_is_named() -> None:
    message = key_directory_error({"alg": "hmac-sha256", "secret": "env:DSGUARD_TEST_UNSET_SECRET"})
    assert "DSGUARD_TEST_UNSET_SECRET" in message


def test_a_short_hmac_secret_is_refused(tmp_path: Path) -> None:
    (tmp_path / "short.secret").write_text("too-short")
    assert "32 bytes" in key_directory_error({"alg": "hmac-sha256", "secret": "file:short.secret"}, tmp_path)


def test_a_private_jwk_is_refused() -> None:
    key = private_keys()["ed25519"]
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    jwk = OKPAlgorithm.to_jwk(key, as_dict=True)
    assert "public key only" in key_directory_error({"alg": "ed25519", "jwk": jwk})


def test_a_private_pem_is_refused() -> None:
    key = private_keys()["ed25519"]
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    assert "not a private key" in key_directory_error({"alg": "ed25519", "pem": pem})


def test_a_key_of_another_type_than_its_alg_is_refused() -> None:
    key = private_keys()["rsa-pss-sha512"]
    assert isinstance(key, rsa.RSAPrivateKey)
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    assert "rsa-pss-sha512, not" in key_directory_error({"alg": "ed25519", "jwk": jwk})


def test_a_public_key_given_as_an_hmac_secret_is_refused() -> None:
    key = private_keys()["ed25519"]
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    assert "shared secrets" in key_directory_error({"alg": "hmac-sha256", "pem": public_pem(key)})


def test_an_unknown_algorithm_in_the_directory_is_refused() -> None:
    key = private_keys()["rsa-pss-sha512"]
    assert isinstance(key, rsa.RSAPrivateKey)
    assert '"alg" must be one of' in key_directory_error({"alg": "rsa-v1_5-sha256", "pem": public_pem(key)})


def test_a_misspelled_member_is_refused() -> None:
    assert "unknown member 'subjet'" in key_directory_error({"alg": "hmac-sha256", "subjet": "alice"})


def test_a_keyid_listed_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text('{"keys": {"a": {"alg": "hmac-sha256", "secret": "env:X"}, '
                    '"a": {"alg": "hmac-sha256", "secret": "env:Y"}}}')
    with pytest.raises(KeyDirectoryError, match="'a' appears twice"):
        load_key_directory(path)


# --- configuration ------------------------------------------------------------------------------------------------

def test_a_signatures_section_is_enforced_not_reported_unavailable(tmp_path: Path) -> None:
    config = signatures_config(tmp_path)
    assert [missing.section for missing in unavailable_features(config)] == []
    assert [check.name for check in Guard(config).pipeline.checks if check.stage == "signature"] == ["signature"]


def test_signatures_without_a_key_directory_refuse_to_start(tmp_path: Path) -> None:
    config = parse_config("[signatures]\nmax_age = \"5m\"\n", file="dsguard.toml", base=tmp_path)
    with pytest.raises(ConfigError, match=r"\[signatures\] keys"):
        Guard(config)


def test_a_broken_key_directory_refuses_to_start_naming_the_entry(tmp_path: Path) -> None:
    config = signatures_config(tmp_path)
    (tmp_path / "keys.json").write_text('{"keys": {"batch": {"alg": "hmac-sha256", "secret": "inline"}}}')
    with pytest.raises(ConfigError, match="keyid 'batch'"):
        Guard(config)


def test_an_unknown_configured_algorithm_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[signatures\] algorithms"):
        Guard(signatures_config(tmp_path, 'algorithms = ["ed25519", "rsa-v1_5-sha256"]\n'))


def test_an_unknown_derived_component_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[signatures\] components"):
        Guard(signatures_config(tmp_path, 'components = ["@method", "@target-url"]\n'))
