"""The mouth-track benchmark runs end to end at its `--tiny` size, on real faces (the other
benchmarks' runs are in test_benchmarks.py)."""

from __future__ import annotations

import json

import cv2
import pytest

from benchmarks.mouth_bench import main as mouth_bench_main

pytest.importorskip("mediapipe")


@pytest.fixture(autouse=True)
def threads_kept():
    """The benchmark pins OpenCV to one thread, as in a worker; later tests get back theirs."""
    threads = cv2.getNumThreads()
    yield
    cv2.setNumThreads(threads)


def test_every_k_is_compared_with_the_full_rate_track_on_every_set(tmp_path, capsys):
    assert mouth_bench_main(["--tiny", "--every", "3", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "mouth_bench.json").read_text())["results"]
    assert list(results) == ["carphone", "clips 640x360", "clips 1280x720"]
    for result in results.values():
        full, third = result["by_k"]["1"], result["by_k"]["3"]
        assert full["windows"] == 2 and full["stabilised_p95_px"] == 0.0  # itself
        assert full["found"] == third["found"] == 1.0
        assert 0 < third["stabilised_median_px"] < 0.1 * full["mouth_width_px"]
        assert full["cpu_ms_per_window"] > 0 and third["cpu_ms_per_window"] > 0
        assert result["stabilisation"]["shift_median_px"] > 0
    out = capsys.readouterr().out
    assert "stab p95" in out and "for scale, the stabilisation moves" in out
