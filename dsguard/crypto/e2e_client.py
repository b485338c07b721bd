"""The client side of ``dsguard-e2e``: httpx transports that seal JSON bodies and open the answers.

::

    http = httpx.Client(transport=E2EClient())
    client = openai.OpenAI(base_url="https://llm.example.com/v1", api_key=token, http_client=http)

Every request with a JSON body is sealed to the server's key (fetched once from
``/.well-known/dsguard-e2e`` on the request's origin, or given as ``server_key``; ``pinned_kid``
refuses any other key). Its response is opened as it streams. A response that was altered,
reordered, truncated or not sealed raises :class:`E2EClientError` with the reason's ``code``;
only a refusal of the guard itself (status 400 and above) may come back unsealed, since it
carries no request data.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx

from .e2e import KEY_PATH, MEDIA_TYPE, E2EError, ServerKey, parse_key_document, seal_request
from .e2e_records import ResponseOpener
from .hpke import Context


class E2EClientError(httpx.DecodingError):
    """The exchange cannot be trusted; ``code`` says why (``e2e_response_tampered``, ...)."""

    def __init__(self, error: E2EError, request: httpx.Request) -> None:
        super().__init__(error.message, request=request)
        self.code = error.code


def _is_json(request: httpx.Request) -> bool:
    media_type: str = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media_type != MEDIA_TYPE and (media_type == "application/json" or media_type.endswith("+json"))


class _Opening:
    """Opens one response: sealed records, or a plaintext refusal of the guard (status >= 400)."""

    def __init__(self, context: Context, status: int, request: httpx.Request) -> None:
        self.opener = ResponseOpener(context)
        self.plaintext_allowed = status >= 400
        self.request = request
        self.sealed: bool | None = None

    def feed(self, chunk: bytes) -> bytes:
        if self.sealed is None and chunk:
            self.sealed = chunk[:1] == b"\x00" or not self.plaintext_allowed
        if not self.sealed:
            return chunk
        try:
            return self.opener.feed(chunk)
        except E2EError as exc:
            raise E2EClientError(exc, self.request) from None

    def finish(self) -> None:
        if self.sealed is False or (self.sealed is None and self.plaintext_allowed):
            return
        try:
            self.opener.finish()
        except E2EError as exc:
            raise E2EClientError(exc, self.request) from None


class _OpenedStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, opening: _Opening) -> None:
        self.inner = inner
        self.opening = opening

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            data = self.opening.feed(chunk)
            if data:
                yield data
        self.opening.finish()

    def close(self) -> None:
        self.inner.close()


class _AsyncOpenedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, opening: _Opening) -> None:
        self.inner = inner
        self.opening = opening

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            data = self.opening.feed(chunk)
            if data:
                yield data
        self.opening.finish()

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Sealing:
    """What both transports share: the server key and how a request is sealed."""

    def __init__(self, server_key: ServerKey | None, pinned_kid: str | None, key_path: str,
                 clock: Callable[[], float]) -> None:
        if server_key is not None and pinned_kid is not None and server_key.kid != pinned_kid:
            raise ValueError("server_key is not the pinned key")
        self.server_key = server_key
        self.pinned_kid = pinned_kid
        self.key_path = key_path
        self.clock = clock

    def key_request(self, request: httpx.Request) -> httpx.Request:
        url = request.url.copy_with(raw_path=self.key_path.encode("ascii"))
        return httpx.Request("GET", url, headers={"accept": "application/json"}, extensions=request.extensions)

    def learn_key(self, response: httpx.Response, request: httpx.Request) -> ServerKey:
        try:
            if response.status_code != 200:
                raise E2EError("e2e_key_document", f"the key document answered {response.status_code}")
            try:
                document = json.loads(response.content)
            except ValueError:
                raise E2EError("e2e_key_document", "the key document is not JSON") from None
            self.server_key = parse_key_document(document, self.pinned_kid)
        except E2EError as exc:
            raise E2EClientError(exc, request) from None
        return self.server_key

    def seal(self, request: httpx.Request, key: ServerKey, body: bytes) -> tuple[httpx.Request, Context]:
        envelope, context = seal_request(key, request.method, request.url.raw_path, body, int(self.clock()))
        replaced = (b"content-type", b"content-length", b"accept-encoding")
        headers = [(k, v) for k, v in request.headers.raw if k.lower() not in replaced]
        # Compressing a sealed answer gains nothing, and the client could not tell whose compression it was.
        headers += [(b"content-type", MEDIA_TYPE.encode("ascii")), (b"accept-encoding", b"identity")]
        sealed = httpx.Request(request.method, request.url, headers=headers, content=envelope,
                               extensions=request.extensions)
        return sealed, context

    @staticmethod
    def opened(response: httpx.Response, opening: _Opening,
               stream: httpx.SyncByteStream | httpx.AsyncByteStream) -> httpx.Response:
        headers = [(k, v) for k, v in response.headers.raw if k.lower() != b"content-length"]
        return httpx.Response(response.status_code, headers=headers, stream=stream, extensions=response.extensions,
                              request=opening.request)


class E2EClient(httpx.BaseTransport):
    """An httpx transport (over ``transport``, by default a plain :class:`httpx.HTTPTransport`)."""

    def __init__(self, transport: httpx.BaseTransport | None = None, *, server_key: ServerKey | None = None,
                 pinned_kid: str | None = None, key_path: str = KEY_PATH,
                 clock: Callable[[], float] = time.time) -> None:
        self.transport = transport or httpx.HTTPTransport()
        self.sealing = _Sealing(server_key, pinned_kid, key_path, clock)

    def server_key(self, request: httpx.Request) -> ServerKey:
        key = self.sealing.server_key
        if key is None:
            key_request = self.sealing.key_request(request)
            response = self.transport.handle_request(key_request)
            try:
                response.read()
            finally:
                response.close()
            key = self.sealing.learn_key(response, request)
        return key

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        if not body or not _is_json(request):
            return self.transport.handle_request(request)
        sealed, context = self.sealing.seal(request, self.server_key(request), body)
        response = self.transport.handle_request(sealed)
        opening = _Opening(context, response.status_code, request)
        assert isinstance(response.stream, httpx.SyncByteStream)
        return self.sealing.opened(response, opening, _OpenedStream(response.stream, opening))

    def close(self) -> None:
        self.transport.close()


class AsyncE2EClient(httpx.AsyncBaseTransport):
    """:class:`E2EClient` for ``httpx.AsyncClient`` (and ``openai.AsyncOpenAI``)."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, *, server_key: ServerKey | None = None,
                 pinned_kid: str | None = None, key_path: str = KEY_PATH,
                 clock: Callable[[], float] = time.time) -> None:
        self.transport = transport or httpx.AsyncHTTPTransport()
        self.sealing = _Sealing(server_key, pinned_kid, key_path, clock)

    async def server_key(self, request: httpx.Request) -> ServerKey:
        key = self.sealing.server_key
        if key is None:
            key_request = self.sealing.key_request(request)
            response = await self.transport.handle_async_request(key_request)
            try:
                await response.aread()
            finally:
                await response.aclose()
            key = self.sealing.learn_key(response, request)
        return key

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        if not body or not _is_json(request):
            return await self.transport.handle_async_request(request)
        sealed, context = self.sealing.seal(request, await self.server_key(request), body)
        response = await self.transport.handle_async_request(sealed)
        opening = _Opening(context, response.status_code, request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return self.sealing.opened(response, opening, _AsyncOpenedStream(response.stream, opening))

    async def aclose(self) -> None:
        await self.transport.aclose()
