"""Which texts of an OpenAI-style body are prompt text, with their roles and places."""

from __future__ import annotations

from dsguard.promptguard.messages import Segment, is_llm_body, segments, with_texts


def test_chat_message_contents_keep_their_roles() -> None:
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    assert segments(body) == [Segment("system", "Be brief.", ("messages", 0, "content")),
                              Segment("user", "Hi", ("messages", 1, "content"))]


def test_only_text_content_parts_are_read() -> None:
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": "https://img.example/cat.png"}}]}]}
    assert segments(body) == [Segment("user", "What is in this image?", ("messages", 0, "content", 0, "text"))]


def test_completion_prompt_as_string_and_as_list() -> None:
    assert segments({"prompt": "Once upon"}) == [Segment("user", "Once upon", ("prompt",))]
    assert [s.path for s in segments({"prompt": ["a", "b", 7]})] == [("prompt", 0), ("prompt", 1)]


def test_token_id_prompts_carry_no_text() -> None:
    assert segments({"prompt": [1, 2, 3]}) == []


def test_responses_api_input_messages_and_instructions() -> None:
    body = {"instructions": "Be kind.", "input": [{"role": "user", "content": [{"type": "input_text", "text": "x"}]}]}
    assert segments(body) == [Segment("system", "Be kind.", ("instructions",)),
                              Segment("user", "x", ("input", 0, "content", 0, "text"))]


def test_a_message_without_a_role_counts_as_user() -> None:
    assert segments({"messages": [{"content": "hello"}]})[0].role == "user"


def test_malformed_messages_are_skipped() -> None:
    body = {"messages": [None, 3, {"role": "user", "content": 5},
                         {"role": "user", "content": [None, {"type": "text"}]}]}
    assert segments(body) == []


def test_bodies_that_are_not_llm_calls() -> None:
    assert not is_llm_body({"query": "x"})
    assert not is_llm_body(["messages"])
    assert segments("messages") == []


def test_texts_are_replaced_on_a_copy() -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "mail bob@corp.io"}]}]}
    replaced = with_texts(body, {("messages", 0, "content", 0, "text"): "mail [REDACTED:email]"})
    assert replaced["messages"][0]["content"][0]["text"] == "mail [REDACTED:email]"
    assert body["messages"][0]["content"][0]["text"] == "mail bob@corp.io"
