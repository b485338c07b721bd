"""TLS settings of `dsguard serve` beyond the version floor (tests/test_cli.py has TLS 1.2 refused, TLS 1.3 served):
no compression, and where TLS 1.2 is allowed at all, only forward-secret AEAD suites."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from dsguard.config import parse_config
from dsguard.server import ssl_context

from .conftest import run_uvicorn


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, trustme.CA]:
    root = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(root / "server.pem")
    leaf.private_key_pem.write_to_path(root / "server-key.pem")
    return root / "server.pem", root / "server-key.pem", ca


def server_context(certificate: tuple[Path, Path, trustme.CA], min_version: str) -> ssl.SSLContext:
    cert, key, _ = certificate
    config = parse_config(f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\ntls_min_version = "{min_version}"\n')
    context = ssl_context(config)
    assert context is not None
    return context


async def cipher(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@pytest.fixture(scope="module")
def legacy_server(certificate: tuple[Path, Path, trustme.CA]) -> Iterator[str]:
    """A server configured with tls_min_version = "1.2"."""
    context = server_context(certificate, "1.2")
    app = Starlette(routes=[Route("/", cipher)])
    with run_uvicorn(app, ssl_context_factory=lambda _config, _default: context) as url:
        yield url


def client(certificate: tuple[Path, Path, trustme.CA], ciphers: str) -> ssl.SSLContext:
    context = ssl.create_default_context()
    certificate[2].configure_trust(context)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    return context


def test_default_server_context_is_tls13_only_without_compression(
        certificate: tuple[Path, Path, trustme.CA]) -> None:
    context = server_context(certificate, "1.3")
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert context.options & ssl.OP_NO_COMPRESSION


def test_tls12_client_offering_only_cbc_suites_is_refused(legacy_server: str,
                                                          certificate: tuple[Path, Path, trustme.CA]) -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(legacy_server, verify=client(certificate, "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA"))


def test_tls12_client_offering_ecdhe_aead_is_served(legacy_server: str,
                                                    certificate: tuple[Path, Path, trustme.CA]) -> None:
    response = httpx.get(legacy_server, verify=client(certificate, "ECDHE+AESGCM"))
    assert response.text == "ok"
