"""Choosing, per batch size, between a one-thread and a two-thread session of the same small graph, by timing.

For a small model one decode step is a few dozen short kernels: a second thread only pays when it spins
between kernels (sleeping and waking it costs more than the kernel), and a spinning thread only pays when
a core is free for it. On a quiet two-core machine two spinning threads made a batch of four 1.35x faster;
on a busy one they made it 1.7x slower. So both sessions are kept and each batch size uses the one its
recent steps measured faster: a trial alternates the two for a few short blocks, then the winner runs
until the next trial. The thread count never changes the numbers computed (kernels split rows or
columns, never a sum), so switching is invisible in the output.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics

from dsguard.runner.session import DecoderSession

SMALL_MODEL = 20_000_000
"""Parameters below which a second session (a second copy of the weights) is cheap enough to keep."""
BLOCK = 8
"""Steps run on one session before a trial switches to the other; the first of them is not timed."""
TRIAL_BLOCKS = 6
"""Blocks per trial, alternating the two sessions."""
RECHECK = 512
"""Steps between two trials of one batch size."""

logger = logging.getLogger("dsguard.runner")


@dataclasses.dataclass
class _Bucket:
    """The state of one batch size: the session chosen, and the step times of a running trial."""

    chosen: int = 0
    since_trial: int = RECHECK
    trial_step: int = -1
    times: tuple[list[float], list[float]] = dataclasses.field(default_factory=lambda: ([], []))

    def current(self) -> int:
        if self.trial_step < 0:
            return self.chosen
        return (self.trial_step // BLOCK) % 2


class ThreadPlan:
    """Picks the session that steps a batch of a given size: ``sessions[0]`` (one thread) or ``sessions[1]``.

    A step is timed from its start to the start of the next step of the same batch size, so the time the
    scheduler then waits for the interpreter lock (held by readers, slowed down by a spinning thread) counts.
    """

    def __init__(self, narrow: DecoderSession, wide: DecoderSession) -> None:
        self.sessions = (narrow, wide)
        self._buckets: dict[int, _Bucket] = {}
        self._last: tuple[int, float] | None = None

    def pick(self, rows: int, now: float) -> DecoderSession:
        """The session for a step of a batch of ``rows`` starting at ``now`` (``time.perf_counter()``)."""
        if self._last is not None and self._last[0] == rows:
            self._observe(rows, now - self._last[1])
        self._last = (rows, now)
        bucket = self._buckets.get(rows)
        if bucket is None:
            bucket = self._buckets[rows] = _Bucket()
        if bucket.trial_step < 0 and bucket.since_trial >= RECHECK:
            bucket.trial_step, bucket.since_trial = 0, 0
            bucket.times[0].clear()
            bucket.times[1].clear()
        return self.sessions[bucket.current()]

    def pause(self) -> None:
        """The time since the last step was not spent stepping (waiting for work, prefilling): do not count it."""
        self._last = None

    def chosen(self, rows: int) -> int | None:
        """Which session the last trial chose for ``rows`` (None before any trial finished)."""
        bucket = self._buckets.get(rows)
        return bucket.chosen if bucket is not None and bucket.trial_step < 0 and bucket.since_trial < RECHECK \
            else None

    def _observe(self, rows: int, seconds: float) -> None:
        bucket = self._buckets[rows]
        if bucket.trial_step < 0:
            bucket.since_trial += 1
            return
        if bucket.trial_step % BLOCK:
            bucket.times[bucket.current()].append(seconds)
        bucket.trial_step += 1
        if bucket.trial_step == 2 * TRIAL_BLOCKS * BLOCK:
            narrow, wide = (statistics.median(times) for times in bucket.times)
            bucket.chosen = int(wide < narrow)
            bucket.trial_step = -1
            logger.debug("batches of %d: %.0f us/step on 1 thread, %.0f us/step on 2: using %d", rows, narrow * 1e6,
                         wide * 1e6, bucket.chosen + 1)


def wide_session(session: DecoderSession, cores: int) -> DecoderSession | None:
    """A second, two-thread spinning session over ``session``'s graph, where a plan can use it: a small model
    on the CPU, one thread chosen, two cores or more, and a graph loaded from files (not from memory)."""
    bundle = session.bundle
    if (session.threads != 1 or cores < 2 or session.provider != "CPUExecutionProvider"
            or bundle.shape.num_parameters() >= SMALL_MODEL or bundle.memory is not None):
        return None
    return DecoderSession(bundle, ("CPUExecutionProvider",), 2, fuse=session.fused, spin=True)
