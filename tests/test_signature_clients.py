"""Clients that sign: httpx (sync and async) and requests auth classes, `dsguard sign` for curl,
each against a real server; and a Flask app guarded through the WSGI middleware."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from flask import Flask, request

from dsguard import GuardWSGIMiddleware
from dsguard.cli import main
from dsguard.signatures.client import (
    HTTPSignatureAuth,
    RequestSigner,
    RequestsSignatureAuth,
    SigningError,
    SigningKeyError,
)

from .conftest import run_uvicorn, run_werkzeug
from .test_signatures import (
    ALGORITHMS,
    BODY,
    JSON,
    KEYIDS,
    error_code,
    private_keys,
    signatures_config,
    signed_app,
    signer,
)

try:
    import requests
except ModuleNotFoundError:
    requests = None

needs_requests = pytest.mark.skipif(requests is None, reason="requests is not installed (pip install dsguard[dev])")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_uvicorn(signed_app(signatures_config(tmp_path_factory.mktemp("clients")))) as url:
        yield url


# --- httpx ------------------------------------------------------------------------------------------------------

def test_httpx_client_signs_every_request(server: str) -> None:
    with httpx.Client(base_url=server, auth=HTTPSignatureAuth(signer())) as client:
        responses = [client.post("/whoami", json={"n": n}) for n in range(3)] + [client.get("/whoami?page=2")]
    assert [r.status_code for r in responses] == [200] * 4


def test_httpx_async_client_signs_concurrent_requests(server: str) -> None:
    async def send() -> list[int]:
        async with httpx.AsyncClient(base_url=server, auth=HTTPSignatureAuth(signer("ecdsa-p256-sha256"))) as client:
            responses = await asyncio.gather(*(client.post("/whoami", content=BODY, headers=JSON) for _ in range(8)))
        return [r.status_code for r in responses]

    assert asyncio.run(send()) == [200] * 8


def test_httpx_auth_signs_the_encoded_url(server: str) -> None:
    with httpx.Client(auth=HTTPSignatureAuth(signer())) as client:
        response = client.get(f"{server}/whoami", params={"q": "a b/ü", "x": "1"})
    assert response.status_code == 200


def test_httpx_signature_is_denied_without_the_auth(server: str) -> None:
    assert error_code(httpx.get(f"{server}/whoami")) == "signature_missing"


# --- requests ---------------------------------------------------------------------------------------------------

@needs_requests
def test_requests_auth_signs_a_json_body(server: str) -> None:
    auth = RequestsSignatureAuth(signer("rsa-pss-sha512"))
    response = requests.post(f"{server}/whoami", json={"messages": [{"role": "user", "content": "hé"}]},
                             auth=auth, timeout=10)
    assert response.status_code == 200, response.text


@needs_requests
def test_requests_auth_signs_a_text_body_and_a_query(server: str) -> None:
    response = requests.post(f"{server}/whoami", params={"n": "1"}, data="plain words é",
                             headers={"content-type": "text/plain"}, auth=RequestsSignatureAuth(signer("hmac-sha256")),
                             timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["body"] == "plain words é"


@needs_requests
def test_requests_auth_is_a_requests_auth_base() -> None:
    assert isinstance(RequestsSignatureAuth(signer()), requests.auth.AuthBase)


@needs_requests
def test_requests_auth_refuses_a_streamed_body(server: str) -> None:
    with pytest.raises(TypeError, match="streamed"):
        requests.post(f"{server}/whoami", data=iter([b"a", b"b"]), auth=RequestsSignatureAuth(signer()), timeout=10)


# --- Flask through the WSGI middleware -----------------------------------------------------------------------------

def flask_app() -> Flask:
    app = Flask(__name__)

    @app.post("/v1/chat/completions")
    def chat() -> dict[str, object]:
        return {"model": request.get_json()["model"]}

    return app


def test_flask_app_accepts_a_signed_request_and_refuses_its_tampered_copy(tmp_path: Path) -> None:
    guarded = GuardWSGIMiddleware(flask_app(), config=signatures_config(tmp_path))
    with run_werkzeug(guarded) as url, httpx.Client(auth=HTTPSignatureAuth(signer())) as client:
        accepted = client.post(f"{url}/v1/chat/completions?stream=false", content=BODY, headers=JSON)
        fields = signer().sign("POST", f"{url}/v1/chat/completions", body=BODY)
        tampered = httpx.post(f"{url}/v1/chat/completions", content=BODY.replace(b"chat", b"coder"),
                              headers={**JSON, **fields})
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {"model": "deepseek-chat"}
    assert tampered.status_code == 401
    assert error_code(tampered) == "digest_mismatch"


# --- the signer -------------------------------------------------------------------------------------------------

def test_the_signer_refuses_an_algorithm_its_key_cannot_sign_with() -> None:
    with pytest.raises(SigningKeyError, match="ed25519, not rsa-pss-sha512"):
        RequestSigner(ed25519.Ed25519PrivateKey.generate(), "k", algorithm="rsa-pss-sha512")


def test_the_signer_refuses_a_short_hmac_secret() -> None:
    with pytest.raises(SigningKeyError, match="32 bytes"):
        RequestSigner(b"short", "k")


def test_the_signer_refuses_an_ec_key_off_p256() -> None:
    with pytest.raises(SigningKeyError, match="P-256"):
        RequestSigner(ec.generate_private_key(ec.SECP384R1()), "k")


def test_the_signer_refuses_a_body_that_does_not_match_the_present_digest() -> None:
    with pytest.raises(SigningError):
        signer().sign("POST", "https://api.example.com/v1", [("Content-Digest", "sha-256=:" + "A" * 43 + "=:")], BODY)


def test_each_signature_has_its_own_nonce() -> None:
    first, second = (signer().sign("GET", "https://api.example.com/v1") for _ in "12")
    assert first["Signature-Input"] != second["Signature-Input"]


# --- dsguard sign ------------------------------------------------------------------------------------------------

def dsguard(*args: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin)


def write_private_key(path: Path, alg: str) -> Path:
    key = private_keys()[alg]
    if isinstance(key, bytes):
        path.write_bytes(key + b"\n")
    else:
        assert isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return path


def header_options(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split("'")[1].split(":")[0] for line in lines] == ["Content-Digest", "Signature-Input", "Signature"]
    return [part for line in lines for part in ("-H", line.removeprefix("-H ").strip("'"))]


def curl(*args: str) -> tuple[int, str]:
    executable = shutil.which("curl")
    if executable is None:
        pytest.skip("curl is not installed")
    done = subprocess.run([executable, "-s", "-o", "/dev/stdout", "-w", "\n%{http_code}", *args],
                          capture_output=True, timeout=30, check=False)
    body, _, status = done.stdout.decode().rpartition("\n")
    return int(status), body


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_dsguard_sign_prints_headers_that_curl_sends_through_the_guard(server: str, tmp_path: Path, alg: str) -> None:
    key = write_private_key(tmp_path / "client.key", alg)
    (tmp_path / "body.json").write_bytes(BODY)
    url = f"{server}/whoami?stream=false"
    alg_option = ("--alg", alg) if alg == "hmac-sha256" else ()
    result = dsguard("sign", "--key", str(key), "--keyid", KEYIDS[alg], *alg_option, "--method", "POST",
                     "--url", url, "--data", f"@{tmp_path / 'body.json'}")
    status, body = curl("-X", "POST", url, "-H", "content-type: application/json", *header_options(result),
                        "--data-binary", f"@{tmp_path / 'body.json'}")
    assert status == 200, body


def test_dsguard_sign_reads_the_body_from_standard_input(server: str, tmp_path: Path) -> None:
    key = write_private_key(tmp_path / "client.pem", "ed25519")
    result = dsguard("sign", "--key", str(key), "--keyid", KEYIDS["ed25519"], "--method", "POST",
                     "--url", f"{server}/whoami", "--data", "-", stdin=BODY)
    headers = header_options(result)
    response = httpx.post(f"{server}/whoami", content=BODY,
                          headers={**JSON, **dict(h.split(": ", 1) for h in headers[1::2])})
    assert response.status_code == 200, response.text


def test_dsguard_sign_prints_shell_quoted_options(tmp_path: Path) -> None:
    key = write_private_key(tmp_path / "client.pem", "ed25519")
    result = dsguard("sign", "--key", str(key), "--keyid", "k", "--url", "https://api.example.com/v1/models")
    assert result.exit_code == 0, result.output
    assert all(line.startswith("-H '") and line.endswith("'") for line in result.stdout.splitlines())


def test_dsguard_sign_refuses_an_algorithm_the_key_cannot_sign_with(tmp_path: Path) -> None:
    key = write_private_key(tmp_path / "client.pem", "ed25519")
    result = dsguard("sign", "--key", str(key), "--keyid", "k", "--alg", "ecdsa-p256-sha256",
                     "--url", "https://api.example.com/v1")
    assert result.exit_code == 1
    assert "signs with ed25519, not ecdsa-p256-sha256" in result.output


def test_dsguard_sign_explains_an_hmac_secret_needs_its_algorithm(tmp_path: Path) -> None:
    key = write_private_key(tmp_path / "client.secret", "hmac-sha256")
    result = dsguard("sign", "--key", str(key), "--keyid", "k", "--url", "https://api.example.com/v1")
    assert result.exit_code == 1
    assert "hmac-sha256" in result.output


def test_dsguard_sign_refuses_a_malformed_url(tmp_path: Path) -> None:
    key = write_private_key(tmp_path / "client.pem", "ed25519")
    result = dsguard("sign", "--key", str(key), "--keyid", "k", "--url", "api.example.com/v1")
    assert result.exit_code == 1
    assert "cannot sign" in result.output
