"""Redact personal data and secrets in an LLM API's responses, streamed or not.

:class:`ResponseRedactor` is a response filter (``feed(bytes) -> bytes``, ``finish() -> bytes``).
It tells the body's kind from its first bytes:

- an SSE stream (``data: {chat.completion.chunk}`` events): the text of each choice's
  ``delta.content`` and ``delta.reasoning_content`` (``text`` for completions) is concatenated
  and held back, at least ``window`` characters plus the word still being written, so a secret
  split across chunks is found whole. Each chunk is re-emitted, valid, carrying the text released
  so far; what is held is released (redacted) in the chunk with the choice's ``finish_reason``,
  or in an extra chunk before ``[DONE]`` or the end of the stream;
- a JSON body: buffered, then ``choices[*].message.content`` / ``reasoning_content`` / ``text``
  redacted;
- anything else, and any event or body that is not an OpenAI response, passes untouched.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .pii import Match, PIIScanner

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE_END = re.compile(r"\r\n|\r|\n")
_SSE_STARTS = (b"data:", b"event:", b"id:", b"retry:", b":")
_CHUNK_KEYS = ("id", "object", "created", "model", "system_fingerprint")
_CHAT_FIELDS = ("content", "reasoning_content")
_LINE_SAFE = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def _dumps(value: Any) -> str:
    """Compact JSON with U+0085, U+2028 and U+2029 escaped, as the runner writes its events (see its ``_dumps``)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).translate(_LINE_SAFE)


def _sniff(data: bytes) -> str | None:
    head = data.lstrip(b" \t\r\n\xef\xbb\xbf")
    if not head:
        return None
    if head[:1] == b"{":
        return "json"
    if head.startswith(_SSE_STARTS):
        return "sse"
    return None if any(start.startswith(head) for start in _SSE_STARTS) else "pass"


def _last_space(text: str) -> int:
    return max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"), text.rfind("\r"))


class ResponseRedactor:
    def __init__(self, scanner: PIIScanner, *, window: int = 128, max_hold: int = 65536,
                 max_body: int = 8 * 1024 * 1024) -> None:
        self.scanner = scanner
        self.window = window
        self.max_hold = max_hold
        self.max_body = max_body
        self.redactions = 0
        self._mode: str | None = None
        self._pending = b""
        self._held: dict[tuple[int, str], str] = {}
        self._template: dict[str, Any] = {}

    def feed(self, data: bytes) -> bytes:
        if self._mode == "pass":
            return data
        self._pending += data
        if self._mode is None:
            self._mode = _sniff(self._pending) or ("pass" if len(self._pending) > 64 else None)
            if self._mode is None:
                return b""
        if self._mode == "pass" or (self._mode == "json" and len(self._pending) > self.max_body):
            self._mode = "pass"
            out, self._pending = self._pending, b""
            return out
        return self._events() if self._mode == "sse" else b""

    def finish(self) -> bytes:
        pending, self._pending = self._pending, b""
        if self._mode == "json":
            return self._json(pending)
        if self._mode != "sse":
            return pending
        out = self._events()
        rest, self._pending = self._pending, b""
        if rest.strip():
            out += self._event(rest, b"\n\n")
        return out + self._flush_event()

    # --- SSE -------------------------------------------------------------------------------------

    def _events(self) -> bytes:
        out = []
        pending = self._pending
        while True:
            end = _EVENT_END.search(pending)
            if end is None:
                break
            out.append(self._event(pending[: end.start()], end.group()))
            pending = pending[end.end():]
        if len(pending) > self.max_hold:
            out.append(pending)
            pending = b""
        self._pending = pending
        return b"".join(out)

    def _event(self, raw: bytes, terminator: bytes) -> bytes:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw + terminator
        lines = _LINE_END.split(text)
        data = [line[6:] if line.startswith("data: ") else line[5:] for line in lines if line.startswith("data:")]
        if not data:
            return raw + terminator
        payload = "\n".join(data)
        if payload.strip() == "[DONE]":
            return self._flush_event() + raw + terminator
        try:
            chunk = json.loads(payload)
        except ValueError:
            return raw + terminator
        if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list) or not self._rewrite(chunk):
            return raw + terminator
        newline = _LINE_END.search(text)
        out, written = [], False
        for line in lines:
            if not line.startswith("data:"):
                out.append(line)
            elif not written:
                out.append("data: " + _dumps(chunk))
                written = True
        return (newline.group() if newline else "\n").join(out).encode() + terminator

    def _rewrite(self, chunk: dict[str, Any]) -> bool:
        """Hold back and release the text of ``chunk``'s choices; whether the chunk changed."""
        self._template = {k: chunk[k] for k in _CHUNK_KEYS if k in chunk}
        changed = False
        for position, choice in enumerate(chunk["choices"]):
            if not isinstance(choice, dict):
                continue
            index = choice.get("index")
            index = index if isinstance(index, int) else position
            final = choice.get("finish_reason") is not None
            delta = choice.get("delta")
            fields: tuple[str, ...]
            if "text" in choice and not isinstance(delta, dict):
                container, fields = choice, ("text",)
            else:
                container, fields = (delta if isinstance(delta, dict) else {}), _CHAT_FIELDS
            wrote = False
            for field in fields:
                key = (index, field)
                value = container.get(field)
                if isinstance(value, str):
                    self._held[key] = self._held.get(key, "") + value
                elif key not in self._held:
                    continue
                released = self._release(key, final)
                if released != value and (released or isinstance(value, str)):
                    container[field] = released
                    wrote = True
            if wrote and container is not choice and "delta" not in choice:
                choice["delta"] = container
            changed = changed or wrote
        return changed

    def _release(self, key: tuple[int, str], final: bool) -> str:
        text = self._held[key]
        matches = self.scanner.find(text)
        if final or len(text) > self.max_hold:
            cut = len(text)
        else:
            cut = min(len(text) - self.window, _last_space(text) + 1)
            for match in matches:
                if match.start < cut < match.end:
                    cut = match.start
                    break
        if cut <= 0:
            return ""
        if cut == len(text):
            del self._held[key]
        else:
            self._held[key] = text[cut:]
        return self._redact(text[:cut], [m for m in matches if m.end <= cut])

    def _redact(self, text: str, matches: list[Match]) -> str:
        self.redactions += len(matches)
        return self.scanner.redact(text, matches)

    def _flush_event(self) -> bytes:
        """A chunk carrying all text still held (before ``[DONE]`` or the end), or nothing."""
        choices = []
        for (index, field), _text in sorted(self._held.items()):
            released = self._release((index, field), True)
            if released:
                choices.append({"index": index, "text": released, "finish_reason": None} if field == "text" else
                               {"index": index, "delta": {field: released}, "finish_reason": None})
        if not choices:
            return b""
        return b"data: " + _dumps({**self._template, "choices": choices}).encode() + b"\n\n"

    # --- JSON ------------------------------------------------------------------------------------

    def _json(self, body: bytes) -> bytes:
        try:
            response = json.loads(body)
        except ValueError:
            return body
        if not isinstance(response, dict) or not isinstance(response.get("choices"), list):
            return body
        changed = False
        for choice in response["choices"]:
            if not isinstance(choice, dict):
                continue
            message = choice.get("message")
            targets = [(message, f) for f in _CHAT_FIELDS] if isinstance(message, dict) else []
            for container, field in [*targets, (choice, "text")]:
                value = container.get(field)
                if isinstance(value, str):
                    redacted = self._redact(value, self.scanner.find(value))
                    if redacted != value:
                        container[field] = redacted
                        changed = True
        return _dumps(response).encode() if changed else body
