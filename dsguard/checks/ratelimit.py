"""Request rate limits and LLM token quotas (``[[rate_limits]]``), shared across replicas by Redis.

Entries keyed by ``ip`` are counted at the ``pre-auth`` stage, before any identity check spends
work on the call; every other key (``subject``, ``tenant``, ``claim:NAME``, ``route``, ``model``)
and every token quota at the ``quota`` stage. Each stage's check decides all of its buckets in
one atomic step (one Redis round trip): a call is admitted only if every bucket has room, and
then takes from all of them. See :mod:`dsguard.limits` for the bucket semantics (``burst``),
:mod:`dsguard.limits.tokens` for token reservation and the usage contract, and
:mod:`dsguard.limits.headers` for the ``RateLimit`` fields sent on every counted response.

Token usage contract: a call admitted against a token quota has an after-response hook that
reads ``ctx.attributes["llm_usage"]`` (``{"prompt_tokens": .., "completion_tokens": ..,
"total_tokens": ..}``, set by the app or dsguard's runner before the response or stream ends,
also when the client disconnects) and refunds ``reserved - used``; without it, an error status
refunds everything and anything else stays charged.

Refusals: 429 ``rate_limited`` (a request limit), ``token_quota_exceeded`` (the reservation does
not fit now) or ``token_request_too_large`` (it never can: no ``Retry-After``). When the storage
cannot answer, ``[storage] on_error = "fail-closed"`` refuses with 503 ``storage_unavailable``;
``"local-fallback"`` limits per process meanwhile (counted in the check's ``fallbacks``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

from ..config import Config, RateLimitConfig
from ..context import RequestContext, ResponseInfo
from ..decision import Denial, Overloaded, RateLimited
from ..errors import ConfigError
from ..limits import Bucket, Limiter, Verdict, open_limiter
from ..limits.failover import FailoverLimiter
from ..limits.keys import default_name, key_function
from ..limits.memory import MemoryLimiter
from ..limits.rules import BucketSpec, Rule, bucket_specs, valid_name
from ..limits.tokens import completion_cap, is_generation, llm_body, prompt_estimate, reported_usage, settlement
from ..services import Services
from ..storage import StorageError
from .base import Check

logger = logging.getLogger("dsguard.limits")


class TokenSettlement:
    """The after-response hook settling one call's token reservations with its reported usage."""

    __slots__ = ("buckets", "limiter", "reserved")

    def __init__(self, limiter: Limiter, buckets: list[Bucket], reserved: list[int]) -> None:
        self.limiter = limiter
        self.buckets = buckets
        self.reserved = reserved

    async def __call__(self, ctx: RequestContext, response: ResponseInfo) -> None:
        used = reported_usage(ctx)
        amounts = [settlement(reserved, used, response) for reserved in self.reserved]
        if not any(amounts):
            return
        try:
            await self.limiter.adjust(self.buckets, amounts)
        except StorageError as exc:
            logger.warning("token usage of request %s could not be settled (%s); the reservation stays charged",
                           ctx.request_id, exc)


class RateLimitCheck:
    """The rules of one stage, decided together."""

    def __init__(self, name: str, stage: str, rules: Sequence[Rule], limiter: FailoverLimiter, *,
                 owns_limiter: bool = True) -> None:
        self.name = name
        self.stage = stage
        self.rules = tuple(rules)
        self.limiter = limiter
        self.owns_limiter = owns_limiter
        self.needs_body = any(rule.needs_body for rule in rules)
        self._policies: dict[tuple[BucketSpec, ...], bytes] = {}

    async def shutdown(self) -> None:
        if self.owns_limiter:
            await self.limiter.close()

    @property
    def fallbacks(self) -> int:
        """Calls decided by per-process limits while the shared storage was down."""
        return self.limiter.fallbacks

    async def check(self, ctx: RequestContext) -> Denial | None:
        buckets: list[Bucket] = []
        specs: list[BucketSpec] = []
        costs: list[int] = []
        body = llm_body(ctx) if self.needs_body else None
        prompt = prompt_estimate(body) if body is not None and is_generation(body) else None
        for rule in self.rules:
            value = rule.key(ctx)
            if value is None:
                continue
            for spec in rule.requests:
                buckets.append(spec.bucket(value))
                specs.append(spec)
                costs.append(rule.cost)
            if prompt is not None and body is not None:
                reservation = prompt + completion_cap(body, rule.default_max_tokens)
                for spec in rule.tokens:
                    buckets.append(spec.bucket(value))
                    specs.append(spec)
                    costs.append(reservation)
        if not buckets:
            return None
        try:
            verdict, limiter = await self.limiter.acquire(buckets, costs)
        except StorageError:
            return Overloaded("rate limits cannot be checked right now; try again", code="storage_unavailable",
                              retry_after=1)
        if not verdict.allowed:
            return self._refusal(specs, costs, verdict)
        headers = ctx.response_headers
        headers.append((b"ratelimit-policy", self._policy_field(specs)))
        headers.append((b"ratelimit", ", ".join(
            spec.limit_item(state.remaining, state.full) for spec, state in zip(specs, verdict.states, strict=True)
        ).encode("latin-1")))
        token_slots = [i for i, spec in enumerate(specs) if spec.tokens]
        if token_slots:
            ctx.after(TokenSettlement(limiter, [buckets[i] for i in token_slots], [costs[i] for i in token_slots]))
        return None

    def _policy_field(self, specs: list[BucketSpec]) -> bytes:
        key = tuple(specs)
        field = self._policies.get(key)
        if field is None:
            field = ", ".join(spec.policy_item for spec in specs).encode("latin-1")
            if len(self._policies) < 256:
                self._policies[key] = field
        return field

    def _refusal(self, specs: list[BucketSpec], costs: list[int], verdict: Verdict) -> RateLimited:
        refused = [(spec, cost, state) for spec, cost, state in zip(specs, costs, verdict.states, strict=True)
                   if state.wait > 0] or [(specs[0], costs[0], verdict.states[0])]
        headers = [("RateLimit-Policy", self._policy_field(specs).decode("latin-1")),
                   ("RateLimit", ", ".join(spec.limit_item(0, state.wait) for spec, _, state in refused))]
        for spec, cost, _ in refused:
            if spec.tokens and cost > spec.capacity:
                return RateLimited(f'the call may use up to {cost} tokens, more than the quota "{spec.policy}" '
                                   f"holds ({spec.capacity})", code="token_request_too_large", headers=headers)
        spec = refused[0][0]
        retry_after = verdict.retry_after
        seconds = max(1, math.ceil(retry_after))
        if spec.tokens:
            return RateLimited(f'token quota "{spec.policy}" is used up; try again in {seconds} s',
                               code="token_quota_exceeded", retry_after=retry_after, headers=headers)
        return RateLimited(f'rate limit "{spec.policy}" is exceeded; try again in {seconds} s',
                           code="rate_limited", retry_after=retry_after, headers=headers)


def _config_error(config: Config, index: int, setting: str, message: str) -> ConfigError:
    return config.error(message, "rate_limits", index, setting)


def _rules(config: Config) -> tuple[list[Rule], list[Rule]]:
    """The rules of the pre-auth stage and of the quota stage."""
    pre_auth: list[Rule] = []
    quota: list[Rule] = []
    names: set[str] = set()
    for index, entry in enumerate(config.rate_limits):
        rule = _rule(config, index, entry, names)
        if entry.key == "ip" and rule.requests:
            pre_auth.append(dataclasses.replace(rule, tokens=()))
            rule = dataclasses.replace(rule, requests=())
        if rule.requests or rule.tokens:
            quota.append(rule)
    return pre_auth, quota


def _rule(config: Config, index: int, entry: RateLimitConfig, names: set[str]) -> Rule:
    try:
        key = key_function(entry.key)
    except ValueError as exc:
        raise _config_error(config, index, "key", str(exc)) from None
    if entry.limit is None and entry.tokens is None:
        raise _config_error(config, index, "limit", "an entry needs a request `limit`, a `tokens` quota, or both")
    for setting, value, least in (("burst", entry.burst, 0), ("cost", entry.cost, 1),
                                  ("default_max_tokens", entry.default_max_tokens, 0)):
        if value < least:
            raise _config_error(config, index, setting, f"expected an integer of at least {least}, got {value}")
    name = entry.name if entry.name is not None else default_name(entry.key)
    if not valid_name(name):
        raise _config_error(config, index, "name", 'expected 1 to 64 letters, digits or "_.-"')
    if name in names:
        if entry.name is not None:
            raise _config_error(config, index, "name", f"another entry is already named {name!r}")
        name = f"{name}-{index + 1}"
    names.add(name)
    try:
        requests = bucket_specs(name, entry.limit, burst=entry.burst)
    except ValueError as exc:
        raise _config_error(config, index, "limit", str(exc)) from None
    try:
        tokens = bucket_specs(name, entry.tokens, tokens=True)
    except ValueError as exc:
        raise _config_error(config, index, "tokens", str(exc)) from None
    if any(entry.cost > spec.capacity for spec in requests):
        raise _config_error(config, index, "cost", "one call would cost more than the limit and burst allow")
    return Rule(name, entry.key, key, requests, tokens, entry.cost, entry.default_max_tokens)


def build(config: Config, services: Services) -> list[Check]:
    """The rate-limit checks of ``[[rate_limits]]``: one at pre-auth (``ip``), one at quota (the rest)."""
    pre_auth, quota = _rules(config)
    if not pre_auth and not quota:
        return []
    try:
        shared = open_limiter(config.storage.url)
    except ValueError as exc:
        raise config.error(str(exc), "storage", "url") from None
    fallback = MemoryLimiter() if config.storage.on_error == "local-fallback" else None
    limiter = FailoverLimiter(shared, fallback)
    checks: list[Check] = []
    if pre_auth:
        checks.append(RateLimitCheck("rate-limit-ip", "pre-auth", pre_auth, limiter, owns_limiter=not quota))
    if quota:
        checks.append(RateLimitCheck("rate-limit", "quota", quota, limiter))
    return checks
