"""Scaling from 1 to 2 processes: preprocessing on loky and on Dask, training under torchrun.

    python -m benchmarks.scaling_bench [--videos 64] [--val 16] [--epochs 2] [--out DIR]
        [--tiny]

One run, on the same clips (the sample data set of `avcache-sample`, made here):
1. `avcache-preprocess` as a subprocess, mel and faces (4 frames of 64 px by the default
   detector, `faces.detector=auto`: MediaPipe where it is installed; the report names the
   detector the cache's index records), with `--jobs 1` and `--jobs 2` on loky, then
   `--backend dask --jobs 1` and `--jobs 2` (a local dask.distributed cluster). Wall time
   includes start-up, as a user sees it. All four caches must be byte-identical (their
   index.json, which holds every shard's sha256).
2. `torchrun --nproc_per_node 1` (torch on 2 threads) and `--nproc_per_node 2` (1 thread
   each) training the av model on that cache (mel resized to 128, batch 16 per rank,
   `accumulate` 2 and 1 so that both take the same steps); samples/s of the last epoch,
   from metrics.jsonl.
The machine is noisy: compare the ratios of one run. `--tiny` runs every step on a handful
of clips for one epoch: a check that the benchmark works, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import parse_with_tiny

REPO = Path(__file__).resolve().parents[1]
PREPROCESS = ["faces.frames=4", "faces.size=64", "shards.size=8"]
TEST_VIDEOS = 2  # the sample's test split: cached like the others, never trained on
TINY = {"videos": 4, "val": 2, "epochs": 1}


def run(command: list[str], env: dict | None = None) -> float:
    """Wall seconds of a command that must succeed."""
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, env={**os.environ, **(env or {})}, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - start


def make_data(root: Path, videos: int, val: int) -> Path:
    data = root / "data"
    run([sys.executable, "-m", "avcache.sample", str(data), "--train", str(videos),
         "--val", str(val), "--test", str(TEST_VIDEOS)])  # fmt: skip
    return data


def faces_label(cache: Path) -> str:
    """What the cache's faces are, from the config its index records (the detector there is
    the one `auto` resolved to on this machine), e.g. '4 mediapipe faces of 64 px'."""
    faces = json.loads((cache / "index.json").read_text())["config"]["faces"]
    return f"{faces['frames']} {faces['detector']} faces of {faces['size']} px"


def preprocess_rows(root: Path, data: Path, videos: int) -> list[dict]:
    rows, indexes = [], set()
    for backend in ("loky", "dask"):
        for jobs in (1, 2):
            out = root / f"cache-{backend}-{jobs}"
            seconds = run([sys.executable, "-m", "avcache.preprocess.run", "--data", str(data),
                           "--out", str(out), "--quiet", "--backend", backend,
                           "--jobs", str(jobs), *PREPROCESS])  # fmt: skip
            indexes.add((out / "index.json").read_text())
            rows.append({"backend": backend, "jobs": jobs, "seconds": seconds,
                         "videos_per_s": videos / seconds})  # fmt: skip
    assert len(indexes) == 1, "the four caches differ"
    return rows


def train_rows(root: Path, cache: Path, epochs: int) -> list[dict]:
    rows = []
    for ranks, threads, accumulate in ((1, 2, 2), (2, 1, 1)):
        out = root / f"run-{ranks}"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={ranks}", str(REPO / "train" / "run.py"),
                   "--cache", str(cache), "--out", str(out), "model.kind=av",
                   "model.mel_size=128", "data.batch_size=16", "data.workers=1",
                   f"optim.accumulate={accumulate}", f"run.epochs={epochs}",
                   f"run.threads={threads}"]  # fmt: skip
        seconds = run(command, env={"OMP_NUM_THREADS": str(threads)})
        last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        rows.append({"ranks": ranks, "threads_per_rank": threads, "seconds": seconds,
                     "samples_per_s": last["train_samples_per_s"],
                     "train_loss": last["train_loss"]})  # fmt: skip
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=64, help="training clips to make")
    parser.add_argument("--val", type=int, default=16, help="validation clips to make")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (last is timed)")
    parser.add_argument("--out", type=Path, help="keep everything here (default: a temp dir)")
    return parse_with_tiny(parser, argv, TINY)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        root = args.out or Path(temporary)
        root.mkdir(parents=True, exist_ok=True)
        data = make_data(root, args.videos, args.val)
        total = args.videos + args.val + TEST_VIDEOS
        pre = preprocess_rows(root, data, total)
        faces = faces_label(root / "cache-loky-1")
        train = train_rows(root, root / "cache-loky-1", args.epochs)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"\npreprocess {total} videos (mel + {faces}), wall time incl. start-up:")
    for row in pre:
        print(f"  {row['backend']:5} jobs {row['jobs']}: {row['seconds']:6.1f} s "
              f"{row['videos_per_s']:5.2f} videos/s")  # fmt: skip
    for backend in ("loky", "dask"):
        one, two = (r["videos_per_s"] for r in pre if r["backend"] == backend)
        print(f"  {backend}: 2 jobs / 1 job = {two / one:.2f}x")
    print("  all four caches byte-identical: yes")
    print(f"\ntrain av under torchrun, epoch {args.epochs}:")
    for row in train:
        print(f"  {row['ranks']} rank(s) x {row['threads_per_rank']} thread(s): "
              f"{row['samples_per_s']:6.1f} samples/s, loss {row['train_loss']:.6f}")  # fmt: skip
    print(f"  2 ranks / 1 rank = {train[1]['samples_per_s'] / train[0]['samples_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
