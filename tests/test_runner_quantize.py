"""Quantizers of bundle graphs (dynamic int8, 4-bit MatMulNBits) and their drift report against fp32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from dsguard.runner import quantize
from dsguard.runner.errors import BundleError
from dsguard.runner.quantize import compare, quantize_bundle, quantize_int8, quantize_q4
from dsguard.runner.tiny import write_bundle

from .genai_builder import builder_bundle

K, HIDDEN, N = 64, 96, 48


def write_mlp(path: Path, dtype: type[np.floating[Any]] = np.float32, *, external: bool = False) -> None:
    """x [batch, seq, K] -> MatMul -> Relu -> MatMul -> y, plus y @ y^T, a MatMul of two activations."""
    rng = np.random.default_rng(0)
    first = (rng.standard_normal((K, HIDDEN)) / np.sqrt(K)).astype(dtype)
    second = (rng.standard_normal((HIDDEN, N)) / np.sqrt(HIDDEN)).astype(dtype)
    element = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "first"], ["hidden"]), helper.make_node("Relu", ["hidden"], ["relu"]),
         helper.make_node("MatMul", ["relu", "second"], ["y"]),
         helper.make_node("Transpose", ["y"], ["y_t"], perm=[0, 2, 1]),
         helper.make_node("MatMul", ["y", "y_t"], ["gram"])],
        "mlp", [helper.make_tensor_value_info("x", element, ["batch", "seq", K])],
        [helper.make_tensor_value_info("y", element, ["batch", "seq", N]),
         helper.make_tensor_value_info("gram", element, ["batch", "seq", "seq"])],
        [numpy_helper.from_array(first, "first"), numpy_helper.from_array(second, "second")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + "_data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))


def run(path: Path, dtype: type[np.floating[Any]] = np.float32) -> NDArray[np.float32]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = np.random.default_rng(1).standard_normal((2, 3, K)).astype(dtype)
    return np.asarray(session.run(["y"], {"x": inputs})[0], dtype=np.float32)


def ops(path: Path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node]


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    path = tmp_path / "onnx" / "model.onnx"
    write_mlp(path, external=True)
    return path


def test_int8_runs_weight_matmuls_as_matmulinteger_with_dynamic_activation_quantization(mlp: Path) -> None:
    target = mlp.with_name("model_int8.onnx")
    quantize_int8(mlp, target)
    assert ops(target).count("MatMulInteger") == 2
    assert ops(target).count("DynamicQuantizeLinear") == 2
    assert ops(target).count("MatMul") == 1
    assert np.abs(run(target) - run(mlp)).max() < 0.05


def test_q4_replaces_every_constant_weight_matmul_with_matmulnbits(mlp: Path) -> None:
    target = mlp.with_name("model_q4.onnx")
    quantize_q4(mlp, target)
    model = onnx.load(str(target))
    nbits = [node for node in model.graph.node if node.op_type == "MatMulNBits"]
    assert [(node.input[0], node.output[0]) for node in nbits] == [("x", "hidden"), ("relu", "y")]
    assert {(a.name, a.i) for a in nbits[0].attribute} == {
        ("K", K), ("N", HIDDEN), ("bits", 4), ("block_size", 32), ("accuracy_level", 4)}
    assert ops(target).count("MatMul") == 1
    assert {tensor.name for tensor in model.graph.initializer} == {
        "first_Q4", "first_scales", "second_Q4", "second_scales"}


def test_q4_output_runs_on_cpu_close_to_the_original(mlp: Path) -> None:
    target = mlp.with_name("model_q4.onnx")
    quantize_q4(mlp, target)
    reference = run(mlp)
    assert np.abs(run(target) - reference).mean() < 0.2 * np.abs(reference).mean()


def rows_alone_and_batched(path: Path) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = np.random.default_rng(2).standard_normal((8, 1, K)).astype(np.float32)
    rows[0] *= 50
    alone = np.concatenate([session.run(["y"], {"x": rows[i:i + 1]})[0] for i in range(len(rows))])
    return alone, np.asarray(session.run(["y"], {"x": rows})[0])


def test_q4_rows_give_the_same_result_alone_or_batched(mlp: Path) -> None:
    target = mlp.with_name("model_q4.onnx")
    quantize_q4(mlp, target)
    alone, batched = rows_alone_and_batched(target)
    assert np.array_equal(alone[1:], batched[1:])


def test_int8_rows_depend_on_their_batch_neighbours(mlp: Path) -> None:
    target = mlp.with_name("model_int8.onnx")
    quantize_int8(mlp, target)
    alone, batched = rows_alone_and_batched(target)
    assert not np.array_equal(alone[1:], batched[1:])


def test_q4_of_a_float16_graph_keeps_float16_scales_and_activations(tmp_path: Path) -> None:
    source, target = tmp_path / "model_fp16.onnx", tmp_path / "model_q4f16.onnx"
    write_mlp(source, np.float16)
    quantize_q4(source, target)
    scales = {tensor.name: tensor.data_type for tensor in onnx.load(str(target)).graph.initializer}
    assert scales["first_scales"] == scales["second_scales"] == TensorProto.FLOAT16
    reference = run(source, np.float16)
    assert np.abs(run(target, np.float16) - reference).mean() < 0.2 * np.abs(reference).mean()


def test_quantized_outputs_do_not_depend_on_the_source_weights_file(mlp: Path) -> None:
    targets = [mlp.with_name("model_int8.onnx"), mlp.with_name("model_q4.onnx")]
    quantize_int8(mlp, targets[0])
    quantize_q4(mlp, targets[1])
    mlp.with_name("model.onnx_data").unlink()
    for target in targets:
        assert run(target).shape == (2, 3, N)


def test_outputs_past_the_protobuf_limit_keep_weights_in_an_onnx_data_file(
        mlp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quantize, "EXTERNAL_DATA_THRESHOLD", 1024)
    for name in ("model_int8.onnx", "model_q4.onnx"):
        target = mlp.with_name(name)
        quantize_int8(mlp, target) if name == "model_int8.onnx" else quantize_q4(mlp, target)
        assert target.with_name(name + "_data").is_file()
        assert not target.with_name(name + ".data").exists()
        assert run(target).shape == (2, 3, N)


def test_quantizing_again_replaces_the_previous_weights_file(mlp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quantize, "EXTERNAL_DATA_THRESHOLD", 1024)
    target = mlp.with_name("model_q4.onnx")
    quantize_q4(mlp, target)
    first = target.with_name("model_q4.onnx_data").stat().st_size
    quantize_q4(mlp, target)
    assert target.with_name("model_q4.onnx_data").stat().st_size == first
    assert run(target).shape == (2, 3, N)


def test_q4_quantizes_a_shared_weight_once_and_keeps_it_for_other_readers(tmp_path: Path) -> None:
    weight = np.random.default_rng(0).standard_normal((K, K)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "shared"], ["once"]), helper.make_node("MatMul", ["once", "shared"], ["y"]),
         helper.make_node("ReduceSum", ["shared"], ["total"], keepdims=0)],
        "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", K]),
         helper.make_tensor_value_info("total", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(weight, "shared")])
    source, target = tmp_path / "model.onnx", tmp_path / "model_q4.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(source))
    quantize_q4(source, target)
    assert sorted(tensor.name for tensor in onnx.load(str(target)).graph.initializer) == [
        "shared", "shared_Q4", "shared_scales"]
    assert ops(target) == ["MatMulNBits", "MatMulNBits", "ReduceSum"]
    assert run(target).shape == (2, 3, K)


def test_q4_reports_progress_per_weight(mlp: Path) -> None:
    seen: list[tuple[int, int]] = []
    quantize_q4(mlp, mlp.with_name("model_q4.onnx"), progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 2), (1, 2), (2, 2)]


@pytest.mark.parametrize("block_size", [8, 48])
def test_q4_block_size_must_be_a_power_of_two_from_16(mlp: Path, block_size: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        quantize_q4(mlp, mlp.with_name("model_q4.onnx"), block_size=block_size)


def test_a_source_that_is_not_onnx_is_named(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(b"\x00garbage")
    with pytest.raises(BundleError, match=r"model\.onnx: not an ONNX model"):
        quantize_q4(source, tmp_path / "model_q4.onnx")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("tiny"), dtypes=("fp32", "fp16"))


def test_quantize_bundle_writes_each_dtype_from_its_source_graph(tiny_bundle: Path) -> None:
    assert quantize_bundle(tiny_bundle, "q4f16") == tiny_bundle / "onnx" / "model_q4f16.onnx"
    assert onnx.load(str(tiny_bundle / "onnx" / "model_q4f16.onnx")).graph.input[0].name == "input_ids"
    kv_type = {i.name: i.type.tensor_type.elem_type
               for i in onnx.load(str(tiny_bundle / "onnx" / "model_q4f16.onnx")).graph.input}
    assert kv_type["past_key_values.0.key"] == TensorProto.FLOAT16


def test_quantize_bundle_names_the_missing_source_graph(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "fp32-only", dtypes=("fp32",))
    with pytest.raises(BundleError, match=r"model_fp16\.onnx: missing: q4f16 is made from the fp16 graph"):
        quantize_bundle(bundle, "q4f16")


def test_quantize_bundle_points_a_model_builder_folder_at_the_builder(tmp_path: Path) -> None:
    folder = builder_bundle("fp32", tmp_path / "builder")
    with pytest.raises(BundleError, match=r"builder: an onnxruntime-genai model-builder folder holds one graph"):
        quantize_bundle(folder, "q4")


def test_compare_reports_drift_agreement_and_speed_of_each_dtype(tiny_bundle: Path) -> None:
    quantize_bundle(tiny_bundle, "int8")
    quantize_bundle(tiny_bundle, "q4")
    reports = {report.dtype: report for report in compare(tiny_bundle, ["fp32", "fp16", "int8", "q4"], steps=4)}
    assert reports["fp32"].max_abs_drift == 0 and reports["fp32"].greedy_agreement == 1
    assert 0 < reports["fp16"].max_abs_drift < 0.05
    assert 0 < reports["int8"].mean_abs_drift < 0.2 and reports["int8"].greedy_agreement >= 0.9
    assert 0 < reports["q4"].mean_abs_drift < 1.0 and reports["q4"].greedy_agreement >= 0.5
    assert all(report.decode_tokens_per_second > 0 and report.size_bytes > 0 for report in reports.values())
    assert len({report.positions for report in reports.values()}) == 1


def test_compare_uses_the_given_prompt_and_reports_progress(tiny_bundle: Path) -> None:
    seen: list[tuple[int, int]] = []
    [report] = compare(tiny_bundle, ["fp16"], prompt_ids=[1, 2, 3], steps=2,
                       progress=lambda done, total: seen.append((done, total)))
    assert report.positions == 3 + 2
    assert seen[-1] == (6, 6)


def test_compare_needs_two_decode_steps(tiny_bundle: Path) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        compare(tiny_bundle, ["fp16"], steps=1)
