"""The check protocol.

A check is any object with a ``name``, a ``stage`` and a ``check(ctx)`` method returning
``None`` (pass), a :class:`~dsguard.decision.Denial`, or an awaitable of either. It may also
raise a ``Denial``. Checks that do I/O return a coroutine: under ASGI it is awaited on the
server's loop, under WSGI it runs on dsguard's background loop, so one check serves both.

Optional members, looked up once when the pipeline is built:

- ``needs_body: bool`` - the body is read (capped) before this check runs; ``ctx.body`` is set.
- ``priority: int`` - order within the stage (default 0; lower first, ties keep their order).
- ``mode: "enforce" | "report" | None`` - per-check override of the global mode.
- ``async def startup()`` / ``async def shutdown()`` - open and close connections.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol, runtime_checkable

from ..config import STAGES
from ..context import RequestContext
from ..decision import Denial

Outcome = Denial | None | Awaitable[Denial | None]


@runtime_checkable
class Check(Protocol):
    name: str
    stage: str  # one of dsguard.config.STAGES, checked when the pipeline is built

    def check(self, ctx: RequestContext) -> Outcome: ...


def stage_rank(stage: str) -> int:
    """Position of a stage in the request path (cheap checks first)."""
    try:
        return STAGES.index(stage)
    except ValueError:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}") from None
