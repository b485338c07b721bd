"""The bundled random-weight models: written by our own code, cached on first use, named ``bundled:<name>``.

A bundle has the layout of onnx-community's DeepSeek-R1-Distill exports: ``config.json``,
``generation_config.json``, the tokenizer files and ``onnx/model[_<dtype>].onnx`` with external data.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dsguard.runner.errors import BundleError
from dsguard.runner.graph import save_decoder
from dsguard.runner.shape import MEDIUM, TINY, ModelShape
from dsguard.runner.tokenizer import BOS, EOS, train_tokenizer, write_tokenizer_files

FORMAT_VERSION = "v2"
"""Bumped whenever the files written change, so a cache of an older format is not reused."""

BUNDLED: dict[str, ModelShape] = {"tiny-deepseek": TINY, "medium-deepseek": MEDIUM}
DTYPES = ("fp32", "fp16", "int8", "q4", "q4f16")
MARKER = ".dsguard-bundle.json"
"""Written last into a cached bundle: lists its files and sizes; a bundle without it is rebuilt."""

Progress = Callable[[str], None]


class RandomWeights(Mapping[str, NDArray[np.float32]]):
    """Deterministic random weights, each drawn on access from its own stream of ``(seed, name)``.

    Scales keep activations near unit size through the layers and spread the logits (std about 3),
    so greedy decoding never hinges on near-ties.
    """

    LOGIT_SCALE = 3.0
    BIAS_SCALE = 0.2
    NORM_SPREAD = 0.1

    def __init__(self, shape: ModelShape, seed: int = 0) -> None:
        self.shape = shape
        self.seed = seed
        self._shapes = shape.weight_shapes()

    def __getitem__(self, name: str) -> NDArray[np.float32]:
        dims = self._shapes[name]
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        values = rng.standard_normal(dims, dtype=np.float32)
        if name.endswith("norm.weight"):
            values = values * np.float32(self.NORM_SPREAD) + np.float32(1.0)
        elif name.endswith(".bias"):
            values *= np.float32(self.BIAS_SCALE)
        elif name == "lm_head.weight":
            values *= np.float32(self.LOGIT_SCALE / np.sqrt(dims[0]))
        elif name != "model.embed_tokens.weight":
            values *= np.float32(1.0 / np.sqrt(dims[0]))
        return values

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)


def model_filename(dtype: str) -> str:
    """The file under ``onnx/`` holding the graph of a dtype."""
    return "model.onnx" if dtype == "fp32" else f"model_{dtype}.onnx"


def write_bundle(directory: Path, shape: ModelShape = TINY, *, seed: int = 0, dtypes: Sequence[str] = DTYPES,
                 progress: Progress | None = None) -> Path:
    """Write a random-weight bundle of ``shape`` into ``directory`` (created if needed); returns it."""
    unknown = [dtype for dtype in dtypes if dtype not in DTYPES]
    if unknown:
        raise ValueError(f"unknown dtypes {unknown}; expected some of {DTYPES}")
    report = progress or (lambda message: None)
    onnx_dir = directory / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    report("training the tokenizer")
    tokenizer = train_tokenizer(vocab_size=shape.vocab_size)
    tokens = tokenizer.get_vocab_size(with_added_tokens=True)
    if tokens > shape.vocab_size:
        raise ValueError(f"the tokenizer has {tokens} tokens, more than vocab_size {shape.vocab_size}")
    write_tokenizer_files(tokenizer, directory, model_max_length=shape.max_position_embeddings)
    bos, eos = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
    if bos is None or eos is None:
        raise BundleError(f"the tokenizer lacks {BOS} or {EOS}", file=directory / "tokenizer.json")
    _write_json(directory / "config.json", _config(shape, bos, eos))
    _write_json(directory / "generation_config.json", {
        "_from_model_config": True, "bos_token_id": bos, "eos_token_id": eos,
        "do_sample": True, "temperature": 0.6, "top_p": 0.95,
    })
    weights = RandomWeights(shape, seed)
    with tempfile.TemporaryDirectory(prefix=".scratch-", dir=directory) as scratch:
        sources: dict[str, Path] = {}
        for float_type, users in (("fp32", ("fp32", "int8", "q4")), ("fp16", ("fp16", "q4f16"))):
            if any(dtype in dtypes for dtype in users):
                path = (onnx_dir if float_type in dtypes else Path(scratch)) / model_filename(float_type)
                report(f"writing {path.name}")
                save_decoder(path, shape, weights, dtype=float_type)
                sources[float_type] = path
        for dtype, source in (("int8", "fp32"), ("q4", "fp32"), ("q4f16", "fp16")):
            if dtype in dtypes:
                report(f"quantizing {model_filename(dtype)}")
                _quantize(dtype, sources[source], onnx_dir / model_filename(dtype))
    return directory


def _quantize(dtype: str, source: Path, target: Path) -> None:
    from dsguard.runner import quantize  # imported here: it builds on the bundle and session modules

    if dtype == "int8":
        quantize.quantize_int8(source, target)
    else:
        quantize.quantize_q4(source, target, block_size=32)


def _config(shape: ModelShape, bos: int, eos: int) -> dict[str, Any]:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        **shape.to_config(),
        "bos_token_id": bos,
        "eos_token_id": eos,
        "hidden_act": "silu",
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "max_window_layers": shape.num_hidden_layers,
        "sliding_window": shape.max_position_embeddings,
        "use_sliding_window": False,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "transformers.js_config": {"kv_cache_dtype": {"fp16": "float16", "q4f16": "float16"}},
    }


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def cache_dir() -> Path:
    """``$DSGUARD_CACHE_DIR``, else ``~/.cache/dsguard``; bundled models live under ``models/``."""
    configured = os.environ.get("DSGUARD_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "dsguard"


def ensure_bundled(name: str = "tiny-deepseek", dtypes: Sequence[str] = DTYPES, *,
                   progress: Progress | None = None) -> Path:
    """The cached bundle ``name`` holding at least ``dtypes``, built on first use.

    Built in a scratch directory beside the cache entry and renamed into place, under a lock file,
    so concurrent processes build it once and never see a half-written bundle.
    """
    shape = BUNDLED.get(name)
    if shape is None:
        raise BundleError(f"unknown bundled model; known: {', '.join(sorted(BUNDLED))}", file=f"bundled:{name}")
    root = cache_dir() / "models"
    target = root / f"{name}-{FORMAT_VERSION}"
    if _missing_dtypes(target, dtypes) == []:
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{target.name}.lock"):
        missing = _missing_dtypes(target, dtypes)
        if missing == []:
            return target
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        scratch.chmod(0o755)
        try:
            if missing is None:
                write_bundle(scratch, shape, dtypes=dtypes, progress=progress)
                _write_marker(scratch, dtypes)
                shutil.rmtree(target, ignore_errors=True)
                os.rename(scratch, target)
            else:
                write_bundle(scratch, shape, dtypes=missing, progress=progress)
                _adopt(scratch / "onnx", target / "onnx")
                _write_marker(target, [*_marker(target)["dtypes"], *missing])
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def resolve_model(spec: str, *, dtypes: Sequence[str] = DTYPES) -> Path:
    """``bundled:<name>`` -> the cached bundle (built if needed); anything else -> an existing directory."""
    if spec.startswith("bundled:"):
        return ensure_bundled(spec.removeprefix("bundled:"), dtypes)
    directory = Path(spec).expanduser()
    if not directory.is_dir():
        raise BundleError("model bundle directory does not exist", file=directory)
    return directory


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _marker(bundle: Path) -> dict[str, Any]:
    try:
        data = json.loads((bundle / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _missing_dtypes(bundle: Path, dtypes: Sequence[str]) -> list[str] | None:
    """The dtypes a complete bundle lacks, or None when the bundle is absent, incomplete or damaged."""
    marker = _marker(bundle)
    files, built = marker.get("files"), marker.get("dtypes")
    if marker.get("format") != FORMAT_VERSION or not isinstance(files, dict) or not isinstance(built, list):
        return None
    for relative, size in files.items():
        try:
            if (bundle / relative).stat().st_size != size:
                return None
        except OSError:
            return None
    return [dtype for dtype in dtypes if dtype not in built]


def _write_marker(bundle: Path, dtypes: Sequence[str]) -> None:
    files = {str(path.relative_to(bundle)): path.stat().st_size
             for path in sorted(bundle.rglob("*")) if path.is_file() and path.name != MARKER}
    data = {"format": FORMAT_VERSION, "dtypes": sorted(set(dtypes), key=DTYPES.index), "files": files,
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    scratch = bundle / (MARKER + ".tmp")
    _write_json(scratch, data)
    os.replace(scratch, bundle / MARKER)


def _adopt(source: Path, target: Path) -> None:
    """Move newly written graphs into a complete bundle: data files first, so a visible graph has its data."""
    for path in sorted(source.iterdir(), key=lambda p: p.suffix == ".onnx"):
        os.replace(path, target / path.name)
