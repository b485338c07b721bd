"""Turning one request's generated tokens into text deltas: stop strings and DeepSeek's reasoning split."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

END_OF_THINKING = "</think>"


@dataclasses.dataclass(frozen=True)
class Delta:
    """A piece of a generation's output; the last one carries ``finish_reason``."""

    content: str = ""
    reasoning: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"


class Detokenizer(Protocol):
    def push(self, token_id: int) -> str: ...

    def flush(self) -> str: ...


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper beginning of ``marker``."""
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:length]):
            return length
    return 0


class ReasoningSplitter:
    """Routes text before ``</think>`` to reasoning and text after it to content.

    The prompt ends with ``<think>\\n``, so generation starts inside the reasoning. The marker is
    never emitted, nor the single newline that follows it; a marker split across pieces is held back.
    """

    def __init__(self, *, reasoning: bool) -> None:
        self._thinking = reasoning
        self._held = ""
        self._strip_newline = False

    def feed(self, text: str) -> tuple[str, str]:
        """Returns (content, reasoning) ready to emit."""
        if not self._thinking:
            return self._content(text), ""
        text = self._held + text
        end = text.find(END_OF_THINKING)
        if end >= 0:
            self._thinking = False
            self._held = ""
            self._strip_newline = True
            return self._content(text[end + len(END_OF_THINKING):]), text[:end]
        hold = _partial_suffix(text, END_OF_THINKING)
        self._held = text[len(text) - hold:] if hold else ""
        return "", text[: len(text) - hold]

    def flush(self) -> tuple[str, str]:
        held, self._held = self._held, ""
        return ("", held) if self._thinking else (held, "")

    def _content(self, text: str) -> str:
        if self._strip_newline and text:
            self._strip_newline = False
            if text.startswith("\n"):
                return text[1:]
        return text


class TextAssembler:
    """One request's output: incremental text, stop strings matched across tokens, the reasoning split.

    A stop string is never emitted: text that could be the beginning of one is held back until it
    either completes the stop string (the generation ends with ``"stop"``) or cannot anymore.
    """

    def __init__(self, detokenizer: Detokenizer, *, stop: Sequence[str] = (), reasoning: bool = True) -> None:
        self._detokenizer = detokenizer
        self._stops = tuple(s for s in stop if s)
        self._splitter = ReasoningSplitter(reasoning=reasoning)
        self._pending = ""
        self.stopped = False

    def push(self, token_id: int) -> Delta | None:
        """Adds a generated token; returns the text it makes ready, if any. Sets ``stopped`` on a stop string."""
        if self.stopped:
            return None
        self._pending += self._detokenizer.push(token_id)
        return self._release(final=False)

    def push_many(self, token_ids: Sequence[int]) -> tuple[Delta | None, int]:
        """Adds several tokens at once; returns their text and how many were used (fewer after a stop string)."""
        if self.stopped or not token_ids:
            return None, 0
        push = self._detokenizer.push
        pieces = [push(token) for token in token_ids]
        text = "".join(pieces)
        if self._stops and self._first_stop(self._pending + text) is not None:
            return self._push_pieces(pieces)
        self._pending += text
        return self._release(final=False), len(token_ids)

    def _push_pieces(self, pieces: Sequence[str]) -> tuple[Delta | None, int]:
        """Token by token, as ``push`` does, so the stop string ends the text at the same token."""
        content: list[str] = []
        reasoning: list[str] = []
        used = 0
        for piece in pieces:
            used += 1
            self._pending += piece
            delta = self._release(final=False)
            if delta is not None:
                content.append(delta.content)
                reasoning.append(delta.reasoning)
            if self.stopped:
                break
        if not any(content) and not any(reasoning):
            return None, used
        return Delta("".join(content), "".join(reasoning)), used

    def finish(self, reason: str) -> Delta:
        """The last delta: whatever is still held back (unless a stop string ended the text) and the reason."""
        last = None
        if not self.stopped:
            self._pending += self._detokenizer.flush()
            last = self._release(final=True)
        content, reasoning = self._splitter.flush()
        if last is not None:
            content, reasoning = last.content + content, last.reasoning + reasoning
        return Delta(content=content, reasoning=reasoning, finish_reason="stop" if self.stopped else reason)

    def _release(self, *, final: bool) -> Delta | None:
        pending = self._pending
        if not pending:
            return None
        cut = self._first_stop(pending)
        if cut is not None:
            self.stopped = True
            ready, self._pending = pending[:cut], ""
        elif final:
            ready, self._pending = pending, ""
        else:
            hold = max((_partial_suffix(pending, s) for s in self._stops), default=0)
            ready, self._pending = pending[: len(pending) - hold], pending[len(pending) - hold:]
        if not ready:
            return None
        content, reasoning = self._splitter.feed(ready)
        if not content and not reasoning:
            return None
        return Delta(content=content, reasoning=reasoning)

    def _first_stop(self, text: str) -> int | None:
        found = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        return min(found) if found else None
