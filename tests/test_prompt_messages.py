"""Which texts of an OpenAI-style body are prompt text, with their roles and places."""

from __future__ import annotations

from dsguard.promptguard.messages import Segment, is_llm_body, segments, with_texts
from dsguard.waf.targets import json_fields


def test_chat_message_contents_keep_their_roles() -> None:
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    assert segments(body) == [Segment("system", "Be brief.", ("messages", 0, "content")),
                              Segment("user", "Hi", ("messages", 1, "content"))]


def test_the_text_of_every_content_part_is_read_whatever_its_type() -> None:
    parts = [{"type": "refusal", "text": "no"}, {"type": "x", "text": "y"}]
    body = {"messages": [{"role": "assistant", "content": parts}]}
    assert [s.text for s in segments(body)] == ["no", "y"]


def test_tool_descriptions_parameter_descriptions_and_call_arguments_are_read() -> None:
    parameters = {"type": "object", "properties": {"city": {"type": "string", "description": "the city"}}}
    function = {"name": "f", "description": "looks up", "parameters": parameters}
    body = {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}],
            "tools": [{"type": "function", "function": function}]}
    assert segments(body) == [
        Segment("assistant", "{}", ("messages", 0, "tool_calls", 0, "function", "arguments")),
        Segment("tool_definition", "looks up", ("tools", 0, "function", "description")),
        Segment("tool_definition", "the city",
                ("tools", 0, "function", "parameters", "properties", "city", "description"))]


def test_the_waf_inspects_exactly_the_fields_that_are_not_prompt_text() -> None:
    body = {"model": "m", "instructions": "be kind", "metadata": {"note": "n"},
            "messages": [{"role": "user", "name": "u", "content": [{"type": "x", "text": "t", "id": "i"}]},
                         {"role": "assistant",
                          "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "a"}}]}],
            "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {
                "type": "object", "properties": {"q": {"type": "string", "description": "qd", "enum": ["e"]}}}}}]}
    prompt = {".".join(("json", *map(str, s.path))) for s in segments(body)}
    inspected = {name for name, _ in json_fields(body)}
    assert prompt.isdisjoint(inspected)
    assert len(prompt) == 5
    assert {"json.messages.0.name", "json.messages.0.content.0.type", "json.messages.1.tool_calls.0.function.name",
            "json.tools.0.function.parameters.properties.q.enum.0", "json.metadata.note"} <= inspected


def test_parts_without_text_such_as_images_carry_no_prompt_text() -> None:
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
