"""Pure ASGI middleware: runs the pipeline before the app, adds headers, never buffers responses.

With before-finish hooks (see :meth:`~dsguard.context.RequestContext.before_finish`) the response
start is held until the first body chunk, so that a hook refusing a one-chunk response can still
answer with its denial; a streamed response it refuses is cut off: the app's next send raises
:class:`~dsguard.pipeline.ResponseAborted`, the last chunk is never sent and the middleware
returns with the response incomplete, which servers answer by closing the connection.
"""

from __future__ import annotations

import asyncio
import ssl
import types
from collections.abc import Awaitable, Coroutine, Generator, Iterable
from pathlib import Path
from typing import Any

from ..checks.base import Check
from ..config import Config
from ..context import AfterHook, RequestContext, ResponseInfo, TLSInfo
from ..decision import Denial, PayloadTooLarge
from ..errors import ClientDisconnected
from ..guard import ErrorRenderer, Guard
from ..pipeline import ResponseAborted
from ..telemetry.endpoints import send_asgi
from ..types import ASGIApp, Message, RawHeaders, Receive, Scope, Send

_TLS_VERSIONS = {0x0301: "TLSv1", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}


@types.coroutine
def _resume(coroutine: Coroutine[Any, Any, Any], pending: Any) -> Generator[Any, Any, Any]:
    """Carry on driving a coroutine that suspended on ``pending`` (the awaiting task drives us)."""
    while True:
        try:
            sent = yield pending
        except BaseException as exc:  # cancellation or timeout: hand it to the coroutine
            try:
                pending = coroutine.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                pending = coroutine.send(sent)
            except StopIteration as done:
                return done.value


def _der(certificate: str | bytes) -> bytes:
    if isinstance(certificate, bytes) and not certificate.startswith(b"-----"):
        return certificate
    text = certificate.decode("ascii") if isinstance(certificate, bytes) else certificate
    return ssl.PEM_cert_to_DER_cert(text)


def context_from_scope(scope: Scope) -> RequestContext:
    client = scope.get("client")
    headers = scope["headers"]
    scheme = scope.get("scheme", "http")
    if scope["type"] == "websocket":
        scheme = "https" if scheme == "wss" else "http"
    tls = None
    extensions = scope.get("extensions")
    if extensions and "tls" in extensions:
        info = extensions["tls"]
        chain = tuple(_der(c) for c in info.get("client_cert_chain") or ())
        tls = TLSInfo(version=_TLS_VERSIONS.get(info.get("tls_version")),
                      cipher=str(info["cipher_suite"]) if info.get("cipher_suite") is not None else None,
                      client_cert=chain[0] if chain else None, client_cert_chain=chain)
    return RequestContext(
        scope.get("method", "GET"), scope["path"], scope.get("raw_path") or scope["path"].encode(),
        scope.get("query_string", b""), headers if isinstance(headers, list) else list(headers),
        client[0] if client else None, scheme, scope.get("http_version", "1.1"), tls,
    )


class ASGICall:
    """The request body and awaiting, as the pipeline needs them, for one ASGI call."""

    __slots__ = ("_error", "_prefix", "body", "receive")

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.body: bytes | None = None
        self._prefix: list[bytes] = []
        self._error: Denial | None = None

    async def read_body(self, limit: int) -> bytes:
        if self._error is not None:
            raise self._error
        chunks, size = self._prefix, 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected()
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                chunks.append(chunk)
                if size > limit:
                    self._error = PayloadTooLarge(f"request body is larger than {limit} bytes")
                    raise self._error
            if not message.get("more_body", False):
                break
        self._prefix = []
        self.body = b"".join(chunks)
        return self.body

    async def wait(self, awaitable: Awaitable[Any], timeout: float | None) -> Any:
        if timeout is None:
            return await awaitable
        if isinstance(awaitable, Coroutine):
            # Most checks finish without suspending (in-memory state): only a suspended one needs a timer.
            try:
                pending = awaitable.send(None)
            except StopIteration as done:
                return done.value
            async with asyncio.timeout(timeout):
                return await _resume(awaitable, pending)
        async with asyncio.timeout(timeout):
            return await awaitable

    def app_receive(self, replacement: bytes | None = None) -> Receive:
        """What the app reads: the buffered body (or its replacement, or in report mode the part read),
        then the socket."""
        body = self.body if replacement is None else replacement
        if body is None and not self._prefix:
            return self.receive
        pending = [body] if body is not None else [b"".join(self._prefix)]
        more = body is None
        upstream = self.receive

        async def receive() -> Message:
            if pending:
                return {"type": "http.request", "body": pending.pop(), "more_body": more}
            return await upstream()

        return receive


def _expose(scope: Scope, ctx: RequestContext) -> None:
    """Hand the verified context to the app: ``request.state.identity`` / ``request.state.dsguard``."""
    state = scope.get("state")
    if state is None:
        scope["state"] = state = {}
    state["identity"] = ctx.identity
    state["dsguard"] = ctx
    scope["dsguard"] = ctx


def _with_content_length(headers: Iterable[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    """Headers for a replaced request body: plain (never content-coded: a coded body was decoded or refused)."""
    dropped = (b"content-length", b"transfer-encoding", b"content-encoding")
    kept = [(k, v) for k, v in headers if k.lower() not in dropped]
    return [*kept, (b"content-length", str(length).encode())]


def _forwarded(headers: Iterable[tuple[bytes, bytes]],
               fields: list[tuple[bytes, bytes | None]]) -> list[tuple[bytes, bytes]]:
    """``headers`` with each of ``fields`` replacing the fields of its name (a None value only removes them)."""
    names = {name for name, _ in fields}
    kept = [(k, v) for k, v in headers if k.lower() not in names]
    return [*kept, *((name, value) for name, value in fields if value is not None)]


class GuardMiddleware:
    """``app.add_middleware(GuardMiddleware, config="dsguard.toml")``.

    The verified identity is at ``request.state.identity`` and the whole
    :class:`~dsguard.context.RequestContext` at ``request.state.dsguard``.

    Run uvicorn with ``proxy_headers=False`` (``--no-proxy-headers``): by default it rewrites the
    client address from ``X-Forwarded-For`` for loopback peers before the guard sees the call,
    which would bypass ``[server] trusted_proxies``.
    """

    def __init__(self, app: ASGIApp, config: str | Path | Config | Guard | None = None, *,
                 checks: Iterable[Check] = (), after_hooks: Iterable[AfterHook] = (),
                 on_error: ErrorRenderer | None = None) -> None:
        self.app = app
        self.guard = Guard.build(config, checks=checks, after_hooks=after_hooks, on_error=on_error)
        self.endpoints = self.guard.endpoints or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if self.endpoints is not None and scope["path"] in self.endpoints:
                await send_asgi(self.endpoints[scope["path"]], scope, send)
                return
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = self.guard
        pipeline = guard.pipeline
        ctx = context_from_scope(scope)
        call = ASGICall(receive)
        response = ResponseInfo()
        try:
            denial = None if guard.started else await guard.ready()
            if denial is None:
                denial = await pipeline.evaluate(ctx, call)
        except ClientDisconnected:
            response.disconnected = True
            if pipeline.has_after_hooks(ctx):
                await pipeline.finish(ctx, response, call)
            return
        if denial is not None:
            await self._deny(ctx, denial, send, response, call)
            if pipeline.has_after_hooks(ctx):
                await pipeline.finish(ctx, response, call)
            return
        _expose(scope, ctx)
        if ctx.body_replacement is not None:
            scope["headers"] = _with_content_length(scope["headers"], len(ctx.body_replacement))
        if ctx.forward_headers:
            scope["headers"] = _forwarded(scope["headers"], ctx.forward_headers)
        request_id = (guard.request_id_header, ctx.request_id.encode())
        response_filter = ctx.response_filter
        held: Message | None = None
        finished = aborted = False

        async def guarded_send(message: Message) -> None:
            nonlocal held, finished, aborted
            if aborted:
                raise ResponseAborted()
            kind = message["type"]
            if kind == "http.response.start":
                if ctx.route_denial is not None:
                    response.denied_by = "route"
                    await self._deny(ctx, ctx.route_denial, send, response, call)
                    return
                response.status = message["status"]
                headers = message.get("headers", ())
                if response_filter is not None:
                    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
                message["headers"] = [*headers, *ctx.response_headers, request_id]
                if pipeline.has_finish_hooks(ctx):
                    held = message
                    return
            elif kind == "http.response.body":
                if response.denied_by is not None:
                    return
                more = message.get("more_body", False)
                if response_filter is not None:
                    body = response_filter.feed(message.get("body", b""))
                    if not more:
                        body += response_filter.finish()
                    elif not body:
                        return
                    message = {**message, "body": body}
                response.bytes_sent += len(message.get("body", b""))
                if not more and not finished and pipeline.has_finish_hooks(ctx):
                    finished = True
                    refusal = await pipeline.before_finish(ctx, response, call)
                    if refusal is not None and held is not None:
                        held = None
                        await self._send_denial(*self._rendered(ctx, refusal, response, replacing=True), send)
                        return
                    if refusal is not None:
                        aborted = True
                        raise ResponseAborted()
                if not more:
                    response.complete = True
            if held is not None:
                start, held = held, None
                await send(start)
            await send(message)

        try:
            await self.app(scope, call.app_receive(ctx.body_replacement), guarded_send)
        except Exception:
            if not aborted:
                raise
        finally:
            if pipeline.has_after_hooks(ctx):
                await pipeline.finish(ctx, response, call)

    async def _deny(self, ctx: RequestContext, denial: Denial, send: Send, response: ResponseInfo,
                    call: ASGICall) -> None:
        """Answer ``denial``; the before-finish hooks run first, and a refusal of theirs is answered instead."""
        rendered = self._rendered(ctx, denial, response)
        pipeline = self.guard.pipeline
        if pipeline.has_finish_hooks(ctx):
            refusal = await pipeline.before_finish(ctx, response, call)
            if refusal is not None:
                rendered = self._rendered(ctx, refusal, response, replacing=True)
        await self._send_denial(*rendered, send)

    def _rendered(self, ctx: RequestContext, denial: Denial, response: ResponseInfo, *,
                  replacing: bool = False) -> tuple[int, RawHeaders, bytes]:
        status, headers, body = self.guard.render(ctx, denial)
        response.status = status
        denied_by = denial.check or "pipeline"
        response.denied_by = denied_by if replacing else response.denied_by or denied_by
        response.bytes_sent = len(body)
        response.complete = True
        return status, headers, body

    @staticmethod
    async def _send_denial(status: int, headers: RawHeaders, body: bytes, send: Send) -> None:
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = self.guard
        ctx = context_from_scope(scope)
        call = ASGICall(receive)
        try:
            denial = None if guard.started else await guard.ready()
            if denial is None:
                denial = await guard.pipeline.evaluate(ctx, call)
        except ClientDisconnected:
            return
        if denial is None:
            _expose(scope, ctx)
            if ctx.forward_headers:
                scope["headers"] = _forwarded(scope["headers"], ctx.forward_headers)
            await self.app(scope, receive, send)
            return
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if "websocket.http.response" in scope.get("extensions", {}):
            status, headers, body = guard.render(ctx, denial)
            await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": denial.code})

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = self.guard

        async def lifespan_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await guard.startup()
            return message

        async def lifespan_send(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await guard.shutdown()
            await send(message)

        await self.app(scope, lifespan_receive, lifespan_send)
