"""The face-detector benchmark runs end to end at its `--tiny` size, on real faces (the other
benchmarks' runs are in test_benchmarks.py)."""

from __future__ import annotations

import json

import pytest

from benchmarks.detector_bench import main as detector_bench_main

pytest.importorskip("facenet_pytorch")  # MTCNN is the reference the others are compared to
pytest.importorskip("mediapipe")


def test_the_detectors_are_compared_on_every_real_face_set(tmp_path, capsys):
    args = ["--tiny", "--detectors", "mediapipe,haar", "--out", str(tmp_path)]
    assert detector_bench_main(args) == 0
    results = json.loads((tmp_path / "detector_bench.json").read_text())["results"]
    assert list(results) == ["mtcnn", "mediapipe", "haar"]
    sets = results["mediapipe"]
    assert set(sets) == {"carphone", "astronaut", "lfw", "clips"}
    assert sets["carphone"]["frames"] > 100 and sets["lfw"]["frames"] == 100
    assert sets["clips"]["frames"] == 16  # 8 frames of each of the 2 clips
    assert results["mtcnn"]["carphone"]["iou_median"] == 1.0  # the reference against itself
    for detector in ("mediapipe", "haar"):
        for row in results[detector].values():
            assert 0 <= row["found"] <= 1 and row["cpu_s_per_frame"] > 0
    assert sets["carphone"]["found"] == 1.0 and sets["carphone"]["iou_median"] > 0.6
    readers = json.loads((tmp_path / "detector_bench.json").read_text())["frame_readers"]
    assert readers["frames_compared"] == 16 and readers["frames_missing"] == 0
    assert readers["mean_abs_difference_max"] < 1.0  # PyAV and OpenCV pick the same frames
    out = capsys.readouterr().out
    assert "mediapipe" in out and "reaching 8 frames of a clip, CPU ms per video" in out
