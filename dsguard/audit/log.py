"""``[audit]`` in a guard: the hooks feeding the writer, and the call's start stamp.

:class:`AuditStart` runs first in the pipeline and stamps when the call started (for
``latency_ms``); :meth:`AuditLog.record` is the after-response hook, registered by the guard,
that hands the call's facts to the writer without waiting on the disk. Under ``durability =
"written"`` the guard also registers :meth:`AuditLog.written` to run before the last chunk of
each response: the response ends only once its record is written, else it is refused with 503
``audit_unavailable`` (or cut off, if it has started) and the refusal is recorded afterwards, if
it can be (a record that was only late is dropped, never written, so the refusal is the call's
only record); a call
that never reaches its last chunk (the client left) is recorded afterwards by
:meth:`AuditLog.record`. Dropped records are counted in ``dsguard.audit.drops`` and a chain
found broken at startup in ``dsguard.audit.chain_failures`` (meter ``dsguard.audit``);
``/readyz`` fails if the writer thread has stopped.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable
from pathlib import Path
from time import time_ns
from typing import Any

from ..config import Config
from ..context import AfterHook, RequestContext, ResponseInfo
from ..crypto.errors import KeyProviderError
from ..decision import Overloaded
from ..services import Services
from ..telemetry.instruments import audit_instruments
from .record import STARTED_NS, CallFacts, capture, decision_record
from .signing import CheckpointSigner, open_checkpoint_signer, resolve_key_url
from .writer import AuditWriter

logger = logging.getLogger("dsguard.audit")

WRITTEN = "audit.written"
"""``ctx.attributes`` key: the call's record was written before its response ended."""


class AuditUnavailable(Overloaded):
    """503: under ``durability = "written"`` the call's record could not be written, so its answer is withheld."""

    code = "audit_unavailable"


class AuditStart:
    """Stamps the call's start; never denies."""

    name = "audit"
    stage = "transport"
    priority = -1_000_000

    def check(self, ctx: RequestContext) -> None:
        ctx.attributes[STARTED_NS] = time_ns()


def config_directory(config: Config) -> Path | None:
    """The directory relative key URLs are read from: the configuration file's."""
    if config.source is None or config.source.startswith("<"):
        return None
    return Path(config.source).resolve().parent


def open_signer_of(config: Config) -> CheckpointSigner | None:
    """The checkpoint signer of ``[audit] signing_key``; a key that cannot be opened is a configuration error."""
    settings = config.audit
    if settings is None or settings.signing_key is None:
        return None
    try:
        return open_checkpoint_signer(resolve_key_url(settings.signing_key, config_directory(config)))
    except KeyProviderError as exc:
        raise config.error(str(exc), "audit", "signing_key") from None


def _encode(item: Any, *, log_prompts: bool) -> dict[str, Any]:
    if isinstance(item, CallFacts):
        return decision_record(item, log_prompts=log_prompts)
    return dict(item)


class AuditLog:
    """The audit log of one guard."""

    def __init__(self, config: Config, services: Services) -> None:
        settings = config.audit
        if settings is None:
            raise ValueError("the configuration has no [audit] section")
        instruments = audit_instruments(services.meter_provider)
        self.check = AuditStart()
        self.writer = AuditWriter(
            settings, signer=open_signer_of(config),
            encode=functools.partial(_encode, log_prompts=settings.log_prompts),
            on_drop=instruments.drops.add, on_chain_failure=lambda: instruments.chain_failures.add(1))
        services.readiness.register("audit", lambda: not self.writer.failed)
        self.written_timeout = settings.written_timeout
        self._refusal_logged_at = float("-inf")
        self.finish_hook: AfterHook | None = self.written if settings.durability == "written" else None
        """The hook the guard runs before the last chunk of each response, if any."""

    def record(self, ctx: RequestContext, response: ResponseInfo) -> Awaitable[None] | None:
        """The after-response hook: queues the call's record unless it was written before the response ended."""
        if WRITTEN in ctx.attributes:
            return None
        return self.writer.submit(capture(ctx, response))

    async def written(self, ctx: RequestContext, response: ResponseInfo) -> None:
        """The before-finish hook of ``durability = "written"``: the record is written, or the response refused."""
        if await self.writer.write(capture(ctx, response), self.written_timeout):
            ctx.attributes[WRITTEN] = True
            return
        now = time.monotonic()
        if now - self._refusal_logged_at >= 1.0:
            self._refusal_logged_at = now
            logger.error("audit log %s: the record of request %s was not written (write failed, writer stopped or "
                         "over %ss); its response is withheld (503 audit_unavailable)", self.writer.path,
                         ctx.request_id, self.written_timeout)
        refusal = AuditUnavailable("the audit log cannot record this call; try again", retry_after=1)
        refusal.check = "audit"
        raise refusal

    def start(self) -> None:
        self.writer.start()

    def stop(self) -> None:
        self.writer.stop()
