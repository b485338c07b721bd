"""Overhead of dsguard against a bare app and the stack users assemble today, side by side.

Stacks:
  bare     a Starlette app with one chat-completions route
  peer     the same app behind a BaseHTTPMiddleware doing pyjwt HS256, a pycasbin RBAC decision,
           a `limits` moving-window rate limit and a few SQLi/XSS regexes on the query
  dsguard  the same app behind dsguard.GuardMiddleware with every check that exists

Run from the repository root:  python benchmarks/overhead.py [--duration 10] [--skip-served]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qsl

import casbin
import jwt
import uvicorn
from _harness import (
    BenchRequest,
    WrkResult,
    call_asgi,
    environment,
    free_port,
    http_status,
    median,
    positive_int,
    profile_in_process,
    run_wrk,
    serve,
    table,
    time_calls,
    time_in_process,
)
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

import dsguard
from dsguard.config import parse_config

STACKS = ("bare", "peer", "dsguard")
PACKAGES = ("dsguard", "starlette", "uvicorn", "httptools", "uvloop", "pyjwt", "casbin", "limits")
POLICY_DIR = Path(__file__).resolve().parent / "peer_policy"
JWT_KEY = "benchmark-only-hs256-key-0123456789abcdef"
AUDIENCE = "deepseek-api"
JWT_KEY_ENV = "DSGUARD_BENCH_JWT_KEY"
os.environ.setdefault(JWT_KEY_ENV, JWT_KEY)  # the served stacks, in subprocesses, read it too
TRANSPORT_TOML = """\
[server]
trusted_proxies = ["127.0.0.1/32"]
[transport]
require_https = true
"""
HYGIENE_TOML = """\
[hygiene]
max_body = "1MiB"
"""
IDENTITY_TOML = f"""\
[identity.jwt]
algorithms = ["HS256"]
secret = "env:{JWT_KEY_ENV}"
issuer = "https://idp.example.com"
audience = "{AUDIENCE}"
sender_constraint = "off"
"""
DSGUARD_TOML = TRANSPORT_TOML + HYGIENE_TOML + IDENTITY_TOML
# dsguard with its checks turned on one section at a time (--breakdown)
BREAKDOWN = {
    "dsguard, no checks": "[transport]\nenabled = false\n[hygiene]\nenabled = false\n",
    "dsguard, transport": TRANSPORT_TOML + "[hygiene]\nenabled = false\n",
    "dsguard, + hygiene": TRANSPORT_TOML + HYGIENE_TOML,
}
CHAT_BODY = {
    "model": "deepseek-chat",
    "messages": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Explain zero-trust API security in two sentences."},
    ],
    "max_tokens": 128,
    "temperature": 0.2,
}


def bench_request() -> BenchRequest:
    now = int(time.time())
    claims = {"sub": "alice", "aud": AUDIENCE, "iss": "https://idp.example.com", "iat": now, "exp": now + 900,
              "jti": f"bench-{now}"}
    token = jwt.encode(claims, JWT_KEY, algorithm="HS256")
    return BenchRequest(
        method="POST",
        path="/v1/chat/completions",
        query="user=alice",
        headers=(
            ("Content-Type", "application/json"),
            ("Authorization", f"Bearer {token}"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-For", "203.0.113.7"),
        ),
        body=json.dumps(CHAT_BODY, separators=(",", ":")).encode(),
    )


# --- the three stacks -----------------------------------------------------------------------------------------


async def chat_completions(request: Request) -> Response:
    body = await request.body()
    return JSONResponse({"id": "chatcmpl-bench", "object": "chat.completion", "request_bytes": len(body),
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                      "finish_reason": "stop"}]})


async def list_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": "deepseek-chat", "object": "model"}]})


def bare_app() -> Starlette:
    return Starlette(routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                             Route("/v1/models", list_models, methods=["GET"])])


_ATTACK = re.compile(
    r"(\bunion\b[\s\S]*\bselect\b|\bor\b\s+\d+\s*=\s*\d+|'\s*or\s*'|;\s*drop\s+table|--\s*$|/\*|\bsleep\s*\("
    r"|<\s*script|javascript\s*:|\bon\w+\s*=|<\s*iframe|<\s*img[^>]+src)",
    re.IGNORECASE,
)


class PeerGuard(BaseHTTPMiddleware):
    """pyjwt + pycasbin + limits + regex query filter, as commonly assembled by hand."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app)
        self.enforcer = casbin.Enforcer(str(POLICY_DIR / "model.conf"), str(POLICY_DIR / "policy.csv"))
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.rate = parse("1000000/second")

    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return JSONResponse({"error": "missing bearer token"}, status_code=401)
        try:
            claims = jwt.decode(token, JWT_KEY, algorithms=["HS256"], audience=AUDIENCE)
        except jwt.InvalidTokenError:
            return JSONResponse({"error": "invalid token"}, status_code=401)
        subject = claims["sub"]
        if not self.enforcer.enforce(subject, request.url.path, request.method):
            return JSONResponse({"error": "forbidden"}, status_code=403)
        if not self.limiter.hit(self.rate, "subject", subject):
            return JSONResponse({"error": "rate limited"}, status_code=429)
        for key, value in request.query_params.multi_items():
            if _ATTACK.search(key) or _ATTACK.search(value):
                return JSONResponse({"error": "blocked"}, status_code=400)
        return await call_next(request)


def build_stack(name: str) -> ASGIApp:
    app = bare_app()
    if name == "bare":
        return app
    if name == "peer":
        return PeerGuard(app)
    if name == "dsguard":
        return dsguard.GuardMiddleware(app, config=parse_config(DSGUARD_TOML, file="<overhead.py>"))
    raise ValueError(name)


# --- sanity, in-process, served ---------------------------------------------------------------------------------


def sanity(apps: dict[str, ASGIApp], request: BenchRequest) -> bool:
    cases = [(name, "benchmark request", request, 200) for name in apps]
    cases += [("peer", "no Authorization", request.without_header("authorization"), 401),
              ("dsguard", "no X-Forwarded-Proto", request.without_header("x-forwarded-proto"), 403),
              ("dsguard", "no Authorization", request.without_header("authorization"), 401)]
    ok = True
    width = max(map(len, apps))
    for name, label, req, expected in cases:
        status, body = asyncio.run(call_asgi(apps[name], req))
        good = status == expected
        ok &= good
        print(f"  {'ok  ' if good else 'FAIL'} {name:{width}} {label:22} -> {status} (expected {expected})"
              + ("" if good else f" {body[:200]!r}"))
    return ok


def in_process(apps: dict[str, ASGIApp], request: BenchRequest, args: argparse.Namespace) -> str:
    runs = time_in_process(apps, request, iterations=args.iterations, repeats=args.repeats, warmup=args.warmup)
    base = median(runs["bare"])
    rows = [(name, f"{median(r):.1f}", f"{min(r):.1f}", f"{max(r):.1f}", f"{median(r) / base:.2f}x")
            for name, r in runs.items()]
    return table(("stack", "us/req (median)", "min", "max", "vs bare"), rows)


def peer_parts(peer: PeerGuard, request: BenchRequest, number: int) -> str:
    """What each building block of the peer stack costs on its own: the budget later dsguard checks compete for."""
    token = dict(request.headers)["Authorization"].removeprefix("Bearer ")
    query = parse_qsl(request.query)
    calls = {
        "pyjwt HS256 decode": lambda: jwt.decode(token, JWT_KEY, algorithms=["HS256"], audience=AUDIENCE),
        "casbin enforce": lambda: peer.enforcer.enforce("alice", request.path, request.method),
        "limits moving-window hit": lambda: peer.limiter.hit(peer.rate, "subject", "alice"),
        "query regexes": lambda: [_ATTACK.search(text) for pair in query for text in pair],
    }
    rows = [(name, f"{us:.1f}") for name, us in time_calls(calls, number=number).items()]
    return table(("peer building block (alone)", "us/call"), rows)


def served(request: BenchRequest, args: argparse.Namespace, http: str) -> str:
    results: dict[str, list[WrkResult]] = {name: [] for name in STACKS}
    for _ in range(args.rounds):
        for name in STACKS:
            port = free_port()
            argv = [sys.executable, __file__, "--serve", name, "--port", str(port), "--http", http]
            with serve(argv, port) as proc:
                status = http_status(port, request)
                if status != 200:
                    raise SystemExit(f"{name} served {status} to the benchmark request")
                if args.warmup_served > 0:
                    run_wrk(port, request, duration=args.warmup_served, connections=args.connections, wrk=args.wrk)
                result = run_wrk(port, request, duration=args.duration, connections=args.connections, wrk=args.wrk,
                                 server_pid=proc.pid)
            if result.bad:
                raise SystemExit(f"{name}: {result.bad} of {result.requests} requests failed under load")
            results[name].append(result)
            print(f"  {name:8} {result.rps:7.0f} req/s  p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms  "
                  f"server CPU {result.server_cpu_us:.0f} us/req")
    base = median([r.rps for r in results["bare"]])
    rows = []
    for name, runs in results.items():
        rps = median([r.rps for r in runs])
        rows.append((name, f"{rps:.0f}", f"{median([r.p50_ms for r in runs]):.2f}",
                     f"{median([r.p99_ms for r in runs]):.2f}", f"{median([r.server_cpu_us for r in runs]):.0f}",
                     f"{rps / base:.2f}x"))
    return table(("stack", "req/s (median)", "p50 ms", "p99 ms", "server CPU us/req", "vs bare"), rows)


def run_server(name: str, port: int, http: str) -> None:
    # proxy_headers off: forwarding headers reach every stack untouched, as in-process (dsguard reads them itself)
    uvicorn.run(build_stack(name), host="127.0.0.1", port=port, http=http, workers=1,
                proxy_headers=False, log_level="warning", access_log=False)



def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=positive_int, default=20_000, help="in-process requests per repeat")
    p.add_argument("--repeats", type=positive_int, default=5, help="in-process repeats (the median is reported)")
    p.add_argument("--warmup", type=int, default=2_000, help="in-process warm-up requests per stack")
    p.add_argument("--duration", type=positive_int, default=10, help="seconds of wrk load per stack and round")
    p.add_argument("--warmup-served", type=int, default=2, help="seconds of wrk warm-up per server (0: none)")
    p.add_argument("--rounds", type=positive_int, default=1, help="served rounds (the median is reported)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (one wrk thread)")
    p.add_argument("--http", nargs="+", choices=("h11", "httptools"), default=["h11", "httptools"],
                   help="uvicorn HTTP parser(s); each is measured in turn")
    p.add_argument("--wrk", default="wrk", help="wrk executable")
    p.add_argument("--skip-served", action="store_true", help="only the in-process measurement")
    p.add_argument("--breakdown", action="store_true",
                   help="also time dsguard in-process with no checks, then with transport only")
    p.add_argument("--profile", choices=STACKS, help="print a cProfile of one stack's in-process loop and exit")
    p.add_argument("--serve", choices=STACKS, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    if args.serve:
        run_server(args.serve, args.port, args.http[0])
        return 0
    request = bench_request()
    apps = {name: build_stack(name) for name in STACKS}
    if args.breakdown:
        partial = {name: dsguard.GuardMiddleware(bare_app(), config=parse_config(text, file=f"<{name}>"))
                   for name, text in BREAKDOWN.items()}
        apps = {"bare": apps["bare"], "peer": apps["peer"], **partial, "dsguard": apps["dsguard"]}
    if args.profile:
        print(profile_in_process(apps[args.profile], request, iterations=args.iterations))
        return 0
    print("\n".join(environment(PACKAGES)))
    print(f"request: {request.method} {request.target}, {len(request.body)}-byte JSON body, "
          f"{len(request.headers)} headers + host/content-length, peer 127.0.0.1")
    print("\nsanity:")
    if not sanity(apps, request):
        return 1
    print(f"\nin-process ({args.iterations} requests x {args.repeats} repeats, asyncio loop, no server):")
    print(in_process(apps, request, args))
    print()
    peer = apps["peer"]
    assert isinstance(peer, PeerGuard)
    print(peer_parts(peer, request, number=max(args.iterations // 10, 100)))
    if args.skip_served:
        return 0
    if shutil.which(args.wrk) is None:
        print(f"\nserved: skipped, {args.wrk} not found")
        return 0
    for http in args.http:
        print(f"\nserved (uvicorn, 1 worker, --http {http}, loop auto (uvloop if installed), proxy headers off; "
              f"wrk -t1 -c{args.connections} -d{args.duration}s after {args.warmup_served}s warm-up; "
              f"{args.rounds} round(s)):")
        print(served(request, args, http))
    return 0


if __name__ == "__main__":
    sys.exit(main())
