"""Attacks on signed requests, each refused with 401 and its own code, over a real server.

The attacker has seen (or made) valid signed requests and changes what is sent, replays it,
or signs with what it has instead of what the key directory holds."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from dsguard.signatures.client import RequestSigner

from .conftest import run_uvicorn
from .test_signatures import (
    BODY,
    JSON,
    KEYIDS,
    error_code,
    private_keys,
    public_pem,
    signatures_config,
    signed_app,
    signer,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_uvicorn(signed_app(signatures_config(tmp_path_factory.mktemp("attacks")))) as url:
        yield url


def assert_refused(response: httpx.Response, code: str) -> None:
    assert response.status_code == 401, response.text
    assert error_code(response) == code
    assert response.headers["www-authenticate"].startswith("Signature ")


def post(url: str, fields: dict[str, str], body: bytes = BODY, **headers: str) -> httpx.Response:
    return httpx.post(url, content=body, headers={**JSON, **fields, **headers})


# --- changing what was signed -------------------------------------------------------------------------------------

def test_tampered_body_is_refused(server: str) -> None:
    fields = signer().sign("POST", f"{server}/whoami", body=BODY)
    assert_refused(post(f"{server}/whoami", fields, BODY.replace(b"hi", b"ho")), "digest_mismatch")


def test_tampered_body_with_a_recomputed_content_digest_is_refused(server: str) -> None:
    tampered = BODY.replace(b"hi", b"ho")
    fields = signer().sign("POST", f"{server}/whoami", body=BODY)
    fields["Content-Digest"] = signer().sign("POST", f"{server}/whoami", body=tampered)["Content-Digest"]
    assert_refused(post(f"{server}/whoami", fields, tampered), "signature_invalid")


def test_content_digest_of_another_body_is_refused(server: str) -> None:
    fields = signer().sign("POST", f"{server}/whoami", body=b'{"messages":[]}')
    assert_refused(post(f"{server}/whoami", fields), "digest_mismatch")


def test_stripped_content_digest_is_refused(server: str) -> None:
    fields = signer().sign("POST", f"{server}/whoami", body=BODY)
    del fields["Content-Digest"]
    assert_refused(post(f"{server}/whoami", fields), "digest_missing")


def test_content_digest_swapped_for_a_weaker_algorithm_is_refused(server: str) -> None:
    fields = signer().sign("POST", f"{server}/whoami", body=BODY)
    md5 = hashlib.md5(BODY).digest()
    fields["Content-Digest"] = f"md5=:{base64.b64encode(md5).decode()}:"
    assert_refused(post(f"{server}/whoami", fields), "signature_invalid")


def test_tampered_path_is_refused(server: str) -> None:
    fields = signer().sign("POST", f"{server}/admin", body=BODY)
    assert_refused(post(f"{server}/whoami", fields), "signature_invalid")


def test_tampered_query_is_refused(server: str) -> None:
    fields = signer().sign("POST", f"{server}/whoami?max_tokens=16", body=BODY)
    assert_refused(post(f"{server}/whoami?max_tokens=16000", fields), "signature_invalid")


def test_added_query_is_refused(server: str) -> None:
    fields = signer().sign("POST", f"{server}/whoami", body=BODY)
    assert_refused(post(f"{server}/whoami?debug=1", fields), "signature_invalid")


def test_request_for_another_host_is_refused(server: str) -> None:
    fields = signer().sign("POST", "http://api.example.com/whoami", body=BODY)
    assert_refused(post(f"{server}/whoami", fields, Host="api.example.com:8443"), "signature_invalid")


def test_signature_made_for_another_method_is_refused(server: str) -> None:
    fields = signer().sign("GET", f"{server}/whoami")
    assert_refused(post(f"{server}/whoami", fields, b""), "signature_invalid")


def test_rewritten_nonce_is_refused(server: str) -> None:
    fields = signer().sign("POST", f"{server}/whoami", body=BODY)
    fields["Signature-Input"] = fields["Signature-Input"].replace('nonce="', 'nonce="x')
    assert_refused(post(f"{server}/whoami", fields), "signature_invalid")


# --- replay and freshness -------------------------------------------------------------------------------------------

def test_replayed_request_is_refused(server: str) -> None:
    fields = signer().sign("POST", f"{server}/whoami", body=BODY)
    assert post(f"{server}/whoami", fields).status_code == 200
    assert_refused(post(f"{server}/whoami", fields), "signature_replayed")


def test_replay_on_another_replica_sharing_redis_is_refused(tmp_path: Path, redis_server: str) -> None:
    replicas = [signed_app(signatures_config(tmp_path, storage=redis_server)) for _ in range(2)]
    with run_uvicorn(replicas[0]) as replica_a, run_uvicorn(replicas[1]) as replica_b:
        fields = signer().sign("POST", f"{replica_a}/whoami", body=BODY)
        assert post(f"{replica_a}/whoami", fields).status_code == 200
        behind_the_same_name = {"Host": replica_a.removeprefix("http://")}
        assert_refused(post(f"{replica_b}/whoami", fields, **behind_the_same_name), "signature_replayed")


def test_first_use_on_another_replica_sharing_redis_passes(tmp_path: Path, redis_server: str) -> None:
    replicas = [signed_app(signatures_config(tmp_path, storage=redis_server)) for _ in range(2)]
    with run_uvicorn(replicas[0]) as replica_a, run_uvicorn(replicas[1]) as replica_b:
        assert post(f"{replica_a}/whoami", signer().sign("POST", f"{replica_a}/whoami", body=BODY)).status_code == 200
        assert post(f"{replica_b}/whoami", signer().sign("POST", f"{replica_b}/whoami", body=BODY)).status_code == 200


def test_signature_created_too_long_ago_is_refused(server: str) -> None:
    stale = signer(clock=lambda: time.time() - 3600)
    assert_refused(post(f"{server}/whoami", stale.sign("POST", f"{server}/whoami", body=BODY)), "signature_expired")


def test_signature_past_its_expires_is_refused(server: str) -> None:
    expired = signer(clock=lambda: time.time() - 120, expires_in=30)
    fields = expired.sign("POST", f"{server}/whoami", body=BODY)
    assert_refused(post(f"{server}/whoami", fields), "signature_expired")


def test_signature_created_in_the_future_is_refused(server: str) -> None:
    early = signer(clock=lambda: time.time() + 3600)
    fields = early.sign("POST", f"{server}/whoami", body=BODY)
    assert_refused(post(f"{server}/whoami", fields), "signature_invalid")


def test_removed_created_parameter_is_refused(server: str) -> None:
    fields = signer().sign("POST", f"{server}/whoami", body=BODY)
    params = fields["Signature-Input"].split(";")
    fields["Signature-Input"] = ";".join(p for p in params if not p.startswith("created="))
    assert_refused(post(f"{server}/whoami", fields), "signature_invalid")


# --- keys and algorithms ------------------------------------------------------------------------------------------

def test_signature_from_the_wrong_key_is_refused(server: str) -> None:
    impostor = ed25519.Ed25519PrivateKey.generate()
    forged = RequestSigner(impostor, KEYIDS["ed25519"]).sign("POST", f"{server}/whoami", body=BODY)
    assert_refused(post(f"{server}/whoami", forged), "signature_invalid")


def test_unknown_keyid_is_refused(server: str) -> None:
    fields = RequestSigner(private_keys()["ed25519"], "nobody").sign("POST", f"{server}/whoami", body=BODY)
    assert_refused(post(f"{server}/whoami", fields), "unknown_key")


def test_unknown_algorithm_is_refused(server: str) -> None:
    fields = signer().sign("POST", f"{server}/whoami", body=BODY)
    fields["Signature-Input"] = fields["Signature-Input"].replace('alg="ed25519"', 'alg="ed448"')
    assert_refused(post(f"{server}/whoami", fields), "unsupported_algorithm")


def test_algorithm_not_accepted_although_registered_is_refused(server: str) -> None:
    fields = signer("rsa-pss-sha512").sign("POST", f"{server}/whoami", body=BODY)
    fields["Signature-Input"] = fields["Signature-Input"].replace('alg="rsa-pss-sha512"', 'alg="rsa-v1_5-sha256"')
    assert_refused(post(f"{server}/whoami", fields), "unsupported_algorithm")


def test_algorithm_confusion_hmac_keyed_with_the_public_key_is_refused(server: str) -> None:
    key = private_keys()["ed25519"]
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    confused = RequestSigner(public_pem(key).encode(), KEYIDS["ed25519"], algorithm="hmac-sha256")
    assert_refused(post(f"{server}/whoami", confused.sign("POST", f"{server}/whoami", body=BODY)),
                   "key_algorithm_mismatch")


def test_algorithm_confusion_without_alg_parameter_is_refused(server: str) -> None:
    key = private_keys()["ed25519"]
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    confused = RequestSigner(public_pem(key).encode(), KEYIDS["ed25519"], algorithm="hmac-sha256",
                              include_alg=False)
    assert_refused(post(f"{server}/whoami", confused.sign("POST", f"{server}/whoami", body=BODY)),
                   "signature_invalid")


def test_downgrade_to_the_weakest_key_of_another_client_is_refused(server: str) -> None:
    secret = private_keys()["hmac-sha256"]
    assert isinstance(secret, bytes)
    fields = RequestSigner(secret, KEYIDS["ed25519"]).sign("POST", f"{server}/whoami", body=BODY)
    assert_refused(post(f"{server}/whoami", fields), "key_algorithm_mismatch")


# --- coverage and structure ------------------------------------------------------------------------------------------

def test_signature_missing_the_target_uri_is_refused(server: str) -> None:
    fields = signer(components=("@method", "content-digest")).sign("POST", f"{server}/whoami", body=BODY)
    response = post(f"{server}/whoami", fields)
    assert_refused(response, "components_missing")
    assert "@target-uri" in response.json()["error"]["message"]


def test_signature_missing_the_content_digest_is_refused(server: str) -> None:
    fields = signer(components=("@method", "@target-uri")).sign("POST", f"{server}/whoami", body=BODY)
    assert_refused(post(f"{server}/whoami", fields), "components_missing")


def test_duplicate_signature_input_labels_are_refused(server: str) -> None:
    fields = signer().sign("POST", f"{server}/whoami", body=BODY)
    narrow = signer(components=("@method",)).sign("POST", f"{server}/whoami", body=BODY)
    fields["Signature-Input"] = f'{fields["Signature-Input"]}, {narrow["Signature-Input"]}'
    assert_refused(post(f"{server}/whoami", fields), "signature_invalid")


def test_duplicate_signature_input_labels_across_field_lines_are_refused(server: str) -> None:
    fields = signer().sign("POST", f"{server}/whoami", body=BODY)
    narrow = signer(components=("@method",)).sign("POST", f"{server}/whoami", body=BODY)
    headers = [*JSON.items(), *((k, v) for k, v in fields.items() if k != "Signature-Input"),
               ("Signature-Input", fields["Signature-Input"]), ("Signature-Input", narrow["Signature-Input"])]
    response = httpx.post(f"{server}/whoami", content=BODY, headers=headers)
    assert_refused(response, "signature_invalid")


def test_second_unselected_signature_is_refused(server: str) -> None:
    ours = signer().sign("POST", f"{server}/whoami", body=BODY)
    other = signer("hmac-sha256", label="sig2").sign("POST", f"{server}/whoami", body=BODY)
    fields = {"Content-Digest": ours["Content-Digest"],
              "Signature-Input": f'{ours["Signature-Input"]}, {other["Signature-Input"]}',
              "Signature": f'{ours["Signature"]}, {other["Signature"]}'}
    assert_refused(post(f"{server}/whoami", fields), "signature_invalid")


def test_signature_input_without_signature_is_refused(server: str) -> None:
    fields = signer().sign("POST", f"{server}/whoami", body=BODY)
    del fields["Signature"]
    assert_refused(post(f"{server}/whoami", fields), "signature_invalid")


def test_forged_hmac_over_a_guessed_base_is_refused(server: str) -> None:
    fields = signer("hmac-sha256").sign("POST", f"{server}/whoami", body=BODY)
    guessed = hmac.new(b"guessed-secret-guessed-secret-000", b"anything", hashlib.sha256).digest()
    fields["Signature"] = f"sig1=:{base64.b64encode(guessed).decode()}:"
    assert_refused(post(f"{server}/whoami", fields), "signature_invalid")


def test_components_written_as_tokens_are_refused(server: str) -> None:
    fields = signer().sign("POST", f"{server}/whoami", body=BODY)
    fields["Signature-Input"] = fields["Signature-Input"].replace('"content-digest"', "content-digest")
    assert_refused(post(f"{server}/whoami", fields), "signature_invalid")
