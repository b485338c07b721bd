"""Opening a model bundle for one dtype and checking that its graph is one the runner can drive.

Two layouts are read: Hugging Face / Optimum exports (``onnx/model_<dtype>.onnx`` beside ``config.json``)
and onnxruntime-genai model-builder folders (``genai_config.json`` naming the decoder file, its I/O and its
shape; ``config.json`` and ``generation_config.json`` are then optional). Model-builder graphs attend with
GroupQueryAttention, which reads each row's length from ``attention_mask`` and writes the key/value cache
in place: the session drives them the way it drives its own fused graphs.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from dsguard.crypto.weights import MemoryGraph, WeightsPolicy, check_manifest, encrypted_path, load_encrypted_graph
from dsguard.runner.errors import BundleError, read_json_object
from dsguard.runner.sampling import MIN_TEMPERATURE, SamplingParams
from dsguard.runner.shape import ModelShape
from dsguard.runner.tokenizer import ChatTokenizer

DTYPES = ("fp32", "fp16", "int8", "q4", "q4f16")
DYNAMIC_QUANTIZATION_OPS = frozenset({"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul",
                                      "MatMulIntegerToFloat"})
IN_PLACE_ATTENTION = "GroupQueryAttention"
UNSUPPORTED_OPS = frozenset({"PagedAttention"})
"""Attention over a paged cache the host would have to manage block by block."""

_KV_TYPES: dict[int, np.dtype[Any]] = {onnx.TensorProto.FLOAT: np.dtype(np.float32),
                                       onnx.TensorProto.FLOAT16: np.dtype(np.float16)}
_INT64: dict[int, np.dtype[Any]] = {onnx.TensorProto.INT64: np.dtype(np.int64)}


def model_filename(dtype: str) -> str:
    """The file of ``onnx/`` holding the graph for a dtype."""
    return "model.onnx" if dtype == "fp32" else f"model_{dtype}.onnx"


@dataclasses.dataclass(frozen=True)
class GraphNames:
    """Names of the decoder's inputs and outputs; ``%d`` stands for the layer index."""

    input_ids: str = "input_ids"
    attention_mask: str = "attention_mask"
    position_ids: str | None = "position_ids"
    past_key: str = "past_key_values.%d.key"
    past_value: str = "past_key_values.%d.value"
    logits: str = "logits"
    present_key: str = "present.%d.key"
    present_value: str = "present.%d.value"

    def past(self, layers: int) -> list[str]:
        """Past key/value input names, key then value for each layer."""
        return [name % i for i in range(layers) for name in (self.past_key, self.past_value)]

    def present(self, layers: int) -> list[str]:
        """Present key/value output names, in the same order as ``past``."""
        return [name % i for i in range(layers) for name in (self.present_key, self.present_value)]


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A checked bundle: where the graph is, its shapes, names, element types and tokenizer."""

    directory: Path
    dtype: str
    model_path: Path
    shape: ModelShape
    tokenizer: ChatTokenizer
    names: GraphNames
    kv_dtype: np.dtype[Any]
    logits_dtype: np.dtype[Any]
    eos_token_ids: frozenset[int]
    dynamic_quantization: bool
    """Activations are quantized per call (not per row): batching would make requests change each other."""
    sampling_defaults: SamplingParams = SamplingParams()
    """The model's recommended sampling (``generation_config.json``, or genai's ``search``) over OpenAI's."""
    in_place_attention: bool = False
    """The graph attends with GroupQueryAttention (model-builder layout): rows right-padded, each row's length
    read from ``attention_mask``, the cache written in place into buffers with room to grow."""
    memory: MemoryGraph | None = None
    """The decrypted graph and external data of an encrypted bundle (never written to disk)."""

    @property
    def context_length(self) -> int:
        return self.shape.max_position_embeddings


def open_bundle(directory: Path, dtype: str, *, policy: WeightsPolicy | None = None) -> Bundle:
    """Read and check a bundle; raises BundleError naming the file and what does not match.

    With a ``policy`` (``[runner]`` is one), the signed manifest is verified before anything else is read
    (ManifestError), and an encrypted graph is decrypted into memory only (EnvelopeError, KeyProviderError).
    """
    if dtype not in DTYPES:
        raise BundleError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}", file=directory)
    if not directory.is_dir():
        raise BundleError("model bundle directory does not exist", file=directory)
    manifest = check_manifest(directory, policy)
    config_path, genai_path = directory / "config.json", directory / "genai_config.json"
    genai = read_json_object(genai_path) if genai_path.is_file() else None
    model_path = directory / "onnx" / model_filename(dtype)
    names = GraphNames()
    if genai is not None and (not model_path.is_file() or not config_path.is_file()):
        model_path, names = _genai_decoder(genai_path, genai)
    sealed = encrypted_path(model_path).is_file()
    if not sealed and not model_path.is_file():
        raise BundleError(f"no ONNX graph for dtype {dtype!r}", file=model_path)
    memory = load_encrypted_graph(directory, model_path, policy, manifest) if sealed else None
    model = _load_graph(model_path, memory)
    if config_path.is_file() or genai is None:
        shape = ModelShape.from_config(read_json_object(config_path), source=str(config_path))
    else:
        shape = _genai_shape(genai_path, genai, model)
    generation_path = directory / "generation_config.json"
    if generation_path.is_file() or genai is None:
        generation = read_json_object(generation_path)
        eos = _eos_ids(generation.get("eos_token_id"), generation_path, "eos_token_id")
        sampling = sampling_defaults(generation, generation_path)
    else:
        section, search = genai.get("model"), genai.get("search")
        eos = _eos_ids(section.get("eos_token_id") if isinstance(section, dict) else None, genai_path,
                       "model.eos_token_id")
        sampling = sampling_defaults(search if isinstance(search, dict) else {}, genai_path, "search.")
    tokenizer = ChatTokenizer.from_bundle(directory)
    graph = _GraphCheck(model_path, model, names, shape)
    return Bundle(directory=directory, dtype=dtype, model_path=model_path, shape=shape, tokenizer=tokenizer,
                  names=names, kv_dtype=graph.kv_dtype, logits_dtype=graph.logits_dtype,
                  eos_token_ids=frozenset(tokenizer.eos_token_ids) | eos,
                  dynamic_quantization=graph.dynamic_quantization, sampling_defaults=sampling,
                  in_place_attention=graph.in_place_attention, memory=memory)


_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty")


def sampling_defaults(config: Mapping[str, Any], path: Path, prefix: str = "") -> SamplingParams:
    """The sampling a model recommends: the keys of ``_SAMPLING_KEYS`` it sets, over OpenAI's defaults.

    ``generation_config.json`` is read as vLLM reads it (``do_sample`` is not: a request's temperature
    decides); genai's ``search`` as onnxruntime-genai does (``do_sample = false``: greedy). A temperature
    below 1e-4 is greedy decoding, as in a request."""
    values: dict[str, float] = {}
    for key in _SAMPLING_KEYS:
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BundleError(f"expected a number, got {value!r}", file=path, key=prefix + key)
        values[key] = float(value)
    top_k = values.pop("top_k", 0.0)
    if top_k != int(top_k):
        raise BundleError(f"expected an integer, got {top_k!r}", file=path, key=prefix + "top_k")
    defaults = SamplingParams()
    temperature = values.get("temperature", defaults.temperature)
    if (prefix == "search." and config.get("do_sample") is False) or 0 <= temperature < MIN_TEMPERATURE:
        temperature = 0.0
    params = SamplingParams(temperature=temperature,
                            top_p=values.get("top_p", defaults.top_p), top_k=max(int(top_k), 0),
                            repetition_penalty=values.get("repetition_penalty", defaults.repetition_penalty))
    problem = params.problem()
    if problem is not None:
        raise BundleError(problem, file=path, key=prefix + problem.split(" ", 1)[0])
    return params


def _eos_ids(eos: object, path: Path, key: str) -> frozenset[int]:
    ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise BundleError(f"expected a token id or a list of them, got {eos!r}", file=path, key=key)
    return frozenset(ids)


def _load_graph(path: Path, memory: MemoryGraph | None) -> onnx.ModelProto:
    """The graph without its external weights (or the decrypted one)."""
    try:
        return memory.model() if memory is not None else onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError, OSError and others for a damaged file
        raise BundleError(f"not a readable ONNX model: {error}", file=path) from None


def _genai_shape(path: Path, genai: Mapping[str, Any], model: onnx.ModelProto) -> ModelShape:
    """The shape of a model-builder folder without ``config.json``: ``genai_config.json`` and the graph's MLP."""
    section = genai.get("model")
    decoder = section.get("decoder") if isinstance(section, dict) else None
    if not isinstance(section, dict) or not isinstance(decoder, dict):
        raise BundleError("expected model.decoder", file=path, key="model.decoder")
    keys = ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers")
    config: dict[str, Any] = {key: decoder[key] for key in keys if key in decoder}
    config |= {key: section[source] for key, source in (("vocab_size", "vocab_size"),
                                                          ("max_position_embeddings", "context_length"))
               if source in section}
    config["intermediate_size"] = _mlp_width(model, path)
    try:
        shape = ModelShape.from_config(config, source=str(path))
    except BundleError as error:
        raise BundleError(error.message, file=path, key=_GENAI_KEYS.get(error.key or "", error.key)) from None
    head_size = decoder.get("head_size", shape.head_dim)
    if head_size != shape.head_dim:
        raise BundleError(f"{head_size} does not match hidden_size / num_attention_heads = {shape.head_dim}",
                          file=path, key="model.decoder.head_size")
    return shape


_GENAI_KEYS = {"vocab_size": "model.vocab_size", "max_position_embeddings": "model.context_length",
               **{key: f"model.decoder.{key}" for key in ("hidden_size", "num_attention_heads",
                                                          "num_key_value_heads", "num_hidden_layers")}}


def _mlp_width(model: onnx.ModelProto, path: Path) -> int:
    """The MLP's inner width, read off the first down projection (``MatMul`` weight rows or ``MatMulNBits`` K)."""
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in model.graph.node:
        if "down_proj" not in node.name:
            continue
        if node.op_type == "MatMulNBits":
            return next(int(a.i) for a in node.attribute if a.name == "K")
        if node.op_type == "MatMul" and node.input[1] in initializers:
            return int(initializers[node.input[1]].dims[0])
    raise BundleError("cannot read the MLP width from the graph (no down_proj MatMul); put the model's "
                      "config.json beside genai_config.json", file=path)


def _genai_decoder(path: Path, genai: Mapping[str, Any]) -> tuple[Path, GraphNames]:
    section = genai.get("model")
    decoder = section.get("decoder") if isinstance(section, dict) else None
    if not isinstance(decoder, dict) or not isinstance(decoder.get("filename"), str):
        raise BundleError("expected model.decoder.filename", file=path, key="model.decoder")
    inputs, outputs = decoder.get("inputs", {}), decoder.get("outputs", {})
    if not isinstance(inputs, dict) or not isinstance(outputs, dict):
        raise BundleError("expected objects", file=path, key="model.decoder.inputs/outputs")
    defaults = GraphNames()

    def name(table: Mapping[str, Any], key: str, default: str | None) -> str | None:
        value = table.get(key, default)
        if value is not None and not isinstance(value, str):
            raise BundleError(f"expected a name, got {value!r}", file=path, key=f"model.decoder.{key}")
        return value

    names = GraphNames(
        input_ids=name(inputs, "input_ids", defaults.input_ids) or defaults.input_ids,
        attention_mask=name(inputs, "attention_mask", defaults.attention_mask) or defaults.attention_mask,
        position_ids=name(inputs, "position_ids", None),
        past_key=name(inputs, "past_key_names", defaults.past_key) or defaults.past_key,
        past_value=name(inputs, "past_value_names", defaults.past_value) or defaults.past_value,
        logits=name(outputs, "logits", defaults.logits) or defaults.logits,
        present_key=name(outputs, "present_key_names", defaults.present_key) or defaults.present_key,
        present_value=name(outputs, "present_value_names", defaults.present_value) or defaults.present_value,
    )
    return path.parent / decoder["filename"], names


class _GraphCheck:
    """The decoder graph's I/O against the contract and ``config.json``, read without external weights."""

    def __init__(self, path: Path, model: onnx.ModelProto, names: GraphNames, shape: ModelShape) -> None:
        self.path = path
        ops = {node.op_type for node in model.graph.node}
        unsupported = sorted(ops & UNSUPPORTED_OPS)
        if unsupported:
            raise BundleError(f"the graph uses {', '.join(unsupported)}, which needs a paged key/value cache; "
                              "export the model with the Hugging Face / Optimum decoder layout or the "
                              "onnxruntime-genai model builder", file=path)
        self.dynamic_quantization = bool(ops & DYNAMIC_QUANTIZATION_OPS)
        self.in_place_attention = IN_PLACE_ATTENTION in ops
        inputs = {value.name: value for value in model.graph.input}
        outputs = {value.name: value for value in model.graph.output}
        layers, kv_heads, head_dim = shape.num_hidden_layers, shape.num_key_value_heads, shape.head_dim
        expected_in = [names.input_ids, names.attention_mask, *([names.position_ids] if names.position_ids else []),
                       *names.past(layers)]
        expected_out = [names.logits, *names.present(layers)]
        self._exactly("input", inputs, expected_in)
        self._exactly("output", outputs, expected_out)
        for name in expected_in[: len(expected_in) - 2 * layers]:
            self._tensor(inputs[name], rank=2, types=_INT64)
        kv = {self._tensor(inputs[n], rank=4, types=_KV_TYPES, dims={1: kv_heads, 3: head_dim})
              for n in names.past(layers)}
        kv |= {self._tensor(outputs[n], rank=4, types=_KV_TYPES, dims={1: kv_heads, 3: head_dim})
               for n in names.present(layers)}
        if len(kv) != 1:
            raise BundleError("past and present key/value tensors mix element types", file=path)
        self.kv_dtype = kv.pop()
        self.logits_dtype = self._tensor(outputs[names.logits], rank=3, types=_KV_TYPES, dims={2: shape.vocab_size})

    def _exactly(self, kind: str, found: Mapping[str, Any], expected: list[str]) -> None:
        missing = [n for n in expected if n not in found]
        extra = sorted(set(found) - set(expected))
        if missing or extra:
            parts = ([f"missing {kind}s {', '.join(missing)}"] if missing else []) + (
                [f"unexpected {kind}s {', '.join(extra)}"] if extra else [])
            hint = _layer_hint(found)
            raise BundleError("; ".join(parts) + hint, file=self.path)

    def _tensor(self, value: onnx.ValueInfoProto, *, rank: int, types: Mapping[int, np.dtype[Any]],
                dims: Mapping[int, int] | None = None) -> np.dtype[Any]:
        tensor = value.type.tensor_type
        if tensor.elem_type not in types:
            got = onnx.TensorProto.DataType.Name(tensor.elem_type)
            allowed = ", ".join(onnx.TensorProto.DataType.Name(t) for t in types)
            raise BundleError(f"{value.name}: element type {got}, expected {allowed}", file=self.path)
        if tensor.HasField("shape"):
            shape = tensor.shape.dim
            if len(shape) != rank:
                raise BundleError(f"{value.name}: rank {len(shape)}, expected {rank}", file=self.path)
            for axis, size in (dims or {}).items():
                if shape[axis].HasField("dim_value") and shape[axis].dim_value != size:
                    raise BundleError(f"{value.name}: dimension {axis} is {shape[axis].dim_value}, config.json "
                                      f"implies {size}", file=self.path)
        return types[tensor.elem_type]


def _layer_hint(found: Mapping[str, Any]) -> str:
    layers = {int(m.group(1)) for n in found if (m := re.search(r"\.(\d+)\.", n))}
    return f" (the graph has {max(layers) + 1} layers of key/value)" if layers else ""
