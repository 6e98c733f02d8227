"""The work of one joblib task: turn one shard's videos into one finished shard.

Runs in a worker process. Each video either becomes a Sample or a Failure
naming the stage that failed; one bad file never costs the shard.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import resource
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from threadpoolctl import threadpool_limits

from avcache.cache import schema
from avcache.cache.index import Failure, ShardRecord, write_receipt
from avcache.cache.reader import ShardFacts, ShardReader
from avcache.cache.writer import ShardWriter
from avcache.preprocess.audio import MEL_MODES, mel_image
from avcache.preprocess.config import PreprocessConfig
from avcache.preprocess.dataset import ShardPlan, Video
from avcache.preprocess.faces import FaceFrames, face_frames, faces_from, resolve_detector
from avcache.preprocess.facts import video_facts
from avcache.preprocess.frames import decode_frames
from avcache.preprocess.media import (
    Deadline,
    MediaError,
    MediaInfo,
    TimeLimitExceeded,
    ffmpeg_binary,
    read_audio,
)
from avcache.preprocess.tracks import (
    choose_windows,
    on_timeline,
    track_layout,
    track_rate_audio,
    video_tracks,
)

log = logging.getLogger(__name__)


class VideoFailed(Exception):
    """Carries the stage and the reason a video could not be cached."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason = stage, reason


TIMEOUT_STAGE = "timeout"


# Where a video's CPU goes, by step, while cpu_by_step() is open in this thread.
_SPENT: ContextVar[dict[str, float] | None] = ContextVar("avcache_cpu_by_step", default=None)


@contextlib.contextmanager
def cpu_by_step() -> Iterator[dict[str, float]]:
    """CPU seconds each step of process_video takes (by its function's name: read_audio,
    mel_image, decode_frames, ...), summed while open: this process's and that of the ffmpeg
    processes the step waited for (benchmarks/preprocess_bench.py: where a video's time
    goes). Exact with one thread at work in the process, as in a preprocessing worker."""
    spent: dict[str, float] = {}
    token = _SPENT.set(spent)
    try:
        yield spent
    finally:
        _SPENT.reset(token)


def _cpu_seconds() -> float:
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _stage(name: str, deadline: Deadline, function: Callable, *args):
    """Run one stage; any error it raises is recorded against the video, never swallowed.

    A stage that cannot be interrupted (the mel) is judged when it returns: a video
    past its limit fails even if that stage finished, so the limit means one thing.
    """
    spent = _SPENT.get()
    start = _cpu_seconds() if spent is not None else 0.0  # two system calls: only if asked
    try:
        result = function(*args)
        deadline.check(name)
        return result
    except TimeLimitExceeded as error:
        raise VideoFailed(TIMEOUT_STAGE, str(error)) from None
    except MediaError as error:
        raise VideoFailed(name, str(error)) from None
    except Exception as error:  # librosa, OpenCV, torch: all of them are this video's failure
        raise VideoFailed(name, f"{type(error).__name__}: {error}") from None
    finally:
        if spent is not None:
            step = function.__name__
            spent[step] = spent.get(step, 0.0) + _cpu_seconds() - start


def process_video(video: Video, config: PreprocessConfig, detector: str) -> schema.Sample:
    """Probe, mel image and face frames of one video; raises VideoFailed."""
    if video.path is None:
        folders = ", ".join(f"{folder}/" for folder in config.splits[video.split].videos)
        raise VideoFailed("resolve", f"no such file in {folders}")
    deadline = Deadline(config.limits.seconds_per_video)
    mode, audio = MEL_MODES[config.audio.mode], config.audio
    binary = ffmpeg_binary(audio.ffmpeg)
    info, pcm = _stage("decode", deadline, read_audio, video.path, binary, mode.rate,
                       mode.channels, audio.max_seconds, deadline)  # fmt: skip
    mel = _stage("audio", deadline, mel_image, pcm, info, audio)
    track_audio = None
    if config.tracks.windows:  # before the PCM goes: placed on the timeline once it is known
        track_audio = _stage("tracks", deadline, track_rate_audio, pcm, mode.rate,
                             mode.channels, config.tracks.audio_rate, info.channels)  # fmt: skip
    facts = None
    if config.audit.facts:
        facts = _stage("facts", deadline, video_facts, video.path, pcm, info, mode.rate,
                       mode.channels, config.audit, deadline)  # fmt: skip
    del pcm  # up to audio.max_seconds of PCM: not kept while the frames are decoded
    if config.tracks.windows:
        faces, tracks = _faces_and_tracks(video, info, track_audio, config, detector, deadline)
    else:
        faces = _stage("faces", deadline, face_frames, video.path, info, config.faces, detector,
                       deadline)  # fmt: skip
        tracks = None
    return schema.Sample(
        video_name=video.name,
        label=video.label,
        mel=mel,
        faces=faces.faces,
        has_audio=info.has_audio,
        face_found=faces.found,
        face_box=faces.boxes,
        duration=np.float32(info.duration),
        tracks=tracks,
        facts=facts,
        fake_kind=video.kind,
        fake_segments=None
        if video.segments is None
        else np.array(video.segments, np.float64).reshape(-1, 2),
    )


def _faces_and_tracks(video: Video, info: MediaInfo, track_audio: np.ndarray,
                      config: PreprocessConfig, detector: str,
                      deadline: Deadline) -> tuple[FaceFrames, schema.Tracks]:  # fmt: skip
    """The face crops and the track windows from one decode of the video (frames.py); the
    windows' audio is `track_audio` (tracks.track_rate_audio) placed on its timeline."""
    binary, tracks = ffmpeg_binary(config.audio.ffmpeg), config.tracks
    if not info.has_video:
        # Black frames would pass for decoded frames without a face or a mouth: refuse.
        stage = "faces" if config.faces.frames else "tracks"
        raise VideoFailed(stage, "no video stream (audio only): no face or mouth frames to "
                          "cache; faces.frames=0 tracks.windows=0 cache the mel images of "
                          "such files")  # fmt: skip
    windows = choose_windows(video.name, info.duration, tracks, video.segments)
    decoded = _stage("faces", deadline, decode_frames, video.path, binary, info,
                     config.faces.frames, windows, tracks, deadline)  # fmt: skip
    faces = _stage("faces", deadline, faces_from, decoded.faces, config.faces, detector)
    aligned = on_timeline(track_audio, decoded.audio_lead, tracks.audio_rate)
    track = _stage("tracks", deadline, video_tracks, windows, decoded.windows,
                   decoded.windows_real, aligned, tracks, deadline)  # fmt: skip
    return faces, track


def process_video_file(path: Path, config: PreprocessConfig, name: str | None = None
                       ) -> schema.Sample:  # fmt: skip
    """One raw file outside any data root, processed as the preprocessor would (label -1).
    `name` (default: the file's name) is the video's name in a cache: the track windows are
    drawn from it, so a file scores as its cached twin when named as the cache names it."""
    path = Path(path)
    detector = resolve_detector(config.faces.detector) if config.faces.frames else "none"
    video = Video("video", name or path.name, schema.LABEL_UNKNOWN,
                  path if path.is_file() else None)  # fmt: skip
    if video.path is None:
        raise VideoFailed("resolve", f"{path}: no such file")
    return process_video(video, config, detector)


@contextlib.contextmanager
def one_thread_per_worker(uses_torch: bool) -> Iterator[None]:
    """Each worker uses one core: no oversubscription, and float reductions (the mel
    filterbank's BLAS matmul, the face detector) run in the same order whatever --jobs
    and the backend are, so outputs match bit for bit (with 2 BLAS threads a mel pixel
    can land one grey level off). torch is imported only where the detector needs it
    (it costs ~0.7 GB per process)."""
    torch = importlib.import_module("torch") if uses_torch else None
    torch_threads, cv2_threads = torch.get_num_threads() if torch else 0, cv2.getNumThreads()
    cv2.setNumThreads(1)
    if torch:
        torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):  # BLAS and OpenMP pools
            yield
    finally:
        cv2.setNumThreads(cv2_threads)
        if torch:
            torch.set_num_threads(torch_threads)


@dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs to write one shard (sent to it pickled)."""

    plan: ShardPlan
    root: Path  # the cache folder
    rel_path: str  # the shard's path inside it
    config: PreprocessConfig
    config_hash: str
    detector: str  # resolved (auto is decided once, in the main process)


def shard_layout(config: PreprocessConfig, plan: ShardPlan) -> schema.ShardLayout:
    """What a shard of `plan` holds: the config's faces, tracks and facts, and the kinds of
    fake and segments where the plan's label layout has them."""
    faces, tracks = config.faces, config.tracks
    return schema.ShardLayout(frames=faces.frames, face_size=faces.size, codec=faces.codec,
                              quality=faces.quality, tracks=track_layout(tracks),
                              tracks_quality=tracks.quality, facts=config.audit.facts,
                              fake_kinds=plan.has_kinds,
                              fake_segments=plan.has_segments)  # fmt: skip


def write_shard(job: ShardJob, progress: Callable[[int], None] = lambda n: None) -> ShardRecord:
    """Cache every video of the job's plan into one shard and its receipt; returns the
    receipt."""
    plan, config, detector = job.plan, job.config, job.detector
    failures = []
    attrs = {schema.ATTR_CONFIG_HASH: job.config_hash, schema.ATTR_PLAN_HASH: plan.plan_hash()}
    writer = ShardWriter(job.root / job.rel_path, shard_layout(config, plan), split=plan.split,
                         attrs=attrs)  # fmt: skip
    with writer, one_thread_per_worker(uses_torch=detector.startswith("mtcnn")):
        for video in plan.videos:
            try:
                writer.append(process_video(video, config, detector))
            except VideoFailed as failed:
                failures.append(Failure(plan.split, video.name, failed.stage, failed.reason))
            progress(1)
        num_samples, digest = writer.close()
    with ShardReader(job.root / job.rel_path) as shard:  # just written: in the page cache
        facts = ShardFacts.of(shard).to_index()
    record = ShardRecord(job.rel_path, plan.split, num_samples, digest, plan.plan_hash(), failures,
                         facts)  # fmt: skip
    write_receipt(job.root, record)
    return record
