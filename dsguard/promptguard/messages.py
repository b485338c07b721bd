"""The texts of an OpenAI-style request body, each with its role and where it sits in the body.

This is the one definition of prompt text: the prompt guard scans exactly these texts and the
WAF (:mod:`dsguard.waf.targets`) inspects everything else, so nothing is left to neither.

- Chat completions: ``messages[*].content`` as a string, or the string ``text`` of every
  content part whatever its ``type``; the arguments of tool calls in the history
  (``messages[*].tool_calls[*].function.arguments``, ``messages[*].function_call.arguments``),
  with the message's role.
- Tools offered to the model (``tools[*]``, ``tools[*].function``, ``functions[*]``): the
  ``description`` and every ``description`` inside the ``parameters`` schema, role
  ``tool_definition``.
- Completions: ``prompt`` as a string or a list of strings. Embeddings and the Responses API:
  ``input`` as a string, a list of strings or a list of messages, and ``instructions`` (role
  ``system``).

Anything else in the body is not prompt text, and nothing is prompt text unless the body is an
LLM call (:func:`is_llm_body`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

Path = tuple[str | int, ...]
TOOL_DEFINITION = "tool_definition"
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    role: str
    text: str
    path: Path


def is_llm_body(body: Any) -> bool:
    """Whether ``body`` is an OpenAI-style chat, completion or embedding request."""
    return isinstance(body, dict) and (
        isinstance(body.get("messages"), list) or "prompt" in body or "input" in body)


def segments(body: Any) -> list[Segment]:
    """Every prompt text of ``body``, in order; an empty list for anything that is not an LLM call."""
    if not is_llm_body(body):
        return []
    return list(_walk(body))


def prompt_paths(body: Any) -> frozenset[Path]:
    """Where the prompt texts of ``body`` sit: what the prompt guard scans and the WAF leaves out."""
    return frozenset(segment.path for segment in segments(body))


def parse_body(body: bytes | None, media_type: str | None) -> Any:
    """``body`` as an application reads it: the JSON value it parses as, whatever its declared
    Content-Type (Starlette's ``request.json()`` never looks), unless it is a form or multipart
    body; None when it does not parse."""
    if not body or media_type in _FORM_TYPES:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _walk(body: Mapping[str, Any]) -> Iterator[Segment]:
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        yield Segment("system", instructions, ("instructions",))
    messages = body.get("messages")
    if isinstance(messages, list):
        yield from _messages(messages, ("messages",))
    for key in ("prompt", "input"):
        value = body.get(key)
        if isinstance(value, str):
            yield Segment("user", value, (key,))
        elif isinstance(value, list):
            strings = [(i, v) for i, v in enumerate(value) if isinstance(v, str)]
            for index, text in strings:
                yield Segment("user", text, (key, index))
            if key == "input" and len(strings) < len(value):
                yield from _messages(value, (key,))
    for key in ("tools", "functions"):
        tools = body.get(key)
        if isinstance(tools, list):
            yield from _tools(tools, (key,))


def _messages(messages: list[Any], prefix: Path) -> Iterator[Segment]:
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        role = role.lower() if isinstance(role, str) else "user"
        at = (*prefix, index)
        content = message.get("content")
        if isinstance(content, str):
            yield Segment(role, content, (*at, "content"))
        elif isinstance(content, list):
            for part_index, part in enumerate(content):
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    yield Segment(role, part["text"], (*at, "content", part_index, "text"))
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            for call_index, call in enumerate(calls):
                if isinstance(call, dict):
                    yield from _arguments(role, call.get("function"), (*at, "tool_calls", call_index, "function"))
        yield from _arguments(role, message.get("function_call"), (*at, "function_call"))


def _arguments(role: str, function: Any, at: Path) -> Iterator[Segment]:
    if isinstance(function, dict) and isinstance(function.get("arguments"), str):
        yield Segment(role, function["arguments"], (*at, "arguments"))


def _tools(tools: list[Any], prefix: Path) -> Iterator[Segment]:
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            continue
        yield from _definition(tool, (*prefix, index))
        if isinstance(tool.get("function"), dict):
            yield from _definition(tool["function"], (*prefix, index, "function"))


def _definition(definition: Mapping[str, Any], at: Path) -> Iterator[Segment]:
    if isinstance(definition.get("description"), str):
        yield Segment(TOOL_DEFINITION, definition["description"], (*at, "description"))
    pending: deque[tuple[Path, Any]] = deque([((*at, "parameters"), definition.get("parameters"))])
    while pending:
        path, schema = pending.popleft()
        if isinstance(schema, dict):
            for key, child in schema.items():
                if key == "description" and isinstance(child, str):
                    yield Segment(TOOL_DEFINITION, child, (*path, key))
                elif isinstance(child, (dict, list)):
                    pending.append(((*path, key), child))
        elif isinstance(schema, list):
            pending.extend(((*path, i), child) for i, child in enumerate(schema))


def with_texts(body: Any, texts: Mapping[Path, str]) -> Any:
    """A copy of ``body`` with the text at each path replaced (``body`` itself is left alone; only the
    objects and arrays on those paths are copied)."""
    result = copy.copy(body)
    copied = {id(result)}
    for path, text in texts.items():
        node = result
        for step in path[:-1]:
            child = node[step]
            if id(child) not in copied:
                child = node[step] = copy.copy(child)
                copied.add(id(child))
            node = child
        node[path[-1]] = text
    return result
