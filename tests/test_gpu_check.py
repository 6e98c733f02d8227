"""The GPU check's CPU mode: the same rows (loader alone, fed step, ceiling) on a tiny cache,
and its one-line answer where a package it needs is missing."""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks import gpu_check
from benchmarks.gpu_check import main as gpu_check_main
from tests.toy import REPO


def test_the_gpu_check_runs_on_the_cpu_and_reports_each_row(tmp_path):
    args = ["--out", str(tmp_path), "--device", "cpu", "--size", "tiny", "--modes", "eager",
            "--workers", "1"]  # fmt: skip
    assert gpu_check_main(args) == 0
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["machine"]["torch"] and result["machine"]["gpu"] is None
    rows = result["rows"]
    assert [(row["kind"], row["mode"]) for row in rows] == [
        ("audio", "eager"), ("faces", "eager"), ("av", "eager")]  # fmt: skip
    for row in rows:
        assert row["device"] == "cpu" and row["allocated_gib"] is None
        assert row["workers"] == 1 and row["syncs_per_step"] is None
        assert row["loader_samples_per_s"] > row["train_samples_per_s"] > 0
        assert row["ceiling_samples_per_s"] > 0 and 0 < row["ratio"] < 2
        assert 0 <= row["data_wait_share"] < 1
    table = (tmp_path / "gpu_check.txt").read_text().splitlines()
    assert table[0].startswith("kind") and len(table) == 4


def test_a_missing_package_is_named_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(gpu_check.REQUIRED, "no_such_module_here", "no-such-package")
    assert gpu_check_main(["--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "missing Python packages: no-such-package" in error


# What a GPU box's own image lacks that the rest of avcache uses (the media stack), and no
# installed avcache: the check and the CUDA tests import from the checkout alone.
WITHOUT_MEDIA = """
import importlib, importlib.abc, sys
LACKING = {"librosa", "soxr", "ffmpeg", "imageio_ffmpeg", "moviepy", "mediapipe",
           "facenet_pytorch", "skvideo", "av", "dask"}
class Lacking(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in LACKING:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path = [Lacking()] + [finder for finder in sys.meta_path
                               if "editable" not in type(finder).__module__.lower()]
for module in sys.argv[1:]:
    importlib.import_module(module)
"""


def test_the_check_and_the_cuda_tests_import_without_the_media_stack_or_an_install():
    modules = ["benchmarks.gpu_check", "tests.test_cuda", "avcache.train.run",
               "avcache.train.engine"]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", WITHOUT_MEDIA, *modules], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
