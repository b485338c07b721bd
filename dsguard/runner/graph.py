"""The ONNX graph of a DeepSeek-R1-Distill-Qwen (Qwen2) decoder, with the inputs and outputs of Optimum's exports.

Standard ONNX operators only (opset 17), so the same file runs on any execution provider and
onnxruntime's quantizers and optimizers see the patterns they know (RMSNorm as
Pow/ReduceMean/Add/Sqrt/Div, projections as MatMul with ``[in, out]`` weights).
The fp16 graph keeps weights, activations, key/value cache and logits in fp16 and computes the
RMSNorm statistics and the softmax in fp32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from dsguard.runner.shape import ModelShape

OPSET = 17
IR_VERSION = 8
MASK_FILL = -1e9
"""Added to the attention score of a key a query may not see; finite, so a row that sees nothing stays finite."""

FLOAT_TYPES: dict[str, tuple[int, type[np.floating[Any]]]] = {
    "fp32": (TensorProto.FLOAT, np.float32),
    "fp16": (TensorProto.FLOAT16, np.float16),
}

Store = Callable[[str, NDArray[Any]], TensorProto]
"""Turns a named weight into an initializer (kept inline, or written to an external data file)."""


class ExternalData:
    """Appends initializers to one external data file beside the model, as Optimum's exports do."""

    LARGE = 1 << 20
    LARGE_ALIGNMENT = 1 << 16
    ALIGNMENT = 64

    def __init__(self, file: BinaryIO, location: str) -> None:
        self.file = file
        self.location = location
        self.offset = 0

    def __call__(self, name: str, array: NDArray[Any]) -> TensorProto:
        alignment = self.LARGE_ALIGNMENT if array.nbytes >= self.LARGE else self.ALIGNMENT
        start = -(-self.offset // alignment) * alignment
        self.file.write(b"\0" * (start - self.offset))
        self.file.write(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
        self.offset = start + array.nbytes
        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                             dims=array.shape, data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.location), ("offset", str(start)), ("length", str(array.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        return tensor


def inline(name: str, array: NDArray[Any]) -> TensorProto:
    """Keep the weight inside the model proto."""
    return numpy_helper.from_array(array, name)


def save_decoder(path: Path, shape: ModelShape, weights: Mapping[str, NDArray[Any]], *, dtype: str = "fp32") -> None:
    """Write ``path`` and its external data file ``<path>_data``; one weight in memory at a time."""
    data_path = path.with_name(path.name + "_data")
    with data_path.open("wb") as data:
        model = build_decoder(shape, weights, dtype=dtype, store=ExternalData(data, data_path.name))
    path.write_bytes(model.SerializeToString())


def build_decoder(shape: ModelShape, weights: Mapping[str, NDArray[Any]], *, dtype: str = "fp32",
                  store: Store = inline) -> onnx.ModelProto:
    """The decoder as a ModelProto; ``weights`` by the names of :meth:`ModelShape.weight_shapes`."""
    if dtype not in FLOAT_TYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {sorted(FLOAT_TYPES)}")
    graph = _Decoder(shape, weights, dtype, store)
    model = helper.make_model(graph.build(), opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="dsguard", ir_version=IR_VERSION)
    return model


class _Nodes:
    """Appends nodes and initializers; each node is named like Optimum's (``/model/layers.0/mlp/Mul``)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._constants: set[str] = set()

    def op(self, op_type: str, inputs: list[str], name: str, *, output: str | None = None, **attributes: Any) -> str:
        return self.ops(op_type, inputs, name, outputs=[output or f"{name}_output_0"], **attributes)[0]

    def ops(self, op_type: str, inputs: list[str], name: str, *, outputs: list[str], **attributes: Any) -> list[str]:
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, **attributes))
        return outputs

    def const(self, name: str, value: NDArray[Any]) -> str:
        if name not in self._constants:
            self._constants.add(name)
            self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def ints(self, *values: int) -> str:
        return self.const("const_i64_" + "_".join(str(v).replace("-", "m") for v in values),
                          np.array(values, dtype=np.int64))


class _Decoder:
    def __init__(self, shape: ModelShape, weights: Mapping[str, NDArray[Any]], dtype: str, store: Store) -> None:
        self.shape = shape
        self.weights = weights
        self.elem_type, self.np_type = FLOAT_TYPES[dtype]
        self.half = dtype == "fp16"
        self.store = store
        self.g = _Nodes()
        self.expected = shape.weight_shapes()

    def weight(self, name: str) -> str:
        array = np.asarray(self.weights[name])
        if array.shape != self.expected[name]:
            raise ValueError(f"weight {name}: shape {array.shape}, expected {self.expected[name]}")
        self.g.initializers.append(self.store(name, array.astype(self.np_type, copy=False)))
        return name

    def build(self) -> onnx.GraphProto:
        s, g = self.shape, self.g
        hidden = g.op("Gather", [self.weight("model.embed_tokens.weight"), "input_ids"], "/model/embed_tokens/Gather")
        cos, sin = self.rotary()
        mask = self.attention_bias()
        for index in range(s.num_hidden_layers):
            hidden = self.layer(index, hidden, cos, sin, mask)
        normed = self.rms_norm(hidden, "model.norm.weight", "/model/norm")
        g.op("MatMul", [normed, self.weight("lm_head.weight")], "/lm_head/MatMul", output="logits")
        kv_dims: list[str | int] = ["batch_size", s.num_key_value_heads, "past_sequence_length", s.head_dim]
        present_dims: list[str | int] = ["batch_size", s.num_key_value_heads, "total_sequence_length", s.head_dim]
        inputs = [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        ]
        outputs = [helper.make_tensor_value_info("logits", self.elem_type,
                                                 ["batch_size", "sequence_length", s.vocab_size])]
        for index in range(s.num_hidden_layers):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{index}.{kind}", self.elem_type, kv_dims))
                outputs.append(helper.make_tensor_value_info(f"present.{index}.{kind}", self.elem_type, present_dims))
        return helper.make_graph(g.nodes, "main_graph", inputs, outputs, initializer=g.initializers)

    def rms_norm(self, x: str, weight: str, scope: str) -> str:
        g = self.g
        if self.half:
            x = g.op("Cast", [x], f"{scope}/Cast", to=TensorProto.FLOAT)
        squared = g.op("Pow", [x, g.const("const_two", np.array(2.0, np.float32))], f"{scope}/Pow")
        variance = g.op("ReduceMean", [squared], f"{scope}/ReduceMean", axes=[-1], keepdims=1)
        eps = g.const(f"{scope}/eps", np.array(self.shape.rms_norm_eps, np.float32))
        deviation = g.op("Sqrt", [g.op("Add", [variance, eps], f"{scope}/Add")], f"{scope}/Sqrt")
        normed = g.op("Div", [x, deviation], f"{scope}/Div")
        if self.half:
            normed = g.op("Cast", [normed], f"{scope}/Cast_1", to=TensorProto.FLOAT16)
        return g.op("Mul", [self.weight(weight), normed], f"{scope}/Mul")

    def rotary(self) -> tuple[str, str]:
        """cos and signed sin, ``[batch, 1, seq, head_dim]``: rotate-half(x)·sin = swap-halves(x)·(-sin, sin)."""
        g, scope = self.g, "/model/rotary_emb"
        half = self.shape.head_dim // 2
        inv_freq = 1.0 / (self.shape.rope_theta ** (np.arange(0, half, dtype=np.float64) * 2 / self.shape.head_dim))
        positions = g.op("Cast", ["position_ids"], f"{scope}/Cast", to=TensorProto.FLOAT)
        positions = g.op("Unsqueeze", [positions, g.ints(-1)], f"{scope}/Unsqueeze")
        freqs = g.op("Mul", [positions, g.const("rotary_inv_freq", inv_freq.astype(np.float32))], f"{scope}/Mul")
        cos_half = g.op("Cos", [freqs], f"{scope}/Cos")
        sin_half = g.op("Sin", [freqs], f"{scope}/Sin")
        cos = g.op("Concat", [cos_half, cos_half], f"{scope}/Concat", axis=-1)
        sin = g.op("Concat", [g.op("Neg", [sin_half], f"{scope}/Neg"), sin_half], f"{scope}/Concat_1", axis=-1)
        cos = g.op("Unsqueeze", [cos, g.ints(1)], f"{scope}/Unsqueeze_1")
        sin = g.op("Unsqueeze", [sin, g.ints(1)], f"{scope}/Unsqueeze_2")
        if self.half:
            cos = g.op("Cast", [cos], f"{scope}/Cast_1", to=TensorProto.FLOAT16)
            sin = g.op("Cast", [sin], f"{scope}/Cast_2", to=TensorProto.FLOAT16)
        return cos, sin

    def attention_bias(self) -> str:
        """fp32 ``[batch, 1, groups*seq, total]``: 0 where a query may see a key (causal, not padding), else MASK_FILL.

        Rows are repeated once per query head of a key/value group, matching the grouped score layout.
        """
        g, scope = self.g, "/model/attn_mask"
        seq = g.op("Shape", ["input_ids"], f"{scope}/Shape", start=1, end=2)
        total = g.op("Shape", ["attention_mask"], f"{scope}/Shape_1", start=1, end=2)
        past = g.op("Sub", [total, seq], f"{scope}/Sub")
        zero, one = g.const("const_zero", np.array(0, np.int64)), g.const("const_one", np.array(1, np.int64))
        keys = g.op("Range", [zero, g.op("Squeeze", [total, g.ints(0)], f"{scope}/Squeeze"), one], f"{scope}/Range")
        queries = g.op("Range", [zero, g.op("Squeeze", [seq, g.ints(0)], f"{scope}/Squeeze_1"), one],
                       f"{scope}/Range_1")
        queries = g.op("Unsqueeze", [g.op("Add", [queries, past], f"{scope}/Add"), g.ints(1)], f"{scope}/Unsqueeze")
        causal = g.op("LessOrEqual", [keys, queries], f"{scope}/LessOrEqual")
        present = g.op("Cast", ["attention_mask"], f"{scope}/Cast", to=TensorProto.BOOL)
        present = g.op("Unsqueeze", [present, g.ints(1, 2)], f"{scope}/Unsqueeze_1")
        allowed = g.op("And", [causal, present], f"{scope}/And")
        bias = g.op("Where", [allowed, g.const("const_open", np.array(0.0, np.float32)),
                              g.const("const_masked", np.array(MASK_FILL, np.float32))], f"{scope}/Where")
        groups = self.shape.num_attention_heads // self.shape.num_key_value_heads
        if groups > 1:
            bias = g.op("Tile", [bias, g.ints(1, 1, groups, 1)], f"{scope}/Tile")
        return bias

    def layer(self, index: int, hidden: str, cos: str, sin: str, mask: str) -> str:
        g, name, scope = self.g, f"model.layers.{index}", f"/model/layers.{index}"
        normed = self.rms_norm(hidden, f"{name}.input_layernorm.weight", f"{scope}/input_layernorm")
        attention = self.attention(index, normed, cos, sin, mask)
        hidden = g.op("Add", [hidden, attention], f"{scope}/Add")
        normed = self.rms_norm(hidden, f"{name}.post_attention_layernorm.weight", f"{scope}/post_attention_layernorm")
        return g.op("Add", [hidden, self.mlp(index, normed)], f"{scope}/Add_1")

    def projection(self, x: str, index: int, proj: str, heads: int) -> str:
        """``[batch, heads, seq, head_dim]`` of a biased q/k/v projection."""
        g, name, scope = self.g, f"model.layers.{index}.self_attn.{proj}", f"/model/layers.{index}/self_attn/{proj}"
        y = g.op("MatMul", [x, self.weight(f"{name}.weight")], f"{scope}/MatMul")
        y = g.op("Add", [self.weight(f"{name}.bias"), y], f"{scope}/Add")
        y = g.op("Reshape", [y, g.ints(0, 0, heads, self.shape.head_dim)], f"{scope}/Reshape")
        return g.op("Transpose", [y], f"{scope}/Transpose", perm=[0, 2, 1, 3])

    def rotate(self, x: str, cos: str, sin: str, scope: str) -> str:
        g, half = self.g, self.shape.head_dim // 2
        first, second = g.ops("Split", [x, g.ints(half, half)], f"{scope}/Split",
                              outputs=[f"{scope}/Split_output_0", f"{scope}/Split_output_1"], axis=-1)
        swapped = g.op("Concat", [second, first], f"{scope}/Concat", axis=-1)
        return g.op("Add", [g.op("Mul", [x, cos], f"{scope}/Mul"), g.op("Mul", [swapped, sin], f"{scope}/Mul_1")],
                    f"{scope}/Add")

    def attention(self, index: int, x: str, cos: str, sin: str, mask: str) -> str:
        s, g, scope = self.shape, self.g, f"/model/layers.{index}/self_attn"
        query = self.projection(x, index, "q_proj", s.num_attention_heads)
        key = self.projection(x, index, "k_proj", s.num_key_value_heads)
        value = self.projection(x, index, "v_proj", s.num_key_value_heads)
        query = self.rotate(query, cos, sin, f"{scope}/rotary_q")
        key = self.rotate(key, cos, sin, f"{scope}/rotary_k")
        key = g.op("Concat", [f"past_key_values.{index}.key", key], f"{scope}/Concat_k", axis=2,
                   output=f"present.{index}.key")
        value = g.op("Concat", [f"past_key_values.{index}.value", value], f"{scope}/Concat_v", axis=2,
                     output=f"present.{index}.value")
        scale = g.const(f"{scope}/scale", np.array(1.0 / math.sqrt(s.head_dim), self.np_type))
        query = g.op("Mul", [query, scale], f"{scope}/Mul")
        # The query heads sharing a key/value head become extra rows: [batch, kv_heads, groups*seq, head_dim].
        grouped = g.op("Reshape", [query, g.ints(0, s.num_key_value_heads, -1, s.head_dim)], f"{scope}/Reshape")
        keys_t = g.op("Transpose", [key], f"{scope}/Transpose", perm=[0, 1, 3, 2])
        scores = g.op("MatMul", [grouped, keys_t], f"{scope}/MatMul")
        if self.half:
            scores = g.op("Cast", [scores], f"{scope}/Cast", to=TensorProto.FLOAT)
        probs = g.op("Softmax", [g.op("Add", [scores, mask], f"{scope}/Add")], f"{scope}/Softmax", axis=-1)
        if self.half:
            probs = g.op("Cast", [probs], f"{scope}/Cast_1", to=TensorProto.FLOAT16)
        context = g.op("MatMul", [probs, value], f"{scope}/MatMul_1")
        context = g.op("Reshape", [context, g.ints(0, s.num_attention_heads, -1, s.head_dim)], f"{scope}/Reshape_1")
        context = g.op("Transpose", [context], f"{scope}/Transpose_1", perm=[0, 2, 1, 3])
        context = g.op("Reshape", [context, g.ints(0, 0, s.hidden_size)], f"{scope}/Reshape_2")
        weight = self.weight(f"model.layers.{index}.self_attn.o_proj.weight")
        return g.op("MatMul", [context, weight], f"{scope}/o_proj/MatMul")

    def mlp(self, index: int, x: str) -> str:
        g, name, scope = self.g, f"model.layers.{index}.mlp", f"/model/layers.{index}/mlp"
        gate = g.op("MatMul", [x, self.weight(f"{name}.gate_proj.weight")], f"{scope}/gate_proj/MatMul")
        up = g.op("MatMul", [x, self.weight(f"{name}.up_proj.weight")], f"{scope}/up_proj/MatMul")
        activated = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{scope}/act_fn/Sigmoid")], f"{scope}/act_fn/Mul")
        product = g.op("Mul", [activated, up], f"{scope}/Mul")
        return g.op("MatMul", [product, self.weight(f"{name}.down_proj.weight")], f"{scope}/down_proj/MatMul")


def graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and tensor attributes, subgraphs included: every tensor that may sit in external data."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from graph_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from graph_tensors(subgraph)
