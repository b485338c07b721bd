"""The generation engine: bounded admission and one scheduler thread doing continuous batching.

At most ``max_concurrency`` sequences decode at once and at most ``max_queue`` wait; memory is bounded
by these and the context length. A new sequence is prefilled alone, in chunks taken between the decode
steps of the running batch (a long prompt delays those by one chunk at a time, not by the whole prompt),
then joins the batch, whose rows keep their own lengths (fused graphs) or are left-padded to the longest
(graphs as exported); finished or cancelled rows leave it at once. Small models may also have a
two-thread session, used for the batch sizes it measured faster on (:mod:`dsguard.runner.threadplan`).
Graphs that quantize activations per call (dynamic int8) are not batch-invariant: their sequences
decode one at a time per step, in turn, so one request can never change another's output.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dsguard.config import RunnerConfig
from dsguard.errors import DSGuardError
from dsguard.runner.batch import Batch
from dsguard.runner.bundle import open_bundle
from dsguard.runner.generation import Completion, Generation, Wakes
from dsguard.runner.kvcache import KVCache
from dsguard.runner.sampling import Sampler, SamplingParams
from dsguard.runner.session import PREFILL_CHUNK, DecoderSession, available_cores
from dsguard.runner.text import Delta, TextAssembler
from dsguard.runner.threadplan import ThreadPlan, wide_session
from dsguard.runner.tiny import resolve_model
from dsguard.runner.tokenizer import ChatTokenizer

__all__ = ["Completion", "Delta", "Engine", "EngineClosed", "EngineOverloaded", "EngineStats", "Generation",
           "GenerationRequest", "InvalidGenerationRequest", "PromptTooLong", "SamplingParams"]

logger = logging.getLogger("dsguard.runner")

HAND_OVER = 0.002
"""Seconds the scheduler waits for a waiting reader to take a sequence's first token (time to first token)."""
RATE_WINDOW = 10.0
"""Seconds of recent steps that ``tokens_per_second`` averages over."""


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """What to generate: prompt token ids, a token budget, sampling, stop strings, the reasoning split."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    sampling: SamplingParams = SamplingParams()
    stop: tuple[str, ...] = ()
    reasoning: bool = True


class EngineOverloaded(DSGuardError):
    """The queue is full; ``retry_after`` (seconds, at least 1) estimates when a place frees up."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidGenerationRequest(DSGuardError):
    """A request the engine cannot run as given (the API answers 400)."""


class PromptTooLong(InvalidGenerationRequest):
    """The prompt plus ``max_tokens`` do not fit the model's context."""


class EngineClosed(DSGuardError):
    """The engine was closed (or its scheduler failed) and takes no more requests."""


@dataclasses.dataclass(frozen=True)
class EngineStats:
    """Load and throughput, for autoscaling and metrics."""

    queue_depth: int
    running: int
    completed: int
    generated_tokens: int
    tokens_per_second: float
    batching: bool
    provider: str


@dataclasses.dataclass(eq=False)
class _Sequence:
    request: GenerationRequest
    generation: Generation
    sampler: Sampler
    position: int = 0
    generated: int = 0
    prefill: Iterator[tuple[npt.NDArray[Any], KVCache] | None] | None = None
    prefilled: int = 0


def _plain_greedy(sequences: Sequence[_Sequence]) -> bool:
    """Every row takes the argmax of its logits as is: one vectorized argmax serves the batch."""
    return all(s.sampler.params.greedy and not s.sampler.params.penalized for s in sequences)


class Engine:
    """Runs generations on one decoder session; ``submit`` is thread-safe, results stream per request."""

    def __init__(self, session: DecoderSession, tokenizer: ChatTokenizer, *, model_id: str, max_concurrency: int = 4,
                 max_queue: int = 64, batching: bool | None = None, plan: ThreadPlan | None = None,
                 sampling_defaults: SamplingParams | None = None) -> None:
        if max_concurrency < 1 or max_queue < 0:
            raise ValueError("max_concurrency must be >= 1 and max_queue >= 0")
        self.session = session
        self.plan = plan
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.sampling_defaults = sampling_defaults or SamplingParams()
        """What a request's missing sampling fields default to (the API reads it)."""
        self.provider = session.provider
        self.context_length = session.bundle.context_length
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.batching = not session.bundle.dynamic_quantization if batching is None else batching
        if not self.batching:
            logger.info("%s quantizes activations per call (dynamic int8): requests are decoded one at a time "
                        "per step, never batched", session.bundle.model_path.name)
        self._eos = session.bundle.eos_token_ids
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._batches: list[Batch[_Sequence]] = []
        self._prefilling: collections.deque[_Sequence] = collections.deque()
        self._running = 0
        self._completed = 0
        self._generated = 0
        self._rate_buckets: collections.deque[list[int]] = collections.deque(maxlen=int(RATE_WINDOW) + 2)
        self._started = time.monotonic()
        self._closed = False
        self._cancels = 0
        self._wakes = Wakes()
        self._thread = threading.Thread(target=self._serve, name="dsguard-runner", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, config: RunnerConfig, *, threads: int | None = None) -> Engine:
        """Resolves ``config.model`` (building the bundled model on first use) and loads its ``dtype`` graph."""
        directory = resolve_model(config.model, dtypes=(config.dtype,))
        bundle = open_bundle(directory, config.dtype, policy=config)
        session = DecoderSession(bundle, config.providers, threads)
        wide = wide_session(session, available_cores()) if threads is None else None
        model_id = config.model.removeprefix("bundled:") if config.model.startswith("bundled:") else Path(
            config.model).name
        defaults = bundle.sampling_defaults if config.sampling_defaults == "model" else SamplingParams()
        return cls(session, bundle.tokenizer, model_id=model_id, max_concurrency=config.max_concurrency,
                   max_queue=config.max_queue, plan=ThreadPlan(session, wide) if wide is not None else None,
                   sampling_defaults=defaults)

    def submit(self, request: GenerationRequest) -> Generation:
        """Queues a request; raises EngineOverloaded when the queue is full, PromptTooLong when it cannot fit."""
        self._check(request)
        generation = Generation(len(request.prompt_ids), TextAssembler(
            self.tokenizer.detokenizer(), stop=request.stop, reasoning=request.reasoning), self._cancelled)
        sequence = _Sequence(request, generation, Sampler(request.sampling, request.prompt_ids))
        with self._lock:
            if self._closed:
                raise EngineClosed("the engine is closed")
            if self._running + len(self._waiting) >= self.max_concurrency + self.max_queue:
                raise EngineOverloaded(f"{self._running} generations running and {len(self._waiting)} waiting: "
                                       "the queue is full", retry_after=self._retry_after())
            self._waiting.append(sequence)
            self._work.notify()
        return generation

    def generate(self, request: GenerationRequest, timeout: float | None = None) -> Completion:
        """Submits and waits for the whole generation (for scripts and tests; the API streams)."""
        return self.submit(request).collect(timeout)

    def stats(self) -> EngineStats:
        """Queue depth, running sequences, totals and the recent decode rate."""
        with self._lock:
            return EngineStats(queue_depth=len(self._waiting), running=self._running, completed=self._completed,
                               generated_tokens=self._generated, tokens_per_second=self._rate(),
                               batching=self.batching, provider=self.provider)

    def close(self) -> None:
        """Stops the scheduler; generations still waiting or running end as "cancelled"."""
        with self._lock:
            self._closed = True
            self._work.notify()
        self._thread.join()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, request: GenerationRequest) -> None:
        prompt, vocab = request.prompt_ids, self.session.vocab_size
        if not prompt:
            raise InvalidGenerationRequest("the prompt has no tokens")
        if request.max_tokens < 1:
            raise InvalidGenerationRequest(f"max_tokens must be >= 1, got {request.max_tokens}")
        if len(prompt) + request.max_tokens > self.context_length:
            raise PromptTooLong(f"{len(prompt)} prompt tokens + max_tokens {request.max_tokens} exceed the "
                                f"context length of {self.context_length} tokens")
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise InvalidGenerationRequest(f"prompt token ids must be in [0, {vocab})")
        problem = request.sampling.problem()
        if problem:
            raise InvalidGenerationRequest(problem)

    def _rate(self) -> float:
        """Tokens per second over the last RATE_WINDOW seconds (whole seconds, the current one included)."""
        now = time.monotonic()
        first = max(now - RATE_WINDOW, self._started)
        tokens = sum(count for second, count in list(self._rate_buckets) if second + 1 > first)
        return tokens / max(now - first, 1.0)

    def _retry_after(self) -> int:
        rate = self._rate()
        running = [s for batch in self._batches for s in batch.rows]
        if rate <= 0 or not running:
            return 1
        soonest = min(s.request.max_tokens - s.generated for s in running)
        return max(1, math.ceil(soonest * len(running) / rate))

    def _cancelled(self, generation: Generation) -> None:
        self._cancels += 1
        with self._lock:
            queued = next((s for s in self._waiting if s.generation is generation), None)
            if queued is None:
                return
            self._waiting.remove(queued)
            self._completed += 1
        generation.end("cancelled")

    # The scheduler thread.

    def _serve(self) -> None:
        try:
            while True:
                if (self._waiting or not (self._batches or self._prefilling) or self._closed) and not self._admit():
                    return
                if self._prefilling:
                    self._prefill()
                batches = self._batches
                if len(batches) == 1:
                    self._step(batches[0])
                else:
                    for batch in list(batches):
                        self._step(batch)
        except Exception:
            logger.exception("the runner's scheduler failed; ending every generation")
        finally:
            with self._lock:
                self._closed = True
                leftovers = [*self._waiting, *self._prefilling, *(s for batch in self._batches for s in batch.rows)]
                self._waiting.clear()
                self._prefilling.clear()
                self._batches.clear()
                self._running = 0
            for sequence in leftovers:
                sequence.generation.end("cancelled")
            self._wakes.close()

    def _admit(self) -> bool:
        """Waits for work, then queues what fits for prefilling; False once the engine is closed."""
        with self._lock:
            while not self._closed and not self._waiting and not self._batches and not self._prefilling:
                if self.plan is not None:
                    self.plan.pause()
                self._work.wait()
            if self._closed:
                return False
            while self._waiting and self._running < self.max_concurrency:
                self._prefilling.append(self._waiting.popleft())
                self._running += 1
        return True

    def _prefill(self) -> None:
        """Prefills queued prompts, oldest first, one chunk after another until ``PREFILL_CHUNK`` prompt tokens
        were run: a long prompt then only delays the running sequences' next step by one chunk's time."""
        budget = PREFILL_CHUNK
        while self._prefilling and budget > 0:
            sequence = self._prefilling[0]
            if sequence.generation.cancelled:
                self._prefilling.popleft()
                self._finish(sequence, "cancelled")
                continue
            prompt = sequence.request.prompt_ids
            if sequence.prefill is None:
                sequence.prefill = self.session.prefill_chunks(prompt)
            budget -= min(PREFILL_CHUNK, len(prompt) - sequence.prefilled)
            sequence.prefilled += PREFILL_CHUNK
            done = next(sequence.prefill)
            if done is not None:
                self._prefilling.popleft()
                sequence.prefill = None
                self._start(sequence, *done)
        if self.plan is not None:
            self.plan.pause()

    def _start(self, sequence: _Sequence, logits: npt.NDArray[Any], cache: KVCache) -> None:
        """Samples a prefilled sequence's first token and adds it to a batch (or ends it, if that token ends it)."""
        generation = sequence.generation
        sequence.position = len(sequence.request.prompt_ids)
        token = sequence.sampler(logits)
        if not self._advance(sequence, token, self._record(1)):
            return
        self._wakes.send(time.monotonic(), force=True)
        generation.hand_over(HAND_OVER)
        single = Batch(cache, [sequence], [token], [sequence.position])
        single.greedy = _plain_greedy(single.rows)
        if not self.batching or not self._batches:
            self._batches.append(single)
            return
        batch = self._batches[0]
        batch.join(self.session, single)
        batch.greedy = batch.greedy and single.greedy

    def _step(self, batch: Batch[_Sequence]) -> None:
        """One decode step for every row of ``batch``; rows that end leave it."""
        if self._cancels != batch.cancels_seen:
            batch.cancels_seen = self._cancels
            self._keep(batch, [i for i, s in enumerate(batch.rows) if not self._dropped(s)])
            if not batch.rows:
                return
        rows, plan = len(batch.rows), self.plan
        session = plan.pick(rows, time.perf_counter()) if plan is not None else self.session
        logits, batch.cache = session.decode(batch.cache, batch.tokens, batch.positions, batch.padding)
        batch.positions += 1
        sequences = batch.rows
        if batch.greedy:
            chosen: Sequence[int] | npt.NDArray[np.int64] = logits.argmax(axis=1)
        else:
            chosen = [s.sampler(logits[i]) for i, s in enumerate(sequences)]
        now = self._record(len(sequences))
        keep = []
        for index, sequence in enumerate(sequences):
            token = int(chosen[index])
            if self._advance(sequence, token, now):
                batch.tokens[index] = token
                keep.append(index)
        self._wakes.send(now)
        if len(keep) < len(sequences):
            self._keep(batch, keep)

    def _advance(self, sequence: _Sequence, token: int, now: float) -> bool:
        """Hands a new token to the generation; False when the sequence ends with it."""
        sequence.generated += 1
        generation = sequence.generation
        if token in self._eos:
            self._wakes.add(generation.push(token, now, text=False))
            self._finish(sequence, "stop")
            return False
        self._wakes.add(generation.push(token, now))
        if sequence.generated >= sequence.request.max_tokens:
            self._finish(sequence, "length")
            return False
        if generation.cancelled:
            self._finish(sequence, "cancelled")
            return False
        return True

    def _dropped(self, sequence: _Sequence) -> bool:
        if sequence.generation.cancelled:
            self._finish(sequence, "cancelled")
            return True
        return False

    def _keep(self, batch: Batch[_Sequence], rows: list[int]) -> None:
        """Compacts the batch to ``rows``; an emptied batch is dropped."""
        batch.keep(self.session, rows)
        if not rows:
            self._batches.remove(batch)
        batch.greedy = _plain_greedy(batch.rows)

    def _finish(self, sequence: _Sequence, reason: str) -> None:
        with self._lock:
            self._running -= 1
            self._completed += 1
        sequence.generation.end(reason)
        self._wakes.send(time.monotonic(), force=True)

    def _record(self, tokens: int) -> float:
        """Counts generated tokens for the stats; returns the time."""
        now = time.monotonic()
        second = int(now)
        self._generated += tokens
        buckets = self._rate_buckets
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += tokens
        else:
            buckets.append([second, tokens])
        return now
