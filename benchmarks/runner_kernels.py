"""What batching can save on the q4 path: ONNX Runtime's 4-bit ``MatMulNBits`` kernel per row, on this CPU.

The runner's 4-stream target (aggregate >= 2.5x one stream) assumes a decode step of 4 rows costs much
less than 4 steps of one row. A decoder step is mostly its matrix products; this times them alone at
DeepSeek-R1-Distill-Qwen-1.5B's widths (the MLP's 1536x8960 and 8960x1536, the 1536x1536 attention
projection), for 1, 2, 3, 4 and 8 rows: the 4-bit kernel as the runner uses it (block 32, accuracy level 4,
weights packed by :func:`dsguard.runner.quantize.quantize_block4`), next to the fp32 ``MatMul``. The
"4 vs 1 ceiling" is ``4 * t(1 row) / t(4 rows)``: the most a step made only of that product could gain
from batching 4 streams. The CPU's vector extensions are printed, since ONNX Runtime picks its 4-bit
kernels by them (AVX2, AVX-512, AVX-VNNI).

    python benchmarks/runner_kernels.py
    python benchmarks/runner_kernels.py --threads 1 2 --repeats 9
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from _harness import environment, median, positive_int, table
from onnx import TensorProto, helper, numpy_helper

from dsguard.runner.quantize import quantize_block4
from dsguard.runner.session import session_options

SHAPES = ((1536, 8960, "MLP up / gate"), (8960, 1536, "MLP down"), (1536, 1536, "attention out"))
ROWS = (1, 2, 3, 4, 8)
BLOCK = 32
EXTENSIONS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def _product(kind: str, k: int, n: int, weight: np.ndarray) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])
    if kind == "q4":
        packed, scales = quantize_block4(weight, BLOCK)
        node = helper.make_node("MatMulNBits", ["x", "w", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                                block_size=BLOCK, accuracy_level=4)
        weights = [numpy_helper.from_array(packed, "w"), numpy_helper.from_array(scales, "s")]
    else:
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        weights = [numpy_helper.from_array(weight, "w")]
    graph = helper.make_graph([node], kind, [x], [y], initializer=weights)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def _time(session: ort.InferenceSession, rows: int, k: int, *, calls: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean ms per call over ``calls`` calls."""
    x = np.random.default_rng(rows).standard_normal((rows, k), dtype=np.float32)
    for _ in range(10):
        session.run(None, {"x": x})
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            session.run(None, {"x": x})
        samples.append((time.perf_counter() - start) / calls * 1e3)
    return median(samples)


def cpu_extensions() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return "unknown"
    match = re.search(r"^flags\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
    flags = set(match.group(1).split()) if match else set()
    return ", ".join(f"{name} {'yes' if name in flags else 'no'}" for name in EXTENSIONS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive_int, nargs="+", default=[2])
    parser.add_argument("--repeats", type=positive_int, default=7)
    parser.add_argument("--calls", type=positive_int, default=50)
    args = parser.parse_args()
    print("\n".join(environment(["onnxruntime", "numpy"])))
    print(f"cpu extensions: {cpu_extensions()}")
    print(f"median of {args.repeats} repeats of {args.calls} calls; ms per call\n")
    rng = np.random.default_rng(0)
    rows_out = []
    for k, n, what in SHAPES:
        weight = (rng.standard_normal((k, n), dtype=np.float32) / np.float32(np.sqrt(k))).astype(np.float32)
        for kind in ("q4", "fp32"):
            model = _product(kind, k, n, weight)
            for threads in args.threads:
                session = ort.InferenceSession(model, session_options(threads), providers=["CPUExecutionProvider"])
                times = {rows: _time(session, rows, k, calls=args.calls, repeats=args.repeats) for rows in ROWS}
                ceiling = 4 * times[1] / times[4]
                rows_out.append([f"{k}x{n} ({what})", kind, threads, *(f"{times[r]:.3f}" for r in ROWS),
                                 f"{times[4] / 4:.3f}", f"{ceiling:.2f}x"])
    print(table(["product", "kernel", "threads", *(f"{r} row{'s' if r > 1 else ''}" for r in ROWS),
                 "per row at 4", "4 vs 1 ceiling"], rows_out))


if __name__ == "__main__":
    main()
