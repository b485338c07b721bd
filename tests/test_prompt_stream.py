"""Response redaction: OpenAI SSE streams with secrets split across chunks, JSON responses, other bodies."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dsguard.promptguard.pii import PIIScanner
from dsguard.promptguard.stream import ResponseRedactor

SCANNER = PIIScanner()
EMAIL_PIECES = ["Write to zq7.ve", "xmor@quill", "feather.io about it. "]
KEY_PIECES = ["Your key is sk-Q9xv7", "Lm2Pz8Rt", "4Wk1Yb6Nc3D, keep it safe."]


def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> bytes:
    event = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "deepseek-chat",
             "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def stream(pieces: list[str], *, done: bool = True, finish: bool = True) -> list[bytes]:
    events = [chunk({"role": "assistant", "content": ""})] + [chunk({"content": p}) for p in pieces]
    if finish:
        events.append(chunk({}, "stop"))
    if done:
        events.append(b"data: [DONE]\n\n")
    return events


def run(redactor: ResponseRedactor, parts: list[bytes]) -> bytes:
    return b"".join(redactor.feed(part) for part in parts) + redactor.finish()


def events(body: bytes) -> list[str]:
    """The data of each event."""
    found = []
    for event in body.decode().split("\n\n"):
        data = [line[len("data: "):] for line in event.split("\n") if line.startswith("data: ")]
        if data:
            found.append("\n".join(data))
    return found


def content(body: bytes, field: str = "content") -> str:
    text = ""
    for data in events(body):
        if data != "[DONE]":
            for choice in json.loads(data)["choices"]:
                text += choice.get("delta", {}).get(field) or choice.get("text") or ""
    return text


def test_an_email_split_across_chunks_is_redacted_whole() -> None:
    body = run(ResponseRedactor(SCANNER), stream(EMAIL_PIECES))
    assert content(body) == "Write to [REDACTED:email] about it. "
    assert not any(piece in body.decode() for piece in ("zq7", "xmor", "quill", "feather"))


def test_an_api_key_split_across_chunks_is_redacted_whole() -> None:
    body = run(ResponseRedactor(SCANNER), stream(KEY_PIECES))
    assert content(body) == "Your key is [REDACTED:api_key], keep it safe."
    assert not any(piece in body.decode() for piece in ("Q9xv7", "Lm2Pz8Rt", "4Wk1Yb6Nc3D"))


def test_every_event_stays_a_valid_chunk_and_done_comes_last() -> None:
    found = events(run(ResponseRedactor(SCANNER), stream(EMAIL_PIECES)))
    assert found[-1] == "[DONE]"
    assert all(json.loads(e)["object"] == "chat.completion.chunk" for e in found[:-1])


def test_held_text_is_released_in_the_finishing_chunk() -> None:
    found = events(run(ResponseRedactor(SCANNER), stream(["short answer"])))
    finishing = json.loads(found[-2])["choices"][0]
    assert finishing == {"index": 0, "delta": {"content": "short answer"}, "finish_reason": "stop"}


def test_held_text_is_released_before_done_without_a_finish_reason() -> None:
    body = run(ResponseRedactor(SCANNER), stream(["no finish ", "bob@corp.io"], finish=False))
    assert content(body) == "no finish [REDACTED:email]"
    assert events(body)[-1] == "[DONE]"


def test_held_text_is_released_when_the_stream_just_ends() -> None:
    body = run(ResponseRedactor(SCANNER), stream(["cut off at bob@corp.io"], done=False, finish=False))
    assert content(body) == "cut off at [REDACTED:email]"


def test_long_text_is_released_while_streaming_minus_the_window() -> None:
    redactor = ResponseRedactor(SCANNER, window=64)
    out = b"".join(redactor.feed(part) for part in stream(["word " * 100], done=False, finish=False))
    released = content(out)
    assert 500 - 64 - 5 <= len(released) < 500


def test_reasoning_content_is_redacted_too() -> None:
    parts = [chunk({"reasoning_content": "the user is bob@"}), chunk({"reasoning_content": "corp.io"}),
             chunk({"content": "ok"}, "stop")]
    body = run(ResponseRedactor(SCANNER), parts)
    assert content(body, "reasoning_content") == "the user is [REDACTED:email]"
    assert "corp.io" not in body.decode()


def test_each_choice_of_a_multi_choice_stream_is_held_on_its_own() -> None:
    parts = [chunk({"content": "a: bob@"}, index=0), chunk({"content": "b: carol@"}, index=1),
             chunk({"content": "corp.io"}, index=0), chunk({"content": "firm.io"}, index=1),
             chunk({}, "stop", index=0), chunk({}, "stop", index=1)]
    text = content(run(ResponseRedactor(SCANNER), parts))
    assert sorted(text.split("[REDACTED:email]")) == ["", "a: ", "b: "]


def test_text_completion_streams_are_redacted() -> None:
    def text_chunk(text: str, finish: str | None = None) -> bytes:
        event = {"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": finish}]}
        return b"data: " + json.dumps(event).encode() + b"\n\n"

    body = run(ResponseRedactor(SCANNER), [text_chunk("call +44 20 "), text_chunk("7946 0958"), text_chunk("", "stop")])
    assert content(body) == "call [REDACTED:phone]"


def test_a_json_chat_completion_is_redacted() -> None:
    response = {"id": "x", "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "It is bob@corp.io"}}]}
    redacted = json.loads(run(ResponseRedactor(SCANNER), [json.dumps(response).encode()]))
    assert redacted["choices"][0]["message"]["content"] == "It is [REDACTED:email]"


def test_a_json_body_without_findings_passes_byte_for_byte() -> None:
    body = b'{ "choices": [ {"message": {"content": "nothing here"}} ] }'
    assert run(ResponseRedactor(SCANNER), [body[:10], body[10:]]) == body


def test_bodies_that_are_not_openai_responses_pass_untouched() -> None:
    for body in (b'{"email": "bob@corp.io"}', b"<html>bob@corp.io</html>", b"data: not json bob@corp.io\n\n",
                 b"data: {\"email\": \"bob@corp.io\"}\n\n", b"\xff\xfe binary", b""):
        assert run(ResponseRedactor(SCANNER), [body]) == body


def test_event_and_id_lines_are_kept() -> None:
    body = run(ResponseRedactor(SCANNER), [b"event: delta\nid: 7\n" + chunk({"content": "hi bob@corp.io"}, "stop")])
    assert body.startswith(b"event: delta\nid: 7\ndata: ")
    assert content(body) == "hi [REDACTED:email]"


SECRET_TEXT = ("Contact zq7.vexmor@quillfeather.io or use sk-Q9xv7Lm2Pz8Rt4Wk1Yb6Nc3D and card 4111 1111 1111 1111. "
               "Done.")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(SECRET_TEXT) - 1), max_size=12, unique=True),
       st.integers(min_value=1, max_value=40))
def test_any_chunking_of_the_text_and_of_the_bytes_gives_the_redacted_whole(cuts: list[int], byte_step: int) -> None:
    bounds = [0, *sorted(cuts), len(SECRET_TEXT)]
    pieces = [SECRET_TEXT[a:b] for a, b in itertools.pairwise(bounds)]
    raw = b"".join(stream(pieces))
    parts = [raw[i:i + byte_step] for i in range(0, len(raw), byte_step)]
    body = run(ResponseRedactor(SCANNER, window=64), parts)
    assert content(body) == SCANNER.redact(SECRET_TEXT)
    for secret in ("vexmor", "quillfeather", "Lm2Pz8Rt", "1111 1111"):
        assert secret not in body.decode()
