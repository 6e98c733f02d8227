"""Loader benchmark: ShardStream against the baseline's JPEG loader, a naive h5py Dataset and the
block-read ceiling, side by side in one run.

    python -m benchmarks.loader_bench [--samples 8192] [--shards 8] [--batch-size 256]
        [--block-sizes 16,32,64] [--faces-frames 8 --face-size 224 --av-samples 512
        --av-batch 32] [--baseline-samples 1024] [--passes 7] [--cold-passes 3]
        [--train-steps 3 --train-batch 16] [--open-shards 8] [--out DIR] [--tiny]

It builds its own data (under --out/data, kept; or in a temp folder, removed at the end):
- a mel-only cache (`faces.frames=0`): `--shards` shards of `--samples` in all, written with
  `cache.writer.ShardWriter` and committed with `cache.index`, as the preprocessor does. The
  mel images are random but spectrogram-like (a coarse random time-frequency grid, bilinearly
  upsampled, plus noise), so that their JPEGs have a real mel image's size and decoding cost;
  the HDF5 paths do not care about content (no compression, no filter);
- an av cache (mel + random faces, K x S x S x 3) of `--av-samples` in two shards;
- the first `--baseline-samples` mel images as one grey JPEG each (`cv2.imwrite`, quality 95),
  as the public baseline stores them.

One pass of a loader yields ready batches (shuffled, collated tensors) until its data is spent;
samples/s and MB/s count the bytes of those tensors:
- ours: `train.loader.ShardStream` iterated in this process (the target is per process),
  `LoaderPlan(batch_size, block_size)` for each `--block-sizes`; uint8 batches, every block's
  per-sample checksums checked, as training does;
- (a) baseline: a torch Dataset doing PIL `Image.open(path).convert('RGB')` +
  `Resize((256, 256))` + `ToTensor()` per sample, shuffling DataLoader, no workers; it yields
  float32 [3, 256, 256] (12x the bytes of our uint8 [256, 256]; its own recipe also flips and
  normalises, which this leaves out, so its figure is an upper bound);
- (b) naive: a map-style Dataset that opens the shards once and reads `ds[i]` (one h5py call)
  per `__getitem__` (labels read up front, in its favour), shuffling DataLoader, default collate;
- (c) ceiling: contiguous `read_direct` blocks of 256 or 512 samples into one preallocated
  array, file order, no shuffling, nothing checked;
- memcpy: `np.copyto` of the same bytes from memory, in the same blocks;
- av: ShardStream over (mel, faces) against block reads of both datasets;
- sum64 alone: one block of the first block size (mel; av mel + faces) read with `read_direct`,
  then `schema.sum64` of it, each timed on its own (medians of many repetitions). It runs
  before any loader opens the shards: HDF5 shares one open file, with the chunk-cache settings
  of its first opener, between every handle a process opens on it, and this read must go
  without the chunk cache, as ShardReader opens shards.
- open_cache: a third cache of `--open-shards` mel-only shards of the preprocessor's default
  shards.size (256), opened by `cache.reader.open_cache` (the index checked, every shard
  opened and checked against it), files in the page cache: ms per shard, the price every
  training, prediction or inspection start pays per shard (docs/hardening.md).
All of them run in this process with one torch thread (see LOADER_THREADS).

Warm: every file read once before the warm rounds. Cold: `posix_fadvise(DONTNEED)` on a
loader's files right before each of its passes, and the share of them still in the page cache
measured with mincore(2) as the pass starts; `echo 1 > /proc/sys/vm/drop_caches` is tried once
(it empties the whole machine's page cache, so it is only checked, not used per pass).
The machine is shared, so loaders take turns round by round (in a rotating order); a figure is
the median over rounds, and a ratio is given both as the ratio of medians and as the median of
the per-round ratios. Finally, a few CPU training steps of the `audio` model fed by
ShardStream through `train.augment.prepare` split a step into data wait, prepare and compute,
in this process and through a DataLoader with 2 workers. Results go to loader_bench.json.
`--tiny` runs every phase on a few samples: a check that the benchmark works, not a measurement.

Settled questions, answered in docs/performance.md ("Settled questions"), no longer timed here: what
HDF5's fletcher32 filter would cost the loader, (b) and (c) with HDF5's chunk cache off, the
stored chunks read raw (`read_direct_chunk`), and ours with the checksum check patched out.
Commit ce10495 still times them.
"""

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from benchmarks.common import (
    evict,
    load_average,
    machine,
    machine_busy_seconds,
    median_seconds,
    own_cpu_seconds,
    parse_with_tiny,
    read_all,
    resident_share,
)

RESULTS_FILE = "loader_bench.json"
MEL_SIZE = 256  # the side of a cached mel image (cache/schema.py MEL_SIZE)
GEN_BLOCK = 64  # samples generated at a time while writing (bounds memory)
MB = 1e6
# Loaders are timed with one torch thread, as in a DataLoader worker: with torch's default of one
# thread per core, ToTensor and default collate on a shared (oversubscribed) machine ran up to
# 10x slower than with one thread here (OpenMP threads waiting on busy cores), which would
# flatter our ratios to (a) and (b).
LOADER_THREADS = 1
# --tiny: every phase runs on a few samples (a test of the benchmark, not a measurement).
TINY = dict(samples=64, shards=2, batch_size=16, block_sizes="16", faces_frames=2, face_size=32,
            av_samples=8, av_batch=4, baseline_samples=16, passes=1, cold_passes=1,
            train_steps=1, train_batch=2, open_shards=2)  # fmt: skip
TARGETS = {  # (group, figure) -> minimum: the project's performance budget
    ("mel", "ours / (c) ceiling, warm"): 0.40,
    ("mel", "ours / (a) baseline, warm"): 50.0,
    ("mel", "ours / (b) naive, warm"): 1.5,
    ("mel", "samples/s, warm"): 100_000.0,
    ("av", "ours / (c) ceiling, warm"): 0.40,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        epilog="Settled, no longer timed here (answers in docs/performance.md; commit ce10495 "
        "times them): HDF5's fletcher32 filter, (b) and (c) with the chunk cache off, raw "
        "read_direct_chunk reads, ours without the checksum check.",
    )
    add = parser.add_argument
    add("--samples", type=int, default=8192, help="mel-only samples (64 KiB each)")
    add("--shards", type=int, default=8, help="shards of the mel-only cache")
    add("--batch-size", type=int, default=256, help="mel batch size of every loader")
    add("--block-sizes", default="16,32,64", help="LoaderPlan.block_size values to time")
    add("--faces-frames", type=int, default=8, help="K face frames per av sample")
    add("--face-size", type=int, default=224, help="S, face crop side")
    add("--av-samples", type=int, default=512, help="samples of the av cache (two shards)")
    add("--av-batch", type=int, default=32, help="batch size for av batches")
    add("--baseline-samples", type=int, default=1024, help="JPEGs for the baseline loader")
    add("--passes", type=int, default=7, help="warm rounds (every loader once per round)")
    add("--cold-passes", type=int, default=3, help="cold rounds (0: skip)")
    add("--train-steps", type=int, default=3, help="timed CPU training steps (0: skip)")
    add("--train-batch", type=int, default=16, help="batch size of the training steps")
    add("--open-shards", type=int, default=8, help="shards to time open_cache on (0: skip)")
    add("--seed", type=int, default=0)
    add("--out", type=Path, help="folder for the JSON and the data (default: temp, data removed)")
    args = parse_with_tiny(parser, argv, TINY)
    args.block_sizes = [int(v) for v in args.block_sizes.split(",") if v]
    if args.samples < args.shards or args.av_samples < 2 or not args.block_sizes:
        parser.error("need at least one sample per shard, two av samples and a block size")
    if min(args.passes, args.batch_size, args.av_batch, args.baseline_samples) < 1:
        parser.error("--passes, batch sizes and --baseline-samples must be positive")
    if args.open_shards < 0:
        parser.error("--open-shards must be 0 (skip) or more")
    return args


# ---------------------------------------------------------------- data


def mel_like(rng: np.random.Generator, count: int) -> np.ndarray:
    """uint8 [count, 256, 256] with a spectrogram's texture (smooth bands plus noise): pure
    noise would make JPEGs several times larger and slower to decode than real mel images."""
    coarse = rng.integers(0, 256, (count, 32, 64), dtype=np.uint8)
    out = np.empty((count, MEL_SIZE, MEL_SIZE), np.uint8)
    for i in range(count):
        out[i] = cv2.resize(coarse[i], (MEL_SIZE, MEL_SIZE), interpolation=cv2.INTER_LINEAR)
    out = (out >> 1) + (out >> 2)  # at most 190: room for the noise without wrapping
    out += rng.integers(0, 32, out.shape, dtype=np.uint8)
    return out


def write_shard(path: Path, number: int, count: int, args, faces: bool, rng) -> tuple[int, str]:
    """One shard through ShardWriter, as the preprocessor writes it; (num_samples, sha256)."""
    from avcache.cache import schema
    from avcache.cache.writer import ShardWriter

    frames, size = (args.faces_frames, args.face_size) if faces else (0, 0)
    writer = ShardWriter(path, schema.ShardLayout(frames=frames, face_size=size), split="train")
    with writer:
        for start in range(0, count, GEN_BLOCK):
            n = min(GEN_BLOCK, count - start)
            mels, labels = mel_like(rng, n), rng.integers(0, 2, n)
            crops = rng.integers(0, 256, (n, frames, size, size, 3), dtype=np.uint8)
            for i in range(n):
                writer.append(
                    schema.Sample(
                        video_name=f"bench-{number}-{start + i:06d}.mp4",
                        label=int(labels[i]),
                        mel=mels[i],
                        faces=crops[i],
                        has_audio=True,
                        face_found=np.ones(frames, np.bool_),
                        face_box=np.zeros((frames, 4), np.float32),
                        duration=5.0,
                    )
                )
        return writer.close()


def write_cache(root: Path, sizes: list[int], args, faces: bool, rng):
    """A committed cache (receipts, then index.json) of shards of the given sizes."""
    from avcache.cache import index, schema
    from avcache.cache.reader import open_cache
    from avcache.common.atomic import write_json_atomic

    (root / schema.SHARDS_DIR).mkdir(parents=True)
    records = []
    for number, count in enumerate(sizes):
        rel = f"{schema.SHARDS_DIR}/train-{number:05d}{schema.SHARD_SUFFIX}"
        num, digest = write_shard(root / rel, number, count, args, faces, rng)
        record = index.ShardRecord(path=rel, split="train", num_samples=num, sha256=digest)
        index.write_receipt(root, record)
        records.append(record)
    payload = index.build_index(cache_config(args, faces), "loader-bench", records)
    write_json_atomic(root / schema.INDEX_FILE, payload)
    return open_cache(root)


def cache_config(args, faces: bool) -> dict:
    """The preprocessing config the index records, as the preprocessor writes it (an object
    of sections: the reader refuses anything else), with the faces the shards hold."""
    from avcache.common.config import to_dict
    from avcache.preprocess.config import PreprocessConfig, TracksConfig

    config = to_dict(PreprocessConfig(tracks=TracksConfig(windows=0)))  # the shards hold none
    frames, size = (args.faces_frames, args.face_size) if faces else (0, 0)
    config["faces"].update(frames=frames, size=size, codec="raw")  # ShardWriter's default
    return config


def write_jpegs(cache, folder: Path, count: int) -> tuple[list[Path], np.ndarray]:
    """The first `count` mel images as grey JPEGs (cv2.imwrite, its default quality 95)."""
    from avcache.cache import schema
    from avcache.cache.reader import ShardReader

    folder.mkdir(parents=True)
    paths, labels = [], []
    for entry in cache.shards:
        with ShardReader(entry.path) as shard:
            take = min(count - len(paths), len(shard))
            mels, shard_labels = shard.read(schema.MEL, 0, take), shard.read(schema.LABEL, 0, take)
        for i in range(take):
            paths.append(folder / f"{len(paths):06d}.jpg")
            if not cv2.imwrite(str(paths[-1]), mels[i]):
                raise OSError(f"{paths[-1]}: cv2.imwrite failed")
        labels.extend(int(v) for v in shard_labels)
        if len(paths) >= count:
            break
    return paths, np.asarray(labels, np.int64)


def split_sizes(total: int, shards: int) -> list[int]:
    return [total // shards + (i < total % shards) for i in range(shards)]


def build_data(args, root: Path) -> dict:
    rng = np.random.default_rng(args.seed)
    clock = time.perf_counter()
    mel = write_cache(root / "mel-cache", split_sizes(args.samples, args.shards), args, False, rng)
    av = write_cache(root / "av-cache", split_sizes(args.av_samples, 2), args, True, rng)
    jpegs, labels = write_jpegs(mel, root / "jpegs", args.baseline_samples)
    os.sync()  # dirty pages cannot be evicted: make the new files clean for the cold passes
    return {
        "mel": mel,
        "av": av,
        "jpegs": jpegs,
        "jpeg_labels": labels,
        "build_seconds": time.perf_counter() - clock,
    }


def describe_data(data: dict) -> dict:
    def files_mib(paths: Iterable[Path]) -> float:
        return sum(Path(p).stat().st_size for p in paths) / 2**20

    mel_paths = [e.path for e in data["mel"].shards]
    av_paths = [e.path for e in data["av"].shards]
    return {
        "mel_cache": {
            "shards": len(mel_paths),
            "samples": data["mel"].num_samples(),
            "mib": files_mib(mel_paths),
        },
        "av_cache": {
            "shards": len(av_paths),
            "samples": data["av"].num_samples(),
            "mib": files_mib(av_paths),
        },
        "jpegs": {
            "files": len(data["jpegs"]),
            "mib": files_mib(data["jpegs"]),
            "mean_kib": files_mib(data["jpegs"]) * 1024 / max(len(data["jpegs"]), 1),
        },
        "build_seconds": data["build_seconds"],
    }


# ---------------------------------------------------------------- page cache


def try_drop_caches() -> str:
    """`echo 1 > /proc/sys/vm/drop_caches` (root, outside most containers)."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("1\n")
    except OSError as error:
        return f"refused ({error.strerror})"
    return "ok"


def check_eviction(paths: list[Path]) -> dict:
    """Does fadvise(DONTNEED) empty the page cache of these files here (and drop_caches)?"""
    read_all(paths)
    warm = resident_share(paths)
    evict(paths)
    after_fadvise = resident_share(paths)
    read_all(paths)
    drop = try_drop_caches()
    after_drop = resident_share(paths) if drop == "ok" else None
    return {
        "resident_after_read": warm,
        "resident_after_fadvise": after_fadvise,
        "fadvise_works": warm > 0.9 and after_fadvise < 0.05,
        "drop_caches": drop,
        "resident_after_drop_caches": after_drop,
    }


# ---------------------------------------------------------------- loaders


@dataclass
class Loader:
    """One way of producing ready batches; `run(epoch)` is one pass -> (samples, bytes)."""

    name: str
    group: str  # mel or av: which ceiling it is compared with
    role: str  # ours, baseline, naive, ceiling, memcpy
    files: list[Path]  # evicted before each cold pass (none: not timed cold)
    run: Callable[[int], tuple[int, int]]
    expected: int  # samples one pass must yield
    warm: list[float] = field(default_factory=list)  # seconds per pass
    cold: list[float] = field(default_factory=list)
    cold_resident: list[float] = field(default_factory=list)  # page-cache share as a pass starts
    nbytes: int = 0


def tensor_bytes(batch) -> int:
    values = batch.values() if isinstance(batch, dict) else batch
    return sum(v.nbytes for v in values if isinstance(v, torch.Tensor))


def stream_pass(stream) -> Callable[[int], tuple[int, int]]:
    from avcache.cache import schema

    def run(epoch: int) -> tuple[int, int]:
        stream.set_epoch(epoch)
        samples = nbytes = 0
        for batch in stream:
            samples += len(batch[schema.LABEL])
            nbytes += tensor_bytes(batch)
        return samples, nbytes

    return run


def loader_pass(loader: DataLoader) -> Callable[[int], tuple[int, int]]:
    def run(epoch: int) -> tuple[int, int]:
        loader.generator.manual_seed(epoch)
        samples = nbytes = 0
        for batch in loader:
            samples += len(batch[1])
            nbytes += tensor_bytes(batch)
        return samples, nbytes

    return run


class JpegDataset:
    """The baseline's Dataset: one JPEG per sample through PIL and torchvision."""

    def __init__(self, paths: list[Path], labels: np.ndarray) -> None:
        from torchvision import transforms

        self.paths, self.labels = paths, labels
        self.transform = transforms.Compose(
            [transforms.Resize((MEL_SIZE, MEL_SIZE)), transforms.ToTensor()]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image = Image.open(self.paths[i]).convert("RGB")
        return self.transform(image), int(self.labels[i])


class NaiveH5Dataset:
    """Map-style: the shards opened once, one `ds[i]` h5py read per sample."""

    def __init__(self, paths: list[Path]) -> None:
        from avcache.cache import schema

        self.files = [h5py.File(p, "r") for p in paths]
        self.mels = [f[schema.MEL] for f in self.files]
        self.labels = np.concatenate([f[schema.LABEL][:] for f in self.files])
        sizes = [len(d) for d in self.mels]
        self.where = [(s, i) for s, n in enumerate(sizes) for i in range(n)]

    def __len__(self) -> int:
        return len(self.where)

    def __getitem__(self, i: int):
        shard, position = self.where[i]
        return self.mels[shard][position], self.labels[i]


class BlockReads:
    """(c) the ceiling: contiguous blocks in file order into one preallocated array per field."""

    def __init__(self, paths: list[Path], fields: tuple[str, ...], block: int) -> None:
        self.files = [h5py.File(p, "r") for p in paths]
        self.datasets = [[f[name] for name in fields] for f in self.files]
        self.outs = [np.empty((block, *d.shape[1:]), d.dtype) for d in self.datasets[0]]
        self.block = block

    def __call__(self, epoch: int) -> tuple[int, int]:
        samples = nbytes = 0
        for datasets in self.datasets:
            total = len(datasets[0])
            for start in range(0, total, self.block):
                count = min(self.block, total - start)
                for dataset, out in zip(datasets, self.outs, strict=True):
                    dataset.read_direct(out[:count], np.s_[start : start + count])
                    nbytes += out[:count].nbytes
                samples += count
        return samples, nbytes


class Memcpy:
    """The same bytes copied from memory in the same blocks: what no reader can beat."""

    def __init__(self, source: np.ndarray, block: int) -> None:
        self.source, self.block = source, block
        self.out = np.empty((block, *source.shape[1:]), source.dtype)
        self.out.fill(0)  # fault the pages in now, not inside the first pass

    def __call__(self, epoch: int) -> tuple[int, int]:
        total = len(self.source)
        for start in range(0, total, self.block):
            count = min(self.block, total - start)
            np.copyto(self.out[:count], self.source[start : start + count])
        return total, self.source.nbytes


def shuffling(dataset, batch_size: int) -> DataLoader:
    """A shuffling DataLoader with no workers and default collate (reseeded every pass)."""
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=0, generator=torch.Generator()
    )


def adder(loaders: list[Loader], group: str, paths: list[Path], total: int) -> Callable:
    def add(name: str, role: str, run: Callable, files=paths, expected: int = total) -> None:
        loaders.append(Loader(name, group, role, list(files), run, expected))

    return add


def ours(add: Callable, label: str, shards: list, fields: tuple, batch: int, args) -> None:
    """ShardStream for each `--block-sizes`: the rows every ratio is computed for."""
    from avcache.train.loader import LoaderPlan, ShardStream

    for block in args.block_sizes:
        plan = LoaderPlan(batch_size=batch, block_size=block, seed=args.seed)
        add(f"{label} {block}", "ours", stream_pass(ShardStream(shards, fields, plan)))


def mel_loaders(args, data: dict) -> list[Loader]:
    """ours per block size, (a), (b), the ceilings and the memcpy, on the mel cache."""
    from avcache.cache import schema

    cache, mel, batch = data["mel"], (schema.MEL,), args.batch_size
    paths, loaders = [e.path for e in cache.shards], []
    add = adder(loaders, "mel", paths, cache.num_samples())
    ours(add, "ours block", cache.shards, mel, batch, args)
    jpegs = JpegDataset(data["jpegs"], data["jpeg_labels"])
    baseline = loader_pass(shuffling(jpegs, batch))
    add("(a) baseline JPEG+PIL", "baseline", baseline, data["jpegs"], len(jpegs))
    add("(b) naive h5py ds[i]", "naive", loader_pass(shuffling(NaiveH5Dataset(paths), batch)))
    for block in (256, 512):
        add(f"(c) block reads {block}", "ceiling", BlockReads(paths, mel, block))
    source = np.concatenate([read_mels(path) for path in paths])
    for block in (256, 512):
        add(f"memcpy {block}", "memcpy", Memcpy(source, block), files=())
    return loaders


def read_mels(path: Path) -> np.ndarray:
    """All mel images of one shard (the memcpy source)."""
    from avcache.cache import schema
    from avcache.cache.reader import ShardReader

    with ShardReader(path) as shard:
        return shard.read(schema.MEL)


def av_loaders(args, data: dict) -> list[Loader]:
    """ours (mel + faces) per block size against block reads of both datasets."""
    from avcache.cache import schema

    cache, fields, batch = data["av"], (schema.MEL, schema.FACES), args.av_batch
    paths, loaders = [e.path for e in cache.shards], []
    add = adder(loaders, "av", paths, cache.num_samples())
    ours(add, "ours av block", cache.shards, fields, batch, args)
    for block in (batch, 4 * batch):
        add(f"(c) av block reads {block}", "ceiling", BlockReads(paths, fields, block))
    return loaders


# ---------------------------------------------------------------- timing


def timed(loader: Loader, epoch: int, cold: bool) -> float:
    if cold:
        evict(loader.files)
        loader.cold_resident.append(resident_share(loader.files))
    start = time.perf_counter()
    samples, nbytes = loader.run(epoch)
    seconds = time.perf_counter() - start
    if samples != loader.expected:
        raise RuntimeError(
            f"{loader.name}: a pass yielded {samples} samples, not {loader.expected}"
        )
    loader.nbytes = nbytes
    return seconds


def run_rounds(loaders: list[Loader], rounds: int, cold: bool) -> None:
    """Every loader once per round, the order rotated each round so drift spreads evenly."""
    for number in range(rounds):
        turn = number % len(loaders)
        for loader in loaders[turn:] + loaders[:turn]:
            if cold and not loader.files:
                continue
            (loader.cold if cold else loader.warm).append(timed(loader, number, cold))
        print(f"  {'cold' if cold else 'warm'} round {number + 1}/{rounds} done", flush=True)


def rates(loader: Loader, cold: bool) -> list[float]:
    return [loader.expected / s for s in (loader.cold if cold else loader.warm)]


def summary(loader: Loader) -> dict:
    row: dict = {
        "group": loader.group,
        "role": loader.role,
        "samples_per_pass": loader.expected,
        "bytes_per_pass": loader.nbytes,
        "cold_resident_max": max(loader.cold_resident, default=None),
    }
    for phase in ("warm", "cold"):
        values = rates(loader, phase == "cold")
        median = statistics.median(values) if values else None
        row[phase] = {
            "samples_per_s": median,
            "mb_per_s": None if median is None else median * loader.nbytes / loader.expected / MB,
            "passes_samples_per_s": values,
        }
    return row


def best_per_round(loaders: list[Loader], cold: bool) -> list[float]:
    """Per round, the fastest of several loaders (the ceiling of that round)."""
    per_loader = [rates(loader, cold) for loader in loaders]
    return [max(values) for values in zip(*per_loader, strict=True)]


def ratio(ours: list[float], other: list[float]) -> dict:
    if not ours or not other:
        return {"of_medians": None, "paired_median": None}
    return {
        "of_medians": statistics.median(ours) / statistics.median(other),
        "paired_median": statistics.median(a / b for a, b in zip(ours, other, strict=True)),
    }


def compare(loaders: list[Loader]) -> dict:
    """Every ours row against (a), (b), the ceilings, and the memcpy, warm and cold."""
    by_role: dict[str, list[Loader]] = {}
    for loader in loaders:
        by_role.setdefault(f"{loader.group}:{loader.role}", []).append(loader)
    result = {}
    for loader in loaders:
        if loader.role != "ours":
            continue
        rows = {}
        for phase in ("warm", "cold"):
            cold, ours = phase == "cold", rates(loader, phase == "cold")
            for label, role in (
                ("(c) ceiling", "ceiling"),
                ("(a) baseline", "baseline"),
                ("(b) naive", "naive"),
                ("memcpy", "memcpy"),
            ):
                others = by_role.get(f"{loader.group}:{role}", [])
                if others and all(rates(o, cold) for o in others):
                    rows[f"ours / {label}, {phase}"] = ratio(ours, best_per_round(others, cold))
        result[loader.name] = rows
    return result


def sum64_timing(args, data: dict, repeats: int = 200) -> dict:
    """One block (the first block size) of each checksummed dataset: read_direct vs sum64 of
    it, each timed alone, medians. The share is what the check adds to a block read. Run it
    before any loader holds the shards open: the chunk cache stays off only for a first opener."""
    from avcache.cache import schema

    block, result = args.block_sizes[0], {}
    for group, fields in (("mel", (schema.MEL,)), ("av", (schema.MEL, schema.FACES))):
        with h5py.File(data[group].shards[0].path, "r", rdcc_nbytes=0) as handle:
            if handle.id.get_access_plist().get_cache()[2]:
                raise RuntimeError(f"{handle.filename}: already open with a chunk cache")
            for name in fields:
                dataset = handle[name]
                out = np.empty((min(block, len(dataset)), *dataset.shape[1:]), dataset.dtype)
                read = median_seconds(partial(dataset.read_direct, out, np.s_[: len(out)]), repeats)
                summed = median_seconds(partial(schema.sum64, out), repeats)
                result[f"{group} {name}"] = {
                    "block": len(out),
                    "mib": out.nbytes / 2**20,
                    "read_ms": read * 1e3,
                    "sum64_ms": summed * 1e3,
                    "sum64_gb_per_s": out.nbytes / summed / 1e9,
                    "share_of_read": summed / read,
                }
    return result


def shard_open_timing(args, root: Path, repeats: int = 20) -> dict:
    """What `open_cache` costs per shard (index schema, then every shard opened and checked
    against it) on `--open-shards` mel-only shards of the preprocessor's default size, the
    files in the page cache: the price every training, prediction or inspection start pays.
    Beside it, what reading every sample's identity costs (cache/identity.py: each shard
    opened once more, names, mel sums and durations read), which training pays again for the
    shards of its train and val splits (train/mix.py check_held_out)."""
    from avcache.cache.identity import shard_identities
    from avcache.cache.reader import open_cache
    from avcache.preprocess.config import ShardConfig

    per_shard = ShardConfig().size
    rng = np.random.default_rng(args.seed + 1)
    cache = write_cache(root, [per_shard] * args.open_shards, args, False, rng)
    seconds = median_seconds(partial(open_cache, root), repeats)
    identities = median_seconds(lambda: [shard_identities(e) for e in cache.shards], repeats)
    return {
        "shards": args.open_shards,
        "samples_per_shard": per_shard,
        "repeats": repeats,
        "ms_per_shard": seconds * 1e3 / args.open_shards,
        "identity_ms_per_shard": identities * 1e3 / args.open_shards,
    }


# ---------------------------------------------------------------- profile and training


def profile_stream(args, data: dict) -> dict:
    """cProfile of one warm pass of ShardStream (mel, first block size): where a batch goes."""
    from avcache.cache import schema
    from avcache.train.loader import LoaderPlan, ShardStream

    plan = LoaderPlan(batch_size=args.batch_size, block_size=args.block_sizes[0], seed=args.seed)
    stream = ShardStream(data["mel"].shards, (schema.MEL,), plan)
    run = stream_pass(stream)
    run(0)  # open the shards outside the profile
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.runcall(run, 1)
    seconds = time.perf_counter() - start
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(14)
    batches = -(-data["mel"].num_samples() // args.batch_size)
    return {
        "block_size": plan.block_size,
        "seconds_profiled": seconds,
        "batches": batches,
        "top_by_tottime": text.getvalue(),
    }


def train_steps(args, data: dict, workers: int) -> dict:
    """A few CPU steps of the audio model fed by ShardStream: data wait vs prepare vs compute."""
    from avcache.train.config import ModelConfig
    from avcache.train.loader import LoaderPlan, ShardStream
    from avcache.train.models import build_model

    torch.manual_seed(args.seed)
    model = build_model(ModelConfig(kind="audio"))
    plan = LoaderPlan(batch_size=args.train_batch, block_size=args.block_sizes[0], seed=args.seed)
    stream = ShardStream(data["mel"].shards, model.fields, plan)
    loader = (
        DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=4)
        if workers
        else stream
    )
    times = step_times(model, iter(loader), args.train_steps + 1, args.seed)
    first = {key: values.pop(0) for key, values in times.items()}  # start-up, kernel choice
    step = sum(sum(v) for v in times.values())
    return {
        "workers": workers,
        "batch": args.train_batch,
        "threads": torch.get_num_threads(),
        "steps": args.train_steps,
        "first_step_s": first,
        "seconds": {key: sum(v) for key, v in times.items()},
        "data_wait_share": sum(times["fetch"]) / step,
        "prepare_share": sum(times["prepare"]) / step,
        "samples_per_s": args.train_batch * args.train_steps / step,
    }


def step_times(model: torch.nn.Module, batches, steps: int, seed: int) -> dict[str, list[float]]:
    """Seconds per step spent waiting for the batch, in `prepare`, and in forward/backward/step."""
    from avcache.cache import schema
    from avcache.train.augment import prepare
    from avcache.train.config import AugmentConfig

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    times: dict[str, list[float]] = {"fetch": [], "prepare": [], "compute": []}
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        inputs = prepare(batch, model.fields, AugmentConfig(), generator)
        t2 = time.perf_counter()
        _, loss = model(inputs, batch[schema.LABEL].float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        t3 = time.perf_counter()
        for key, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            times[key].append(seconds)
    return times


# ---------------------------------------------------------------- report


def fmt_rate(value: float | None, scale: float = 1.0) -> str:
    return "—" if value is None else f"{value * scale:,.0f}"


def print_table(results: dict) -> None:
    print(
        f"\n{'loader':34} | {'warm samples/s':>14} {'MB/s':>8} | {'cold samples/s':>14} "
        f"{'MB/s':>8} | passes (warm samples/s)"
    )
    for name, row in results["loaders"].items():
        warm, cold = row["warm"], row["cold"]
        spread = ", ".join(f"{v:,.0f}" for v in warm["passes_samples_per_s"])
        print(
            f"{name:34} | {fmt_rate(warm['samples_per_s']):>14} {fmt_rate(warm['mb_per_s']):>8}"
            f" | {fmt_rate(cold['samples_per_s']):>14} {fmt_rate(cold['mb_per_s']):>8} | {spread}"
        )


GRID = ("(c) ceiling", "(a) baseline", "(b) naive", "memcpy")


def print_ratio_grid(results: dict, phase: str) -> None:
    """Every ours row against every reference, side by side (paired-median ratios)."""
    heads = [label.split(" ", 1)[0] for label in GRID]
    print(
        f"\nours / other, {phase} (paired medians)  {'samples/s':>9}", *(f"{h:>7}" for h in heads)
    )
    for name, ratios in results["ratios"].items():
        rate = results["loaders"][name][phase]["samples_per_s"]
        cells = []
        for label in GRID:
            value = ratios.get(f"ours / {label}, {phase}", {}).get("paired_median")
            cells.append(f"{'—' if value is None else f'{value:.3g}':>7}")
        print(f"{name:37} {fmt_rate(rate):>9}", *cells)


def check_targets(results: dict) -> dict:
    """Each performance target for every ours row: paired-median ratios, median rates."""
    checks = {}
    for name, ratios in results["ratios"].items():
        row = results["loaders"][name]
        for (group, figure), target in TARGETS.items():
            if group != row["group"]:
                continue
            if figure == "samples/s, warm":
                value = row["warm"]["samples_per_s"]
            else:
                value = ratios.get(figure, {}).get("paired_median")
            met = value is not None and value >= target
            checks[f"{name}: {figure}"] = {"value": value, "target": target, "met": met}
    return checks


def print_context(results: dict) -> None:
    data, evict_check = results["data"], results["eviction"]
    print(
        f"\nload average: start {results['load_average_start']}, "
        f"end {results['load_average_end']}; other processes used "
        f"{results['others_busy_cores']:.2f} cores on average meanwhile"
    )
    print(f"mel cache {data['mel_cache']}; av cache {data['av_cache']}; jpegs {data['jpegs']}")
    print(
        f"page cache: resident after read {evict_check['resident_after_read']:.1%}, after "
        f"fadvise(DONTNEED) {evict_check['resident_after_fadvise']:.1%} (works: "
        f"{evict_check['fadvise_works']}); drop_caches: {evict_check['drop_caches']}"
    )
    resident = [r["cold_resident_max"] for r in results["loaders"].values()]
    resident = [r for r in resident if r is not None]
    if resident:
        print(f"cold passes started with at most {max(resident):.1%} of their files resident")


def print_ratios(results: dict) -> None:
    for phase in ("warm", "cold"):
        print_ratio_grid(results, phase)
    print(f"\n{'ratio (ours row / other)':58} {'of medians':>10} {'paired':>8}")
    for name, rows in results["ratios"].items():
        for key, value in rows.items():
            if value["of_medians"] is not None:
                print(
                    f"{name + ': ' + key:58} {value['of_medians']:10.3g} "
                    f"{value['paired_median']:8.3g}"
                )
    print("\ntargets (performance budget), on paired-median ratios and median rates:")
    for key, check in results["targets"].items():
        value = "—" if check["value"] is None else f"{check['value']:,.3g}"
        print(
            f"  {'MET ' if check['met'] else 'MISS'} {key:58} {value:>10} (≥ {check['target']:,})"
        )


def print_report(results: dict) -> None:
    print_context(results)
    print_table(results)
    print_ratios(results)
    for name, row in results.get("sum64", {}).items():
        print(f"sum64 of one {name} block ({row['block']} samples, {row['mib']:.2f} MiB): "
              f"{row['sum64_ms']:.3f} ms ({row['sum64_gb_per_s']:.1f} GB/s) vs read_direct "
              f"{row['read_ms']:.3f} ms: {row['share_of_read']:.1%} of the read")  # fmt: skip
    if opening := results.get("shard_open"):
        print(f"open_cache: {opening['ms_per_shard']:.2f} ms per shard of "
              f"{opening['samples_per_shard']} mel-only samples ({opening['shards']} shards, "
              f"median of {opening['repeats']} opens, files in the page cache); every "
              f"sample's identity: {opening['identity_ms_per_shard']:.2f} ms a "
              "shard")  # fmt: skip
    for row in results["training"]:
        print(
            f"\ntraining, {row['workers']} workers, batch {row['batch']}, {row['threads']} "
            f"threads: data wait {row['data_wait_share']:.2%}, prepare "
            f"{row['prepare_share']:.2%}, {row['samples_per_s']:.1f} samples/s; "
            f"seconds {row['seconds']}; first step {row['first_step_s']}"
        )
    profile = results.get("profile")
    if profile:
        print(
            f"\nprofile of one warm ShardStream pass (block {profile['block_size']}, "
            f"{profile['batches']} batches, {profile['seconds_profiled']:.3f} s under cProfile):"
        )
        print(profile["top_by_tottime"])


# ---------------------------------------------------------------- main


def run_all(args, root: Path) -> dict:
    print(f"load average at start: {load_average()}", flush=True)
    results: dict = {
        "args": {**vars(args), "out": str(args.out)},
        "machine": machine(),
        "load_average_start": load_average(),
    }
    busy, own = machine_busy_seconds(), own_cpu_seconds()
    clock = time.perf_counter()
    print(f"building data in {root} ...", flush=True)
    data = build_data(args, root)
    results["data"] = describe_data(data)
    results["sum64"] = sum64_timing(args, data)  # before the loaders open the shards
    if args.open_shards:
        results["shard_open"] = shard_open_timing(args, root / "open-cache")
    loaders = mel_loaders(args, data) + av_loaders(args, data)
    every_file = sorted({p for loader in loaders for p in loader.files})
    results["eviction"] = check_eviction([e.path for e in data["mel"].shards])
    read_all(every_file)
    results["resident_before_warm_rounds"] = resident_share(every_file)
    threads = torch.get_num_threads()
    torch.set_num_threads(LOADER_THREADS)
    run_rounds(loaders, args.passes, cold=False)
    if args.cold_passes:
        run_rounds(loaders, args.cold_passes, cold=True)
    torch.set_num_threads(threads)
    results["loader_torch_threads"] = LOADER_THREADS
    results["loaders"] = {loader.name: summary(loader) for loader in loaders}
    results["ratios"] = compare(loaders)
    results["targets"] = check_targets(results)
    results["profile"] = profile_stream(args, data)
    workers = (0, 2) if args.train_steps else ()
    results["training"] = [train_steps(args, data, n) for n in workers]
    wall = time.perf_counter() - clock
    others = machine_busy_seconds() - busy - (own_cpu_seconds() - own)
    results["others_busy_cores"] = max(others, 0.0) / wall
    results["seconds"] = wall
    results["load_average_end"] = load_average()
    print(f"load average at end: {results['load_average_end']}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="avcache-loader-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    root = out / "data" if args.out else Path(tempfile.mkdtemp(prefix="avcache-loader-data-"))
    if args.out and root.exists():
        shutil.rmtree(root)  # a fresh cache every run
    try:
        results = run_all(args, root)
    finally:
        if not args.out:
            with contextlib.suppress(OSError):
                shutil.rmtree(root)
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=1, default=str) + "\n")
    print_report(results)
    print(f"\nresults: {out / RESULTS_FILE}" + (f"; data kept in {root}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
