"""The CUDA path: run by `make gpu-check` on a GPU machine, skipped elsewhere."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avcache.cache import schema
from avcache.cache.reader import open_cache
from avcache.train.decode import decode_faces
from avcache.train.engine import LAST, METRICS
from avcache.train.loader import LoaderPlan, ShardStream
from avcache.train.models import MODELS
from avcache.train.predict import main as predict_main
from avcache.train.run import main as train_main
from tests.test_train import REPO, kill_after_first_epoch, small_config, write_toy_cache

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


def test_a_killed_run_resumes_and_predicts_on_cuda(cache, tmp_path):
    run = tmp_path / "run"
    options = {**CUDA, "model.kind": "av", "run.epochs": 2}
    kill_after_first_epoch(["--cache", str(cache), "--out", str(run), *small_config(**options)],
                           run)  # fmt: skip
    assert train_main(["--resume", str(run)]) == 0
    assert torch.load(run / LAST, weights_only=True)["epoch"] == 2
    listing = tmp_path / "list.csv"
    listing.write_text("video_name,target\n" + "".join(f"test{i:03d}.mp4,\n" for i in range(8)))
    assert predict_main(["--run", str(run), "--list", str(listing)]) == 0


@pytest.fixture(scope="module")
def jpeg_cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy-jpeg")
    write_toy_cache(root, {"train": 48, "val": 24}, codec="jpeg")
    return root


def test_gpu_decoding_matches_the_workers_within_a_few_levels(jpeg_cache):
    """nvJPEG and libjpeg-turbo differ in IDCT and chroma upsampling: close, not equal."""
    shards = open_cache(jpeg_cache).shards_of("train")
    plan = LoaderPlan(batch_size=16, block_size=4)
    fields = (schema.FACES,)
    by_cpu = ShardStream(shards, fields, plan)
    left_encoded = ShardStream(shards, fields, plan, jpeg_faces=True)
    for expected, encoded in zip(by_cpu, left_encoded, strict=True):
        got = decode_faces(encoded, torch.device("cuda"))[schema.FACES]
        assert got.is_cuda and got.shape == expected[schema.FACES].shape
        difference = (got.cpu().int() - expected[schema.FACES].int()).abs()
        assert difference.float().mean() < 1.5 and difference.max() <= 24, difference.max()


@pytest.mark.parametrize("decode", ["cuda", "auto"])
def test_av_trains_with_faces_decoded_on_the_gpu(jpeg_cache, tmp_path, decode):
    run = tmp_path / "run"
    options = {**CUDA, "model.kind": "av", "run.epochs": 1, "data.decode": decode}
    assert train_main(["--cache", str(jpeg_cache), "--out", str(run),
                       *small_config(**options)]) == 0  # fmt: skip
    row = json.loads((run / METRICS).read_text().splitlines()[-1])
    assert math.isfinite(row["train_loss"]) and 0 <= row["val_auc"] <= 1


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


def test_mtcnn_on_cuda_finds_the_faces_mtcnn_finds_on_the_cpu():
    pytest.importorskip("facenet_pytorch")
    from avcache.preprocess.config import FacesConfig
    from avcache.preprocess.faces import detect_faces
    from avcache.sample.sources import CARPHONE, carphone_portrait, package_file

    frames = list(carphone_portrait(package_file(*CARPHONE)).frames[::15])
    cpu = detect_faces(frames, "mtcnn", FacesConfig())
    gpu = detect_faces(frames, "mtcnn-cuda", FacesConfig())
    assert all(cpu) and all(gpu)
    for a, b in zip(cpu, gpu, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 2.0  # pixels
