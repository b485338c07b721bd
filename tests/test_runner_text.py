"""Assembling a request's output: stop strings across token boundaries, finish reasons, the reasoning split."""

from __future__ import annotations

from collections.abc import Sequence

from dsguard.runner.generation import Generation
from dsguard.runner.text import Delta, TextAssembler


class PieceDetokenizer:
    """Token ``i`` decodes to ``pieces[i]``: lets a test choose exactly where token boundaries fall."""

    def __init__(self, pieces: Sequence[str]) -> None:
        self.pieces = pieces

    def push(self, token_id: int) -> str:
        return self.pieces[token_id]

    def flush(self) -> str:
        return ""


def assemble(pieces: Sequence[str], *, stop: Sequence[str] = (), reasoning: bool = False,
             reason: str = "length") -> tuple[str, str, str, list[Delta]]:
    """Feeds every piece (until a stop string ends the text); returns content, reasoning, finish reason, deltas."""
    assembler = TextAssembler(PieceDetokenizer(pieces), stop=stop, reasoning=reasoning)
    deltas = []
    for token in range(len(pieces)):
        delta = assembler.push(token)
        if delta is not None:
            deltas.append(delta)
        if assembler.stopped:
            break
    deltas.append(assembler.finish(reason))
    finish = deltas[-1].finish_reason
    assert finish is not None
    return "".join(d.content for d in deltas), "".join(d.reasoning for d in deltas), finish, deltas


def test_plain_text_passes_through_and_ends_with_length() -> None:
    content, reasoning, finish, _ = assemble(["Hel", "lo", " world"])
    assert (content, reasoning, finish) == ("Hello world", "", "length")


def test_stop_string_split_across_tokens_is_never_emitted() -> None:
    content, _, finish, deltas = assemble(["The answer", " is 4", "2.\n#", "#", "# more"], stop=["###"])
    assert content == "The answer is 42.\n"
    assert finish == "stop"
    assert all("#" not in d.content for d in deltas)


def test_stop_string_inside_one_token_cuts_the_text_there() -> None:
    content, _, finish, _ = assemble(["abc", "dEND efg", "never"], stop=["END"])
    assert (content, finish) == ("abcd", "stop")


def test_earliest_of_several_stop_strings_wins() -> None:
    content, _, finish, _ = assemble(["one two three"], stop=["three", "two"])
    assert (content, finish) == ("one ", "stop")


def test_held_back_prefix_of_a_stop_string_is_released_when_it_does_not_complete() -> None:
    _, _, _, deltas = assemble(["ab#", "#c", "d"], stop=["###"])
    assert "".join(d.content for d in deltas) == "ab##cd"
    assert deltas[0].content == "ab"


def test_held_back_prefix_is_flushed_when_the_generation_ends() -> None:
    content, _, finish, _ = assemble(["x", "#", "#"], stop=["###"])
    assert (content, finish) == ("x##", "length")


def test_reasoning_goes_before_end_of_thinking_and_content_after_it() -> None:
    content, reasoning, _, _ = assemble(["Let me think.", "</think>", "\n", "Answer."], reasoning=True)
    assert (reasoning, content) == ("Let me think.", "Answer.")


def test_end_of_thinking_split_across_tokens_is_not_emitted() -> None:
    content, reasoning, _, deltas = assemble(["hmm</th", "in", "k>\n\nYes"], reasoning=True)
    assert (reasoning, content) == ("hmm", "\nYes")
    assert all("<" not in d.reasoning and "<" not in d.content for d in deltas)


def test_only_one_newline_after_end_of_thinking_is_dropped() -> None:
    content, _, _, _ = assemble(["a</think>", "\n\n", "b"], reasoning=True)
    assert content == "\nb"


def test_without_end_of_thinking_everything_is_reasoning() -> None:
    content, reasoning, _, _ = assemble(["still ", "thinking </thi"], reasoning=True)
    assert (reasoning, content) == ("still thinking </thi", "")


def test_reasoning_off_keeps_the_marker_as_content() -> None:
    content, reasoning, _, _ = assemble(["a</think>b"], reasoning=False)
    assert (content, reasoning) == ("a</think>b", "")


def test_stop_string_inside_the_reasoning_ends_the_generation() -> None:
    content, reasoning, finish, _ = assemble(["plan: ", "STOP", "</think>x"], stop=["STOP"], reasoning=True)
    assert (reasoning, content, finish) == ("plan: ", "", "stop")


def test_generation_counts_tokens_up_to_the_stop_string() -> None:
    pieces = ["a", "b", "S", "TOP", "c", "d"]
    generation = Generation(3, TextAssembler(PieceDetokenizer(pieces), stop=["STOP"], reasoning=False))
    for token in range(len(pieces)):
        generation.push(token, 0.0)
    completion = generation.collect(timeout=1)
    assert (completion.text, completion.finish_reason, completion.completion_tokens) == ("ab", "stop", 4)
    assert completion.token_ids == (0, 1, 2, 3)
    assert generation.cancelled


def test_generation_end_of_sequence_counts_but_adds_no_text() -> None:
    generation = Generation(2, TextAssembler(PieceDetokenizer(["x", "y"]), reasoning=False))
    generation.push(0, 0.0)
    generation.push(1, 0.0, text=False)
    generation.end("stop")
    completion = generation.collect(timeout=1)
    assert (completion.text, completion.finish_reason, completion.completion_tokens) == ("x", "stop", 2)


def test_tokens_taken_together_end_like_tokens_taken_one_by_one() -> None:
    pieces = ["ab", "cd", "ef", "gh"]
    one_by_one = assemble(pieces, stop=["abcdef", "cd"])
    together = TextAssembler(PieceDetokenizer(pieces), stop=["abcdef", "cd"], reasoning=False)
    delta, used = together.push_many(range(len(pieces)))
    last = together.finish("length")
    assert (delta.content if delta else "") + last.content == one_by_one[0] == "ab"
    assert used == 2 and last.finish_reason == "stop"
