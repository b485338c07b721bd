"""Crash test: `dsguard serve` killed with SIGKILL under load; the log verifies and holds what was written.

Under ``durability = "queued"`` (the default) a call's record is queued once its response is
sent, so the records of the last responses may still be queued when the process dies: the log
holds, in order and without a gap, the records of the responses the client received up to some
point (and at most one more, whose response the kill cut off). Under ``durability = "written"``
with ``fsync = "always"`` a response ends only once its record is on disk: every response a
client received whole is in the log. Either way everything written before the kill verifies; a
torn last line is reported as such. A restart on the same log continues the chain.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from dsguard.audit.verify import verify_log
from dsguard.crypto.keys import open_signer

from .audit_logs import new_signing_key
from .conftest import free_port

DSGUARD = [sys.executable, "-m", "dsguard.cli"]
KILL_AFTER = 150


def config(folder: Path, durability: str = "queued") -> Path:
    path = folder / "dsguard.toml"
    key = new_signing_key(folder / "audit-key.pem")
    path.write_text(f"""
[transport]
require_https = false
[audit]
path = "audit/audit.jsonl"
signing_key = "{key}"
fsync = "always"
checkpoint_every = 40
durability = "{durability}"
""")
    return path


def start(config_path: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([*DSGUARD, "serve", "--config", str(config_path), "--port", str(port),
                                "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise AssertionError(f"dsguard serve exited: {process.stderr.read()!r}")  # type: ignore[union-attr]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.05)


class Load(threading.Thread):
    """One client sending calls back to back (one in five denied, or only streams) until the server is gone;
    ``acknowledged`` holds the request ids of the responses it received whole, in order."""

    def __init__(self, url: str, *, streams: bool = False) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.streams = streams
        self.acknowledged: list[str] = []

    def call(self, client: httpx.Client, n: int) -> httpx.Response:
        if self.streams:
            response = client.get("/v1/stream", params={"n": 1})
            assert response.content.endswith(b"data: [DONE]\n\n")
            return response
        if n % 5 == 4:
            return client.request("TRACE", "/v1/echo")
        return client.post("/v1/echo", json={"messages": [{"role": "user", "content": f"q{n}"}]})

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            for n in range(100_000):
                try:
                    response = self.call(client, n)
                except httpx.HTTPError:
                    return
                self.acknowledged.append(response.headers["x-request-id"])


def decisions_written(path: Path) -> int:
    try:
        return path.read_bytes().count(b'"type":"decision"')
    except FileNotFoundError:
        return 0


def crash(config_path: Path, loads: list[Load], port: int) -> Path:
    """Serve ``config_path``, run ``loads`` against it and SIGKILL the server once enough records are written."""
    log = config_path.parent / "audit" / "audit.jsonl"
    process = start(config_path, port)
    try:
        for load in loads:
            load.start()
        deadline = time.monotonic() + 60
        while decisions_written(log) < KILL_AFTER and time.monotonic() < deadline and all(
                load.is_alive() for load in loads):
            time.sleep(0.005)
        time.sleep(random.uniform(0, 0.02))  # not just after a write: at any point of the writer's cycle
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        for load in loads:
            load.join(timeout=15)
    return log


@pytest.fixture
def crashed(tmp_path: Path) -> tuple[Path, Path, Load]:
    config_path = config(tmp_path)
    port = free_port()
    load = Load(f"http://127.0.0.1:{port}")
    return config_path, crash(config_path, [load], port), load


@pytest.fixture
def crashed_written(tmp_path: Path) -> tuple[Path, list[Load]]:
    """Four clients (one streaming) against durability = "written", fsync = "always", killed under load."""
    config_path = config(tmp_path, "written")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    loads = [Load(url), Load(url), Load(url), Load(url, streams=True)]
    return crash(config_path, loads, port), loads


def whole_records(path: Path) -> list[dict[str, object]]:
    """The records of the complete lines (a torn last line, if any, left out)."""
    data = path.read_bytes()
    return [json.loads(line) for line in data[:data.rfind(b"\n")].splitlines()]


def verified(log: Path, folder: Path) -> None:
    """The log verifies: no error, and no warning but unanchored records and, if the kill tore it, the last line."""
    signer = open_signer(f"file:{folder / 'audit-key.pem'}")
    result = verify_log([log], public_keys={signer.key_id: signer.public_key()})
    assert result.errors == [], [str(f) for f in result.errors]
    torn = not log.read_bytes().endswith(b"\n")
    assert {f.kind for f in result.warnings} - {"unanchored"} == ({"torn_line"} if torn else set())


def test_after_sigkill_under_load_the_queued_records_verify_and_match_the_responses(
        crashed: tuple[Path, Path, Load], tmp_path: Path) -> None:
    _, log, load = crashed
    verified(log, tmp_path)
    written = [r["request_id"] for r in whole_records(log) if r["type"] == "decision"]
    acknowledged = load.acknowledged
    assert len(written) >= KILL_AFTER
    confirmed = min(len(written), len(acknowledged))
    assert len(written) - confirmed <= 1, "only the record of the response the kill cut off may be unacknowledged"
    assert written[:confirmed] == acknowledged[:confirmed], \
        "the records are those of the acknowledged responses, in order, without a gap"


def test_after_sigkill_under_load_every_response_received_whole_is_in_the_log(
        crashed_written: tuple[Path, list[Load]], tmp_path: Path) -> None:
    log, loads = crashed_written
    verified(log, tmp_path)
    written = {r["request_id"] for r in whole_records(log) if r["type"] == "decision"}
    assert len(written) >= KILL_AFTER and all(load.acknowledged for load in loads)
    for load in loads:
        missing = [request_id for request_id in load.acknowledged if request_id not in written]
        assert missing == [], f"{len(missing)} of {len(load.acknowledged)} answered calls have no record"


def test_a_restart_after_the_kill_continues_the_chain(crashed: tuple[Path, Path, Load], tmp_path: Path) -> None:
    config_path, log, _ = crashed
    port = free_port()
    process = start(config_path, port)
    try:
        assert httpx.post(f"http://127.0.0.1:{port}/v1/echo", json={"messages": []}).status_code == 200
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    signer = open_signer(f"file:{tmp_path / 'audit-key.pem'}")
    result = verify_log([log], public_keys={signer.key_id: signer.public_key()})
    assert result.errors == [] and result.unanchored == 0
    assert [f.kind for f in result.findings if f.kind != "torn_line"] == ["restart"]
    assert whole_records(log)[-1]["final"] is True
