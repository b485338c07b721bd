"""The runner's OpenTelemetry metrics: engine load for autoscaling, and GenAI semantic-convention timings.

Instruments come from the meter ``dsguard.runner`` of the given (else the global) meter provider,
so they cost nothing until a provider is configured:

=========================================  =========  ==================================================
instrument                                 kind       value
=========================================  =========  ==================================================
``dsguard.runner.queue_depth``             gauge      requests waiting for a generation slot
``dsguard.runner.running``                 gauge      generations running
``dsguard.runner.tokens_per_second``       gauge      tokens generated per second, recently
``gen_ai.server.time_to_first_token``      histogram  seconds from the request to its first output
``gen_ai.server.time_per_output_token``    histogram  seconds per output token after the first
``gen_ai.server.request.duration``         histogram  seconds from the request to its last output
``gen_ai.client.token.usage``              histogram  tokens per call, ``gen_ai.token.type`` input|output
=========================================  =========  ==================================================

Per-call instruments carry ``gen_ai.operation.name`` (``chat`` or ``text_completion``) and
``gen_ai.request.model``; ``gen_ai.server.request.duration`` carries ``error.type`` for a call
the client abandoned (``cancelled``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from .. import __version__
from .engine import Engine, EngineStats

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)


class RunnerMetrics:
    """Registers the instruments for one engine and records each finished call."""

    def __init__(self, engine: Engine, meter_provider: MeterProvider | None = None) -> None:
        self.engine = engine
        self.model = engine.model_id
        meter = metrics.get_meter("dsguard.runner", __version__, meter_provider=meter_provider)
        self._model_attributes = {"gen_ai.request.model": self.model}
        for name, unit, description, read in (
            ("dsguard.runner.queue_depth", "{request}", "Requests waiting for a generation slot.",
             lambda stats: stats.queue_depth),
            ("dsguard.runner.running", "{request}", "Generations running.", lambda stats: stats.running),
            ("dsguard.runner.tokens_per_second", "{token}/s", "Tokens generated per second, recently.",
             lambda stats: stats.tokens_per_second),
        ):
            meter.create_observable_gauge(name, callbacks=[self._observer(read)], unit=unit, description=description)
        self.time_to_first_token = meter.create_histogram(
            "gen_ai.server.time_to_first_token", unit="s", description="Time to generate the first output.",
            explicit_bucket_boundaries_advisory=TTFT_BUCKETS)
        self.time_per_output_token = meter.create_histogram(
            "gen_ai.server.time_per_output_token", unit="s", description="Time per output token after the first.",
            explicit_bucket_boundaries_advisory=TPOT_BUCKETS)
        self.request_duration = meter.create_histogram(
            "gen_ai.server.request.duration", unit="s", description="Time from the request to its last output.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Input and output tokens per call.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS)

    def _observer(self, read: Callable[[EngineStats], float]) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(read(self.engine.stats()), self._model_attributes)]

        return observe

    def record(self, operation: str, *, duration: float, first_output: float | None, prompt_tokens: int,
               completion_tokens: int, cancelled: bool) -> None:
        """One finished call: seconds to its end and to its first output, and its token counts."""
        attributes = {"gen_ai.operation.name": operation, "gen_ai.request.model": self.model}
        if first_output is not None:
            self.time_to_first_token.record(first_output, attributes)
            if completion_tokens > 1:
                self.time_per_output_token.record((duration - first_output) / (completion_tokens - 1), attributes)
        self.request_duration.record(duration, {**attributes, "error.type": "cancelled"} if cancelled else attributes)
        self.token_usage.record(prompt_tokens, {**attributes, "gen_ai.token.type": "input"})
        self.token_usage.record(completion_tokens, {**attributes, "gen_ai.token.type": "output"})
