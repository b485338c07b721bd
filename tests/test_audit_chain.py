"""The hash chain and `dsguard audit verify`: each kind of tampering is found and named precisely."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dsguard.audit.chain import GENESIS, Chain, canonical, record_hash
from dsguard.audit.signing import CheckpointSigner, sign_checkpoint
from dsguard.audit.verify import EXIT_INCOMPLETE, EXIT_OK, EXIT_TAMPERED, EXIT_UNREADABLE, Verification, verify_log
from dsguard.cli import main

from .audit_logs import index_of_seq, read_records, rehash, signer_at, write_log, write_records


@pytest.fixture
def signer(tmp_path: Path) -> CheckpointSigner:
    return signer_at(tmp_path / "audit-signing.pem")


@pytest.fixture
def log(tmp_path: Path, signer: CheckpointSigner) -> Path:
    """29 records: a start record, 25 decisions, checkpoints at seq 12 and 23, a closing one at seq 29."""
    path = tmp_path / "audit" / "audit.jsonl"
    write_log(path, 25, signer=signer, checkpoint_every=10)
    return path


def verify(path: Path, signer: CheckpointSigner) -> Verification:
    return verify_log([path], public_keys={signer.key_id: signer.public_key()})


def kinds(result: Verification) -> list[str]:
    return [f.kind for f in result.errors]


def test_each_record_links_to_the_hash_of_the_one_before() -> None:
    chain = Chain()
    first: dict[str, object] = {"type": "decision", "n": 1}
    second: dict[str, object] = {"type": "decision", "n": 2}
    chain.link(first)
    chain.link(second)
    assert (first["seq"], first["prev"]) == (1, GENESIS)
    assert (second["seq"], second["prev"]) == (2, first["hash"])
    assert chain.head == second["hash"] == record_hash(second)


def test_a_line_is_the_canonical_json_of_its_record_with_the_hash_last() -> None:
    record: dict[str, object] = {"type": "decision", "subject": "zoë"}
    line = Chain().link(record)
    assert json.loads(line) == record
    assert line == canonical({k: v for k, v in record.items() if k != "hash"})[:-1] + \
        f',"hash":"{record["hash"]}"}}\n'.encode()


def test_the_hash_covers_every_member_but_itself() -> None:
    record: dict[str, object] = {"type": "decision", "decision": "deny"}
    Chain().link(record)
    assert record_hash({**record, "decision": "allow"}) != record["hash"]
    assert record_hash({**record, "hash": "0" * 64}) == record["hash"]


def test_canonical_json_does_not_depend_on_key_order_or_spacing() -> None:
    assert canonical({"b": 1, "a": "é"}) == canonical({"a": "é", "b": 1}) == '{"a":"é","b":1}'.encode()


def test_an_untouched_log_verifies_and_is_anchored_by_its_last_checkpoint(log: Path,
                                                                          signer: CheckpointSigner) -> None:
    result = verify(log, signer)
    assert result.findings == []
    assert (result.records, result.decisions, result.checkpoints) == (29, 25, 3)
    assert (result.verified_checkpoints, result.anchored_seq, result.unanchored) == (3, 29, 0)
    assert result.exit_code == EXIT_OK


def test_modified_field_is_found_at_its_record(log: Path, signer: CheckpointSigner) -> None:
    records = read_records(log)
    records[index_of_seq(records, 7)]["decision"] = "deny"
    write_records(log, records)
    result = verify(log, signer)
    assert kinds(result) == ["modified"]
    assert (result.errors[0].seq, result.errors[0].line) == (7, 7)
    assert "seq 7: the record does not match its hash: it was modified" in str(result.errors[0])
    assert result.exit_code == EXIT_TAMPERED


def test_modified_record_with_a_recomputed_hash_breaks_the_next_link(log: Path, signer: CheckpointSigner) -> None:
    records = read_records(log)
    index = index_of_seq(records, 7)
    records[index]["decision"] = "deny"
    records[index]["hash"] = record_hash(records[index])
    write_records(log, records)
    result = verify(log, signer)
    assert kinds(result) == ["broken_link"]
    assert result.errors[0].seq == 8
    assert "seq 8 does not link to seq 7" in result.errors[0].message


def test_a_chain_rewritten_after_an_edit_fails_at_the_next_checkpoint_signature(log: Path,
                                                                                 signer: CheckpointSigner) -> None:
    records = read_records(log)
    index = index_of_seq(records, 7)
    records[index]["decision"] = "deny"
    rehash(records, index)
    write_records(log, records)
    result = verify(log, signer)
    assert [(f.kind, f.seq) for f in result.errors] == [("bad_signature", 12), ("bad_signature", 23),
                                                        ("bad_signature", 29)]
    assert "checkpoint seq 12: the signature does not verify" in result.errors[0].message


def test_deleted_record_is_reported_as_a_gap_between_its_neighbours(log: Path, signer: CheckpointSigner) -> None:
    records = read_records(log)
    del records[index_of_seq(records, 9)]
    write_records(log, records)
    result = verify(log, signer)
    assert kinds(result) == ["deleted"]
    assert f"seq 9 missing (1 record: deleted), between {log}:8 and {log}:9" in result.errors[0].message


def test_inserted_forged_record_is_named_even_with_a_valid_hash_and_link(log: Path,
                                                                          signer: CheckpointSigner) -> None:
    records = read_records(log)
    index = index_of_seq(records, 5)
    forged = {**records[index], "decision": "allow", "subject": "mallory", "prev": records[index - 1]["hash"]}
    forged["hash"] = record_hash(forged)
    records.insert(index, forged)
    write_records(log, records)
    result = verify(log, signer)
    assert kinds(result) == ["inserted"]
    assert (result.errors[0].seq, result.errors[0].line) == (5, 5)
    assert "this copy is not linked from seq 6: a forged record was inserted" in result.errors[0].message


def test_swapped_records_are_reported_as_moved(log: Path, signer: CheckpointSigner) -> None:
    records = read_records(log)
    index = index_of_seq(records, 15)
    records[index], records[index + 1] = records[index + 1], records[index]
    write_records(log, records)
    result = verify(log, signer)
    assert kinds(result) == ["reordered"]
    assert "seq 15 appears after seq 16: records were moved out of order" in result.errors[0].message


def test_a_tail_cut_after_a_checkpoint_is_unanchored_not_tampering(log: Path, signer: CheckpointSigner) -> None:
    records = read_records(log)
    write_records(log, records[:index_of_seq(records, 27) + 1])
    result = verify(log, signer)
    assert result.errors == []
    assert [f.kind for f in result.warnings] == ["unanchored"]
    assert "4 record(s) after the last verified checkpoint (seq 23) are unanchored" in result.warnings[0].message
    assert result.exit_code == EXIT_INCOMPLETE


def test_a_torn_last_line_is_reported_as_an_interrupted_write(log: Path, signer: CheckpointSigner) -> None:
    data = log.read_bytes()
    log.write_bytes(data[:-40])
    result = verify(log, signer)
    assert result.errors == []
    torn = next(f for f in result.warnings if f.kind == "torn_line")
    assert torn.line == 29
    assert "torn last line" in torn.message and "not part of the chain" in torn.message
    assert result.head_seq == 28


def test_forged_checkpoint_signature_is_detected(log: Path, signer: CheckpointSigner) -> None:
    records = read_records(log)
    index = index_of_seq(records, 23)
    signature = records[index]["signature"]
    records[index]["signature"] = ("A" if signature[0] != "A" else "B") + signature[1:]
    rehash(records, index)
    write_records(log, records)
    result = verify(log, signer)
    assert [(f.kind, f.seq) for f in result.errors] == [("bad_signature", 23), ("bad_signature", 29)]


def test_checkpoint_re_signed_with_another_key_is_refused_when_the_key_is_pinned(
        tmp_path: Path, log: Path, signer: CheckpointSigner) -> None:
    records = read_records(log)
    index = index_of_seq(records, 7)
    records[index]["decision"] = "deny"
    rehash(records, index)
    attacker = signer_at(tmp_path / "attacker.pem")
    for position in range(index, len(records)):
        record = records[position]
        if record["type"] == "checkpoint":
            for name in ("signature", "key_id", "alg", "jwk"):
                record.pop(name)
            sign_checkpoint(record, attacker)
        rehash(records, position)
    write_records(log, records)
    result = verify(log, signer)
    assert set(kinds(result)) == {"unknown_key"}
    assert f"checkpoint seq 12 is signed by key {attacker.key_id}, which is not one of the pinned keys" in \
        result.errors[0].message
    assert verify_log([log]).errors == []  # why keys must be pinned: the log alone proves nothing


@pytest.fixture
def rotated(tmp_path: Path, signer: CheckpointSigner) -> Path:
    path = tmp_path / "rotated" / "audit.jsonl"
    write_log(path, 60, signer=signer, checkpoint_every=10, rotate_size=1500)
    return path


def rotated_files(active: Path) -> list[Path]:
    return sorted(p for p in active.parent.glob("audit.*.jsonl"))


def test_rotation_continues_the_chain_across_files(rotated: Path, signer: CheckpointSigner) -> None:
    files = rotated_files(rotated)
    assert len(files) >= 3
    first_of_second = read_records(files[1])[0]
    assert first_of_second["prev"] == read_records(files[0])[-1]["hash"]
    assert read_records(files[0])[-1]["type"] == "checkpoint"
    result = verify(rotated, signer)
    assert result.findings == [] and result.decisions == 60


def test_removed_rotated_file_leaves_a_gap_between_files(rotated: Path, signer: CheckpointSigner) -> None:
    files = rotated_files(rotated)
    removed = read_records(files[1])
    files[1].unlink()
    result = verify(rotated, signer)
    assert kinds(result) == ["deleted"]
    first, last = removed[0]["seq"], removed[-1]["seq"]
    assert f"seq {first} to {last} missing ({last - first + 1} records: a rotated file was removed), between the " \
           f"end of {files[0]} and {files[2]}" in result.errors[0].message


def test_removed_oldest_file_is_reported_at_the_start(rotated: Path, signer: CheckpointSigner) -> None:
    files = rotated_files(rotated)
    count = len(read_records(files[0]))
    files[0].unlink()
    result = verify(rotated, signer)
    assert kinds(result) == ["missing_start"]
    assert f"the chain starts at seq {count + 1}: records 1 to {count} are missing" in result.errors[0].message


def test_truncated_rotated_file_misses_its_closing_checkpoint(rotated: Path, signer: CheckpointSigner) -> None:
    files = rotated_files(rotated)
    records = read_records(files[0])
    write_records(files[0], records[:-3])
    result = verify(rotated, signer)
    assert kinds(result) == ["truncated_file", "deleted"]
    assert f"{files[0]} ends at seq {records[-4]['seq']} without the checkpoint that closes a rotated file" in \
        result.errors[0].message


def test_record_appended_after_a_clean_stop_is_detected(log: Path, signer: CheckpointSigner) -> None:
    records = read_records(log)
    appended = {**records[-2], "request_id": "req-forged", "seq": records[-1]["seq"] + 1,
                "prev": records[-1]["hash"]}
    appended["hash"] = record_hash(appended)
    write_records(log, [*records, appended])
    result = verify(log, signer)
    assert kinds(result) == ["appended"]


def test_unsigned_checkpoints_anchor_nothing(tmp_path: Path) -> None:
    path = tmp_path / "unsigned" / "audit.jsonl"
    write_log(path, 5)
    result = verify_log([path])
    assert result.errors == []
    assert [f.kind for f in result.warnings] == ["unsigned", "unanchored"]
    assert result.anchored_seq is None


def test_verify_command_exits_0_for_an_intact_anchored_log(log: Path, signer: CheckpointSigner,
                                                           tmp_path: Path) -> None:
    public = tmp_path / "audit-public.pem"
    from cryptography.hazmat.primitives import serialization

    public.write_bytes(signer.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo))
    result = subprocess.run([sys.executable, "-m", "dsguard.cli", "audit", "verify", "--public-key", str(public),
                             str(log)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK: 29 records (25 decisions) in 1 file(s), 3/3 checkpoints verified")


def test_verify_command_exits_1_and_names_the_tampered_record(log: Path) -> None:
    records = read_records(log)
    del records[index_of_seq(records, 9)]
    write_records(log, records)
    result = CliRunner().invoke(main, ["audit", "verify", str(log)])
    assert result.exit_code == EXIT_TAMPERED
    assert f"{log}:9: error: seq 9 missing" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("TAMPERED:")


def test_verify_command_exits_3_for_an_unanchored_tail(log: Path) -> None:
    log.write_bytes(log.read_bytes()[:-40])
    result = CliRunner().invoke(main, ["audit", "verify", str(log)])
    assert result.exit_code == EXIT_INCOMPLETE
    assert "warning: torn last line" in result.stdout


def test_verify_command_exits_2_for_a_missing_log(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["audit", "verify", str(tmp_path / "none.jsonl")])
    assert result.exit_code == EXIT_UNREADABLE
    assert "no such audit log file" in result.stderr
