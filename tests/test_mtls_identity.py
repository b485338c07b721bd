"""mTLS identity: the caller named by a client certificate verified in the TLS handshake, or
forwarded by a trusted proxy that terminated TLS (and never by anyone else)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dsguard import GuardMiddleware
from dsguard.checks.base import Check
from dsguard.config import Config, parse_config
from dsguard.guard import Guard
from dsguard.server import build_server

from .conftest import free_port, run_uvicorn
from .helpers import InProcess


@dataclass
class PKI:
    """A server CA and leaf, a client CA with two clients (SAN e-mails), and a rogue client CA."""

    root: Path
    server_ca: trustme.CA
    client_ca: trustme.CA
    files: dict[str, Path]

    def client_context(self, client: str | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.files["server_ca"]))
        if client is not None:
            context.load_cert_chain(str(self.files[client]))
        return context

    def pem(self, client: str) -> str:
        text = self.files[client].read_text()
        start = text.index("-----BEGIN CERTIFICATE-----")
        end = text.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
        return text[start:end] + "\n"

    def thumbprint(self, client: str) -> str:
        der = ssl.PEM_cert_to_DER_cert(self.pem(client))
        return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def make_pki(root: Path) -> PKI:
    server_ca, client_ca = trustme.CA(), trustme.CA()
    files = {name: root / f"{name}.pem" for name in ("server_ca", "server", "server_key", "client_ca",
                                                     "alice", "bob", "rogue")}
    server_ca.cert_pem.write_to_path(files["server_ca"])
    leaf = server_ca.issue_cert("127.0.0.1", "localhost")
    leaf.cert_chain_pems[0].write_to_path(files["server"])
    leaf.private_key_pem.write_to_path(files["server_key"])
    client_ca.cert_pem.write_to_path(files["client_ca"])
    for name in ("alice", "bob"):
        cert = client_ca.issue_cert(f"{name}@example.com", common_name=f"{name.title()} Example")
        cert.private_key_and_cert_chain_pem.write_to_path(files[name])
    trustme.CA().issue_cert("alice@example.com").private_key_and_cert_chain_pem.write_to_path(files["rogue"])
    return PKI(root, server_ca, client_ca, files)


def tls_config(pki: PKI, extra: str) -> Config:
    text = (f'[server]\ntls_cert = "{pki.files["server"]}"\ntls_key = "{pki.files["server_key"]}"\n'
            f'client_ca = "{pki.files["client_ca"]}"\n{extra}')
    return parse_config(text, file="dsguard.toml")


async def who(request: Request) -> JSONResponse:
    ctx = request.state.dsguard
    identity = ctx.identity
    return JSONResponse({
        "subject": identity.subject if identity else None,
        "method": identity.method if identity else None,
        "issuer": identity.issuer if identity else None,
        "claims": dict(identity.claims) if identity else None,
        "identity_thumbprint": identity.certificate_thumbprint if identity else None,
        "thumbprint": ctx.attributes.get("client_cert_thumbprint"),
    })


def identity_app() -> Starlette:
    return Starlette(routes=[Route("/who", who, methods=["GET", "POST"])])


@contextmanager
def serve_tls(config: Config, checks: Iterable[Check] = ()) -> Iterator[str]:
    """The guarded app served as `dsguard serve` serves it: TLS 1.3, client certificates verified."""
    port = free_port()
    app = GuardMiddleware(identity_app(), config=Guard(config, checks=checks))
    server = build_server(app, config, host="127.0.0.1", port=port, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the TLS server did not start")
        time.sleep(0.01)
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def tls_get(pki: PKI, url: str, client: str | None, **kwargs: Any) -> httpx.Response:
    with httpx.Client(verify=pki.client_context(client)) as http:
        return http.get(url, **kwargs)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


PROXIED = """
[transport]
require_https = false
[server]
trusted_proxies = ["10.0.0.0/8"]
[identity.mtls]
forwarded_header = "X-SSL-Client-Cert"
"""


def proxied(extra: str = "", peer: str = "10.0.0.5") -> InProcess:
    return InProcess(GuardMiddleware(identity_app(), config=parse_config(PROXIED + extra)), peer=peer)


def escaped(pem: str) -> str:
    """As nginx ``$ssl_client_escaped_cert`` sends it."""
    return quote(pem, safe="")


def test_san_email_of_the_tls_client_certificate_becomes_the_subject(pki: PKI) -> None:
    with serve_tls(tls_config(pki, "[identity.mtls]\n")) as url:
        response = tls_get(pki, url + "/who", "alice")
    assert response.status_code == 200
    assert response.json()["subject"] == "alice@example.com"
    assert response.json()["method"] == "mtls"


def test_identity_describes_the_certificate_and_its_rfc8705_thumbprint(pki: PKI) -> None:
    with serve_tls(tls_config(pki, "[identity.mtls]\n")) as url:
        body = tls_get(pki, url + "/who", "bob").json()
    cert = x509.load_pem_x509_certificate(pki.pem("bob").encode())
    assert body["claims"]["certificate"] == {
        "subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"), "not_after": cert.not_valid_after_utc.isoformat()}
    assert body["issuer"] == cert.issuer.rfc4514_string()
    assert body["identity_thumbprint"] == body["thumbprint"] == pki.thumbprint("bob")


def test_subject_from_common_name(pki: PKI) -> None:
    with serve_tls(tls_config(pki, '[identity.mtls]\nsubject_from = "cn"\n')) as url:
        response = tls_get(pki, url + "/who", "alice")
    assert response.json()["subject"] == "Alice Example"


def test_a_trusted_proxys_own_certificate_is_not_taken_for_the_caller(pki: PKI) -> None:
    # The proxy connects with a certificate of its own; the caller behind it sent none.
    extra = ('trusted_proxies = ["127.0.0.1/32"]\n[identity.mtls]\nforwarded_header = "X-SSL-Client-Cert"\n'
             "required = true\n")
    with serve_tls(tls_config(pki, extra)) as url:
        response = tls_get(pki, url + "/who", "alice")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "client_certificate_required"


def test_forwarded_certificate_from_a_trusted_proxy_is_honoured(pki: PKI) -> None:
    guard = GuardMiddleware(identity_app(), config=parse_config(PROXIED.replace("10.0.0.0/8", "127.0.0.1/32")))
    with run_uvicorn(guard) as url:
        response = httpx.get(url + "/who", headers={"X-SSL-Client-Cert": escaped(pki.pem("alice"))})
    assert response.status_code == 200
    assert response.json()["subject"] == "alice@example.com"
    assert response.json()["thumbprint"] == pki.thumbprint("alice")


def test_spoofed_certificate_header_from_an_untrusted_peer_is_ignored(pki: PKI) -> None:
    response = proxied("required = true\n", peer="203.0.113.7").get(
        "/who", headers={"X-SSL-Client-Cert": escaped(pki.pem("alice"))})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "client_certificate_required"


def test_spoofed_certificate_header_gives_no_identity_even_when_certificates_are_optional(pki: PKI) -> None:
    response = proxied(peer="203.0.113.7").get("/who", headers={"X-SSL-Client-Cert": escaped(pki.pem("alice"))})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


def test_missing_required_certificate_is_refused_with_a_realm_challenge() -> None:
    response = proxied("required = true\n").get("/who")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "client_certificate_required"
    assert response.headers["www-authenticate"] == 'Bearer realm="dsguard"'


def test_optional_certificate_leaves_the_call_to_the_other_identity_checks() -> None:
    response = proxied("[identity]\nanonymous = true\n").get("/who")
    assert response.status_code == 200
    assert response.json() == {"subject": None, "method": None, "issuer": None, "claims": None,
                               "identity_thumbprint": None, "thumbprint": None}


def test_empty_forwarded_header_means_no_certificate() -> None:
    # nginx sends an empty $ssl_client_escaped_cert when the caller presented none.
    response = proxied("required = true\n").get("/who", headers={"X-SSL-Client-Cert": ""})
    assert response.json()["error"]["code"] == "client_certificate_required"


def test_unreadable_forwarded_certificate_is_a_bad_request(pki: PKI) -> None:
    garbled = pki.pem("alice").replace("M", "!", 3)
    for value in ("not a certificate", escaped(garbled)):
        response = proxied().get("/who", headers={"X-SSL-Client-Cert": value})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "bad_client_certificate"


def test_two_forwarded_certificates_are_a_bad_request(pki: PKI) -> None:
    headers = [("X-SSL-Client-Cert", escaped(pki.pem("alice"))), ("X-SSL-Client-Cert", escaped(pki.pem("bob")))]
    response = proxied().get("/who", headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_client_certificate"


def test_envoy_client_cert_element_is_read(pki: PKI) -> None:
    xfcc = f'By=spiffe://cluster.local/ns/api/sa/guard;Hash=abc;Cert="{escaped(pki.pem("bob"))}";Subject=""'
    response = proxied().get("/who", headers={"X-SSL-Client-Cert": xfcc})
    assert response.json()["subject"] == "bob@example.com"


def test_expired_forwarded_certificate_is_refused(pki: PKI) -> None:
    expired = pki.client_ca.issue_cert("carol@example.com",
                                       not_before=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
                                       not_after=datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC))
    pem = expired.cert_chain_pems[0].bytes().decode()
    response = proxied().get("/who", headers={"X-SSL-Client-Cert": escaped(pem)})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "client_certificate_expired"


def issue_with_names(ca: trustme.CA, names: list[x509.GeneralName]) -> str:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "workload")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(("subject_from", "expected"), [
    ("san_uri", "spiffe://example.org/ns/llm/sa/batch"),
    ("san_dns", "batch.llm.example.org"),
    ("cn", "workload"),
])
def test_subject_comes_from_the_configured_certificate_name(pki: PKI, subject_from: str, expected: str) -> None:
    pem = issue_with_names(pki.client_ca, [x509.DNSName("batch.llm.example.org"),
                                           x509.UniformResourceIdentifier("spiffe://example.org/ns/llm/sa/batch")])
    response = proxied(f'subject_from = "{subject_from}"\n').get("/who", headers={"X-SSL-Client-Cert": escaped(pem)})
    assert response.json()["subject"] == expected


def test_certificate_without_the_configured_name_is_refused_when_required(pki: PKI) -> None:
    response = proxied('subject_from = "san_uri"\nrequired = true\n').get(
        "/who", headers={"X-SSL-Client-Cert": escaped(pki.pem("alice"))})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "client_certificate_unnamed"
