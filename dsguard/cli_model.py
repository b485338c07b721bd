"""`dsguard model make-tiny|quantize|info`: write, quantize and inspect local model bundles."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ._cli import operator_errors

if TYPE_CHECKING:
    from .runner.quantize import DriftReport

QUANTIZED = ("int8", "q4", "q4f16")
SHAPES = ("tiny", "medium")


@click.group("model")
def model_group() -> None:
    """Local model bundles: write the bundled test models, quantize, inspect."""


@contextlib.contextmanager
def _progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def _human(size: int) -> str:
    units = ("B", "KiB", "MiB", "GiB")
    value, unit = float(size), 0
    while value >= 1024 and unit < len(units) - 1:
        value, unit = value / 1024, unit + 1
    return f"{size} B" if unit == 0 else f"{value:.1f} {units[unit]}"


@model_group.command("make-tiny")
@click.option("--output", type=click.Path(path_type=Path, file_okay=False),
              help="Write the bundle here; without it, into the cache used by bundled:<name>.")
@click.option("--shape", type=click.Choice(SHAPES), default="tiny", show_default=True,
              help="tiny: the test model; medium: 2 layers at DeepSeek-R1-Distill-Qwen-1.5B's widths.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights (with --output).")
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(("fp32", "fp16", *QUANTIZED)),
              help="A graph to write; repeatable (default: all).")
def make_tiny(output: Path | None, shape: str, seed: int, dtypes: tuple[str, ...]) -> None:
    """Write a random-weight DeepSeek-R1-Distill-Qwen bundle: tokenizer, chat template, ONNX graphs."""
    from rich.console import Console

    from .runner.tiny import BUNDLED, DTYPES, ensure_bundled, write_bundle

    name = f"{shape}-deepseek"
    chosen = dtypes or DTYPES
    if output is None and seed != 0:
        raise click.UsageError("--seed needs --output: the cached bundle always uses seed 0")
    if output is not None and output.exists() and any(output.iterdir()):
        raise click.ClickException(f"{output}: exists and is not empty; choose another --output or remove it")
    console = Console(stderr=True, log_path=False)
    with operator_errors(), console.status(f"writing {name}") as status:
        def report(message: str) -> None:
            status.update(f"{name}: {message}")
            console.log(message)

        if output is None:
            path = ensure_bundled(name, chosen, progress=report)
        else:
            path = write_bundle(output, BUNDLED[name], seed=seed, dtypes=chosen, progress=report)
    click.echo(str(path))


def _format_reports(reports: Sequence[DriftReport]) -> list[str]:
    baseline = next((report for report in reports if report.dtype == "fp32"), None)
    header = f"{'dtype':<7}{'size':>11}{'max drift':>12}{'mean drift':>12}{'greedy agree':>14}{'decode tok/s':>14}"
    lines = [header + ("     vs fp32" if baseline else "")]
    for report in reports:
        line = (f"{report.dtype:<7}{_human(report.size_bytes):>11}{report.max_abs_drift:>12.4f}"
                f"{report.mean_abs_drift:>12.4f}{report.greedy_agreement:>14.1%}"
                f"{report.decode_tokens_per_second:>14.1f}")
        if baseline:
            line += f"{report.decode_tokens_per_second / baseline.decode_tokens_per_second:>11.2f}x"
        lines.append(line)
    return lines


@model_group.command("quantize")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--dtype", required=True, type=click.Choice(QUANTIZED),
              help="int8: dynamic int8 MatMul; q4: 4-bit MatMulNBits; q4f16: q4 of the fp16 graph.")
@click.option("--block-size", type=int, default=32, show_default=True, help="Weights per 4-bit scale (q4, q4f16).")
@click.option("--steps", type=click.IntRange(min=2), default=16, show_default=True,
              help="Decode steps compared against fp32 after the prefill.")
@click.option("--compare/--no-compare", "run_compare", default=True, show_default=True,
              help="Report logit drift and decode speed against fp32.")
def quantize(bundle: Path, dtype: str, block_size: int, steps: int, run_compare: bool) -> None:
    """Write BUNDLE/onnx/model_<dtype>.onnx, then report its drift and speed against fp32."""
    from .runner.quantize import compare, quantize_bundle

    if str(bundle).startswith("bundled:"):
        raise click.UsageError("quantize a copy of a bundled model: dsguard model make-tiny --output DIR")
    if not bundle.is_dir():
        raise click.ClickException(f"{bundle}: model bundle directory does not exist")
    if block_size < 16 or block_size & (block_size - 1):
        raise click.BadParameter("must be a power of two >= 16", param_hint="--block-size")
    with operator_errors():
        with _progress_bar(f"quantizing to {dtype}") as progress:
            target = quantize_bundle(bundle, dtype, block_size=block_size, progress=progress)
        click.echo(f"wrote {target}")
        if not run_compare:
            return
        dtypes = ["fp32", dtype] if dtype != "q4f16" else ["fp32", "fp16", dtype]
        with _progress_bar("comparing with fp32") as progress:
            reports = compare(bundle, [d for d in dtypes if _has_graph(bundle, d)], steps=steps, progress=progress)
    for line in _format_reports(reports):
        click.echo(line)


def _has_graph(bundle: Path, dtype: str) -> bool:
    from .runner.bundle import model_filename

    return (bundle / "onnx" / model_filename(dtype)).is_file()


@model_group.command("info")
@click.argument("spec", metavar="BUNDLE|bundled:NAME")
def info(spec: str) -> None:
    """Print a bundle's model shape, tokenizer, graphs by dtype and files with their sizes."""
    from .runner.bundle import DTYPES, model_filename, open_bundle
    from .runner.errors import BundleError
    from .runner.quantize import files_bytes
    from .runner.shape import ModelShape
    from .runner.tiny import resolve_model
    from .runner.tokenizer import ChatTokenizer

    with operator_errors():
        directory = resolve_model(spec)
        config_path = directory / "config.json"
        graphs = {dtype: directory / "onnx" / model_filename(dtype) for dtype in DTYPES}
        if not config_path.is_file() and (directory / "genai_config.json").is_file():
            builder = open_bundle(directory, "fp32")  # one graph, named by genai_config.json
            genai = json.loads((directory / "genai_config.json").read_text(encoding="utf-8"))
            config = {"model_type": f"{genai['model'].get('type', '?')} (onnxruntime-genai model builder)"}
            shape, tokenizer, graphs = builder.shape, builder.tokenizer, {"graph": builder.model_path}
        else:
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise BundleError("missing", file=config_path) from None
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise BundleError(f"unreadable JSON: {exc}", file=config_path) from None
            shape = ModelShape.from_config(config, source=str(config_path))
            tokenizer = ChatTokenizer.from_bundle(directory)
    click.echo(f"bundle      {directory}")
    click.echo(f"model       {config.get('model_type', '?')}, {shape.num_hidden_layers} layers, hidden "
               f"{shape.hidden_size}, {shape.num_attention_heads} heads ({shape.num_key_value_heads} key/value) of "
               f"{shape.head_dim}, intermediate {shape.intermediate_size}, {shape.num_parameters() / 1e6:.1f}M "
               "parameters")
    rope = "rotary tables in the graph" if "graph" in graphs else f"rope theta {shape.rope_theta:g}"
    click.echo(f"context     {shape.max_position_embeddings} positions, {rope}")
    eos = ", ".join(str(token) for token in sorted(tokenizer.eos_token_ids))
    click.echo(f"tokenizer   {tokenizer.vocab_size} tokens, bos {tokenizer.bos_token_id}, eos {eos}, model vocab "
               f"{shape.vocab_size}")
    click.echo("dtypes")
    for dtype, path in graphs.items():
        if path.is_file():
            click.echo(f"  {dtype:<7}{_human(files_bytes(path)):>11}  {path.relative_to(directory)}")
    click.echo("files")
    for path in sorted(item for item in directory.rglob("*") if item.is_file() and not item.name.startswith(".")):
        click.echo(f"  {_human(path.stat().st_size):>11}  {path.relative_to(directory)}")


from .cli_crypto import register_model_commands  # noqa: E402

register_model_commands(model_group)
