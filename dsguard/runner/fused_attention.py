"""Load-time fusion of each layer's attention: the bias as a graph input, then GroupQueryAttention.

The bias the export builds from ``attention_mask`` (causal AND not padding) every step becomes an input
the host fills with one numpy call. Then rotary embeddings, the cache concatenation and the grouped
attention of a layer become one GroupQueryAttention node, which appends to the cache in place and needs
no mask at all: each row of a batch keeps its own length (``attention_seqlens_k``), so no row attends to
another row's padding.
"""

from __future__ import annotations

import dataclasses

import onnx
from onnx import TensorProto, helper

from dsguard.runner.graphmatch import MS_DOMAIN, GraphIndex, other_input

ATTENTION_BIAS = "attention_bias"
SEQLENS = "attention_seqlens_k"
TOTAL_LENGTH = "attention_total_length"


@dataclasses.dataclass(frozen=True)
class AttentionBias:
    """The graph takes its additive attention bias as input ``attention_bias`` instead of ``attention_mask``.

    Shape ``[batch, 1, groups * seq, total]``: for query ``s`` of row ``b``, repeated ``groups`` times,
    0 where key ``t`` is visible (``t <= past + s`` and not padding), ``fill`` elsewhere.
    """

    groups: int
    fill: float
    dtype: str = "float32"


def external_attention_bias(graph: onnx.GraphProto) -> AttentionBias | None:
    """Replaces the bias the graph builds from ``attention_mask`` (causal AND not padding) by a graph input.

    Every step rebuilt it with a dozen tiny nodes; the host builds the same values with one numpy call.
    """
    g = GraphIndex(graph)
    biases = set()
    for node in graph.node:
        if node.op_type != "Softmax":
            continue
        add = g.source(node.input[0], "Add")
        built = [name for name in add.input if g.source(name, "Tile") or g.source(name, "Where")] if add else []
        if len(built) != 1:
            return None
        biases.add(built[0])
    if len(biases) != 1:
        return None
    bias = biases.pop()
    groups = 1
    tile = g.source(bias, "Tile")
    where = g.source(tile.input[0], "Where") if tile is not None else g.source(bias, "Where")
    if tile is not None:
        repeats = g.constant(tile.input[1])
        if repeats is None or repeats.tolist()[:2] + repeats.tolist()[3:] != [1, 1, 1]:
            return None
        groups = int(repeats[2])
    if where is None:
        return None
    open_value, fill = g.constant(where.input[1]), g.constant(where.input[2])
    both = g.source(where.input[0], "And")
    if open_value is None or fill is None or open_value.size != 1 or float(open_value.reshape(())) != 0.0 \
            or both is None or not _is_causal_and_mask(g, both):
        return None
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name == bias:
                node.input[index] = ATTENTION_BIAS
    graph.input.append(helper.make_tensor_value_info(ATTENTION_BIAS, helper.np_dtype_to_tensor_dtype(fill.dtype),
                                                     ["batch_size", 1, "bias_rows", "total_sequence_length"]))
    return AttentionBias(groups=groups, fill=float(fill.reshape(())), dtype=str(fill.dtype))


def _is_causal_and_mask(g: GraphIndex, both: onnx.NodeProto) -> bool:
    kinds = {g.producer[name].op_type for name in both.input if name in g.producer}
    if kinds != {"LessOrEqual", "Unsqueeze"}:
        return False
    unsqueeze = next(g.producer[n] for n in both.input if g.producer[n].op_type == "Unsqueeze")
    cast = g.source(unsqueeze.input[0], "Cast")
    return cast is not None and g.producer.get(cast.input[0]) is None and cast.input[0] in {
        value.name for value in g.graph.input}


@dataclasses.dataclass
class _Attention:
    """One layer's attention as the export spells it, from the q/k/v projections to the merged heads."""

    q: str
    k: str
    v: str
    past_key: str
    past_value: str
    rotary: onnx.NodeProto
    heads: int
    kv_heads: int
    scale: float
    present_key: onnx.NodeProto
    present_value: onnx.NodeProto
    merged: onnx.NodeProto


def fuse_attention(graph: onnx.GraphProto) -> int:
    """Each layer's rotary, cache concat and grouped attention -> one GroupQueryAttention (all layers or none).

    The fused graph takes ``attention_seqlens_k`` (int32 ``[batch]``: the positions each row has cached
    before this call plus its new ones, minus one) and ``attention_total_length`` (int32 scalar, the longest
    row's), and no mask: rows are right-aligned in buffers with room to grow, GroupQueryAttention attends
    causally over each row's own positions and appends the new keys after them.
    """
    g = GraphIndex(graph)
    layers = [_match_attention(g, node) for node in graph.node if node.op_type == "Softmax"]
    if not layers or any(layer is None for layer in layers):
        return 0
    graph.input.extend([helper.make_tensor_value_info(SEQLENS, TensorProto.INT32, ["batch_size"]),
                        helper.make_tensor_value_info(TOTAL_LENGTH, TensorProto.INT32, [])])
    for layer in layers:
        assert layer is not None
        _, position_ids, cos_cache, sin_cache = layer.rotary.input
        outputs = [layer.merged.output[0], layer.present_key.output[0], layer.present_value.output[0]]
        node = helper.make_node(
            "GroupQueryAttention", [layer.q, layer.k, layer.v, layer.past_key, layer.past_value, SEQLENS,
                                    TOTAL_LENGTH, cos_cache, sin_cache, position_ids],
            outputs, name=f"{layer.merged.name or outputs[0]}/GroupQueryAttention", domain=MS_DOMAIN,
            num_heads=layer.heads, kv_num_heads=layer.kv_heads, scale=layer.scale, do_rotary=1, rotary_interleaved=0)
        graph.node.insert(list(graph.node).index(layer.merged), node)
        for old in (layer.merged, layer.present_key, layer.present_value):
            old.output[0] = old.output[0] + "/unfused"
    return len(layers)


def _match_attention(g: GraphIndex, softmax: onnx.NodeProto) -> _Attention | None:
    add = g.source(softmax.input[0], "Add")
    if add is None or ATTENTION_BIAS not in add.input:
        return None
    scores = g.source(other_input(add, ATTENTION_BIAS), "MatMul")
    keys = scores and g.source(scores.input[1], "Transpose")
    grouped = scores and g.source(scores.input[0], "Reshape")
    scaled = grouped and g.source(grouped.input[0], "Mul")
    context = g.only_use(softmax.output[0])
    if not (keys and scaled and context and context.op_type == "MatMul" and context.input[0] == softmax.output[0]):
        return None
    if [list(a.ints) for a in keys.attribute if a.name == "perm"] != [[0, 1, 3, 2]]:
        return None
    present_key, present_value = g.source(keys.input[0], "Concat"), g.source(context.input[1], "Concat")
    query_rotary = g.source(scaled.input[0], "RotaryEmbedding") or g.source(scaled.input[1], "RotaryEmbedding")
    if not (present_key and present_value and query_rotary and len(present_key.input) == 2
            and len(present_value.input) == 2):
        return None
    scale = g.constant(other_input(scaled, query_rotary.output[0]))
    key_rotary = g.source(present_key.input[1], "RotaryEmbedding")
    if scale is None or scale.size != 1 or key_rotary is None or list(key_rotary.input[1:]) != list(
            query_rotary.input[1:]):
        return None
    q, heads = _heads_of(g, query_rotary.input[0])
    k, kv_heads = _heads_of(g, key_rotary.input[0])
    v, v_heads = _heads_of(g, present_value.input[1])
    merged = _merged_heads(g, context)
    inputs = {value.name for value in g.graph.input}
    if not (q and k and v and merged and heads and kv_heads == v_heads and present_key.input[0] in inputs
            and present_value.input[0] in inputs):
        return None
    return _Attention(q=q, k=k, v=v, past_key=present_key.input[0], past_value=present_value.input[0],
                      rotary=query_rotary, heads=heads, kv_heads=kv_heads, scale=float(scale.reshape(())),
                      present_key=present_key, present_value=present_value, merged=merged)


def _heads_of(g: GraphIndex, name: str) -> tuple[str | None, int]:
    """``Transpose(Reshape(x, [0, 0, heads, dim]), perm 0,2,1,3)`` -> (x, heads)."""
    transpose = g.source(name, "Transpose")
    reshape = transpose and g.source(transpose.input[0], "Reshape")
    shape = reshape and g.constant(reshape.input[1])
    if shape is None or transpose is None or reshape is None or shape.size != 4 or shape[2] <= 0:
        return None, 0
    if [list(a.ints) for a in transpose.attribute if a.name == "perm"] != [[0, 2, 1, 3]]:
        return None, 0
    return reshape.input[0], int(shape[2])


def _merged_heads(g: GraphIndex, context: onnx.NodeProto) -> onnx.NodeProto | None:
    """The last of ``Reshape -> Transpose(0,2,1,3) -> Reshape`` turning ``[batch, heads, seq, dim]`` into hidden."""
    first = g.only_use(context.output[0])
    transpose = first and first.op_type == "Reshape" and g.only_use(first.output[0])
    last = transpose and transpose.op_type == "Transpose" and g.only_use(transpose.output[0])
    if not last or last.op_type != "Reshape" or not transpose:
        return None
    if [list(a.ints) for a in transpose.attribute if a.name == "perm"] != [[0, 2, 1, 3]]:
        return None
    return last
