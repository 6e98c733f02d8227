"""Hostile media and hostile label files through the real preprocessor.

One data root holds every kind of tests/hostile.py; `preprocess.run.main` caches
it with two workers (faces on, Haar, small) in a child process whose peak
memory is measured. Each kind is then either a correct sample or a failure with
the expected stage and a reason a user understands. Real ffmpeg, real HDF5.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from avcache.cache import open_cache, schema
from avcache.preprocess.audio import mel_image
from avcache.preprocess.config import (
    AudioConfig,
    FacesConfig,
    LimitsConfig,
    PreprocessConfig,
    TracksConfig,
)
from avcache.preprocess.dataset import Video
from avcache.preprocess.faces import detect_faces, read_frames
from avcache.preprocess.media import (
    Deadline,
    MediaInfo,
    TimeLimitExceeded,
    ffmpeg_binary,
    read_audio,
    run_ffmpeg,
)
from avcache.preprocess.run import main
from avcache.preprocess.worker import VideoFailed, process_video
from tests.hostile import (
    CACHED,
    KINDS,
    STALL_FIFO,
    make_all,
    plain,
    processes_naming,
    stalls_ffmpeg,
)

REPO = Path(__file__).resolve().parents[1]
FRAMES, FACE_SIZE = 2, 32
# Per video in the hostile run: the default, far beyond what any kind takes, so that only a
# hang reaches it (one that does is recorded as a timeout, and its kind's test fails); how
# fast the kinds go is for benchmarks/, not for a test on a shared, loaded machine.
LIMIT_S = 120
PEAK_RSS_BOUND_MB = 1500  # per worker, Haar faces (MTCNN adds ~0.9 GB of torch)
OPTIONS = [f"faces.frames={FRAMES}", f"faces.size={FACE_SIZE}", "faces.detector=haar"]

# Runs main() in a fresh interpreter, stops joblib's workers so that they are reaped,
# then reports the largest peak RSS among its children (the workers) and its own.
MEASURED_MAIN = """
import json, resource, sys
from joblib.externals.loky import get_reusable_executor
from avcache.preprocess.run import main
code = main(sys.argv[1:])
get_reusable_executor(reuse=True).shutdown(wait=True)
print(json.dumps({"exit": code,
                  "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_csv_labels(path: Path, rows: list[tuple[str, object]]) -> None:
    """A label file written by a CSV writer: names with quotes or commas get quoted."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_name", "target"])
        writer.writerows(rows)


@dataclass
class HostileRun:
    root: Path
    cache: Path
    exit: int
    worker_mb: float
    main_mb: float
    seconds: float
    output: str


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> HostileRun:
    root = tmp_path_factory.mktemp("hostile")
    make_all(root / "trainset")
    write_csv_labels(
        root / "train_label.txt", [(kind.file, i % 2) for i, kind in enumerate(KINDS.values())]
    )
    cache = tmp_path_factory.mktemp("hostile-cache") / "cache"
    argv = [
        "--data",
        str(root),
        "--out",
        str(cache),
        "--jobs",
        "2",
        "--quiet",
        "shards.size=3",
        f"limits.seconds_per_video={LIMIT_S}",
        *OPTIONS,
    ]
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", MEASURED_MAIN, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return HostileRun(
        root,
        cache,
        report["exit"],
        report["worker_mb"],
        report["main_mb"],
        seconds,
        result.stdout + result.stderr,
    )


@pytest.fixture(scope="module")
def outcomes(hostile) -> tuple[dict[str, schema.Sample], dict[str, object]]:
    cache = open_cache(hostile.cache)
    samples = {sample.video_name: sample for sample in cache.iter_samples("train")}
    failures = {failure.video_name: failure for failure in cache.failures()}
    return samples, failures


def test_the_run_completes_within_bounds(hostile, outcomes):
    samples, failures = outcomes
    assert hostile.exit == 0, hostile.output[-3000:]
    assert len(KINDS) >= 22
    recorded = sorted([*samples, *failures])
    assert recorded == sorted(kind.file for kind in KINDS.values()), "each kind ended once"
    assert len(samples) == sum(kind.outcome == CACHED for kind in KINDS.values())
    assert hostile.worker_mb < PEAK_RSS_BOUND_MB, f"peak RSS per worker {hostile.worker_mb:.0f} MB"
    print(
        f"\nhostile run: {len(KINDS)} kinds in {hostile.seconds:.1f} s, peak RSS "
        f"{hostile.worker_mb:.0f} MB per worker (largest), {hostile.main_mb:.0f} MB main"
    )


@pytest.mark.parametrize("name", [name for name, kind in KINDS.items() if kind.outcome == CACHED])
def test_kind_is_cached_correctly(outcomes, name):
    kind = KINDS[name]
    samples, failures = outcomes
    assert kind.file not in failures, failures.get(kind.file)
    sample = samples[kind.file]
    assert sample.mel.shape == (256, 256) and sample.mel.dtype == np.uint8
    assert sample.faces.shape == (FRAMES, FACE_SIZE, FACE_SIZE, 3)
    assert sample.has_audio == kind.has_audio
    if kind.has_audio and kind.audible:
        assert sample.mel.std() > 20, "the audio was decoded: a mel image, not a flat one"
    else:
        assert not sample.mel.any(), "no sound: the defined all-zero image"
    assert np.isfinite(sample.duration) and sample.duration > 0
    for frame in sample.faces:
        assert frame.std() > 10, "every face slot holds a decoded frame, never black"
    if kind.face:
        assert sample.face_found.all(), "the face is found in the displayed frame"


@pytest.mark.parametrize("name", [name for name, kind in KINDS.items() if kind.outcome != CACHED])
def test_kind_is_recorded_as_a_failure(outcomes, name):
    kind = KINDS[name]
    samples, failures = outcomes
    assert kind.file not in samples
    failure = failures[kind.file]
    assert failure.stage == kind.outcome
    for words in kind.reason:
        assert words in failure.error, failure.error


def test_the_two_audio_track_mkv_uses_the_speech_track(outcomes):
    samples, _ = outcomes
    two = samples[KINDS["mkv two audio tracks"].file].mel.astype(int)
    speech = samples[KINDS["name with spaces"].file].mel.astype(int)  # same speech, one track
    assert np.abs(two - speech).mean() < 10


def test_the_long_clip_is_cached_whole(outcomes):
    samples, _ = outcomes
    assert abs(samples[KINDS["10 minutes"].file].duration - 600.0) < 1.0


def test_lists_of_other_files_are_refused_before_anything_is_read(hostile, outcomes):
    _, failures = outcomes
    for name in ("stall.mp4", "playlist.m3u8"):
        assert "not a container avcache opens" in failures[name].error
    with pytest.raises(OSError) as error:  # a pipe without a reader refuses a writer
        os.close(os.open(hostile.root / "trainset" / STALL_FIFO, os.O_WRONLY | os.O_NONBLOCK))
    assert error.value.errno == errno.ENXIO, "no ffmpeg is left waiting on the pipe"


# Time limits -----------------------------------------------------------------


def test_a_tiny_limit_fails_videos_and_the_run_completes(tmp_path):
    root = tmp_path / "data"
    for name in ("a.mp4", "b.mp4"):
        (root / "trainset").mkdir(parents=True, exist_ok=True)
        plain(root / "trainset" / name)
    write_csv_labels(root / "train_label.txt", [("a.mp4", 0), ("b.mp4", 1)])
    out = tmp_path / "cache"
    argv = [
        "--data",
        str(root),
        "--out",
        str(out),
        "--jobs",
        "1",
        "--quiet",
        "limits.seconds_per_video=0.001",
        *OPTIONS,
    ]
    assert main(argv) == 1, "nothing could be cached"
    failures = open_cache(out).failures()
    assert [(f.video_name, f.stage) for f in failures] == [
        ("a.mp4", "timeout"),
        ("b.mp4", "timeout"),
    ]
    assert "limits.seconds_per_video = 0.001 s" in failures[0].error
    assert "raise limits.seconds_per_video, or set it to 0" in failures[0].error


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    plain(path)
    return path


def test_a_stalled_ffmpeg_is_killed_at_the_deadline(tmp_path):
    stall = tmp_path / "stall.mp4"
    stalls_ffmpeg(stall)  # a file list avcache refuses, so ffmpeg is run on it here directly
    command = [ffmpeg_binary(), "-nostdin", "-i", f"file:{stall}", "-f", "null", "-"]
    stopped = pytest.raises(TimeLimitExceeded, match=r"= 0\.5 s \(stopped in stage decode\)")
    with unstalled_after(600, tmp_path / STALL_FIFO), stopped:
        run_ffmpeg(command, Deadline(0.5))
    assert not processes_naming(stall), "the stalled ffmpeg is gone"
    with pytest.raises(OSError) as error:
        os.close(os.open(tmp_path / STALL_FIFO, os.O_WRONLY | os.O_NONBLOCK))
    assert error.value.errno == errno.ENXIO, "nothing is left reading the pipe"


@contextlib.contextmanager
def unstalled_after(seconds: float, fifo: Path) -> Iterator[None]:
    """Only stops a hung test: if the deadline failed to kill ffmpeg, the pipe it waits on
    is opened and closed after `seconds`, so that it reads an end of file and exits (and the
    test fails, as ffmpeg ended without a timeout)."""

    def release() -> None:
        with contextlib.suppress(OSError):  # ENXIO: no reader left, nothing to release
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    timer = threading.Timer(seconds, release)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def test_the_frame_loop_checks_the_deadline(clip):
    info, _ = read_audio(clip, ffmpeg_binary(), 44100, 2, 600.0)
    expired = Deadline(1e-6)
    time.sleep(0.01)
    with pytest.raises(TimeLimitExceeded, match="stage faces"):
        read_frames(clip, info, 4, expired)
    assert len(read_frames(clip, info, 4, Deadline(60))) == 4, "a limit set, the frames read"


def test_process_video_honours_the_limit(clip):
    config = PreprocessConfig(
        faces=FacesConfig(frames=2, size=32, detector="haar"),
        limits=LimitsConfig(seconds_per_video=1e-6),
    )
    with pytest.raises(VideoFailed) as failed:
        process_video(Video("train", "clip.mp4", 0, clip), config, "haar")
    assert failed.value.stage == "timeout"
    config.limits = LimitsConfig(seconds_per_video=0)  # 0: no limit
    assert process_video(Video("train", "clip.mp4", 0, clip), config, "haar").has_audio


def test_a_negative_limit_is_refused():
    with pytest.raises(ValueError, match=r"limits\.seconds_per_video must be >= 0"):
        LimitsConfig(seconds_per_video=-1)


# Memory ------------------------------------------------------------------------


def test_audio_is_capped_by_max_seconds():
    """The recipes cut or pad to the container duration: a long one must not allocate
    more than audio.max_seconds of audio (ffmpeg decoded no more than that)."""
    noise = np.random.default_rng(0).integers(-3000, 3000, (2 * 44100, 2), dtype=np.int16)
    pcm, config = noise.tobytes(), AudioConfig(max_seconds=2.0)
    long = mel_image(pcm, MediaInfo(duration=700.0, has_audio=True, has_video=True), config)
    capped = mel_image(pcm, MediaInfo(duration=2.0, has_audio=True, has_video=True), config)
    np.testing.assert_array_equal(long, capped)


# Label-file attacks --------------------------------------------------------------


_OPENED: list[set[str]] = []  # the sets that the audit hook fills while a test listens
_HOOKED: list[bool] = []  # an audit hook cannot be removed: it is added once and idles after


def _record_open(event: str, args: tuple) -> None:
    if event == "open" and _OPENED and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED[-1].add(os.fsdecode(args[0]))


@contextlib.contextmanager
def files_opened() -> Iterator[set[str]]:
    """Paths this process opens meanwhile."""
    if not _HOOKED:
        sys.addaudithook(_record_open)
        _HOOKED.append(True)
    _OPENED.append(set())
    try:
        yield _OPENED[-1]
    finally:
        _OPENED.pop()


@pytest.fixture
def attacked(tmp_path, clip) -> tuple[Path, Path]:
    """A data root with a bait video outside it that every attack points at."""
    root, bait = tmp_path / "data", tmp_path / "bait.mp4"
    (root / "trainset").mkdir(parents=True)
    bait.write_bytes(clip.read_bytes())
    (root / "trainset" / "a.mp4").write_bytes(clip.read_bytes())
    (root / "trainset" / "link.mp4").symlink_to(bait)
    (root / "trainset" / "loop.mp4").symlink_to("loop.mp4")
    return root, bait


def test_label_attacks_refuse_the_run_row_by_row(attacked, tmp_path, capsys):
    root, bait = attacked
    rows = [
        ("a.mp4", 0),
        ("../bait.mp4", 1),
        (str(bait), 0),
        ("link.mp4", 1),
        ("loop.mp4", 0),
        ("a.mp4", 1),
        ("./a.mp4", 0),
        ("b.mp4", "2"),
        ("c.mp4", "nan"),
        ("d.mp4", ""),
    ]
    write_csv_labels(root / "train_label.txt", rows)
    with files_opened() as opened:
        assert (
            main(["--data", str(root), "--out", str(tmp_path / "cache"), "--quiet", *OPTIONS]) == 2
        )
    assert opened, "the hook saw the label file being read"
    assert bait.resolve() not in {Path(path).resolve() for path in opened}, "the bait was not"
    assert not (tmp_path / "cache").exists(), "refused before any work"
    error = capsys.readouterr().err
    assert "9 bad row(s), nothing was cached" in error
    for line, reason in [
        (3, "'..' leaves the data root"),
        (4, "absolute path"),
        (5, "resolves outside the data root"),
        (6, "cannot be resolved"),
        (7, "duplicate of line 2"),
        (8, "same file as line 2"),
        (9, "target '2' is not 0 or 1"),
        (10, "target 'nan'"),
        (11, "target ''"),
    ]:
        assert f"train_label.txt:{line}: " in error and reason in error


def test_missing_files_are_recorded_and_the_rest_cached(attacked, tmp_path, caplog):
    root, _ = attacked
    (root / "trainset" / "alias.mp4").symlink_to("a.mp4")  # a link inside the root is fine
    write_csv_labels(root / "train_label.txt", [("alias.mp4", 0), ("gone.mp4", 1)])
    out = tmp_path / "cache"
    assert main(["--data", str(root), "--out", str(out), "--jobs", "1", "--quiet", *OPTIONS]) == 0
    assert "train_label.txt:3: 'gone.mp4'" in caplog.text
    cache = open_cache(out)
    assert [sample.video_name for sample in cache.iter_samples()] == ["alias.mp4"]
    assert [(f.video_name, f.stage) for f in cache.failures()] == [("gone.mp4", "resolve")]


@pytest.mark.parametrize("detector", ["haar", "mtcnn", "mediapipe", "mediapipe-full"])
def test_frames_smaller_than_the_smallest_face_have_none(detector):
    if detector == "mtcnn":
        pytest.importorskip("facenet_pytorch")
    frames = [np.full((32, 24, 3), 128, np.uint8)] * 2  # the 10-minute clip's size
    assert detect_faces(frames, detector, FacesConfig(min_face_size=40)) == [None, None]


def test_audio_only_is_cached_when_faces_and_tracks_are_off(tmp_path):
    KINDS["audio only"].make(tmp_path / "speech.mp4")
    video = Video("train", "speech.mp4", 1, tmp_path / "speech.mp4")
    with pytest.raises(VideoFailed, match=r"tracks: .* faces.frames=0 tracks.windows=0"):
        process_video(video, PreprocessConfig(faces=FacesConfig(frames=0)), "none")
    config = PreprocessConfig(faces=FacesConfig(frames=0), tracks=TracksConfig(windows=0))
    sample = process_video(video, config, "none")
    assert sample.has_audio and sample.mel.std() > 20 and sample.faces.shape[0] == 0
    assert sample.tracks is None


def test_ffmpeg_runs_apart_from_the_terminals_ctrl_c():
    """A terminal's Ctrl-C reaches its whole foreground process group; ffmpeg catches it and
    exits "normally", which would be recorded as the video's decoding failure. So every
    ffmpeg runs in a session of its own (the preprocessor stops its workers itself)."""
    from avcache.preprocess.media import NO_DEADLINE, run_ffmpeg

    done = run_ffmpeg([sys.executable, "-c", "import os; print(os.getsid(0), os.getpgid(0))"],
                      NO_DEADLINE)  # fmt: skip
    session, group = (int(value) for value in done.stdout.split())
    assert session != os.getsid(0) and group != os.getpgid(0)
