"""Per-caller behaviour features over a sliding window.

One call becomes an :class:`Event` once its response is sent (what it was denied, what it cost,
which route, model and address it used); a store keeps each caller's events in a sliding window
and hands back :class:`WindowStats`, which :func:`vector` turns into the feature values scored:

- ``rate``: calls per minute (log scale), over the caller's active span within the window (at
  least one slot, so a fresh burst is not diluted by a window it has not lived through);
- ``denial_ratio``: denied calls (a guard denial other than the anomaly check's own, or a 401,
  403 or 429 from the app) over ``calls + 4``, so that one denial among few calls counts little;
- ``tokens``: LLM tokens per prompt-carrying call (log scale): the usage the app reported in
  ``ctx.attributes["llm_usage"]``, else prompt estimate plus requested ``max_tokens`` (calls that
  failed without reporting usage count 0);
- ``max_tokens``: mean completion budget asked for (log scale) by the calls whose body sets
  ``max_tokens``, ``max_completion_tokens`` or ``max_output_tokens``;
- ``prompt_length``: mean prompt size in estimated tokens (log scale), length only, never text;
- ``routes``, ``models``, ``ips``: distinct paths, models and client addresses (log scale);
- ``time_of_day``: surprise (``-ln p``) of the call's UTC hour under past activity, see
  :func:`dsguard.anomaly.baseline.hour_surprise`;
- ``regularity``: coefficient of variation of the gaps between the caller's calls (log scale,
  exponentially weighted over about the last 16 gaps). People are bursty (near or above 1);
  scripts that pace themselves are not (near 0): low is anomalous.

A feature that cannot be measured yet (no prompt seen, fewer than :data:`MIN_GAPS` gaps) is
``None`` and left out of the score.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from ..context import RequestContext, ResponseInfo
from ..limits.tokens import COMPLETION_FIELDS, completion_cap, is_generation, llm_body, prompt_estimate, reported_usage

DENIAL_STATUSES = frozenset({401, 403, 429})
DENIAL_PRIOR = 4
MIN_GAPS = 8
GAP_ALPHA = 1 / 8
CV_OFFSET = 0.05
MAX_LABEL = 200


@dataclasses.dataclass(frozen=True, slots=True)
class Feature:
    """How one feature is scored: the least spread its baseline is given (in the feature's own units),
    which direction is anomalous, the most it may add to a score, and its value when unmeasured."""

    name: str
    floor: float
    direction: int = 1
    cap: float = 12.0
    neutral: float = 0.0


FEATURES = (
    Feature("rate", floor=0.3, cap=6.0),
    Feature("denial_ratio", floor=0.08),
    Feature("tokens", floor=0.5),
    Feature("max_tokens", floor=0.5),
    Feature("prompt_length", floor=0.3),
    Feature("routes", floor=0.35),
    Feature("models", floor=0.35),
    Feature("ips", floor=0.35),
    Feature("time_of_day", floor=0.5, cap=3.0, neutral=math.log(24)),
    Feature("regularity", floor=0.35, direction=-1, neutral=math.log(1 + CV_OFFSET)),
)
FEATURE_NAMES = tuple(f.name for f in FEATURES)
BY_NAME: Mapping[str, Feature] = {f.name: f for f in FEATURES}
FLOORS: Mapping[str, float] = {f.name: f.floor for f in FEATURES}

Vector = dict[str, float | None]
Values = Mapping[str, float | None]


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """What one finished call contributes to its caller's window."""

    route: str
    model: str | None
    ip: str | None
    denied: bool
    tokens: int
    prompt_tokens: int | None
    max_tokens: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class WindowStats:
    """A caller's window: sums over its slots, distinct counts, and its gap statistics."""

    requests: int
    denied: int
    tokens: float
    prompts: int
    prompt_tokens: float
    budgets: int
    max_tokens: float
    routes: int
    models: int
    ips: int
    since: float
    gaps: int
    gap_mean: float
    gap_var: float


def caller_key(ctx: RequestContext) -> str | None:
    """Whose behaviour a call belongs to: the verified subject, else the client address."""
    if ctx.identity is not None:
        return "sub:" + _label(ctx.identity.subject)
    if ctx.client_ip:
        return "ip:" + ctx.client_ip
    return None


def ip_key(ctx: RequestContext) -> str | None:
    return "ip:" + ctx.client_ip if ctx.client_ip else None


def _label(text: str) -> str:
    return text if len(text) <= MAX_LABEL else text[:MAX_LABEL]


def observe(ctx: RequestContext, response: ResponseInfo, own_checks: frozenset[str]) -> Event:
    """The event of a finished call; denials by ``own_checks`` (the anomaly checks) are not counted."""
    denied_by = response.denied_by
    status = response.status
    denied = denied_by not in own_checks if denied_by is not None else status in DENIAL_STATUSES
    body = llm_body(ctx)
    model = body.get("model") if body is not None else None
    generation = body is not None and is_generation(body)
    prompt = prompt_estimate(body) if body is not None and generation else None
    asked = completion_cap(body, 0) if body is not None and any(f in body for f in COMPLETION_FIELDS) else None
    tokens = reported_usage(ctx)
    if tokens is None:
        failed = status is None or status >= 400
        tokens = 0 if failed or prompt is None else prompt + (asked or 0)
    return Event(route=_label(ctx.path), model=_label(model) if isinstance(model, str) else None,
                 ip=ctx.client_ip, denied=denied, tokens=tokens, prompt_tokens=prompt, max_tokens=asked)


def next_gap_stats(gaps: int, mean: float, var: float, gap: float) -> tuple[int, float, float]:
    """Gap count, mean and variance after one more gap (exponentially weighted, alpha 1/8)."""
    if gaps == 0:
        return 1, gap, 0.0
    alpha = max(1 / (gaps + 1), GAP_ALPHA)
    delta = gap - mean
    return gaps + 1, mean + alpha * delta, (1 - alpha) * (var + alpha * delta * delta)


def vector(stats: WindowStats, now: float, *, window: float, min_span: float,
           time_of_day: float | None) -> Vector:
    """The feature values of a window (see the module documentation)."""
    minutes = min(max(now - stats.since, min_span), window) / 60
    requests = stats.requests
    regularity = None
    if stats.gaps >= MIN_GAPS:
        cv = math.sqrt(max(stats.gap_var, 0.0)) / stats.gap_mean if stats.gap_mean > 0 else 0.0
        regularity = math.log(cv + CV_OFFSET)
    return {
        "rate": math.log1p(requests / minutes),
        "denial_ratio": stats.denied / (requests + DENIAL_PRIOR),
        "tokens": math.log1p(stats.tokens / stats.prompts) if stats.prompts else None,
        "max_tokens": math.log1p(stats.max_tokens / stats.budgets) if stats.budgets else None,
        "prompt_length": math.log1p(stats.prompt_tokens / stats.prompts) if stats.prompts else None,
        "routes": math.log1p(stats.routes),
        "models": math.log1p(stats.models),
        "ips": math.log1p(stats.ips),
        "time_of_day": time_of_day,
        "regularity": regularity,
    }


def hour_of(now: float) -> int:
    """The UTC hour of an epoch time."""
    return int(now // 3600) % 24
