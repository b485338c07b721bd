"""What the audit log records of one call, and the shapes of its other records.

A decision record (``"type": "decision"``) holds: ``time`` (UTC, RFC 3339), ``request_id``,
``decision`` (``allow``, ``deny``, ``report``: a report-mode check would have denied, or
``abandoned``: the client left before a decision), ``reason`` (the denial code), ``check``
(the check that denied), ``reported`` (codes report-mode checks would have denied with),
``subject``, ``tenant``, ``auth``, ``client_ip``, ``method``, ``route`` (the path, no query),
``model``, ``status``, ``usage`` (the LLM token usage the app reported), ``latency_ms``,
``policy_rule`` (the rule that decided, and where it is written), ``findings`` (summaries of the
WAF, prompt guard and anomaly verdicts) and ``prompt``: the SHA-256 and length of the prompt
fields, never their text unless ``[audit] log_prompts`` is on. Strings taken from the request
that UTF-8 cannot encode (lone surrogates, which JSON's ``\\uD800`` escapes let through) are
recorded with those characters backslash-escaped, so that the record can still be written.

:func:`capture` runs on the request path and only gathers references (the body is parsed
there only if a check parsed it already); :func:`decision_record` builds the record on the
writer thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Mapping
from typing import Any

from ..context import RequestContext, ResponseInfo
from ..guard import DENIAL_CODE
from ..limits.tokens import PROMPT_FIELDS, USAGE_ATTRIBUTE
from .chain import canonical

DECISION = "decision"
CHECKPOINT = "checkpoint"
START = "start"

STARTED_NS = "audit.started_ns"
"""``ctx.attributes`` key: when the first check started (set by :class:`~dsguard.audit.log.AuditStart`)."""
POLICY_RULE = "policy.rule"
FINDINGS = ("waf", "prompt_guard", "anomaly")
USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")

MAX_TEXT = 512
MAX_ITEMS = 32
MAX_DEPTH = 4


@dataclasses.dataclass(slots=True)
class CallFacts:
    """One call as seen when its response was sent: cheap to gather, turned into a record later."""

    time: float
    request_id: str
    decision: str
    reason: str | None
    check: str | None
    reported: tuple[str, ...]
    subject: str | None
    tenant: str | None
    auth: str | None
    client_ip: str | None
    method: str
    route: str
    status: int | None
    latency_ns: int | None
    body: Any
    """The parsed JSON body, or the raw body (parsed on the writer thread), or ``None``."""
    usage: Any
    policy_rule: Any
    findings: dict[str, Any]


def capture(ctx: RequestContext, response: ResponseInfo, *, now_ns: int | None = None) -> CallFacts:
    """The facts of ``ctx`` once ``response`` is sent (or the client went away)."""
    end_ns = time.time_ns() if now_ns is None else now_ns
    attributes = ctx.attributes
    if response.denied_by is not None:
        decision, reason, check = "deny", attributes.get(DENIAL_CODE), response.denied_by
    elif response.status is None and response.disconnected:
        decision, reason, check = "abandoned", None, None
    elif ctx.denials_reported:
        decision, reason, check = "report", ctx.denials_reported[0].code, ctx.denials_reported[0].check
    else:
        decision, reason, check = "allow", None, None
    identity = ctx.identity
    started = attributes.get(STARTED_NS)
    return CallFacts(
        time=end_ns / 1e9, request_id=ctx.request_id, decision=decision, reason=reason, check=check,
        reported=tuple(d.code for d in ctx.denials_reported),
        subject=identity.subject if identity is not None else None,
        tenant=identity.tenant if identity is not None else None,
        auth=identity.method if identity is not None else None,
        client_ip=ctx.client_ip, method=ctx.method, route=ctx.path, status=response.status,
        latency_ns=end_ns - started if isinstance(started, int) else None,
        body=ctx.json if isinstance(ctx.json, dict) else ctx.body,
        usage=attributes.get(USAGE_ATTRIBUTE), policy_rule=attributes.get(POLICY_RULE),
        findings={name: attributes[name] for name in FINDINGS if name in attributes},
    )


def rfc3339(seconds: float) -> str:
    """``2024-05-01T12:00:00.123456Z``."""
    whole = math.floor(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((seconds - whole) * 1e6):06d}Z"


def encodable(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates) written as ``\\udXXX`` escapes."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _text(value: object, limit: int = MAX_TEXT) -> str:
    text = value if isinstance(value, str) else str(value)
    return encodable(text if len(text) <= limit else text[:limit] + "...")


def _optional(value: object) -> str | None:
    return encodable(value) if isinstance(value, str) else None


def _encodable_tree(value: Any) -> Any:
    if isinstance(value, str):
        return encodable(value)
    if isinstance(value, dict):
        return {encodable(str(k)): _encodable_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encodable_tree(v) for v in value]
    return value


def summary(value: Any, depth: int = 0) -> Any:
    """``value`` as bounded JSON: strings cut at 512 characters, 32 items per list or table, 4 levels."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _text(value)
    if depth >= MAX_DEPTH:
        return _text(value, 64)
    if isinstance(value, Mapping):
        return {_text(k, 64): summary(v, depth + 1) for k, v in list(value.items())[:MAX_ITEMS]}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [summary(v, depth + 1) for v in list(items)[:MAX_ITEMS]]
    return _text(value)


def _usage(value: Any) -> dict[str, int] | None:
    if not isinstance(value, Mapping):
        return None
    usage = {}
    for name in USAGE_FIELDS:
        count = value.get(name)
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            usage[name] = count
    return usage or None


def _rule(rule: Any) -> dict[str, Any] | None:
    if rule is None:
        return None
    location = getattr(rule, "location", None)
    return {"rule": _text(rule), "at": _text(location) if location is not None else None}


def _prompt_chars(node: Any) -> int:
    chars = 0
    stack = [node]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            chars += len(item)
        elif kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
    return chars


def prompt_summary(body: Mapping[str, Any] | None, *, include_text: bool) -> dict[str, Any] | None:
    """SHA-256 of the canonical JSON of the prompt fields, and their length in characters."""
    if body is None:
        return None
    fields = {name: body[name] for name in PROMPT_FIELDS if name in body}
    if not fields:
        return None
    try:
        try:
            encoded = canonical(fields)
        except UnicodeEncodeError:
            fields = _encodable_tree(fields)
            encoded = canonical(fields)
    except (TypeError, ValueError, RecursionError):
        return None
    record: dict[str, Any] = {"sha256": hashlib.sha256(encoded).hexdigest(), "length": _prompt_chars(fields)}
    if include_text:
        record["content"] = fields
    return record


def json_object(body: Any) -> dict[str, Any] | None:
    """``body`` as a JSON object: already parsed, or raw bytes starting with ``{``."""
    if isinstance(body, dict):
        return body
    if isinstance(body, bytes) and body.lstrip()[:1] == b"{":
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            return None
        return parsed if isinstance(parsed, dict) else None
    return None


def _model(body: Mapping[str, Any] | None) -> str | None:
    model = body.get("model") if body is not None else None
    return _text(model, 128) if isinstance(model, str) else None


def decision_record(facts: CallFacts, *, log_prompts: bool = False) -> dict[str, Any]:
    """The record of ``facts``, ready to be chained."""
    body = json_object(facts.body)
    return {
        "type": DECISION,
        "time": rfc3339(facts.time),
        "request_id": encodable(facts.request_id),
        "decision": facts.decision,
        "reason": _optional(facts.reason),
        "check": _optional(facts.check),
        "reported": [_text(code, 128) for code in facts.reported],
        "subject": _text(facts.subject, 256) if facts.subject is not None else None,
        "tenant": _text(facts.tenant, 256) if facts.tenant is not None else None,
        "auth": _optional(facts.auth),
        "client_ip": _optional(facts.client_ip),
        "method": _text(facts.method, 16),
        "route": _text(facts.route),
        "model": _model(body),
        "status": facts.status,
        "usage": _usage(facts.usage),
        "latency_ms": round(facts.latency_ns / 1e6, 3) if facts.latency_ns is not None else None,
        "policy_rule": _rule(facts.policy_rule),
        "findings": summary(facts.findings) if facts.findings else None,
        "prompt": prompt_summary(body, include_text=log_prompts),
    }
