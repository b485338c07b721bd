"""The `dsguard` command: config check, and serve with the embedded default, TLS 1.3 and mTLS."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import trustme
from click.testing import CliRunner

from dsguard import config as dsguard_config
from dsguard.cli import main

from .conftest import free_port

SAMPLE = Path(__file__).parent / "data" / "design_sample.toml"
DSGUARD = [sys.executable, "-m", "dsguard.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DSGUARD, *args], capture_output=True, text=True, timeout=60)


def test_config_check_accepts_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "dsguard.toml"
    path.write_text('[server]\ntrusted_proxies = ["10.0.0.0/8"]\n')
    result = run("config", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: ok"


def test_config_check_names_key_and_line_of_an_error(tmp_path: Path) -> None:
    path = tmp_path / "dsguard.toml"
    path.write_text('mode = "enforce"\n\n[hygiene]\nmax_body = -3\n')
    result = run("config", "check", str(path))
    assert result.returncode == 1
    assert f"{path}:4: [hygiene] max_body: expected a size" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def waf_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if this version parsed [waf] without providing it (every configured section is available today)."""
    monkeypatch.setitem(dsguard_config.UNAVAILABLE, "waf", ("WAF", True))


@pytest.mark.usefixtures("waf_unavailable")
def test_config_check_reports_an_unavailable_security_feature(tmp_path: Path) -> None:
    path = tmp_path / "dsguard.toml"
    path.write_text('mode = "enforce"\n[waf]\nparanoia = 1\n')
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 1
    assert f"{path}:2: error: [waf] WAF is not available in this version" in result.stderr


@pytest.mark.usefixtures("waf_unavailable")
def test_serve_refuses_a_config_with_an_unavailable_security_feature(tmp_path: Path) -> None:
    path = tmp_path / "dsguard.toml"
    path.write_text("[waf]\nparanoia = 1\n")
    result = CliRunner().invoke(main, ["serve", "--config", str(path), "--port", str(free_port())])
    assert result.exit_code == 1
    assert "[waf]: WAF is configured but not available" in result.stderr
    assert "Traceback" not in result.output


@contextmanager
def serve(*args: str, scheme: str = "http", verify: object = False) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([*DSGUARD, "serve", "--port", str(port), "--log-level", "warning", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError(f"dsguard serve exited: {process.stdout.read()}")  # type: ignore[union-attr]
            try:
                with socket_to(port):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=15)


@contextmanager
def socket_to(port: int) -> Iterator[None]:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1):
        yield


def test_serve_without_config_runs_the_embedded_default_behind_the_guard() -> None:
    with serve() as url:
        models = httpx.get(url + "/v1/models")
        trace = httpx.request("TRACE", url + "/v1/models")
        outside_policy = httpx.get(url + "/admin")
    assert [model["id"] for model in models.json()["data"]] == ["tiny-deepseek"]
    assert trace.status_code == 405 and trace.json()["error"]["code"] == "method_not_allowed"
    assert outside_policy.status_code == 403 and outside_policy.json()["error"]["code"] == "policy_denied"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    server_ca, client_ca, rogue_ca = trustme.CA(), trustme.CA(), trustme.CA()
    files = {
        "server_ca": root / "server-ca.pem", "server": root / "server.pem", "server_key": root / "server-key.pem",
        "client_ca": root / "clients-ca.pem", "client": root / "client.pem", "rogue": root / "rogue.pem",
    }
    server_ca.cert_pem.write_to_path(files["server_ca"])
    leaf = server_ca.issue_cert("127.0.0.1", "localhost")
    leaf.cert_chain_pems[0].write_to_path(files["server"])
    leaf.private_key_pem.write_to_path(files["server_key"])
    client_ca.cert_pem.write_to_path(files["client_ca"])
    client_ca.issue_cert("alice@example.com").private_key_and_cert_chain_pem.write_to_path(files["client"])
    rogue_ca.issue_cert("mallory@example.com").private_key_and_cert_chain_pem.write_to_path(files["rogue"])
    return files


def tls_config(tmp_path: Path, pki: dict[str, Path], mtls: bool) -> Path:
    text = f'[server]\ntls_cert = "{pki["server"]}"\ntls_key = "{pki["server_key"]}"\n'
    if mtls:
        text += f'client_ca = "{pki["client_ca"]}"\n'
    path = tmp_path / "dsguard.toml"
    path.write_text(text)
    return path


def client_context(pki: dict[str, Path], *, maximum: ssl.TLSVersion | None = None,
                   cert: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["server_ca"]))
    if maximum is not None:
        context.maximum_version = maximum
    if cert is not None:
        context.load_cert_chain(str(cert))
    return context


def test_serve_with_a_certificate_speaks_tls13(tmp_path: Path, pki: dict[str, Path]) -> None:
    with serve("--config", str(tls_config(tmp_path, pki, mtls=False)), scheme="https") as url:
        response = httpx.post(url + "/v1/echo", json={"x": 1}, verify=client_context(pki))
    assert response.json()["request"]["tls"] == "TLSv1.3"
    assert response.json()["request"]["scheme"] == "https"
    assert response.headers["strict-transport-security"].startswith("max-age=")


def test_serve_refuses_a_tls12_client(tmp_path: Path, pki: dict[str, Path]) -> None:
    with serve("--config", str(tls_config(tmp_path, pki, mtls=False)), scheme="https") as url, \
            pytest.raises(httpx.ConnectError):
        httpx.get(url + "/", verify=client_context(pki, maximum=ssl.TLSVersion.TLSv1_2))


def test_mtls_admits_a_client_certificate_from_the_configured_ca(tmp_path: Path, pki: dict[str, Path]) -> None:
    with serve("--config", str(tls_config(tmp_path, pki, mtls=True)), scheme="https") as url:
        response = httpx.get(url + "/", verify=client_context(pki, cert=pki["client"]))
    assert response.status_code == 200


@pytest.mark.parametrize("cert", [None, "rogue"], ids=["no-certificate", "wrong-ca"])
def test_mtls_refuses_clients_without_a_trusted_certificate(tmp_path: Path, pki: dict[str, Path],
                                                            cert: str | None) -> None:
    context = client_context(pki, cert=pki[cert] if cert else None)
    with serve("--config", str(tls_config(tmp_path, pki, mtls=True)), scheme="https") as url, \
            pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.get(url + "/", verify=context)


def test_serve_names_a_missing_certificate_file(tmp_path: Path) -> None:
    path = tmp_path / "dsguard.toml"
    path.write_text('[server]\ntls_cert = "missing.pem"\ntls_key = "missing-key.pem"\n')
    result = run("serve", "--config", str(path), "--port", str(free_port()))
    assert result.returncode == 1
    assert f"{path}:2: [server] tls_cert: file not found" in result.stderr


def test_config_keys_lists_the_keys_of_every_section() -> None:
    result = run("config", "keys")
    assert result.returncode == 0
    keys = {line.split(" = ")[0] for line in result.stdout.splitlines() if not line.startswith(" ")}
    for key in ("mode", "identity.jwt.issuer", "identity.mtls.required", "rate_limits[].limit", "waf.paranoia",
                "prompt_guard.action", "runner.dtype", "anomaly.action", "e2e.private_key", "telemetry.prometheus",
                "audit.path"):
        assert key in keys, key
