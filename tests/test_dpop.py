"""RFC 9449 DPoP: a DPoP-bound access token is accepted only with a fresh proof, signed by the key
the token is bound to and made for this very request; each way a proof can fail has its code."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from dsguard import GuardMiddleware
from dsguard.checks import sender
from dsguard.config import Config, DPoPConfig, parse_config
from dsguard.services import Services
from dsguard.storage.memory import MemoryStorage
from dsguard.tokens.dpop import DPoPError, DPoPVerifier, access_token_hash, normalize_uri
from dsguard.tokens.keys import jwk_thumbprint

from .conftest import run_uvicorn
from .helpers import InProcess
from .test_mtls_identity import identity_app

ISSUER_KID = "issuer-2025"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """An authorization server's signing key, published to the guard as a JWKS file."""

    def __init__(self, directory: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        public = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        self.jwks_file = directory / "jwks.json"
        self.jwks_file.write_text(json.dumps({"keys": [{**public, "kid": ISSUER_KID, "alg": "ES256", "use": "sig"}]}))

    def token(self, cnf: dict[str, str] | None = None, subject: str = "alice") -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"sub": subject, "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex}
        if cnf is not None:
            claims["cnf"] = cnf
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": ISSUER_KID})


class ProofKey:
    """A client's DPoP key pair, making proofs as RFC 9449 section 4.2 describes."""

    def __init__(self, alg: str = "ES256") -> None:
        self.alg = alg
        self.private: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
        members: tuple[str, ...]
        if alg == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.public_jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
            self.private_jwk = ECAlgorithm.to_jwk(self.private, as_dict=True)
            members = ("crv", "kty", "x", "y")
        else:
            self.private = ed25519.Ed25519PrivateKey.generate()
            self.public_jwk = OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
            self.private_jwk = OKPAlgorithm.to_jwk(self.private, as_dict=True)
            members = ("crv", "kty", "x")
        canonical = json.dumps({m: self.public_jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
        self.jkt = b64url(hashlib.sha256(canonical.encode()).digest())

    def proof(self, htu: str, *, htm: str = "GET", token: str | None = None, iat: float | None = None,
              jti: str | None = None, header: dict[str, Any] | None = None, without: tuple[str, ...] = (),
              **claims: Any) -> str:
        payload = {"jti": jti or uuid.uuid4().hex, "htm": htm, "htu": htu,
                   "iat": int(time.time()) if iat is None else iat, **claims}
        if token is not None:
            payload["ath"] = b64url(hashlib.sha256(token.encode()).digest())
        for name in without:
            payload.pop(name)
        headers = {"typ": "dpop+jwt", "jwk": self.public_jwk, **(header or {})}
        return jwt.encode(payload, self.private, algorithm=self.alg, headers=headers)


def dpop_config(issuer: Issuer, sender_constraint: str = "optional") -> Config:
    return parse_config(f"""
[transport]
require_https = false
[identity.jwt]
algorithms = ["ES256", "EdDSA"]
jwks_file = "{issuer.jwks_file}"
sender_constraint = "{sender_constraint}"
[identity.dpop]
max_age = "60s"
""", file="dsguard.toml")


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(tmp_path_factory.mktemp("idp"))


@pytest.fixture(scope="module")
def server(issuer: Issuer) -> Iterator[str]:
    with run_uvicorn(GuardMiddleware(identity_app(), config=dpop_config(issuer))) as url:
        yield url


@pytest.fixture
def key() -> ProofKey:
    return ProofKey()


def call(url: str, token: str, proof: str | list[str] | None, scheme: str = "DPoP",
         method: str = "GET") -> httpx.Response:
    headers = [("Authorization", f"{scheme} {token}")]
    proofs = [proof] if isinstance(proof, str) else proof or []
    headers += [("DPoP", p) for p in proofs]
    return httpx.request(method, url + "/who", headers=headers)


def refused(response: httpx.Response, code: str, error: str = "invalid_dpop_proof") -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == code
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("DPoP ")
    assert f'error="{error}"' in challenge


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_valid_proof_from_the_bound_key_passes(server: str, issuer: Issuer, alg: str) -> None:
    key = ProofKey(alg)
    token = issuer.token(cnf={"jkt": key.jkt})
    response = call(server, token, key.proof(server + "/who", token=token))
    assert response.status_code == 200, response.text
    assert response.json()["subject"] == "alice"


def test_each_call_needs_a_proof_of_its_own_method(server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    response = call(server, token, key.proof(server + "/who", htm="POST", token=token), method="POST")
    assert response.status_code == 200, response.text


def test_replayed_proof_is_refused(server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    proof = key.proof(server + "/who", token=token)
    assert call(server, token, proof).status_code == 200
    refused(call(server, token, proof), "dpop_replay")


def test_proof_reusing_a_jti_is_refused(server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    assert call(server, token, key.proof(server + "/who", token=token, jti="once")).status_code == 200
    refused(call(server, token, key.proof(server + "/who", token=token, jti="once", iat=time.time() - 1)),
            "dpop_replay")


def test_proof_for_another_method_is_refused(server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    refused(call(server, token, key.proof(server + "/who", htm="POST", token=token)), "dpop_method_mismatch")


@pytest.mark.parametrize("path", ["/other", "/who/", "/WHO"])
def test_proof_for_another_path_is_refused(server: str, issuer: Issuer, key: ProofKey, path: str) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    refused(call(server, token, key.proof(server + path, token=token)), "dpop_uri_mismatch")


def test_proof_for_another_server_is_refused(server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    refused(call(server, token, key.proof("https://api.example.com/who", token=token)), "dpop_uri_mismatch")


def test_proof_over_another_scheme_is_refused(server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    refused(call(server, token, key.proof(server.replace("http:", "https:") + "/who", token=token)),
            "dpop_uri_mismatch")


def test_htu_is_compared_after_normalisation(server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    htu = server.replace("http://", "HTTP://") + "/./%77ho?page=2#top"
    assert call(server, token, key.proof(htu, token=token)).status_code == 200


def test_stale_proof_is_refused(server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    refused(call(server, token, key.proof(server + "/who", token=token, iat=time.time() - 120)), "dpop_proof_expired")


def test_proof_issued_in_the_future_is_refused(server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    refused(call(server, token, key.proof(server + "/who", token=token, iat=time.time() + 60)),
            "dpop_proof_not_yet_valid")


def test_proof_for_another_access_token_is_refused(server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    other = issuer.token(cnf={"jkt": key.jkt})
    refused(call(server, token, key.proof(server + "/who", token=other)), "dpop_ath_mismatch")


def test_proof_without_ath_is_refused(server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    refused(call(server, token, key.proof(server + "/who")), "dpop_ath_mismatch")


def test_stolen_token_with_the_thiefs_own_proof_key_is_refused(server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    thief = ProofKey()
    refused(call(server, token, thief.proof(server + "/who", token=token)), "dpop_key_mismatch")


def test_proof_claiming_the_bound_public_key_but_signed_by_another_is_refused(
        server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    thief = ProofKey()
    forged = thief.proof(server + "/who", token=token, header={"jwk": key.public_jwk})
    refused(call(server, token, forged), "dpop_bad_signature")


def test_private_key_in_the_jwk_header_is_refused(server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    refused(call(server, token, key.proof(server + "/who", token=token, header={"jwk": key.private_jwk})),
            "dpop_private_key")


def test_proof_without_a_jwk_is_refused(server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    refused(call(server, token, key.proof(server + "/who", token=token, header={"jwk": None})), "dpop_key_invalid")


def test_jwk_of_another_key_type_than_the_algorithm_is_refused(server: str, issuer: Issuer) -> None:
    key = ProofKey("EdDSA")
    token = issuer.token(cnf={"jkt": key.jkt})
    ec_key = ProofKey("ES256")
    refused(call(server, token, key.proof(server + "/who", token=token, header={"jwk": ec_key.public_jwk})),
            "dpop_key_invalid")


@pytest.mark.parametrize("typ", ["JWT", "at+jwt", None])
def test_proof_of_another_type_is_refused(server: str, issuer: Issuer, key: ProofKey, typ: str | None) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    refused(call(server, token, key.proof(server + "/who", token=token, header={"typ": typ})), "dpop_proof_type")


def test_unsigned_proof_alg_none_is_refused(server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    header = {"typ": "dpop+jwt", "alg": "none", "jwk": key.public_jwk}
    payload = {"jti": uuid.uuid4().hex, "htm": "GET", "htu": server + "/who", "iat": int(time.time()),
               "ath": access_token_hash(token)}
    unsigned = ".".join(b64url(json.dumps(part).encode()) for part in (header, payload)) + "."
    refused(call(server, token, unsigned), "dpop_algorithm")


def test_proof_with_a_symmetric_key_is_refused(server: str, issuer: Issuer) -> None:
    secret = b"a shared secret is no proof of possession"
    jwk = {"kty": "oct", "k": b64url(secret)}
    token = issuer.token(cnf={"jkt": b64url(hashlib.sha256(b"unused").digest())})
    proof = jwt.encode({"jti": "x", "htm": "GET", "htu": server + "/who", "iat": int(time.time()),
                        "ath": access_token_hash(token)}, secret, algorithm="HS256",
                       headers={"typ": "dpop+jwt", "jwk": jwk})
    refused(call(server, token, proof), "dpop_algorithm")


@pytest.mark.parametrize("claim", ["jti", "htm", "htu", "iat"])
def test_proof_missing_a_required_claim_is_refused(server: str, issuer: Issuer, key: ProofKey, claim: str) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    refused(call(server, token, key.proof(server + "/who", token=token, without=(claim,))), "dpop_proof_malformed")


@pytest.mark.parametrize("garbage", ["not-a-jws", "a.b.c", "a" * 5000], ids=["not-a-jws", "bad-base64", "oversized"])
def test_malformed_proof_is_refused(server: str, issuer: Issuer, key: ProofKey, garbage: str) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    refused(call(server, token, garbage), "dpop_proof_malformed")


def test_proof_whose_claims_are_not_json_is_refused(server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    proof = jwt.PyJWS().encode(b"not json", key.private, algorithm="ES256",
                               headers={"typ": "dpop+jwt", "jwk": key.public_jwk})
    refused(call(server, token, proof), "dpop_proof_malformed")


def test_dpop_bound_token_downgraded_to_bearer_is_refused(server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    response = call(server, token, key.proof(server + "/who", token=token), scheme="Bearer")
    refused(response, "dpop_required", error="invalid_token")
    assert response.headers["www-authenticate"].endswith('algs="EdDSA ES256 RS256 PS256"')


def test_dpop_bound_token_without_a_proof_is_refused(server: str, issuer: Issuer, key: ProofKey) -> None:
    refused(call(server, issuer.token(cnf={"jkt": key.jkt}), None), "dpop_proof_missing")


def test_two_proofs_are_refused(server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    proofs = [key.proof(server + "/who", token=token), key.proof(server + "/who", token=token)]
    refused(call(server, token, proofs), "dpop_proof_multiple")


def test_unbound_token_sent_with_the_dpop_scheme_is_refused(server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token()
    refused(call(server, token, key.proof(server + "/who", token=token)), "dpop_unbound_token", error="invalid_token")


def test_unbound_bearer_token_passes_when_binding_is_optional(server: str, issuer: Issuer) -> None:
    assert call(server, issuer.token(), None, scheme="Bearer").status_code == 200


def test_invalid_proof_challenge_follows_rfc9449(server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    response = call(server, token, key.proof(server + "/who", htm="PUT", token=token))
    assert response.headers["www-authenticate"] == (
        'DPoP realm="dsguard", error="invalid_dpop_proof", '
        'error_description="the DPoP proof was made for another HTTP method (htm)", algs="EdDSA ES256 RS256 PS256"')


def test_denials_never_echo_the_token_or_the_proof(server: str, issuer: Issuer, key: ProofKey) -> None:
    token = issuer.token(cnf={"jkt": key.jkt})
    proof = ProofKey().proof(server + "/who", token=token)
    response = call(server, token, proof)
    for secret in (token, proof, *token.split("."), *proof.split(".")):
        assert secret not in response.text
        assert secret not in response.headers["www-authenticate"]


def test_unavailable_replay_store_refuses_with_503(issuer: Issuer, key: ProofKey) -> None:
    config = dpop_config(issuer)
    storage = MemoryStorage(max_keys=1)
    asyncio.run(storage.add("occupied", ttl=600))
    checks = sender.build(config, Services(config, storage))
    guard_config = dpop_config(issuer, sender_constraint="off")
    http = InProcess(GuardMiddleware(identity_app(), config=guard_config, checks=checks))
    token = issuer.token(cnf={"jkt": key.jkt})
    response = http.get("/who", headers={"Authorization": f"DPoP {token}",
                                         "DPoP": key.proof("http://testserver/who", token=token)})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "storage_unavailable"
    assert "retry-after" in response.headers


def test_sender_constraint_required_refuses_unbound_tokens(issuer: Issuer) -> None:
    http = InProcess(GuardMiddleware(identity_app(), config=dpop_config(issuer, sender_constraint="required")))
    response = http.get("/who", headers={"Authorization": f"Bearer {issuer.token()}"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "sender_constraint_required"
    assert response.headers["www-authenticate"].startswith('Bearer realm="dsguard", error="invalid_token"')


def test_sender_constraint_required_admits_a_dpop_bound_token(issuer: Issuer, key: ProofKey) -> None:
    http = InProcess(GuardMiddleware(identity_app(), config=dpop_config(issuer, sender_constraint="required")))
    token = issuer.token(cnf={"jkt": key.jkt})
    response = http.get("/who", headers={"Authorization": f"DPoP {token}",
                                         "DPoP": key.proof("http://testserver/who", token=token)})
    assert response.status_code == 200


# RFC 9449 figure 13 (section 7.1), its access token and the thumbprint of its key (section 6.1).
RFC_PROOF = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJo"
    "RjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJq"
    "dGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0ZWRyZXNv"
    "dXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9.2oW9RP35yRq"
    "zhrtNP86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA")
RFC_TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
RFC_JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"


def test_the_rfc9449_example_proof_verifies() -> None:
    verifier = DPoPVerifier(DPoPConfig(), clock=lambda: 1562262618.0)
    proof = verifier.verify(RFC_PROOF, method="GET", uri="https://resource.example.org/protectedresource",
                            access_token=RFC_TOKEN)
    assert (proof.jkt, proof.jti) == (RFC_JKT, "e1j3V_bKic8-LAEB")


def test_the_rfc9449_example_proof_with_a_tampered_signature_fails() -> None:
    verifier = DPoPVerifier(DPoPConfig(), clock=lambda: 1562262618.0)
    with pytest.raises(DPoPError) as error:
        verifier.verify(RFC_PROOF[:-2] + "AA", method="GET", uri="https://resource.example.org/protectedresource",
                        access_token=RFC_TOKEN)
    assert error.value.code == "dpop_bad_signature"


def test_ath_and_jwk_thumbprint_match_the_rfc_examples() -> None:
    assert access_token_hash(RFC_TOKEN) == "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    rfc7638_key = {
        "kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjB"
             "ZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8"
             "KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_x"
             "BniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}
    assert jwk_thumbprint(rfc7638_key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize(("claimed", "actual"), [
    ("HTTPS://API.Example.COM:443/v1/chat", "https://api.example.com/v1/chat"),
    ("http://api.example.com:80/v1/chat", "http://api.example.com/v1/chat"),
    ("https://api.example.com/v1/%63hat", "https://api.example.com/v1/chat"),
    ("https://api.example.com/v1/a%2fb", "https://api.example.com/v1/a%2Fb"),
    ("https://api.example.com/v1/x/../chat", "https://api.example.com/v1/chat"),
    ("https://api.example.com", "https://api.example.com/"),
    ("https://[2001:DB8::1]:443/v1", "https://[2001:db8::1]/v1"),
])
def test_equivalent_uris_normalise_alike(claimed: str, actual: str) -> None:
    assert normalize_uri(claimed) == normalize_uri(actual) is not None


@pytest.mark.parametrize(("claimed", "actual"), [
    ("https://api.example.com/v1/chat", "http://api.example.com/v1/chat"),
    ("https://api.example.com:8443/v1/chat", "https://api.example.com/v1/chat"),
    ("https://api.example.com/v1/Chat", "https://api.example.com/v1/chat"),
    ("https://api.example.com/v1/a%2Fb", "https://api.example.com/v1/a/b"),
    ("https://user@api.example.com/v1/chat", "https://api.example.com/v1/chat"),
    ("ftp://api.example.com/v1/chat", "ftp://api.example.com/v1/chat"),
])
def test_different_uris_do_not_match(claimed: str, actual: str) -> None:
    assert normalize_uri(claimed) != normalize_uri(actual) or normalize_uri(claimed) is None
