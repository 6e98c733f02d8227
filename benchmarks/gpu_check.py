"""Does the trainer wait for data? The real training step fed by the real loader, in a steady
state, against the same step on a batch already on the device (the no-data ceiling).

    python -m benchmarks.gpu_check --out DIR [--device auto|cpu|cuda] [--size tiny|full]
                                   [--kinds audio,faces,av] [--modes eager,compiled]

It runs from a source checkout in any environment that has torch, a GPU box's own image
included: nothing to install, no network; a missing package is named in one line. A cache is
written under DIR (full: 4,096 training samples, mel 256, 8 JPEG faces of 224 px), then for
each kind and mode (bf16 autocast and channels_last on CUDA; compiled: torch.compile):
- loader: the DataLoader alone (persistent workers, pinned memory, the copy to the device,
  GPU decoding where it is on), samples/s;
- train: the step fed by the loader after warm-up steps (workers started, cuDNN tuned,
  graphs compiled), timed over whole steps between two synchronisations, samples/s and the
  share of the time spent waiting for a batch;
- ceiling: the same step on one batch kept on the device; ratio = train / ceiling;
- peak GPU memory allocated and reserved, host synchronisations per step (CUDA counts them);
- on CUDA, `av` again with data.decode=cuda, and nvJPEG's crops/s on one batch against
  simplejpeg's on one CPU core.
DIR/gpu_check.json is rewritten after every row (a check cut short keeps what it measured);
DIR/gpu_check.txt holds the table. `--size tiny` runs in seconds on a CPU (make test).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import numpy as np
import torch

# What the check imports besides torch (module -> pip name): a GPU box's image may lack a few.
REQUIRED = {"torchvision": "torchvision", "timm": "timm", "h5py": "h5py", "yaml": "pyyaml",
            "tqdm": "tqdm", "sklearn": "scikit-learn", "simplejpeg": "simplejpeg",
            "xxhash": "xxhash"}  # fmt: skip


@dataclass(frozen=True)
class Size:
    samples: int  # training samples in the cache
    batch: int
    frames: int  # face crops per sample
    face: int  # crop side in pixels
    mel: int  # the model's mel input side
    warmup: int  # steps before timing
    steps: int  # timed steps


SIZES = {
    "tiny": Size(48, 8, 2, 32, 64, 2, 6),
    "full": Size(4096, 128, 8, 224, 256, 24, 64),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the cache and report")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--size", default="tiny", choices=list(SIZES))
    parser.add_argument("--kinds", default="audio,faces,av", help="model kinds, in order")
    parser.add_argument("--modes", default="eager,compiled", help="eager, compiled or both")
    parser.add_argument("--workers", default="auto", help="data.workers for every row")
    return parser.parse_args(argv)


def missing_packages() -> list[str]:
    return [pip for module, pip in REQUIRED.items() if importlib.util.find_spec(module) is None]


def write_cache(root: Path, size: Size) -> None:
    """Spectrogram-like mel images and smooth faces, JPEG-coded as the default stores them."""
    from avcache.cache import schema
    from avcache.cache.atomic import write_json_atomic
    from avcache.cache.index import ShardRecord, build_index
    from avcache.cache.writer import ShardWriter

    if (root / schema.INDEX_FILE).exists():
        return
    (root / "shards").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = np.mgrid[0 : size.face, 0 : size.face][1]
    face = np.stack([(128 + 60 * np.sin(x / 9 + c)).astype(np.uint8) for c in range(3)], -1)
    records = []
    for split, samples in (("train", size.samples), ("val", max(8, size.samples // 8))):
        rel = f"shards/{split}.h5"
        with ShardWriter(root / rel, split=split, frames=size.frames, face_size=size.face,
                         codec="jpeg") as writer:  # fmt: skip
            for i in range(samples):
                mel = np.repeat(rng.integers(0, 255, (16, 256), dtype=np.uint8), 16, axis=0)
                faces = np.roll(np.broadcast_to(face, (size.frames, *face.shape)), i, axis=2)
                found = np.ones(size.frames, bool)
                boxes = np.zeros((size.frames, 4), np.float32)
                writer.append(schema.Sample(f"{split}{i:06d}.mp4", i % 2, mel, faces, True,
                                            found, boxes, 3.0))  # fmt: skip
            records.append(ShardRecord(rel, split, *writer.close()))
    config = {"splits": {"train": {}, "val": {}},
              "faces": {"frames": size.frames, "size": size.face}}  # fmt: skip
    write_json_atomic(root / schema.INDEX_FILE, build_index(config, "gpu-check", records))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def endless_batches(stream, loader):
    """The training loader's batches, epoch after epoch (its workers persist)."""
    for epoch in count():
        stream.set_epoch(epoch)
        yield from loader


def timed_steps(trainer, batches, size: Size) -> tuple[float, float]:
    """(samples/s, share of the time waiting for a batch) over `size.steps` steps."""
    for _ in range(size.warmup):
        trainer.train_step(next(batches), 0, True)
    sync(trainer.device)
    waited, start = 0.0, time.perf_counter()
    for _ in range(size.steps):
        mark = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - mark
        trainer.train_step(batch, 0, True)
    sync(trainer.device)
    seconds = time.perf_counter() - start
    return size.steps * size.batch / seconds, waited / seconds


def loader_alone(trainer, batches, size: Size) -> float:
    """samples/s of batches reaching the device (decoded there when it decodes), no step."""
    from avcache.train.augment import to_device
    from avcache.train.decode import decode_faces

    for _ in range(size.warmup):
        next(batches)
    sync(trainer.device)
    start = time.perf_counter()
    for _ in range(size.steps):
        to_device(decode_faces(next(batches), trainer.device), trainer.device)
    sync(trainer.device)
    return size.steps * size.batch / (time.perf_counter() - start)


def ceiling(trainer, batch: dict, size: Size) -> float:
    """samples/s of the same step on one batch that stays on the device."""
    batch = {key: value.to(trainer.device) if isinstance(value, torch.Tensor) else value
             for key, value in batch.items()}  # fmt: skip
    repeat = iter(lambda: batch, None)
    return timed_steps(trainer, repeat, size)[0]


def syncs_per_step(trainer, batches, steps: int = 8) -> float | None:
    """Host synchronisations CUDA counts in a step (None off CUDA)."""
    if trainer.device.type != "cuda":
        return None
    batch_list = [next(batches) for _ in range(steps)]
    sync(trainer.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for batch in batch_list:
                trainer.train_step(batch, 0, True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught) / steps


def measure(kind: str, decode: str, mode: str, cache_root: Path, args) -> dict:
    from avcache.cache import open_cache
    from avcache.train.config import TrainConfig
    from avcache.train.engine import Trainer

    size = SIZES[args.size]
    config = TrainConfig()
    config.model.kind, config.model.mel_size = kind, size.mel
    config.data.batch_size, config.data.decode = size.batch, decode
    config.data.workers = int(args.workers) if args.workers.isdigit() else args.workers
    config.run.device, config.run.epochs, config.run.compile = args.device, 1, mode == "compiled"
    cache = open_cache(cache_root)
    trainer = Trainer(config, cache, args.out / f"run-{kind}")
    device = trainer.device
    trainer.model.train()
    stream, loader = trainer._loader("train", trainer.fields, train=True)
    batches = endless_batches(stream, loader)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    alone = loader_alone(trainer, batches, size)
    fed, waited = timed_steps(trainer, batches, size)
    syncs = syncs_per_step(trainer, batches)
    best = ceiling(trainer, next(iter(stream_decoded_on_host(trainer))), size)
    return {
        "kind": kind, "decode": decode if kind != "audio" else "-", "mode": mode,
        "device": str(device), "workers": loader.num_workers,
        "loader_samples_per_s": alone, "train_samples_per_s": fed,
        "ceiling_samples_per_s": best, "ratio": fed / best, "data_wait_share": waited,
        "syncs_per_step": syncs, **gpu_memory(device),
    }  # fmt: skip


def stream_decoded_on_host(trainer):
    """An in-process stream of the training split with faces decoded by the CPU: the
    ceiling's batch, which never decodes."""
    from avcache.train.engine import make_loader

    stream, _ = make_loader(trainer.cache, "train", trainer.fields, trainer.config,
                            trainer.device, trainer.ranks, train=True)  # fmt: skip
    return stream


def gpu_memory(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"allocated_gib": None, "reserved_gib": None}
    return {"allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30}  # fmt: skip


def jpeg_rates(cache_root: Path, args) -> dict:
    """nvJPEG's crops/s decoding one training batch in one call, against simplejpeg's on one
    CPU core decoding the same crops."""
    import simplejpeg

    from avcache.cache import open_cache, schema
    from avcache.cache.codec import crop_ranges
    from avcache.train.decode import decode_faces
    from avcache.train.loader import JPEG_BYTES, JPEG_ENDS, LoaderPlan, ShardStream

    size, device = SIZES[args.size], torch.device("cuda")
    plan = LoaderPlan(batch_size=size.batch)
    stream = ShardStream(open_cache(cache_root).shards_of("train"), (schema.FACES,), plan,
                         jpeg_faces=True)  # fmt: skip
    batch = next(iter(stream))
    crops = [batch[JPEG_BYTES][a:b].numpy() for a, b in crop_ranges(batch[JPEG_ENDS].numpy(), 0)]
    for _ in range(3):
        decode_faces(batch, device)
    sync(device)
    start, rounds = time.perf_counter(), 10
    for _ in range(rounds):
        decode_faces(batch, device)
    sync(device)
    gpu = rounds * len(crops) / (time.perf_counter() - start)
    start = time.process_time()
    for crop in crops:
        simplejpeg.decode_jpeg(crop, "RGB")
    cpu = len(crops) / (time.process_time() - start)
    return {"kind": "jpeg", "crops": len(crops), "face": size.face,
            "nvjpeg_crops_per_s": gpu, "simplejpeg_crops_per_s_per_core": cpu,
            "nvjpeg_in_cores": gpu / cpu}  # fmt: skip


def versions() -> dict:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "timm": version("timm"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "driver": driver_version() if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "host_cores": len(os.sched_getaffinity(0)),
    }


def driver_version() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout else None


def plan_rows(args, cuda: bool) -> list[tuple[str, str, str]]:
    """(kind, decode, mode) in the order they run: eager first, so a short lease gets it."""
    kinds, modes = args.kinds.split(","), args.modes.split(",")
    rows = [(kind, "cpu", mode) for mode in modes for kind in kinds]
    if cuda and "av" in kinds:
        rows.insert(len(kinds), ("av", "cuda", modes[0]))
    return rows


def report(rows: list[dict]) -> str:
    lines = ["kind   decode  mode      workers  loader/s   train/s  ceiling/s  ratio  "
             "data wait  syncs/step  alloc GiB  reserved GiB"]  # fmt: skip
    for row in rows:
        if row["kind"] == "jpeg":
            lines.append(
                f"nvJPEG {row['nvjpeg_crops_per_s']:,.0f} crops/s of {row['face']} px "
                f"= {row['nvjpeg_in_cores']:.1f} cores of simplejpeg "
                f"({row['simplejpeg_crops_per_s_per_core']:,.0f} crops/s a core)"
            )
            continue
        cells = [_cell(row[key], ".1f") for key in ("syncs_per_step", "allocated_gib",
                                                    "reserved_gib")]  # fmt: skip
        lines.append(f"{row['kind']:<7}{row['decode']:<8}{row['mode']:<10}{row['workers']:>7}"
                     f"{row['loader_samples_per_s']:>10.1f}{row['train_samples_per_s']:>10.1f}"
                     f"{row['ceiling_samples_per_s']:>11.1f}{row['ratio']:>7.2f}"
                     f"{row['data_wait_share']:>11.1%}{cells[0]:>12}{cells[1]:>11}"
                     f"{cells[2]:>14}")  # fmt: skip
    return "\n".join(lines)


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_packages()
    if missing:
        print(f"gpu_check: missing Python packages: {' '.join(missing)} (pip install them, or "
              "on a box without network carry their wheels and pip install --no-index them)",
              file=sys.stderr)  # fmt: skip
        return 2
    from avcache.train.engine import select_device

    device = select_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    write_cache(args.out / "cache", SIZES[args.size])
    result = {"machine": versions(), "size": args.size, "device": str(device), "rows": []}
    cuda = device.type == "cuda"
    runs = plan_rows(args, cuda)
    for kind, decode, mode in runs:
        result["rows"].append(measure(kind, decode, mode, args.out / "cache", args))
        write_result(args.out, result)
        print(report(result["rows"][-1:]).splitlines()[-1], flush=True)
    if cuda:
        result["rows"].append(jpeg_rates(args.out / "cache", args))
        write_result(args.out, result)
    text = report(result["rows"])
    (args.out / "gpu_check.txt").write_text(text + "\n")
    print(text)
    return 0


def write_result(out: Path, result: dict) -> None:
    partial = out / "gpu_check.json.partial"
    partial.write_text(json.dumps(result, indent=1))
    partial.replace(out / "gpu_check.json")


if __name__ == "__main__":
    sys.exit(main())
