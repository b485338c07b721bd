"""The CRS evaluation corpus (../shared/eval/crs, see its README) as WAF input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from dsguard.waf.normalize import decode_bytes
from dsguard.waf.targets import Collections, collect

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "eval" / "crs"
FAMILIES = ("sqli", "xss", "rce", "lfi", "php")
BENIGN = ("gotestwaf-fp", "openappsec-legit")


def records(name: str, corpus: Path = CORPUS) -> Iterator[dict[str, Any]]:
    """Records of ``crs-<family>.jsonl`` or ``benign-<name>.jsonl``."""
    path = corpus / (f"crs-{name}.jsonl" if name in FAMILIES else f"benign-{name}.jsonl")
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


def blocked_by_crs(record: dict[str, Any], paranoia: int) -> bool:
    level = record.get("crs_block_at_pl")
    return level is not None and level <= paranoia


def collections_of(record: dict[str, Any], **options: Any) -> Collections:
    """The collections a server would hand the WAF for this record's request."""
    uri = record.get("uri") or "/"
    raw_path, _, query = uri.partition("?")
    headers = [(k.lower().encode("latin-1", "replace"), str(v).encode("utf-8", "surrogateescape"))
               for k, v in (record.get("headers") or {}).items()]
    body = record.get("body")
    raw_body = body.encode("utf-8", "surrogateescape") if body else None
    if raw_body and not any(name == b"content-length" for name, _ in headers):
        headers.append((b"content-length", str(len(raw_body)).encode()))  # as go-ftw sends it
    content_type = (record.get("headers") or {}).get("Content-Type") or ""
    media_type = content_type.split(";", 1)[0].strip().lower() or None
    return collect(record.get("method") or "GET", decode_bytes(unquote_to_bytes(raw_path)),
                   raw_path.encode("utf-8", "surrogateescape"), query.encode("utf-8", "surrogateescape"),
                   headers, raw_body, media_type, **options)
