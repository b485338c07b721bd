"""Flask integration: one line to guard the app, a decorator for per-route requirements.

::

    guard = FlaskGuard(app, config="dsguard.toml")

    @app.post("/v1/chat/completions")
    @guard.require(scopes=["chat"])
    def chat(): return {"caller": g.identity.subject}
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from flask import Flask, Response, g, request

from ..checks.base import Check
from ..config import Config
from ..context import Identity, RequestContext
from ..decision import CheckFailed, Denial
from ..guard import Guard
from ..requirements import Requirement
from .wsgi import GuardWSGIMiddleware

F = TypeVar("F", bound=Callable[..., Any])


class FlaskGuard:
    """Wraps ``app.wsgi_app`` with the guard and exposes ``g.identity`` / ``g.dsguard``."""

    def __init__(self, app: Flask | None = None, config: str | Path | Config | Guard | None = None, *,
                 checks: Iterable[Check] = ()) -> None:
        self.guard = Guard.build(config, checks=checks)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        app.wsgi_app = GuardWSGIMiddleware(app.wsgi_app, config=self.guard)  # type: ignore[method-assign]
        app.before_request(self._expose)
        app.extensions["dsguard"] = self

    @staticmethod
    def _expose() -> None:
        ctx = request.environ.get("dsguard.context")
        g.dsguard = ctx
        g.identity = ctx.identity if ctx is not None else None

    def require(self, *, roles: Iterable[str] = (), scopes: Iterable[str] = ()) -> Callable[[F], F]:
        """Admit only a verified caller with ``scopes`` and one of ``roles``."""
        requirement = Requirement.of(roles, scopes)

        def decorator(view: F) -> F:
            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                ctx: RequestContext | None = request.environ.get("dsguard.context")
                if ctx is None:
                    return self._respond(None, CheckFailed("the guard is not installed", code="guard_missing"))
                denial = requirement.evaluate(ctx.identity)
                if denial is not None:
                    denial.check = "route"
                    return self._respond(ctx, denial)
                return view(*args, **kwargs)

            return wrapper  # type: ignore[return-value]

        return decorator

    @staticmethod
    def _respond(ctx: RequestContext | None, denial: Denial) -> Response:
        # The WSGI middleware adds the per-call headers (request id, HSTS) to every response.
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in denial.raw_headers()]
        return Response(denial.body(ctx.request_id if ctx else None), status=denial.status, headers=headers)


def current_identity() -> Identity | None:
    """The verified identity of the current request, if any."""
    ctx = request.environ.get("dsguard.context")
    return ctx.identity if ctx is not None else None
