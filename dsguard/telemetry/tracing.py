"""One span per call with a child span per check, built after the response from the checks' timings.

The pipeline only appends ``(check, nanoseconds)`` to ``ctx.timings``; the spans are made
afterwards, as finished spans, and handed to the span processors (``on_end``), so tracing adds
nothing between checks. Children are laid end to end from the call's start. Building them as
finished spans costs a fifth of starting and ending live ones through a tracer (measured: about
20 µs against 95 µs for a call with five checks).

Attributes are chosen, never copied from the call: method, route (bounded, see
:class:`~dsguard.telemetry.labels.RouteNames`), status, decision, denial code, request id, check
name. No header, token, query, path outside the configured routes, body or prompt is recorded.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from ..context import RequestContext

SAMPLED = TraceFlags(TraceFlags.SAMPLED)
ERROR = Status(StatusCode.ERROR)


def _random_id(bits: int) -> int:
    return random.getrandbits(bits) or 1  # zero is the invalid id


class CallTracer:
    def __init__(self, processors: Sequence[SpanProcessor], resource: Resource, sample_ratio: float) -> None:
        self.processors = processors
        self.resource = resource
        self.sample_ratio = sample_ratio
        self.scope = InstrumentationScope("dsguard")

    def record(self, ctx: RequestContext, *, method: str, route: str, status: int, decision: str, code: str,
               denied_by: str | None, start_ns: int, end_ns: int) -> None:
        if self.sample_ratio < 1.0 and random.random() >= self.sample_ratio:
            return
        trace_id = _random_id(128)
        root = SpanContext(trace_id, _random_id(64), False, SAMPLED)
        codes = {denial.check: denial.code for denial in ctx.denials_reported}
        if denied_by is not None:
            codes[denied_by] = code
        spans = []
        offset = start_ns
        for name, duration in ctx.timings:
            attributes = {"dsguard.check": name}
            check_code = codes.get(name)
            if check_code is not None:
                attributes["dsguard.code"] = check_code
            spans.append(ReadableSpan(
                f"check {name}", SpanContext(trace_id, _random_id(64), False, SAMPLED), root, self.resource,
                attributes, kind=SpanKind.INTERNAL, start_time=offset, end_time=offset + duration,
                instrumentation_scope=self.scope))
            offset += duration
        root_attributes: dict[str, str | int] = {
            "http.request.method": method, "http.route": route, "http.response.status_code": status,
            "dsguard.decision": decision, "dsguard.request_id": ctx.request_id,
        }
        if code != "none":
            root_attributes["dsguard.code"] = code
        spans.append(ReadableSpan(
            f"dsguard {method} {route}", root, None, self.resource, root_attributes, kind=SpanKind.SERVER,
            status=ERROR if status >= 500 else Status(StatusCode.UNSET), start_time=start_ns,
            end_time=max(end_ns, offset), instrumentation_scope=self.scope))
        for processor in self.processors:
            for span in spans:
                processor.on_end(span)
