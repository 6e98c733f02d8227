"""Face storage benchmark: raw crops against JPEG, on real face crops, side by side in one run.

    python -m benchmarks.faces_bench [--videos 24] [--samples 512] [--rounds 5] [--out DIR]
        [--big-gb 0] [--tiny]

1. Real crops: the sample generator renders `--videos` clips of real faces and voices, and
   avcache-preprocess caches them raw (8 crops of 224 px, by the default detector: MediaPipe
   where installed).
2. Codec table: per JPEG quality (4:2:0, simplejpeg), bytes per crop, PSNR against the raw
   crop and encoding crops/s on one core; zlib (lossless) for comparison.
3. Decoders on one core: simplejpeg, OpenCV, PIL and torchvision.io on the q90 crops.
4. Loader: two av caches of `--samples` samples built from those crops (names differ, bytes
   repeat), raw and jpeg q90, streamed by train.loader.ShardStream in this process (one
   decoding core), warm and cold (pages evicted with posix_fadvise before each pass), beside
   the disk-read ceiling for the same files (read whole, warm and cold); and the jpeg cache
   as `data.decode=cuda` reads it (bytes and checksums, crop headers checked, not decoded:
   the host's share of GPU decoding). Rounds alternate.
5. With `--big-gb N`: a raw cache of about N GB (more than this machine's memory, to see what
   streaming from disk gives) and its jpeg twin, each streamed for one epoch through a
   DataLoader with 2 workers.

Results go to DIR/faces_bench.json and a short report on stdout. `--tiny` runs every step
on 2 clips and 16 samples, once: a check that the benchmark works, not a measurement.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.io import decode_jpeg

from avcache.cache import open_cache, schema
from avcache.cache.index import ShardRecord, build_index
from avcache.cache.writer import ShardWriter
from avcache.common.atomic import write_json_atomic
from avcache.train.loader import LoaderPlan, ShardStream
from benchmarks.common import (
    evict,
    machine,
    median_rate,
    parse_with_tiny,
    read_all,
    resident_share,
)

QUALITIES = (75, 85, 90, 95)
FRAMES, SIZE = 8, 224
MB = 1e6
TINY = {"videos": 2, "samples": 16, "shard_size": 8, "batch_size": 8, "rounds": 1}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=24, help="clips rendered for real crops")
    parser.add_argument("--samples", type=int, default=512, help="samples per loader cache")
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--big-gb", type=float, default=0.0, help="larger-than-RAM pass (GB)")
    parser.add_argument("--out", type=Path, help="keep data and results here")
    return parse_with_tiny(parser, argv, TINY)


def real_crops(root: Path, videos: int) -> np.ndarray:
    """[N, 8, 224, 224, 3] face crops of real clips, as avcache-preprocess makes them."""
    data, cache = root / "sample", root / "crops-cache"
    if not (cache / schema.INDEX_FILE).exists():
        run([sys.executable, "-m", "avcache.sample", str(data), "--train", str(videos),
             "--val", "0", "--test", "0"])  # fmt: skip
        options = ["faces.codec=raw", f"faces.frames={FRAMES}", f"faces.size={SIZE}"]
        run([sys.executable, "-m", "avcache.preprocess.run",
             "--data", str(data), "--out", str(cache),
             "--quiet", *options])  # fmt: skip
    return np.stack([sample.faces for sample in open_cache(cache).iter_samples()])


def run(command: list[str]) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / error))


def codec_table(crops: np.ndarray, rounds: int) -> dict:
    flat = crops.reshape(-1, SIZE, SIZE, 3)
    table = {"raw": {"bytes_per_crop": SIZE * SIZE * 3}}
    packed = [zlib.compress(crop.tobytes(), 6) for crop in flat]
    table["zlib-6"] = {"bytes_per_crop": float(np.mean([len(p) for p in packed]))}
    for quality in QUALITIES:
        encoded = [simplejpeg.encode_jpeg(crop, quality, "RGB", "420") for crop in flat]
        decoded = [simplejpeg.decode_jpeg(e, "RGB") for e in encoded]
        table[f"jpeg q{quality}"] = {
            "bytes_per_crop": float(np.mean([len(e) for e in encoded])),
            "psnr_db": float(np.mean([psnr(a, b) for a, b in zip(flat, decoded, strict=True)])),
            "encode_crops_per_s": median_rate(
                len(flat),
                lambda q=quality: [simplejpeg.encode_jpeg(c, q, "RGB", "420") for c in flat],
                rounds,
            ),
        }
    return table


def decoders(crops: np.ndarray, rounds: int) -> dict:
    """Crops/s of one core decoding the q90 crops to RGB arrays."""
    flat = crops.reshape(-1, SIZE, SIZE, 3)
    encoded = [simplejpeg.encode_jpeg(crop, 90, "RGB", "420") for crop in flat]
    arrays = [np.frombuffer(e, np.uint8) for e in encoded]
    tensors = [torch.frombuffer(bytearray(e), dtype=torch.uint8) for e in encoded]
    out = np.empty((SIZE, SIZE, 3), np.uint8)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    calls = {
        "simplejpeg (into the batch)": lambda: [
            simplejpeg.decode_jpeg(e, "RGB", buffer=out) for e in encoded
        ],
        "opencv imdecode + BGR->RGB": lambda: [
            cv2.cvtColor(cv2.imdecode(a, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for a in arrays
        ],
        "PIL": lambda: [np.asarray(Image.open(io.BytesIO(e)).convert("RGB")) for e in encoded],
        "torchvision.io.decode_jpeg": lambda: [decode_jpeg(t) for t in tensors],
    }
    return {name: median_rate(len(encoded), call, rounds) for name, call in calls.items()}


def mel_of(number: int) -> np.ndarray:
    rng = np.random.default_rng(number)
    coarse = rng.integers(0, 255, (16, 16), dtype=np.uint8)
    return cv2.resize(coarse, (256, 256), interpolation=cv2.INTER_LINEAR)


def write_av_cache(root: Path, crops: np.ndarray, samples: int, codec: str,
                   shard_size: int) -> list[Path]:  # fmt: skip
    """A committed av cache of `samples` samples, its faces taken from `crops` in turn."""
    if (root / schema.INDEX_FILE).exists():
        return [entry.path for entry in open_cache(root).shards]
    (root / "shards").mkdir(parents=True)
    records = []
    for number, start in enumerate(range(0, samples, shard_size)):
        rel = f"shards/train-{number:05d}.h5"
        with ShardWriter(
            root / rel,
            schema.ShardLayout(frames=FRAMES, face_size=SIZE, codec=codec),
            split="train",
        ) as writer:
            for i in range(start, min(start + shard_size, samples)):
                writer.append(schema.Sample(
                    f"v{i:07d}.mp4", i % 2, mel_of(i % 64), crops[i % len(crops)], True,
                    np.ones(FRAMES, bool), np.zeros((FRAMES, 4), np.float32), 3.0))  # fmt: skip
            records.append(ShardRecord(rel, "train", *writer.close()))
    config = {"splits": {"train": {}}, "faces": {"frames": FRAMES, "size": SIZE}}
    write_json_atomic(root / schema.INDEX_FILE, build_index(config, codec, records))
    return [root / record.path for record in records]


def stream_epoch(root: Path, batch_size: int, workers: int = 0, jpeg_faces: bool = False) -> int:
    """Samples of one epoch of av batches (mel + faces), shuffled, decoded (or, with
    `jpeg_faces`, left as checked JPEG bytes for the training device)."""
    stream = ShardStream(open_cache(root).shards, (schema.MEL, schema.FACES),
                         LoaderPlan(batch_size=batch_size, shuffle=True),
                         jpeg_faces=jpeg_faces)  # fmt: skip
    if not workers:
        return sum(len(batch[schema.MEL]) for batch in stream)
    loader = DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=4)
    return sum(len(batch[schema.MEL]) for batch in loader)


def loader_rates(caches: dict[str, list[Path]], roots: dict[str, Path], samples: int,
                 args) -> dict:  # fmt: skip
    """samples/s and MB/s of disk bytes: ShardStream and whole-file reads, warm and cold."""
    results: dict[str, dict[str, list[float]]] = {}
    torch.set_num_threads(1)
    modes = [(codec, codec, False) for codec in caches] + [("jpeg", "jpeg undecoded", True)]
    for _ in range(args.rounds):
        for codec, mode, jpeg_faces in modes:
            paths = caches[codec]
            size = sum(p.stat().st_size for p in paths)
            for phase in ("warm", "cold"):
                if phase == "cold":
                    evict(paths)
                else:
                    read_all(paths)
                start = time.perf_counter()
                count = stream_epoch(roots[codec], args.batch_size, jpeg_faces=jpeg_faces)
                seconds = time.perf_counter() - start
                results.setdefault(f"{mode} loader {phase}", {}).setdefault("rate", []).append(
                    count / seconds
                )
                if jpeg_faces:  # the same files as the decoded jpeg pass: no second disk read
                    continue
                if phase == "cold":
                    evict(paths)
                start = time.perf_counter()
                read_all(paths)
                seconds = time.perf_counter() - start
                results.setdefault(f"{codec} disk read {phase}", {}).setdefault("rate", []).append(
                    samples / seconds)  # fmt: skip
                results[f"{codec} disk read {phase}"]["mb_per_s"] = size / seconds / MB
    return {name: {"samples_per_s": statistics.median(value["rate"]), **(
        {"mb_per_s": value["mb_per_s"]} if "mb_per_s" in value else {})}
        for name, value in results.items()}  # fmt: skip


def big_pass(root: Path, crops: np.ndarray, gigabytes: float, args) -> dict:
    """One epoch each of a raw cache larger than memory and its jpeg twin (2 workers)."""
    samples = int(gigabytes * 1e9 / (FRAMES * SIZE * SIZE * 3 + 256 * 256))
    results = {"samples": samples}
    for codec in ("jpeg", "raw"):
        started = time.perf_counter()
        paths = write_av_cache(root / f"big-{codec}", crops, samples, codec, args.shard_size)
        size = sum(p.stat().st_size for p in paths)
        evict(paths)
        start = time.perf_counter()
        count = stream_epoch(root / f"big-{codec}", args.batch_size, workers=2)
        seconds = time.perf_counter() - start
        results[codec] = {"gb": size / 1e9, "write_seconds": start - started,
                          "epoch_samples_per_s": count / seconds,
                          "epoch_mb_per_s": size / seconds / MB,
                          "resident_after": resident_share(paths)}  # fmt: skip
    return results


def report(results: dict) -> None:
    print(f"machine: {results['machine']['cores']} cores, {results['machine']['memory_gib']} GiB")
    print("codec          bytes/crop  ratio  PSNR dB  encode crops/s")
    raw = results["codecs"]["raw"]["bytes_per_crop"]
    for name, row in results["codecs"].items():
        psnr_db, encode = row.get("psnr_db", float("inf")), row.get("encode_crops_per_s", 0)
        print(
            f"{name:<14}{row['bytes_per_crop']:>11.0f}{raw / row['bytes_per_crop']:>7.1f}"
            f"{psnr_db:>9.1f}{encode:>16.0f}"
        )
    print("decoders, q90 crops/s on one core:")
    for name, rate in results["decoders"].items():
        print(f"  {name:<30}{rate:>8.0f}")
    print("av samples/s (mel + 8 faces of 224 px), one process:")
    for name, row in results["loader"].items():
        extra = f"  ({row['mb_per_s']:.0f} MB/s)" if "mb_per_s" in row else ""
        print(f"  {name:<24}{row['samples_per_s']:>9.1f}{extra}")
    for codec in ("raw", "jpeg"):
        loader, disk = (
            results["loader"][f"{codec} loader cold"],
            results["loader"][f"{codec} disk read cold"],
        )
        print(
            f"  {codec}: loader cold / disk-read ceiling cold = "
            f"{loader['samples_per_s'] / disk['samples_per_s']:.2f}"
        )
    if "big" in results:
        print(f"larger than memory ({results['big']['samples']} samples):")
        for codec in ("raw", "jpeg"):
            row = results["big"][codec]
            print(
                f"  {codec}: {row['gb']:.1f} GB, {row['epoch_samples_per_s']:.1f} samples/s, "
                f"{row['epoch_mb_per_s']:.0f} MB/s, {row['resident_after']:.0%} resident after"
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = args.out or Path(tempfile.mkdtemp(prefix="faces-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        crops = real_crops(root, args.videos)
        results = {"machine": machine(), "crops": int(crops.shape[0] * crops.shape[1]),
                   "load_average": os.getloadavg(),
                   "codecs": codec_table(crops, args.rounds),
                   "decoders": decoders(crops, args.rounds)}  # fmt: skip
        roots = {codec: root / f"av-{codec}" for codec in ("raw", "jpeg")}
        caches = {codec: write_av_cache(path, crops, args.samples, codec, args.shard_size)
                  for codec, path in roots.items()}  # fmt: skip
        results["bytes_per_sample"] = {
            codec: sum(p.stat().st_size for p in paths) / args.samples
            for codec, paths in caches.items()
        }
        results["loader"] = loader_rates(caches, roots, args.samples, args)
        if args.big_gb:
            results["big"] = big_pass(root, crops, args.big_gb, args)
        (root / "faces_bench.json").write_text(json.dumps(results, indent=1))
        report(results)
        print(
            f"bytes per av sample: raw {results['bytes_per_sample']['raw']:.0f}, "
            f"jpeg {results['bytes_per_sample']['jpeg']:.0f}; results in {root}"
        )
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
