"""The pipeline with telemetry on: the call's start is stamped and the guard's time sent back.

``Server-Timing: dsguard;dur=<ms>`` (W3C Server Timing) is the sum of the checks' timings, the
body read included; it goes on allowed and denied responses alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from time import time_ns

from ..checks.base import Check
from ..context import AfterHook, RequestContext
from ..decision import Denial
from ..pipeline import CallIO, Pipeline
from ..types import Mode

STARTED_NS = "telemetry.started_ns"
"""``ctx.attributes`` key: when the first check started, in nanoseconds since the epoch."""


def server_timing(timings: Iterable[tuple[str, int]]) -> bytes:
    total = 0
    for _, duration in timings:
        total += duration
    return b"dsguard;dur=%.3f" % (total / 1e6)


class ObservedPipeline(Pipeline):
    def __init__(self, checks: Iterable[Check], *, mode: Mode = "enforce", body_limit: int = 1024 * 1024,
                 check_timeout: float | None = 5.0, after_hooks: Iterable[AfterHook] = (),
                 server_timing: bool = True, on_start: Callable[[RequestContext], None] | None = None) -> None:
        super().__init__(checks, mode=mode, body_limit=body_limit, check_timeout=check_timeout,
                         after_hooks=after_hooks)
        self.server_timing = server_timing
        self.on_start = on_start

    async def evaluate(self, ctx: RequestContext, io: CallIO) -> Denial | None:
        ctx.attributes[STARTED_NS] = time_ns()
        if self.on_start is not None:
            self.on_start(ctx)
        denial = await super().evaluate(ctx, io)
        if self.server_timing:
            ctx.response_headers.append((b"server-timing", server_timing(ctx.timings)))
        return denial
