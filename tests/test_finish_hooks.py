"""`ctx.before_finish(hook)`: hooks that run before the last body chunk, and may still refuse the response."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dsguard import GuardMiddleware, GuardWSGIMiddleware
from dsguard.context import RequestContext, ResponseInfo
from dsguard.decision import Forbidden
from dsguard.guard import Guard

from .conftest import run_werkzeug
from .helpers import InProcess, config


class FinishWith:
    """Registers a before-finish hook on every call: it notes what it saw, then raises ``error`` if given."""

    name = "finish_with"
    stage = "transport"

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.seen: list[tuple[int | None, int, bool]] = []

    def check(self, ctx: RequestContext) -> None:
        ctx.before_finish(self.hook)

    async def hook(self, ctx: RequestContext, response: ResponseInfo) -> None:
        self.seen.append((response.status, response.bytes_sent, response.complete))
        if self.error is not None:
            raise self.error


async def answer(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def client(check: FinishWith) -> InProcess:
    app = Starlette(routes=[Route("/v1/models", answer)])
    return InProcess(GuardMiddleware(app, config=Guard(config(), checks=[check])))


def test_a_before_finish_hook_runs_once_with_the_response_so_far() -> None:
    check = FinishWith()
    response = client(check).get("/v1/models")
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert check.seen == [(200, len(response.content), False)]


def test_a_denial_raised_by_a_before_finish_hook_is_answered_instead_of_the_response() -> None:
    response = client(FinishWith(Forbidden("not this one", code="withheld"))).get("/v1/models")
    assert (response.status_code, response.json()["error"]["code"]) == (403, "withheld")
    assert b'"ok"' not in response.content


def test_a_before_finish_hook_that_fails_withholds_the_response_with_503_check_error() -> None:
    response = client(FinishWith(RuntimeError("disk on fire"))).get("/v1/models")
    assert (response.status_code, response.json()["error"]["code"]) == (503, "check_error")
    assert b"disk on fire" not in response.content


def test_a_denial_of_the_pipeline_runs_the_before_finish_hooks_too() -> None:
    check = FinishWith()
    response = client(check).request("TRACE", "/v1/models")
    assert response.status_code == 405
    assert check.seen == [(405, len(response.content), True)]


def test_a_wsgi_response_refused_by_a_before_finish_hook_is_answered_with_the_denial() -> None:
    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "11")])
        return [b'{"ok":true}']

    check = FinishWith(Forbidden("not this one", code="withheld"))
    middleware = GuardWSGIMiddleware(wsgi_app, config=Guard(config(), checks=[check]))
    try:
        with run_werkzeug(middleware) as url:
            response = httpx.get(f"{url}/v1/models")
    finally:
        middleware.close()
    assert (response.status_code, response.json()["error"]["code"]) == (403, "withheld")
    assert check.seen == [(200, 11, False)]
