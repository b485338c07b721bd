"""Run the checks of one call in order, fail closed, and run the before-finish and after-response hooks."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Iterable, Sequence
from time import perf_counter_ns
from typing import Any, Protocol

from .checks.base import Check, stage_rank
from .context import AfterHook, RequestContext, ResponseInfo
from .decision import CheckFailed, Denial
from .errors import ClientDisconnected
from .types import Mode

logger = logging.getLogger("dsguard")


class ResponseAborted(ConnectionError):
    """A before-finish hook refused a response that had started: the app's next send raises this, as on a broken
    connection, and the response is cut off (the connection closed) instead of ending as a success."""


class CallIO(Protocol):
    """What an adapter gives the pipeline: the request body and a way to await."""

    async def read_body(self, limit: int) -> bytes: ...

    async def wait(self, awaitable: Awaitable[Any], timeout: float | None) -> Any: ...


class Pipeline:
    """Ordered checks. The first denial ends the call unless that check is in report mode.

    A check that raises anything but a :class:`Denial`, or outlives ``check_timeout``, denies
    the call with 503 ``check_error`` / ``check_timeout``: an error never opens the door.
    """

    def __init__(self, checks: Iterable[Check], *, mode: Mode = "enforce", body_limit: int = 1024 * 1024,
                 check_timeout: float | None = 5.0, after_hooks: Iterable[AfterHook] = ()) -> None:
        ordered = sorted(checks, key=lambda c: (stage_rank(c.stage), getattr(c, "priority", 0)))
        self.checks: tuple[Check, ...] = tuple(ordered)
        self.mode = mode
        self.body_limit = body_limit
        self.check_timeout = check_timeout
        self.after_hooks: list[AfterHook] = list(after_hooks)
        self.finish_hooks: list[AfterHook] = []
        """Hooks every call runs before its last body chunk (see :meth:`RequestContext.before_finish`)."""
        # Global report mode wins; otherwise a check may put itself in report mode.
        self._steps = tuple(
            (c, c.check, c.name, "report" in (mode, getattr(c, "mode", None)), bool(getattr(c, "needs_body", False)))
            for c in ordered
        )

    async def evaluate(self, ctx: RequestContext, io: CallIO) -> Denial | None:
        """The denial that ends this call, or ``None`` to let it through."""
        timings = ctx.timings
        for _check, run, name, report, needs_body in self._steps:
            start = perf_counter_ns()
            try:
                if needs_body and ctx.body is None and ctx.has_body:
                    ctx.body_limit = self.body_limit
                    ctx.body = await io.read_body(self.body_limit)
                outcome = run(ctx)
                if outcome is not None and not isinstance(outcome, Denial):
                    outcome = await io.wait(outcome, self.check_timeout)
            except Denial as denial:
                outcome = denial
            except ClientDisconnected:
                raise
            except TimeoutError:
                logger.error("check %s timed out after %ss (request %s)", name, self.check_timeout, ctx.request_id)
                outcome = CheckFailed(code="check_timeout")
            except Exception:
                logger.exception("check %s failed (request %s)", name, ctx.request_id)
                outcome = CheckFailed()
            timings.append((name, perf_counter_ns() - start))
            if outcome is None:
                continue
            outcome.check = name
            if report:
                ctx.denials_reported.append(outcome)
                logger.warning("report-only: %s would deny %s %s with %s %s (request %s)", name, ctx.method,
                               ctx.path, outcome.status, outcome.code, ctx.request_id)
                continue
            logger.info("denied %s %s from %s by %s: %s %s (request %s)", ctx.method, ctx.path, ctx.client_ip,
                        name, outcome.status, outcome.code, ctx.request_id)
            return outcome
        return None

    def has_after_hooks(self, ctx: RequestContext) -> bool:
        return bool(self.after_hooks or ctx.after_hooks)

    def has_finish_hooks(self, ctx: RequestContext) -> bool:
        return bool(self.finish_hooks or ctx.finish_hooks)

    async def before_finish(self, ctx: RequestContext, response: ResponseInfo, io: CallIO) -> Denial | None:
        """Run the call's before-finish hooks, then the pipeline's; the denial to answer instead, if one refuses."""
        for hook in (*ctx.finish_hooks, *self.finish_hooks):
            try:
                result = hook(ctx, response)
                if inspect.isawaitable(result):
                    await io.wait(result, self.check_timeout)
                continue
            except Denial as denial:
                refusal = denial
            except TimeoutError:
                logger.error("before-finish hook %r timed out after %ss (request %s)", hook, self.check_timeout,
                             ctx.request_id)
                refusal = CheckFailed(code="check_timeout")
            except Exception:
                logger.exception("before-finish hook %r failed (request %s)", hook, ctx.request_id)
                refusal = CheckFailed()
            refusal.check = refusal.check or "before_finish"
            return refusal
        return None

    async def finish(self, ctx: RequestContext, response: ResponseInfo, io: CallIO) -> None:
        """Run the call's after-hooks and the pipeline's; errors are logged, never raised."""
        for hook in (*ctx.after_hooks, *self.after_hooks):
            try:
                result = hook(ctx, response)
                if inspect.isawaitable(result):
                    await io.wait(result, self.check_timeout)
            except Exception:
                logger.exception("after-response hook %r failed (request %s)", hook, ctx.request_id)


async def startup_checks(checks: Sequence[Check]) -> None:
    """Start each check in order; if one fails, stop those already started and re-raise."""
    started: list[Check] = []
    try:
        for check in checks:
            start = getattr(check, "startup", None)
            if start is not None:
                await start()
            started.append(check)
    except BaseException:
        await shutdown_checks(started)
        raise


async def shutdown_checks(checks: Sequence[Check]) -> None:
    """Stop checks in reverse order; errors are logged, never raised."""
    for check in reversed(checks):
        stop = getattr(check, "shutdown", None)
        if stop is not None:
            try:
                await stop()
            except Exception:
                logger.exception("shutdown of check %s failed", check.name)
