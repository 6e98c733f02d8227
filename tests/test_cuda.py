"""The CUDA path: run by `make gpu-check`, or by `python -m pytest tests/test_cuda.py` from the
repository's root in a GPU box's own environment (no install); skipped without CUDA."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avcache.cache import schema
from avcache.cache.codec import crop_ranges
from avcache.cache.reader import open_cache
from avcache.common.host_sync import host_syncs
from avcache.train.augment import copy_stream, to_device
from avcache.train.batches import JPEG_BYTES, JPEG_ENDS
from avcache.train.config import TRACK_KINDS, TrainConfig
from avcache.train.decode import decode_faces
from avcache.train.engine import LAST, METRICS, Trainer
from avcache.train.loader import LoaderPlan, ShardStream
from avcache.train.models import MODELS
from avcache.train.predict import main as predict_main
from avcache.train.run import main as train_main
from avcache.train.runs import RunFolder
from tests.toy import (
    REPO,
    kill_after_first_epoch,
    small_config,
    write_toy_cache,
    write_track_cache,
)

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


@pytest.mark.parametrize("kind", [kind for kind in MODELS if kind not in TRACK_KINDS])
@pytest.mark.parametrize("compile_", ["false", "true"])
def test_every_model_kind_trains_on_cuda(cache, tmp_path, kind, compile_):
    run = tmp_path / "run"
    options = {**CUDA, "model.kind": kind, "run.epochs": 1, "run.compile": compile_}
    assert train_main(["--cache", str(cache), "--out", str(run), *small_config(**options)]) == 0
    state = torch.load(run / LAST, weights_only=True)
    assert all(torch.isfinite(value).all() for value in state["model"].values())


@pytest.mark.parametrize("kind", TRACK_KINDS)
def test_every_track_model_trains_on_cuda(tmp_path, kind):
    write_track_cache(tmp_path / "cache", {"train": 24, "val": 8})
    run = tmp_path / "run"
    options = {**CUDA, "model.kind": kind, "run.epochs": 1, "augment.av_mismatch": 0.25}
    assert train_main(["--cache", str(tmp_path / "cache"), "--out", str(run),
                       *small_config(**options)]) == 0  # fmt: skip
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


def test_gpu_decoding_matches_the_workers_within_the_upsampling_difference(jpeg_cache):
    """nvJPEG and libjpeg-turbo differ in IDCT and chroma upsampling: close, not equal. The
    bound is what libjpeg-turbo's own two upsamplings (fancy, which the workers use, and
    plain replication) differ by on the same crops, plus a grey level."""
    import simplejpeg

    shards = open_cache(jpeg_cache).shards_of("train")
    plan = LoaderPlan(batch_size=16, block_size=4)
    fields = (schema.FACES,)
    by_cpu = ShardStream(shards, fields, plan)
    left_encoded = ShardStream(shards, fields, plan, jpeg_faces=True)
    for expected, encoded in zip(by_cpu, left_encoded, strict=True):
        got = decode_faces(encoded, torch.device("cuda"))[schema.FACES]
        assert got.is_cuda and got.shape == expected[schema.FACES].shape
        difference = (got.cpu().int() - expected[schema.FACES].int()).abs().float()
        data, ends = encoded[JPEG_BYTES].numpy(), encoded[JPEG_ENDS].numpy()
        plain = np.stack([simplejpeg.decode_jpeg(data[a:b], "RGB", fastupsample=True)
                          for a, b in crop_ranges(ends, 0)]).reshape(got.shape)  # fmt: skip
        upsampling = np.abs(plain.astype(int) - expected[schema.FACES].numpy()).mean()
        assert difference.mean() <= upsampling + 1.0, (difference.mean(), upsampling)


@pytest.mark.parametrize("decode", ["cuda", "auto"])
def test_av_trains_with_faces_decoded_on_the_gpu(jpeg_cache, tmp_path, decode):
    run = tmp_path / "run"
    options = {**CUDA, "model.kind": "av", "run.epochs": 1, "data.decode": decode}
    assert train_main(["--cache", str(jpeg_cache), "--out", str(run),
                       *small_config(**options)]) == 0  # fmt: skip
    row = json.loads((run / METRICS).read_text().splitlines()[-1])
    assert math.isfinite(row["train_loss"]) and 0 <= row["val_auc"] <= 1


def test_ddp_with_two_ranks_whatever_the_gpu_count(cache, tmp_path):
    """torchrun with two ranks: NCCL (with gloo for host tensors) on a box of two GPUs or
    more, the ranks sharing the GPU over gloo on a box of one."""
    run = tmp_path / "run"
    options = {**CUDA, "model.kind": "audio", "run.epochs": 1}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(REPO / "train" / "run.py"), "--cache",
               str(cache), "--out", str(run), *small_config(**options)]  # fmt: skip
    # train/run.py as a script finds avcache through the checkout (no install needed).
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.load(run / LAST, weights_only=True)["epoch"] == 1


@pytest.mark.parametrize(("kind", "decode"), [("audio", "cpu"), ("faces", "cpu"), ("av", "cpu"),
                                              ("av", "cuda")])  # fmt: skip
def test_a_training_step_makes_the_host_wait_only_for_the_decoder(jpeg_cache, tmp_path, kind,
                                                                  decode):  # fmt: skip
    """CUDA counts the synchronisations of steps after the first: none, but for the wait
    on the decoding stream (the previous batch's decode) when the GPU decodes."""
    config = TrainConfig()
    config.model.kind, config.model.mel_size, config.model.frames = kind, 64, 1
    config.data.batch_size, config.data.workers, config.data.decode = 8, 0, decode
    config.augment.vflip, config.augment.av_mismatch = 0.5, 0.25
    config.run.device = "cuda"
    cache = open_cache(jpeg_cache)
    trainer = Trainer(config, cache, tmp_path)
    stream, _ = trainer._loader("train", trainer.fields, train=True)
    batches = iter(stream)
    trainer.train_step(next(batches), 0, True)
    steps = [next(batches) for _ in range(3)]
    torch.cuda.synchronize()
    with host_syncs() as syncs:
        for batch in steps:
            trainer.train_step(batch, 0, True)
    assert len(syncs) <= (len(steps) if decode == "cuda" else 0), syncs


def test_after_a_resume_the_optimiser_counts_steps_on_the_host(cache, tmp_path):
    run = tmp_path / "run"
    options = {**CUDA, "model.kind": "audio", "run.epochs": 1}
    assert train_main(["--cache", str(cache), "--out", str(run), *small_config(**options)]) == 0
    trainer = RunFolder(run).trainer()
    states = list(trainer.optimizer.state.values())
    assert states and all(state["step"].device.type == "cpu" for state in states)
    assert all(state["exp_avg"].is_cuda for state in states)


def test_batches_cross_to_the_gpu_beside_the_queued_step_and_arrive_whole():
    """The copy runs on its own stream: it finishes while the compute stream is still busy
    with earlier work (here a sleep kernel), and work queued after it sees the copied
    values, not memory the copy has yet to fill."""
    device = torch.device("cuda", torch.cuda.current_device())
    host = torch.arange(1 << 22, dtype=torch.float32).pin_memory()
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)  # about a second of GPU clock cycles, on the compute stream
    moved = to_device({"x": host, "name": "a"}, device)
    doubled = moved["x"] * 2
    copy_stream(device).synchronize()
    assert not torch.cuda.current_stream(device).query(), "the copy waited for the compute"
    assert moved["name"] == "a" and moved["x"].device == device
    assert torch.equal(doubled.cpu(), host * 2)


def test_mtcnn_on_cuda_finds_the_faces_mtcnn_finds_on_the_cpu():
    # The preprocessing half, which a GPU box's own image may lack: skipped, not an error.
    for module in ("facenet_pytorch", "ffmpeg", "cv2", "soxr"):
        pytest.importorskip(module)
    if shutil.which("ffmpeg") is None:
        pytest.skip("no ffmpeg binary: the sample's video is decoded by it")
    from avcache.preprocess.config import FacesConfig
    from avcache.preprocess.faces import detect_faces
    from avcache.sample.sources import CARPHONE, SampleError, carphone_portrait, package_file

    try:
        video = package_file(*CARPHONE)
    except SampleError as missing:
        pytest.skip(str(missing))
    frames = list(carphone_portrait(video).frames[::15])
    cpu = detect_faces(frames, "mtcnn", FacesConfig())
    gpu = detect_faces(frames, "mtcnn-cuda", FacesConfig())
    assert all(cpu) and all(gpu)
    for a, b in zip(cpu, gpu, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 2.0  # pixels
