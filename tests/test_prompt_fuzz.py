"""Whatever the body, the prompt guard answers: a decision, never an exception."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dsguard.checks.prompt import PromptGuardCheck
from dsguard.config import PromptGuardConfig
from dsguard.context import RequestContext
from dsguard.decision import Denial
from dsguard.promptguard.injection import InjectionDetector
from dsguard.promptguard.pii import PIIScanner
from dsguard.promptguard.stream import ResponseRedactor

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["messages", "prompt", "input", "role", "content", "type", "text", "instructions", "x"]),
        inner, max_size=4),
    max_leaves=20)
bodies = json_values | st.fixed_dictionaries({"messages": st.lists(json_values, max_size=3)})
CHECKS = [PromptGuardCheck(PromptGuardConfig(action=action)) for action in ("block", "flag", "redact")]


def context(body: Any) -> RequestContext:
    ctx = RequestContext("POST", "/v1/chat/completions", b"/v1/chat/completions", b"",
                         [(b"content-type", b"application/json")], "127.0.0.1", "https")
    ctx.json = body
    return ctx


@settings(max_examples=150, deadline=None)
@given(bodies)
def test_any_json_body_gets_a_decision(body: Any) -> None:
    for check in CHECKS:
        ctx = context(body)
        outcome = check.check(ctx)
        assert outcome is None or isinstance(outcome, Denial)
        assert ctx.body_replacement is None or isinstance(ctx.body_replacement, bytes)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_any_raw_body_without_parsed_json_gets_a_decision(raw: bytes) -> None:
    ctx = context(None)
    ctx.body = raw
    outcome = CHECKS[0].check(ctx)
    assert outcome is None or isinstance(outcome, Denial)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_any_text_gets_a_verdict_and_a_redaction(text: str) -> None:
    assert InjectionDetector().analyze(text).score >= 0
    assert isinstance(PIIScanner().redact(text), str)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=80) | st.sampled_from([b"data: ", b"\n\n", b"data: [DONE]\n\n", b'{"choices":[',
                                                           b'{"delta":{"content":"a@b.io"}}', b"]}"]),
                max_size=12))
def test_any_response_bytes_pass_through_the_redactor(parts: list[bytes]) -> None:
    redactor = ResponseRedactor(PIIScanner())
    out = b"".join(redactor.feed(part) for part in parts) + redactor.finish()
    assert isinstance(out, bytes)
