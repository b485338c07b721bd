"""Paths the guard answers itself, before any check: health, readiness and the scrape endpoint.

An endpoint is ``async (method, authorization) -> (status, headers, body)``: it sees the method
and the ``Authorization`` field only, never the body, the query or other headers.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from ..decision import Denial, MethodNotAllowed
from ..types import RawHeaders, Scope, Send

Answer = tuple[int, RawHeaders, bytes]
Endpoint = Callable[[str, str | None], Awaitable[Answer]]
READ_METHODS = ("GET", "HEAD")


def answer(method: str, status: int, content_type: bytes, body: bytes) -> Answer:
    headers = [(b"content-type", content_type), (b"cache-control", b"no-store"),
               (b"content-length", str(len(body)).encode())]
    return status, headers, b"" if method == "HEAD" else body


def json_answer(method: str, status: int, document: dict[str, Any]) -> Answer:
    return answer(method, status, b"application/json", json.dumps(document, separators=(",", ":")).encode())


def denial_answer(method: str, denial: Denial) -> Answer:
    body = denial.body(None)
    headers = denial.raw_headers()
    headers.append((b"content-length", str(len(body)).encode()))
    return denial.status, headers, b"" if method == "HEAD" else body


def method_not_allowed(method: str) -> Answer:
    return denial_answer(method, MethodNotAllowed("this endpoint answers GET and HEAD",
                                                  headers=[("Allow", ", ".join(READ_METHODS))]))


async def send_asgi(endpoint: Endpoint, scope: Scope, send: Send) -> None:
    """Answer an ASGI HTTP call from ``endpoint`` (the request body is left unread)."""
    authorization = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
    status, headers, body = await endpoint(scope.get("method", "GET"), authorization)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
