"""Load-time fusions of a Qwen2 decoder graph into ONNX Runtime's fused kernels (fewer, larger steps).

Decoding one token runs every node once, so on small models many small kernels (and copying the whole
key/value cache into new buffers every step) cost more than the arithmetic. Exports spell RMSNorm as
Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul and rotary embeddings as split/swap/multiply; onnxruntime fuses
neither on its own. The patterns are matched exactly; anything else is left as is, so a graph that does
not match still runs unchanged. Only the graph changes, never the weights: the session loads the
rewritten graph with the bundle's external data files.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dsguard.runner.fused_attention import AttentionBias, external_attention_bias, fuse_attention
from dsguard.runner.graphmatch import MS_DOMAIN, GraphIndex, other_input, prune


@dataclasses.dataclass
class FusionReport:
    """How many patterns each fusion replaced."""

    rms_norm: int = 0
    skip_rms_norm: int = 0
    rotary: int = 0
    attention: int = 0
    bias: AttentionBias | None = None

    @property
    def total(self) -> int:
        return self.rms_norm + self.skip_rms_norm + self.rotary + self.attention + (self.bias is not None)


def fuse_decoder(model: onnx.ModelProto, *, max_positions: int, attention: bool = True) -> FusionReport:
    """Fuses RMSNorm (with the residual add before it), rotary embeddings and, with ``attention``, each layer's
    attention into GroupQueryAttention, in place; prunes dead nodes.

    Where the attention is fused the graph takes lengths instead of a mask (``report.bias`` is then None);
    where only the mask is replaced, it takes the bias ``report.bias`` describes.
    """
    report = FusionReport()
    graph = model.graph
    report.rms_norm = _fuse_rms_norms(graph)
    report.skip_rms_norm = _fuse_skip_adds(graph)
    report.rotary = _fuse_rotary(graph, max_positions)
    report.bias = external_attention_bias(graph)
    if attention and report.bias is not None and report.rotary:
        report.attention = fuse_attention(graph)
        if report.attention:
            report.bias = None
    if report.total:
        prune(graph)
        if not any(op.domain == MS_DOMAIN for op in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return report


def _fuse_rms_norms(graph: onnx.GraphProto) -> int:
    """``w * (x * 1/sqrt(mean(x^2) + eps))`` or ``w * (x / sqrt(mean(x^2) + eps))`` (optionally cast to fp32
    around it) -> SimplifiedLayerNormalization."""
    g = GraphIndex(graph)
    fused = 0
    for pow_node in list(graph.node):
        exponent = g.constant(pow_node.input[1]) if pow_node.op_type == "Pow" else None
        if exponent is None or exponent.size != 1 or float(exponent.reshape(())) != 2.0:
            continue
        x = pow_node.input[0]
        mean = g.only_use(pow_node.output[0])
        add = mean and g.only_use(mean.output[0])
        sqrt = add and g.only_use(add.output[0])
        scale = sqrt and _normalized(g, sqrt, x)
        if not (mean and mean.op_type == "ReduceMean" and add and add.op_type == "Add" and sqrt
                and sqrt.op_type == "Sqrt" and scale):
            continue
        if [a.ints for a in mean.attribute if a.name == "axes"] not in ([[-1]], []) or len(mean.input) > 1:
            continue
        eps = g.constant(other_input(add, mean.output[0]))
        after = g.only_use(scale.output[0])
        cast_in = g.source(x, "Cast")
        normed, last = scale, after
        if after is not None and after.op_type == "Cast" and cast_in is not None:
            x, normed, last = cast_in.input[0], after, g.only_use(after.output[0])
        if eps is None or eps.size != 1 or last is None or last.op_type != "Mul":
            continue
        weight = other_input(last, normed.output[0])
        if weight not in g.initializers:
            continue
        norm = helper.make_node("SimplifiedLayerNormalization", [x, weight], [last.output[0]],
                                name=f"{last.name or last.output[0]}/SimplifiedLayerNorm",
                                epsilon=float(eps.reshape(())), axis=-1, stash_type=1)
        graph.node.insert(list(graph.node).index(last), norm)
        last.output[0] = last.output[0] + "/unfused"
        fused += 1
    return fused


def _normalized(g: GraphIndex, sqrt: onnx.NodeProto, x: str) -> onnx.NodeProto | None:
    """The node computing ``x / sqrt`` (as ``Div``, or ``Mul`` by a ``Reciprocal``), if that is the only use."""
    user = g.only_use(sqrt.output[0])
    if user is not None and user.op_type == "Div" and list(user.input) == [x, sqrt.output[0]]:
        return user
    scale = user and user.op_type == "Reciprocal" and g.only_use(user.output[0])
    if user is not None and scale and scale.op_type == "Mul" and other_input(scale, user.output[0]) == x:
        return scale
    return None


def _fuse_skip_adds(graph: onnx.GraphProto) -> int:
    """``Add(a, b)`` feeding a SimplifiedLayerNormalization -> SkipSimplifiedLayerNormalization (sum as output 3)."""
    g = GraphIndex(graph)
    fused = 0
    for norm in list(graph.node):
        if norm.op_type != "SimplifiedLayerNormalization":
            continue
        add = g.source(norm.input[0], "Add")
        if add is None or any(name in g.initializers for name in add.input):
            continue
        eps = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
        total = add.output[0]
        skip = helper.make_node("SkipSimplifiedLayerNormalization", [add.input[0], add.input[1], norm.input[1]],
                                [norm.output[0], "", "", total], name=f"{norm.name}/Skip", domain=MS_DOMAIN,
                                epsilon=eps)
        graph.node.insert(list(graph.node).index(norm), skip)
        norm.output[0] = norm.output[0] + "/unfused"
        add.output[0] = total + "/unfused"
        fused += 1
    return fused


def _fuse_rotary(graph: onnx.GraphProto, max_positions: int) -> int:
    """``x*cos + swap_halves(x)*signed_sin`` on ``[batch, heads, seq, head_dim]`` -> RotaryEmbedding."""
    g = GraphIndex(graph)
    caches: dict[tuple[str, str], tuple[str, str]] = {}
    fused = 0
    for add in list(graph.node):
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        muls = [g.source(name, "Mul") for name in add.input]
        if muls[0] is None or muls[1] is None:
            continue
        for plain, rotated in ((muls[0], muls[1]), (muls[1], muls[0])):
            concat = next((c for c in (g.source(n, "Concat") for n in rotated.input) if c is not None), None)
            if concat is None or len(concat.input) != 2:
                continue
            split = g.source(concat.input[0], "Split")
            if split is None or list(split.output) != [concat.input[1], concat.input[0]]:
                continue
            x = split.input[0]
            if x not in plain.input:
                continue
            cos, sin = other_input(plain, x), other_input(rotated, concat.output[0])
            found = _rotary_source(g, cos, sin)
            if found is None:
                continue
            positions, inv_freq, dtype = found
            if (cos, sin) not in caches:
                caches[(cos, sin)] = _add_caches(graph, inv_freq, max_positions, dtype, len(caches))
            cos_cache, sin_cache = caches[(cos, sin)]
            rope = helper.make_node("RotaryEmbedding", [x, positions, cos_cache, sin_cache], [add.output[0]],
                                    name=f"{add.name or add.output[0]}/RotaryEmbedding", domain=MS_DOMAIN,
                                    interleaved=0)
            graph.node.insert(list(graph.node).index(add), rope)
            add.output[0] = add.output[0] + "/unfused"
            fused += 1
            break
    return fused


def _rotary_source(g: GraphIndex, cos: str, sin: str) -> tuple[str, np.ndarray, type[np.floating]] | None:
    """The position ids, inverse frequencies and element type behind a (cos, signed sin) pair built from them."""
    dtype: type[np.floating] = np.float32
    cos_cast, sin_cast = g.source(cos, "Cast"), g.source(sin, "Cast")
    if cos_cast is not None and sin_cast is not None:
        if any(a.i != TensorProto.FLOAT16 for a in (*cos_cast.attribute, *sin_cast.attribute) if a.name == "to"):
            return None
        cos, sin, dtype = cos_cast.input[0], sin_cast.input[0], np.float16
    chain = []
    name = cos
    for op_type in ("Unsqueeze", "Concat", "Cos", "Mul"):
        node = g.source(name, op_type)
        if node is None:
            return None
        chain.append(node)
        name = node.input[0]
    mul = chain[-1]
    inv_freq = g.constant(mul.input[1])
    if inv_freq is None:
        return None
    node = g.source(mul.input[0], "Unsqueeze")
    cast = node and g.source(node.input[0], "Cast")
    if cast is None or not _is_signed_sin(g, sin, mul.output[0]):
        return None
    return cast.input[0], inv_freq.astype(np.float32).reshape(-1), dtype


def _is_signed_sin(g: GraphIndex, sin: str, freqs: str) -> bool:
    unsqueeze = g.source(sin, "Unsqueeze")
    concat = unsqueeze and g.source(unsqueeze.input[0], "Concat")
    if concat is None or len(concat.input) != 2:
        return False
    neg = g.source(concat.input[0], "Neg")
    sin_node = g.source(concat.input[1], "Sin")
    return bool(neg and sin_node and neg.input[0] == sin_node.output[0] and sin_node.input[0] == freqs)


def _add_caches(graph: onnx.GraphProto, inv_freq: np.ndarray, positions: int, dtype: type[np.floating],
                index: int) -> tuple[str, str]:
    freqs = np.arange(positions, dtype=np.float32)[:, None] * inv_freq[None, :]
    names = (f"rotary_cos_cache_{index}", f"rotary_sin_cache_{index}")
    graph.initializer.extend([numpy_helper.from_array(np.cos(freqs).astype(dtype), names[0]),
                              numpy_helper.from_array(np.sin(freqs).astype(dtype), names[1])])
    return names


