"""`dsguard bench`: how fast this machine serves a model bundle, for sizing replicas and autoscaling."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import click

from ._cli import operator_errors

DTYPES = ("fp32", "fp16", "int8", "q4", "q4f16")
PROMPT = "Explain in a few sentences how a token bucket rate limiter works, and when it refuses a call."


def _streams(_ctx: click.Context, _param: click.Parameter, text: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers like 1,4, got {text!r}") from None
    if not counts or counts[0] < 1 or counts[-1] > 64:
        raise click.BadParameter("each number of streams must be between 1 and 64")
    return counts


def _decode_rate(tokens: int, first: float | None, last: float | None) -> float | None:
    """Tokens/s of one stream after its first token, or None when it made too few to tell."""
    if first is None or last is None or last <= first or tokens < 2:
        return None
    return (tokens - 1) / (last - first)


@click.command("bench")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Take the model, dtype and providers from this file's [runner] section.")
@click.option("--model", default="bundled:tiny-deepseek", show_default=True,
              help='"bundled:NAME" or a model bundle directory (ignored with --config).')
@click.option("--dtype", type=click.Choice(DTYPES), default="q4", show_default=True,
              help="Which ONNX file of the bundle (ignored with --config).")
@click.option("--streams", "counts", default="1,4", show_default=True, callback=_streams,
              help="Concurrent streams to measure, comma-separated.")
@click.option("--tokens", type=click.IntRange(1, 4096), default=128, show_default=True,
              help="Tokens generated per stream (fewer if the model ends its answer).")
@click.option("--repeats", type=click.IntRange(1, 50), default=3, show_default=True, help="Runs per row; median.")
def bench(config_path: Path | None, model: str, dtype: str, counts: list[int], tokens: int, repeats: int) -> None:
    """Time to first token and decode tokens/s of the local runner at each number of concurrent streams.

    Greedy decoding of one fixed prompt through the same Engine `dsguard serve` uses; the
    aggregate is every stream's tokens over the time from submission to the last token.
    benchmarks/runner.py compares the same Engine with onnxruntime-genai.
    """
    import dataclasses

    from .config import RunnerConfig, load_config
    from .runner.engine import Engine, GenerationRequest, SamplingParams

    with operator_errors():
        runner = RunnerConfig(model=model, dtype=dtype)  # type: ignore[arg-type]
        if config_path is not None:
            configured = load_config(config_path).runner
            if configured is None:
                raise click.ClickException(f"{config_path}: has no [runner] section")
            runner = configured
        runner = dataclasses.replace(runner, max_concurrency=counts[-1], max_queue=counts[-1])
        engine = Engine.open(runner)
    try:
        prompt = tuple(engine.tokenizer.encode_chat([{"role": "user", "content": PROMPT}]))
        request = GenerationRequest(prompt, max_tokens=tokens, sampling=SamplingParams(temperature=0.0))
        engine.submit(dataclasses.replace(request, max_tokens=8)).collect(timeout=120)  # warm-up
        click.echo(f"{engine.model_id} ({runner.dtype}) on {engine.provider}: {len(prompt)} prompt tokens, "
                   f"up to {tokens} generated per stream, median of {repeats}")
        click.echo(f"{'streams':>7}  {'ttft ms':>8}  {'tok/s per stream':>16}  {'tok/s aggregate':>15}")
        for count in counts:
            ttft, per_stream, aggregate = [], [], []
            for _ in range(repeats):
                started = time.monotonic()
                generations = [engine.submit(request) for _ in range(count)]
                done = [generation.collect(timeout=600) for generation in generations]
                last = max(g.last_token_at or started for g in generations)
                produced = sum(completion.completion_tokens for completion in done)
                ttft.append(statistics.median((g.first_token_at or started) - started for g in generations))
                rates = [rate for g, c in zip(generations, done, strict=True)
                         if (rate := _decode_rate(c.completion_tokens, g.first_token_at, g.last_token_at))]
                per_stream.append(statistics.median(rates) if rates else 0.0)
                aggregate.append(produced / (last - started) if last > started else 0.0)
            click.echo(f"{count:>7}  {statistics.median(ttft) * 1000:>8.1f}  {statistics.median(per_stream):>16.1f}  "
                       f"{statistics.median(aggregate):>15.1f}")
    finally:
        engine.close()
