"""The SecLang subset: a small rules file written here, and Debian's OWASP CRS when installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsguard.waf import crs_rule_set
from dsguard.waf.engine import Engine
from dsguard.waf.seclang import DEBIAN_CRS, Loader, load_directory, split_actions, split_words

RULES = r"""
# A file shaped like CRS's REQUEST-9xx files.
SecRule TX:DETECTION_PARANOIA_LEVEL "@lt 1" "id:900011,phase:2,pass,nolog,skipAfter:END-TEST"
SecRule ARGS "@rx (?i)\bselect\b.+\bfrom\b" \
    "id:900100,phase:2,block,t:none,t:urlDecodeUni,t:replaceComments,severity:'CRITICAL',\
    msg:'SQL, with a comma',tag:'paranoia-level/1',setvar:'tx.inbound_anomaly_score_pl1=+%{tx.critical_anomaly_score}'"
SecRule REQUEST_HEADERS:User-Agent "@pm nikto sqlmap" \
    "id:900110,phase:1,block,t:lowercase,setvar:'tx.inbound_anomaly_score_pl1=+%{tx.critical_anomaly_score}'"
SecRule ARGS_NAMES "@pmFromFile names.data" \
    "id:900120,phase:2,block,setvar:'tx.inbound_anomaly_score_pl1=+%{tx.warning_anomaly_score}'"
SecRule ARGS "@contains <script" \
    "id:900130,phase:2,block,t:htmlEntityDecode,t:lowercase,chain,\
    setvar:'tx.inbound_anomaly_score_pl1=+%{tx.critical_anomaly_score}'"
    SecRule MATCHED_VARS "@rx alert\(" "t:none"
SecRule REQUEST_COOKIES|!REQUEST_COOKIES:/^__utm/ "@beginsWith ../" \
    "id:900140,phase:2,block,setvar:'tx.inbound_anomaly_score_pl1=+%{tx.warning_anomaly_score}'"
SecRule TX:DETECTION_PARANOIA_LEVEL "@lt 2" "id:900013,phase:2,pass,nolog,skipAfter:END-TEST"
SecRule ARGS "@rx \bor\b" "id:900200,phase:2,block,setvar:'tx.inbound_anomaly_score_pl2=+%{tx.critical_anomaly_score}'"
SecMarker "END-TEST"
SecRule ARGS "@validateByteRange 1-255" "id:900300,phase:2,block,severity:'CRITICAL'"
SecRule TX:foo "@eq 1" "id:900310,phase:2,block,severity:'CRITICAL'"
SecRule &ARGS "@gt 100" "id:900320,phase:2,block,severity:'CRITICAL'"
SecRule ARGS "@rx x" "id:900330,phase:2,pass,nolog,setvar:'tx.counter=+1'"
SecRuleUpdateTargetById 900100 "!ARGS:safe"
SecRule ARGS "@detectSQLi" "id:900340,phase:2,block,severity:'CRITICAL'"
"""


@pytest.fixture
def loader(tmp_path: Path) -> Loader:
    (tmp_path / "names.data").write_text("# phrases\nadmin_debug\ncmd_exec\n")
    (tmp_path / "REQUEST-900-TEST.conf").write_text(RULES)
    return load_directory(tmp_path)


def args(value: str) -> dict[str, list[tuple[str, str]]]:
    return {"ARGS": [("q", value)], "ARGS_NAMES": [("q", "q")]}


def test_quoted_words_unescape_quotes_and_backslashes() -> None:
    assert split_words(r'SecRule ARGS "@rx a\"b\\d" "id:1"') == ["SecRule", "ARGS", '@rx a"b\\d', "id:1"]


def test_actions_split_on_commas_outside_single_quotes() -> None:
    assert split_actions("id:1,msg:'a, b',t:none") == [("id", "1"), ("msg", "a, b"), ("t", "none")]


def test_regex_rule_with_transformations_matches_decoded_value(loader: Loader) -> None:
    engine = Engine(loader.rules, paranoia=1)
    assert [h.rule for h in engine.inspect(args("x %73elect password from users")).hits] == [900100]
    assert not engine.inspect(args("x %73elect password")).hits


def test_phrase_match_is_case_insensitive_on_a_named_header(loader: Loader) -> None:
    engine = Engine(loader.rules, paranoia=1)
    assert [h.rule for h in engine.inspect({"REQUEST_HEADERS": [("user-agent", "SQLMap/1.7")]}).hits] == [900110]
    assert not engine.inspect({"REQUEST_HEADERS": [("referer", "sqlmap")]}).hits


def test_phrases_from_a_data_file_score_as_a_warning(loader: Loader) -> None:
    verdict = Engine(loader.rules, paranoia=1).inspect({"ARGS_NAMES": [("cmd_exec", "cmd_exec")]})
    assert verdict.score == 3 and not verdict.blocked


def test_chained_rule_needs_every_link_to_match(loader: Loader) -> None:
    engine = Engine(loader.rules, paranoia=1)
    assert engine.inspect(args("&lt;script&gt;alert(1)")).blocked
    assert not engine.inspect(args("<script src=x>")).hits


def test_excluded_key_of_a_collection_is_not_inspected(loader: Loader) -> None:
    engine = Engine(loader.rules, paranoia=1)
    assert engine.inspect({"REQUEST_COOKIES": [("session", "../etc")]}).score == 3
    assert not engine.inspect({"REQUEST_COOKIES": [("__utma", "../etc")]}).hits


def test_paranoia_gate_puts_later_rules_at_its_level(loader: Loader) -> None:
    rule = next(r for r in loader.rules if r.id == 900200)
    assert rule.paranoia == 2
    assert not Engine(loader.rules, paranoia=1).inspect(args("this or that")).hits
    assert Engine(loader.rules, paranoia=2).inspect(args("this or that")).blocked


def test_unsupported_constructs_are_skipped_and_counted(loader: Loader) -> None:
    skipped = loader.report.skipped
    assert skipped["operator @validatebyterange"] == 1
    assert skipped["variable TX"] == 1
    assert skipped["count (&) variables"] == 1
    assert skipped["sets no anomaly score"] == 1
    assert skipped["directive SecRuleUpdateTargetById"] == 1
    assert skipped["operator @detectsqli (libinjection, no approximation given)"] == 1
    assert loader.report.loaded == 6
    assert "6 rules loaded" in loader.report.summary()


def test_pass_rule_that_adds_to_the_anomaly_score_is_loaded() -> None:
    loader = Loader()
    loader.load_text('SecRule REQUEST_HEADERS:Host "@rx ^$" "id:1,phase:1,pass,severity:\'WARNING\','
                     'setvar:\'tx.anomaly_score_pl1=+%{tx.warning_anomaly_score}\'"')
    assert [(r.id, r.score) for r in loader.rules] == [(1, 3)]
    assert Engine(loader.rules, threshold=3).inspect({"REQUEST_HEADERS": [("host", "")]}).blocked


def test_t_none_drops_the_transformations_listed_before_it() -> None:
    loader = Loader()
    loader.load_text('SecRule ARGS "@rx ^A$" "id:1,phase:2,block,t:lowercase,t:none,t:trim,severity:\'CRITICAL\'"')
    assert loader.rules[0].transforms == ("trim",)
    engine = Engine(loader.rules)
    assert engine.inspect(args(" A ")).blocked
    assert not engine.inspect(args("a")).hits


def test_libinjection_operator_runs_on_the_approximation_when_given(tmp_path: Path) -> None:
    (tmp_path / "names.data").write_text("x\n")
    (tmp_path / "REQUEST-900-TEST.conf").write_text(RULES)
    rule_set = crs_rule_set(tmp_path)
    assert rule_set.report is not None and rule_set.report.approximated == 1
    assert 900340 in [h.rule for h in rule_set.engine(1).inspect(args("1' OR '1'='1")).hits]


@pytest.fixture(scope="module")
def debian_crs() -> Engine:
    rule_set = crs_rule_set(DEBIAN_CRS)
    assert rule_set.report is not None
    assert rule_set.report.loaded > 100
    assert {"sqli", "xss", "rce", "lfi", "php"} <= set(rule_set.report.by_family)
    return rule_set.engine(1)


@pytest.mark.skipif(not DEBIAN_CRS.is_dir(), reason="Debian's modsecurity-crs is not installed "
                    "(apt-get install -y modsecurity-crs)")
class TestDebianCRS:
    @pytest.fixture
    def crs(self, debian_crs: Engine) -> Engine:
        return debian_crs

    def test_crs_blocks_sql_injection(self, crs: Engine) -> None:
        assert "sqli" in crs.inspect(args("1' UNION SELECT password FROM users--")).families

    def test_crs_blocks_xss(self, crs: Engine) -> None:
        assert crs.inspect(args("<script>alert(1)</script>")).blocked

    def test_crs_passes_a_typical_api_request(self, crs: Engine) -> None:
        collections = {"ARGS": [("json.model", "deepseek-chat"), ("json.temperature", "0.7"), ("user", "alice")],
                       "ARGS_NAMES": [("json.model", "json.model"), ("user", "user")],
                       "REQUEST_HEADERS": [("user-agent", "OpenAI/Python 1.40.0"), ("content-type",
                                                                                    "application/json")]}
        assert not crs.inspect(collections).blocked
