"""Rate limits: check cost with memory vs Redis storage, and throughput across 4 replicas.

In-process: microseconds per call of dsguard's rate-limit check (``RateLimitCheck.check`` on one
context, an ``ip`` limit) with ``memory://`` and ``redis://`` storage, admitted and denied, side by
side with the baseline most Python services use, the ``limits`` library's moving-window ``hit``
(its asyncio API, memory and Redis through redis-py), and one Redis ``PING`` (a round trip's floor).

Served: 4 uvicorn processes (the replicas) behind dsguard with one ``ip`` limit, loaded together by
4 wrk processes (one per replica, all from 127.0.0.1, so every call has the same key): req/s when
every call is admitted (the limit is never reached) and when every call is denied (a ``1/hour``
limit, spent by the first call), against the same 4 replicas without a limit. The admitted column
of the denied rows shows what sharing means: Redis admits 1 call in all, memory 1 per replica.

Run from the repository root:  python benchmarks/ratelimit.py [--duration 5] [--skip-served]
Needs ``redis-server`` on PATH (and ``wrk`` for the served part).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import threading
import time
from collections.abc import Awaitable, Callable

import uvicorn
from _harness import BenchRequest, WrkResult, environment, free_port, median, positive_int, run_wrk, serve, table
from limits import parse
from limits.aio.storage import MemoryStorage as LimitsMemoryStorage
from limits.aio.storage import RedisStorage as LimitsRedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import dsguard
from dsguard.checks import ratelimit
from dsguard.checks.ratelimit import RateLimitCheck
from dsguard.config import parse_config
from dsguard.context import RequestContext
from dsguard.services import Services
from dsguard.storage.memory import MemoryStorage

PACKAGES = ("dsguard", "starlette", "uvicorn", "httptools", "uvloop", "limits", "redis")
REPLICAS = 4
OPEN = "[transport]\nrequire_https = false\n"
NEVER_REACHED = "1000000000/hour"
SPENT = "1/hour"
REQUEST = BenchRequest("GET", "/v1/models")


def limit_config(storage: str, limit: str, name: str) -> str:
    return OPEN + f'[storage]\nurl = "{storage}"\n[[rate_limits]]\nkey = "ip"\nlimit = "{limit}"\nname = "{name}"\n'


# --- in-process -------------------------------------------------------------------------------------------------


def ip_check(storage: str, limit: str, name: str) -> RateLimitCheck:
    config = parse_config(limit_config(storage, limit, name), file="<ratelimit.py>")
    (check,) = ratelimit.build(config, Services(config, MemoryStorage()))
    assert isinstance(check, RateLimitCheck)
    return check


def context() -> RequestContext:
    return RequestContext("GET", "/v1/models", b"/v1/models", b"", [], "203.0.113.7", "https")


async def per_call_us(call: Callable[[], Awaitable[object]], iterations: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(iterations):
        await call()
    return (time.perf_counter_ns() - start) / iterations / 1000


async def check_costs(redis_url: str, iterations: int, repeats: int) -> dict[str, list[float]]:
    run = time.time_ns()
    calls: dict[str, Callable[[], Awaitable[object]]] = {}
    expected: dict[str, bool] = {}
    for storage, label in (("memory://", "memory"), (redis_url, "redis")):
        for limit, outcome in ((NEVER_REACHED, "admitted"), (SPENT, "denied")):
            check = ip_check(storage, limit, f"b{run}{label}{outcome}")
            ctx = context()

            async def call(check: RateLimitCheck = check, ctx: RequestContext = ctx) -> object:
                ctx.response_headers.clear()
                return await check.check(ctx)

            calls[f"dsguard check, {label}, {outcome}"] = call
            expected[f"dsguard check, {label}, {outcome}"] = outcome == "admitted"
    item = parse(NEVER_REACHED)
    limits_memory = MovingWindowRateLimiter(LimitsMemoryStorage())
    limits_redis = MovingWindowRateLimiter(LimitsRedisStorage("async+" + redis_url, implementation="redispy"))
    calls["limits moving-window hit, memory"] = lambda: limits_memory.hit(item, f"b{run}m")
    calls["limits moving-window hit, redis"] = lambda: limits_redis.hit(item, f"b{run}r")
    client = Redis.from_url(redis_url)
    calls["redis PING (one round trip)"] = client.ping
    for name, call in calls.items():  # warm up; the first call of a "denied" check spends its limit
        await call()
        if name in expected:
            outcome = await call()
            if (outcome is None) != expected[name]:
                raise SystemExit(f"{name}: expected {'admission' if expected[name] else 'denial'}, got {outcome!r}")
        for _ in range(min(iterations, 500)):
            await call()
    results: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            results[name].append(await per_call_us(call, iterations))
    await client.aclose()
    return results


def in_process(redis_url: str, args: argparse.Namespace) -> str:
    results = asyncio.run(check_costs(redis_url, args.iterations, args.repeats))
    memory_base = median(results["limits moving-window hit, memory"])
    redis_base = median(results["limits moving-window hit, redis"])
    rows = []
    for name, runs in results.items():
        base = redis_base if "redis" in name else memory_base
        rows.append((name, f"{median(runs):.1f}", f"{min(runs):.1f}", f"{max(runs):.1f}",
                     f"{median(runs) / base:.2f}x"))
    return table(("call", "us/call (median)", "min", "max", "vs limits hit, same storage"), rows)


# --- served -----------------------------------------------------------------------------------------------------


async def list_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": "deepseek-chat", "object": "model"}]})


def run_replica(config_text: str, port: int) -> None:
    app = Starlette(routes=[Route("/v1/models", list_models)])
    guard = dsguard.GuardMiddleware(app, config=parse_config(config_text, file="<replica>"))
    uvicorn.run(guard, host="127.0.0.1", port=port, workers=1, proxy_headers=False, log_level="warning",
                access_log=False)


def load_replicas(config_text: str, args: argparse.Namespace) -> tuple[list[WrkResult], int, int]:
    """Start 4 replicas with ``config_text``, load them together, stop them.

    The wrk results of the measured run (one per replica), and the calls admitted and made in
    all (warm-up included).
    """
    ports = [free_port() for _ in range(REPLICAS)]
    servers = [serve([sys.executable, __file__, "--serve-config", config_text, "--port", str(port)], port)
               for port in ports]
    for server in servers:
        server.__enter__()
    try:
        runs: list[list[WrkResult]] = []
        for duration in (args.warmup_served, args.duration):
            if duration <= 0:
                continue
            results: list[WrkResult] = []

            def load(port: int, duration: int = duration, results: list[WrkResult] = results) -> None:
                results.append(run_wrk(port, REQUEST, duration=duration, connections=args.connections,
                                       wrk=args.wrk))

            threads = [threading.Thread(target=load, args=(port,)) for port in ports]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            runs.append(results)
        calls = sum(r.requests for results in runs for r in results)
        admitted = calls - sum(r.bad for results in runs for r in results)
        return runs[-1], admitted, calls
    finally:
        for server in reversed(servers):
            server.__exit__(None, None, None)


def served(redis_url: str, args: argparse.Namespace) -> str:
    setups: dict[str, tuple[str, str] | None] = {
        "no rate limit": None,
        "memory, admitted": ("memory://", NEVER_REACHED),
        "redis, admitted": (redis_url, NEVER_REACHED),
        "memory, denied": ("memory://", SPENT),
        "redis, denied": (redis_url, SPENT),
    }

    def config_text(setup: tuple[str, str] | None) -> str:
        """A fresh limit (its own storage keys) for every round."""
        return OPEN if setup is None else limit_config(*setup, name=f"s{time.time_ns()}")

    rows = []
    base = 0.0
    for name, setup in setups.items():
        rounds = [load_replicas(config_text(setup), args) for _ in range(args.rounds)]
        rps = median([sum(r.rps for r in results) for results, _, _ in rounds])
        base = base or rps
        last, admitted, calls = rounds[-1]
        p50 = median([r.p50_ms for r in last])
        p99 = max(r.p99_ms for r in last)
        print(f"  {name:18} {rps:7.0f} req/s  admitted {admitted} of {calls} calls (last round, warm-up included)")
        rows.append((name, f"{rps:.0f}", f"{p50:.2f}", f"{p99:.2f}", f"{admitted} / {calls}", f"{rps / base:.2f}x"))
    return table(("4 replicas", "req/s (all 4)", "p50 ms", "p99 ms (worst replica)", "admitted / calls",
                  "vs no rate limit"), rows)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=positive_int, default=5_000, help="in-process calls per repeat")
    p.add_argument("--repeats", type=positive_int, default=5, help="in-process repeats (the median is reported)")
    p.add_argument("--duration", type=positive_int, default=5, help="seconds of wrk load per setup and round")
    p.add_argument("--warmup-served", type=int, default=1, help="seconds of wrk warm-up per setup (0: none)")
    p.add_argument("--rounds", type=positive_int, default=1, help="served rounds (the median is reported)")
    p.add_argument("--connections", type=int, default=8, help="wrk connections per replica (one wrk thread)")
    p.add_argument("--wrk", default="wrk", help="wrk executable")
    p.add_argument("--skip-served", action="store_true", help="only the in-process measurement")
    p.add_argument("--serve-config", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    if args.serve_config is not None:
        run_replica(args.serve_config, args.port)
        return 0
    executable = shutil.which("redis-server")
    if executable is None:
        print("redis-server is not on PATH")
        return 1
    print("\n".join(environment(PACKAGES)))
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    argv = [executable, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with serve(argv, redis_port):
        print(f"redis-server {redis_url} (no persistence)")
        print(f"\nin-process ({args.iterations} calls x {args.repeats} repeats, asyncio loop):")
        print(in_process(redis_url, args))
        if args.skip_served:
            return 0
        if shutil.which(args.wrk) is None:
            print(f"\nserved: skipped, {args.wrk} not found")
            return 0
        print(f"\nserved ({REPLICAS} uvicorn processes, 1 worker each, GET {REQUEST.path} from 127.0.0.1, "
              f"{REPLICAS} x wrk -t1 -c{args.connections} -d{args.duration}s at once after "
              f"{args.warmup_served}s warm-up; {args.rounds} round(s)):")
        print(served(redis_url, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
