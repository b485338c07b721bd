"""Model-builder bundles for tests: the graphs onnxruntime-genai's builder wrote, with the tiny model's weights.

``tests/data/genai_builder/<precision>/model.onnx`` is the builder's output for the bundled tiny model (see
``make.py`` there); its weights file is not kept. :func:`builder_bundle` writes it back from the same
deterministic weights, naming them the builder's way: q, k and v projections merged, ``MatMul.weight``
``[in, out]``, rotary ``cos_cache`` / ``sin_cache`` tables, and for ``int4`` blocks of 32 packed by
ONNX Runtime's own 4-bit quantizer (symmetric, no zero points), as the builder packs them.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import numpy_helper

from dsguard.runner.quantize import quantize_block4
from dsguard.runner.tiny import TINY, RandomWeights, ensure_bundled

BUILT = Path(__file__).parent / "data" / "genai_builder"
PRECISIONS = ("fp32", "int4")
BLOCK = 32


def builder_bundle(precision: str, target: Path) -> Path:
    """A model-builder folder for ``precision``: graph, weights, ``genai_config.json``, tokenizer, template."""
    target.mkdir(parents=True)
    model = onnx.load(str(BUILT / precision / "model.onnx"), load_external_data=False)
    weights = _BuilderWeights(RandomWeights(TINY))
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        value = weights.tensor(tensor.name)
        if list(value.shape) != list(tensor.dims):
            raise AssertionError(f"{tensor.name}: built {value.shape}, the graph has {list(tensor.dims)}")
        model.graph.initializer[index].CopyFrom(numpy_helper.from_array(value, tensor.name))
    onnx.save_model(model, str(target / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
                    size_threshold=0)
    shutil.copy(BUILT / precision / "genai_config.json", target / "genai_config.json")
    bundle = ensure_bundled("tiny-deepseek", ("fp32",))
    shutil.copy(bundle / "tokenizer.json", target / "tokenizer.json")
    _split_template(bundle / "tokenizer_config.json", target)
    return target


def _split_template(tokenizer_config: Path, target: Path) -> None:
    """The builder keeps the chat template in ``chat_template.jinja``, not in ``tokenizer_config.json``."""
    config = json.loads(tokenizer_config.read_text(encoding="utf-8"))
    (target / "chat_template.jinja").write_text(config.pop("chat_template"), encoding="utf-8")
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


class _BuilderWeights:
    def __init__(self, weights: RandomWeights) -> None:
        self.weights = weights
        self.shape = weights.shape

    def tensor(self, name: str) -> NDArray[np.generic]:
        if name.endswith(("_Q4", "_scales")):
            packed, scales = self._q4(name.rsplit("_", 1)[0])
            return packed if name.endswith("_Q4") else scales
        if name in ("cos_cache", "sin_cache"):
            return self._rotary(name)
        return self._float(name)

    def _float(self, name: str) -> NDArray[np.float32]:
        w = self.weights
        if match := re.fullmatch(r"model\.layers\.(\d+)\.attn\.qkv_proj\.(MatMul\.weight|Add\.bias)", name):
            part = "weight" if match.group(2) == "MatMul.weight" else "bias"
            pieces = [w[f"model.layers.{match.group(1)}.self_attn.{p}_proj.{part}"] for p in "qkv"]
            return np.concatenate(pieces, axis=-1)
        if match := re.fullmatch(r"model\.layers\.(\d+)\.attn\.o_proj\.MatMul\.weight", name):
            return w[f"model.layers.{match.group(1)}.self_attn.o_proj.weight"]
        if match := re.fullmatch(r"model\.layers\.(\d+)\.mlp\.(\w+)\.MatMul\.weight", name):
            return w[f"model.layers.{match.group(1)}.mlp.{match.group(2)}.weight"]
        if re.fullmatch(r"model\.layers\.\d+\.final_norm_layernorm\.weight", name):
            return w["model.norm.weight"]
        if name == "lm_head.MatMul.weight":
            return w["lm_head.weight"]
        return w[name]

    def _rotary(self, name: str) -> NDArray[np.float32]:
        """The tables in float32 arithmetic, as the builder computes them (within one ulp of its values)."""
        shape, f32 = self.shape, np.float32
        exponents = np.arange(0, shape.head_dim, 2).astype(f32) / f32(shape.head_dim)
        inv_freq = (f32(1.0) / f32(shape.rope_theta) ** exponents).astype(f32)
        angles = np.outer(np.arange(shape.max_position_embeddings, dtype=f32), inv_freq).astype(f32)
        return np.cos(angles) if name == "cos_cache" else np.sin(angles)

    def _q4(self, name: str) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
        return quantize_block4(self._float(name), BLOCK)
