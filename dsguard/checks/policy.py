"""The policy check: every call decided by the Casbin model and policy of ``[policy]``.

The request is built from the verified identity and the call (see :mod:`dsguard.policy.request`):
``sub`` the identity's subject (``anonymous_subject`` for calls ``[identity]`` lets through
without one), its roles as extra ``g`` links, ``dom`` its tenant, ``obj`` ``model:<name>`` for an
LLM call naming a model in its JSON body (else the path), ``act`` ``chat``/``complete``/``embed``
for such a call (else the method), ``attrs`` the claims and call attributes for ABAC models.
A denial is 403 ``policy_denied`` and says nothing about the policy; a request the matcher
cannot evaluate is refused with 503 ``policy_error``. The deciding rule is left in
``ctx.attributes["policy.rule"]`` for the audit log.

With ``reload = true`` the files are watched and a new policy swapped in whole; with a
``redis://`` storage URL, reloads are announced to the other replicas, which reload their own files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..config import Config, PolicyConfig
from ..context import RequestContext
from ..decision import CheckFailed, Denial, Forbidden
from ..policy import Policy, PolicyEvaluationError, access_request
from ..policy.reload import PolicyReloader
from ..services import Services
from .base import Check
from .hygiene import is_json

if TYPE_CHECKING:
    from ..policy.watcher import PolicyChannel

logger = logging.getLogger("dsguard.policy")

FOLLOW_SPACING = 1.0
"""Least time between reloads announced by other replicas (a flood of announcements costs one per second)."""


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise ValueError("a member is repeated")
    return members


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_members)


def _json_body(ctx: RequestContext) -> Any:
    """The parsed body: hygiene's, or parsed here (repeated members refused) when hygiene is off."""
    if ctx.json is not None or not ctx.body or not is_json(ctx.media_type):
        return ctx.json
    try:
        return _DECODER.decode(ctx.body.decode("utf-8"))
    except (ValueError, RecursionError):
        return None


class PolicyCheck:
    name = "policy"
    stage = "policy"
    needs_body = True

    def __init__(self, config: PolicyConfig, reloader: PolicyReloader, channel: PolicyChannel | None = None) -> None:
        self.mode = config.mode
        self.reloader = reloader
        self.channel = channel
        self.watch_files = config.reload
        self.actions = dict(config.actions)
        self.anonymous_subject = config.anonymous_subject
        self._tasks: list[asyncio.Task[None]] = []
        self._following: asyncio.Task[None] | None = None
        self._followed_at = -FOLLOW_SPACING

    @property
    def policy(self) -> Policy:
        return self.reloader.policy

    @property
    def reload_errors(self) -> int:
        """Reloads that failed (the last good policy stayed in force)."""
        return self.reloader.errors

    @property
    def reloads(self) -> int:
        return self.reloader.reloads

    def check(self, ctx: RequestContext) -> Denial | None:
        policy = self.reloader.policy
        path = ctx.path
        body = _json_body(ctx) if path in self.actions else None
        request = access_request(ctx.identity, ctx.method, path, body, actions=self.actions,
                                 anonymous_subject=self.anonymous_subject, with_attributes=policy.uses_attributes)
        try:
            decision = policy.decide_request(request)
        except PolicyEvaluationError as exc:
            logger.error("the policy could not decide %s %s (request %s): %s", ctx.method, path, ctx.request_id, exc)
            return CheckFailed("the request could not be authorized; try again later", code="policy_error")
        ctx.attributes["policy.rule"] = decision.rule
        if decision.allowed:
            return None
        return Forbidden("the policy does not allow this request", code="policy_denied")

    async def _announce(self, policy: Policy) -> None:
        if self.channel is not None:
            await self.channel.publish(policy.digest)

    async def _announced(self, digest: str) -> None:
        """Another replica reloaded: reload from our files too, at most once per ``FOLLOW_SPACING``."""
        if digest != self.reloader.policy.digest and self._following is None:
            self._following = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(max(0.0, self._followed_at + FOLLOW_SPACING - loop.time()))
            await self.reloader.reload(reason="announced by another replica")
        finally:
            self._followed_at = loop.time()
            self._following = None

    async def startup(self) -> None:
        if not self.watch_files or self._tasks:
            return
        if self.channel is not None:
            await self.channel.start(self._announced)
        self._tasks.append(asyncio.create_task(self.reloader.watch(self._announce)))

    async def shutdown(self) -> None:
        tasks, self._tasks = self._tasks, []
        if self._following is not None:
            tasks.append(self._following)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.channel is not None:
            await self.channel.close()


def build(config: Config, services: Services) -> list[Check]:
    """The policy check of ``[policy]``; a model or policy that cannot be loaded refuses to start."""
    policy_config = config.policy
    if policy_config is None:
        return []
    reloader = PolicyReloader(policy_config.model, policy_config.policy, engine=policy_config.engine,
                              interval=policy_config.reload_interval)
    channel = None
    if policy_config.reload and urlsplit(config.storage.url).scheme in ("redis", "rediss", "unix"):
        from ..policy.watcher import PolicyChannel  # the redis extra

        channel = PolicyChannel(config.storage.url, policy_config.redis_channel)
    return [PolicyCheck(policy_config, reloader, channel)]
