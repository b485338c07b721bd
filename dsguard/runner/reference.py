"""A plain numpy forward pass of the Qwen2 decoder, in float64: the yardstick the ONNX graphs are checked against.

It follows Hugging Face's Qwen2 modelling code step by step (``repeat_kv``, ``rotate_half``, boolean masks)
and shares nothing with :mod:`dsguard.runner.graph` but the weight names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dsguard.runner.shape import ModelShape

Array = NDArray[np.float64]
KeyValue = tuple[Array, Array]


def forward(weights: Mapping[str, NDArray[Any]], shape: ModelShape, input_ids: NDArray[np.int64],
            attention_mask: NDArray[np.int64], position_ids: NDArray[np.int64],
            past: Sequence[KeyValue] | None = None) -> tuple[Array, list[KeyValue]]:
    """Logits ``[batch, seq, vocab]`` and the key/value cache ``[batch, kv_heads, past+seq, head_dim]`` per layer.

    A query position that may attend to no key (a left-padding position) gets a zero attention output.
    """
    batch, seq = input_ids.shape
    if past is None:
        empty = np.zeros((batch, shape.num_key_value_heads, 0, shape.head_dim))
        past = [(empty, empty)] * shape.num_hidden_layers
    w = {name: np.asarray(value, dtype=np.float64) for name, value in weights.items()}
    hidden = w["model.embed_tokens.weight"][input_ids]
    cos, sin = _rotary(shape, position_ids)
    total = past[0][0].shape[2] + seq
    visible = _visibility(attention_mask.astype(bool), seq, total)
    present: list[KeyValue] = []
    for index in range(shape.num_hidden_layers):
        layer = f"model.layers.{index}"
        normed = _rms_norm(hidden, w[f"{layer}.input_layernorm.weight"], shape.rms_norm_eps)
        attended, cache = _attention(w, shape, layer, normed, cos, sin, visible, past[index])
        present.append(cache)
        hidden = hidden + attended
        normed = _rms_norm(hidden, w[f"{layer}.post_attention_layernorm.weight"], shape.rms_norm_eps)
        gate = normed @ w[f"{layer}.mlp.gate_proj.weight"]
        up = normed @ w[f"{layer}.mlp.up_proj.weight"]
        hidden = hidden + (_silu(gate) * up) @ w[f"{layer}.mlp.down_proj.weight"]
    logits = _rms_norm(hidden, w["model.norm.weight"], shape.rms_norm_eps) @ w["lm_head.weight"]
    return logits, present


def _rms_norm(x: Array, weight: Array, eps: float) -> Array:
    variance = np.mean(x * x, axis=-1, keepdims=True)
    normed: Array = weight * (x / np.sqrt(variance + eps))
    return normed


def _silu(x: Array) -> Array:
    return x / (1.0 + np.exp(-x))


def _rotary(shape: ModelShape, position_ids: NDArray[np.int64]) -> tuple[Array, Array]:
    inv_freq = 1.0 / shape.rope_theta ** (np.arange(0, shape.head_dim, 2, dtype=np.float64) / shape.head_dim)
    freqs = position_ids[..., None].astype(np.float64) * inv_freq
    angles = np.concatenate([freqs, freqs], axis=-1)[:, None, :, :]
    return np.cos(angles), np.sin(angles)


def _rotate_half(x: Array) -> Array:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _visibility(attention_mask: NDArray[np.bool_], seq: int, total: int) -> NDArray[np.bool_]:
    """``[batch, 1, seq, total]``: query i (at absolute position total-seq+i) sees key j <= it that is not padding."""
    query_positions = np.arange(total - seq, total)[:, None]
    causal = np.arange(total)[None, :] <= query_positions
    return causal[None, None, :, :] & attention_mask[:, None, None, :]


def _heads(x: Array, count: int) -> Array:
    batch, seq, _ = x.shape
    return x.reshape(batch, seq, count, -1).transpose(0, 2, 1, 3)


def _attention(w: Mapping[str, Array], shape: ModelShape, layer: str, x: Array, cos: Array, sin: Array,
               visible: NDArray[np.bool_], past: KeyValue) -> tuple[Array, KeyValue]:
    attn = f"{layer}.self_attn"
    query = _heads(x @ w[f"{attn}.q_proj.weight"] + w[f"{attn}.q_proj.bias"], shape.num_attention_heads)
    key = _heads(x @ w[f"{attn}.k_proj.weight"] + w[f"{attn}.k_proj.bias"], shape.num_key_value_heads)
    value = _heads(x @ w[f"{attn}.v_proj.weight"] + w[f"{attn}.v_proj.bias"], shape.num_key_value_heads)
    query = query * cos + _rotate_half(query) * sin
    key = key * cos + _rotate_half(key) * sin
    key = np.concatenate([np.asarray(past[0], np.float64), key], axis=2)
    value = np.concatenate([np.asarray(past[1], np.float64), value], axis=2)
    repeats = shape.num_attention_heads // shape.num_key_value_heads
    all_keys, all_values = np.repeat(key, repeats, axis=1), np.repeat(value, repeats, axis=1)
    scores = query @ all_keys.transpose(0, 1, 3, 2) / np.sqrt(shape.head_dim)
    scores = np.where(visible, scores, -np.inf)
    peak = np.max(scores, axis=-1, keepdims=True)
    weights = np.exp(scores - np.where(np.isfinite(peak), peak, 0.0))
    total = weights.sum(axis=-1, keepdims=True)
    probs = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    context = (probs @ all_values).transpose(0, 2, 1, 3)
    context = context.reshape(context.shape[0], context.shape[1], shape.hidden_size)
    return context @ w[f"{attn}.o_proj.weight"], (key, value)
