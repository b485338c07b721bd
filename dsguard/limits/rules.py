"""``[[rate_limits]]`` entries compiled into rules: a key function and the buckets it feeds."""

from __future__ import annotations

import dataclasses
import re

from limits import RateLimitItem, parse_many

from . import Bucket
from .headers import policy_item, sf_string, whole_seconds
from .keys import KeyFunction

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class BucketSpec:
    """One window of one entry: how its buckets refill, hold, and are advertised (equal only to itself)."""

    policy: str
    prefix: str
    interval: float
    capacity: int
    policy_item: str
    tokens: bool
    limit_prefix: str

    def bucket(self, value: str) -> Bucket:
        return Bucket(self.prefix + value, self.interval, self.capacity)

    def limit_item(self, remaining: int, seconds: float) -> str:
        """This policy's ``RateLimit`` item."""
        return f"{self.limit_prefix}{remaining};t={whole_seconds(seconds)}"


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """One entry: whose calls it counts, and the request and token buckets a call takes from."""

    name: str
    key_spec: str
    key: KeyFunction
    requests: tuple[BucketSpec, ...]
    tokens: tuple[BucketSpec, ...]
    cost: int
    default_max_tokens: int

    @property
    def needs_body(self) -> bool:
        return bool(self.tokens) or self.key_spec == "model"


def bucket_specs(name: str, rate: str | None, *, burst: int = 0, tokens: bool = False) -> tuple[BucketSpec, ...]:
    """The buckets of a rate string such as ``"10/second;600/minute"``; ``ValueError`` for a zero limit."""
    if rate is None:
        return ()
    items: list[RateLimitItem] = parse_many(rate)
    specs = []
    for item in items:
        if item.amount < 1:
            raise ValueError(f"every window needs a limit of at least 1, got {item}")
        window = int(item.get_expiry())
        base = f"{name}-tokens" if tokens else name
        policy = base if len(items) == 1 else f"{base}-{window}s"
        kind = "t" if tokens else "r"
        specs.append(BucketSpec(
            policy=policy, prefix=f"{name}:{kind}{item.amount}/{window}:", interval=window / item.amount,
            capacity=item.amount + burst, tokens=tokens, limit_prefix=f"{sf_string(policy)};r=",
            policy_item=policy_item(policy, item.amount, window, burst=burst, tokens=tokens)))
    return tuple(specs)
