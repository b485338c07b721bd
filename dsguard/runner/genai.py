"""``genai_config.json`` for a bundle, so onnxruntime-genai runs the very same ONNX files (the speed reference)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dsguard.runner.errors import BundleError
from dsguard.runner.shape import ModelShape
from dsguard.runner.tiny import DTYPES, model_filename


def genai_config(bundle: Path, dtype: str) -> dict[str, Any]:
    """The onnxruntime-genai configuration of ``bundle``'s ``dtype`` graph, from its ``config.json``.

    The graphs concatenate past and new keys, so past and present buffers are separate tensors
    (``past_present_share_buffer`` false); greedy search by default.
    """
    if dtype not in DTYPES:
        raise BundleError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}", file=bundle)
    model_path = bundle / "onnx" / model_filename(dtype)
    if not model_path.is_file():
        raise BundleError(f"no ONNX graph for dtype {dtype!r}", file=model_path)
    config_path = bundle / "config.json"
    config = _read_object(config_path)
    shape = ModelShape.from_config(config, source=str(config_path))
    eos = _read_object(bundle / "generation_config.json").get("eos_token_id", config.get("eos_token_id"))
    if eos is None:
        raise BundleError("missing", file=config_path, key="eos_token_id")
    first_eos = eos[0] if isinstance(eos, list) and eos else eos
    return {
        "model": {
            "type": "qwen2",
            "bos_token_id": config.get("bos_token_id", first_eos),
            "eos_token_id": eos,
            "pad_token_id": first_eos,
            "vocab_size": shape.vocab_size,
            "context_length": shape.max_position_embeddings,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": f"onnx/{model_filename(dtype)}",
                "head_size": shape.head_dim,
                "hidden_size": shape.hidden_size,
                "num_attention_heads": shape.num_attention_heads,
                "num_key_value_heads": shape.num_key_value_heads,
                "num_hidden_layers": shape.num_hidden_layers,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {
            "max_length": shape.max_position_embeddings,
            "min_length": 0,
            "do_sample": False,
            "num_beams": 1,
            "num_return_sequences": 1,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
            "repetition_penalty": 1.0,
            "length_penalty": 1.0,
            "diversity_penalty": 0.0,
            "no_repeat_ngram_size": 0,
            "early_stopping": True,
            "past_present_share_buffer": False,
        },
    }


def write_genai_config(bundle: Path, dtype: str) -> Path:
    """Write ``bundle/genai_config.json`` pointing at the ``dtype`` graph; returns its path."""
    path = bundle / "genai_config.json"
    path.write_text(json.dumps(genai_config(bundle, dtype), indent=2) + "\n", encoding="utf-8")
    return path


def _read_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError("missing", file=path) from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise BundleError(f"unreadable JSON: {error}", file=path) from None
    if not isinstance(data, dict):
        raise BundleError("expected a JSON object", file=path)
    return data
