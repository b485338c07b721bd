"""RFC 8705 certificate-bound access tokens: a token carrying ``cnf.x5t#S256`` is accepted only
on a call made with that client certificate, whichever token check verified it."""

from __future__ import annotations

import pytest

from dsguard import GuardMiddleware
from dsguard.config import Config, parse_config
from dsguard.context import Identity, RequestContext

from .helpers import InProcess
from .test_dpop import Issuer, ProofKey
from .test_mtls_identity import PKI, escaped, identity_app, make_pki, serve_tls, tls_config, tls_get


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(tmp_path_factory.mktemp("idp"))


def jwt_section(issuer: Issuer, sender_constraint: str = "optional") -> str:
    return (f'[identity.jwt]\nalgorithms = ["ES256"]\njwks_file = "{issuer.jwks_file}"\n'
            f'sender_constraint = "{sender_constraint}"\n')


def proxied(issuer: Issuer, extra: str = "") -> Config:
    return parse_config(f"""
[transport]
require_https = false
[server]
trusted_proxies = ["10.0.0.0/8"]
[identity.mtls]
forwarded_header = "X-SSL-Client-Cert"
{jwt_section(issuer)}{extra}""", file="dsguard.toml")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_bound_token_passes_over_a_connection_with_its_certificate(pki: PKI, issuer: Issuer) -> None:
    token = issuer.token(cnf={"x5t#S256": pki.thumbprint("alice")}, subject="batch-service")
    with serve_tls(tls_config(pki, "[identity.mtls]\n" + jwt_section(issuer))) as url:
        response = tls_get(pki, url + "/who", "alice", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert (response.json()["subject"], response.json()["method"]) == ("batch-service", "jwt")


def test_bound_token_presented_with_another_valid_certificate_is_refused(pki: PKI, issuer: Issuer) -> None:
    token = issuer.token(cnf={"x5t#S256": pki.thumbprint("alice")})
    with serve_tls(tls_config(pki, "[identity.mtls]\n" + jwt_section(issuer))) as url:
        response = tls_get(pki, url + "/who", "bob", headers=bearer(token))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "certificate_mismatch"
    assert response.headers["www-authenticate"].startswith('Bearer realm="dsguard", error="invalid_token"')


@pytest.mark.parametrize(("client", "status"), [("alice", 200), ("bob", 401)])
def test_without_the_mtls_check_the_connections_certificate_binds(pki: PKI, issuer: Issuer, client: str,
                                                                  status: int) -> None:
    token = issuer.token(cnf={"x5t#S256": pki.thumbprint("alice")})
    with serve_tls(tls_config(pki, jwt_section(issuer))) as url:
        response = tls_get(pki, url + "/who", client, headers=bearer(token))
    assert response.status_code == status


def test_stolen_bound_token_replayed_without_a_certificate_is_refused(pki: PKI, issuer: Issuer) -> None:
    token = issuer.token(cnf={"x5t#S256": pki.thumbprint("alice")})
    response = InProcess(GuardMiddleware(identity_app(), config=proxied(issuer))).get("/who", headers=bearer(token))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "certificate_mismatch"


def test_certificate_forwarded_by_a_trusted_proxy_binds_the_token(pki: PKI, issuer: Issuer) -> None:
    token = issuer.token(cnf={"x5t#S256": pki.thumbprint("alice")})
    http = InProcess(GuardMiddleware(identity_app(), config=proxied(issuer)), peer="10.0.0.5")
    response = http.get("/who", headers={**bearer(token), "X-SSL-Client-Cert": escaped(pki.pem("alice"))})
    assert response.status_code == 200, response.text


def test_spoofed_certificate_header_from_an_untrusted_peer_does_not_bind(pki: PKI, issuer: Issuer) -> None:
    token = issuer.token(cnf={"x5t#S256": pki.thumbprint("alice")})
    http = InProcess(GuardMiddleware(identity_app(), config=proxied(issuer)), peer="198.51.100.23")
    response = http.get("/who", headers={**bearer(token), "X-SSL-Client-Cert": escaped(pki.pem("alice"))})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "certificate_mismatch"


def test_token_bound_to_a_certificate_and_a_dpop_key_needs_both(pki: PKI, issuer: Issuer) -> None:
    key = ProofKey()
    token = issuer.token(cnf={"x5t#S256": pki.thumbprint("alice"), "jkt": key.jkt})
    http = InProcess(GuardMiddleware(identity_app(), config=proxied(issuer)), peer="10.0.0.5")
    certificate = {"X-SSL-Client-Cert": escaped(pki.pem("alice"))}
    proof = {"DPoP": key.proof("http://testserver/who", token=token)}
    dpop = {"Authorization": f"DPoP {token}"}
    assert http.get("/who", headers={**dpop, **proof}).json()["error"]["code"] == "certificate_mismatch"
    assert http.get("/who", headers={**dpop, **certificate}).json()["error"]["code"] == "dpop_proof_missing"
    assert http.get("/who", headers={**dpop, **certificate, **proof}).status_code == 200


def test_token_bound_by_an_unsupported_confirmation_method_is_refused(issuer: Issuer) -> None:
    token = issuer.token(cnf={"kid": "device-key-7"})
    response = InProcess(GuardMiddleware(identity_app(), config=proxied(issuer))).get("/who", headers=bearer(token))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unsupported_confirmation"


def test_required_binding_admits_a_certificate_bound_token(pki: PKI, issuer: Issuer) -> None:
    token = issuer.token(cnf={"x5t#S256": pki.thumbprint("bob")})
    with serve_tls(tls_config(pki, "[identity.mtls]\n" + jwt_section(issuer, "required"))) as url:
        response = tls_get(pki, url + "/who", "bob", headers=bearer(token))
    assert response.status_code == 200, response.text


def test_required_binding_leaves_calls_without_a_token_to_the_mtls_identity(pki: PKI, issuer: Issuer) -> None:
    with serve_tls(tls_config(pki, "[identity.mtls]\n" + jwt_section(issuer, "required"))) as url:
        response = tls_get(pki, url + "/who", "bob")
    assert response.status_code == 200
    assert response.json()["subject"] == "bob@example.com"


def test_binding_off_accepts_a_bound_token_as_a_bearer_token(pki: PKI, issuer: Issuer) -> None:
    token = issuer.token(cnf={"x5t#S256": pki.thumbprint("alice")})
    config = parse_config(f'[transport]\nrequire_https = false\n{jwt_section(issuer, "off")}', file="dsguard.toml")
    response = InProcess(GuardMiddleware(identity_app(), config=config)).get("/who", headers=bearer(token))
    assert response.status_code == 200


class LegacyTokenCheck:
    """A plugin token check of the identity stage: ``X-Legacy-Token: <subject>`` names a caller
    whose token is bound to the certificate with thumbprint ``X-Legacy-Binding``."""

    name = "legacy-token"
    stage = "identity"

    def check(self, ctx: RequestContext) -> None:
        subject = ctx.headers.get("x-legacy-token")
        if subject:
            ctx.identity = Identity(subject=subject, method="legacy",
                                    confirmation={"x5t#S256": ctx.headers.get("x-legacy-binding", "")})
            ctx.attributes["auth_scheme"] = "Bearer"
            ctx.attributes["access_token"] = subject


@pytest.mark.parametrize(("certificate", "status"), [("alice", 200), ("bob", 401)])
def test_a_token_verified_by_a_plugin_check_is_held_to_its_binding(pki: PKI, issuer: Issuer, certificate: str,
                                                                   status: int) -> None:
    guard = GuardMiddleware(identity_app(), config=proxied(issuer), checks=[LegacyTokenCheck()])
    headers = {"X-Legacy-Token": "reporting-job", "X-Legacy-Binding": pki.thumbprint("alice"),
               "X-SSL-Client-Cert": escaped(pki.pem(certificate))}
    assert InProcess(guard, peer="10.0.0.5").get("/who", headers=headers).status_code == status


def test_thumbprint_in_the_token_is_compared_whole(pki: PKI, issuer: Issuer) -> None:
    truncated = pki.thumbprint("alice")[:-1]
    token = issuer.token(cnf={"x5t#S256": truncated})
    http = InProcess(GuardMiddleware(identity_app(), config=proxied(issuer)), peer="10.0.0.5")
    response = http.get("/who", headers={**bearer(token), "X-SSL-Client-Cert": escaped(pki.pem("alice"))})
    assert response.json()["error"]["code"] == "certificate_mismatch"
