"""The plain-value fast path: what a pattern needs, and that skipping work never changes a verdict."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsguard.waf import builtin_rule_set
from dsguard.waf.engine import Engine
from dsguard.waf.model import Operator, Rule, Selector
from dsguard.waf.normalize import TRANSFORMS
from dsguard.waf.prefilter import (
    IDENTITY_ON_PLAIN,
    LOWERING_ON_PLAIN,
    NON_ASCII,
    PLAIN,
    TEXT_PRESERVING,
    never_plain,
    plain_view,
    required_chars,
)
from dsguard.waf.regex import compile_pattern
from dsguard.waf.rules import builtin_rules
from dsguard.waf.targets import Collections

from .test_waf_rules import API_VALUES, ATTACKS, BENIGN, TECHNIQUES


def test_a_literal_is_required() -> None:
    assert required_chars(r"<\s*script") == {"<"}


def test_a_case_insensitive_word_requires_either_case_of_its_rarest_letter() -> None:
    assert required_chars(r"(?i)union\s+select") in ({"u", "U"}, {"n", "N"}, {"i", "I"}, {"o", "O"})


def test_alternatives_require_the_union_of_their_requirements() -> None:
    assert required_chars(r"<script|javascript:") == {"<", ":"}


def test_an_optional_part_requires_nothing() -> None:
    assert required_chars(r"(?:<)?a*") is None


def test_a_negated_class_requires_anything_outside_it() -> None:
    found = required_chars(r"[^a-z]")
    assert found is not None and "a" not in found and "<" in found and NON_ASCII in found


def test_a_pattern_with_no_required_plain_character_never_matches_a_plain_value() -> None:
    assert never_plain(required_chars(r"\$\{"))
    assert not never_plain(required_chars(r"select"))
    assert not never_plain(None)


@pytest.mark.parametrize(("chain", "view"), [
    (("decodeall", "lowercase"), "lower"), (("decodeall",), "raw"), (("decodeall", "sqlnormalize"), "lower"),
    (("decodeall", "jsdecode", "lowercase", "removewhitespace"), "tight"), (("hexdecode",), None),
    (("cmdline",), None), (("removewhitespace",), None),
])
def test_each_chain_has_a_known_view_of_a_plain_value(chain: tuple[str, ...], view: str | None) -> None:
    assert plain_view(chain) == view


@pytest.mark.parametrize("value", ["deepseek-chat", "OpenAI/Python 1.40.0", "a b", "x=1;y=(2)"])
def test_plain_values_are_recognised(value: str) -> None:
    assert PLAIN.fullmatch(value)


@pytest.mark.parametrize("value", ["a  b", " a", "50%", "x&y", "it's", "a\tb", "café", "a\\b", "${x}", "/*"])
def test_values_a_transformation_may_rewrite_are_not_plain(value: str) -> None:
    assert not PLAIN.fullmatch(value)


ENGINES = {paranoia: builtin_rule_set().engine(paranoia) for paranoia in (1, 2)}
# Each rule on its own, with Python's re: its transformations, then its pattern, no shortcut.
REFERENCE = {paranoia: [(rule.id, rule.transforms, compile_pattern(rule.operator.pattern or "", prefer_re2=False))
                        for rule in engine.rules
                        if rule.chain is None and any(s.collection == "ARGS" for s in rule.selectors)]
             for paranoia, engine in ENGINES.items()}


def reference_rules(paranoia: int, value: str) -> set[int]:
    found = set()
    for rule_id, transforms, pattern in REFERENCE[paranoia]:
        text = value
        for name in transforms:
            text = TRANSFORMS[name](text)
        if pattern.search(text):
            found.add(rule_id)
    return found


def inspect(engine: Engine, value: str) -> set[int]:
    collections: Collections = {"ARGS": [("q", value)]}
    return {hit.rule for hit in engine.inspect(collections).hits}


@pytest.mark.parametrize("paranoia", [1, 2])
def test_engine_agrees_with_rule_by_rule_evaluation_on_every_listed_value(paranoia: int) -> None:
    for value in [*ATTACKS.values(), *TECHNIQUES.values(), *BENIGN, *API_VALUES]:
        assert inspect(ENGINES[paranoia], value) == reference_rules(paranoia, value), value


PLAIN_TEXT = st.from_regex(re.compile(r"[A-Za-z0-9_.,:;/=@()!?~|<>\[\]#-]{1,12}(?: [A-Za-z0-9_.,:;/=@()!?~|<>#-]{1,12}"
                                      r"){0,4}"), fullmatch=True)
WORDS = st.lists(st.sampled_from(["select", "union", "from", "ls", "cat", "/etc/passwd", "<svg", "onload=", "(",
                                  ")", ";", "|", "nohup", "ifconfig", "or", "1=1", "'", "%27", "&lt;", "${IFS}",
                                  "javascript:", "document.cookie", "php://", "<?", "Time", "WhoAmI", " "]),
                 max_size=8).map("".join)


@settings(max_examples=200, deadline=None)
@given(value=PLAIN_TEXT | WORDS | st.text(max_size=40))
def test_engine_agrees_with_rule_by_rule_evaluation_on_generated_values(value: str) -> None:
    for paranoia, engine in ENGINES.items():
        assert inspect(engine, value) == reference_rules(paranoia, value)


def test_rules_that_cannot_match_plain_values_exist() -> None:
    assert any(never_plain(required_chars(r.operator.pattern or "")) for r in builtin_rules())


def engine_of(pattern: str, chain: tuple[str, ...]) -> Engine:
    return Engine([Rule(1, "other", 1, 5, (Selector("ARGS"),), Operator("rx", pattern=pattern), chain)])


@pytest.mark.parametrize(("pattern", "chain", "value"), [
    ("select", ("cmdline",), "SELECT"), ("a b", ("cmdline",), "a,b"), (r"\s", ("cmdline",), "a;b"),
    ("ab", ("removewhitespace",), "a b"),
    ("etc/passwd", ("normalizepath",), "etc/x/../passwd"), ("x", ("normalizepathwin", "cmdline"), "X"),
])
def test_plain_value_reaches_a_rule_whose_transformations_rewrite_it(pattern: str, chain: tuple[str, ...],
                                                                     value: str) -> None:
    assert PLAIN.fullmatch(value)
    assert engine_of(pattern, chain).inspect({"ARGS": [("q", value)]}).blocked


PLAIN_TOKENS = st.sampled_from(["a", "B", "Zz", "(", ")", "<", ">", "()", "<()", ";", ",", "/", "..", "/./", "--", "#",
                                "=", "|", "[", "]", "!", "?", "~", ":", "@", "_", "-", "1", "0x41", "select", "ETC"])
PLAIN_SAMPLES = st.lists(st.lists(PLAIN_TOKENS, min_size=1, max_size=5).map("".join), min_size=1,
                         max_size=4).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(value=PLAIN_SAMPLES)
def test_each_transformation_does_to_a_plain_value_what_the_fast_path_assumes(value: str) -> None:
    assert PLAIN.fullmatch(value)
    for name in IDENTITY_ON_PLAIN:
        assert TRANSFORMS[name](value) == value, name
    for name in LOWERING_ON_PLAIN:
        assert TRANSFORMS[name](value) == value.lower(), name
    for name in TEXT_PRESERVING:
        assert set(TRANSFORMS[name](value)) <= set(value) | set(value.lower()) | {" "}, name
