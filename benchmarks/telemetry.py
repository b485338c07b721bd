"""What telemetry adds per request: dsguard with and without ``[telemetry]``, side by side.

Stacks (the request and app of overhead.py; dsguard with its transport, hygiene and JWT checks):
  bare               the Starlette app alone
  dsguard            dsguard without [telemetry]
  + metrics          [telemetry]: per-call metrics and Server-Timing (no span processor)
  + metrics, spans   the same with spans sent to a BatchSpanProcessor whose exporter drops them

Also: the cost of one scrape of /metrics once the tables hold the series of the run.

Run from the repository root:  python benchmarks/telemetry.py [--iterations 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence

from _harness import all_answer_200, environment, in_process_table, positive_int, time_in_process
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from overhead import DSGUARD_TOML, bare_app, bench_request
from starlette.types import ASGIApp

import dsguard
from dsguard.config import parse_config
from dsguard.guard import Guard

PACKAGES = ("dsguard", "starlette", "opentelemetry-sdk", "opentelemetry-exporter-prometheus", "prometheus-client")
TELEMETRY_TOML = '[telemetry]\nroutes = ["/v1/chat/completions"]\n'


class DroppingExporter(SpanExporter):
    """Takes spans and drops them: the processor's work without a network's."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def build_stacks() -> tuple[dict[str, ASGIApp], Guard, DroppingExporter]:
    plain = Guard(parse_config(DSGUARD_TOML, file="<telemetry.py>"))
    measured = Guard(parse_config(DSGUARD_TOML + TELEMETRY_TOML, file="<telemetry.py>"))
    traced = Guard(parse_config(DSGUARD_TOML + TELEMETRY_TOML, file="<telemetry.py>"))
    exporter = DroppingExporter()
    assert traced.telemetry is not None
    traced.telemetry.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=65536))
    apps = {
        "bare": bare_app(),
        "dsguard": dsguard.GuardMiddleware(bare_app(), config=plain),
        "+ metrics": dsguard.GuardMiddleware(bare_app(), config=measured),
        "+ metrics, spans": dsguard.GuardMiddleware(bare_app(), config=traced),
    }
    return apps, measured, exporter


def scrape_cost(guard: Guard, number: int) -> tuple[float, int]:
    endpoint = guard.endpoints["/metrics"]

    async def scrape() -> bytes:
        return (await endpoint("GET", None))[2]

    async def main() -> tuple[float, int]:
        body = await scrape()
        start = time.perf_counter_ns()
        for _ in range(number):
            await scrape()
        return (time.perf_counter_ns() - start) / number / 1000, len(body)

    return asyncio.run(main())


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=positive_int, default=20_000, help="requests per repeat")
    p.add_argument("--repeats", type=positive_int, default=5, help="repeats (the median is reported)")
    p.add_argument("--warmup", type=int, default=2_000, help="warm-up requests per stack")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    request = bench_request()
    apps, measured, exporter = build_stacks()
    print("\n".join(environment(PACKAGES)))
    print(f"request: {request.method} {request.target}, {len(request.body)}-byte JSON body\n\nsanity:")
    if not all_answer_200(apps, request):
        return 1
    runs = time_in_process(apps, request, iterations=args.iterations, repeats=args.repeats, warmup=args.warmup)
    print(f"\nin-process ({args.iterations} requests x {args.repeats} repeats, asyncio loop, no server):")
    print(in_process_table(runs, "telemetry"))
    us, size = scrape_cost(measured, 200)
    print(f"\none scrape of /metrics ({size} bytes): {us:.0f} us; spans exported: {exporter.spans}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
