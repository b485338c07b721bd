"""Attacks on bearer JWTs, each refused with the right status, code and RFC 6750 challenge."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from .helpers import config
from .jwt_keys import (
    ATTACKER,
    EC_P256,
    ED25519,
    HS_SECRET,
    RSA_A,
    GuardedApp,
    JWKSEndpoint,
    b64url,
    challenge_error,
    claims,
    error_code,
    jwt_config_text,
    sign_raw,
)


@pytest.fixture(scope="module")
def idp() -> Iterator[str]:
    with JWKSEndpoint(RSA_A, EC_P256, ED25519).running() as url:
        yield url


@pytest.fixture(scope="module")
def app(idp: str) -> GuardedApp:
    return GuardedApp(config(jwt_config_text(idp, extra='max_token_bytes = "4KiB"')))


@pytest.fixture(scope="module")
def attacker_idp() -> Iterator[tuple[JWKSEndpoint, str]]:
    endpoint = JWKSEndpoint(ATTACKER)
    with endpoint.running() as url:
        yield endpoint, url


def assert_refused(response: httpx.Response, code: str, status: int = 401) -> None:
    assert response.status_code == status, response.text
    assert error_code(response) == code
    assert challenge_error(response) == "invalid_token"


def hmac_token(secret: bytes, header: dict[str, object], payload: dict[str, object]) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


RSA_PUBLIC_PEM = RSA_A.private.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_alg_none_is_refused(app: GuardedApp) -> None:
    token = jwt.encode(claims(), None, algorithm="none", headers={"kid": "rsa-a"})
    assert_refused(app.call(token), "algorithm_not_allowed")


@pytest.mark.parametrize("alg", ["None", "NONE", "nOnE"])
def test_alg_none_in_other_cases_is_refused(app: GuardedApp, alg: str) -> None:
    token = f"{b64url(json.dumps({'alg': alg, 'kid': 'rsa-a'}).encode())}.{b64url(json.dumps(claims()).encode())}."
    assert_refused(app.call(token), "algorithm_not_allowed")


def test_hs256_signed_with_the_rsa_public_key_is_refused_when_hs256_is_allowed(idp: str) -> None:
    text = jwt_config_text(idp, algorithms='["RS256", "HS256"]', extra=f'secret = "{HS_SECRET}"')
    token = hmac_token(RSA_PUBLIC_PEM, {"alg": "HS256", "kid": "rsa-a", "typ": "JWT"}, claims())
    assert_refused(GuardedApp(config(text)).call(token), "invalid_signature")


def test_hs256_naming_the_rsa_kid_is_a_key_mismatch_without_a_secret(idp: str) -> None:
    text = jwt_config_text(idp, algorithms='["RS256", "HS256"]')
    token = hmac_token(RSA_PUBLIC_PEM, {"alg": "HS256", "kid": "rsa-a"}, claims())
    assert_refused(GuardedApp(config(text)).call(token), "key_algorithm_mismatch")


def test_hs256_signed_with_the_rsa_public_key_is_refused_when_only_rs256_is_allowed(app: GuardedApp) -> None:
    token = hmac_token(RSA_PUBLIC_PEM, {"alg": "HS256", "kid": "rsa-a"}, claims())
    assert_refused(app.call(token), "algorithm_not_allowed")


def test_eddsa_key_claimed_as_es256_is_refused(app: GuardedApp) -> None:
    token = EC_P256.sign(claims(), kid="ed-1")
    assert_refused(app.call(token), "key_algorithm_mismatch")


def test_expired_token_is_refused(app: GuardedApp) -> None:
    now = int(time.time())
    assert_refused(app.call(RSA_A.sign(claims(iat=now - 3900, exp=now - 3600))), "token_expired")


def test_future_nbf_is_refused(app: GuardedApp) -> None:
    assert_refused(app.call(RSA_A.sign(claims(nbf=int(time.time()) + 3600))), "token_not_yet_valid")


def test_future_iat_is_refused(app: GuardedApp) -> None:
    now = int(time.time())
    assert_refused(app.call(RSA_A.sign(claims(iat=now + 3600, exp=now + 3700))), "token_not_yet_valid")


def test_wrong_audience_is_refused(app: GuardedApp) -> None:
    assert_refused(app.call(RSA_A.sign(claims(aud="another-api"))), "invalid_audience")


def test_wrong_issuer_is_refused(app: GuardedApp) -> None:
    assert_refused(app.call(RSA_A.sign(claims(iss="https://evil.test"))), "invalid_issuer")


def test_token_without_exp_is_refused(app: GuardedApp) -> None:
    response = app.call(RSA_A.sign(claims(exp=None)))
    assert_refused(response, "missing_claim")
    assert "exp" in response.json()["error"]["message"]


def test_token_without_sub_is_refused(app: GuardedApp) -> None:
    assert_refused(app.call(RSA_A.sign(claims(sub=None))), "missing_claim")


def test_exp_as_a_string_is_refused(app: GuardedApp) -> None:
    assert_refused(app.call(RSA_A.sign(claims(exp="9999999999"))), "invalid_claim")


def test_confirmation_claim_that_is_not_an_object_is_refused(app: GuardedApp) -> None:
    assert_refused(app.call(RSA_A.sign(claims(cnf="unbound"))), "invalid_claim")


def test_lifetime_over_max_ttl_is_refused(app: GuardedApp) -> None:
    now = int(time.time())
    assert_refused(app.call(RSA_A.sign(claims(iat=now, exp=now + 86400))), "token_ttl_too_long")


def test_kid_with_path_traversal_is_an_unknown_key(app: GuardedApp) -> None:
    token = RSA_A.sign(claims(), kid="../../../../../../etc/passwd")
    assert_refused(app.call(token), "unknown_key")


def test_kid_with_sql_injection_is_an_unknown_key(app: GuardedApp) -> None:
    token = RSA_A.sign(claims(), kid="' OR '1'='1'; DROP TABLE keys; --")
    assert_refused(app.call(token), "unknown_key")


def test_kid_of_huge_length_is_an_unknown_key(app: GuardedApp) -> None:
    token = RSA_A.sign(claims(), kid="k" * 1500)
    assert_refused(app.call(token), "unknown_key")


def test_kid_that_is_not_a_string_is_refused(app: GuardedApp) -> None:
    token = sign_raw(RSA_A, '{"alg": "RS256", "kid": {"$ne": null}}', json.dumps(claims()))
    assert_refused(app.call(token), "malformed_token")


def test_jku_header_injection_is_ignored(app: GuardedApp, attacker_idp: tuple[JWKSEndpoint, str]) -> None:
    endpoint, url = attacker_idp
    before = endpoint.hits
    token = ATTACKER.sign(claims(sub="admin"), jku=url)
    assert_refused(app.call(token), "invalid_signature")
    assert endpoint.hits == before


def test_x5u_header_injection_is_ignored(app: GuardedApp, attacker_idp: tuple[JWKSEndpoint, str]) -> None:
    endpoint, url = attacker_idp
    before = endpoint.hits
    token = ATTACKER.sign(claims(sub="admin"), x5u=url)
    assert_refused(app.call(token), "invalid_signature")
    assert endpoint.hits == before


def test_jwk_header_injection_is_ignored(app: GuardedApp) -> None:
    token = ATTACKER.sign(claims(sub="admin"), jwk=ATTACKER.public_jwk())
    assert_refused(app.call(token), "invalid_signature")


def test_jwk_header_injection_with_a_new_kid_is_an_unknown_key(app: GuardedApp) -> None:
    embedded = {**ATTACKER.public_jwk(), "kid": "attacker"}
    token = ATTACKER.sign(claims(sub="admin"), kid="attacker", jwk=embedded)
    assert_refused(app.call(token), "unknown_key")


def test_stripped_signature_is_refused(app: GuardedApp) -> None:
    token = RSA_A.sign(claims()).rsplit(".", 1)[0] + "."
    assert_refused(app.call(token), "invalid_signature")


def test_tampered_payload_is_refused(app: GuardedApp) -> None:
    header, _, signature = RSA_A.sign(claims()).split(".")
    forged = b64url(json.dumps(claims(sub="admin", roles=["admin"])).encode())
    assert_refused(app.call(f"{header}.{forged}.{signature}"), "invalid_signature")


def test_critical_header_extension_is_refused(app: GuardedApp) -> None:
    token = RSA_A.sign(claims(), crit=["exp"], exp=0)
    assert_refused(app.call(token), "unsupported_critical_header")


def test_oversized_token_is_refused(app: GuardedApp) -> None:
    token = RSA_A.sign(claims(padding="x" * 5000))
    assert_refused(app.call(token), "token_too_large")


@pytest.mark.parametrize("token", [
    "eyJhbGciOiJSUzI1NiJ9.@@@@.c2ln",
    "abcde.abcde.abc",
    base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("=") + ".eyJ9.c2ln",
    "bm90IGpzb24.bm90IGpzb24.c2ln",
    "W10.W10.c2ln",
], ids=["bad-alphabet", "bad-length", "not-utf8", "not-json", "json-arrays"])
def test_bad_base64_or_garbage_is_refused(app: GuardedApp, token: str) -> None:
    assert_refused(app.call(token), "malformed_token")


def test_duplicate_json_keys_in_payload_are_refused(app: GuardedApp) -> None:
    body = json.dumps(claims(sub="alice"))[:-1] + ', "sub": "admin"}'
    token = sign_raw(RSA_A, '{"alg": "RS256", "kid": "rsa-a"}', body)
    assert_refused(app.call(token), "duplicate_json_key")


def test_duplicate_json_keys_in_header_are_refused(app: GuardedApp) -> None:
    token = sign_raw(RSA_A, '{"alg": "none", "alg": "RS256", "kid": "rsa-a"}', json.dumps(claims()))
    assert_refused(app.call(token), "duplicate_json_key")


def test_token_in_query_string_is_ignored(app: GuardedApp) -> None:
    token = RSA_A.sign(claims())
    response = app.client.get(f"/me?access_token={token}")
    assert response.status_code == 401
    assert error_code(response) == "unauthenticated"
    assert challenge_error(response) is None


def test_token_in_form_body_is_ignored(app: GuardedApp) -> None:
    response = app.client.post("/me", data={"access_token": RSA_A.sign(claims())})
    assert response.status_code == 401
    assert error_code(response) == "unauthenticated"


def test_denial_messages_never_contain_the_token(app: GuardedApp) -> None:
    now = int(time.time())
    tokens = [
        RSA_A.sign(claims(exp=now - 3600, iat=now - 3700)),
        ATTACKER.sign(claims()),
        RSA_A.sign(claims(padding="y" * 5000)),
        RSA_A.sign(claims(), kid="unknown-kid-value"),
        "garbage-token-value-<script>",
        "abcde.abcde.abc",
    ]
    for token in tokens:
        response = app.call(token)
        assert response.status_code == 401
        shown = response.text + "".join(response.headers.values())
        for part in {token, *token.split(".")} - {""}:
            if len(part) >= 8:
                assert part not in shown
