"""Choosing the next token from logits: greedy, temperature, top-k, top-p and the three penalties.

``repetition_penalty`` (Hugging Face's, multiplicative) covers the prompt's tokens and the generated
ones; ``frequency_penalty`` and ``presence_penalty`` (OpenAI's, additive: ``logit -= frequency * count +
presence * (count > 0)``) cover the generated ones only, as OpenAI and vLLM apply them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

Logits = npt.NDArray[np.floating]

_NUCLEUS_PROBE = 256
MIN_TEMPERATURE = 1e-4
"""Temperatures below this are greedy decoding (dividing logits by less overflows them)."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens; ``temperature == 0`` is greedy decoding."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    def problem(self) -> str | None:
        """What is wrong with these parameters, or None when they are usable."""
        if not np.isfinite(self.temperature) or self.temperature < 0:
            return f"temperature must be a finite number >= 0, got {self.temperature}"
        if not 0 < self.top_p <= 1:
            return f"top_p must be in (0, 1], got {self.top_p}"
        if self.top_k < 0:
            return f"top_k must be >= 0, got {self.top_k}"
        if not np.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            return f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty}"
        if self.seed is not None and self.seed < 0:
            return f"seed must be >= 0, got {self.seed}"
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not np.isfinite(value) or not -2 <= value <= 2:
                return f"{name} must be a number from -2 to 2, got {value}"
        return None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def penalized(self) -> bool:
        """Some penalty changes the logits (the choice then depends on the tokens so far)."""
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


class Sampler:
    """Picks tokens for one sequence, with its own random generator (reproducible when seeded)."""

    def __init__(self, params: SamplingParams, prompt_ids: Iterable[int] = ()) -> None:
        self.params = params
        self._rng = np.random.default_rng(params.seed)
        self._penalized = params.penalized
        self._repeating = params.repetition_penalty != 1.0
        self._seen: set[int] = set(prompt_ids) if self._repeating else set()
        self._seen_index = np.fromiter(self._seen, dtype=np.int64)
        self._counting = params.frequency_penalty != 0.0 or params.presence_penalty != 0.0
        self._counts: dict[int, int] = {}

    def __call__(self, logits: Logits) -> int:
        """The next token for one row of logits (shape ``[vocab]``); the row is not modified."""
        params = self.params
        if self._penalized:
            logits = self._penalize(logits)
        token = int(logits.argmax()) if params.greedy else self._sample(logits)
        if self._repeating and token not in self._seen:
            self._seen.add(token)
            self._seen_index = np.append(self._seen_index, token)
        if self._counting:
            self._counts[token] = self._counts.get(token, 0) + 1
        return token

    def _penalize(self, logits: Logits) -> Logits:
        penalized = np.array(logits, dtype=np.float32)
        index = self._seen_index
        params = self.params
        if index.size:
            picked = penalized[index]
            penalty = params.repetition_penalty
            with np.errstate(all="ignore"):
                penalized[index] = np.where(picked > 0, picked / penalty, picked * penalty)
        if self._counts:
            tokens = np.fromiter(self._counts, dtype=np.int64, count=len(self._counts))
            counts = np.fromiter(self._counts.values(), dtype=np.float32, count=len(self._counts))
            penalized[tokens] -= np.float32(params.frequency_penalty) * counts + np.float32(params.presence_penalty)
        return penalized

    def _sample(self, logits: Logits) -> int:
        params = self.params
        with np.errstate(all="ignore"):
            scaled = logits.astype(np.float64) / params.temperature
            candidates = _top_k(scaled, params.top_k) if 0 < params.top_k < scaled.size else None
            values = scaled if candidates is None else scaled[candidates]
            probs = np.exp(values - values.max())
            probs /= probs.sum()
        if not np.isfinite(probs).all():  # logits scaled or penalized beyond float range: fall back to greedy
            return int(logits.argmax())
        if params.top_p < 1.0:
            kept = _nucleus(probs, params.top_p)
            candidates = kept if candidates is None else candidates[kept]
            probs = probs[kept]
            probs /= probs.sum()
        cumulative = np.cumsum(probs)
        choice = int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], side="right"))
        choice = min(choice, probs.size - 1)
        return int(candidates[choice]) if candidates is not None else choice


def _top_k(scores: npt.NDArray[np.float64], k: int) -> npt.NDArray[np.intp]:
    """Indices of the k highest scores, highest first (ties broken by lower index)."""
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.lexsort((part, -scores[part]))]


def _nucleus(probs: npt.NDArray[np.float64], top_p: float) -> npt.NDArray[np.intp]:
    """Indices (into ``probs``) of the smallest highest-probability set whose mass reaches ``top_p``."""
    order: npt.NDArray[np.intp]
    if probs.size > _NUCLEUS_PROBE:
        probe = _top_k(probs, _NUCLEUS_PROBE)
        order = probe if probs[probe].sum() >= top_p else np.argsort(-probs, kind="stable")
    else:
        order = np.argsort(-probs, kind="stable")
    cumulative = np.cumsum(probs[order])
    count = int(np.searchsorted(cumulative, top_p, side="left")) + 1
    return order[: min(count, order.size)]
