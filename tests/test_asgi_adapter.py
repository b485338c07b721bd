"""The ASGI middleware through a real uvicorn server and real clients."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from dsguard import GuardMiddleware, Identity
from dsguard.adapters.fastapi import get_identity, require

from .conftest import run_uvicorn
from .helpers import AsyncDenyHeader, HeaderIdentity, config, first_chunk_then_rest, starlette_app


def test_sse_streams_chunk_by_chunk_through_the_middleware() -> None:
    release = threading.Event()

    async def events(request: Request) -> StreamingResponse:
        async def body():  # type: ignore[no-untyped-def]
            yield b"data: one\n\n"
            # Only a client that already holds the first event can release the second one.
            released = await asyncio.to_thread(release.wait, 10)
            yield b"data: two\n\n" if released else b"data: buffered\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    app = GuardMiddleware(Starlette(routes=[Route("/events", events)]), config=config())
    with run_uvicorn(app) as url:
        first, rest, response = first_chunk_then_rest(url + "/events", release)
    assert first == b"data: one\n\n"
    assert rest == b"data: two\n\n"
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "x-request-id" in response.headers


def test_body_is_read_once_and_replayed_to_the_app() -> None:
    with run_uvicorn(GuardMiddleware(starlette_app(), config=config())) as url:
        response = httpx.post(url + "/whoami", json={"prompt": "hello"})
    assert response.json()["body"] == '{"prompt":"hello"}'


def test_identity_is_visible_on_request_state() -> None:
    app = GuardMiddleware(starlette_app(), config=config(), checks=[HeaderIdentity()])
    with run_uvicorn(app) as url:
        response = httpx.get(url + "/whoami", headers={"x-test-subject": "alice"})
    assert response.json()["subject"] == "alice"
    assert response.json()["client_ip"] == "127.0.0.1"


def test_lifespan_starts_and_stops_the_checks() -> None:
    check = AsyncDenyHeader()
    app = GuardMiddleware(starlette_app(), config=config(), checks=[check])
    with run_uvicorn(app):
        assert check.started == 1
    assert check.stopped == 1


def test_a_spoofed_x_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    # The loopback peer is not a trusted proxy here, so its forwarding headers are not believed.
    with run_uvicorn(GuardMiddleware(starlette_app(), config=config())) as url:
        response = httpx.get(url + "/whoami", headers={"x-forwarded-for": "203.0.113.66"})
    assert response.json()["client_ip"] == "127.0.0.1"


async def echo_socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello " + (websocket.state.identity.subject if websocket.state.identity else "anon"))
    await websocket.close()


def websocket_app() -> Starlette:
    return Starlette(routes=[WebSocketRoute("/ws", echo_socket)])


def test_websocket_handshake_passes_the_pipeline() -> None:
    app = GuardMiddleware(websocket_app(), config=config(), checks=[HeaderIdentity()])
    with run_uvicorn(app) as url, connect(url.replace("http", "ws") + "/ws",
                                          additional_headers={"x-test-subject": "bob"}) as ws:
        assert ws.recv() == "hello bob"


def test_denied_websocket_handshake_gets_the_json_denial() -> None:
    app = GuardMiddleware(websocket_app(), config=config(), checks=[AsyncDenyHeader()])
    with run_uvicorn(app) as url, pytest.raises(InvalidStatus) as refused:
        connect(url.replace("http", "ws") + "/ws", additional_headers={"x-deny": "1"})
    assert refused.value.response.status_code == 403
    assert b'"code":"header_denied"' in refused.value.response.body


def fastapi_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(GuardMiddleware, config=config(), checks=[HeaderIdentity()])

    @app.get("/open")
    def open_route(identity: Identity | None = Depends(get_identity)) -> dict[str, object]:
        return {"subject": identity.subject if identity else None}

    @app.post("/chat")
    def chat(identity: Identity = Depends(require(scopes=["chat"]))) -> dict[str, object]:
        return {"subject": identity.subject}

    return app


def test_fastapi_requirement_admits_a_caller_with_the_scope() -> None:
    with run_uvicorn(fastapi_app()) as url:
        response = httpx.post(url + "/chat", headers={"x-test-subject": "carol", "x-test-scopes": "chat read"})
        anonymous = httpx.get(url + "/open")
    assert response.json() == {"subject": "carol"}
    assert anonymous.json() == {"subject": None}


def test_fastapi_requirement_without_identity_is_401_in_the_guard_shape() -> None:
    with run_uvicorn(fastapi_app()) as url:
        response = httpx.post(url + "/chat")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert response.headers["www-authenticate"] == 'Bearer realm="dsguard"'


def test_fastapi_requirement_missing_scope_is_403_insufficient_scope() -> None:
    with run_uvicorn(fastapi_app()) as url:
        response = httpx.post(url + "/chat", headers={"x-test-subject": "dave", "x-test-scopes": "read"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


def test_fastapi_requirement_without_the_middleware_fails_closed() -> None:
    app = FastAPI()

    @app.get("/chat")
    def chat(identity: Identity = Depends(require(scopes=["chat"]))) -> dict[str, object]:
        return {"subject": identity.subject}

    with run_uvicorn(app) as url:
        response = httpx.get(url + "/chat")
    assert response.status_code == 503


def test_non_http_scopes_pass_straight_through() -> None:
    seen = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        seen.append(scope["type"])

    asyncio.run(GuardMiddleware(app, config=config())({"type": "custom"}, None, None))  # type: ignore[arg-type]
    assert seen == ["custom"]


def test_the_app_sees_json_bodies_it_can_parse() -> None:
    async def model(request: Request) -> JSONResponse:
        return JSONResponse({"model": (await request.json())["model"]})

    app = GuardMiddleware(Starlette(routes=[Route("/m", model, methods=["POST"])]), config=config())
    with run_uvicorn(app) as url:
        assert httpx.post(url + "/m", json={"model": "r1"}).json() == {"model": "r1"}
