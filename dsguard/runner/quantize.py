"""Weight quantization of a bundle's ONNX decoder: dynamic int8 and 4-bit MatMulNBits (block-wise, symmetric)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
from numpy.typing import NDArray
from onnx import external_data_helper, helper, numpy_helper

from dsguard.runner.bundle import Bundle, model_filename, open_bundle
from dsguard.runner.errors import BundleError
from dsguard.runner.graph import graph_tensors
from dsguard.runner.session import default_threads, session_options

ProgressCallback = Callable[[int, int], None]
"""Called with (steps done, steps in all) as a long job advances."""

EXTERNAL_DATA_THRESHOLD = 1 << 31
"""Protobuf cannot hold more than 2 GiB: larger outputs keep their weights in ``<file>_data``."""

SOURCES = {"int8": "fp32", "q4": "fp32", "q4f16": "fp16"}
"""Which graph of a bundle each quantized dtype is made from."""


def model_file(bundle: Path, dtype: str) -> Path:
    """Where a bundle keeps the graph of one dtype."""
    return bundle / "onnx" / model_filename(dtype)


def _load_structure(path: Path) -> onnx.ModelProto:
    """The graph with external weights left on disk (the references are kept)."""
    if not path.is_file():
        raise BundleError("missing", file=path)
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors share no base class
        raise BundleError(f"not an ONNX model ({exc})", file=path) from None


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    itemsize = int(helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize)
    return int(math.prod(tensor.dims)) * itemsize


def weights_bytes(path: Path) -> int:
    """Size of a graph's initializers, read from the graph alone (external data stays on disk)."""
    return sum(_tensor_bytes(tensor) for tensor in _load_structure(path).graph.initializer)


def _remove_outputs(target: Path) -> None:
    """Delete a previous output, whose external data file onnx would otherwise append to."""
    for stale in (target, target.with_name(target.name + "_data"), target.with_name(target.name + ".data")):
        stale.unlink(missing_ok=True)


def save_model(model: onnx.ModelProto, target: Path) -> None:
    """Write ``target``, with the weights in ``<target>_data`` when they pass the protobuf limit."""
    _remove_outputs(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    total = sum(_tensor_bytes(tensor) for tensor in model.graph.initializer)
    if total < EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(model, str(target))
    else:
        onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=target.name + "_data", size_threshold=1024)


@contextlib.contextmanager
def _quiet_preprocessing_advice() -> Iterator[None]:
    """onnxruntime advises pre-processing on the root logger at every call; it does not apply to weights-only."""

    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing")

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _rename_external_data(target: Path, location: str) -> None:
    """Point a graph's external tensors at ``location`` and rename the one file they share to it."""
    model = onnx.load(str(target), load_external_data=False)
    old_locations = set()
    for tensor in graph_tensors(model.graph):
        for entry in tensor.external_data:
            if entry.key == "location":
                old_locations.add(entry.value)
                entry.value = location
    if len(old_locations) != 1:
        return
    (target.parent / old_locations.pop()).rename(target.parent / location)
    onnx.save_model(model, str(target))


def quantize_int8(source: Path, target: Path, *, per_channel: bool = True,
                  progress: ProgressCallback | None = None) -> None:
    """Dynamic int8: MatMul weights to int8 (one scale per output column when ``per_channel``),
    activations quantized per call by DynamicQuantizeLinear; runs as MatMulInteger.

    Activations share one scale across the batch, so a request's output depends on its batch neighbours.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    external = weights_bytes(source) >= EXTERNAL_DATA_THRESHOLD
    _remove_outputs(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        progress(0, 1)
    with _quiet_preprocessing_advice():
        quantize_dynamic(source, target, op_types_to_quantize=["MatMul"], per_channel=per_channel,
                         weight_type=QuantType.QInt8, use_external_data_format=external,
                         extra_options={"MatMulConstBOnly": True})
    if external:
        _rename_external_data(target, target.name + "_data")
    if progress:
        progress(1, 1)


def quantize_block4(weight: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack a [K, N] weight as MatMulNBits wants it: [N, K/block, block/2] nibbles and [N, K/block] scales."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    rows, cols = weight.shape
    blocks = (rows + block_size - 1) // block_size
    if blocks * block_size != rows:
        weight = np.pad(weight, ((0, blocks * block_size - rows), (0, 0)))
    packed = np.zeros((cols, blocks, block_size // 2), dtype=np.uint8)
    scales = np.zeros((cols, blocks), dtype=weight.dtype)
    zero_points = np.zeros((cols, (blocks + 1) // 2), dtype=np.uint8)
    quantize_matmul_4bits(packed, np.ascontiguousarray(weight), scales, zero_points, block_size, cols, rows, True)
    return packed, scales


def _constant_matmuls(graph: onnx.GraphProto, block_size: int) -> list[tuple[int, onnx.NodeProto]]:
    """MatMul nodes (with their index) whose weight is a constant float [K, N] initializer."""
    weights = {tensor.name: tensor for tensor in graph.initializer}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    return [(index, node) for index, node in enumerate(graph.node)
            if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and node.input[1] in weights
            and len(weights[node.input[1]].dims) == 2 and weights[node.input[1]].data_type in floats
            and weights[node.input[1]].dims[0] >= block_size]


def _drop(graph: onnx.GraphProto, names: set[str]) -> None:
    for field in (graph.initializer, graph.input):
        for index in reversed([index for index, item in enumerate(field) if item.name in names]):
            del field[index]


def quantize_q4(source: Path, target: Path, *, block_size: int = 32, accuracy_level: int | None = 4,
                progress: ProgressCallback | None = None) -> None:
    """4-bit weights: every MatMul with a constant 2-D weight becomes MatMulNBits (symmetric, ``block_size``
    values per scale along K). A float16 graph gives float16 scales and keeps float16 activations (q4f16).

    Weights are read and replaced one at a time, so memory holds one full-precision matrix at most.
    ``accuracy_level`` 4 has the CPU quantize each activation row to int8 per block and sum in integers:
    several times faster than float compute, no more drift, and a row's result does not depend on the other
    rows of the batch (float compute differs in the last bits between batch sizes). None leaves the choice
    to the execution provider.
    """
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")
    model = _load_structure(source)
    graph = model.graph
    matmuls = _constant_matmuls(graph, block_size)
    weights = {tensor.name: tensor for tensor in graph.initializer}
    names = list(dict.fromkeys(node.input[1] for _, node in matmuls))
    candidates = {index for index, _ in matmuls}
    other_uses = {name for index, node in enumerate(graph.node) for position, name in enumerate(node.input)
                  if index not in candidates or position != 1} | {output.name for output in graph.output}
    dims: dict[str, tuple[int, int]] = {}
    for done, name in enumerate(names):
        if progress:
            progress(done, len(names))
        tensor = weights[name]
        weight = numpy_helper.to_array(tensor, base_dir=str(source.parent))
        packed, scales = quantize_block4(weight, block_size)
        dims[name] = weight.shape
        del weight
        if name not in other_uses:
            tensor.ClearField("raw_data")
        graph.initializer.extend([numpy_helper.from_array(packed, f"{name}_Q4"),
                                  numpy_helper.from_array(scales, f"{name}_scales")])
    attributes: dict[str, Any] = {"bits": 4, "block_size": block_size}
    if accuracy_level is not None:
        attributes["accuracy_level"] = accuracy_level
    nodes = list(graph.node)
    for index, node in matmuls:
        weight_name = node.input[1]
        rows, cols = dims[weight_name]
        nodes[index] = helper.make_node(
            "MatMulNBits", [node.input[0], f"{weight_name}_Q4", f"{weight_name}_scales"], list(node.output),
            name=f"{node.name}_Q4" if node.name else "", domain="com.microsoft", K=rows, N=cols, **attributes)
    graph.ClearField("node")
    graph.node.extend(nodes)
    _drop(graph, set(names) - other_uses)
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    external_data_helper.load_external_data_for_model(model, str(source.parent))
    save_model(model, target)
    if progress:
        progress(len(names), len(names))


def quantize_bundle(bundle: Path, dtype: str, *, block_size: int = 32,
                    progress: ProgressCallback | None = None) -> Path:
    """Write ``onnx/model_<dtype>.onnx`` of a bundle from its fp32 (int8, q4) or fp16 (q4f16) graph."""
    if dtype not in SOURCES:
        raise ValueError(f"cannot quantize to {dtype!r}: choose one of {', '.join(SOURCES)}")
    source, target = model_file(bundle, SOURCES[dtype]), model_file(bundle, dtype)
    if not source.is_file():
        if (bundle / "genai_config.json").is_file() and not (bundle / "config.json").is_file():
            raise BundleError("an onnxruntime-genai model-builder folder holds one graph; quantize with the builder "
                              "(-p int4) or from a Hugging Face / Optimum export", file=bundle)
        raise BundleError(f"missing: {dtype} is made from the {SOURCES[dtype]} graph", file=source)
    if dtype == "int8":
        quantize_int8(source, target, progress=progress)
    else:
        quantize_q4(source, target, block_size=block_size, progress=progress)
    return target


def files_bytes(path: Path) -> int:
    """Size on disk of a graph and of its external data file, when it has one."""
    siblings = (path, path.with_name(path.name + "_data"), path.with_name(path.name + ".data"))
    return sum(item.stat().st_size for item in siblings if item.is_file())


@dataclasses.dataclass(frozen=True)
class DriftReport:
    """How far one dtype's logits are from fp32's over the same tokens, and how fast its graph decodes."""

    dtype: str
    max_abs_drift: float
    mean_abs_drift: float
    greedy_agreement: float
    """Share of the compared positions whose most likely next token is fp32's."""
    decode_tokens_per_second: float
    """One sequence, one token per call, KV cache fed back through numpy: a plain loop, no batching."""
    positions: int
    size_bytes: int


class _Decoder:
    """One ONNX Runtime session of a bundle graph, fed one sequence with its KV cache."""

    def __init__(self, bundle: Bundle, threads: int | None) -> None:
        options = session_options(threads or default_threads(bundle.shape.num_parameters()))
        try:
            self.session = onnxruntime.InferenceSession(str(bundle.model_path), options,
                                                        providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types, unrelated to each other
            raise BundleError(f"onnxruntime cannot load the graph: {error}", file=bundle.model_path) from None
        self.bundle = bundle
        layers = bundle.shape.num_hidden_layers
        self.past_names = bundle.names.past(layers)
        self.outputs = [bundle.names.logits, *bundle.names.present(layers)]
        self.past: dict[str, NDArray[Any]] = {}
        self.length = 0

    def start(self) -> None:
        shape = self.bundle.shape
        empty = (1, shape.num_key_value_heads, 0, shape.head_dim)
        self.past = {name: np.zeros(empty, dtype=self.bundle.kv_dtype) for name in self.past_names}
        self.length = 0

    def step(self, ids: Sequence[int]) -> NDArray[np.float32]:
        """Logits [len(ids), vocab] of the next tokens, the cache grown by ``ids``."""
        names, count = self.bundle.names, len(ids)
        feed: dict[str, NDArray[Any]] = {
            names.input_ids: np.array([ids], dtype=np.int64),
            names.attention_mask: np.ones((1, self.length + count), dtype=np.int64),
            **self.past,
        }
        if names.position_ids:
            feed[names.position_ids] = np.arange(self.length, self.length + count, dtype=np.int64)[None, :]
        logits, *present = self.session.run(self.outputs, feed)
        self.past = dict(zip(self.past_names, present, strict=True))
        self.length += count
        return np.asarray(logits[0], dtype=np.float32)


def _run(decoder: _Decoder, prompt: Sequence[int], steps: int, forced: Sequence[int] | None,
         tick: Callable[[], None]) -> tuple[NDArray[np.float32], list[int], float]:
    """Prefill then ``steps`` one-token calls (greedy, or the ``forced`` tokens); logits, tokens, timed seconds."""
    decoder.start()
    logits = [decoder.step(prompt)]
    tick()
    tokens: list[int] = []
    seconds = 0.0
    for index in range(steps):
        token = forced[index] if forced is not None else int(np.argmax(logits[-1][-1]))
        tokens.append(token)
        started = time.perf_counter()
        logits.append(decoder.step([token]))
        if index:
            seconds += time.perf_counter() - started
        tick()
    return np.concatenate(logits), tokens, seconds


DEFAULT_PROMPT = "Explain in two sentences why the sky is blue. 为什么天空是蓝色的?"


def compare(bundle: Path, dtypes: Sequence[str], *, prompt_ids: Sequence[int] | None = None, steps: int = 16,
            threads: int | None = None, progress: ProgressCallback | None = None) -> list[DriftReport]:
    """Logit drift of each dtype's graph against fp32 over a prefill and ``steps`` greedy decode steps.

    fp32 decodes greedily; every other graph is fed the same tokens, so each position compares like with
    like. Without ``prompt_ids``, a short chat prompt encoded by the bundle's tokenizer is used.
    """
    if steps < 2:
        raise ValueError("steps must be at least 2: the first decode step is not timed")
    reference_bundle = open_bundle(bundle, "fp32")
    if prompt_ids is None:
        prompt_ids = reference_bundle.tokenizer.encode_chat([{"role": "user", "content": DEFAULT_PROMPT}])
    done = 0
    total = (len(dtypes) + 1) * (steps + 1)

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    reference = _Decoder(reference_bundle, threads)
    reference_logits, tokens, reference_seconds = _run(reference, prompt_ids, steps, None, tick)
    del reference
    reports = []
    for dtype in dtypes:
        if dtype == "fp32":
            logits, seconds = reference_logits, reference_seconds
            for _ in range(steps + 1):
                tick()
        else:
            logits, _, seconds = _run(_Decoder(open_bundle(bundle, dtype), threads), prompt_ids, steps, tokens,
                                      tick)
        drift = np.abs(logits - reference_logits)
        agreement = np.argmax(logits, axis=-1) == np.argmax(reference_logits, axis=-1)
        reports.append(DriftReport(dtype=dtype, max_abs_drift=float(drift.max()), mean_abs_drift=float(drift.mean()),
                                   greedy_agreement=float(agreement.mean()),
                                   decode_tokens_per_second=(steps - 1) / seconds if seconds else math.inf,
                                   positions=len(logits), size_bytes=files_bytes(model_file(bundle, dtype))))
    return reports
