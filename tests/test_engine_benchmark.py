"""The collection-engine benchmark's smoke run (`benchmarks/engine_benchmark.py`): a tiny model on a few short files
runs every row and reports every number."""

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


@pytest.mark.slow
def test_engine_benchmark_runs_on_a_tiny_model(tmp_path):
    report = tmp_path / "engine.json"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "engine_benchmark.py"), "--tiny", "--dtypes", "fp32",
         "--files", "2", "--long-seconds", "25", "--rounds", "1", "--workers", "1", "--work-dir", str(tmp_path),
         "--delete-long", "--json", str(report)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| fp32 | collection | 2 x 10 s | 2 |" in result.stdout
    assert "| fp32 | long | 25 s | 4 |" in result.stdout  # windows: 10 s every 5 s, the last padded
    rows = json.loads(report.read_text())["rows"]
    assert [row["row"] for row in rows] == ["collection", "long"]
    assert all(row["seconds"] > 0 and row["in_memory_clips_per_second"] > 0 and row["memory_growth_mb"] > 0
               for row in rows)
    assert not (tmp_path / "long_25s.wav").exists()  # --delete-long
    assert len(list((tmp_path / "clips-10s").glob("*.wav"))) == 2  # kept for the next run
