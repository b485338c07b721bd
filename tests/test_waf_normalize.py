"""Decoding normalisation: each encoding trick an attacker uses is undone before rules look."""

from __future__ import annotations

import pytest

from dsguard.waf.normalize import (
    cmd_line,
    compress_whitespace,
    css_decode,
    decode_all,
    decode_bytes,
    html_entity_decode,
    js_decode,
    lowercase,
    normalize_path,
    normalize_path_win,
    remove_nulls,
    replace_comments,
    seven_bit,
    shell_normalize,
    sql_normalize,
    url_decode,
    url_decode_uni,
)


def test_url_decoding_decodes_percent_escapes_and_plus() -> None:
    assert url_decode("1%27%20OR+1=1") == "1' OR 1=1"


def test_double_url_encoding_is_peeled() -> None:
    assert decode_all("%252e%252e%252fetc%252fpasswd") == "../etc/passwd"


def test_iis_percent_u_escapes_are_decoded() -> None:
    assert url_decode_uni("%u003cscript%u003e") == "<script>"
    assert decode_all("%u003Cscript%U003E") == "<script>"


def test_full_width_characters_fold_to_ascii() -> None:
    assert decode_all("%uff53%uff45%uff4c%uff45%uff43%uff54") == "select"


def test_html_entities_are_decoded_named_decimal_hex_and_without_semicolon() -> None:
    assert html_entity_decode("&lt;script&gt;") == "<script>"
    assert html_entity_decode("&#x3c;img&#62;") == "<img>"
    assert html_entity_decode("&#60script") == "<script"


def test_entities_that_split_a_url_scheme_are_decoded_in_any_letter_case() -> None:
    assert html_entity_decode("ja&Tab;va&NewLine;script&colon;") == "ja\tva\nscript:"
    assert html_entity_decode("ja&tab;va&newline;script&COLON;") == "ja\tva\nscript:"


def test_entities_inside_percent_escapes_are_decoded_too() -> None:
    assert decode_all("%26lt%3Bscript%26gt%3B") == "<script>"


def test_overlong_utf8_decodes_to_the_character_it_encodes() -> None:
    assert decode_all("%c0%ae%c0%ae%c0%afetc") == "../etc"
    assert decode_bytes(b"\xe0\x80\xaf") == "/"


def test_invalid_utf8_bytes_become_latin1_characters() -> None:
    assert decode_bytes(b"caf\xe9") == "café"


def test_null_bytes_are_removed() -> None:
    assert remove_nulls("sel\x00ect") == "select"
    assert decode_all("sel%00ect") == "select"


def test_malformed_escapes_are_kept_not_raised_on() -> None:
    assert url_decode("%zz%") == "%zz%"
    assert decode_all("100%") == "100%"


def test_escapes_that_decode_to_no_text_are_left_alone_on_second_decoding() -> None:
    assert decode_all("%database") == "%database"


def test_case_folding() -> None:
    assert lowercase("SeLeCt") == "select"


def test_sql_comments_become_spaces_and_mysql_versioned_comments_keep_their_body() -> None:
    assert replace_comments("UNION/**/SELECT") == "UNION SELECT"
    assert sql_normalize("UNION/*!50000SELECT*/ 1/*x*/FROM t") == "union select 1 from t"


def test_unterminated_comment_runs_to_the_end() -> None:
    assert replace_comments("1 /* rest") == "1  "


def test_whitespace_is_compressed() -> None:
    assert compress_whitespace("a \t\n  b") == "a b"


def test_windows_command_line_obfuscation_is_undone() -> None:
    assert cmd_line('p^o"w"er\\shell,-c') == "powershell -c"


def test_shell_quoting_ifs_and_brace_expansion_are_undone() -> None:
    assert shell_normalize("c'a't${IFS}/etc/pa\\sswd") == "cat /etc/passwd"
    assert shell_normalize("{cat,/etc/passwd}") == "cat /etc/passwd"


@pytest.mark.parametrize(("spliced", "command"), [
    ("c$@at /et$*c/passwd", "cat /etc/passwd"), ("c${u}at /etc/passwd", "cat /etc/passwd"),
    ("sh$x -c id", "sh -c id"), ("w$()hoami", "whoami"), ("i``d", "id"),
])
def test_empty_expansions_spliced_into_a_command_name_are_removed(spliced: str, command: str) -> None:
    assert shell_normalize(spliced) == command


def test_a_variable_standing_alone_is_kept() -> None:
    assert shell_normalize("echo $HOME") == "echo $home"


def test_paths_are_normalised() -> None:
    assert normalize_path("/a/b/../../etc/./passwd") == "/etc/passwd"
    assert normalize_path_win("..\\..\\windows\\win.ini") == "../../windows/win.ini"


def test_javascript_and_css_escapes_are_decoded() -> None:
    assert js_decode("\\x3cscript\\u003e") == "<script>"
    assert css_decode("\\6a avascript") == "javascript"


def test_seven_bit_folding_reveals_markup_in_high_bit_characters() -> None:
    assert seven_bit("\xbcscript\xbe") == "<script>"


@pytest.mark.parametrize("value", ["hello", "", "deepseek-chat", "0.7", "München"])
def test_plain_values_are_unchanged(value: str) -> None:
    assert decode_all(value) == value
