"""The runner's HTTP errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, plus
dsguard's ``request_id`` behind the guard; and the catch-all that keeps a plain-text 500 from ever leaving."""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..context import RequestContext
from ..types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("dsguard.runner")


def context_of(scope: Scope) -> RequestContext | None:
    ctx = scope.get("dsguard")
    return ctx if isinstance(ctx, RequestContext) else None


def error_response(scope: Scope, status: int, message: str, *, type: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """OpenAI's error object, with the guard's request id when the call went through the guard."""
    body: dict[str, Any] = {"error": {"message": message, "type": type, "param": param, "code": code}}
    ctx = context_of(scope)
    if ctx is not None:
        body["request_id"] = ctx.request_id
    return JSONResponse(body, status_code=status, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        return error_response(request.scope, 404, f"Unknown request URL: {request.method} {request.url.path}.",
                              code="unknown_url")
    if status == 405:
        return error_response(request.scope, 405, f"Method {request.method} is not allowed on {request.url.path}.",
                              code="method_not_allowed")
    return error_response(request.scope, status, "The request could not be served.", type="server_error")


class InternalErrors:
    """The catch-all: whatever escapes a route is logged and answered as a 500 ``internal_error`` in OpenAI's
    error shape, without its details (a response already started is cut short); never a plain-text 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception:
            logger.exception("runner: %s %s failed", scope.get("method"), scope.get("path"))
            if scope["type"] == "http" and not started:
                response = error_response(scope, 500, "The server had an error while processing the request.",
                                          type="server_error", code="internal_error")
                await response(scope, receive, send)
