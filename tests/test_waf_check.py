"""The WAF check behind GuardMiddleware, served by uvicorn and called with httpx."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dsguard import GuardMiddleware
from dsguard.checks.waf import WAFCheck, build
from dsguard.context import RequestContext
from dsguard.decision import Denial
from dsguard.errors import ConfigError
from dsguard.services import Services
from dsguard.storage import open_storage
from dsguard.waf.targets import json_fields

from .conftest import run_uvicorn
from .helpers import config

ENFORCE = """
[transport]
require_https = false
[waf]
paranoia = 1
[[waf.exclusions]]
path_prefix = "/tools/"
targets = ["ARGS:code"]
[[waf.exclusions]]
path_prefix = "/search"
rules = ["sqli"]
"""
CODING_QUESTION = "Why does SELECT * FROM users WHERE name = '' OR 1=1 -- return every row? <script>alert(1)</script>"


async def echo(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"waf": request.state.dsguard.attributes.get("waf")})


def app(text: str) -> GuardMiddleware:
    routes = [Route(path, echo, methods=["GET", "POST"])
              for path in ("/v1/chat/completions", "/v1/completions", "/echo", "/tools/run", "/search")]
    return GuardMiddleware(Starlette(routes=routes), config=config(text))


@pytest.fixture(scope="module")
def server() -> Iterator[httpx.Client]:
    with run_uvicorn(app(ENFORCE)) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield client


def assert_blocked(response: httpx.Response, family: str, payload: str) -> None:
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "waf_blocked"
    assert family in error["message"]
    assert payload not in response.text


def test_sql_injection_tautology_in_query_is_blocked(server: httpx.Client) -> None:
    assert_blocked(server.get("/echo", params={"id": "1' OR '1'='1"}), "SQL injection", "'1'='1")


def test_union_select_in_form_field_is_blocked(server: httpx.Client) -> None:
    payload = "0 UNION SELECT password FROM users"
    assert_blocked(server.post("/echo", data={"id": payload}), "SQL injection", payload)


def test_sql_injection_in_cookie_is_blocked(server: httpx.Client) -> None:
    response = server.get("/echo", headers={"cookie": "session=x' OR 1=1--"})
    assert_blocked(response, "SQL injection", "OR 1=1")


def test_script_tag_xss_in_query_is_blocked(server: httpx.Client) -> None:
    assert_blocked(server.get("/echo", params={"q": "<script>alert(1)</script>"}), "cross-site scripting", "alert")


def test_event_handler_xss_in_user_agent_is_blocked(server: httpx.Client) -> None:
    response = server.get("/echo", headers={"user-agent": "Mozilla/5.0 <img src=x onerror=alert(1)>"})
    assert_blocked(response, "cross-site scripting", "onerror")


def test_double_encoded_path_traversal_is_blocked(server: httpx.Client) -> None:
    response = server.get("/echo?file=%252e%252e%252f%252e%252e%252fetc%252fpasswd")
    assert_blocked(response, "path traversal", "passwd")


def test_command_injection_after_semicolon_is_blocked(server: httpx.Client) -> None:
    assert_blocked(server.get("/echo", params={"host": "127.0.0.1; cat /etc/passwd"}), "command injection", "cat ")


def test_php_injection_in_json_field_is_blocked(server: httpx.Client) -> None:
    body = {"model": "deepseek-chat", "metadata": {"note": "<?php system($_GET['c']); ?>"}}
    assert_blocked(server.post("/v1/chat/completions", json=body), "PHP injection", "system(")


def test_typical_chat_request_passes_without_a_match(server: httpx.Client) -> None:
    body = {"model": "deepseek-chat", "temperature": 0.7, "max_tokens": 256,
            "messages": [{"role": "user", "content": "Hello!"}]}
    response = server.post("/v1/chat/completions?user=alice", json=body)
    assert response.status_code == 200
    assert response.json() == {"waf": None}


def test_coding_question_with_sql_and_html_in_chat_message_passes(server: httpx.Client) -> None:
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": CODING_QUESTION}]}
    assert server.post("/v1/chat/completions", json=body).status_code == 200


def test_coding_question_in_content_parts_passes(server: httpx.Client) -> None:
    content = [{"type": "text", "text": CODING_QUESTION}]
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": content}]}
    assert server.post("/v1/chat/completions", json=body).status_code == 200


def test_completion_prompt_with_sql_passes(server: httpx.Client) -> None:
    assert server.post("/v1/completions", json={"model": "m", "prompt": CODING_QUESTION}).status_code == 200


def test_vision_request_with_an_inline_base64_image_passes(server: httpx.Client) -> None:
    image = "data:image/png;base64," + "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk" * 8
    content = [{"type": "text", "text": "What is in this picture?"}, {"type": "image_url", "image_url": {"url": image}}]
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": content}]}
    response = server.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.json() == {"waf": None}


def test_sql_in_tool_call_arguments_of_the_chat_history_passes(server: httpx.Client) -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "run_sql", "arguments": '{"query": "SELECT name FROM users WHERE id = 1 OR 1=1"}'}}
    messages = [{"role": "user", "content": "Who are the users?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "alice, bob"}]
    assert server.post("/v1/chat/completions", json={"model": "m", "messages": messages}).status_code == 200


def test_tool_description_that_shows_sql_passes(server: httpx.Client) -> None:
    tool = {"type": "function", "function": {
        "name": "run_sql", "description": "Runs a query such as SELECT * FROM orders WHERE total > 100 --",
        "parameters": {"type": "object", "properties": {"query": {"type": "string",
                                                                  "description": "e.g. SELECT 1; DROP TABLE x"}}}}}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
    assert server.post("/v1/chat/completions", json=body).status_code == 200


def test_attack_in_a_tool_name_is_blocked(server: httpx.Client) -> None:
    tool = {"type": "function", "function": {"name": "x' UNION SELECT password FROM users--"}}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
    assert_blocked(server.post("/v1/chat/completions", json=body), "SQL injection", "UNION")


def test_get_request_with_a_body_is_blocked_as_a_protocol_attack(server: httpx.Client) -> None:
    response = server.request("GET", "/echo", content=b'{"id": 1}', headers={"content-type": "application/json"})
    assert_blocked(response, "protocol attack", "\"id\"")


def test_same_coding_question_in_a_query_argument_is_blocked(server: httpx.Client) -> None:
    assert server.get("/v1/chat/completions", params={"q": CODING_QUESTION}).status_code == 403


def test_attack_in_a_chat_message_field_other_than_content_is_blocked(server: httpx.Client) -> None:
    body = {"model": "m", "messages": [{"role": "user", "name": "x' OR '1'='1", "content": "hi"}]}
    assert server.post("/v1/chat/completions", json=body).status_code == 403


def test_sql_injection_followed_by_padding_past_the_field_limit_is_refused(server: httpx.Client) -> None:
    body = {"user": "1' OR '1'='1", "pad": [0] * 5000}
    response = server.post("/echo", json=body)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "waf_too_many_fields"
    assert "4096" in error["message"]
    assert "'1'='1" not in response.text


def test_sql_injection_followed_by_padding_within_a_raised_field_limit_is_blocked() -> None:
    with run_uvicorn(app(ENFORCE.replace("paranoia = 1", "paranoia = 1\nmax_fields = 10000"))) as url:
        response = httpx.post(f"{url}/echo", json={"user": "1' OR '1'='1", "pad": [0] * 5000}, timeout=10)
    assert_blocked(response, "SQL injection", "'1'='1")


def test_json_fields_are_visited_in_document_order() -> None:
    body = {"a": "1", "b": [{"c": "2"}, "3"], "d": "4"}
    assert [name for name, _ in json_fields(body)] == ["json.a", "json.b.0.c", "json.b.1", "json.d"]


def test_sql_injection_in_a_json_body_sent_as_text_plain_is_blocked(server: httpx.Client) -> None:
    response = server.post("/echo", content=b'{"user": "1\' OR \'1\'=\'1"}', headers={"content-type": "text/plain"})
    assert_blocked(response, "SQL injection", "'1'='1")


def test_sql_injection_in_a_tool_parameter_schema_outside_its_descriptions_is_blocked(server: httpx.Client) -> None:
    parameters = {"type": "object", "properties": {"id": {"type": "string", "default": "1' OR '1'='1"}}}
    tool = {"type": "function", "function": {"name": "lookup", "parameters": parameters}}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
    assert_blocked(server.post("/v1/chat/completions", json=body), "SQL injection", "'1'='1")


def test_sql_injection_in_a_content_part_field_other_than_its_text_is_blocked(server: httpx.Client) -> None:
    content = [{"type": "x", "text": "hello", "name": "1' OR '1'='1"}]
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    assert_blocked(server.post("/v1/chat/completions", json=body), "SQL injection", "'1'='1")


def test_excluded_target_on_its_route_passes(server: httpx.Client) -> None:
    params = {"code": "x; cat /etc/passwd"}
    assert server.get("/tools/run", params=params).status_code == 200
    assert server.get("/echo", params=params).status_code == 403


def test_exclusion_of_a_target_leaves_other_targets_inspected(server: httpx.Client) -> None:
    assert server.get("/tools/run", params={"other": "x; cat /etc/passwd"}).status_code == 403


def test_excluded_family_on_its_route_passes_while_other_families_block(server: httpx.Client) -> None:
    assert server.get("/search", params={"q": "1' OR '1'='1"}).status_code == 200
    assert server.get("/search", params={"q": "<script>alert(1)</script>"}).status_code == 403


def test_report_mode_passes_and_records_the_matches() -> None:
    with run_uvicorn(app(ENFORCE.replace("paranoia = 1", 'paranoia = 1\nmode = "report"'))) as url:
        response = httpx.get(f"{url}/echo", params={"id": "1' OR '1'='1"}, timeout=10)
    assert response.status_code == 200
    recorded = response.json()["waf"]
    assert recorded["blocked"] is True
    assert recorded["families"] == ["sqli"]
    assert recorded["score"] >= 5 and recorded["rules"]


def test_body_larger_than_the_inspected_size_is_refused() -> None:
    with run_uvicorn(app(ENFORCE.replace("paranoia = 1", "paranoia = 1\nmax_body = 64"))) as url:
        response = httpx.post(f"{url}/echo", json={"note": "x" * 200}, timeout=10)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "waf_body_too_large"


def test_unknown_exclusion_family_is_a_config_error() -> None:
    text = '[waf]\n[[waf.exclusions]]\npath_prefix = "/"\nrules = ["sql"]\n'
    with pytest.raises(ConfigError, match="unknown rule family 'sql'"):
        build(config(text), Services(config(text), open_storage("memory://")))


def test_missing_crs_directory_is_a_config_error() -> None:
    text = '[waf]\ncrs_path = "/nonexistent/crs"\n'
    with pytest.raises(ConfigError, match="crs_path"):
        build(config(text), Services(config(text), open_storage("memory://")))


MEDIA_TYPES = st.sampled_from([None, "application/json", "application/x-www-form-urlencoded", "text/xml",
                               "multipart/form-data; boundary=b", "text/plain"])
DEFAULT_CHECK = build(config("[waf]\n"), Services(config("[waf]\n"), open_storage("memory://")))[0]
assert isinstance(DEFAULT_CHECK, WAFCheck)
CHECK: WAFCheck = DEFAULT_CHECK


@settings(max_examples=300, deadline=None)
@given(path=st.binary(max_size=64), query=st.binary(max_size=128), body=st.binary(max_size=256),
       header=st.binary(max_size=64), media_type=MEDIA_TYPES)
def test_malformed_request_is_passed_or_refused_never_raises(path: bytes, query: bytes, body: bytes, header: bytes,
                                                            media_type: str | None) -> None:
    headers = [(b"user-agent", header), (b"cookie", header), (b"x-custom", header)]
    if media_type:
        headers.append((b"content-type", media_type.encode()))
    ctx = RequestContext("POST", path.decode("latin-1"), path, query, headers, "127.0.0.1", "http")
    ctx.body = body
    outcome = CHECK.check(ctx)
    assert outcome is None or (isinstance(outcome, Denial) and outcome.status == 403)
