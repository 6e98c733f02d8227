"""The GPU check's CPU mode: the same ratio (real loader against tensors already in memory)."""

from __future__ import annotations

import json

from benchmarks.gpu_check import main as gpu_check_main


def test_the_gpu_check_runs_on_the_cpu_and_reports_its_ratio(tmp_path):
    assert gpu_check_main(["--out", str(tmp_path), "--device", "cpu", "--size", "tiny"]) == 0
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert [row["kind"] for row in rows] == ["audio", "av"]
    for row in rows:
        assert row["device"] == "cpu" and row["gpu_memory_gib"] is None
        assert row["loader_samples_per_s"] > 0 and row["ceiling_samples_per_s"] > 0
        assert 0 < row["ratio"] < 2 and 0 <= row["data_wait_share"] < 1
    assert (tmp_path / "gpu_check.txt").read_text().startswith("kind")
