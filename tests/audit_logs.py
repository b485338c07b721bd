"""Audit logs for tests: real logs written by the real writer, and the edits an attacker would make."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from dsguard.audit.chain import record_hash
from dsguard.audit.record import rfc3339
from dsguard.audit.signing import CheckpointSigner, open_checkpoint_signer
from dsguard.audit.writer import AuditWriter
from dsguard.config import AuditConfig


def new_signing_key(path: Path) -> str:
    """An Ed25519 PKCS#8 PEM written to ``path``; returns its ``file:`` key URL."""
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return f"file:{path}"


def signer_at(path: Path) -> CheckpointSigner:
    return open_checkpoint_signer(new_signing_key(path))


def audit_settings(path: Path, **overrides: Any) -> AuditConfig:
    return dataclasses.replace(AuditConfig(path=path), **overrides)


def decision(n: int, **fields: Any) -> dict[str, Any]:
    return {"type": "decision", "time": rfc3339(1_700_000_000 + n), "request_id": f"req-{n}", "decision": "allow",
            **fields}


def write_log(path: Path, count: int, *, signer: CheckpointSigner | None = None, **settings: Any) -> AuditWriter:
    """``count`` decision records written (and the log closed) by a real writer."""
    writer = AuditWriter(audit_settings(path, **settings), signer=signer)
    writer.start()
    for n in range(count):
        writer.submit(decision(n))
    writer.stop()
    return writer


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(json.dumps(r, sort_keys=True, separators=(",", ":")).encode() + b"\n"
                              for r in records))


def rehash(records: list[dict[str, Any]], start: int) -> None:
    """Recompute ``prev`` and ``hash`` from ``records[start]`` on, as an attacker covering an edit would."""
    for index in range(start, len(records)):
        if index > 0:
            records[index]["prev"] = records[index - 1]["hash"]
        records[index]["hash"] = record_hash(records[index])


def index_of_seq(records: list[dict[str, Any]], seq: int) -> int:
    return next(i for i, r in enumerate(records) if r["seq"] == seq)
