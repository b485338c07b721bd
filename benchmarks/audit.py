"""What the audit log adds per request: dsguard with and without ``[audit]``, side by side.

Stacks (the request and app of overhead.py; dsguard with its transport, hygiene and JWT checks):
  bare                  the Starlette app alone
  dsguard               dsguard without [audit]
  + audit (fsync never) [audit] with fsync = "never": records reach the page cache
  + audit (default)     [audit] with its defaults: fsync = "always", signed checkpoints every 1000 records

Wall time per request comes from the harness's in-process loop; CPU time per request is the
process's (the writer thread's included: each run waits until its records are written). On a
shared machine the CPU figure is the steadier one.

Then the writer alone: records per second it chains, signs and writes (fsync = "always").
Every audited run ends by checking the log (hash chain and checkpoint signatures) and printing
the records written and dropped: with the default queue, none are dropped under this load.

Then what ``durability = "written"`` adds to each call's latency (the response waits until the
writer reports its record written, and synced under fsync = "always"), against ``"queued"``:
latency per call (p50, p99) and calls per second, with one call in flight and with
``--concurrency`` calls in flight (the writer then syncs many records with one fsync). The time
of one bare 600-byte write + fsync on the log's disk is printed beside it.

Run from the repository root:  python benchmarks/audit.py [--iterations 20000] [--repeats 5]
                               python benchmarks/audit.py --durability-only [--log-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _harness import (
    BenchRequest,
    all_answer_200,
    call_asgi,
    environment,
    in_process_table,
    median,
    positive_int,
    table,
    time_in_process,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from overhead import DSGUARD_TOML, bare_app, bench_request
from starlette.types import ASGIApp

import dsguard
from dsguard.audit.signing import open_checkpoint_signer
from dsguard.audit.verify import verify_log
from dsguard.audit.writer import AuditWriter
from dsguard.config import AuditConfig, parse_config
from dsguard.guard import Guard

PACKAGES = ("dsguard", "starlette", "cryptography")


def audit_toml(folder: Path, name: str, fsync: str) -> str:
    return f'[audit]\npath = "{folder / name / "audit.jsonl"}"\nsigning_key = "file:{folder / "key.pem"}"\n' \
           f'fsync = "{fsync}"\n'


def build_stacks(folder: Path) -> tuple[dict[str, ASGIApp], dict[str, Guard]]:
    key = ed25519.Ed25519PrivateKey.generate()
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    guards = {
        "dsguard": Guard(parse_config(DSGUARD_TOML, file="<audit.py>")),
        "+ audit (fsync never)": Guard(parse_config(DSGUARD_TOML + audit_toml(folder, "never", "never"),
                                                    file="<audit.py>")),
        "+ audit (default)": Guard(parse_config(DSGUARD_TOML + audit_toml(folder, "always", "always"),
                                                file="<audit.py>")),
    }
    apps: dict[str, ASGIApp] = {"bare": bare_app()}
    apps.update({name: dsguard.GuardMiddleware(bare_app(), config=guard) for name, guard in guards.items()})
    return apps, guards


def cpu_per_request(apps: dict[str, ASGIApp], guards: dict[str, Guard], request: BenchRequest,
                    iterations: int, repeats: int) -> dict[str, list[float]]:
    """Process CPU microseconds per request of each stack (its audit writer's work included)."""
    results: dict[str, list[float]] = {name: [] for name in apps}

    async def drive(app: ASGIApp) -> None:
        for _ in range(iterations):
            await call_asgi(app, request)

    for _ in range(repeats):
        for name, app in apps.items():
            start = time.process_time()
            asyncio.run(drive(app))
            guard = guards.get(name)
            if guard is not None and guard.audit is not None:
                guard.audit.writer.wait_written()
            results[name].append((time.process_time() - start) / iterations * 1e6)
    return results


def writer_throughput(folder: Path, records: int) -> float:
    """Records per second the writer thread chains, signs (every 1000) and writes with fsync = "always"."""
    signer = open_checkpoint_signer(f"file:{folder / 'key.pem'}")
    writer = AuditWriter(AuditConfig(path=folder / "alone" / "audit.jsonl", queue_size=records + 1), signer=signer)
    writer.start()
    with writer.hold():
        for n in range(records):
            writer.submit({"type": "decision", "request_id": f"r{n}", "decision": "allow", "route": "/v1/chat"})
        start = time.perf_counter()
    writer.wait_written()
    elapsed = time.perf_counter() - start
    writer.stop()
    return records / elapsed


DURABILITY = {
    "dsguard, no [audit]": None,
    "queued, fsync always": ("queued", "always"),
    "written, fsync interval": ("written", "interval"),
    "written, fsync always": ("written", "always"),
}


def durability_stacks(folder: Path) -> dict[str, tuple[ASGIApp, Guard]]:
    stacks = {}
    for name, settings in DURABILITY.items():
        toml = DSGUARD_TOML
        if settings is not None:
            durability, fsync = settings
            toml += audit_toml(folder, f"{durability}-{fsync}", fsync) + f'durability = "{durability}"\n'
        guard = Guard(parse_config(toml, file="<audit.py>"))
        stacks[name] = (dsguard.GuardMiddleware(bare_app(), config=guard), guard)
    return stacks


async def timed_calls(app: ASGIApp, request: BenchRequest, calls: int, concurrency: int) -> tuple[list[float], float]:
    """Latency of each call (µs) and calls per second, ``concurrency`` callers each making their share in turn."""
    samples: list[float] = []

    async def caller(count: int) -> None:
        for _ in range(count):
            start = time.perf_counter_ns()
            await call_asgi(app, request)
            samples.append((time.perf_counter_ns() - start) / 1000)

    start = time.perf_counter()
    await asyncio.gather(*(caller(calls // concurrency) for _ in range(concurrency)))
    return samples, len(samples) / (time.perf_counter() - start)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def durability_latency(stacks: dict[str, tuple[ASGIApp, Guard]], request: BenchRequest, *, calls: int,
                       concurrency: int, repeats: int) -> dict[str, list[tuple[float, float, float]]]:
    """(p50 µs, p99 µs, calls/s) of each stack per repeat; repeats interleaved across stacks."""
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in stacks}
    for app, _ in stacks.values():
        asyncio.run(timed_calls(app, request, max(concurrency, calls // 10), concurrency))
    for _ in range(repeats):
        for name, (app, _) in stacks.items():
            samples, rate = asyncio.run(timed_calls(app, request, calls, concurrency))
            results[name].append((percentile(samples, 0.5), percentile(samples, 0.99), rate))
    return results


def fsync_time(folder: Path, count: int = 500) -> tuple[float, float]:
    """p50 and p99 µs of one 600-byte append + fsync in ``folder``."""
    fd = os.open(folder / "fsync.probe", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    samples = []
    try:
        for _ in range(count):
            start = time.perf_counter_ns()
            os.write(fd, b"x" * 599 + b"\n")
            os.fsync(fd)
            samples.append((time.perf_counter_ns() - start) / 1000)
    finally:
        os.close(fd)
    return percentile(samples, 0.5), percentile(samples, 0.99)


def report_durability(folder: Path, request: BenchRequest, args: argparse.Namespace) -> None:
    stacks = durability_stacks(folder)
    p50, p99 = fsync_time(folder)
    print(f"\ndurability (log in {folder}; one 600-byte write + fsync there: p50 {p50:.0f} us, p99 {p99:.0f} us):")
    for concurrency in (1, args.concurrency):
        runs = durability_latency(stacks, request, calls=args.durability_calls, concurrency=concurrency,
                                  repeats=args.repeats)
        medians = {name: tuple(statistics.median(r[i] for r in runs[name]) for i in range(3)) for name in runs}
        queued = medians["queued, fsync always"]
        rows = [(name, f"{m[0]:.0f}", f"{m[1]:.0f}", f"{m[2]:,.0f}", f"{m[0] - queued[0]:+.0f}",
                 f"{m[1] - queued[1]:+.0f}") for name, m in medians.items()]
        print(f"\n{concurrency} call(s) in flight, {args.durability_calls} calls x {args.repeats} repeats (medians):")
        print(table(("stack", "p50 us", "p99 us", "calls/s", "p50 vs queued", "p99 vs queued"), rows))
    for name, (_, guard) in stacks.items():
        if guard.audit is not None:
            writer = guard.audit.writer
            writer.stop()
            print(f"  {name:24} written {writer.written}, dropped {writer.drops}; verify: "
                  f"{verify_log([writer.path]).summary()}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=positive_int, default=20_000, help="requests per repeat")
    p.add_argument("--repeats", type=positive_int, default=5, help="repeats (the median is reported)")
    p.add_argument("--warmup", type=int, default=2_000, help="warm-up requests per stack")
    p.add_argument("--writer-records", type=positive_int, default=50_000, help="records for the writer alone")
    p.add_argument("--durability-calls", type=positive_int, default=4_000, help="calls per durability repeat")
    p.add_argument("--concurrency", type=positive_int, default=32, help="calls in flight in the durability run")
    p.add_argument("--durability-only", action="store_true", help="only the durability comparison")
    p.add_argument("--log-dir", type=Path, default=None, help="where the logs go (default: a temporary directory)")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    request = bench_request()
    with tempfile.TemporaryDirectory(dir=args.log_dir) as directory:
        folder = Path(directory)
        apps, guards = build_stacks(folder)
        print("\n".join(environment(PACKAGES)))
        print(f"request: {request.method} {request.target}, {len(request.body)}-byte JSON body")
        if args.durability_only:
            report_durability(folder, request, args)
            return 0
        print("\nsanity:")
        if not all_answer_200(apps, request):
            return 1
        runs = time_in_process(apps, request, iterations=args.iterations, repeats=args.repeats, warmup=args.warmup)
        print(f"\nin-process ({args.iterations} requests x {args.repeats} repeats, asyncio loop, no server):")
        print(in_process_table(runs, "audit"))
        cpu = cpu_per_request(apps, guards, request, args.iterations // 2, args.repeats)
        base, guarded = median(cpu["bare"]), median(cpu["dsguard"])
        rows = [(name, f"{median(r):.1f}", f"{median(r) - base:+.1f}",
                 f"{median(r) - guarded:+.1f}" if name != "bare" else "") for name, r in cpu.items()]
        print(f"\nprocess CPU ({args.iterations // 2} requests x {args.repeats} repeats, writer thread included):")
        print(table(("stack", "CPU us/req (median)", "vs bare", "added by audit"), rows))
        print("\naudit logs after the run:")
        for name, guard in guards.items():
            if guard.audit is None:
                continue
            writer = guard.audit.writer
            writer.wait_written()
            writer.stop()
            result = verify_log([writer.path])
            print(f"  {name:22} written {writer.written}, dropped {writer.drops}, checkpoints {writer.checkpoints}; "
                  f"verify: {result.summary()}")
        rate = writer_throughput(folder, args.writer_records)
        print(f"\nwriter alone (fsync = always, {args.writer_records} records queued): {rate:,.0f} records/s")
        report_durability(folder, request, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
