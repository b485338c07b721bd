"""examples/nginx/nginx.conf: accepted by nginx, and in front of a real dsguard it keeps its promises.

Needs the `nginx` binary (apt-get install -y --no-install-recommends nginx); skipped without it,
except the checks that only read the file.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from dsguard import GuardMiddleware
from dsguard.units import NetworkSet, parse_networks

from .conftest import free_port, run_uvicorn
from .helpers import config, whoami

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = (ROOT / "examples" / "nginx" / "nginx.conf").read_text()
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx not installed (apt-get install -y nginx)")
SPOOFED = "203.0.113.66"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    paths = (directory / "server.pem", directory / "server-key.pem", directory / "ca.pem")
    issued.cert_chain_pems[0].write_to_path(str(paths[0]))
    issued.private_key_pem.write_to_path(str(paths[1]))
    ca.cert_pem.write_to_path(str(paths[2]))
    return paths


def with_certificates(text: str, certificates: tuple[Path, Path, Path]) -> str:
    return (text.replace("/etc/nginx/tls/server.pem", str(certificates[0]))
            .replace("/etc/nginx/tls/server-key.pem", str(certificates[1])))


def location(name: str) -> str:
    match = re.search(r"location " + re.escape(name) + r" \{(.*?)\n        \}", EXAMPLE, re.S)
    assert match is not None
    return match.group(1)


def test_only_tls_1_3_is_offered() -> None:
    assert re.findall(r"^\s*ssl_protocols (.*);", EXAMPLE, re.M) == ["TLSv1.3"]


def test_every_proxied_call_is_rate_limited_per_client() -> None:
    zone = re.search(r"limit_req_zone \$binary_remote_addr zone=(\w+):", EXAMPLE)
    assert zone is not None
    assert f"limit_req zone={zone.group(1)} " in location("/")


def test_forwarding_headers_are_written_by_the_proxy_and_streams_are_unbuffered() -> None:
    proxied = location("/")
    for header in ("Forwarded", "X-Forwarded-For", "X-Forwarded-Proto"):
        assert re.search(rf"proxy_set_header {header} ", proxied)
    assert "$proxy_add_x_forwarded_for" not in EXAMPLE
    assert "proxy_buffering off;" in proxied


def test_the_upstream_is_a_proxy_the_example_configuration_trusts() -> None:
    upstream = re.search(r"upstream dsguard \{\s*server ([\d.]+):(\d+);", EXAMPLE)
    assert upstream is not None
    settings = tomllib.loads((ROOT / "examples" / "dsguard.toml").read_text())
    assert upstream.group(1) in NetworkSet(parse_networks(settings["server"]["trusted_proxies"]))


@needs_nginx
def test_nginx_accepts_the_example(certificates: tuple[Path, Path, Path], tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(with_certificates(EXAMPLE, certificates))
    result = subprocess.run([str(NGINX), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


async def events(request: Request) -> StreamingResponse:
    release: threading.Event = request.app.state.release

    async def stream() -> AsyncIterator[bytes]:
        yield b"data: one\n\n"
        released = await asyncio.to_thread(release.wait, 10)
        yield b"data: two\n\n" if released else b"data: buffered\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


GUARD = """
[server]
trusted_proxies = ["127.0.0.1/32"]
[transport]
require_https = true
[telemetry]
"""


def live_configuration(text: str, tmp_path: Path, *, https_port: int, http_port: int, upstream: int) -> str:
    """The example on loopback ports, with its temporary files under ``tmp_path``."""
    temp = "".join(f"    {kind}_temp_path {tmp_path / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                             "scgi"))
    text = text.replace("http {\n", "http {\n" + temp, 1)
    text = text.replace("listen 80;", f"listen 127.0.0.1:{http_port};").replace("listen [::]:80;", "")
    text = re.sub(r"listen 443 ssl( http2)?;", f"listen 127.0.0.1:{https_port} ssl\\1;", text)
    text = re.sub(r"listen \[::\]:443[^;]*;", "", text)
    return text.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream};")


def wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                errors = log.read_text() if log.exists() else ""
                raise RuntimeError(f"nginx did not start: {errors}") from None
            time.sleep(0.05)


class Proxied:
    def __init__(self, url: str, tls: ssl.SSLContext, release: threading.Event) -> None:
        self.url = url
        self.tls = tls
        self.release = release

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", verify=self.tls, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def proxied(certificates: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    if NGINX is None:
        pytest.skip("nginx not installed (apt-get install -y nginx)")
    tmp_path = tmp_path_factory.mktemp("nginx")
    app = Starlette(routes=[Route("/whoami", whoami), Route("/events", events)])
    app.state.release = threading.Event()
    with run_uvicorn(GuardMiddleware(app, config=config(GUARD))) as upstream_url:
        https_port = free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(live_configuration(with_certificates(EXAMPLE, certificates), tmp_path, https_port=https_port,
                                           http_port=free_port(), upstream=int(upstream_url.rsplit(":", 1)[1])))
        process = subprocess.Popen(
            [str(NGINX), "-c", str(conf), "-p", str(tmp_path),
             "-g", f"daemon off; pid {tmp_path / 'nginx.pid'}; error_log {tmp_path / 'error.log'};"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(https_port, process, tmp_path / "error.log")
            tls = ssl.create_default_context(cafile=str(certificates[2]))
            yield Proxied(f"https://127.0.0.1:{https_port}", tls, app.state.release)
        finally:
            process.terminate()
            process.wait(timeout=10)


@needs_nginx
def test_a_clients_own_forwarding_headers_never_reach_dsguard(proxied: Proxied) -> None:
    response = proxied.get("/whoami", headers={"x-forwarded-for": SPOOFED, "x-real-ip": SPOOFED,
                                              "forwarded": f"for={SPOOFED};proto=https"})
    assert response.status_code == 200, response.text
    assert response.json()["client_ip"] == "127.0.0.1"
    assert response.json()["scheme"] == "https"


@needs_nginx
def test_streamed_events_reach_the_client_as_they_are_written(proxied: Proxied) -> None:
    with httpx.stream("GET", f"{proxied.url}/events", verify=proxied.tls, timeout=20) as response:
        chunks = response.iter_raw()
        first = next(chunks)
        proxied.release.set()
        rest = b"".join(chunks)
    assert first == b"data: one\n\n"
    assert rest == b"data: two\n\n"


@needs_nginx
def test_a_tls_1_2_client_is_refused(proxied: Proxied) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{proxied.url}/whoami", verify=old)


@needs_nginx
def test_the_scrape_endpoint_is_not_reachable_through_the_proxy(proxied: Proxied) -> None:
    assert proxied.get("/metrics").status_code == 404
    assert proxied.get("/healthz").json() == {"status": "ok"}
