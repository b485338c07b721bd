"""The texts of an OpenAI-style request body, each with its role and where it sits in the body.

Chat completions: ``messages[*].content`` as a string or as content parts of type ``text``
(``input_text`` too). Completions: ``prompt`` as a string or a list of strings. Embeddings and
the Responses API: ``input`` as a string, a list of strings or a list of messages, and
``instructions`` (role ``system``). Anything else in the body is not prompt text.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

Path = tuple[str | int, ...]
_TEXT_PARTS = frozenset({"text", "input_text"})


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
    """Every prompt text of ``body``, in order; an empty list for anything that is not such a body."""
    if not isinstance(body, dict):
        return []
    return list(_walk(body))


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


def _messages(messages: list[Any], prefix: Path) -> Iterator[Segment]:
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        role = role.lower() if isinstance(role, str) else "user"
        content = message.get("content")
        if isinstance(content, str):
            yield Segment(role, content, (*prefix, index, "content"))
        elif isinstance(content, list):
            for part_index, part in enumerate(content):
                if (isinstance(part, dict) and isinstance(part.get("type"), str) and part["type"] in _TEXT_PARTS
                        and isinstance(part.get("text"), str)):
                    yield Segment(role, part["text"], (*prefix, index, "content", part_index, "text"))


def with_texts(body: Any, texts: Mapping[Path, str]) -> Any:
    """A copy of ``body`` with the text at each path replaced (``body`` itself is left alone)."""
    result = copy.deepcopy(body)
    for path, text in texts.items():
        node = result
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = text
    return result
