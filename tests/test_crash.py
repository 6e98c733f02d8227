"""Crash safety and damaged or untrusted files: kill -9 at random points, a full disk while a
shard is written, a damaged shard in training, a checkpoint that would unpickle objects."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from avcache.cache import open_cache, schema
from avcache.cache.index import ShardRecord, build_index
from avcache.cache.verify import verify_cache
from avcache.cache.writer import ShardWriter
from avcache.common.atomic import PARTIAL_SUFFIX, write_json_atomic
from avcache.common.lock import LOCK_FILE
from avcache.inspection.cli import main as inspect_main
from avcache.preprocess.run import main as preprocess_main
from avcache.train.config import TrainConfig
from avcache.train.engine import BEST, LAST, Trainer
from avcache.train.run import main as train_main
from tests.media import talking_face, write_labels
from tests.test_cache import flip_byte_in_chunk
from tests.test_mistakes import hearing_ctrl_c
from tests.test_train import small_config, toy_sample

REPO = Path(__file__).resolve().parents[1]
CLIPS = 6
OPTIONS = ["--quiet", "shards.size=2", "faces.detector=haar", "faces.frames=2", "faces.size=32"]
KILL_TRIALS, KILL_SEED = 4, 20240611


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Six tiny talking clips, a file that is not a video and a missing one: 4 + 1 shards."""
    root = tmp_path_factory.mktemp("ffdv")
    (root / "trainset").mkdir()
    (root / "valset").mkdir()
    names = [f"c{i}.mp4" for i in range(CLIPS)]
    for i, name in enumerate(names):
        talking_face(root / "trainset" / name, seconds=1.0, size=96, speech_start=i / 2)
    (root / "trainset" / "text.mp4").write_text("not a video\n")
    rows = [(name, i % 2) for i, name in enumerate(names)] + [("text.mp4", 1), ("gone.mp4", 0)]
    write_labels(root / "train_label.txt", rows)
    for name in ("v0.mp4", "v1.mp4"):
        shutil.copy(root / "trainset" / names[0], root / "valset" / name)
    write_labels(root / "val_label.txt", [("v0.mp4", 0), ("v1.mp4", 1)])
    return root


def command(data: Path, out: Path, jobs: int) -> list[str]:
    return [sys.executable, "-m", "avcache.preprocess.run", "--data", str(data), "--out", str(out),
            "--jobs", str(jobs), *OPTIONS]  # fmt: skip


def preprocess(data: Path, out: Path, jobs: int = 2) -> int:
    return preprocess_main(command(data, out, jobs)[3:])


def tree(root: Path) -> dict[str, str]:
    """Every file under a cache folder, by relative path: its sha256."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def progress(out: Path) -> int:
    """How far a run has got: 0 not started, 1 the cache locked, 1 + n after n shard receipts."""
    if not (out / LOCK_FILE).exists():
        return 0
    return 1 + len(list(out.glob(f"shards/*/*{schema.RECEIPT_SUFFIX}")))


def clean_timeline(data: Path, out: Path) -> list[float]:
    """Seconds from the start of a clean run to each progress level (1, 2, ...) and its end."""
    start = time.monotonic()
    process = subprocess.Popen(command(data, out, 2), cwd=REPO, stdout=subprocess.DEVNULL)
    reached: list[float] = []
    while process.poll() is None:
        level = progress(out)
        reached += [time.monotonic() - start] * (level - len(reached))
        time.sleep(0.005)
    end = time.monotonic() - start
    assert process.returncode == 0
    return [*reached, *[end] * (progress(out) - len(reached)), end]


def kill_points(timeline: list[float], rng: np.random.Generator) -> list[tuple[int, float]]:
    """(progress level, seconds after it) per trial: levels drawn from strata that always
    include the first shard (nothing finished) and the end (every shard finished, the index
    being written), the wait drawn over that level's span in the clean run."""
    levels = list(range(1, len(timeline)))
    middle = np.array_split(levels[1:-1], KILL_TRIALS - 2)
    strata = [levels[:1], *(list(part) for part in middle), levels[-1:]]
    points = []
    for stratum in strata:
        level = int(rng.choice(stratum))
        points.append((level, rng.uniform(0.05, 0.95) * (timeline[level] - timeline[level - 1])))
    return points


def test_kill_9_at_random_points_then_rerun_equals_a_clean_run(data, tmp_path):
    """Each trial SIGKILLs the whole process group (main, joblib workers, the progress
    manager, ffmpeg) at a seeded random point of a clean run's timeline, then runs the same
    command to completion: every file ends byte-identical to the clean run's (index,
    failures, config, receipts, shards) and nothing else is left (no partial files).
    Points are anchored on progress (the lock, each receipt) rather than on wall time alone,
    so that they land where intended on a loaded machine too."""
    clean = tmp_path / "clean"
    timeline = clean_timeline(data, clean)
    expected = tree(clean)
    assert len([name for name in expected if name.endswith(schema.SHARD_SUFFIX)]) == 5
    for trial, (level, wait) in enumerate(kill_points(timeline, np.random.default_rng(KILL_SEED))):
        out = tmp_path / f"trial{trial}"
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        process = subprocess.Popen(command(data, out, 2), cwd=REPO, start_new_session=True,
                                   **quiet)  # fmt: skip
        while progress(out) < level and process.poll() is None:
            time.sleep(0.005)
        time.sleep(wait)
        with contextlib.suppress(ProcessLookupError):  # the run may have ended
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        indexed = (out / schema.INDEX_FILE).exists()
        where = (f"trial {trial}: killed {wait:.2f} s after progress {level}, at "
                 f"{progress(out) - 1} receipts, index written: {indexed}")  # fmt: skip
        assert preprocess(data, out) == 0, where
        assert tree(out) == expected, where
        assert verify_cache(open_cache(out)) == [], where


# ---------------------------------------------------------------- a full disk


class TmpfsDisk:
    """A small tmpfs (needs root): a real ENOSPC when it fills."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command; the RLIMIT_FSIZE case covers the same code")
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path)],
                                 capture_output=True, text=True)  # fmt: skip
        if mounted.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the "
                        "RLIMIT_FSIZE case covers the same code")  # fmt: skip

    def fill_but(self, free: int) -> None:
        """Shrink the file system to what it holds plus `free` bytes."""
        stat = os.statvfs(self.path)
        used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
        size = -(-(used + free) // 4096) * 4096
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def free(self) -> None:
        subprocess.run(["mount", "-o", "remount,size=64m", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


def limited_preprocess(data: Path, out: Path, limit: int) -> subprocess.CompletedProcess:
    """The preprocessor with RLIMIT_FSIZE = `limit` (SIGXFSZ ignored): writes past it fail
    with EFBIG, 'File too large', as writes to a full disk fail with ENOSPC."""

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return subprocess.run(command(data, out, 1), cwd=REPO, capture_output=True, text=True,
                          preexec_fn=limit_files)  # fmt: skip


@pytest.mark.parametrize("disk", ["tmpfs", "rlimit"])
def test_a_full_disk_keeps_the_finished_cache(data, tmp_path, capsys, disk):
    """A first run caches two clips; the label file grows to six, and the next run finds the
    disk full while it writes a new shard: it fails naming that shard and what to do, and
    the finished shards, their receipts and the index stay intact and verifiable."""
    root = tmp_path / "data"
    shutil.copytree(data / "trainset", root / "trainset")
    names = [f"c{i}.mp4" for i in range(CLIPS)]
    write_labels(root / "train_label.txt", [(name, 1) for name in names[:2]])
    tmpfs = TmpfsDisk(tmp_path / "disk") if disk == "tmpfs" else None
    out = (tmp_path / "disk" if tmpfs else tmp_path) / "cache"
    try:
        assert preprocess(root, out) == 0
        before = tree(out)
        write_labels(root / "train_label.txt", [(name, 1) for name in names])
        capsys.readouterr()
        if tmpfs:  # two new shards on two joblib workers; the first error ends the run
            tmpfs.fill_but(256 * 1024)
            assert preprocess(root, out) == 2
            error = capsys.readouterr().err
            reason = "No space left on device"
        else:  # one worker: its shard fails and nothing else runs
            result = limited_preprocess(root, out, 256 * 1024)
            assert result.returncode == 2, result.stderr
            error, reason = result.stderr, "File too large"
            assert not list(out.rglob(f"*{PARTIAL_SUFFIX}")), "the writer cleans up"
        shard = re.escape(str(out.resolve() / "shards")) + r"/\w+/train-0000[12]\.h5"
        assert re.search(f"cannot write {shard}: {reason}", error), error
        assert "Free space on the disk" in error and "run the same command again" in error
        # A worker that joblib stopped when the other failed may leave its partial file
        # behind; the next run removes it.
        kept = {name: digest for name, digest in tree(out).items()
                if not name.endswith(PARTIAL_SUFFIX)}  # fmt: skip
        assert kept == before, "finished shards, receipts and index untouched"
        assert verify_cache(open_cache(out)) == []
        assert inspect_main([str(out), "verify"]) == 0
        if tmpfs:
            tmpfs.free()
        assert preprocess(root, out) == 0
        after = tree(out)
        assert {name: after[name] for name in before if name != schema.INDEX_FILE} == {
            name: digest for name, digest in before.items() if name != schema.INDEX_FILE
        }, "the first run's shards were kept, not redone"
        assert open_cache(out).num_samples("train") == CLIPS
        assert verify_cache(open_cache(out)) == []
        assert not [name for name in after if name.endswith(PARTIAL_SUFFIX)]
    finally:
        if tmpfs:
            tmpfs.unmount()


# ---------------------------------------------------------------- damaged and untrusted files


def test_training_on_a_damaged_checksummed_shard_stops_before_any_step(tmp_path, capsys):
    """A flipped byte in a mel chunk of a shard written with HDF5 checksums: the first batch
    that reads it raises, naming the shard; the run exits 2 with no checkpoint written."""
    cache = tmp_path / "cache"
    (cache / "shards").mkdir(parents=True)
    rng = np.random.default_rng(0)
    records = []
    for split, count in (("train", 16), ("val", 8)):
        rel = f"shards/{split}-00000.h5"
        with ShardWriter(
            cache / rel, schema.ShardLayout(frames=2, face_size=32), split=split, fletcher32=True
        ) as w:
            for i in range(count):
                w.append(toy_sample(f"{split}{i:03d}.mp4", bool(i % 2), rng))
            records.append((rel, split, *w.close()))
    index = build_index({}, "toy", [ShardRecord(*record) for record in records])
    write_json_atomic(cache / schema.INDEX_FILE, index)
    damaged = cache / "shards/train-00000.h5"
    flip_byte_in_chunk(damaged, schema.MEL, chunk=0)  # every training batch needs it
    run = tmp_path / "run"
    args = ["--cache", str(cache), "--out", str(run), *small_config(**{"model.kind": "audio"})]
    assert train_main(args) == 2
    error = capsys.readouterr().err
    assert f"{damaged}: reading 'mel' failed, the shard is damaged" in error
    assert "avcache-inspect CACHE verify" in error and "train-00000.json" in error
    assert not (run / LAST).exists() and not (run / BEST).exists()


class Payload:
    """Unpickling this runs a command: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_unpickle_objects_is_refused(tmp_path):
    config = TrainConfig()
    config.model.kind = "audio"
    trainer = Trainer(config, None, tmp_path)
    evil, marker = tmp_path / "last.pt", tmp_path / "pwned"
    torch.save({**trainer.state(), "extra": Payload(marker)}, evil)
    with pytest.raises(ValueError, match=re.escape(f"{evil}: refused to load")):
        trainer.load(evil)
    assert not marker.exists(), "nothing was unpickled"
    torch.save(trainer.state(), tmp_path / "good.pt")
    trainer.load(tmp_path / "good.pt")  # tensors and plain data load


# What marks each helper process of a run in its command line: the progress queue's server
# (a multiprocessing spawn) and joblib's loky workers.
HELPERS = {"progress server": "multiprocessing.spawn", "workers": "loky.backend.popen_loky"}


def wait_for_an_importing_helper(main: subprocess.Popen, mark: str) -> None:
    """Until a helper process of the run whose command line holds `mark` is importing numpy
    (its extension mapped): past Python's start, before any code of ours runs in it."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert main.poll() is None, main.communicate()
        for child in psutil.Process(main.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error, OSError):
                if (
                    mark in " ".join(child.cmdline())
                    and "_multiarray_umath" in Path(f"/proc/{child.pid}/maps").read_text()
                ):
                    return
        time.sleep(0.002)
    raise AssertionError(f"no process {mark!r} began importing")


def still_running(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of `processes` still running a minute later (a zombie has ended)."""
    _, left = psutil.wait_procs(processes, timeout=60)
    running = []
    for process in left:
        with contextlib.suppress(psutil.Error):
            if process.status() != psutil.STATUS_ZOMBIE:
                running.append(process)
    return running


@pytest.mark.parametrize("helper", HELPERS)
def test_ctrl_c_while_helpers_start_is_one_line_from_the_main_process(data, tmp_path, helper):
    """SIGINT to the whole process group (a terminal's Ctrl-C) while the progress server or
    the workers are still importing: they were started with SIGINT blocked and ignore it
    from their first line, so the main process alone answers, in one line, exit 130, and
    stops them (none is left)."""
    process = subprocess.Popen(command(data, tmp_path / "cache", 2), cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=hearing_ctrl_c)  # fmt: skip
    wait_for_an_importing_helper(process, HELPERS[helper])
    helpers = psutil.Process(process.pid).children(recursive=True)
    os.killpg(process.pid, signal.SIGINT)
    try:
        _, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.count("avcache-preprocess: interrupted;") == 1, err
    left = still_running(helpers)
    for stray in left:
        stray.kill()
    assert not left, f"left running: {left}"


def many_clips(data: Path, folder: Path, copies: int) -> Path:
    """The training clips `copies` times over (new names, the same bytes): work that lasts
    well past the first finished shard, however busy the machine."""
    (folder / "trainset").mkdir(parents=True)
    rows = []
    for copy in range(copies):
        for clip in sorted((data / "trainset").glob("c*.mp4")):
            name = f"{copy}-{clip.name}"
            os.link(clip, folder / "trainset" / name)
            rows.append((name, copy % 2))
    write_labels(folder / "train_label.txt", rows)
    return folder


def test_ctrl_c_during_preprocessing_is_one_line_and_the_rerun_finishes(data, tmp_path):
    """SIGINT to the whole process group (as a terminal's Ctrl-C) once a shard is finished:
    exit 130 with one line, no partial file left, and the same command completes."""
    out, data = tmp_path / "cache", many_clips(data, tmp_path / "data", copies=8)
    process = subprocess.Popen(command(data, out, 2), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=hearing_ctrl_c)  # fmt: skip
    deadline = time.monotonic() + 300
    while progress(out) < 2 and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.count("avcache-preprocess: interrupted;") == 1, err
    assert not list(out.rglob(f"*{PARTIAL_SUFFIX}"))
    assert preprocess(data, out) == 0
    assert open_cache(out).num_samples("train") == 8 * CLIPS
