"""/healthz and /readyz: reachable without credentials, never rate limited, never telling why."""

from __future__ import annotations

import asyncio
import time

import httpx
import jwt

from dsguard import GuardMiddleware, GuardWSGIMiddleware
from dsguard.guard import Guard

from .conftest import run_redis_server, run_uvicorn, run_werkzeug
from .helpers import FailsToStart, InProcess, config, starlette_app

SECRET = "health-test-hmac-secret-0123456789abcdef"
GUARDED = f"""
[transport]
require_https = false
[identity.jwt]
algorithms = ["HS256"]
secret = "{SECRET}"
sender_constraint = "off"
[telemetry]
"""
OK = {"status": "ok"}
UNAVAILABLE = {"status": "unavailable"}


def bearer() -> dict[str, str]:
    now = int(time.time())
    return {"authorization": "Bearer " + jwt.encode({"sub": "alice", "iat": now, "exp": now + 300}, SECRET,
                                                   algorithm="HS256")}


def test_health_and_readiness_answer_without_credentials_when_the_guard_requires_a_jwt() -> None:
    with run_uvicorn(GuardMiddleware(starlette_app(), config=config(GUARDED))) as url:
        assert httpx.get(f"{url}/whoami").status_code == 401
        for path in ("/healthz", "/readyz"):
            response = httpx.get(f"{url}{path}")
            assert response.status_code == 200 and response.json() == OK
            assert response.headers["content-type"] == "application/json"
            assert response.headers["cache-control"] == "no-store"


def test_readiness_is_503_while_redis_is_down_and_says_nothing_about_it() -> None:
    with run_redis_server() as redis:
        text = GUARDED + f'[storage]\nurl = "{redis.url}"\n'
        with run_uvicorn(GuardMiddleware(starlette_app(), config=config(text))) as url:
            assert httpx.get(f"{url}/readyz").json() == OK
            redis.stop()
            down = httpx.get(f"{url}/readyz")
            assert down.status_code == 503
            assert down.content == b'{"status":"unavailable"}'
            headers = str(down.headers.raw).lower()
            assert "redis" not in headers and str(redis.port) not in headers
            assert httpx.get(f"{url}/healthz").status_code == 200
            redis.start()
            assert httpx.get(f"{url}/readyz").status_code == 200


def test_probes_are_never_counted_by_rate_limits() -> None:
    text = GUARDED + '[[rate_limits]]\nkey = "ip"\nlimit = "1/hour"\n'
    with run_uvicorn(GuardMiddleware(starlette_app(), config=config(text))) as url:
        assert [httpx.get(f"{url}{path}").status_code for path in ("/healthz", "/readyz") * 5] == [200] * 10
        assert httpx.get(f"{url}/whoami", headers=bearer()).status_code == 200
        assert httpx.get(f"{url}/whoami", headers=bearer()).status_code == 429


def test_a_registered_probe_that_reports_not_ready_makes_readiness_503() -> None:
    guard = Guard(config(GUARDED))
    loaded = False
    guard.services.readiness.register("model", lambda: loaded)
    client = InProcess(GuardMiddleware(starlette_app(), config=guard))
    assert client.get("/readyz").status_code == 503
    loaded = True
    assert client.get("/readyz").status_code == 200


def test_a_failing_probe_leaks_neither_its_error_nor_its_name() -> None:
    def database() -> bool:
        raise ConnectionRefusedError("db.internal.example:5432 refused; password=hunter2")

    guard = Guard(config(GUARDED))
    guard.services.readiness.register("database", database)
    response = InProcess(GuardMiddleware(starlette_app(), config=guard)).get("/readyz")
    assert response.status_code == 503 and response.json() == UNAVAILABLE
    for detail in ("database", "db.internal", "5432", "hunter2", "Refused", "Traceback"):
        assert detail not in response.text


def test_a_probe_slower_than_the_timeout_counts_as_not_ready() -> None:
    async def stuck() -> bool:
        await asyncio.sleep(30)
        return True

    guard = Guard(config(GUARDED + 'ready_timeout = "100ms"\n'))
    guard.services.readiness.register("model", stuck)
    assert InProcess(GuardMiddleware(starlette_app(), config=guard)).get("/readyz").status_code == 503


def test_readiness_waits_for_the_checks_to_start() -> None:
    flaky = FailsToStart()
    client = InProcess(GuardMiddleware(starlette_app(), config=config(GUARDED), checks=[flaky]))
    assert client.get("/readyz").status_code == 503
    assert client.get("/readyz").status_code == 200
    assert flaky.attempts == 2


def test_liveness_does_not_start_the_checks() -> None:
    flaky = FailsToStart()
    client = InProcess(GuardMiddleware(starlette_app(), config=config(GUARDED), checks=[flaky]))
    assert client.get("/healthz").status_code == 200
    assert flaky.attempts == 0


def test_only_get_and_head_are_answered() -> None:
    client = InProcess(GuardMiddleware(starlette_app(), config=config(GUARDED)))
    refused = client.post("/healthz", content=b"{}")
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"
    head = client.request("HEAD", "/readyz")
    assert head.status_code == 200 and head.content == b""


def test_health_paths_can_be_moved_and_the_old_ones_are_guarded_again() -> None:
    text = GUARDED + 'health_path = "/livez"\nready_path = ""\n'
    client = InProcess(GuardMiddleware(starlette_app(), config=config(text)))
    assert client.get("/livez").json() == OK
    assert client.get("/healthz").status_code == 401
    assert client.get("/readyz").status_code == 401


def wsgi_app(environ: dict[str, object], start_response: object) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])  # type: ignore[operator]
    return [b"ok"]


def test_a_wsgi_guard_answers_the_probes_without_credentials_too() -> None:
    guarded = GuardWSGIMiddleware(wsgi_app, config=config(GUARDED))
    try:
        with run_werkzeug(guarded) as url:
            assert httpx.get(f"{url}/whoami").status_code == 401
            assert httpx.get(f"{url}/healthz").json() == OK
            assert httpx.get(f"{url}/readyz").json() == OK
    finally:
        guarded.close()
