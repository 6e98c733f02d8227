"""Does the trainer wait for data? The real training step fed by the real loader, in a steady
state, against the same step on a batch already on the device (the no-data ceiling).

    python -m benchmarks.gpu_check --out DIR [--device auto|cpu|cuda] [--size tiny|full]
                                   [--kinds audio,faces,av,lips,speech,sync]
                                   [--modes eager,compiled] [--budget SECONDS]

It runs from a source checkout in any environment that has torch, a GPU box's own image
included: nothing to install, no network; a missing package is named in one line. A cache is
written under DIR/cache (full: 6,144 training samples in shards of 256, mel 256, 8 JPEG faces
of 224 px, one aligned track of 25 grey mouth frames of 88 px and 1 s of 16 kHz audio: the
shipped preprocessing layout), then for each kind and mode (bf16 autocast and channels_last
on CUDA; compiled: torch.compile) one row:
- loader: the DataLoader alone (persistent workers, pinned memory, the copy to the device,
  GPU decoding where it is on), samples/s;
- ceiling: the step on one batch kept on the device (cuDNN tuned and graphs compiled in its
  warm-up), samples/s;
- train: the step fed by the loader, samples/s, the share of the time spent waiting for a
  batch and, with data.decode=cuda, the host's time inside the GPU decoder per step; ratio =
  train / ceiling;
- epoch start: seconds from set_epoch to the first batch of a fresh epoch, workers alive;
- peak GPU memory allocated and reserved, host synchronisations per step (CUDA counts them,
  but not nvJPEG's own), the row's seconds;
- on CUDA, `av` again with data.decode=cuda, and nvJPEG's crops/s on one batch against
  simplejpeg's on one CPU core.
The loader and train phases each start on a fresh epoch and end inside it: an epoch here is
warm-up + timed batches, so the steady state is timed without an epoch boundary, whose cost
is the epoch start column.
DIR/gpu_check.json and DIR/gpu_check.txt are rewritten after every row (a check cut short
keeps what it measured). A later run into the same DIR (another --modes, another machine)
adds its rows, replacing those of the same kind, decode and mode; a skipped row never
replaces a measured one. With --budget, a row is skipped (and recorded so) when the seconds
left are fewer than the longest row of this run took. `--size tiny` runs in seconds on a CPU.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # imported where used: a missing package is named before anything fails
    from avcache.cache import schema

# What the check imports besides torch (module -> pip name): a GPU box's image may lack a few.
REQUIRED = {"torchvision": "torchvision", "timm": "timm", "h5py": "h5py", "yaml": "pyyaml",
            "tqdm": "tqdm", "sklearn": "scikit-learn", "simplejpeg": "simplejpeg",
            "xxhash": "xxhash"}  # fmt: skip
RESULT, TABLE = "gpu_check.json", "gpu_check.txt"
MODES = ("eager", "compiled")
# The shipped preprocessing's tracks (configs/preprocess.yaml): 25 fps, 16 kHz audio.
TRACK_FPS, TRACK_RATE = 25.0, 16000
SYNC_STEPS = 8  # steps whose host synchronisations CUDA counts
# FFDV's 242,000 training videos (docs/performance.md) in batches of 128: what an epoch
# start's seconds are spread over in a real run.
FFDV_EPOCH_BATCHES = 242_000 // 128


@dataclass(frozen=True)
class Size:
    batch: int
    shard: int  # samples per shard
    frames: int  # face crops per sample
    face: int  # crop side in pixels
    mel: int  # the model's mel input side
    track_frames: int  # mouth frames of the one track window
    track_size: int  # mouth crop side in pixels
    warmup: int  # steps before timing
    steps: int  # timed steps

    @property
    def samples(self) -> int:
        """Training samples: one epoch is exactly one phase's warm-up and timed batches."""
        return self.batch * (self.warmup + self.steps)


SIZES = {
    "tiny": Size(8, 16, 2, 32, 64, 8, 32, 1, 3),
    "full": Size(128, 256, 8, 224, 256, 25, 88, 8, 40),
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
    parser.add_argument("--kinds", help="model kinds, in order (default: every kind)")
    parser.add_argument("--modes", default="eager,compiled", help="eager, compiled or both")
    parser.add_argument("--workers", default="auto", help="data.workers for every row")
    parser.add_argument("--threads", type=int, default=0, help="run.threads for every row "
                        "(0: torch's own)")  # fmt: skip
    parser.add_argument("--budget", type=float, help="seconds this run may take (rows that "
                        "would not fit are skipped)")  # fmt: skip
    args = parser.parse_args(argv)
    args.modes = args.modes.split(",")
    if set(args.modes) - set(MODES):
        parser.error(f"--modes: {args.modes} (known: {', '.join(MODES)})")
    return args


def missing_packages() -> list[str]:
    return [pip for module, pip in REQUIRED.items() if importlib.util.find_spec(module) is None]


def model_kinds(args: argparse.Namespace) -> list[str]:
    from avcache.train.models import MODELS

    kinds = args.kinds.split(",") if args.kinds else list(MODELS)
    unknown = [kind for kind in kinds if kind not in MODELS]
    if unknown:
        raise ValueError(f"--kinds: {', '.join(unknown)} unknown (known: {', '.join(MODELS)})")
    return kinds


def track_layout(size: Size) -> schema.TrackLayout:
    from avcache.cache import schema

    return schema.TrackLayout(1, size.track_frames, size.track_size, TRACK_FPS, TRACK_RATE,
                              round(size.track_frames * TRACK_RATE / TRACK_FPS))  # fmt: skip


def cache_config(size: Size) -> dict:
    """The preprocessing config the index records: faces and tracks as the shards hold them."""
    from avcache.common.config import to_dict
    from avcache.preprocess.config import PreprocessConfig

    config = to_dict(PreprocessConfig())
    config["faces"].update(frames=size.frames, size=size.face, codec="jpeg")
    config["tracks"].update(windows=1, frames=size.track_frames, size=size.track_size,
                            fps=TRACK_FPS, audio_rate=TRACK_RATE)  # fmt: skip
    return config


def write_cache(root: Path, size: Size) -> float | None:
    """Spectrogram-like mel images, smooth faces and moving mouths, JPEG-coded as the default
    stores them; the seconds it took (None: the same cache was already there)."""
    from avcache.cache import schema
    from avcache.cache.index import ShardRecord, build_index
    from avcache.cache.writer import ShardWriter
    from avcache.common.atomic import write_json_atomic

    config, index = cache_config(size), root / schema.INDEX_FILE
    as_stored = json.loads(json.dumps(config))  # tuples as lists
    if index.exists() and json.loads(index.read_text()).get("config") == as_stored:
        return None
    shutil.rmtree(root, ignore_errors=True)  # a cache of another size, or another version
    (root / "shards").mkdir(parents=True)
    start, samples, records = time.perf_counter(), SampleMaker(size), []
    for split, count in (("train", size.samples), ("val", size.batch)):
        for first in range(0, count, size.shard):
            rel = f"shards/{split}-{first // size.shard:05d}.h5"
            layout = schema.ShardLayout(frames=size.frames, face_size=size.face, codec="jpeg",
                                        tracks=track_layout(size))  # fmt: skip
            with ShardWriter(root / rel, layout, split=split) as writer:
                for i in range(first, min(first + size.shard, count)):
                    writer.append(samples.make(f"{split}{i:06d}.mp4", i))
                records.append(ShardRecord(rel, split, *writer.close()))
    write_json_atomic(index, build_index(config, "gpu-check", records))
    return time.perf_counter() - start


class SampleMaker:
    """Samples of one size, cheap to make: what matters is their shapes and codecs (the
    loader's and the GPU's work), not their look."""

    LEVELS = 8  # mouth openings drawn

    def __init__(self, size: Size) -> None:
        self.size, self.layout = size, track_layout(size)
        self.rng = np.random.default_rng(0)
        x = np.mgrid[0 : size.face, 0 : size.face][1]
        face = np.stack([(128 + 60 * np.sin(x / 9 + c)).astype(np.uint8) for c in range(3)], -1)
        self.faces = np.broadcast_to(face, (size.frames, *face.shape))
        self.mouths = np.stack([self._mouth(level / (self.LEVELS - 1))
                                for level in range(self.LEVELS)])  # fmt: skip

    def _mouth(self, opening: float) -> np.ndarray:
        """A grey mouth crop: a dark gap `opening` (0 to 1) of its widest open."""
        side = self.size.track_size
        mouth = np.full((side, side), 150, np.uint8)
        gap = 1 + round(opening * side * 0.4)
        top = (side - gap) // 2
        mouth[top : top + gap, side // 4 : side - side // 4] = 30
        return mouth

    def make(self, name: str, i: int) -> schema.Sample:
        from avcache.cache import schema

        size, rng = self.size, self.rng
        mel = np.repeat(rng.integers(0, 255, (16, 256), dtype=np.uint8), 16, axis=0)
        faces = np.roll(self.faces, i, axis=2)
        found, boxes = np.ones(size.frames, bool), np.zeros((size.frames, 4), np.float32)
        sample = schema.Sample(name, i % 2, mel, faces, True, found, boxes, 3.0)
        sample.tracks = self._tracks(fake=bool(i % 2))
        return sample

    def _tracks(self, fake: bool) -> schema.Tracks:
        """A mouth that opens and closes, and noise as loud as it is open (a fake's follows
        another mouth)."""
        from avcache.cache import schema

        frames, length = self.layout.frames, self.layout.audio_samples
        opening = self.rng.integers(0, self.LEVELS, frames)
        heard = self.rng.permutation(opening) if fake else opening
        envelope = np.repeat(heard / (self.LEVELS - 1), -(-length // frames))[:length]
        audio = (self.rng.standard_normal(length) * envelope * 8000).astype(np.int16)
        return schema.Tracks(lips=self.mouths[opening][None], lips_found=np.ones((1, frames), bool),
                             start=np.zeros(1), frames_real=np.full(1, frames, np.int16),
                             audio=audio[None], audio_real=np.ones(1, np.float32))  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh_epoch(stream, loader, epoch: int, needed: int) -> tuple[Iterator[dict], float]:
    """The loader's batches of `epoch` from its first, and the seconds from set_epoch to
    that first batch. A phase of `needed` batches fits inside the epoch: a timed phase
    never crosses an epoch boundary."""
    stream.set_epoch(epoch)
    if len(stream) < needed:
        raise ValueError(f"an epoch of {len(stream)} batches is shorter than a phase ({needed})")
    start = time.perf_counter()
    batches = iter(loader)
    first = next(batches)
    return itertools.chain([first], batches), time.perf_counter() - start


def finish_epoch(batches: Iterator[dict]) -> None:
    """Read the epoch's rest, untimed: a DataLoader left mid-epoch drains its workers' queued
    batches when the next epoch starts, which would count as that epoch's start."""
    for _ in batches:
        pass


@dataclass(frozen=True)
class Timing:
    samples_per_s: float
    wait_share: float  # of the timed seconds, waiting for the next batch
    decode_share: float  # of the timed seconds, the host inside decode_faces
    step_s: float  # seconds a step


def timed_steps(trainer, batches: Iterator[dict], size: Size) -> Timing:
    """The step over `size.steps` batches after `size.warmup`, between two synchronisations."""
    from avcache.train.decode import decode_faces

    device = trainer.device
    for _ in range(size.warmup):
        trainer.train_step(next(batches), 0, True)
    sync(device)
    waited = decoding = 0.0
    start = time.perf_counter()
    for _ in range(size.steps):
        mark = time.perf_counter()
        batch = next(batches)
        fetched = time.perf_counter()
        # The step decodes the faces itself (a decoded batch passes through); decoded here,
        # the host's time in the call is timed: torchvision's batched nvJPEG waits for its
        # own stream inside it, which CUDA's count of synchronisations does not see.
        batch = decode_faces(batch, device)
        decoding += time.perf_counter() - fetched
        waited += fetched - mark
        trainer.train_step(batch, 0, True)
    sync(device)
    seconds = time.perf_counter() - start
    return Timing(size.steps * size.batch / seconds, waited / seconds, decoding / seconds,
                  seconds / size.steps)  # fmt: skip


def on_device(batch: dict, device: torch.device) -> dict:
    from avcache.train.augment import to_device
    from avcache.train.decode import decode_faces

    return to_device(decode_faces(batch, device), device)


def loader_alone(trainer, stream, loader, size: Size) -> tuple[float, dict]:
    """samples/s of batches reaching the device (decoded there when it decodes), no step, in
    epoch 0 (the workers start in its warm-up); and the last batch, for the ceiling."""
    batches, _ = fresh_epoch(stream, loader, 0, size.warmup + size.steps)
    for _ in range(size.warmup):
        batch = on_device(next(batches), trainer.device)
    sync(trainer.device)
    start = time.perf_counter()
    for _ in range(size.steps):
        batch = on_device(next(batches), trainer.device)
    sync(trainer.device)
    rate = size.steps * size.batch / (time.perf_counter() - start)
    finish_epoch(batches)
    return rate, batch


def fed_steps(trainer, stream, loader, size: Size) -> tuple[Timing, float]:
    """The step fed by the loader over epoch 1, and that epoch's start in seconds."""
    batches, epoch_start = fresh_epoch(stream, loader, 1, size.warmup + size.steps)
    timing = timed_steps(trainer, batches, size)
    finish_epoch(batches)
    return timing, epoch_start


def syncs_per_step(trainer, stream, loader) -> float | None:
    """Host synchronisations CUDA counts in a step, over epoch 2's first batches (None off
    CUDA). nvJPEG's waits inside torchvision's decoder are not among them."""
    from avcache.common.host_sync import host_syncs

    if trainer.device.type != "cuda":
        return None
    batches, _ = fresh_epoch(stream, loader, 2, SYNC_STEPS)
    batch_list = [next(batches) for _ in range(SYNC_STEPS)]
    sync(trainer.device)
    with host_syncs() as syncs:
        for batch in batch_list:
            trainer.train_step(batch, 0, True)
    return len(syncs) / SYNC_STEPS


def measure(kind: str, decode: str, mode: str, cache_root: Path, args) -> dict:
    """One row: the loader alone (epoch 0), the ceiling, the fed step (epoch 1)."""
    from avcache.cache import open_cache
    from avcache.train.config import TrainConfig
    from avcache.train.engine import Trainer

    size = SIZES[args.size]
    config = TrainConfig()
    config.model.kind, config.model.mel_size = kind, size.mel
    config.data.batch_size, config.data.decode = size.batch, "cpu" if decode == "-" else decode
    config.data.workers = int(args.workers) if args.workers.isdigit() else args.workers
    config.run.device, config.run.epochs, config.run.compile = args.device, 1, mode == "compiled"
    config.run.threads = args.threads
    trainer = Trainer(config, open_cache(cache_root), args.out / f"run-{kind}")
    trainer.model.train()
    stream, loader = trainer._loader("train", trainer.fields, train=True)
    alone, batch = loader_alone(trainer, stream, loader, size)
    best = timed_steps(trainer, itertools.repeat(batch), size).samples_per_s
    fed, epoch_start = fed_steps(trainer, stream, loader, size)
    decoded_here = trainer.decodes_faces_here("train")
    return {
        "kind": kind, "decode": decode, "mode": mode, "device": str(trainer.device),
        "workers": loader.num_workers, "loader_samples_per_s": alone,
        "train_samples_per_s": fed.samples_per_s, "ceiling_samples_per_s": best,
        "ratio": fed.samples_per_s / best, "data_wait_share": fed.wait_share,
        "epoch_start_s": epoch_start, "step_ms": fed.step_s * 1000,
        "decode_block_ms": fed.decode_share * fed.step_s * 1000 if decoded_here else None,
        "decode_block_share": fed.decode_share if decoded_here else None,
        "syncs_per_step": syncs_per_step(trainer, stream, loader),
        **gpu_memory(trainer.device),
    }  # fmt: skip


def fresh_device(device: torch.device) -> None:
    """Free what the previous row left (its trainer, loader workers, compiled graphs and
    cached blocks), so that each row's peaks are its own and its graphs compile afresh."""
    torch.compiler.reset()  # its graphs hold the previous model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def gpu_memory(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"allocated_gib": None, "reserved_gib": None}
    return {"allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30}  # fmt: skip


def jpeg_rates(cache_root: Path, size: Size, device: torch.device) -> dict:
    """nvJPEG's crops/s decoding one training batch in one call, against simplejpeg's on one
    CPU core decoding the same crops. `device` has its index, as the trainer's: torchvision
    keeps a decoder per device name, and `cuda` would build a second one beside `cuda:0`'s."""
    import simplejpeg

    from avcache.cache import open_cache, schema
    from avcache.cache.codec import crop_ranges
    from avcache.train.batches import JPEG_BYTES, JPEG_ENDS
    from avcache.train.decode import decode_faces
    from avcache.train.loader import LoaderPlan, ShardStream

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
    return {"kind": "jpeg", "decode": "cuda", "mode": "-", "crops": len(crops),
            "face": size.face, "nvjpeg_crops_per_s": gpu, "simplejpeg_crops_per_s_per_core": cpu,
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


def plan_rows(kinds: list[str], modes: list[str], cuda: bool) -> list[tuple[str, str, str]]:
    """(kind, decode, mode) in the order they run: a mode's kinds, then on CUDA `av` with
    the GPU decoding and nvJPEG's rate, then the next mode. Decode is `-` for a kind that
    reads no faces."""
    from avcache.cache import schema
    from avcache.train.config import MODEL_INPUTS

    rows = [(kind, "cpu" if schema.FACES in MODEL_INPUTS[kind] else "-", mode)
            for mode in modes for kind in kinds]  # fmt: skip
    if cuda and "av" in kinds:
        rows[len(kinds) : len(kinds)] = [("av", "cuda", modes[0]), ("jpeg", "cuda", "-")]
    return rows


class Budget:
    """Seconds left of --budget, counted from the check's start. A row is started only when
    at least as many seconds are left as the longest row so far took (none: unlimited)."""

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.clock, self.start = seconds, clock, clock()
        self.longest = 0.0

    def elapsed(self) -> float:
        return self.clock() - self.start

    def skip_reason(self) -> str | None:
        if self.seconds is None:
            return None
        left = self.seconds - self.elapsed()
        if left > 0 and left >= self.longest:
            return None
        reason = f"{max(left, 0):.0f} s of --budget {self.seconds:g} s left"
        return f"{reason}, the longest row took {self.longest:.0f} s" if self.longest else reason

    def took(self, seconds: float) -> None:
        self.longest = max(self.longest, seconds)


def load_result(out: Path, size: str, device: torch.device) -> dict:
    """The rows an earlier run left in `out` (another part of the check), or none."""
    path = out / RESULT
    if not path.exists():
        return {"size": size, "device": str(device), "sizes": asdict(SIZES[size]),
                "parts": [], "rows": []}  # fmt: skip
    result = json.loads(path.read_text())
    if (result.get("size"), result.get("device")) != (size, str(device)):
        raise ValueError(f"{path} holds --size {result.get('size')} rows on "
                         f"{result.get('device')}, not {size} on {device}: "
                         "use another --out")  # fmt: skip
    return result


def put_row(result: dict, row: dict) -> None:
    """Add a row, replacing an earlier one of the same kind, decode and mode (unless the new
    one was skipped and the old one measured)."""
    key = (row["kind"], row["decode"], row["mode"])
    for i, old in enumerate(result["rows"]):
        if (old["kind"], old["decode"], old["mode"]) == key:
            if "skipped" not in row or "skipped" in old:
                result["rows"][i] = row
            return
    result["rows"].append(row)


def run_row(kind: str, decode: str, mode: str, device: torch.device, args) -> dict:
    fresh_device(device)
    start = time.perf_counter()
    if kind == "jpeg":
        row = jpeg_rates(args.out / "cache", SIZES[args.size], device)
    else:
        row = measure(kind, decode, mode, args.out / "cache", args)
    return {**row, "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget)
    missing = missing_packages()
    if missing:
        print(f"gpu_check: missing Python packages: {' '.join(missing)} (pip install them, or "
              "on a box without network carry their wheels and pip install --no-index them)",
              file=sys.stderr)  # fmt: skip
        return 2
    from avcache.train.engine import select_device

    try:
        device = select_device(args.device)
        runs = plan_rows(model_kinds(args), args.modes, device.type == "cuda")
        result = load_result(args.out, args.size, device)
    except ValueError as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    written = write_cache(args.out / "cache", SIZES[args.size])
    part = len(result["parts"])
    result["parts"].append({"argv": sys.argv[1:] if argv is None else list(argv),
                            "machine": versions(), "cache_write_s": written,
                            "budget_s": args.budget})  # fmt: skip
    for kind, decode, mode in runs:
        reason = budget.skip_reason()
        if reason:
            row = {"kind": kind, "decode": decode, "mode": mode, "skipped": reason}
        else:
            row = run_row(kind, decode, mode, device, args)
            budget.took(row["seconds"])
        put_row(result, {**row, "part": part})
        result["parts"][part]["seconds"] = budget.elapsed()
        write_result(args.out, result)
        print(row_line(row), flush=True)
    print(report(result["rows"]))
    return 0


def write_result(out: Path, result: dict) -> None:
    partial = out / f"{RESULT}.partial"
    partial.write_text(json.dumps(result, indent=1))
    partial.replace(out / RESULT)
    (out / TABLE).write_text(report(result["rows"]) + "\n")


HEADER = ("kind   decode  mode      workers  loader/s   train/s  ceiling/s  ratio  data wait  "
          "epoch start s  decode block ms  syncs/step  alloc GiB  reserved GiB  row s")  # fmt: skip
NOTES = f"""\
- epoch start s: from set_epoch to a fresh epoch's first batch, workers alive; loader/s and
  train/s are timed inside one epoch. An FFDV epoch is ~{FFDV_EPOCH_BATCHES:,} batches of 128:
  its start costs epoch start s / ({FFDV_EPOCH_BATCHES:,} x 128 / train/s) of the epoch.
- syncs/step: CUDA's count (torch.cuda.set_sync_debug_mode). It misses nvJPEG's own waits:
  torchvision's batched decoder synchronises its stream inside the call, twice a batch. With
  decode=cuda, decode block ms is the host's time inside decode_faces a step (in brackets,
  its share of the step)."""


def report(rows: list[dict]) -> str:
    return "\n".join([HEADER, *(row_line(row) for row in rows), NOTES])


def row_line(row: dict) -> str:
    where = f"{row['kind']:<7}{row['decode']:<8}{row['mode']:<10}"
    if "skipped" in row:
        return f"{where}skipped: {row['skipped']}"
    if row["kind"] == "jpeg":
        return (f"nvJPEG {row['nvjpeg_crops_per_s']:,.0f} crops/s of {row['face']} px "
                f"= {row['nvjpeg_in_cores']:.1f} cores of simplejpeg "
                f"({row['simplejpeg_crops_per_s_per_core']:,.0f} crops/s a core)")  # fmt: skip
    block = "-"
    if row["decode_block_ms"] is not None:
        block = f"{row['decode_block_ms']:.1f} ({row['decode_block_share']:.0%})"
    cells = [_cell(row[key], ".1f") for key in ("syncs_per_step", "allocated_gib",
                                                "reserved_gib")]  # fmt: skip
    return (f"{where}{row['workers']:>7}{row['loader_samples_per_s']:>10.1f}"
            f"{row['train_samples_per_s']:>10.1f}{row['ceiling_samples_per_s']:>11.1f}"
            f"{row['ratio']:>7.2f}{row['data_wait_share']:>11.1%}{row['epoch_start_s']:>15.2f}"
            f"{block:>17}{cells[0]:>12}{cells[1]:>11}{cells[2]:>14}"
            f"{row['seconds']:>7.0f}")  # fmt: skip


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


if __name__ == "__main__":
    sys.exit(main())
