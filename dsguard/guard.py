"""The guard: a configuration turned into a pipeline, plus its lifecycle and error rendering."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .checks.base import Check
from .checks.hygiene import ContentDecodingCheck, HygieneCheck, JSONBodyCheck
from .checks.identity import IdentityRequired
from .checks.transport import TransportCheck
from .config import Config, load_config, unavailable_features
from .context import AfterHook, RequestContext
from .decision import CheckFailed, Denial
from .errors import ConfigError
from .pipeline import Pipeline, shutdown_checks, startup_checks
from .plugins import load_plugin
from .services import Services
from .storage import open_storage
from .telemetry import open_telemetry
from .types import RawHeaders
from .units import NetworkSet

if TYPE_CHECKING:
    from .audit.log import AuditLog
    from .telemetry.endpoints import Endpoint
    from .telemetry.observer import Telemetry

logger = logging.getLogger("dsguard")

DENIAL_CODE = "denial.code"
"""``ctx.attributes`` key: the code of the denial the call was answered with."""

ErrorRenderer = Callable[[RequestContext, Denial], tuple[int, RawHeaders, bytes]]


def builtin_checks(config: Config, services: Services) -> list[Check]:
    """The built-in checks that ``config`` turns on, in request-path order."""
    checks: list[Check] = []
    if config.transport.enabled:
        checks.append(TransportCheck(config.transport, NetworkSet(config.server.trusted_proxies)))
    if config.hygiene.enabled:
        checks.append(HygieneCheck(config.hygiene))
        if config.hygiene.content_encodings:
            checks.append(ContentDecodingCheck(config.hygiene))
    if config.e2e is not None:
        from .checks import e2e

        checks += e2e.build(config, services)
    if config.hygiene.enabled:
        checks.append(JSONBodyCheck(config.hygiene))
    identity = config.identity
    if identity.mtls is not None:
        from .checks import mtls

        checks += mtls.build(config, services)
    if identity.jwt is not None:
        from .checks import jwt

        checks += jwt.build(config, services)
    if identity.introspection is not None:
        from .checks import introspection

        checks += introspection.build(config, services)
    if (identity.jwt is not None or identity.introspection is not None) and (
            identity.jwt is None or identity.jwt.sender_constraint != "off"):
        from .checks import sender

        checks += sender.build(config, services)
    if "identity" in config.present and not identity.anonymous:
        checks.append(IdentityRequired(identity))
    if config.signatures is not None:
        from .checks import signature

        checks += signature.build(config, services)
    if config.policy is not None:
        from .checks import policy

        checks += policy.build(config, services)
    if config.rate_limits:
        from .checks import ratelimit

        checks += ratelimit.build(config, services)
    if config.waf is not None:
        from .checks import waf

        checks += waf.build(config, services)
    if config.prompt_guard is not None:
        from .checks import prompt

        checks += prompt.build(config, services)
    if config.anomaly is not None:
        from .checks import anomaly

        checks += anomaly.build(config, services)
    return checks


def open_services(config: Config) -> Services:
    try:
        storage = open_storage(config.storage.url)
    except ValueError as exc:
        raise config.error(str(exc), "storage", "url") from None
    return Services(config, storage, telemetry=open_telemetry(config))


def refuse_unavailable(config: Config) -> None:
    """Fail closed on a configured security feature this version does not have."""
    for missing in unavailable_features(config):
        message = f"{missing.feature} is configured but not available in this version of dsguard"
        if missing.security and config.mode == "enforce" and config.on_unavailable == "refuse":
            raise ConfigError(f'{message}; remove the section or set on_unavailable = "warn"',
                              file=config.source, line=missing.line, key=f"[{missing.section}]")
        logger.warning("%s: [%s] %s; it is not enforced", config.source or "config", missing.section, message)


class Guard:
    """Checks built from one :class:`Config`, shared by every adapter wrapping an app."""

    def __init__(self, config: Config, *, checks: Iterable[Check] = (), after_hooks: Iterable[AfterHook] = (),
                 on_error: ErrorRenderer | None = None) -> None:
        refuse_unavailable(config)
        self.config = config
        self.services = open_services(config)
        self.services.readiness.register("checks", self._checks_started)
        all_checks = builtin_checks(config, self.services)
        all_checks += [load_plugin(p, config) for p in config.plugin_configs if p.enabled]
        all_checks += list(checks)
        self.audit: AuditLog | None = None
        if config.audit is not None:
            from .audit.log import AuditLog

            self.audit = AuditLog(config, self.services)
            all_checks.append(self.audit.check)
            after_hooks = [*after_hooks, self.audit.record]
        self.telemetry: Telemetry | None = None
        if self.services.telemetry is not None:
            from .telemetry.observer import Telemetry

            self.telemetry = Telemetry(config, self.services.telemetry, self.services, all_checks)
        make_pipeline: Callable[..., Pipeline] = Pipeline if self.telemetry is None else self.telemetry.pipeline
        self.pipeline = make_pipeline(all_checks, mode=config.mode, body_limit=config.hygiene.max_body,
                                      check_timeout=config.pipeline.check_timeout, after_hooks=after_hooks)
        if self.audit is not None and self.audit.finish_hook is not None:
            self.pipeline.finish_hooks.append(self.audit.finish_hook)
        self.endpoints: dict[str, Endpoint] = {} if self.telemetry is None else dict(self.telemetry.endpoints)
        for check in all_checks:
            self.endpoints.update(getattr(check, "endpoints", None) or {})
        self.request_id_header = config.pipeline.request_id_header.lower().encode("latin-1")
        self.on_error = on_error
        self.started = False
        self._lock: asyncio.Lock | None = None

    @classmethod
    def build(cls, source: str | Path | Config | Guard | None, **kwargs: object) -> Guard:
        """A guard from a path, a :class:`Config`, an existing guard, or ``$DSGUARD_CONFIG``.

        With no source and no ``$DSGUARD_CONFIG``, the secure defaults apply (HTTPS required).
        """
        if isinstance(source, Guard):
            if any(kwargs.values()):
                raise TypeError("checks, after_hooks and on_error belong to the Guard itself; pass them to it")
            return source
        if source is None:
            env = os.environ.get("DSGUARD_CONFIG")
            source = env if env else Config()
        config = source if isinstance(source, Config) else load_config(source)
        return cls(config, **kwargs)  # type: ignore[arg-type]

    async def startup(self) -> None:
        if self.started:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self.started:
                if self.audit is not None:
                    self.audit.start()
                await startup_checks(self.pipeline.checks)
                self.started = True

    async def ready(self) -> Denial | None:
        """Start the checks on first use; a failure refuses the call (503) and is retried later."""
        try:
            await self.startup()
        except Exception:
            logger.exception("dsguard checks failed to start; refusing calls until they do")
            return CheckFailed("the guard is starting; try again", code="guard_unavailable")
        return None

    async def _checks_started(self) -> bool:
        return await self.ready() is None

    async def shutdown(self) -> None:
        if self.started:
            self.started = False
            await shutdown_checks(self.pipeline.checks)
            await self.services.storage.close()
        if self.audit is not None:
            await asyncio.to_thread(self.audit.stop)
        if self.telemetry is not None:
            self.telemetry.shutdown()

    def render(self, ctx: RequestContext, denial: Denial) -> tuple[int, RawHeaders, bytes]:
        """Status, headers and body of the response refusing ``ctx``."""
        ctx.attributes[DENIAL_CODE] = denial.code
        if self.on_error is not None:
            try:
                return self.on_error(ctx, denial)
            except Exception:
                logger.exception("custom error renderer failed (request %s)", ctx.request_id)
        headers = denial.raw_headers()
        headers.append((self.request_id_header, ctx.request_id.encode()))
        headers.extend(ctx.response_headers)
        return denial.status, headers, denial.body(ctx.request_id)
