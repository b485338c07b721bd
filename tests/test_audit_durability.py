"""`[audit] durability = "written"`: a response ends only once its record is written, else it is withheld."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from dsguard import GuardMiddleware, GuardWSGIMiddleware
from dsguard.audit.files import log_files
from dsguard.audit.verify import verify_log
from dsguard.audit.writer import AuditWriter
from dsguard.config import parse_config
from dsguard.guard import Guard

from .audit_logs import read_records
from .conftest import free_port, run_uvicorn, run_werkzeug

USAGE = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
FIRST, LAST = b"data: first\n\n", b"data: [DONE]\n\n"


def make_guard(folder: Path, written_timeout: str = "30s") -> Guard:
    text = f"""
[transport]
require_https = false
[audit]
path = "{folder / 'audit' / 'audit.jsonl'}"
durability = "written"
written_timeout = "{written_timeout}"
"""
    return Guard(parse_config(text, file="<durability>"))


def writer_of(guard: Guard) -> AuditWriter:
    assert guard.audit is not None
    return guard.audit.writer


def decisions(guard: Guard) -> dict[str, dict[str, Any]]:
    writer = writer_of(guard)
    writer.wait_written(10)
    return {r["request_id"]: r for r in read_records(writer.path) if r["type"] == "decision"}


def http_only(handler: Callable[[Scope, Receive, Send], Any]) -> Callable[[Scope, Receive, Send], Any]:
    """``handler`` as an ASGI app that also answers the lifespan protocol."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await handler(scope, receive, send)
            return
        while scope["type"] == "lifespan":
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return

    return app


@http_only
async def answer(scope: Scope, receive: Receive, send: Send) -> None:
    body = b'{"ok": true}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.005)


def test_a_response_waits_until_its_record_is_written(tmp_path: Path) -> None:
    guard = make_guard(tmp_path)
    writer = writer_of(guard)
    with run_uvicorn(GuardMiddleware(answer, config=guard)) as url, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        with writer.hold():
            pending = pool.submit(httpx.get, f"{url}/v1/models", timeout=30)
            until(lambda: not writer.wait_written(0))
            assert not concurrent.futures.wait([pending], timeout=0.3).done, "answered before its record was written"
        response = pending.result()
    assert response.status_code == 200
    assert list(decisions(guard)) == [response.headers["x-request-id"]]


def test_a_record_not_written_within_written_timeout_withholds_the_response(tmp_path: Path) -> None:
    guard = make_guard(tmp_path, written_timeout="200ms")
    writer = writer_of(guard)
    with run_uvicorn(GuardMiddleware(answer, config=guard)) as url, writer.hold():
        response = httpx.get(f"{url}/v1/models")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "audit_unavailable"
    assert response.headers["retry-after"] == "1"


def test_a_record_too_late_for_its_response_is_never_written_only_the_refusal_is(tmp_path: Path) -> None:
    guard = make_guard(tmp_path, written_timeout="200ms")
    writer = writer_of(guard)
    with run_uvicorn(GuardMiddleware(answer, config=guard)) as url:
        with writer.hold():
            refused = httpx.get(f"{url}/v1/models")
        request_id = refused.headers["x-request-id"]
        until(lambda: request_id in decisions(guard))
        answered = httpx.get(f"{url}/v1/models")
    assert (refused.status_code, answered.status_code) == (503, 200)
    logged = [(r["request_id"], r["reason"], r["status"]) for r in read_records(writer.path)
              if r["type"] == "decision"]
    assert logged == [(request_id, "audit_unavailable", 503), (answered.headers["x-request-id"], None, 200)]
    assert writer.drops == 1
    assert verify_log([writer.path]).errors == []


def test_a_call_is_answered_503_audit_unavailable_when_the_writer_has_stopped(tmp_path: Path) -> None:
    guard = make_guard(tmp_path)
    with run_uvicorn(GuardMiddleware(answer, config=guard)) as url:
        assert httpx.get(f"{url}/v1/models").status_code == 200
        writer_of(guard).stop()
        response = httpx.get(f"{url}/v1/models")
    assert (response.status_code, response.json()["error"]["code"]) == (503, "audit_unavailable")
    assert json.loads(response.content)["request_id"] == response.headers["x-request-id"]


def test_a_denial_is_withheld_too_when_its_record_cannot_be_written(tmp_path: Path) -> None:
    guard = make_guard(tmp_path)
    with run_uvicorn(GuardMiddleware(answer, config=guard)) as url:
        assert httpx.request("TRACE", f"{url}/v1/models").status_code == 405
        writer_of(guard).stop()
        response = httpx.request("TRACE", f"{url}/v1/models")
    assert (response.status_code, response.json()["error"]["code"]) == (503, "audit_unavailable")


def streaming_app(guard: Guard, seen: dict[str, Any], *, stop_writer: bool = False) -> Callable[..., Any]:
    """Streams two events and sets the token usage before the last, as the runner does; notes what the log
    held once the last was sent."""

    @http_only
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        ctx = scope["dsguard"]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": FIRST, "more_body": True})
        ctx.attributes["llm_usage"] = USAGE
        if stop_writer:
            await asyncio.to_thread(writer_of(guard).stop)
        try:
            await send({"type": "http.response.body", "body": LAST, "more_body": False})
        except OSError as exc:
            seen["send_error"] = exc
            return
        path = writer_of(guard).path
        seen["logged"] = [r for r in read_records(path) if r.get("request_id") == ctx.request_id]

    return app


def test_the_record_of_a_stream_is_written_with_its_usage_before_its_last_chunk_is_sent(tmp_path: Path) -> None:
    guard = make_guard(tmp_path)
    seen: dict[str, Any] = {}
    with run_uvicorn(GuardMiddleware(streaming_app(guard, seen), config=guard)) as url:
        response = httpx.get(f"{url}/v1/stream")
    assert response.content == FIRST + LAST
    assert [(r["decision"], r["status"], r["usage"]) for r in seen["logged"]] == [("allow", 200, USAGE)]
    assert len(decisions(guard)) == 1


def test_a_stream_whose_record_cannot_be_written_is_cut_off_before_its_last_chunk(tmp_path: Path) -> None:
    guard = make_guard(tmp_path)
    seen: dict[str, Any] = {}
    received = b""
    with (run_uvicorn(GuardMiddleware(streaming_app(guard, seen, stop_writer=True), config=guard)) as url,
          pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", f"{url}/v1/stream") as response):
        assert response.status_code == 200
        for chunk in response.iter_raw():
            received += chunk
    assert received == FIRST
    assert isinstance(seen["send_error"], ConnectionError)


def test_a_client_that_leaves_before_the_last_chunk_is_still_recorded(tmp_path: Path) -> None:
    guard = make_guard(tmp_path)

    @http_only
    async def endless(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": FIRST, "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass

    with run_uvicorn(GuardMiddleware(endless, config=guard)) as url:
        with httpx.stream("GET", f"{url}/v1/stream") as response:
            next(response.iter_raw())
            request_id = response.headers["x-request-id"]
        until(lambda: request_id in decisions(guard))
    assert decisions(guard)[request_id]["status"] == 200


def wsgi_answer(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "12")])
    return [b'{"ok": true}']


@pytest.fixture
def wsgi_guard(tmp_path: Path) -> Iterator[tuple[str, Guard]]:
    guard = make_guard(tmp_path)
    middleware = GuardWSGIMiddleware(wsgi_answer, config=guard)
    try:
        with run_werkzeug(middleware) as url:
            yield url, guard
    finally:
        middleware.close()


def test_a_wsgi_response_waits_until_its_record_is_written(wsgi_guard: tuple[str, Guard]) -> None:
    url, guard = wsgi_guard
    writer = writer_of(guard)
    assert httpx.get(f"{url}/v1/models").status_code == 200
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with writer.hold():
            pending = pool.submit(httpx.get, f"{url}/v1/models", timeout=30)
            until(lambda: not writer.wait_written(0))
            assert not concurrent.futures.wait([pending], timeout=0.3).done, "answered before its record was written"
        response = pending.result()
    assert response.status_code == 200 and response.content == b'{"ok": true}'
    assert response.headers["x-request-id"] in decisions(guard)


def test_a_wsgi_call_is_answered_503_audit_unavailable_when_the_writer_has_stopped(
        wsgi_guard: tuple[str, Guard]) -> None:
    url, guard = wsgi_guard
    assert httpx.get(f"{url}/v1/models").status_code == 200
    writer_of(guard).stop()
    response = httpx.get(f"{url}/v1/models")
    assert (response.status_code, response.json()["error"]["code"]) == (503, "audit_unavailable")
    denied = httpx.request("TRACE", f"{url}/v1/models")
    assert (denied.status_code, denied.json()["error"]["code"]) == (503, "audit_unavailable")


def test_a_wsgi_stream_whose_record_cannot_be_written_is_cut_off_before_it_ends(tmp_path: Path) -> None:
    guard = make_guard(tmp_path)

    def stream(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        yield FIRST
        writer_of(guard).stop()
        yield LAST

    middleware = GuardWSGIMiddleware(stream, config=guard)
    received = b""
    try:
        with (run_werkzeug(middleware) as url, pytest.raises(httpx.RemoteProtocolError),
              httpx.stream("GET", f"{url}/v1/stream") as response):
            for chunk in response.iter_raw():
                received += chunk
    finally:
        middleware.close()
    assert received == FIRST + LAST, "without a Content-Length the end of the chunked body is what is withheld"


def whole_decisions(folder: Path) -> dict[str, dict[str, Any]]:
    """The decision records of every file of the log (torn lines left out)."""
    records = {}
    for path in log_files(folder / "audit" / "audit.jsonl"):
        for line in path.read_bytes().splitlines(keepends=True):
            if line.endswith(b"\n") and (record := json.loads(line))["type"] == "decision":
                records[record["request_id"]] = record
    return records


SERVE_WITH_FILES_UP_TO_8_KIB = (
    "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192)); "
    "sys.argv = ['dsguard', *sys.argv[1:]]; runpy.run_module('dsguard.cli', run_name='__main__')")


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_on_a_full_disk_the_call_whose_record_fails_is_answered_503_and_every_answered_call_is_logged(
        tmp_path: Path) -> None:
    """The server may write no file beyond 8 KiB (RLIMIT_FSIZE): the log's writes fail as on a full disk."""
    (tmp_path / "dsguard.toml").write_text('[transport]\nrequire_https = false\n[audit]\npath = "audit/audit.jsonl"\n'
                                           'durability = "written"\n')
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVE_WITH_FILES_UP_TO_8_KIB, "serve", "--config", "dsguard.toml",
                               "--port", str(port), "--log-level", "error"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        until(lambda: listening(port), 30)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            responses = [client.post("/v1/echo", json={"messages": [{"role": "user", "content": f"q{n}"}]})
                         for n in range(40)]
    finally:
        server.terminate()
        server.wait(timeout=20)
    refused = [r for r in responses if r.status_code != 200]
    assert refused and {(r.status_code, r.json()["error"]["code"]) for r in refused} == {(503, "audit_unavailable")}
    records = whole_decisions(tmp_path)
    assert all(r.headers["x-request-id"] in records for r in responses if r.status_code == 200)
    assert {(records[r.headers["x-request-id"]]["reason"], records[r.headers["x-request-id"]]["status"])
            for r in refused} <= {("audit_unavailable", 503)}, "a refusal is recorded afterwards, when it can be"
    result = verify_log([tmp_path / "audit" / "audit.jsonl"])
    assert result.errors == [] and {f.kind for f in result.findings} >= {"torn_line", "restart"}
