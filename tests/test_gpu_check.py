"""The GPU check's CPU mode: the same rows (loader alone, fed step, ceiling, epoch start) on a
tiny cache for every model kind, its budget and its parts sharing one folder, and its one-line
answer where a package it needs is missing."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import torch

from avcache.train.models import MODELS
from benchmarks import gpu_check
from benchmarks.gpu_check import Budget
from benchmarks.gpu_check import main as gpu_check_main
from tests.toy import REPO

TINY = ["--device", "cpu", "--size", "tiny", "--workers", "1", "--threads", "1"]
RATES = ("loader_samples_per_s", "train_samples_per_s", "ceiling_samples_per_s")


def test_every_kind_is_measured_and_a_second_part_adds_its_rows(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert gpu_check_main(["--out", str(tmp_path), *TINY, "--modes", "eager"]) == 0
        first = json.loads((tmp_path / "gpu_check.json").read_text())
        # The compiled part, out of time before its first row: skipped, recorded, and the
        # eager part's rows kept.
        assert gpu_check_main(["--out", str(tmp_path), *TINY, "--modes", "compiled",
                               "--budget", "0"]) == 0  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [part["machine"]["gpu"] for part in result["parts"]] == [None, None]
    assert result["parts"][0]["cache_write_s"] > 0 and result["parts"][1]["cache_write_s"] is None
    rows = result["rows"]
    assert rows[: len(MODELS)] == first["rows"]
    assert [(row["kind"], row["mode"], row["part"]) for row in rows] == [
        *((kind, "eager", 0) for kind in MODELS),
        *((kind, "compiled", 1) for kind in MODELS)]  # fmt: skip
    decodes = {row["kind"]: row["decode"] for row in rows}
    assert decodes == {"audio": "-", "faces": "cpu", "av": "cpu", "lips": "-", "speech": "-",
                       "sync": "-", "all": "cpu", "locate": "-"}  # fmt: skip
    for row in rows[: len(MODELS)]:
        assert "skipped" not in row and row["device"] == "cpu" and row["workers"] == 1
        assert all(math.isfinite(row[key]) and row[key] > 0 for key in RATES)
        assert row["ratio"] > 0 and 0 <= row["data_wait_share"] < 1
        assert row["epoch_start_s"] >= 0 and row["step_ms"] > 0 and row["seconds"] > 0
        assert row["decode_block_ms"] is None and row["syncs_per_step"] is None
        assert row["allocated_gib"] is None and row["reserved_gib"] is None
    for row in rows[len(MODELS) :]:
        assert row["skipped"].startswith("0 s of --budget 0 s left") and "seconds" not in row
    table = (tmp_path / "gpu_check.txt").read_text().splitlines()
    assert table[0].startswith("kind") and len(table) > 1 + 2 * len(MODELS)
    assert [line.split()[:2] for line in table[1 : 1 + 2 * len(MODELS)]] == [
        [row["kind"], row["decode"]] for row in rows]  # fmt: skip
    assert sum("skipped:" in line for line in table) == len(MODELS)


def test_a_row_is_skipped_when_less_time_is_left_than_the_longest_row_took():
    now = [0.0]
    budget = Budget(100, clock=lambda: now[0])
    assert budget.skip_reason() is None  # the first row runs
    now[0] = 30.0
    budget.took(30.0)
    now[0] = 69.0  # 31 s left, the longest row took 30
    assert budget.skip_reason() is None
    budget.took(39.0)
    assert budget.skip_reason() == "31 s of --budget 100 s left, the longest row took 39 s"
    assert Budget(None).skip_reason() is None


def test_a_skipped_row_never_replaces_a_measured_one():
    result = {"rows": [{"kind": "av", "decode": "cpu", "mode": "eager", "ratio": 0.9}]}
    gpu_check.put_row(result, {"kind": "av", "decode": "cpu", "mode": "eager", "skipped": "x"})
    assert result["rows"] == [{"kind": "av", "decode": "cpu", "mode": "eager", "ratio": 0.9}]
    again = {"kind": "av", "decode": "cpu", "mode": "eager", "ratio": 0.95}
    gpu_check.put_row(result, again)
    gpu_check.put_row(result, {"kind": "av", "decode": "cpu", "mode": "compiled", "ratio": 1})
    assert [row.get("ratio") for row in result["rows"]] == [0.95, 1]


def test_the_plan_runs_eager_first_and_decodes_on_the_gpu_once_a_part():
    kinds = ["audio", "faces", "av", "sync"]
    rows = gpu_check.plan_rows(kinds, ["eager", "compiled"], cuda=True)
    assert rows[:6] == [("audio", "-", "eager"), ("faces", "cpu", "eager"),
                        ("av", "cpu", "eager"), ("sync", "-", "eager"),
                        ("av", "cuda", "eager"), ("jpeg", "cuda", "-")]  # fmt: skip
    assert [row[2] for row in rows[6:]] == ["compiled"] * len(kinds)
    compiled = gpu_check.plan_rows(kinds, ["compiled"], cuda=True)
    assert compiled[-2:] == [("av", "cuda", "compiled"), ("jpeg", "cuda", "-")]
    assert ("av", "cuda", "eager") not in gpu_check.plan_rows(kinds, ["eager"], cuda=False)


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
           "facenet_pytorch", "skvideo", "av", "dask", "matplotlib"}
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
               "avcache.train.engine", "avcache.preprocess.config",
               "avcache.cache.writer"]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", WITHOUT_MEDIA, *modules], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
