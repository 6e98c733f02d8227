"""A toy cache and the training command lines the tests share; it imports only what a GPU box
with its own torch has (test_cuda.py runs there without the media stack)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from avcache.cache import schema
from avcache.cache.index import ShardRecord, build_index
from avcache.cache.writer import ShardWriter
from avcache.common.atomic import write_json_atomic
from avcache.common.config import to_dict
from avcache.preprocess.config import PreprocessConfig, TracksConfig
from avcache.train.engine import METRICS

FRAMES, SIZE = 2, 32
REPO = Path(__file__).resolve().parents[1]


def toy_sample(name: str, fake: bool, rng: np.random.Generator) -> schema.Sample:
    """Separable on purpose: fakes have a bright mel band and reddish faces."""
    mel = rng.integers(0, 120, (256, 256), dtype=np.uint8)
    faces = rng.integers(0, 120, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    if fake:
        mel[100:140] += 120
        faces[..., 0] += 120
    return schema.Sample(name, int(fake), mel, faces, True, np.ones(FRAMES, bool),
                         np.zeros((FRAMES, 4), np.float32), np.float32(1.0))  # fmt: skip


def write_toy_cache(root, splits: dict[str, int], seed: int = 0, codec: str = "raw") -> None:
    rng = np.random.default_rng(seed)
    records = []
    (root / "shards").mkdir(parents=True)
    for split, count in splits.items():
        for number, start in enumerate(range(0, count, 12)):
            rel = f"shards/{split}-{number:05d}.h5"
            with ShardWriter(
                root / rel,
                schema.ShardLayout(frames=FRAMES, face_size=SIZE, codec=codec),
                split=split,
            ) as writer:
                for i in range(start, min(start + 12, count)):
                    writer.append(toy_sample(f"{split}{i:03d}.mp4", bool(i % 2), rng))
                n, digest = writer.close()
            records.append(ShardRecord(rel, split, n, digest))
    config = index_config(frames=FRAMES, size=SIZE, detector="haar", codec=codec)
    write_json_atomic(root / schema.INDEX_FILE, build_index(config, "toy", records))


def index_config(tracks: dict | None = None, **faces) -> dict:
    """The preprocessing config an index records for shards written by hand: the defaults
    with these `faces` values, and `tracks` where the shards hold tracks (else
    tracks.windows=0: the default caches one window a video)."""
    config = to_dict(PreprocessConfig(tracks=TracksConfig(**(tracks or {"windows": 0}))))
    config["faces"].update(faces)
    return config


def small_config(**overrides) -> list[str]:
    values = {"model.kind": "faces", "data.batch_size": 8, "data.block_size": 4,
              "data.workers": 0, "run.epochs": 2, "optim.lr": 3e-3, "run.threads": 2}  # fmt: skip
    values.update(overrides)
    return [f"{key}={value}" for key, value in values.items()]


def assert_resumes_exactly(args: list[str], straight: Path, killed: Path) -> None:
    """avcache-train ARGS into `killed`, SIGKILLed after its first epoch and resumed, ends
    with the very weights of `straight` (the same ARGS, never stopped)."""
    import torch

    from avcache.train.engine import LAST
    from avcache.train.run import main as train_main

    kill_after_first_epoch([*args, "--out", str(killed)], killed)
    assert train_main(["--resume", str(killed)]) == 0
    a = torch.load(straight / LAST, weights_only=True)["model"]
    b = torch.load(killed / LAST, weights_only=True)["model"]
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def kill_after_first_epoch(args: list[str], run: Path) -> None:
    """avcache-train ARGS in a process of its own, SIGKILLed once its first epoch is in
    RUN/metrics.jsonl (during the second)."""
    command = [sys.executable, "-m", "avcache.train.run", *args]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    metrics, deadline = run / METRICS, time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text()) and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    process.kill()
    process.wait()


TRACK_FRAMES, TRACK_SIZE, TRACK_FPS, TRACK_RATE = 16, 32, 25.0, 16000
TRACK_LAYOUT = schema.TrackLayout(1, TRACK_FRAMES, TRACK_SIZE, TRACK_FPS, TRACK_RATE,
                                  round(TRACK_FRAMES * TRACK_RATE / TRACK_FPS))  # fmt: skip


def toy_tracks(fake: bool, rng: np.random.Generator) -> schema.Tracks:
    """A mouth that opens and closes, and speech whose loudness follows it (real) or follows
    another mouth's motion (fake: a lip-sync fake, the same kind of sound and of lips)."""
    opening = rng.random(TRACK_FRAMES) ** 2
    heard = rng.permutation(opening) if fake else opening
    lips = np.full((1, TRACK_FRAMES, TRACK_SIZE, TRACK_SIZE), 150, np.uint8)
    for t, value in enumerate(opening):
        gap = int(2 + value * 12)
        lips[0, t, 16 - gap // 2 : 16 + gap // 2 + 1, 8:24] = 30  # the dark mouth gap
    per_frame = TRACK_LAYOUT.audio_samples // TRACK_FRAMES
    envelope = np.repeat(heard, per_frame)
    audio = (rng.standard_normal(TRACK_LAYOUT.audio_samples) * envelope * 8000).astype(np.int16)
    return schema.Tracks(lips=lips, lips_found=np.ones((1, TRACK_FRAMES), bool),
                         start=np.zeros(1), frames_real=np.full(1, TRACK_FRAMES, np.int16),
                         audio=audio[None], audio_real=np.ones(1, np.float32))  # fmt: skip


def write_track_cache(root, splits: dict[str, int], seed: int = 0) -> None:
    """A toy cache with aligned tracks (format v3) besides mel and faces."""
    rng = np.random.default_rng(seed)
    records = []
    (root / "shards").mkdir(parents=True)
    for split, count in splits.items():
        rel = f"shards/{split}-00000.h5"
        with ShardWriter(
            root / rel,
            schema.ShardLayout(frames=FRAMES, face_size=SIZE, tracks=TRACK_LAYOUT),
            split=split,
        ) as writer:
            for i in range(count):
                sample = toy_sample(f"{split}{i:03d}.mp4", bool(i % 2), rng)
                sample.tracks = toy_tracks(bool(i % 2), rng)
                writer.append(sample)
            records.append(ShardRecord(rel, split, *writer.close()))
    config = to_dict(PreprocessConfig())
    config["faces"].update(frames=FRAMES, size=SIZE, detector="haar", codec="raw")
    config["tracks"].update(windows=1, frames=TRACK_FRAMES, size=TRACK_SIZE)
    write_json_atomic(root / schema.INDEX_FILE, build_index(config, "toy-tracks", records))
