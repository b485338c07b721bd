"""The WSGI middleware and the Flask helpers through a real werkzeug server."""

from __future__ import annotations

import threading

import httpx
from flask import Flask, Response, g, request, stream_with_context

from dsguard import GuardWSGIMiddleware
from dsguard.adapters.flask import FlaskGuard, current_identity

from .conftest import run_werkzeug
from .helpers import HeaderIdentity, config, first_chunk_then_rest


def flask_app() -> tuple[Flask, threading.Event]:
    app = Flask(__name__)
    guard = FlaskGuard(app, config=config(), checks=[HeaderIdentity()])
    release = threading.Event()

    @app.post("/echo")
    def echo() -> dict[str, object]:
        return {"json": request.get_json(), "subject": g.identity.subject if g.identity else None,
                "client_ip": g.dsguard.client_ip}

    @app.get("/me")
    @guard.require(scopes=["chat"])
    def me() -> dict[str, object]:
        identity = current_identity()
        assert identity is not None
        return {"subject": identity.subject}

    @app.get("/stream")
    def stream() -> Response:
        def body():  # type: ignore[no-untyped-def]
            yield b"data: one\n\n"
            yield b"data: two\n\n" if release.wait(10) else b"data: buffered\n\n"

        return Response(stream_with_context(body()), mimetype="text/event-stream")

    return app, release


def test_flask_sees_the_replayed_json_body_and_the_identity() -> None:
    app, _ = flask_app()
    with run_werkzeug(app) as url:
        response = httpx.post(url + "/echo", json={"model": "r1"}, headers={"x-test-subject": "erin"})
    assert response.json() == {"json": {"model": "r1"}, "subject": "erin", "client_ip": "127.0.0.1"}
    assert len(response.headers["x-request-id"]) == 16


def test_flask_decorator_denies_in_the_guard_shape() -> None:
    app, _ = flask_app()
    with run_werkzeug(app) as url:
        anonymous = httpx.get(url + "/me")
        unscoped = httpx.get(url + "/me", headers={"x-test-subject": "erin"})
        allowed = httpx.get(url + "/me", headers={"x-test-subject": "erin", "x-test-scopes": "chat"})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthenticated"
    assert anonymous.json()["request_id"] == anonymous.headers["x-request-id"]
    assert unscoped.status_code == 403 and unscoped.json()["error"]["code"] == "insufficient_scope"
    assert allowed.json() == {"subject": "erin"}


def test_flask_streamed_response_passes_through_unbuffered() -> None:
    app, release = flask_app()
    with run_werkzeug(app) as url:
        first, rest, _ = first_chunk_then_rest(url + "/stream", release)
    assert first == b"data: one\n\n"
    assert rest == b"data: two\n\n"


def test_pipeline_denial_never_reaches_the_wsgi_app() -> None:
    called = []

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        called.append(True)
        start_response("200 OK", [])
        return [b""]

    with run_werkzeug(GuardWSGIMiddleware(app, config=config(""))) as url:
        response = httpx.get(url + "/")
    assert response.status_code == 403 and response.json()["error"]["code"] == "https_required"
    assert called == []


def test_wsgi_identity_is_in_the_environ() -> None:
    seen = {}

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        seen["identity"] = environ["dsguard.identity"]
        start_response("200 OK", [])
        return [b""]

    with run_werkzeug(GuardWSGIMiddleware(app, config=config(), checks=[HeaderIdentity()])) as url:
        httpx.get(url + "/", headers={"x-test-subject": "frank"})
    assert seen["identity"].subject == "frank"
