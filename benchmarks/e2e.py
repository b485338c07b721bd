"""What end-to-end encryption ([e2e]) adds to a request: server µs, client µs and bytes on the wire.

Side by side, in one asyncio loop, through the same guard (transport checks off, hygiene on,
[e2e] with required = false so both bodies are accepted):
  plaintext  POST /v1/chat/completions with the ~230-byte OpenAI chat body as application/json
  sealed     the same body sealed by the client (a fresh envelope per call: replays are refused)
The app answers a ~190-byte JSON, or, for the stream rows, 32 server-sent events of ~150 bytes.
Client-side costs (sealing the request, opening the answer) are timed apart.

Run from the repository root:  python benchmarks/e2e.py [--iterations 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from _harness import BenchRequest, environment, median, positive_int, table, time_calls
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message

import dsguard
from dsguard.config import parse_config
from dsguard.crypto.e2e import MEDIA_TYPE, ServerKey, seal_request
from dsguard.crypto.e2e_records import ResponseOpener, ResponseSealer

PACKAGES = ("dsguard", "starlette", "cryptography")
KEY_ENV = "DSGUARD_BENCH_E2E_KEY"
CHAT_BODY = json.dumps({
    "model": "deepseek-chat",
    "messages": [{"role": "system", "content": "You are a concise assistant."},
                 {"role": "user", "content": "Explain zero-trust API security in two sentences."}],
    "max_tokens": 128, "temperature": 0.2,
}, separators=(",", ":")).encode()
ANSWER = json.dumps({"id": "chatcmpl-bench", "object": "chat.completion", "model": "deepseek-chat",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "Verify every call."},
                                  "finish_reason": "stop"}]}, separators=(",", ":")).encode()
EVENT = b"data: " + json.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "deepseek-chat",
                                "choices": [{"index": 0, "delta": {"content": "token "}}]}).encode() + b"\n\n"
EVENTS = 32


async def completions(request: Request) -> Response:
    await request.body()
    return Response(ANSWER, media_type="application/json")


async def stream(request: Request) -> Response:
    await request.body()

    async def events() -> AsyncIterator[bytes]:
        for _ in range(EVENTS):
            yield EVENT

    return StreamingResponse(events(), media_type="text/event-stream")


def guarded_app() -> ASGIApp:
    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"]),
                            Route("/v1/stream", stream, methods=["POST"])])
    toml = f'[transport]\nenabled = false\n[e2e]\nprivate_key = "env:{KEY_ENV}"\nrequired = false\n'
    return dsguard.GuardMiddleware(app, config=parse_config(toml, file="<bench>"))


def scope(path: str, media_type: str, body: bytes) -> dict[str, Any]:
    request = BenchRequest("POST", path, headers=(("Content-Type", media_type),), body=body)
    return request.scope()


class Wire:
    """Receives one call's body and counts the bytes of the answer."""

    __slots__ = ("body", "sent", "status")

    def __init__(self, body: bytes) -> None:
        self.body: bytes | None = body
        self.sent = 0
        self.status = 0

    async def receive(self) -> Message:
        body, self.body = self.body, None
        if body is None:
            await asyncio.get_running_loop().create_future()
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        self.sent += len(message.get("body", b""))


async def run(app: ASGIApp, calls: list[tuple[dict[str, Any], bytes]]) -> tuple[float, int]:
    """µs per call over ``calls``, and the answer bytes of the last one."""
    sent = 0
    start = time.perf_counter_ns()
    for call_scope, body in calls:
        wire = Wire(body)
        await app(call_scope.copy(), wire.receive, wire.send)
        if wire.status != 200:
            raise RuntimeError(f"the guarded app answered {wire.status}, not 200")
        sent = wire.sent
    return (time.perf_counter_ns() - start) / len(calls) / 1000, sent


def sealed_calls(key: ServerKey, path: str, count: int) -> list[tuple[dict[str, Any], bytes]]:
    now = int(time.time())
    envelopes = [seal_request(key, "POST", path.encode(), CHAT_BODY, now)[0] for _ in range(count)]
    return [(scope(path, MEDIA_TYPE, envelope), envelope) for envelope in envelopes]


def server_side(app: ASGIApp, key: ServerKey, path: str, args: argparse.Namespace) -> dict[str, Any]:
    plain_call = (scope(path, "application/json", CHAT_BODY), CHAT_BODY)

    async def main() -> dict[str, Any]:
        await run(app, [plain_call] * args.warmup)
        await run(app, sealed_calls(key, path, args.warmup))
        plain, sealed = [], []
        plain_bytes = sealed_bytes = 0
        for _ in range(args.repeats):
            calls = sealed_calls(key, path, args.iterations)
            us, plain_bytes = await run(app, [plain_call] * args.iterations)
            plain.append(us)
            us, sealed_bytes = await run(app, calls)
            sealed.append(us)
        return {"plain": median(plain), "sealed": median(sealed), "plain_bytes": plain_bytes,
                "sealed_bytes": sealed_bytes, "request_bytes": len(calls[-1][1])}

    return asyncio.run(main())


def client_side(key: ServerKey, args: argparse.Namespace) -> dict[str, float]:
    _, context = seal_request(key, "POST", b"/v1/chat/completions", CHAT_BODY, int(time.time()))
    sealer = ResponseSealer(context)
    sealed_answer = sealer.feed(ANSWER) + sealer.finish()

    def open_answer() -> None:
        opener = ResponseOpener(context)
        opener.feed(sealed_answer)
        opener.finish()

    return time_calls({
        "seal request": lambda: seal_request(key, "POST", b"/v1/chat/completions", CHAT_BODY, 0),
        "open answer": open_answer,
    }, number=max(args.iterations // 4, 100), repeats=args.repeats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=positive_int, default=2000)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--warmup", type=positive_int, default=300)
    args = parser.parse_args()
    private = X25519PrivateKey.generate()
    os.environ[KEY_ENV] = base64.b64encode(private.private_bytes_raw()).decode()
    key = ServerKey.of(private.public_key())
    app = guarded_app()
    print("\n".join(environment(PACKAGES)))
    rows = []
    for label, path in (("JSON answer", "/v1/chat/completions"), (f"{EVENTS} SSE events", "/v1/stream")):
        result = server_side(app, key, path, args)
        rows.append([label, f"{result['plain']:.1f}", f"{result['sealed']:.1f}",
                     f"+{result['sealed'] - result['plain']:.1f}", f"{result['sealed'] / result['plain']:.2f}x",
                     f"{len(CHAT_BODY)} -> {result['request_bytes']} (+{result['request_bytes'] - len(CHAT_BODY)})",
                     f"{result['plain_bytes']} -> {result['sealed_bytes']} "
                     f"(+{result['sealed_bytes'] - result['plain_bytes']})"])
    print(f"\nserver, in-process through GuardMiddleware ({args.iterations} calls x {args.repeats} repeats, median):")
    print(table(["answer", "plaintext µs", "sealed µs", "added µs", "ratio", "request bytes", "answer bytes"],
                rows))
    client = client_side(key, args)
    print(f"\nclient (best of {args.repeats}):")
    print(table(["step", "µs/call"], [[name, f"{us:.1f}"] for name, us in client.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
