"""Reusable benchmark helpers: an in-process ASGI driver, a uvicorn launcher and a wrk runner.

Everything here targets 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import http.client
import io
import os
import platform
import pstats
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message

HOST = "127.0.0.1"
CLIENT = (HOST, 50000)


@dataclasses.dataclass(frozen=True)
class BenchRequest:
    """One HTTP request, replayable as an ASGI scope, over http.client, or by wrk."""

    method: str
    path: str
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def without_header(self, name: str) -> BenchRequest:
        return dataclasses.replace(self, headers=tuple(h for h in self.headers if h[0].lower() != name.lower()))

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path

    def scope(self, port: int = 8000) -> dict[str, Any]:
        """The scope a server would build for this request arriving from :data:`CLIENT`."""
        headers = [(b"host", f"{HOST}:{port}".encode())]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers]
        if self.body:
            headers.append((b"content-length", str(len(self.body)).encode()))
        return {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": self.method, "scheme": "http", "path": self.path, "raw_path": self.path.encode(),
            "root_path": "", "query_string": self.query.encode(), "headers": headers,
            "client": CLIENT, "server": (HOST, port),
        }

    def wrk_lua(self) -> str:
        lines = [f"wrk.method = {_lua_str(self.method)}", f"wrk.body = {_lua_str(self.body.decode())}"]
        lines += [f"wrk.headers[{_lua_str(k)}] = {_lua_str(v)}" for k, v in self.headers]
        return "\n".join(lines) + "\n"


def _lua_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


class _Receive:
    """Hands the body over once, then waits like a connection that stays open."""

    __slots__ = ("_body",)

    def __init__(self, body: bytes) -> None:
        self._body: bytes | None = body

    async def __call__(self) -> Message:
        body = self._body
        if body is None:
            await asyncio.get_running_loop().create_future()
        self._body = None
        return {"type": "http.request", "body": body, "more_body": False}


async def _discard(message: Message) -> None:
    pass


async def call_asgi(app: ASGIApp, request: BenchRequest) -> tuple[int, bytes]:
    """Status and body of one call through ``app``."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(request.scope(), _Receive(request.body), send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def _run(app: ASGIApp, scope: dict[str, Any], body: bytes, iterations: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(iterations):
        await app(scope.copy(), _Receive(body), _discard)
    return (time.perf_counter_ns() - start) / max(iterations, 1) / 1000


def time_in_process(apps: Mapping[str, ASGIApp], request: BenchRequest, *, iterations: int, repeats: int,
                    warmup: int) -> dict[str, list[float]]:
    """Microseconds per request of each app, one figure per repeat.

    Repeats are interleaved across apps so that background load spreads over all of them.
    """
    scope = request.scope()

    async def main() -> dict[str, list[float]]:
        for app in apps.values():
            await _run(app, scope, request.body, warmup)
        results: dict[str, list[float]] = {name: [] for name in apps}
        for _ in range(repeats):
            for name, app in apps.items():
                results[name].append(await _run(app, scope, request.body, iterations))
        return results

    return asyncio.run(main())


def all_answer_200(apps: Mapping[str, ASGIApp], request: BenchRequest) -> bool:
    """Call each app once with ``request``, print each status, and tell whether all said 200."""
    ok = True
    width = max(map(len, apps), default=0)
    for name, app in apps.items():
        status, body = asyncio.run(call_asgi(app, request))
        good = status == 200
        ok &= good
        print(f"  {'ok  ' if good else 'FAIL'} {name:{width}} -> {status}" + ("" if good else f" {body[:200]!r}"))
    return ok


def time_calls(calls: Mapping[str, Callable[[], object]], *, number: int, repeats: int = 5) -> dict[str, float]:
    """Microseconds per call of each synchronous callable, best of ``repeats``."""
    return {name: min(timeit.repeat(fn, number=number, repeat=repeats)) / number * 1e6 for name, fn in calls.items()}


def profile_in_process(app: ASGIApp, request: BenchRequest, *, iterations: int, top: int = 30) -> str:
    """cProfile of ``iterations`` calls, the ``top`` functions by own time."""
    scope = request.scope()
    profiler = cProfile.Profile()

    async def main() -> None:
        await _run(app, scope, request.body, min(iterations, 1000))
        profiler.enable()
        await _run(app, scope, request.body, iterations)
        profiler.disable()

    asyncio.run(main())
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(argv: Sequence[str], port: int, *, start_timeout: float = 20.0) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server command that listens on ``HOST:port``; stop it (by its pid) afterwards."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_listening(proc, port, start_timeout, log)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float, log: Any) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read().decode(errors='replace')}")
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {HOST}:{port} within {timeout}s")


def http_status(port: int, request: BenchRequest) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request(request.method, request.target, body=request.body, headers=dict(request.headers))
        return conn.getresponse().status
    finally:
        conn.close()


@dataclasses.dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    bad: int
    server_cpu_us: float = float("nan")
    """CPU time (user + system) the server process spent per request, where /proc tells it."""


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _latency(output: str, percentile: str) -> float:
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux); NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(port: int, request: BenchRequest, *, duration: int, threads: int = 1, connections: int = 32,
            wrk: str = "wrk", server_pid: int | None = None) -> WrkResult:
    """Load ``HOST:port`` with ``request`` for ``duration`` whole seconds; non-2xx and socket errors are bad.

    With ``server_pid``, the server's CPU time per request is measured too.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(request.wrk_lua())
        script.flush()
        argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script.name,
                f"http://{HOST}:{port}{request.target}"]
        cpu_before = cpu_seconds(server_pid) if server_pid else float("nan")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
        if done.returncode != 0:
            raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr or done.stdout}")
        output = done.stdout
        cpu = cpu_seconds(server_pid) - cpu_before if server_pid else float("nan")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if rps is None or total is None:
        raise RuntimeError(f"cannot read wrk output:\n{output}")
    bad = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", output))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    bad += sum(int(n) for n in errors.groups()) if errors else 0
    requests = int(total.group(1))
    return WrkResult(float(rps.group(1)), _latency(output, "50"), _latency(output, "99"), requests, bad,
                     cpu / requests * 1e6 if requests else float("nan"))


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def revision(paths: Sequence[str] = ("dsguard",)) -> str:
    """The checked-out commit, and whether ``paths`` differ from it."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                  cwd=Path(__file__).resolve().parent.parent).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", *paths)
    return f"{commit} ({', '.join(paths)} modified)" if dirty else commit


def environment(packages: Sequence[str]) -> list[str]:
    """Lines describing the machine and software a run was measured on."""
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        cpu = match.group(1).strip() if match else cpu
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return [
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"machine: {os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}, load {load}",
        f"python: {sys.version.split()[0]} ({platform.python_implementation()})",
        "packages: " + ", ".join(f"{p} {package_version(p)}" for p in packages),
        f"revision: {revision()}",
    ]


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def in_process_table(runs: Mapping[str, Sequence[float]], feature: str) -> str:
    """The in-process timings of ``bare``, ``dsguard`` and variants, with what each adds over bare and dsguard."""
    base, guarded = median(runs["bare"]), median(runs["dsguard"])
    rows = [(name, f"{median(r):.1f}", f"{min(r):.1f}", f"{max(r):.1f}", f"{median(r) - base:+.1f}",
             f"{median(r) - guarded:+.1f}" if name != "bare" else "") for name, r in runs.items()]
    return table(("stack", "us/req (median)", "min", "max", "vs bare", f"added by {feature}"), rows)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value
