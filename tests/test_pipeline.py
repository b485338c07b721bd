"""The pipeline: ordering, fail-closed errors, timeouts, report mode and after-response hooks."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from dsguard import GuardMiddleware, GuardWSGIMiddleware, RequestContext, ResponseInfo
from dsguard.decision import Denial, Forbidden, Overloaded, RateLimited, Unauthenticated
from dsguard.guard import Guard

from .conftest import run_werkzeug
from .helpers import AsyncDenyHeader, Exploding, FailsToStart, HeaderIdentity, InProcess, Slow, config, starlette_app


def test_checks_run_in_request_path_order_whatever_the_order_given() -> None:
    guard = Guard(config(), checks=[AsyncDenyHeader(), HeaderIdentity()])
    assert [c.name for c in guard.pipeline.checks] == ["transport", "hygiene", "json", "test-identity", "async-deny"]


def test_a_check_that_raises_denies_with_503_check_error_and_no_detail(caplog: pytest.LogCaptureFixture) -> None:
    http = InProcess(GuardMiddleware(starlette_app(), config=config(), checks=[Exploding()]))
    response = http.get("/whoami")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "check_error"
    assert response.headers["retry-after"] == "1"
    assert "secret-internal-detail" not in response.text and "Traceback" not in response.text
    assert "secret-internal-detail" in caplog.text
    assert response.json()["request_id"] in caplog.text


def test_a_check_that_hangs_is_cut_off_by_check_timeout() -> None:
    text = "[transport]\nrequire_https = false\n[pipeline]\ncheck_timeout = \"50ms\"\n"
    http = InProcess(GuardMiddleware(starlette_app(), config=config(text), checks=[Slow()]))
    response = http.get("/whoami")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "check_timeout"


def test_report_mode_logs_the_denial_and_lets_the_call_through(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dsguard")
    http = InProcess(GuardMiddleware(starlette_app(), config=config('mode = "report"\n')))
    response = http.get("/whoami")
    assert response.status_code == 200
    assert "report-only: transport would deny GET /whoami with 403 https_required" in caplog.text


def test_report_mode_lets_an_oversize_body_through_whole() -> None:
    text = 'mode = "report"\n[hygiene]\nmax_body = "16B"\n'
    http = InProcess(GuardMiddleware(starlette_app(), config=config(text)), scheme="https")
    response = http.post("/whoami", content=b"q" * 100, headers={"content-type": "text/plain"})
    assert response.status_code == 200
    assert response.json()["body_length"] == 100


def test_report_mode_for_one_check_only() -> None:
    text = "[transport]\nmode = \"report\"\n[hygiene]\nmax_json_depth = 1\n"
    http = InProcess(GuardMiddleware(starlette_app(), config=config(text)))
    assert http.get("/whoami").status_code == 200
    assert http.post("/whoami", json={"a": {"b": 1}}).status_code == 400


def test_report_mode_also_covers_check_errors() -> None:
    http = InProcess(GuardMiddleware(starlette_app(), config=config('mode = "report"\n'), checks=[Exploding()]))
    assert http.get("/whoami").status_code == 200


def test_async_check_runs_on_asgi() -> None:
    http = InProcess(GuardMiddleware(starlette_app(), config=config(), checks=[AsyncDenyHeader()]))
    assert http.get("/whoami").status_code == 200
    response = http.get("/whoami", headers={"x-deny": "1"})
    assert response.status_code == 403 and response.json()["error"]["code"] == "header_denied"


def wsgi_ok(environ, start_response):  # type: ignore[no-untyped-def]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_the_same_async_check_runs_under_wsgi() -> None:
    check = AsyncDenyHeader()
    middleware = GuardWSGIMiddleware(wsgi_ok, config=config(), checks=[check])
    with run_werkzeug(middleware) as url:
        assert httpx.get(url).text == "ok"
        response = httpx.get(url, headers={"x-deny": "1"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "header_denied"
    assert check.started == 1
    middleware.close()
    assert check.stopped == 1


def test_checks_given_with_an_existing_guard_are_refused_not_ignored() -> None:
    guard = Guard(config())
    with pytest.raises(TypeError, match="belong to the Guard"):
        GuardMiddleware(starlette_app(), config=guard, checks=[Exploding()])


def test_slow_async_check_times_out_under_wsgi() -> None:
    text = "[transport]\nrequire_https = false\n[pipeline]\ncheck_timeout = \"50ms\"\n"
    with run_werkzeug(GuardWSGIMiddleware(wsgi_ok, config=config(text), checks=[Slow()])) as url:
        response = httpx.get(url)
    assert response.status_code == 503 and response.json()["error"]["code"] == "check_timeout"


def test_after_hooks_see_the_status_of_allowed_and_denied_calls() -> None:
    seen: list[tuple[int | None, bool, str | None]] = []

    async def hook(ctx: RequestContext, response: ResponseInfo) -> None:
        await asyncio.sleep(0)
        seen.append((response.status, response.complete, response.denied_by))

    http = InProcess(GuardMiddleware(starlette_app(), config=config(), after_hooks=[hook]))
    http.get("/whoami")
    http.request("TRACE", "/whoami")
    assert seen == [(200, True, None), (405, True, "hygiene")]


def test_a_check_can_register_a_per_call_hook_under_wsgi() -> None:
    calls: list[int | None] = []

    class Accounting:
        name = "accounting"
        stage = "quota"

        def check(self, ctx: RequestContext) -> None:
            ctx.after(lambda _ctx, response: calls.append(response.status))

    with run_werkzeug(GuardWSGIMiddleware(wsgi_ok, config=config(), checks=[Accounting()])) as url:
        httpx.get(url)
    assert calls == [200]


def test_a_failing_after_hook_does_not_break_the_response(caplog: pytest.LogCaptureFixture) -> None:
    def hook(ctx: RequestContext, response: ResponseInfo) -> None:
        raise ValueError("hook broke")

    http = InProcess(GuardMiddleware(starlette_app(), config=config(), after_hooks=[hook]))
    assert http.get("/whoami").status_code == 200
    assert "hook broke" in caplog.text


@pytest.mark.parametrize(("denial", "status", "header", "value"), [
    (Unauthenticated("token expired", code="invalid_token", error="invalid_token"), 401, "www-authenticate",
     'Bearer realm="dsguard", error="invalid_token", error_description="token expired"'),
    (Unauthenticated("no credentials"), 401, "www-authenticate", 'Bearer realm="dsguard"'),
    (RateLimited("slow down", retry_after=2.2), 429, "retry-after", "3"),
    (Overloaded("busy", retry_after=5), 503, "retry-after", "5"),
    (Forbidden("no"), 403, "content-type", "application/json"),
])
def test_denials_carry_their_standard_headers(denial: Denial, status: int, header: str, value: str) -> None:
    class Deny:
        name = "deny"
        stage = "identity"

        def check(self, ctx: RequestContext) -> Denial:
            return denial

    response = InProcess(GuardMiddleware(starlette_app(), config=config(), checks=[Deny()])).get("/whoami")
    assert response.status_code == status
    assert response.headers[header] == value
    assert response.json()["error"]["message"] == denial.message


def test_custom_error_renderer() -> None:
    def render(ctx: RequestContext, denial: Denial) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return denial.status, [(b"content-type", b"text/plain")], f"no: {denial.code}".encode()

    http = InProcess(GuardMiddleware(starlette_app(), config=config(), on_error=render))
    response = http.request("TRACE", "/whoami")
    assert (response.status_code, response.text) == (405, "no: method_not_allowed")


def test_a_raising_custom_renderer_falls_back_to_the_json_shape() -> None:
    def render(ctx: RequestContext, denial: Denial) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        raise RuntimeError("renderer bug")

    http = InProcess(GuardMiddleware(starlette_app(), config=config(), on_error=render))
    response = http.request("TRACE", "/whoami")
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


def test_every_response_has_a_request_id() -> None:
    http = InProcess(GuardMiddleware(starlette_app(), config=config()))
    first, second = http.get("/whoami"), http.get("/whoami")
    assert len(first.headers["x-request-id"]) == 16
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_global_report_mode_wins_over_a_check_that_says_enforce() -> None:
    class Strict:
        name = "strict"
        stage = "content"
        mode = "enforce"

        def check(self, ctx: RequestContext) -> Denial:
            return Forbidden("strict says no", code="strict")

    http = InProcess(GuardMiddleware(starlette_app(), config=config('mode = "report"\n'), checks=[Strict()]))
    assert http.get("/whoami").status_code == 200


def test_a_check_that_fails_to_start_refuses_calls_until_it_starts() -> None:
    check = FailsToStart()
    http = InProcess(GuardMiddleware(starlette_app(), config=config(), checks=[check]))
    first = http.get("/whoami")
    assert first.status_code == 503 and first.json()["error"]["code"] == "guard_unavailable"
    assert http.get("/whoami").status_code == 200
    assert check.attempts == 2


def test_a_check_that_fails_to_start_refuses_wsgi_calls_too() -> None:
    check = FailsToStart()
    with run_werkzeug(GuardWSGIMiddleware(wsgi_ok, config=config(), checks=[check])) as url:
        first = httpx.get(url)
        second = httpx.get(url)
    assert (first.status_code, second.status_code) == (503, 200)


def test_an_async_check_that_never_suspends_is_answered_inline() -> None:
    class InMemory:
        name = "in-memory"
        stage = "content"

        async def check(self, ctx: RequestContext) -> Denial | None:
            return Forbidden("listed", code="listed") if "x-listed" in ctx.headers else None

    http = InProcess(GuardMiddleware(starlette_app(), config=config(), checks=[InMemory()]))
    assert http.get("/whoami").status_code == 200
    assert http.get("/whoami", headers={"x-listed": "1"}).json()["error"]["code"] == "listed"


def test_an_async_check_that_suspends_several_times_returns_its_result() -> None:
    class Chatty:
        name = "chatty"
        stage = "content"

        async def check(self, ctx: RequestContext) -> Denial | None:
            for _ in range(3):
                await asyncio.sleep(0)
            await asyncio.sleep(0.001)
            return Forbidden("after a while", code="slow_no")

    http = InProcess(GuardMiddleware(starlette_app(), config=config(), checks=[Chatty()]))
    assert http.get("/whoami").json()["error"]["code"] == "slow_no"
