"""The app `dsguard serve` guards when no runner is configured: shows what the guard verified."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from . import __version__


def _ctx_view(request: Request) -> dict[str, object]:
    ctx = request.scope.get("dsguard")
    identity = request.state.identity if ctx is not None else None
    return {
        "client_ip": ctx.client_ip if ctx else None,
        "scheme": ctx.scheme if ctx else None,
        "tls": ctx.tls.version if ctx and ctx.tls else None,
        "subject": identity.subject if identity else None,
        "request_id": ctx.request_id if ctx else None,
    }


async def index(request: Request) -> JSONResponse:
    return JSONResponse({"service": "dsguard", "version": __version__, "guarded": "dsguard" in request.scope,
                         "routes": ["/", "/v1/echo", "/v1/stream?n=5"]})


async def echo(request: Request) -> JSONResponse:
    ctx = request.scope.get("dsguard")
    payload = ctx.json if ctx is not None else None
    if payload is None:
        payload = (await request.body()).decode("utf-8", "replace")
    return JSONResponse({"echo": payload, "request": _ctx_view(request)})


async def stream(request: Request) -> StreamingResponse:
    try:
        count = max(0, min(int(request.query_params.get("n", "5")), 100))
    except ValueError:
        count = 5
    delay = 0.05

    async def events() -> AsyncIterator[bytes]:
        for i in range(count):
            yield f"data: {json.dumps({'index': i})}\n\n".encode()
            await asyncio.sleep(delay)
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def create_app() -> Starlette:
    return Starlette(routes=[Route("/", index), Route("/v1/echo", echo, methods=["POST"]), Route("/v1/stream", stream)])
