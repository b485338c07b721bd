"""``RateLimit-Policy`` and ``RateLimit`` fields (draft-ietf-httpapi-ratelimit-headers-11).

Each bucket is one quota policy, named after its entry (``"ip"``; ``"ip-60s"`` when the entry has
several windows; ``"subject-tokens"`` for a token quota):

    RateLimit-Policy: "ip";q=20;w=60;dsguard-burst=5
    RateLimit: "ip";r=24;t=15

``q``/``w`` are the entry's limit and window; ``r`` is what is left now; ``t`` is the seconds
until the bucket is full again (buckets refill evenly, so more becomes available before then).
On a 429, ``RateLimit`` names only the refused policies, with ``r=0`` and ``t`` the wait, so it
never points past ``Retry-After``. The draft registers no quota unit for LLM tokens, so token
policies carry the vendor parameter ``dsguard-unit="tokens"`` rather than an unregistered ``qu``.
No partition key (``pk``) is sent: it would echo the caller's address or identity.
"""

from __future__ import annotations

import math


def sf_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def policy_item(name: str, quota: int, window: int, *, burst: int = 0, tokens: bool = False) -> str:
    item = f"{sf_string(name)};q={quota};w={window}"
    if burst:
        item += f";dsguard-burst={burst}"
    if tokens:
        item += ';dsguard-unit="tokens"'
    return item


def whole_seconds(seconds: float) -> int:
    return max(0, math.ceil(seconds - 1e-6))
