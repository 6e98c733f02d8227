"""Does the trainer wait for data? Training samples/s fed by the real loader against the same
model and batch fed with tensors already on the device (the no-data ceiling).

    python -m benchmarks.gpu_check --out DIR [--device auto|cpu|cuda] [--size tiny|full]

For `audio` (mel 256) and `av` (mel + faces; `full`: 8 JPEG faces of 224 px), a cache is
written on local disk, then:
- loader: `Trainer.train_epoch` on it (DataLoader workers, the real step: bf16 autocast and
  channels_last on CUDA), its samples/s and data-wait share;
- ceiling: one batch moved to the device once, then the same steps (`_backward` and the
  optimiser) on it again and again;
- ratio = loader / ceiling (the promise: >= 0.95 on a GPU), GPU memory, host cores used;
- on CUDA, `av` again with data.decode=cuda: the workers only read and check the JPEG
  bytes, the GPU decodes them (train/decode.py).
`--size tiny` runs in seconds on a CPU (make test runs it); `full` is for a GPU machine
(`make gpu-check`). Results: DIR/gpu_check.json and DIR/gpu_check.txt.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from avcache.cache import open_cache, schema
from avcache.cache.atomic import write_json_atomic
from avcache.cache.index import ShardRecord, build_index
from avcache.cache.writer import ShardWriter
from avcache.train.config import TrainConfig
from avcache.train.engine import Progress, Trainer, make_loader, select_device
from benchmarks.common import own_cpu_seconds

SIZES = {  # size -> (samples, batch, faces frames, face size, workers, mel size)
    "tiny": (48, 8, 2, 32, 1, 64),
    "full": (4096, 128, 8, 224, 8, 256),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the cache and report")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--size", default="tiny", choices=list(SIZES))
    parser.add_argument("--kinds", default="audio,av")
    return parser.parse_args(argv)


def write_cache(root: Path, samples: int, frames: int, size: int) -> None:
    """Spectrogram-like mel images and smooth faces, JPEG-coded as the default stores them."""
    if (root / schema.INDEX_FILE).exists():
        return
    (root / "shards").mkdir(parents=True)
    rng = np.random.default_rng(0)
    x = np.mgrid[0:size, 0:size][1]
    face = np.stack([(128 + 60 * np.sin(x / 9 + c)).astype(np.uint8) for c in range(3)], -1)
    records = []
    for split, count in (("train", samples), ("val", max(8, samples // 8))):
        rel = f"shards/{split}.h5"
        with ShardWriter(root / rel, split=split, frames=frames, face_size=size,
                         codec="jpeg") as writer:  # fmt: skip
            for i in range(count):
                mel = np.repeat(rng.integers(0, 255, (16, 256), dtype=np.uint8), 16, axis=0)
                faces = np.roll(np.broadcast_to(face, (frames, size, size, 3)), i, axis=2)
                found, boxes = np.ones(frames, bool), np.zeros((frames, 4), np.float32)
                writer.append(schema.Sample(f"{split}{i:06d}.mp4", i % 2, mel, faces, True,
                                            found, boxes, 3.0))  # fmt: skip
            records.append(ShardRecord(rel, split, *writer.close()))
    config = {"splits": {"train": {}, "val": {}}, "faces": {"frames": frames, "size": size}}
    write_json_atomic(root / schema.INDEX_FILE, build_index(config, "gpu-check", records))


def config_for(kind: str, decode: str, args) -> TrainConfig:
    _, batch, _, _, workers, mel_size = SIZES[args.size]
    config = TrainConfig()
    config.model.kind, config.model.mel_size = kind, mel_size
    config.data.batch_size, config.data.workers, config.data.decode = batch, workers, decode
    config.run.device, config.run.epochs = args.device, 1
    return config


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ceiling(trainer: Trainer, batch: dict, steps: int) -> float:
    """samples/s of the training step on one batch already on the device."""
    batch = {key: value.to(trainer.device) if isinstance(value, torch.Tensor) else value
             for key, value in batch.items()}  # fmt: skip
    count = len(batch[schema.LABEL])
    for _ in range(2):  # warm-up: cuDNN autotuning, allocator
        trainer._backward(batch, 0, True)
        trainer.optimizer.step()
    sync(trainer.device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer._backward(batch, 0, True)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    sync(trainer.device)
    return steps * count / (time.perf_counter() - start)


def measure(kind: str, decode: str, cache_root: Path, args) -> dict:
    config = config_for(kind, decode, args)
    cache = open_cache(cache_root)
    trainer = Trainer(config, cache, args.out / f"run-{kind}-{decode}")
    device = trainer.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cpu_start, wall_start = own_cpu_seconds(), time.perf_counter()
    trainer.train_epoch(0)  # warm-up epoch: workers, cuDNN, allocator
    trainer.progress = Progress()  # the same epoch again, from its first batch
    loader = trainer.train_epoch(0)
    cores = (own_cpu_seconds() - cpu_start) / (time.perf_counter() - wall_start)
    stream, _ = make_loader(
        cache, "train", trainer.fields, config, device, trainer.ranks, train=True
    )
    batch = next(iter(stream))  # decoded by the CPU: the ceiling never decodes
    steps = max(4, len(stream))
    best = ceiling(trainer, batch, steps)
    return {
        "kind": kind,
        "decode": decode if kind != "audio" else "-",
        "device": str(device),
        "loader_samples_per_s": loader["train_samples_per_s"],
        "ceiling_samples_per_s": best,
        "ratio": loader["train_samples_per_s"] / best,
        "data_wait_share": loader["data_wait_share"],
        "host_cores_used": cores,
        "gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda" else None,
    }  # fmt: skip


def report(rows: list[dict]) -> str:
    lines = ["kind   decode  device  loader/s  ceiling/s  ratio  data wait  host cores  GPU GiB"]
    for row in rows:
        memory = f"{row['gpu_memory_gib']:.1f}" if row["gpu_memory_gib"] is not None else "-"
        lines.append(f"{row['kind']:<7}{row['decode']:<8}{row['device']:<8}"
                     f"{row['loader_samples_per_s']:>8.1f}"
                     f"{row['ceiling_samples_per_s']:>11.1f}{row['ratio']:>7.2f}"
                     f"{row['data_wait_share']:>10.1%}{row['host_cores_used']:>12.1f}"
                     f"{memory:>9}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    samples, _, frames, size, _, _ = SIZES[args.size]
    write_cache(args.out / "cache", samples, frames, size)
    torch.manual_seed(0)
    kinds = args.kinds.split(",")
    runs = [(kind, "cpu") for kind in kinds]
    if select_device(args.device).type == "cuda" and "av" in kinds:
        runs.append(("av", "cuda"))
    rows = [measure(kind, decode, args.out / "cache", args) for kind, decode in runs]
    text = report(rows)
    machine = {"device": str(select_device(args.device)), "cuda": torch.cuda.is_available(),
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "torch": torch.__version__, "size": args.size}  # fmt: skip
    (args.out / "gpu_check.json").write_text(json.dumps({"machine": machine, "rows": rows},
                                                        indent=1))  # fmt: skip
    (args.out / "gpu_check.txt").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
