"""LLM token accounting: what a call may use before it runs, and what it used after.

**Reservation.** A call with an OpenAI-style JSON object body (``messages``, ``prompt`` or
``input``) reserves ``prompt estimate + n * completion cap`` tokens before it is admitted:

- prompt estimate: ``ceil(characters / 4)`` over every string under ``messages``, ``prompt``,
  ``input``, ``instructions``, ``system``, ``tools`` and ``functions`` (role names and tool
  schemas included; ``image_url``, ``input_audio`` and ``file`` parts left out). Four characters
  a token is English text under common BPE tokenizers; other scripts can take more tokens than
  that, which settlement charges afterwards;
- completion cap: the largest of ``max_completion_tokens``, ``max_tokens`` and
  ``max_output_tokens`` the body sets (an integer, a float rounded up, or a numeric string, as
  lenient servers accept), else the entry's ``default_max_tokens``; times ``n`` choices.

The body is ``ctx.json`` when hygiene parsed it, else the raw body is parsed here whatever its
Content-Type (apps such as Starlette's ``request.json()`` ignore it). Calls without such a body
reserve nothing.

**Usage contract.** The app (or dsguard's runner) reports what a call used by setting
``ctx.attributes["llm_usage"]`` (``request.state.dsguard.attributes`` under ASGI) to a mapping
with ``total_tokens``, or ``prompt_tokens`` and ``completion_tokens`` (non-negative integers),
before the response or stream ends; a streaming app sets it when the stream stops, also when
the client went away (e.g. in the generator's ``finally``).

**Settlement**, once the response is sent or the client has gone: with usage reported, the
difference is settled (``reserved - used`` refunded, never below zero; usage above the
reservation charged on top, so the quota's accounting follows real usage). Without usage: a
response with an error status (4xx/5xx, including a denial by a later check) refunds the
whole reservation; anything else (success, or the client gone before a response) keeps it
charged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from ..context import RequestContext, ResponseInfo

CHARS_PER_TOKEN = 4
USAGE_ATTRIBUTE = "llm_usage"
PROMPT_FIELDS = ("messages", "prompt", "input", "instructions", "system", "tools", "functions")
COMPLETION_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
NON_TEXT_PARTS = frozenset({"image_url", "input_audio", "file"})
_PARSED = "dsguard.llm_body"


def llm_body(ctx: RequestContext) -> dict[str, Any] | None:
    """The call's JSON object body, or ``None`` if it has none."""
    body = ctx.json
    if isinstance(body, dict):
        return body
    if body is not None or not ctx.body:
        return None
    attributes = ctx.attributes
    if _PARSED not in attributes:
        parsed = None
        if ctx.body.lstrip()[:1] == b"{":
            try:
                parsed = json.loads(ctx.body)
            except (ValueError, RecursionError):
                parsed = None
        attributes[_PARSED] = parsed if isinstance(parsed, dict) else None
    return attributes[_PARSED]  # type: ignore[no-any-return]


def is_generation(body: Mapping[str, Any]) -> bool:
    return "messages" in body or "prompt" in body or "input" in body


def prompt_estimate(body: Mapping[str, Any]) -> int:
    """``ceil(characters / 4)`` of the prompt text (see the module documentation)."""
    chars = 0
    stack: list[Any] = [body[f] for f in PROMPT_FIELDS if f in body]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            chars += len(node)
        elif isinstance(node, dict):
            stack.extend(v for k, v in node.items() if k not in NON_TEXT_PARTS)
        elif isinstance(node, list):
            stack.extend(node)
    return math.ceil(chars / CHARS_PER_TOKEN)


def _count(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and math.isfinite(value):
        return max(math.ceil(value), 0)
    if isinstance(value, str):
        try:
            return _count(float(value.strip()))
        except ValueError:
            return None
    return None


def completion_cap(body: Mapping[str, Any], default: int) -> int:
    """Most completion tokens the call may produce (see the module documentation)."""
    caps = [c for c in (_count(body.get(f)) for f in COMPLETION_FIELDS if f in body) if c is not None]
    choices = _count(body.get("n")) if "n" in body else None
    return (max(caps) if caps else default) * max(choices or 1, 1)


def _tokens(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def reported_usage(ctx: RequestContext) -> int | None:
    """Total tokens the app reported for this call, or ``None``."""
    usage = ctx.attributes.get(USAGE_ATTRIBUTE)
    if not isinstance(usage, Mapping):
        return None
    total = _tokens(usage.get("total_tokens"))
    if total is not None:
        return total
    counts = [c for c in (_tokens(usage.get(k)) for k in ("prompt_tokens", "completion_tokens")) if c is not None]
    return sum(counts) if counts else None


def settlement(reserved: int, used: int | None, response: ResponseInfo) -> int:
    """Tokens to charge (positive) or refund (negative) once the call is over."""
    if used is not None:
        return used - reserved
    if response.status is not None and response.status >= 400:
        return -reserved
    return 0
