"""Checks and apps used by several test modules (test doubles of *checks*, not of dsguard)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dsguard.config import Config, parse_config
from dsguard.context import Identity, RequestContext
from dsguard.decision import Denial, Forbidden

OPEN_HTTP = """
[transport]
require_https = false
"""


def config(text: str = OPEN_HTTP) -> Config:
    return parse_config(text, file="dsguard.toml")


class HeaderIdentity:
    """Trusts ``x-test-subject``/``x-test-scopes``: a stand-in identity source for adapter tests."""

    name = "test-identity"
    stage = "identity"

    def check(self, ctx: RequestContext) -> None:
        subject = ctx.headers.get("x-test-subject")
        if subject:
            scopes = frozenset(ctx.headers.get("x-test-scopes", "").split())
            ctx.identity = Identity(subject=subject, method="test", scopes=scopes, roles=frozenset({"user"}))


class AsyncDenyHeader:
    """An asynchronous check (awaits the loop) denying calls that carry ``x-deny``."""

    name = "async-deny"
    stage = "content"

    def __init__(self) -> None:
        self.started = 0
        self.stopped = 0

    async def startup(self) -> None:
        self.started += 1

    async def shutdown(self) -> None:
        self.stopped += 1

    async def check(self, ctx: RequestContext) -> Denial | None:
        await asyncio.sleep(0.001)
        if "x-deny" in ctx.headers:
            return Forbidden("denied by header", code="header_denied")
        return None


class Exploding:
    name = "exploding"
    stage = "content"

    def check(self, ctx: RequestContext) -> None:
        raise RuntimeError("secret-internal-detail")


class Slow:
    name = "slow"
    stage = "content"

    async def check(self, ctx: RequestContext) -> None:
        await asyncio.sleep(5)


async def whoami(request: Request) -> JSONResponse:
    ctx = request.state.dsguard
    identity = request.state.identity
    body = await request.body()
    return JSONResponse({
        "subject": identity.subject if identity else None,
        "client_ip": ctx.client_ip,
        "scheme": ctx.scheme,
        "body_length": len(body),
        "body": body.decode("utf-8", "replace")[:64],
    })


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/whoami", whoami, methods=["GET", "POST"])])


class InProcess:
    """A real httpx client driving an ASGI app in-process, from a chosen peer address."""

    def __init__(self, app: Any, peer: str = "127.0.0.1", scheme: str = "http") -> None:
        self.transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        self.base_url = f"{scheme}://testserver"

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=self.transport, base_url=self.base_url) as http:
                return await http.request(method, path, **kwargs)

        return asyncio.run(go())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)


def broken_factory(options: dict[str, object]) -> object:
    """A plugin factory with a bug of its own (not an options problem)."""
    raise RuntimeError("cannot reach the plugin's backend")


class FrozenCheck:
    """A plugin check whose attributes cannot be changed after construction."""

    __slots__ = ()
    name = "frozen"
    stage = "content"

    def __init__(self, options: dict[str, object]) -> None:
        pass

    def check(self, ctx: RequestContext) -> Denial:
        return Forbidden("frozen says no", code="frozen")


def first_chunk_then_rest(url: str, release: Any) -> tuple[bytes, bytes, httpx.Response]:
    """Read a streamed response's first chunk, then ``release`` the server's next one.

    A middleware that buffered the response would never hand over the first chunk while the
    server waits for the release, so the server would time out and send ``buffered`` instead.
    """
    with httpx.stream("GET", url, timeout=20) as response:
        chunks = response.iter_raw()
        first = next(chunks)
        release.set()
        rest = b"".join(chunks)
    return first, rest, response


class FailsToStart:
    """A check whose backend is down at startup, then comes back."""

    name = "flaky-start"
    stage = "content"

    def __init__(self) -> None:
        self.attempts = 0

    async def startup(self) -> None:
        self.attempts += 1
        if self.attempts == 1:
            raise ConnectionError("backend unreachable")

    def check(self, ctx: RequestContext) -> None:
        return None
