"""The audit writer: signed checkpoints, rotation, restarts, and a full queue that never stalls a caller."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

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
