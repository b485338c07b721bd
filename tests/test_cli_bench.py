"""`dsguard bench`: the local runner's speed at each number of concurrent streams."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dsguard.cli import main
from dsguard.runner.tiny import TINY, write_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("bench") / "tiny", TINY, dtypes=("fp32",))


def test_bench_prints_one_row_per_number_of_streams(bundle: Path) -> None:
    result = CliRunner().invoke(main, ["bench", "--model", str(bundle), "--dtype", "fp32", "--streams", "2,1",
                                       "--tokens", "8", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2"]
    assert all(float(value) > 0 for row in rows for value in row[1:])


def test_bench_reads_the_runner_section_of_a_config(bundle: Path, tmp_path: Path) -> None:
    config = tmp_path / "dsguard.toml"
    config.write_text(f'[runner]\nmodel = "{bundle}"\ndtype = "fp32"\n')
    result = CliRunner().invoke(main, ["bench", "--config", str(config), "--streams", "1", "--tokens", "4",
                                       "--repeats", "1"])
    assert result.exit_code == 0, result.output
    assert "(fp32)" in result.output


def test_bench_refuses_a_config_without_a_runner_section(tmp_path: Path) -> None:
    config = tmp_path / "dsguard.toml"
    config.write_text("[hygiene]\nmax_body = \"1MiB\"\n")
    result = CliRunner().invoke(main, ["bench", "--config", str(config)])
    assert result.exit_code == 1
    assert "has no [runner] section" in result.output


@pytest.mark.parametrize("streams", ["0", "a,b", "65", ""])
def test_bench_refuses_a_bad_number_of_streams(streams: str) -> None:
    result = CliRunner().invoke(main, ["bench", "--streams", streams])
    assert result.exit_code == 2
    assert "Invalid value for '--streams'" in result.output


def test_bench_names_a_missing_model_directory(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["bench", "--model", str(tmp_path / "absent")])
    assert result.exit_code == 1
    assert "absent" in result.output and "Traceback" not in result.output
