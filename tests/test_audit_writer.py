"""The audit writer: signed checkpoints, rotation, restarts, and a full queue that never stalls a caller."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dsguard.audit.files import log_files
from dsguard.audit.verify import verify_log
from dsguard.audit.writer import AuditError, AuditWriter

from .audit_logs import audit_settings, decision, read_records, signer_at, write_log


class Clock:
    """A clock the test moves by hand (the writer's schedule, not the test's outcome, depends on it)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_checkpoints_are_signed_every_n_records_and_verify_with_the_pinned_key(tmp_path: Path) -> None:
    signer = signer_at(tmp_path / "key.pem")
    path = tmp_path / "audit.jsonl"
    write_log(path, 7, signer=signer, checkpoint_every=3)
    checkpoints = [r for r in read_records(path) if r["type"] == "checkpoint"]
    assert [(c["seq"], c["records"], c["reason"]) for c in checkpoints] == [(5, 3, "count"), (9, 3, "count"),
                                                                            (11, 1, "stop")]
    assert all(c["key_id"] == signer.key_id and c["alg"] == "EdDSA" for c in checkpoints)
    assert checkpoints[-1]["final"] is True
    result = verify_log([path], public_keys={signer.key_id: signer.public_key()})
    assert result.findings == [] and result.verified_checkpoints == 3


def test_a_checkpoint_is_written_when_records_wait_longer_than_the_interval(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(audit_settings(path, checkpoint_interval=60.0), clock=clock)
    writer.start()
    writer.submit(decision(1))
    assert writer.wait_written(10)
    clock.now += 61
    writer.submit(decision(2))
    assert writer.wait_written(10)
    writer.stop()
    kinds = [(r["type"], r.get("reason")) for r in read_records(path)]
    assert kinds == [("start", None), ("decision", None), ("decision", None), ("checkpoint", "interval"),
                     ("checkpoint", "stop")]


def test_rotation_by_age_continues_the_chain_in_a_new_file(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(audit_settings(path, rotate_interval=3600.0), clock=clock)
    writer.start()
    writer.submit(decision(1))
    assert writer.wait_written(10)
    clock.now += 3601
    writer.submit(decision(2))
    writer.stop()
    rotated = tmp_path / "audit.000000000001.jsonl"
    assert read_records(rotated)[-1]["reason"] == "age"
    assert read_records(path)[0]["prev"] == read_records(rotated)[-1]["hash"]
    assert verify_log([path]).errors == []


def test_a_restart_resumes_the_chain_after_the_closing_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 2)
    closing = read_records(path)[-1]
    write_log(path, 2)
    restart = read_records(path)[len(read_records(path)) // 2]
    assert (restart["type"], restart["clean"], restart["prev"]) == ("start", True, closing["hash"])
    assert verify_log([path]).errors == []


def test_a_torn_last_line_is_moved_aside_and_the_chain_resumes_before_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    data = path.read_bytes()
    path.write_bytes(data[:-25])
    write_log(path, 1)
    moved = tmp_path / "audit.000000000001.jsonl"
    assert moved.read_bytes() == data[:-25]
    start = read_records(path)[0]
    assert (start["type"], start["clean"], start["torn_bytes"]) == ("start", False, len(data.splitlines()[-1]) - 24)
    result = verify_log([path])
    assert result.errors == []
    assert [(f.kind, f.file) for f in result.findings if f.kind in ("torn_line", "restart")] == [
        ("torn_line", str(moved)), ("restart", str(path))]


def test_a_second_writer_on_the_same_log_is_refused(tmp_path: Path) -> None:
    first = AuditWriter(audit_settings(tmp_path / "audit.jsonl"))
    first.start()
    try:
        with pytest.raises(AuditError, match="is being written by another process"):
            AuditWriter(audit_settings(tmp_path / "audit.jsonl")).start()
    finally:
        first.stop()


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_every_fsync_policy_writes_the_same_chain(tmp_path: Path, fsync: str) -> None:
    path = tmp_path / "audit.jsonl"
    writer = write_log(path, 20, fsync=fsync)
    assert writer.written == 20
    assert verify_log([path]).errors == []


def test_drop_policy_counts_what_a_stalled_writer_cannot_queue(tmp_path: Path) -> None:
    dropped: list[int] = []
    writer = AuditWriter(audit_settings(tmp_path / "audit.jsonl", queue_size=2, on_full="drop"),
                         on_drop=dropped.append)
    writer.start()
    with writer.hold():
        outcomes = [writer.submit(decision(n)) for n in range(10)]
    writer.stop()
    assert outcomes == [None] * 10
    assert writer.drops == sum(dropped) >= 6
    assert writer.drops + writer.written == 10


def test_block_policy_waits_for_room_instead_of_dropping(tmp_path: Path) -> None:
    writer = AuditWriter(audit_settings(tmp_path / "audit.jsonl", queue_size=1, on_full="block", full_wait=60.0))
    writer.start()
    held = writer.hold()
    held.__enter__()

    async def submit_all() -> None:
        waits = [w for n in range(6) if (w := writer.submit(decision(n))) is not None]
        assert waits, "a full queue makes later records wait"
        threading.Timer(0.2, held.__exit__, (None, None, None)).start()
        await asyncio.gather(*waits)

    asyncio.run(submit_all())
    writer.stop()
    assert (writer.drops, writer.written) == (0, 6)


def test_block_policy_drops_after_full_wait_and_counts_it(tmp_path: Path) -> None:
    writer = AuditWriter(audit_settings(tmp_path / "audit.jsonl", queue_size=1, on_full="block", full_wait=0.05))
    writer.start()
    with writer.hold():
        async def overflow() -> None:
            waits = [w for n in range(4) if (w := writer.submit(decision(n))) is not None]
            await asyncio.gather(*waits)

        asyncio.run(overflow())
        drops_while_held = writer.drops
    writer.stop()
    assert drops_while_held >= 2
    assert writer.drops + writer.written == 4


FILE_SIZE_LIMITED = """
import resource, signal, sys
from pathlib import Path
from dsguard.audit.writer import AuditWriter
from tests.audit_logs import audit_settings, decision

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))
writer = AuditWriter(audit_settings(Path(sys.argv[1])))
writer.start()
for n in range(30):
    writer.submit(decision(n))
    writer.wait_written(10)
writer.stop()
print(writer.written, writer.drops)
"""


def test_a_failed_write_loses_only_its_records_and_the_chain_continues_in_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    result = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMITED, str(path)], capture_output=True, text=True,
                            timeout=60, cwd=Path(__file__).parent.parent, check=True)
    written, drops = map(int, result.stdout.split())
    assert drops >= 1 and written + drops == 30
    assert "write failed (File too large)" in result.stderr
    verification = verify_log([path])
    assert verification.errors == [] and verification.decisions == written
    assert {f.kind for f in verification.findings} >= {"torn_line", "restart"}
    assert any("carried on after a failed write" in f.message for f in verification.findings)


def test_a_last_record_that_no_longer_matches_its_hash_counts_as_a_chain_failure(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    records = read_records(path)
    records[-1]["records"] = 99
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records))
    failures: list[int] = []
    writer = AuditWriter(audit_settings(path), on_chain_failure=lambda: failures.append(1))
    writer.start()
    writer.stop()
    assert failures == [1]
    assert [f.kind for f in verify_log([path]).errors] == ["modified"]


def test_an_unreadable_last_record_refuses_to_start_rather_than_fork_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    path.write_bytes(path.read_bytes() + b"not a record\n")
    with pytest.raises(AuditError, match="its last record is unreadable"):
        AuditWriter(audit_settings(path)).start()
    path.write_bytes(path.read_bytes().removesuffix(b"not a record\n"))
    reopened = AuditWriter(audit_settings(path))
    reopened.start()
    reopened.stop()


def test_a_record_that_cannot_be_encoded_leaves_a_minimal_record_instead_of_none(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    signer = signer_at(tmp_path / "key.pem")
    writer = AuditWriter(audit_settings(path), signer=signer)
    writer.start()
    writer.submit(decision(1, decision="deny", reason="policy_denied", route="/v1/\ud800"))
    assert writer.wait_written(10)
    writer.stop()
    record = next(r for r in read_records(path) if r["type"] == "decision")
    assert {k: record[k] for k in ("request_id", "decision", "reason", "unencodable")} == {
        "request_id": "req-1", "decision": "deny", "reason": "policy_denied", "unencodable": True}
    assert "route" not in record
    assert (writer.drops, writer.written) == (0, 1)
    assert verify_log([path], public_keys={signer.key_id: signer.public_key()}).findings == []


# --- durability = "written": a write reported not written is never written ----------------------------------------


def logged_ids(path: Path) -> list[str]:
    """The request ids of the decision records in every file of ``path``'s log (torn lines left out)."""
    ids = []
    for file in log_files(path):
        for line in file.read_bytes().splitlines(keepends=True):
            if line.endswith(b"\n") and (record := json.loads(line))["type"] == "decision":
                ids.append(record["request_id"])
    return ids


def pausing_encoder(request_id: str) -> tuple[Callable[[Any], dict[str, Any]], threading.Event, threading.Event]:
    """An encoder that stops the writer thread on ``request_id``'s record, once the thread has taken it: the
    record is then being written. Returns the encoder, the event set when it stops and the one releasing it."""
    taken, release = threading.Event(), threading.Event()

    def encode(item: Any) -> dict[str, Any]:
        if item["request_id"] == request_id:
            taken.set()
            assert release.wait(30), "the test never released the writer"
        return dict(item)

    return encode, taken, release


def test_a_write_that_times_out_is_never_written_later_and_is_counted_as_dropped(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    dropped: list[int] = []
    writer = AuditWriter(audit_settings(path), on_drop=dropped.append)
    writer.start()
    with writer.hold():
        assert asyncio.run(writer.write(decision(1), 0.05)) is False
    assert asyncio.run(writer.write(decision(2), 30)) is True, "the writer has gone past the first record"
    writer.stop()
    assert logged_ids(path) == ["req-2"]
    assert (writer.drops, sum(dropped), writer.written) == (1, 1, 1)
    assert verify_log([path]).errors == []


def test_a_write_reported_written_is_in_the_log_and_the_chain_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    signer = signer_at(tmp_path / "key.pem")
    writer = AuditWriter(audit_settings(path, checkpoint_every=2), signer=signer)
    writer.start()

    async def write_three() -> list[bool]:
        return list(await asyncio.gather(*(writer.write(decision(n), 30) for n in range(3))))

    assert asyncio.run(write_three()) == [True] * 3
    assert sorted(logged_ids(path)) == ["req-0", "req-1", "req-2"], "written before the writer stops"
    writer.stop()
    result = verify_log([path], public_keys={signer.key_id: signer.public_key()})
    assert result.findings == [] and result.decisions == 3
    assert writer.drops == 0


def test_a_cancelled_write_is_never_written_and_is_counted_as_dropped(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(audit_settings(path))
    writer.start()

    async def cancel_while_queued() -> None:
        pending = asyncio.create_task(writer.write(decision(1), 30))
        while writer.wait_written(0):
            await asyncio.sleep(0.001)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending

    with writer.hold():
        asyncio.run(cancel_while_queued())
    assert asyncio.run(writer.write(decision(2), 30)) is True
    writer.stop()
    assert logged_ids(path) == ["req-2"]
    assert (writer.drops, writer.written) == (1, 1)
    assert verify_log([path]).errors == []


def test_a_write_that_times_out_while_its_record_is_being_written_reports_that_it_was(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    encode, taken, release = pausing_encoder("req-1")
    writer = AuditWriter(audit_settings(path), encode=encode)
    writer.start()

    async def time_out_while_taken() -> bool:
        started = time.monotonic()
        pending = asyncio.create_task(writer.write(decision(1), 1.0))
        assert await asyncio.to_thread(taken.wait, 30)
        await asyncio.sleep(max(0.0, started + 1.5 - time.monotonic()))
        assert not pending.done(), "a record being written is waited for past the timeout"
        release.set()
        return await pending

    try:
        assert asyncio.run(time_out_while_taken()) is True
    finally:
        release.set()
        writer.stop()
    assert logged_ids(path) == ["req-1"]
    assert writer.drops == 0


def test_a_write_cancelled_while_its_record_is_being_written_reports_that_it_was(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    encode, taken, release = pausing_encoder("req-1")
    writer = AuditWriter(audit_settings(path), encode=encode)
    writer.start()

    async def cancel_while_taken() -> tuple[bool, int]:
        pending = asyncio.create_task(writer.write(decision(1), 30))
        assert await asyncio.to_thread(taken.wait, 30)
        pending.cancel()
        await asyncio.sleep(0.05)
        assert not pending.done(), "the cancellation waits for the write in flight"
        pending.cancel()
        release.set()
        return await pending, pending.cancelling()

    try:
        assert asyncio.run(cancel_while_taken()) == (True, 0)
    finally:
        release.set()
        writer.stop()
    assert logged_ids(path) == ["req-1"]
    assert writer.drops == 0


def test_under_concurrent_writes_exactly_the_records_reported_written_are_in_the_log(tmp_path: Path) -> None:
    """A quarter of the writes time out while the writer is held, a quarter wait long enough, the rest time out
    around the moment it resumes; a slow encoder widens the window in which the writer thread claims a record
    while its caller gives up on it."""
    path = tmp_path / "audit.jsonl"

    def slow(item: Any) -> dict[str, Any]:
        time.sleep(0.0002)
        return dict(item)

    writer = AuditWriter(audit_settings(path, checkpoint_every=7), encode=slow)
    writer.start()
    count = 600

    def timeout(n: int) -> float:
        return 0.0 if n % 4 == 0 else 30.0 if n % 4 == 1 else 0.001 * (n % 97)

    async def write_all() -> list[bool]:
        with writer.hold():
            writes = [asyncio.create_task(writer.write(decision(n), timeout(n))) for n in range(count)]
            await asyncio.wait(writes[0::4])
        return list(await asyncio.gather(*writes))

    outcomes = asyncio.run(write_all())
    writer.stop()
    reported = sorted(f"req-{n}" for n, written in enumerate(outcomes) if written)
    assert sorted(logged_ids(path)) == reported
    assert not any(outcomes[0::4]) and all(outcomes[1::4])
    assert (writer.drops, writer.written) == (count - len(reported), len(reported))
    assert verify_log([path]).errors == []


FILE_SIZE_LIMITED_WRITES = """
import asyncio, json, resource, signal, sys
from pathlib import Path
from dsguard.audit.writer import AuditWriter
from tests.audit_logs import audit_settings, decision

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))
writer = AuditWriter(audit_settings(Path(sys.argv[1])))
writer.start()

async def main():
    outcomes = []
    for start in range(0, 60, 20):
        with writer.hold():
            tasks = [asyncio.create_task(writer.write(decision(n), 30)) for n in range(start, start + 20)]
            await asyncio.sleep(0.05)
        outcomes += await asyncio.gather(*tasks)
    return outcomes

outcomes = asyncio.run(main())
writer.stop()
print(json.dumps({"written": [f"req-{n}" for n, ok in enumerate(outcomes) if ok], "drops": writer.drops}))
"""


def test_after_a_write_fails_part_way_the_records_reported_written_are_exactly_those_in_the_log(
        tmp_path: Path) -> None:
    """Files may not grow beyond 3000 bytes: a batch of 20 records is written only in part, its whole lines
    kept; each call learns whether its own line is among them."""
    path = tmp_path / "audit.jsonl"
    result = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMITED_WRITES, str(path)], capture_output=True,
                            text=True, timeout=60, cwd=Path(__file__).parent.parent, check=True)
    outcome = json.loads(result.stdout)
    assert "write failed (File too large)" in result.stderr
    assert sorted(logged_ids(path)) == sorted(outcome["written"])
    assert outcome["written"] and outcome["drops"] == 60 - len(outcome["written"])
    assert verify_log([path]).errors == []
