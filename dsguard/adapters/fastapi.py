"""FastAPI dependencies for per-route requirements, on top of :class:`GuardMiddleware`.

::

    app.add_middleware(GuardMiddleware, config="dsguard.toml")

    @app.post("/v1/chat/completions")
    def chat(identity: Identity = Depends(require(scopes=["chat"]))): ...

A failed requirement is answered in the guard's JSON error shape (the middleware replaces
whatever the framework would render for it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from ..context import Identity, RequestContext
from ..decision import CheckFailed, Denial
from ..requirements import Requirement


class RouteDenied(HTTPException):
    """Raised by :func:`require`; carries the :class:`Denial` the middleware renders."""

    def __init__(self, denial: Denial) -> None:
        super().__init__(denial.status, detail=denial.message, headers=dict(denial.headers))
        self.denial = denial


def get_context(connection: HTTPConnection) -> RequestContext:
    """The call's context; 503 (fail closed) if the guard middleware is not installed."""
    ctx: RequestContext | None = connection.scope.get("dsguard")
    if ctx is None:
        raise RouteDenied(CheckFailed("the guard is not installed in front of this route", code="guard_missing"))
    return ctx


def get_identity(connection: HTTPConnection) -> Identity | None:
    """The verified identity, or ``None`` for an anonymous call the guard let through."""
    return get_context(connection).identity


def require(*, roles: Iterable[str] = (), scopes: Iterable[str] = ()) -> Callable[[HTTPConnection], Identity]:
    """A dependency admitting only a verified caller with ``scopes`` and one of ``roles``."""
    requirement = Requirement.of(roles, scopes)

    def dependency(connection: HTTPConnection) -> Identity:
        ctx = get_context(connection)
        denial = requirement.evaluate(ctx.identity)
        if denial is not None:
            denial.check = "route"
            ctx.route_denial = denial
            raise RouteDenied(denial)
        assert ctx.identity is not None
        return ctx.identity

    return dependency
