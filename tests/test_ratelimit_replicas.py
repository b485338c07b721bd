"""Four replicas sharing one redis-server: limits hold exactly across processes, not per pod.

Each replica is a separate uvicorn process (``python -m tests.test_ratelimit_replicas CONFIG PORT``)
serving a GuardMiddleware-wrapped app; the test loads all four at once from many threads with the
same key. Windows are long (an hour, a year) so that no bucket refills while a test runs: the
counts below cannot depend on timing.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dsguard import GuardMiddleware

from .conftest import free_port
from .test_ratelimit import OPEN, HeaderClaimsIdentity

REPLICAS = 4
THREADS = 16
LIMITS = """
[[rate_limits]]
key = "subject"
limit = "20/hour"
burst = 5

[[rate_limits]]
key = "tenant"
tokens = "1000/year"
"""
# 4 characters of role + 36 of content = 10 prompt tokens, plus 90 completion tokens: 100 reserved.
CHAT = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "x" * 36}], "max_tokens": 90}
PROBE = {"messages": [], "max_tokens": 0}
ROOT = Path(__file__).resolve().parent.parent


async def chat(request: Request) -> JSONResponse:
    await request.body()
    usage = request.query_params.get("usage")
    if usage is not None:
        request.state.dsguard.attributes["llm_usage"] = {"total_tokens": int(usage)}
    return JSONResponse({"choices": []})


def serve_replica(config_path: str, port: int) -> None:
    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    guard = GuardMiddleware(app, config=config_path, checks=[HeaderClaimsIdentity()])
    uvicorn.run(guard, host="127.0.0.1", port=port, log_level="warning", proxy_headers=False)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[list[str]]:
    """Base URLs of four replica processes sharing ``redis_server``."""
    path = tmp_path_factory.mktemp("replicas") / "dsguard.toml"
    path.write_text(OPEN + f'[storage]\nurl = "{redis_server}"\n' + LIMITS)
    ports = [free_port() for _ in range(REPLICAS)]
    processes = [subprocess.Popen([sys.executable, "-m", "tests.test_ratelimit_replicas", str(path), str(port)],
                                  cwd=ROOT) for port in ports]
    try:
        deadline = time.monotonic() + 60
        for process, port in zip(processes, ports, strict=True):
            while not _listening(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"replica on port {port} did not start")
                time.sleep(0.05)
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def hammer(urls: list[str], calls: list[tuple[str, dict[str, str]]], body: dict[str, object] | None = None
           ) -> list[httpx.Response]:
    """Send ``calls`` (query, headers) round-robin over ``urls`` from many threads started together."""
    start = threading.Barrier(THREADS)

    def worker(offset: int) -> list[httpx.Response]:
        with httpx.Client(timeout=30) as client:
            start.wait()
            return [client.post(f"{urls[i % len(urls)]}/v1/chat/completions{calls[i][0]}", json=body or {},
                                headers=calls[i][1]) for i in range(offset, len(calls), THREADS)]

    with ThreadPoolExecutor(THREADS) as pool:
        return [r for batch in pool.map(worker, range(THREADS)) for r in batch]


def outcomes(responses: list[httpx.Response]) -> Counter[str]:
    return Counter("ok" if r.status_code == 200 else f"{r.status_code} {r.json()['error']['code']}"
                   for r in responses)


def tokens_left(url: str, tenant: str) -> int:
    response = httpx.post(url + "/v1/chat/completions", json=PROBE,
                          headers={"x-test-subject": uuid.uuid4().hex, "x-test-tenant": tenant})
    match = re.search(r'"tenant-tokens";r=(\d+)', response.headers["ratelimit"])
    assert match
    return int(match.group(1))


def test_four_replicas_admit_exactly_limit_plus_burst_for_one_subject(replicas: list[str]) -> None:
    subject = {"x-test-subject": uuid.uuid4().hex}
    responses = hammer(replicas, [("", subject)] * 120)
    assert outcomes(responses) == {"ok": 25, "429 rate_limited": 95}


def test_four_replicas_never_overshoot_a_token_quota(replicas: list[str]) -> None:
    tenant = uuid.uuid4().hex
    calls = [("", {"x-test-subject": uuid.uuid4().hex, "x-test-tenant": tenant}) for _ in range(40)]
    responses = hammer(replicas, calls, CHAT)
    assert outcomes(responses) == {"ok": 10, "429 token_quota_exceeded": 30}
    assert tokens_left(replicas[0], tenant) == 0


def test_four_replicas_settle_reported_usage_exactly(replicas: list[str]) -> None:
    tenant = uuid.uuid4().hex
    calls = [("?usage=30", {"x-test-subject": uuid.uuid4().hex, "x-test-tenant": tenant}) for _ in range(60)]
    responses = hammer(replicas, calls, CHAT)
    admitted = outcomes(responses)["ok"]
    assert 10 <= admitted <= 1000 // 30
    expected = 1000 - 30 * admitted
    deadline = time.monotonic() + 20
    left = [tokens_left(url, tenant) for url in replicas]
    while left != [expected] * REPLICAS and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [tokens_left(url, tenant) for url in replicas]
    time.sleep(0.5)
    assert [tokens_left(url, tenant) for url in replicas] == [expected] * REPLICAS


if __name__ == "__main__":
    serve_replica(sys.argv[1], int(sys.argv[2]))
