"""Hot reload of the policy: changes are swapped in whole, broken changes never replace a good
policy, and reloads reach other processes through Redis."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import casbin
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dsguard import GuardMiddleware
from dsguard.checks.policy import PolicyCheck
from dsguard.context import Identity, RequestContext
from dsguard.policy.watcher import PolicyChannel, RedisWatcher

from .conftest import free_port, run_uvicorn
from .helpers import config

MODEL = """
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub) && keyMatch(r.obj, p.obj) && r.act == p.act
"""
ALICE_ONLY = "p, alice, /data, GET\n"
ALICE_AND_BOB = "p, alice, /data, GET\np, bob, /data, GET\n"
BY_ROLE_ONE = "g, alice, one\np, one, /data, GET\n"
BY_ROLE_TWO = "g, alice, two\np, two, /data, GET\n"


class SubjectHeader:
    """Trusts ``x-test-subject``: a stand-in identity source."""

    name = "test-subject"
    stage = "identity"

    def check(self, ctx: RequestContext) -> None:
        subject = ctx.headers.get("x-test-subject")
        if subject:
            ctx.identity = Identity(subject=subject, method="test")


async def data(request: Request) -> JSONResponse:
    rule = request.state.dsguard.attributes.get("policy.rule")
    return JSONResponse({"rule": list(rule.values) if rule else None})


_EDITS = itertools.count(1)


def write(path: Path, text: str) -> None:
    """Replace a file's content with a modification time no earlier edit had (as an editor's save)."""
    path.write_text(text, encoding="utf-8")
    stamp = time.time_ns() + next(_EDITS) * 1_000_000
    os.utime(path, ns=(stamp, stamp))


def policy_files(folder: Path, policy: str) -> Path:
    (folder / "model.conf").write_text(MODEL, encoding="utf-8")
    (folder / "policy.csv").write_text(policy, encoding="utf-8")
    return folder


def guard_config(folder: Path, *, interval: str = "50ms", storage: str = "memory://") -> str:
    return f"""
[transport]
require_https = false
[storage]
url = "{storage}"
[policy]
model = "{folder / 'model.conf'}"
policy = "{folder / 'policy.csv'}"
reload_interval = "{interval}"
redis_channel = "policy-test-{folder.name}"
"""


def policy_check(app: GuardMiddleware) -> PolicyCheck:
    return next(c for c in app.guard.pipeline.checks if isinstance(c, PolicyCheck))


def eventually(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@contextmanager
def served(folder: Path, **options: str) -> Iterator[tuple[str, PolicyCheck]]:
    app = GuardMiddleware(Starlette(routes=[Route("/data", data)]), config=config(guard_config(folder, **options)),
                          checks=[SubjectHeader()])
    with run_uvicorn(app) as url:
        yield url, policy_check(app)


def status(url: str, subject: str) -> int:
    return httpx.get(url + "/data", headers={"x-test-subject": subject}, timeout=10).status_code


def test_changed_policy_file_is_loaded_while_serving(tmp_path: Path) -> None:
    folder = policy_files(tmp_path, ALICE_ONLY)
    with served(folder) as (url, check):
        assert status(url, "bob") == 403
        write(folder / "policy.csv", ALICE_AND_BOB)
        assert eventually(lambda: status(url, "bob") == 200)
        assert check.reloads == 1


def test_broken_policy_keeps_the_last_good_one_and_counts_the_error(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    folder = policy_files(tmp_path, ALICE_ONLY)
    with served(folder) as (url, check), caplog.at_level(logging.ERROR, logger="dsguard.policy"):
        write(folder / "policy.csv", "p, alice, /data, GET\np, bob, /data\n")
        assert eventually(lambda: check.reload_errors == 1)
        assert (status(url, "alice"), status(url, "bob")) == (200, 403)
        assert f"{folder / 'policy.csv'}:2:" in caplog.text
        write(folder / "policy.csv", ALICE_AND_BOB)
        assert eventually(lambda: status(url, "bob") == 200)
        assert check.reload_errors == 1


def test_broken_model_never_opens_access(tmp_path: Path) -> None:
    folder = policy_files(tmp_path, ALICE_ONLY)
    with served(folder) as (url, check):
        write(folder / "model.conf", MODEL.replace("g(r.sub, p.sub) && ", "g(r.sub, p.sub) && && "))
        assert eventually(lambda: check.reload_errors == 1)
        assert (status(url, "alice"), status(url, "bob")) == (200, 403)


def test_unchanged_content_is_not_swapped_in(tmp_path: Path) -> None:
    folder = policy_files(tmp_path, ALICE_ONLY)
    app = GuardMiddleware(Starlette(routes=[Route("/data", data)]), config=config(guard_config(folder)))
    reloader = policy_check(app).reloader
    before = reloader.policy
    write(folder / "policy.csv", ALICE_ONLY)
    assert asyncio.run(reloader.reload(reason="test")) is False
    assert reloader.policy is before
    assert (reloader.reloads, reloader.errors) == (0, 0)


def test_no_request_sees_half_a_policy_while_it_is_swapped(tmp_path: Path) -> None:
    """Both versions grant alice through a different role; a mix of one's roles with the other's
    rules would deny her."""
    folder = policy_files(tmp_path, BY_ROLE_ONE)
    app = GuardMiddleware(Starlette(routes=[Route("/data", data)]), config=config(guard_config(folder)),
                          checks=[SubjectHeader()])
    reloader = policy_check(app).reloader

    async def swap(times: int) -> int:
        for turn in range(times):
            write(folder / "policy.csv", BY_ROLE_TWO if turn % 2 == 0 else BY_ROLE_ONE)
            # The file watcher may have swapped this version in already; either way it is in force now.
            await reloader.reload(reason="test")
            assert reloader.policy.rules[0].values[0] == ("two" if turn % 2 == 0 else "one")
        return times

    async def main() -> tuple[list[httpx.Response], int]:
        swapper = asyncio.create_task(swap(8))
        transport = httpx.ASGITransport(app=app)
        responses: list[httpx.Response] = []
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            while not swapper.done():
                batch = [client.get("/data", headers={"x-test-subject": "alice"}) for _ in range(10)]
                responses += await asyncio.gather(*batch)
        return responses, await swapper

    responses, swaps = asyncio.run(main())
    assert swaps == 8
    assert [r.status_code for r in responses] == [200] * len(responses)
    assert {r.json()["rule"][0] for r in responses} == {"one", "two"}


REPLICA = """
import sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from dsguard import GuardMiddleware
from dsguard.config import parse_config
from dsguard.context import Identity


class SubjectHeader:
    name = "test-subject"
    stage = "identity"

    def check(self, ctx):
        subject = ctx.headers.get("x-test-subject")
        if subject:
            ctx.identity = Identity(subject=subject, method="test")


async def data(request):
    return PlainTextResponse("ok")


config_text, port = sys.stdin.read(), int(sys.argv[1])
app = GuardMiddleware(Starlette(routes=[Route("/data", data)]), config=parse_config(config_text),
                      checks=[SubjectHeader()])
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
"""


@contextmanager
def replica(config_text: str) -> Iterator[str]:
    """A separate process serving the guard on a free port; stopped by its pid."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", REPLICA, str(port)], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert process.stdin is not None
    process.stdin.write(config_text.encode())
    process.stdin.close()
    url = f"http://127.0.0.1:{port}"
    try:
        assert eventually(lambda: _answers(url), timeout=30), "the replica did not start"
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        httpx.get(url + "/data", timeout=1)
    except httpx.HTTPError:
        return False
    return True


def test_reload_in_one_process_reaches_another_through_redis(tmp_path: Path, redis_server: str) -> None:
    folder = policy_files(tmp_path, ALICE_ONLY)
    watching = guard_config(folder, interval="100ms", storage=redis_server)
    announced_only = guard_config(folder, interval="1h", storage=redis_server)
    with replica(watching) as first, replica(announced_only) as second:
        assert status(first, "alice") == status(second, "alice") == 200
        assert status(first, "bob") == status(second, "bob") == 403
        write(folder / "policy.csv", ALICE_AND_BOB)
        assert eventually(lambda: status(first, "bob") == 200)
        assert eventually(lambda: status(second, "bob") == 200)


def test_casbin_enforcer_with_the_redis_watcher_follows_a_reload(tmp_path: Path, redis_server: str) -> None:
    folder = policy_files(tmp_path, ALICE_ONLY)
    enforcer = casbin.Enforcer(str(folder / "model.conf"), str(folder / "policy.csv"))
    watcher = RedisWatcher(redis_server, channel="policy-casbin")
    reloaded = threading.Event()

    def load_policy() -> None:
        enforcer.load_policy()
        reloaded.set()

    watcher.set_update_callback(load_policy)
    enforcer.set_watcher(watcher)
    try:
        write(folder / "policy.csv", ALICE_AND_BOB)

        async def announce() -> None:
            channel = PolicyChannel(redis_server, "policy-casbin")
            await channel.publish("new-digest")
            await channel.close()

        asyncio.run(announce())
        assert reloaded.wait(15)
        assert enforcer.enforce("bob", "/data", "GET")
    finally:
        watcher.close()


def test_guard_serves_while_redis_is_down(tmp_path: Path) -> None:
    folder = policy_files(tmp_path, ALICE_ONLY)
    with served(folder, storage=f"redis://127.0.0.1:{free_port()}/0") as (url, _check):
        assert (status(url, "alice"), status(url, "bob")) == (200, 403)
