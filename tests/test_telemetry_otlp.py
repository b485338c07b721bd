"""OTLP/HTTP push to a real receiver that decodes the protobuf payloads as a collector does."""

from __future__ import annotations

import asyncio
import gzip
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from dsguard import GuardMiddleware
from dsguard.errors import ConfigError
from dsguard.guard import Guard

from .helpers import InProcess, config, starlette_app

TELEMETRY = """
[transport]
require_https = false
[telemetry]
prometheus = false
global_providers = false
routes = ["/whoami"]
otlp_interval = "1h"
"""


class Received:
    def __init__(self) -> None:
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.traces: list[ExportTraceServiceRequest] = []


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path == "/v1/metrics":
                received.metrics.append(ExportMetricsServiceRequest.FromString(body))
            elif self.path == "/v1/traces":
                received.traces.append(ExportTraceServiceRequest.FromString(body))
            self.send_response(200 if self.path in ("/v1/metrics", "/v1/traces") else 404)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def pushed_metrics(received: Received) -> dict[str, Any]:
    return {metric.name: metric for request in received.metrics for resource in request.resource_metrics
            for scope in resource.scope_metrics for metric in scope.metrics}


def attributes(point: Any) -> dict[str, str]:
    return {item.key: item.value.string_value for item in point.attributes}


@pytest.fixture
def pushed() -> Iterator[Received]:
    with otlp_receiver() as (url, received):
        guard = Guard(config(TELEMETRY + f'otlp_endpoint = "{url}"\n'))
        client = InProcess(GuardMiddleware(starlette_app(), config=guard))
        client.get("/whoami")
        client.request("TRACE", "/whoami")
        asyncio.run(guard.shutdown())
        yield received


def test_request_counts_are_pushed_by_decision_and_code(pushed: Received) -> None:
    requests = pushed_metrics(pushed)["dsguard.requests"]
    assert requests.sum.is_monotonic
    counted = {(attributes(p)["decision"], attributes(p)["code"]): p.as_int for p in requests.sum.data_points}
    assert counted == {("allow", "none"): 1, ("deny", "method_not_allowed"): 1}


def test_check_latency_is_pushed_as_an_explicit_bucket_histogram(pushed: Received) -> None:
    histogram = pushed_metrics(pushed)["dsguard.check.duration"].histogram
    points = {attributes(p)["check"]: p for p in histogram.data_points}
    assert points["transport"].count == 2
    assert sum(points["transport"].bucket_counts) == 2
    assert len(points["transport"].bucket_counts) == len(points["transport"].explicit_bounds) + 1
    assert points["transport"].min <= points["transport"].max


def test_spans_are_pushed_with_the_services_name(pushed: Received) -> None:
    spans = [span for request in pushed.traces for resource in request.resource_spans
             for scope in resource.scope_spans for span in scope.spans]
    names = {span.name for span in spans}
    assert {"dsguard GET /whoami", "dsguard TRACE /whoami", "check transport"} <= names
    services = {attribute.value.string_value for request in pushed.traces for resource in request.resource_spans
                for attribute in resource.resource.attributes if attribute.key == "service.name"}
    assert services == {"dsguard"}


def test_a_missing_otlp_exporter_package_is_refused_naming_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.metric_exporter", None)
    with pytest.raises(ConfigError, match=r"\[telemetry\] otlp_endpoint: .*opentelemetry-exporter-otlp-proto-http"):
        Guard(config(TELEMETRY + 'otlp_endpoint = "http://127.0.0.1:4318"\n'))


def test_an_otlp_endpoint_that_is_not_an_http_url_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"\[telemetry\] otlp_endpoint: expected an http\(s\) URL"):
        Guard(config(TELEMETRY + 'otlp_endpoint = "collector:4318"\n'))
