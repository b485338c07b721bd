"""`dsguard model make-tiny|quantize|info`, through the real `dsguard` command group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from dsguard.cli import main
from dsguard.runner.tiny import FORMAT_VERSION

from .genai_builder import builder_bundle


def dsguard(*args: str) -> Result:
    return CliRunner().invoke(main, ["model", *args])


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DSGUARD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("bundles") / "tiny"
    result = CliRunner().invoke(main, ["model", "make-tiny", "--output", str(output), "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    return output


def test_make_tiny_writes_a_bundle_and_prints_its_path(fp32_bundle: Path) -> None:
    assert sorted(path.name for path in fp32_bundle.iterdir()) == [
        "config.json", "generation_config.json", "onnx", "tokenizer.json", "tokenizer_config.json"]
    assert sorted(path.name for path in (fp32_bundle / "onnx").iterdir()) == ["model.onnx", "model.onnx_data"]


def test_make_tiny_seed_changes_the_weights(tmp_path: Path, fp32_bundle: Path) -> None:
    result = dsguard("make-tiny", "--output", str(tmp_path / "seeded"), "--dtype", "fp32", "--seed", "7")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "seeded")
    weights = (tmp_path / "seeded" / "onnx" / "model.onnx_data").read_bytes()
    assert weights != (fp32_bundle / "onnx" / "model.onnx_data").read_bytes()


def test_make_tiny_without_output_fills_the_cache(cache: Path) -> None:
    result = dsguard("make-tiny", "--dtype", "fp32")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(cache / "models" / f"tiny-deepseek-{FORMAT_VERSION}")
    assert (cache / "models" / f"tiny-deepseek-{FORMAT_VERSION}" / "onnx" / "model.onnx").is_file()


def test_make_tiny_refuses_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = dsguard("make-tiny", "--output", str(tmp_path))
    assert result.exit_code == 1
    assert result.output == f"Error: {tmp_path}: exists and is not empty; choose another --output or remove it\n"


def test_make_tiny_seed_without_output_is_a_usage_error() -> None:
    result = dsguard("make-tiny", "--seed", "3")
    assert result.exit_code == 2
    assert "--seed needs --output" in result.output


def test_quantize_writes_the_graph_and_reports_drift_and_speed_against_fp32(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    assert dsguard("make-tiny", "--output", str(bundle), "--dtype", "fp32").exit_code == 0
    result = dsguard("quantize", str(bundle), "--dtype", "q4", "--steps", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"wrote {bundle / 'onnx' / 'model_q4.onnx'}"
    assert lines[1].split() == ["dtype", "size", "max", "drift", "mean", "drift", "greedy", "agree", "decode",
                                "tok/s", "vs", "fp32"]
    assert [line.split()[0] for line in lines[2:]] == ["fp32", "q4"]
    assert lines[2].split()[3:5] == ["0.0000", "0.0000"]
    assert float(lines[3].split()[4]) > 0


def test_quantize_without_compare_only_writes(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    assert dsguard("make-tiny", "--output", str(bundle), "--dtype", "fp32").exit_code == 0
    result = dsguard("quantize", str(bundle), "--dtype", "int8", "--no-compare")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote {bundle / 'onnx' / 'model_int8.onnx'}\n"


def test_quantize_names_the_missing_source_graph(fp32_bundle: Path) -> None:
    result = dsguard("quantize", str(fp32_bundle), "--dtype", "q4f16")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert f"Error: {fp32_bundle / 'onnx' / 'model_fp16.onnx'}: missing: q4f16 is made from the fp16 graph" in \
        result.output


def test_quantize_names_a_missing_bundle(tmp_path: Path) -> None:
    result = dsguard("quantize", str(tmp_path / "absent"), "--dtype", "q4")
    assert result.exit_code == 1
    assert result.output == f"Error: {tmp_path / 'absent'}: model bundle directory does not exist\n"


def test_quantize_refuses_the_cached_bundled_model() -> None:
    result = dsguard("quantize", "bundled:tiny-deepseek", "--dtype", "q4")
    assert result.exit_code == 2
    assert "make-tiny --output" in result.output


def test_quantize_rejects_a_block_size_that_is_not_a_power_of_two(fp32_bundle: Path) -> None:
    result = dsguard("quantize", str(fp32_bundle), "--dtype", "q4", "--block-size", "24")
    assert result.exit_code == 2
    assert "--block-size" in result.output


def test_info_prints_shape_tokenizer_dtypes_and_files(fp32_bundle: Path) -> None:
    result = dsguard("info", str(fp32_bundle))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"bundle      {fp32_bundle}"
    assert lines[1].startswith("model       qwen2, 2 layers, hidden 128, 4 heads (2 key/value) of 32, intermediate 384")
    assert lines[3] == "tokenizer   2048 tokens, bos 2045, eos 2042, model vocab 2048"
    dtypes = lines[lines.index("dtypes") + 1: lines.index("files")]
    assert [line.split()[0] for line in dtypes] == ["fp32"]
    assert any(line.endswith("onnx/model.onnx_data") for line in lines[lines.index("files"):])


def test_info_of_a_bundled_name_builds_it_first(cache: Path) -> None:
    result = dsguard("info", "bundled:tiny-deepseek")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"bundle      {cache / 'models' / f'tiny-deepseek-{FORMAT_VERSION}'}"
    dtypes = result.stdout.split("dtypes\n")[1].split("files\n")[0].splitlines()
    assert [line.split()[0] for line in dtypes] == ["fp32", "fp16", "int8", "q4", "q4f16"]


def test_info_names_the_bad_key_of_a_config(tmp_path: Path, fp32_bundle: Path) -> None:
    config = json.loads((fp32_bundle / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_key_value_heads": "two"}))
    result = dsguard("info", str(tmp_path))
    assert result.exit_code == 1
    assert result.output == (f"Error: {tmp_path / 'config.json'}: num_key_value_heads: expected a positive integer, "
                             "got 'two'\n")


def test_info_names_an_unreadable_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{")
    result = dsguard("info", str(tmp_path))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {tmp_path / 'config.json'}: unreadable JSON")


def test_info_names_a_missing_bundle(tmp_path: Path) -> None:
    result = dsguard("info", str(tmp_path / "absent"))
    assert result.exit_code == 1
    assert result.output == f"Error: {tmp_path / 'absent'}: model bundle directory does not exist\n"


def test_info_reads_a_model_builder_folder(tmp_path: Path) -> None:
    folder = builder_bundle("int4", tmp_path / "builder")
    result = CliRunner().invoke(main, ["model", "info", str(folder)])
    assert result.exit_code == 0, result.output
    assert "qwen2 (onnxruntime-genai model builder), 2 layers, hidden 128" in result.output
    assert "intermediate 384" in result.output and "rotary tables in the graph" in result.output
    assert "graph" in result.output and "model.onnx" in result.output
