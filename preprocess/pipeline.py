"""Plan, run and commit a preprocessing run: locking, resume, joblib fan-out, the index.

Shards fan out over joblib: its loky process pool on this machine, or its Dask
backend on a dask.distributed cluster (preprocess/cluster.py). Either way a
shard is one task, written where the cache lives, and the same plan gives the
same bytes.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from multiprocessing import resource_tracker
from multiprocessing.managers import SyncManager
from pathlib import Path

import joblib
from tqdm import tqdm

from avcache.cache import schema
from avcache.cache.codec import CODECS
from avcache.cache.index import (
    Failure,
    ShardRecord,
    build_index,
    read_receipt,
    receipt_of,
    receipt_path,
    write_failures,
    write_json_atomic,
)
from avcache.cache.reader import CacheFormatError, ShardEntry
from avcache.cache.remote import Publisher
from avcache.common.atomic import PARTIAL_SUFFIX
from avcache.common.config import config_hash, dump_yaml, to_dict
from avcache.common.lock import FolderLock
from avcache.common.untrusted import load_json, mapping
from avcache.preprocess.audio import MEL_MODES, mel_settings
from avcache.preprocess.cluster import dask_client
from avcache.preprocess.config import PreprocessConfig, TracksConfig
from avcache.preprocess.dataset import MissingVideosError, ShardPlan, Video, plan_shards, read_split
from avcache.preprocess.faces import resolve_detector, warn_without_detector
from avcache.preprocess.layouts import label_paths, layout_named
from avcache.preprocess.media import ffmpeg_binary
from avcache.preprocess.tracks import PLACEMENTS, track_audio_samples
from avcache.preprocess.worker import ShardJob, write_shard

log = logging.getLogger("avcache.preprocess")


@dataclass
class RunSummary:
    records: list[ShardRecord] = field(default_factory=list)
    processed: int = 0  # videos worked on in this run
    reused: int = 0  # videos in shards finished by an earlier run
    seconds: float = 0.0

    @property
    def cached(self) -> int:
        return sum(record.num_samples for record in self.records)

    @property
    def failures(self) -> list[Failure]:
        return [failure for record in self.records for failure in record.failures]


def validate(config: PreprocessConfig) -> None:
    """Refuse values that would fail later, inside the workers."""
    if config.audio.mode not in MEL_MODES:
        raise ValueError(
            f"audio.mode {config.audio.mode!r} unknown (known: {', '.join(MEL_MODES)})"
        )
    faces = config.faces
    if faces.frames < 0 or faces.size < 1 or faces.detect_size < 32 or faces.min_face_size < 12:
        raise ValueError(
            "faces.frames must be >= 0, faces.size >= 1, faces.detect_size >= 32 and "
            "faces.min_face_size >= 12 (MTCNN's smallest window)"
        )
    if faces.size > schema.MAX_FACE_SIZE or faces.frames > schema.MAX_FRAMES:
        raise ValueError(
            f"faces.size must be at most {schema.MAX_FACE_SIZE} and faces.frames at most "
            f"{schema.MAX_FRAMES} (the largest faces a cache holds), got {faces.size} and "
            f"{faces.frames}"
        )
    if config.faces.codec not in CODECS:
        raise ValueError(f"faces.codec {config.faces.codec!r} unknown (known: {', '.join(CODECS)})")
    if not 1 <= config.faces.quality <= 100:
        raise ValueError(f"faces.quality must be between 1 and 100, got {config.faces.quality}")
    if config.faces.margin < 1.0:
        raise ValueError(f"faces.margin must be at least 1.0, got {config.faces.margin}")
    if config.audio.max_seconds <= 0:
        raise ValueError("audio.max_seconds must be positive")
    validate_tracks(config.tracks)
    for split, split_config in config.splits.items():
        try:
            layout_named(split_config.layout, split_config.has_targets)
        except ValueError as error:
            raise ValueError(f"splits.{split}: {error}") from None
    if not 0 <= config.audio.trim_silence_db <= 120:
        raise ValueError("audio.trim_silence_db must be in [0, 120] dB (0: off), got "
                         f"{config.audio.trim_silence_db}")  # fmt: skip
    if not 0 < config.audit.silence_db <= 120:
        raise ValueError(f"audit.silence_db must be in (0, 120] dB, got {config.audit.silence_db}")


def validate_tracks(tracks: TracksConfig) -> None:
    """The tracks' sizes within what a cache may hold (the readers' bounds)."""
    fps, rates = schema.TRACK_FPS, schema.TRACK_AUDIO_RATES
    rules = (
        (
            0 <= tracks.windows <= schema.MAX_TRACK_WINDOWS,
            f"tracks.windows 0 to {schema.MAX_TRACK_WINDOWS}",
        ),
        (
            1 <= tracks.frames <= schema.MAX_TRACK_FRAMES,
            f"tracks.frames 1 to {schema.MAX_TRACK_FRAMES}",
        ),
        (  # past tracks.frames: the first and last frames alone (a 1-frame track: the one)
            1 <= tracks.locate_every <= schema.MAX_TRACK_FRAMES,
            f"tracks.locate_every 1 to {schema.MAX_TRACK_FRAMES}",
        ),
        (
            schema.MIN_TRACK_SIZE <= tracks.size <= schema.MAX_TRACK_SIZE,
            f"tracks.size {schema.MIN_TRACK_SIZE} to {schema.MAX_TRACK_SIZE}",
        ),
        (fps[0] <= tracks.fps <= fps[1], f"tracks.fps {fps[0]:g} to {fps[1]:g}"),
        (rates[0] <= tracks.audio_rate <= rates[1], f"tracks.audio_rate {rates[0]} to {rates[1]}"),
        (64 <= tracks.frame_size <= 4096, "tracks.frame_size 64 to 4096"),
        (tracks.placement in PLACEMENTS, f"tracks.placement {' or '.join(PLACEMENTS)}"),
        (1 <= tracks.quality <= 100, "tracks.quality 1 to 100"),
        # Only at a frame rate in range: the window's length divides by it.
        (
            not fps[0] <= tracks.fps <= fps[1]
            or track_audio_samples(tracks) <= schema.MAX_TRACK_AUDIO,
            "a window of at most 10 s",
        ),
    )
    for holds, expected in rules:
        if not holds:
            raise ValueError(f"tracks: expected {expected}, got {tracks}")


BACKENDS = ("loky", "dask")


def with_resolved_detector(config: PreprocessConfig) -> PreprocessConfig:
    """The config with `auto` replaced by the detector it means on this machine, so that the
    cache's hash and index say which detector made its crops: a machine where `auto` means
    another detector writes a new cache instead of adding differently framed shards."""
    if not config.faces.frames:
        return config
    faces = replace(config.faces, detector=resolve_detector(config.faces.detector))
    return replace(config, faces=faces)


class Preprocessor:
    """One run over a data root into a cache folder; with a `publisher`, into its staging
    folder and from there to object storage (cache/remote.py Publisher)."""

    def __init__(self, config: PreprocessConfig, data: Path, out: Path, jobs: int = -1,
                 backend: str = "loky", scheduler: str | None = None,
                 publisher: Publisher | None = None) -> None:  # fmt: skip
        validate(config)
        if not data.is_dir():
            raise FileNotFoundError(f"{data}: data root is not a folder")
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} unknown (known: {', '.join(BACKENDS)})")
        warn_without_detector(faces=bool(config.faces.frames) and config.faces.detector == "auto",
                              tracks=bool(config.tracks.windows)
                              and config.tracks.locator in ("auto", "facebox"))  # fmt: skip
        config = with_resolved_detector(config)
        # Absolute paths: the tasks may run on other machines that mount the same folders.
        self.config, self.data, self.out = config, data.resolve(), out.resolve()
        self.jobs, self.backend, self.scheduler = jobs, backend, scheduler
        self.hash = config_hash(config)
        self.detector = config.faces.detector if config.faces.frames else "none"
        self.ffmpeg = ffmpeg_binary(config.audio.ffmpeg)  # fail here, not in every worker
        self.shard_dir = f"{schema.SHARDS_DIR}/{self.hash}"
        self.publisher = publisher
        self._published: set[str] = set()  # shards the store holds with their receipts

    @property
    def destination(self) -> str:
        """Where the cache goes: its folder, or its URL."""
        return str(self.out) if self.publisher is None else self.publisher.remote.url

    def read_videos(self) -> list[Video]:
        """Every listed video of every split whose list exists. Bad rows of any split raise
        first, then a split missing more than limits.max_missing of its files."""
        videos, refused = [], None
        for split, split_config in self.config.splits.items():
            # a list that exists in any form is read (a FIFO or folder is refused, not skipped)
            if not any(path.exists() for path in label_paths(self.data, split_config.labels)):
                log.info("split %s: no %s in %s, skipped", split, split_config.labels, self.data)
                continue
            try:
                videos.extend(
                    read_split(self.data, split, split_config, self.config.limits.max_missing)
                )
            except MissingVideosError as error:
                refused = refused or error
        if refused:
            raise refused
        if not videos:
            raise FileNotFoundError(
                f"{self.data}: none of the configured label files lists a video"
            )
        return videos

    def plans(self, videos: list[Video]) -> list[ShardPlan]:
        plans = []
        for split in dict.fromkeys(video.split for video in videos):
            in_split = [video for video in videos if video.split == split]
            plans.extend(plan_shards(in_split, self.config.shards.size))
        return plans

    def shard_path(self, plan: ShardPlan) -> str:
        return f"{self.shard_dir}/{plan.stem}{schema.SHARD_SUFFIX}"

    def finished(self, plan: ShardPlan) -> ShardRecord | None:
        """The receipt of a shard an earlier run finished for this very plan, if the shard
        is there and this avcache can read it (else it is written again). On object storage,
        one the store holds with its receipt; one finished here but not uploaded (a run
        killed in between) is uploaded now."""
        if self.shard_path(plan) in self._published:
            record = receipt_of(self.out, self.shard_path(plan))
            return record if _made_by(record, plan) else None
        record = read_receipt(self.out, self.shard_path(plan))
        if not _made_by(record, plan):
            return None
        entry = ShardEntry(
            self.out / record.path,
            record.split,
            record.num_samples,
            record.sha256,
            self.config.faces.frames,
            self.config.faces.size,
        )
        try:
            entry.open().close()  # checks format, schema, storage, counts and faces
        except (CacheFormatError, FileNotFoundError):
            return None
        return self._arrived(record)

    def _arrived(self, record: ShardRecord) -> ShardRecord:
        """A finished shard; on object storage uploaded, its receipt after it, and its local
        copy deleted."""
        if self.publisher is not None:
            self.publisher.put(record.path)
            self.publisher.put(receipt_path(Path(record.path)).as_posix())
            (self.out / record.path).unlink()
            self._published.add(record.path)
        return record

    def run(self, progress: bool = True) -> RunSummary:
        plans = self.plans(self.read_videos())
        self.out.mkdir(parents=True, exist_ok=True)
        busy = "another avcache-preprocess is writing this cache; wait for it to finish or " \
            "choose another --out"  # fmt: skip
        with FolderLock(self.out, busy):
            if self.publisher is not None:  # the stage: as the store holds it
                self._published = self.publisher.mirror(self.shard_dir)
            previous = self._previous_config_hash()
            (self.out / self.shard_dir).mkdir(parents=True, exist_ok=True)
            _remove_partials(self.out)  # of a commit that was killed
            _remove_partials(self.out / self.shard_dir)
            try:
                summary = self._run_plans(plans, progress)
            except KeyboardInterrupt:  # finished shards stay; unfinished ones go
                _remove_partials(self.out / self.shard_dir)
                raise
            self._commit(summary.records, previous)
        return summary

    def _run_plans(self, plans: list[ShardPlan], progress: bool) -> RunSummary:
        start = time.perf_counter()
        done = {plan.stem: record for plan in plans if (record := self.finished(plan))}
        todo = [plan for plan in plans if plan.stem not in done]
        summary = RunSummary(reused=sum(len(p.videos) for p in plans if p.stem in done))
        summary.processed = sum(len(plan.videos) for plan in todo)
        total = summary.reused + summary.processed
        bar = tqdm(
            total=total,
            initial=summary.reused,
            unit="video",
            disable=not progress,
            desc="preprocess",
            dynamic_ncols=True,
        )
        with bar:
            done.update(self._fan_out(todo, bar))
        summary.records = [done[plan.stem] for plan in plans]
        summary.seconds = time.perf_counter() - start
        return summary

    def _fan_out(self, todo: list[ShardPlan], bar: tqdm) -> dict[str, ShardRecord]:
        """Run the pending shards as joblib tasks; returns their receipts by plan."""
        if not todo:
            return {}
        jobs = min(_cpu_count() if self.jobs < 1 else self.jobs, len(todo))
        if self.backend == "dask":
            records = self._run_on_dask(todo, jobs, bar)
        else:
            records = self._run_on_loky(todo, jobs, bar)
        return {plan.stem: records[self.shard_path(plan)] for plan in todo}

    def _tasks(self, todo: list[ShardPlan], ticks) -> Iterator:
        for plan in todo:
            job = ShardJob(plan, self.out, self.shard_path(plan), self.config, self.hash,
                           self.detector)  # fmt: skip
            yield joblib.delayed(_shard_task)(job, ticks)

    def _run_on_loky(self, todo: list[ShardPlan], jobs: int, bar: tqdm) -> dict[str, ShardRecord]:
        """Worker processes here; a queue carries per-video progress back."""
        # spawn, not fork: a forked server would inherit the cache lock and outlive a kill -9.
        manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
        listener = records = None
        try:
            with _interrupts_deferred():  # the progress queue's server starts deaf to Ctrl-C
                manager.start(_leave_interrupts_to_the_main_process)
                ticks = manager.Queue()
                listener = threading.Thread(target=_drain, args=(ticks, bar), daemon=True)
                listener.start()
            # No memmapping: tasks carry plans, not arrays, and the folders joblib would
            # make for them in /dev/shm are only left for its resource tracker to report.
            # The workers start deaf to Ctrl-C too (with --jobs 1 there are none: the tasks
            # run here as they are dispatched, and a Ctrl-C is not put off).
            with (
                joblib.parallel_config("loky", initializer=_leave_interrupts_to_the_main_process),
                _interrupts_deferred(jobs > 1),
            ):
                parallel = joblib.Parallel(n_jobs=jobs, return_as="generator_unordered",
                                           max_nbytes=None)  # fmt: skip
                records = parallel(self._tasks(todo, ticks))  # starts the workers
            return {record.path: self._arrived(record) for record in records}
        except KeyboardInterrupt:
            if records is not None:  # pressed before the first result: stop the workers
                _stop_quietly(records)
            raise
        finally:
            if listener is not None:  # the server started (no Ctrl-C stops its start)
                ticks.put(None)
                listener.join()
                manager.shutdown()

    def _run_on_dask(self, todo: list[ShardPlan], jobs: int, bar: tqdm) -> dict[str, ShardRecord]:
        """Tasks on a Dask cluster; progress moves a shard at a time (workers elsewhere
        cannot reach a queue of this process)."""
        sizes = {self.shard_path(plan): len(plan.videos) for plan in todo}
        records = {}
        client = dask_client(self.scheduler, jobs)
        with client as dask, joblib.parallel_config("dask", client=dask):
            parallel = joblib.Parallel(n_jobs=-1, return_as="generator_unordered")
            for record in parallel(self._tasks(todo, ticks=None)):
                records[record.path] = self._arrived(record)
                bar.update(sizes[record.path])
        return records

    def _previous_config_hash(self) -> str | None:
        """The config hash of the index already there (None: there is none)."""
        old_hash = self._stored_config_hash()
        if old_hash is None:
            return None
        if not (isinstance(old_hash, str) and re.fullmatch("[0-9a-f]{1,64}", old_hash)):
            old_hash = "unreadable"  # it names a file: nothing but a hash may go there
        if old_hash != self.hash:
            log.info(
                "the config changed (%s -> %s): writing a new cache under %s; the previous "
                "index stays in place until this run commits, then is kept as index.%s.json",
                old_hash,
                self.hash,
                self.shard_dir,
                old_hash,
            )
        return old_hash

    def _stored_config_hash(self) -> str | None:
        """The config hash the index there names, "unreadable" where it names none, None
        where there is no index."""
        index = self.out / schema.INDEX_FILE
        if not index.is_file():
            return None
        try:
            old = load_json(index, "cache index", root=self.out)  # not through a link out
            found = mapping(old, str(index)).get("config_hash")
        except CacheFormatError:
            found = None
        return found if isinstance(found, str) else "unreadable"

    def _commit(self, records: list[ShardRecord], previous_hash: str | None) -> None:
        """Failures and config first, the index last: it is the commit point. An index made
        with another config is kept under its own hash (nothing mixes), and only now, so a
        run that fails leaves the previous cache usable. On object storage, the same files
        in the same order are uploaded from the staging folder."""
        write_failures(self.out / schema.FAILURES_FILE, records)
        dump_yaml(self.config, self.out / schema.CONFIG_FILE)
        index = self.out / schema.INDEX_FILE
        kept = f"index.{previous_hash}.json" if previous_hash not in (None, self.hash) else None
        if kept:
            os.replace(index, self.out / kept)
        mel = mel_settings(self.config.audio.mode)
        write_json_atomic(index, build_index(to_dict(self.config), self.hash, records, mel))
        if self.publisher is not None:
            for name in (schema.FAILURES_FILE, schema.CONFIG_FILE, kept, schema.INDEX_FILE):
                if name:
                    self.publisher.put(name)


def _made_by(record: ShardRecord | None, plan: ShardPlan) -> bool:
    """Whether `record` is the receipt of a shard of this very plan."""
    return (
        record is not None and record.plan_hash == plan.plan_hash() and record.split == plan.split
    )


def _shard_task(job: ShardJob, ticks) -> ShardRecord:
    _leave_interrupts_to_the_main_process()
    return write_shard(job, progress=ticks.put if ticks is not None else lambda n: None)


def _leave_interrupts_to_the_main_process() -> None:
    """A terminal's Ctrl-C reaches every process of its group. The main process answers it
    (it stops the workers and says so in one line); a worker process or the progress
    queue's server would otherwise print a traceback of its own. Run first in each of them
    (their initializer, and each task): SIGINT ignored, then let through the block they
    were started under (`_interrupts_deferred`), which discards one pressed meanwhile."""
    if multiprocessing.current_process().name == "MainProcess":
        return  # a task run in this process (--jobs 1), or in a Dask worker's thread
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextmanager
def _interrupts_deferred(defer: bool = True) -> Iterator[None]:
    """Ctrl-C put off while this thread starts processes, and raised as KeyboardInterrupt
    when they have started. SIGINT is blocked in this thread, and a child inherits the
    block, so it cannot die with a traceback while it imports, before its initializer
    ignores SIGINT (loky starts its resource tracker the same way); another thread of this
    process may still receive it, so its handler only takes note meanwhile."""
    if not defer or threading.current_thread() is not threading.main_thread():
        yield  # only the main thread hears SIGINT
        return
    # Python's resource tracker, started with the first spawned process, lifts such a block
    # (it unblocks where it should restore): started first, it leaves this one alone.
    resource_tracker.ensure_running()
    pressed: list[int] = []
    handler = signal.signal(signal.SIGINT, lambda number, frame: pressed.append(number))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # one pending is handled here
        signal.signal(signal.SIGINT, handler)
    if pressed and callable(handler):
        handler(signal.SIGINT, None)  # Python's own raises KeyboardInterrupt


def _stop_quietly(records: Iterator) -> None:
    """Stop joblib's workers through its generator of results, which, closed early, warns
    of the tasks it cancelled: a Ctrl-C meant them to be."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records.close()


def _drain(ticks, bar: tqdm) -> None:
    while (tick := ticks.get()) is not None:
        bar.update(tick)


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _remove_partials(folder: Path) -> None:
    """Leftovers of a killed run; the lock guarantees nobody is writing them."""
    for partial in folder.glob(f"*{PARTIAL_SUFFIX}"):
        partial.unlink(missing_ok=True)
