"""`dsguard serve`: uvicorn with TLS 1.3 minimum, optional mTLS, and the ASGI TLS extension; the runner it serves."""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .config import Config, RunnerConfig
from .types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from .runner.engine import Engine

logger = logging.getLogger("dsguard.runner")

_TLS_CODES = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """Server TLS from ``[server]``: None without a certificate; mTLS when ``client_ca`` is set."""
    server = config.server
    if server.tls_cert is None:
        if server.client_ca is not None:
            raise config.error("client_ca needs tls_cert: mTLS runs over HTTPS", "server", "client_ca")
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if server.tls_min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if server.tls_min_version == "1.2":
        context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    for key, path in (("tls_cert", server.tls_cert), ("tls_key", server.tls_key), ("client_ca", server.client_ca)):
        if path is not None and not path.is_file():
            raise config.error(f"file not found: {path}", "server", key)
    try:
        context.load_cert_chain(str(server.tls_cert), str(server.tls_key) if server.tls_key else None)
    except (ssl.SSLError, ValueError) as exc:
        raise config.error(f"cannot load the certificate and key: {exc}", "server", "tls_cert") from None
    if server.client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(server.client_ca))
        except ssl.SSLError as exc:
            raise config.error(f"cannot load the client CA bundle: {exc}", "server", "client_ca") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _TLSScope:
    """Adds the ASGI TLS extension (version, cipher, client certificate) to each scope."""

    def __init__(self, app: ASGIApp, ssl_object: Any) -> None:
        self.app = app
        cert = ssl_object.getpeercert(binary_form=True)
        cipher = ssl_object.cipher()
        self.tls = {
            "tls_version": _TLS_CODES.get(ssl_object.version()),
            "cipher_suite": cipher[0] if cipher else None,
            "client_cert_chain": [ssl.DER_cert_to_PEM_cert(cert)] if cert else [],
            "client_cert_name": None,
            "client_cert_error": None,
            "server_cert": None,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope.setdefault("extensions", {})["tls"] = self.tls
        await self.app(scope, receive, send)


class TLSInfoProtocol(H11Protocol):
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.app = _TLSScope(self.app, ssl_object)


def build_server(app: ASGIApp, config: Config, *, host: str | None = None, port: int | None = None,
                 log_level: str = "info") -> uvicorn.Server:
    context = ssl_context(config)
    options: dict[str, Any] = {
        "host": host or config.server.host,
        "port": config.server.port if port is None else port,
        "log_level": log_level,
        "server_header": False,
        "proxy_headers": False,
        "lifespan": "auto",
    }
    if context is not None:
        options["http"] = TLSInfoProtocol
        options["ssl_context_factory"] = lambda _config, _default: context
    return uvicorn.Server(uvicorn.Config(app, **options))


@contextlib.contextmanager
def embedded_default_path() -> Iterator[Path]:
    """The packaged ``dsguard.toml`` as a file, so that its relative policy paths resolve beside it."""
    with resources.as_file(resources.files("dsguard.defaults").joinpath("dsguard.toml")) as path:
        yield path


class LoadedRunner:
    """The engine of ``[runner]``, loaded, and the OpenAI-compatible app serving it."""

    def __init__(self, engine: Engine, app: ASGIApp, seconds: float) -> None:
        self.engine = engine
        self.app = app
        self.seconds = seconds

    @property
    def summary(self) -> str:
        return f"model {self.engine.model_id} on {self.engine.provider}, loaded in {self.seconds:.2f} s"

    def close(self) -> None:
        self.engine.close()


def open_runner(config: RunnerConfig) -> LoadedRunner:
    """Load the model of ``[runner]`` (before the server accepts a call) and build its API, which closes the
    engine when the server shuts down."""
    from .runner.api import create_app
    from .runner.engine import Engine

    started = time.perf_counter()
    engine = Engine.open(config)
    seconds = time.perf_counter() - started
    logger.info("runner: %s (%s) on %s loaded in %.2f s", engine.model_id, config.dtype, engine.provider, seconds)
    return LoadedRunner(engine, create_app(engine, owns_engine=True), seconds)
