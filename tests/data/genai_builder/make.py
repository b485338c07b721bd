"""Regenerates the onnxruntime-genai model-builder graphs these tests read (not run by the test suite).

The builder needs torch and transformers, which the test dependencies leave out, so its output is kept
here: for ``fp32`` and ``int4``, the ``model.onnx`` it writes (the graph, its weights left in an external
file that is not kept) and its ``genai_config.json``. ``tests/genai_builder.py`` fills in the weights of
the bundled tiny model at test time.

    python tests/data/genai_builder/make.py --builder-python /path/to/python-with-torch-and-transformers

writes the tiny model as a Hugging Face Qwen2 folder (safetensors; ``safetensors`` must be importable
here), runs ``python -m onnxruntime_genai.models.builder -e cpu`` with that interpreter for each
precision, and copies the two files per precision beside this script.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from dsguard.runner.tiny import TINY, RandomWeights, ensure_bundled

HERE = Path(__file__).resolve().parent
PRECISIONS = ("fp32", "int4")


def write_hugging_face_folder(target: Path) -> None:
    """The bundled tiny model's weights as ``model.safetensors`` ([out, in] linear weights) with its files."""
    save_file = importlib.import_module("safetensors.numpy").save_file
    weights = RandomWeights(TINY)
    tensors = {name: np.ascontiguousarray(weights[name].T) if weights[name].ndim == 2
               and name != "model.embed_tokens.weight" else weights[name] for name in weights}
    target.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    bundle = ensure_bundled("tiny-deepseek", ("fp32",))
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(bundle / name, target / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builder-python", required=True, help="an interpreter with torch, transformers and "
                        "onnxruntime-genai")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "hf"
        write_hugging_face_folder(source)
        for precision in PRECISIONS:
            out = Path(scratch) / precision
            subprocess.run([args.builder_python, "-m", "onnxruntime_genai.models.builder", "-i", str(source),
                            "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(Path(scratch) / "cache")],
                           check=True)
            (HERE / precision).mkdir(exist_ok=True)
            for name in ("model.onnx", "genai_config.json"):
                shutil.copy(out / name, HERE / precision / name)
            print(f"wrote {HERE / precision}")


if __name__ == "__main__":
    main()
