"""W3C trace context: a trusted caller's trace is continued, the app's spans can nest under dsguard's,
and a trace context that is not continued never reaches the app."""

from __future__ import annotations

import json

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.sync.client import connect

from dsguard import GuardMiddleware, GuardWSGIMiddleware
from dsguard.guard import Guard
from dsguard.telemetry.tracing import parse_traceparent

from .conftest import run_uvicorn, run_werkzeug
from .helpers import InProcess, config

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
INCOMING = f"00-{TRACE}-{PARENT}-01"
STATE = "vendor=opaque-value"


def settings(trace_context: str = "trusted", ratio: float = 1.0) -> str:
    return f"""
[transport]
require_https = false
[server]
trusted_proxies = ["10.0.0.0/8"]
[telemetry]
routes = ["/headers"]
trace_context = "{trace_context}"
trace_sample_ratio = {ratio}
"""


async def headers(request: Request) -> JSONResponse:
    return JSONResponse({"traceparent": request.headers.get("traceparent"),
                         "tracestate": request.headers.get("tracestate")})


def app() -> Starlette:
    return Starlette(routes=[Route("/headers", headers)])


def traced(text: str) -> tuple[Guard, InMemorySpanExporter]:
    guard = Guard(config(text))
    exporter = InMemorySpanExporter()
    assert guard.telemetry is not None
    guard.telemetry.add_span_processor(SimpleSpanProcessor(exporter))
    return guard, exporter


def call(text: str, peer: str, sent: dict[str, str]) -> tuple[dict[str, str | None], list[ReadableSpan]]:
    guard, exporter = traced(text)
    response = InProcess(GuardMiddleware(app(), config=guard), peer=peer).get("/headers", headers=sent)
    assert response.status_code == 200
    return response.json(), list(exporter.get_finished_spans())


def root_of(spans: list[ReadableSpan]) -> ReadableSpan:
    roots = [span for span in spans if span.name.startswith("dsguard ")]
    assert len(roots) == 1
    return roots[0]


def test_a_trusted_callers_trace_is_continued_and_the_app_nests_under_dsguard() -> None:
    seen, spans = call(settings(), "10.1.2.3", {"traceparent": INCOMING, "tracestate": STATE})
    root = root_of(spans)
    assert root.context is not None and root.parent is not None
    assert f"{root.context.trace_id:032x}" == TRACE
    assert f"{root.parent.span_id:016x}" == PARENT and root.parent.is_remote
    assert all(span.context is not None and span.context.trace_id == root.context.trace_id for span in spans)
    assert seen == {"traceparent": f"00-{TRACE}-{root.context.span_id:016x}-01", "tracestate": STATE}


@pytest.mark.parametrize(("trace_context", "peer"), [("trusted", "203.0.113.9"), ("never", "10.1.2.3")])
def test_a_trace_context_not_continued_is_replaced_before_the_app(trace_context: str, peer: str) -> None:
    seen, spans = call(settings(trace_context), peer, {"traceparent": INCOMING, "tracestate": STATE})
    root = root_of(spans)
    assert root.context is not None and root.parent is None
    assert f"{root.context.trace_id:032x}" != TRACE
    assert seen == {"traceparent": f"00-{root.context.trace_id:032x}-{root.context.span_id:016x}-01",
                    "tracestate": None}


def test_always_continues_any_callers_trace() -> None:
    _, spans = call(settings("always"), "203.0.113.9", {"traceparent": INCOMING})
    assert f"{root_of(spans).context.trace_id:032x}" == TRACE  # type: ignore[union-attr]


def test_a_caller_that_does_not_sample_is_not_traced_and_its_context_passes_on() -> None:
    unsampled = f"00-{TRACE}-{PARENT}-00"
    seen, spans = call(settings(), "10.1.2.3", {"traceparent": unsampled, "tracestate": STATE})
    assert spans == []
    assert seen == {"traceparent": unsampled, "tracestate": STATE}


def test_an_untraced_call_forwards_no_trace_context() -> None:
    seen, spans = call(settings(ratio=0.0), "203.0.113.9", {"traceparent": INCOMING, "tracestate": STATE})
    assert spans == []
    assert seen == {"traceparent": None, "tracestate": None}
    seen, spans = call(settings(ratio=0.0), "203.0.113.9", {})
    assert spans == [] and seen == {"traceparent": None, "tracestate": None}
    seen, spans = call(settings(ratio=0.0), "203.0.113.9", {"tracestate": STATE})
    assert spans == [] and seen == {"traceparent": None, "tracestate": None}


@pytest.mark.parametrize("value", [
    f"00-{TRACE.upper()}-{PARENT}-01", f"ff-{TRACE}-{PARENT}-01", f"00-{'0' * 32}-{PARENT}-01",
    f"00-{TRACE}-{'0' * 16}-01", f"00-{TRACE}-{PARENT}-01-extra", f"00-{TRACE[:-1]}-{PARENT}-01", "garbage",
])
def test_a_malformed_traceparent_starts_a_new_trace(value: str) -> None:
    assert parse_traceparent(value) is None
    _, spans = call(settings(), "10.1.2.3", {"traceparent": value})
    root = root_of(spans)
    assert root.parent is None and f"{root.context.trace_id:032x}" != TRACE  # type: ignore[union-attr]


def test_a_later_version_with_more_fields_is_read() -> None:
    assert parse_traceparent(f"01-{TRACE}-{PARENT}-01-future") == (int(TRACE, 16), int(PARENT, 16), 1)


def test_uvicorn_app_receives_dsguards_traceparent() -> None:
    guard, exporter = traced(settings("always"))
    with run_uvicorn(GuardMiddleware(app(), config=guard)) as url:
        seen = httpx.get(url + "/headers", headers={"traceparent": INCOMING}).json()
    root = root_of(list(exporter.get_finished_spans()))
    assert root.context is not None
    assert seen["traceparent"] == f"00-{TRACE}-{root.context.span_id:016x}-01"


def test_werkzeug_app_receives_dsguards_traceparent_and_no_untrusted_tracestate() -> None:
    def wsgi(environ, start_response):  # type: ignore[no-untyped-def]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"traceparent": environ.get("HTTP_TRACEPARENT"),
                            "tracestate": environ.get("HTTP_TRACESTATE")}).encode()]

    guard, exporter = traced(settings())
    with run_werkzeug(GuardWSGIMiddleware(wsgi, config=guard)) as url:
        seen = httpx.get(url + "/headers", headers={"traceparent": INCOMING, "tracestate": STATE}).json()
    root = root_of(list(exporter.get_finished_spans()))
    assert root.context is not None and root.parent is None  # 127.0.0.1 is not a trusted proxy here
    assert seen == {"traceparent": f"00-{root.context.trace_id:032x}-{root.context.span_id:016x}-01",
                    "tracestate": None}


def test_a_websocket_app_receives_dsguards_traceparent_not_an_untrusted_one() -> None:
    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(websocket.headers.get("traceparent") or "none")
        await websocket.close()

    guard, _ = traced(settings())  # the loopback peer is not trusted: a new trace, handed to the app
    with run_uvicorn(GuardMiddleware(Starlette(routes=[WebSocketRoute("/ws", socket)]), config=guard)) as url, \
            connect(url.replace("http", "ws") + "/ws", additional_headers={"traceparent": INCOMING}) as ws:
        seen = ws.recv()
    parsed = parse_traceparent(seen)
    assert parsed is not None and f"{parsed[0]:032x}" != TRACE and parsed[2] == 1
