"""The hygiene checks: methods, headers, body size and type, JSON shape."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from dsguard import GuardMiddleware, GuardWSGIMiddleware, RequestContext

from .conftest import run_uvicorn, run_werkzeug
from .helpers import InProcess, config, starlette_app

SMALL = """
[transport]
require_https = false
[hygiene]
max_body = "1KiB"
max_headers = 20
max_header_bytes = "512B"
max_json_depth = 4
"""


@pytest.fixture
def http() -> InProcess:
    return InProcess(GuardMiddleware(starlette_app(), config=config(SMALL)))


def error(response: httpx.Response) -> dict[str, str]:
    body = response.json()
    assert set(body) == {"error", "request_id"}
    assert body["request_id"] == response.headers["x-request-id"]
    return body["error"]


def test_method_outside_the_allowlist_is_405_with_allow(http: InProcess) -> None:
    response = http.request("TRACE", "/whoami")
    assert response.status_code == 405
    assert error(response)["code"] == "method_not_allowed"
    assert response.headers["allow"] == "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"


def test_too_many_headers_is_431(http: InProcess) -> None:
    headers = {f"x-h{i}": "v" for i in range(30)}
    response = http.get("/whoami", headers=headers)
    assert response.status_code == 431
    assert error(response)["code"] == "headers_too_large"


def test_oversized_header_is_431(http: InProcess) -> None:
    response = http.get("/whoami", headers={"x-big": "a" * 600})
    assert response.status_code == 431


def test_body_over_declared_limit_is_413_with_json_shape(http: InProcess) -> None:
    response = http.post("/whoami", content=b"x" * 2048, headers={"content-type": "text/plain"})
    assert response.status_code == 413
    assert error(response) == {"type": "invalid_request_error", "code": "body_too_large",
                               "message": "request body is larger than 1024 bytes"}


def test_body_within_limit_reaches_the_app_intact(http: InProcess) -> None:
    response = http.post("/whoami", content=b"y" * 1000, headers={"content-type": "text/plain"})
    assert response.status_code == 200
    assert response.json()["body_length"] == 1000


def test_body_without_content_type_is_415(http: InProcess) -> None:
    response = http.post("/whoami", content=b"abc", headers={"content-type": ""})
    assert response.status_code == 415


def test_unaccepted_content_type_is_415(http: InProcess) -> None:
    response = http.post("/whoami", content=b"<x/>", headers={"content-type": "application/xml"})
    assert response.status_code == 415
    assert error(response)["code"] == "unsupported_media_type"


def test_structured_json_suffix_is_accepted(http: InProcess) -> None:
    response = http.post("/whoami", content=b'{"a": 1}', headers={"content-type": "application/merge-patch+json"})
    assert response.status_code == 200


def test_malformed_json_is_400(http: InProcess) -> None:
    response = http.post("/whoami", content=b'{"a": ', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert error(response)["code"] == "invalid_json"


def test_json_nested_beyond_the_limit_is_400(http: InProcess) -> None:
    response = http.post("/whoami", json={"a": {"b": {"c": {"d": {"e": 1}}}}})
    assert response.status_code == 400
    assert error(response)["code"] == "json_too_deep"


def test_json_at_the_depth_limit_passes(http: InProcess) -> None:
    assert http.post("/whoami", json={"a": {"b": {"c": [1]}}}).status_code == 200


def test_json_nested_past_the_interpreter_recursion_limit_is_400_not_500() -> None:
    http = InProcess(GuardMiddleware(starlette_app(), config=config()))
    body = b"[" * 100_000 + b"]" * 100_000
    response = http.post("/whoami", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert error(response)["code"] == "json_too_deep"


def test_duplicate_json_keys_are_400(http: InProcess) -> None:
    response = http.post("/whoami", content=b'{"model": "a", "model": "b"}',
                         headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert error(response)["code"] == "duplicate_json_key"


def test_non_utf8_json_is_400(http: InProcess) -> None:
    response = http.post("/whoami", content=b'{"a": "\xff"}', headers={"content-type": "application/json"})
    assert response.status_code == 400


@pytest.mark.parametrize("escape", [rb"\ud800", rb"\uDFFF", rb"x\udc00y", rb"\ud83d"])
def test_json_with_an_unpaired_surrogate_escape_is_400(http: InProcess, escape: bytes) -> None:
    response = http.post("/whoami", content=b'{"model": "' + escape + b'"}',
                         headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert error(response)["code"] == "invalid_json"


@pytest.mark.parametrize("text", [rb"\ud83d\ude00", rb"\\ud800", "\u00e9\u4e2d".encode()])
def test_json_with_paired_surrogates_or_an_escaped_backslash_passes(http: InProcess, text: bytes) -> None:
    response = http.post("/whoami", content=b'{"model": "' + text + b'"}',
                         headers={"content-type": "application/json"})
    assert response.status_code == 200


def test_parsed_json_is_shared_with_later_checks() -> None:
    seen = {}

    class Spy:
        name = "spy"
        stage = "content"

        def check(self, ctx):  # type: ignore[no-untyped-def]
            seen["json"] = ctx.json

    http = InProcess(GuardMiddleware(starlette_app(), config=config(), checks=[Spy()]))
    http.post("/whoami", json={"model": "deepseek"})
    assert seen["json"] == {"model": "deepseek"}


def raw_exchange(base_url: str, request: bytes) -> bytes:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks) and b'"request_id"' in b"".join(chunks):
                break
    return b"".join(chunks)


def chunked_request(size: int) -> bytes:
    head = (b"POST /whoami HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    body = b"".join(b"%x\r\n%s\r\n" % (256, b"z" * 256) for _ in range(size // 256)) + b"0\r\n\r\n"
    return head + body


def test_chunked_body_over_the_limit_is_413_through_uvicorn() -> None:
    with run_uvicorn(GuardMiddleware(starlette_app(), config=config(SMALL))) as url:
        reply = raw_exchange(url, chunked_request(4096))
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "body_too_large"


def test_chunked_body_within_the_limit_is_replayed_through_uvicorn() -> None:
    with run_uvicorn(GuardMiddleware(starlette_app(), config=config(SMALL))) as url:
        reply = raw_exchange(url, chunked_request(768))
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["body_length"] == 768


def wsgi_echo(environ, start_response):  # type: ignore[no-untyped-def]
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"body_length": len(body)}).encode()]


def test_oversize_body_is_413_through_werkzeug() -> None:
    with run_werkzeug(GuardWSGIMiddleware(wsgi_echo, config=config(SMALL))) as url:
        response = httpx.post(url + "/", content=b"x" * 4096, headers={"content-type": "text/plain"})
        assert response.status_code == 413
        assert error(response)["code"] == "body_too_large"
        response = httpx.post(url + "/", content=b"x" * 1000, headers={"content-type": "text/plain"})
        assert response.json() == {"body_length": 1000}


def test_chunked_body_over_the_limit_is_413_through_werkzeug() -> None:
    with run_werkzeug(GuardWSGIMiddleware(wsgi_echo, config=config(SMALL))) as url:
        reply = raw_exchange(url, chunked_request(4096))
    assert reply.startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize(("headers", "version", "expected"), [
    ([], "1.1", False),
    ([(b"content-length", b"0")], "1.1", False),
    ([(b"content-length", b"12")], "1.1", True),
    ([(b"transfer-encoding", b"chunked")], "1.1", True),
    ([], "2", True),
])
def test_a_body_is_expected_from_framing_headers_or_http2(headers: list[tuple[bytes, bytes]], version: str,
                                                          expected: bool) -> None:
    ctx = RequestContext("POST", "/", b"/", b"", headers, "192.0.2.1", "https", version)
    assert ctx.has_body is expected


def hygiene_denial(headers: list[tuple[bytes, bytes]]) -> str | None:
    from dsguard.checks.hygiene import HygieneCheck
    from dsguard.config import HygieneConfig

    ctx = RequestContext("POST", "/", b"/", b"", [(b"content-type", b"application/json"), *headers],
                         "192.0.2.1", "https")
    denial = HygieneCheck(HygieneConfig()).check(ctx)
    return denial.code if denial is not None else None


def test_conflicting_content_lengths_are_400_request_smuggling() -> None:
    assert hygiene_denial([(b"content-length", b"3"), (b"content-length", b"40")]) == "bad_content_length"


def test_repeated_content_length_is_400_even_when_identical() -> None:
    assert hygiene_denial([(b"content-length", b"3"), (b"content-length", b"3")]) == "bad_content_length"


def test_a_single_content_length_passes() -> None:
    assert hygiene_denial([(b"content-length", b"3")]) is None


def test_content_length_with_transfer_encoding_is_400_request_smuggling() -> None:
    headers = [(b"content-length", b"3"), (b"transfer-encoding", b"chunked")]
    assert hygiene_denial(headers) == "bad_content_length"


def test_non_numeric_content_length_is_400() -> None:
    assert hygiene_denial([(b"content-length", b"+3")]) == "bad_content_length"


def test_headers_join_repeats_and_keep_each_value() -> None:
    ctx = RequestContext("GET", "/", b"/", b"", [(b"accept", b"a"), (b"cookie", b"x=1"), (b"accept", b"b"),
                                                  (b"cookie", b"y=2")], "192.0.2.1", "https")
    assert ctx.headers["Accept"] == "a, b"
    assert ctx.headers.get("cookie") == "x=1; y=2"
    assert ctx.headers.getlist("accept") == ["a", "b"]
    assert ctx.headers.repeated == {b"accept", b"cookie"}
    assert sorted(ctx.headers) == ["accept", "cookie"]
