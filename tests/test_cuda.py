"""The CUDA path: run by `make gpu-check` on a GPU machine, skipped elsewhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_train import REPO, small_config, write_toy_cache
from train.engine import LAST
from train.models import MODELS
from train.predict import main as predict_main
from train.run import main as train_main

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here"),
]
CUDA = {"run.device": "cuda", "run.amp": "true", "run.channels_last": "true", "data.workers": 2}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    write_toy_cache(root, {"train": 48, "val": 24, "test": 8})
    return root


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("compile_", ["false", "true"])
def test_every_model_kind_trains_on_cuda(cache, tmp_path, kind, compile_):
    run = tmp_path / "run"
    options = {**CUDA, "model.kind": kind, "run.epochs": 1, "run.compile": compile_}
    assert train_main(["--cache", str(cache), "--out", str(run), *small_config(**options)]) == 0
    state = torch.load(run / LAST, weights_only=True)
    assert all(torch.isfinite(value).all() for value in state["model"].values())


def test_resume_and_predict_on_cuda(cache, tmp_path):
    run = tmp_path / "run"
    options = {**CUDA, "model.kind": "av", "run.epochs": 1}
    assert train_main(["--cache", str(cache), "--out", str(run), *small_config(**options)]) == 0
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(
        "epochs: 1", "epochs: 2"))  # fmt: skip
    assert train_main(["--resume", str(run)]) == 0
    assert torch.load(run / LAST, weights_only=True)["epoch"] == 2
    listing = tmp_path / "list.csv"
    listing.write_text("video_name,target\n" + "".join(f"test{i:03d}.mp4,\n" for i in range(8)))
    assert predict_main(["--run", str(run), "--list", str(listing)]) == 0


def test_ddp_with_nccl(cache, tmp_path):
    """torchrun on the GPUs present (world size 1 is fine), NCCL as the backend."""
    ranks = torch.cuda.device_count()
    run = tmp_path / "run"
    options = {**CUDA, "model.kind": "audio", "run.epochs": 1}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={ranks}", str(REPO / "train" / "run.py"), "--cache",
               str(cache), "--out", str(run), *small_config(**options)]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / LAST).exists()
