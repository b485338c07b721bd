"""The dimensions of a DeepSeek-R1-Distill-Qwen (Qwen2) decoder and the parameters they imply."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from dsguard.runner.errors import BundleError


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """Sizes of a Qwen2 decoder, as named in its Hugging Face ``config.json``."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_width(self) -> int:
        """Width of the key (and of the value) projection: all key/value heads together."""
        return self.num_key_value_heads * self.head_dim

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter by name, in graph order; projection matrices are stored ``[in, out]``."""
        hidden, inner, kv = self.hidden_size, self.intermediate_size, self.kv_width
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab_size, hidden)}
        for index in range(self.num_hidden_layers):
            layer = f"model.layers.{index}"
            shapes.update({
                f"{layer}.input_layernorm.weight": (hidden,),
                f"{layer}.self_attn.q_proj.weight": (hidden, hidden),
                f"{layer}.self_attn.q_proj.bias": (hidden,),
                f"{layer}.self_attn.k_proj.weight": (hidden, kv),
                f"{layer}.self_attn.k_proj.bias": (kv,),
                f"{layer}.self_attn.v_proj.weight": (hidden, kv),
                f"{layer}.self_attn.v_proj.bias": (kv,),
                f"{layer}.self_attn.o_proj.weight": (hidden, hidden),
                f"{layer}.post_attention_layernorm.weight": (hidden,),
                f"{layer}.mlp.gate_proj.weight": (hidden, inner),
                f"{layer}.mlp.up_proj.weight": (hidden, inner),
                f"{layer}.mlp.down_proj.weight": (inner, hidden),
            })
        shapes["model.norm.weight"] = (hidden,)
        shapes["lm_head.weight"] = (hidden, self.vocab_size)
        return shapes

    def num_parameters(self) -> int:
        """How many numbers the weights hold."""
        total = 0
        for dims in self.weight_shapes().values():
            count = 1
            for dim in dims:
                count *= dim
            total += count
        return total

    def to_config(self) -> dict[str, Any]:
        """The keys of a Qwen2 ``config.json`` that describe this shape."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, source: str) -> ModelShape:
        """Read a Qwen2 ``config.json`` mapping; ``source`` names the file in errors."""
        heads = _positive_int(config, "num_attention_heads", source)
        shape = cls(
            vocab_size=_positive_int(config, "vocab_size", source),
            hidden_size=_positive_int(config, "hidden_size", source),
            intermediate_size=_positive_int(config, "intermediate_size", source),
            num_hidden_layers=_positive_int(config, "num_hidden_layers", source),
            num_attention_heads=heads,
            num_key_value_heads=_positive_int(config, "num_key_value_heads", source, default=heads),
            rms_norm_eps=_positive_float(config, "rms_norm_eps", source, default=1e-6),
            rope_theta=_positive_float(config, "rope_theta", source, default=10000.0),
            max_position_embeddings=_positive_int(config, "max_position_embeddings", source, default=4096),
        )
        if shape.hidden_size % heads:
            raise BundleError(f"hidden_size {shape.hidden_size} is not a multiple of {heads}",
                              file=source, key="num_attention_heads")
        if shape.head_dim % 2:
            raise BundleError(f"head width {shape.head_dim} must be even for rotary embeddings",
                              file=source, key="num_attention_heads")
        if heads % shape.num_key_value_heads:
            raise BundleError(f"{heads} attention heads cannot be shared by {shape.num_key_value_heads} groups",
                              file=source, key="num_key_value_heads")
        return shape


_MISSING = object()


def _value(config: Mapping[str, Any], key: str, source: str, default: object) -> object:
    value = config.get(key, default)
    if value is _MISSING:
        raise BundleError("missing", file=source, key=key)
    return value


def _positive_int(config: Mapping[str, Any], key: str, source: str, default: object = _MISSING) -> int:
    value = _value(config, key, source, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BundleError(f"expected a positive integer, got {value!r}", file=source, key=key)
    return value


def _positive_float(config: Mapping[str, Any], key: str, source: str, default: object = _MISSING) -> float:
    value = _value(config, key, source, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise BundleError(f"expected a positive number, got {value!r}", file=source, key=key)
    return float(value)


TINY = ModelShape(vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
"""The bundled test model: DeepSeek-R1-Distill-Qwen's architecture at toy widths."""

MEDIUM = ModelShape(vocab_size=2048, hidden_size=1536, intermediate_size=8960, num_hidden_layers=2,
                    num_attention_heads=12, num_key_value_heads=2)
"""Two layers at DeepSeek-R1-Distill-Qwen-1.5B's widths, for benchmarks."""
