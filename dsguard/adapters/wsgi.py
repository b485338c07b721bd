"""WSGI middleware (Flask, Django, any WSGI app): the same pipeline, driven synchronously.

Asynchronous checks run on one background event loop (the portal); the rest of the pipeline
runs inline in the server's thread, which waits there for asynchronous before-finish hooks.

With before-finish hooks (see :meth:`~dsguard.context.RequestContext.before_finish`) the
server's ``start_response`` is called just before the first body byte goes out (PEP 3333 allows
it during the first iteration), and the hooks run before the chunk that completes the declared
``Content-Length`` or, without one, once the app's iterable is exhausted (before the server ends
a chunked body). A hook refusing before any byte was sent has its denial answered instead;
after, iteration raises :class:`~dsguard.pipeline.ResponseAborted` and the server aborts the
response.
"""

from __future__ import annotations

import io
import ssl
from collections.abc import Awaitable, Callable, Iterable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .._portal import Portal, run_inline
from ..checks.base import Check
from ..config import Config
from ..context import AfterHook, RequestContext, ResponseFilter, ResponseInfo, TLSInfo
from ..decision import Denial, PayloadTooLarge
from ..errors import ClientDisconnected
from ..guard import ErrorRenderer, Guard
from ..pipeline import ResponseAborted
from ..telemetry.endpoints import Endpoint

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
_READ = 64 * 1024


def context_from_environ(environ: Environ) -> RequestContext:
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers.append((key[5:].replace("_", "-").lower().encode("latin-1"), value.encode("latin-1")))
    for key, name in (("CONTENT_TYPE", b"content-type"), ("CONTENT_LENGTH", b"content-length")):
        value = environ.get(key)
        if value:
            headers.append((name, value.encode("latin-1")))
    path_bytes = (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")).encode("latin-1")
    path = path_bytes.decode("utf-8", "replace") or "/"
    uri = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    raw_path = uri.split("?", 1)[0].encode("latin-1") if uri else quote(path).encode()
    pem = environ.get("SSL_CLIENT_CERT")
    scheme = environ.get("wsgi.url_scheme", "http")
    der = ssl.PEM_cert_to_DER_cert(pem) if pem else None
    tls = TLSInfo(client_cert=der, client_cert_chain=(der,)) if der else None
    protocol = environ.get("SERVER_PROTOCOL", "HTTP/1.1")
    return RequestContext(
        environ.get("REQUEST_METHOD", "GET").upper(), path, raw_path,
        environ.get("QUERY_STRING", "").encode("latin-1"), headers, environ.get("REMOTE_ADDR"), scheme,
        protocol.partition("/")[2] or "1.1", tls,
    )


class _Prefixed(io.RawIOBase):
    """``wsgi.input`` replaying bytes already read, then the rest of the original stream."""

    def __init__(self, prefix: bytes, rest: Any) -> None:
        self._buffer = io.BytesIO(prefix)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        data = self._buffer.read(len(target)) or self._rest.read(len(target))
        target[: len(data)] = data
        return len(data)


class WSGICall:
    __slots__ = ("_error", "_prefix", "body", "environ", "portal")

    def __init__(self, environ: Environ, portal: Portal) -> None:
        self.environ = environ
        self.portal = portal
        self.body: bytes | None = None
        self._prefix = b""
        self._error: Denial | None = None

    async def read_body(self, limit: int) -> bytes:
        if self._error is not None:
            raise self._error
        stream = self.environ["wsgi.input"]
        length = self.environ.get("CONTENT_LENGTH")
        chunks: list[bytes] = []
        size = 0
        if length:
            remaining = int(length) if length.isdigit() else 0
            if remaining > limit:
                self._error = PayloadTooLarge(f"request body is larger than {limit} bytes")
                raise self._error
            while remaining > 0:
                chunk = stream.read(min(remaining, _READ))
                if not chunk:
                    raise ClientDisconnected()
                chunks.append(chunk)
                remaining -= len(chunk)
        else:
            while True:
                chunk = stream.read(_READ)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    self._prefix = b"".join(chunks)
                    self._error = PayloadTooLarge(f"request body is larger than {limit} bytes")
                    raise self._error
        self.body = b"".join(chunks)
        return self.body

    async def wait(self, awaitable: Awaitable[Any], timeout: float | None) -> Any:
        return self.portal.call(awaitable, timeout)

    def restore_input(self, replacement: bytes | None = None) -> None:
        environ = self.environ
        body = self.body if replacement is None else replacement
        if body is not None:
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            environ.pop("HTTP_TRANSFER_ENCODING", None)
            if replacement is not None:  # a replacement is plain: a coded body was decoded or refused
                environ.pop("HTTP_CONTENT_ENCODING", None)
        elif self._prefix:
            environ["wsgi.input"] = io.BufferedReader(_Prefixed(self._prefix, environ["wsgi.input"]))


class GuardWSGIMiddleware:
    """``app.wsgi_app = GuardWSGIMiddleware(app.wsgi_app, config="dsguard.toml")``.

    The verified identity is at ``environ["dsguard.identity"]`` and the whole context at
    ``environ["dsguard.context"]`` (``dsguard.adapters.flask`` puts them on ``flask.g``).
    """

    def __init__(self, app: WSGIApp, config: str | Path | Config | Guard | None = None, *,
                 checks: Iterable[Check] = (), after_hooks: Iterable[AfterHook] = (),
                 on_error: ErrorRenderer | None = None) -> None:
        self.app = app
        self.guard = Guard.build(config, checks=checks, after_hooks=after_hooks, on_error=on_error)
        self.portal = Portal()
        self.endpoints = self.guard.endpoints or None

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self.endpoints is not None:
            endpoint = self.endpoints.get(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
            if endpoint is not None:
                return self._answer(endpoint, environ, start_response)
        guard = self.guard
        pipeline = guard.pipeline
        ctx = context_from_environ(environ)
        call = WSGICall(environ, self.portal)
        response = ResponseInfo()
        try:
            denial = None if guard.started else self.portal.call(guard.ready())
            if denial is None:
                denial = run_inline(pipeline.evaluate(ctx, call))
        except ClientDisconnected:
            response.disconnected = True
            self._finish(ctx, response, call)
            return []
        if denial is not None:
            return self._deny(ctx, denial, start_response, response, call)
        call.restore_input(ctx.body_replacement)
        for name, value in ctx.forward_headers or ():
            key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value.decode("latin-1")
        environ["dsguard.context"] = ctx
        environ["dsguard.identity"] = ctx.identity
        extra = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in ctx.response_headers]
        extra.append((guard.config.pipeline.request_id_header, ctx.request_id))
        response_filter = ctx.response_filter
        finish = None
        if pipeline.has_finish_hooks(ctx):
            finish = _Finish(start_response, lambda: run_inline(pipeline.before_finish(ctx, response, call)),
                             lambda refusal: self._rendered(ctx, refusal, response))
        server_start_response = start_response if finish is None else finish.start_response

        def guarded_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            response.status = int(status[:3])
            if response_filter is None:
                return server_start_response(status, [*headers, *extra], exc_info)
            kept = [(k, v) for k, v in headers if k.lower() != "content-length"]
            write = server_start_response(status, [*kept, *extra], exc_info)
            return lambda data: write(response_filter.feed(data))

        try:
            result = self.app(environ, guarded_start_response)
        except BaseException:
            self._finish(ctx, response, call)
            raise
        return _Closing(result, lambda: self._finish(ctx, response, call), response, response_filter, finish)

    def _answer(self, endpoint: Endpoint, environ: Environ, start_response: StartResponse) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        status, headers, body = self.portal.call(endpoint(method, environ.get("HTTP_AUTHORIZATION")))
        start_response(_status_line(status), _str_headers(headers))
        return [body]

    def close(self) -> None:
        """Shut the checks down (closing their connections) and stop the background loop."""
        if self.guard.started:
            self.portal.call(self.guard.shutdown())
        self.portal.close()

    def _deny(self, ctx: RequestContext, denial: Denial, start_response: StartResponse, response: ResponseInfo,
              call: WSGICall) -> list[bytes]:
        status, headers, body = self._rendered(ctx, denial, response)
        pipeline = self.guard.pipeline
        if pipeline.has_finish_hooks(ctx):
            refusal = run_inline(pipeline.before_finish(ctx, response, call))
            if refusal is not None:
                status, headers, body = self._rendered(ctx, refusal, response)
        start_response(status, headers)
        self._finish(ctx, response, call)
        return [body]

    def _rendered(self, ctx: RequestContext, denial: Denial, response: ResponseInfo) -> _Answer:
        """The status line, headers and body answering ``denial``, noted in ``response``."""
        status, headers, body = self.guard.render(ctx, denial)
        response.status = status
        response.denied_by = denial.check or "pipeline"
        response.complete = True
        response.bytes_sent = len(body)
        return _status_line(status), [*_str_headers(headers), ("Content-Length", str(len(body)))], body

    def _finish(self, ctx: RequestContext, response: ResponseInfo, call: WSGICall) -> None:
        if self.guard.pipeline.has_after_hooks(ctx):
            run_inline(self.guard.pipeline.finish(ctx, response, call))


_Answer = tuple[str, list[tuple[str, str]], bytes]


class _Finish:
    """Holds the response start until its first byte, and runs the before-finish hooks before its last chunk."""

    def __init__(self, start_response: StartResponse, run: Callable[[], Denial | None],
                 render: Callable[[Denial], _Answer]) -> None:
        self._start_response = start_response
        self._run = run
        self._render = render
        self._held: tuple[str, list[tuple[str, str]], Any] | None = None
        self._write: Callable[[bytes], Any] | None = None
        self._length: int | None = None
        self._done = self.refused = self._wrote = False

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if self._write is not None:
            return self._start_response(status, headers, exc_info)
        self._held = (status, headers, exc_info)
        length = next((v for k, v in headers if k.lower() == "content-length"), "")
        self._length = int(length) if length.isdigit() else None
        return self._legacy_write

    def _legacy_write(self, data: bytes) -> Any:
        self._release()
        self._wrote = True
        return self._write(data) if self._write is not None else None

    def _release(self) -> None:
        if self._held is not None:
            status, headers, exc_info = self._held
            self._held = None
            self._write = self._start_response(status, headers, exc_info)

    def before(self, chunk: bytes, sent: int, *, last: bool = False) -> bytes:
        """What to send for ``chunk`` (the response start goes to the server first): ``chunk``, or, when the hooks
        ran now and one refused before any byte was sent, the denial's body (``refused`` is then set)."""
        if not self._done and (last or (self._length is not None and chunk and sent + len(chunk) >= self._length)):
            self._done = True
            refusal = self._run()
            if refusal is not None:
                if sent or self._wrote:
                    raise ResponseAborted()
                status, headers, chunk = self._render(refusal)
                self._held, self.refused = (status, headers, None), True
        if chunk or last:
            self._release()
        return chunk


class _Closing:
    """The app's response iterable; runs the before-finish hooks before its last chunk (see :class:`_Finish`) and
    the after-hooks when the server closes it."""

    def __init__(self, result: Iterable[bytes], on_close: Callable[[], None], response: ResponseInfo,
                 response_filter: ResponseFilter | None = None, finish: _Finish | None = None) -> None:
        self._result = result
        self._on_close = on_close
        self._response = response
        self._filter = response_filter
        self._finish = finish

    def __iter__(self) -> Iterator[bytes]:
        response_filter, finish, response = self._filter, self._finish, self._response
        for chunk in self._result:
            if response_filter is not None:
                chunk = response_filter.feed(chunk)
                if not chunk:
                    continue
            sent = response.bytes_sent
            response.bytes_sent += len(chunk)
            if finish is not None:
                chunk = finish.before(chunk, sent)
                if finish.refused:
                    yield chunk
                    return
                if not chunk:
                    continue
            yield chunk
        tail = response_filter.finish() if response_filter is not None else b""
        sent = response.bytes_sent
        response.bytes_sent += len(tail)
        if finish is not None:
            tail = finish.before(tail, sent, last=True)
        if tail:
            yield tail
        response.complete = True

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close()


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Error"


def _str_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
