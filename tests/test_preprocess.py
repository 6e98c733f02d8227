"""The preprocessor end to end on real media: counts, failures, parallel equality, resume."""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from avcache.cache import open_cache, schema
from avcache.cache.reader import ShardFacts, ShardReader
from avcache.common.lock import LOCK_FILE
from avcache.preprocess.run import main
from tests.media import broken_files, face_without_audio, silent_clip, talking_face, write_labels

SHARD_SIZE = 3
REPO = Path(__file__).resolve().parents[1]
TALKING = [
    dict(seconds=1.5, sample_rate=16000),
    dict(seconds=2.0, sample_rate=44100, channels=2, speech_start=1.0),
    dict(seconds=1.2, sample_rate=22050, audio_seconds=0.8),
    dict(seconds=1.6, sample_rate=8000, speech_start=2.5, size=160),
    dict(seconds=1.0, sample_rate=16000, speech_start=4.0),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """An FFDV-layout folder: good clips, clips without sound, broken files, a missing one."""
    root = tmp_path_factory.mktemp("ffdv")
    for folder in ("trainset", "valset", "testset"):
        (root / folder).mkdir()
    train = []
    for i, options in enumerate(TALKING):
        talking_face(root / "trainset" / f"talk {i}.mp4", **options)
        train.append((f"talk {i}.mp4", i % 2))
    face_without_audio(root / "trainset" / "mute.mp4")
    silent_clip(root / "trainset" / "silent.mp4")
    broken = broken_files(root / "trainset", root / "trainset" / "talk 0.mp4")
    train += [("mute.mp4", 1), ("silent.mp4", 0), *((name, 1) for name in broken)]
    train.append(("missing.mp4", 0))
    write_labels(root / "train_label.txt", train, bom=True, crlf=True)
    for name in ("v0.mp4", "v1.mp4"):
        talking_face(root / "valset" / name, seconds=1.0, speech_start=3.0)
    shutil.copy(root / "trainset" / "mute.mp4", root / "valset" / "v2.mp4")
    write_labels(root / "val_label.txt", [("v0.mp4", 0), ("v1.mp4", 1), ("v2.mp4", 1)])
    talking_face(root / "testset" / "t0.mp4", seconds=1.0)
    write_labels(root / "prediction.txt.csv", [("t0.mp4", ""), ("v0.mp4", "")])
    return root


def preprocess(data: Path, out: Path, *extra: str) -> int:
    return main(["--data", str(data), "--out", str(out), "--quiet", f"shards.size={SHARD_SIZE}",
                 "faces.frames=3", "faces.size=64", *extra])  # fmt: skip


@pytest.fixture(scope="module")
def clean_cache(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "cache"
    assert preprocess(data, out, "--jobs", "1") == 0
    return out


def samples_by_name(cache_root: Path) -> dict[str, schema.Sample]:
    return {sample.video_name: sample for sample in open_cache(cache_root).iter_samples()}


def assert_same_cache(a: Path, b: Path) -> None:
    """Equal index (shard hashes included), failures and samples."""
    assert (a / schema.INDEX_FILE).read_text() == (b / schema.INDEX_FILE).read_text()
    assert (a / schema.FAILURES_FILE).read_text() == (b / schema.FAILURES_FILE).read_text()
    left, right = samples_by_name(a), samples_by_name(b)
    assert list(left) == list(right)
    for name, sample in left.items():
        for field, value in sample.fields().items():
            np.testing.assert_array_equal(value, right[name].fields()[field], err_msg=name)


def test_exact_shard_counts_per_split(clean_cache):
    cache = open_cache(clean_cache)
    expected = {"train": 12, "val": 3, "test": 2}
    for split, listed in expected.items():
        assert len(cache.shards_of(split)) == math.ceil(listed / SHARD_SIZE)
    assert cache.num_samples("train") == 7 and cache.num_samples("val") == 3
    assert cache.num_samples("test") == 2
    assert sorted(p.name for p in (clean_cache / "shards" / cache.config_hash).glob("*.h5")) == [
        f"{split}-{n:05d}.h5" for split, count in [("test", 1), ("train", 4), ("val", 1)]
        for n in range(count)
    ]  # fmt: skip


def test_the_index_lists_each_shards_facts_as_the_shard_holds_them(clean_cache):
    """What a run's first checks need (faces codec, samples without a target), so that they
    open no shard: on object storage each open is a download."""
    rows = json.loads((clean_cache / schema.INDEX_FILE).read_text())["shards"]
    for row in rows:
        with ShardReader(clean_cache / row["path"]) as shard:
            assert row["facts"] == ShardFacts.of(shard).to_index()
    unknown = {row["split"]: row["facts"]["unknown"] for row in rows}
    assert unknown["test"] > 0 and unknown["train"] == 0, "the test split has no labels"


def test_every_broken_video_is_recorded(clean_cache):
    failures = {f.video_name: f for f in open_cache(clean_cache).failures()}
    assert set(failures) == {"zero.mp4", "truncated.mp4", "random.mp4", "text.mp4", "missing.mp4"}
    assert failures["missing.mp4"].stage == "resolve"
    assert failures["missing.mp4"].error == "no such file in trainset/"
    for name in ("zero.mp4", "random.mp4", "text.mp4"):
        assert failures[name].stage == "decode"
        assert "Invalid data" in failures[name].error or "End of file" in failures[name].error


def test_samples_hold_what_the_videos_hold(clean_cache):
    samples = samples_by_name(clean_cache)
    talk = samples["talk 1.mp4"]
    assert talk.label == 1 and talk.has_audio and talk.mel.std() > 20
    assert talk.face_found.all(), "MTCNN finds the astronaut's face in every frame"
    assert talk.faces.shape == (3, 64, 64, 3) and talk.faces.std() > 20
    assert abs(talk.duration - 2.0) < 0.1
    mute, silent = samples["mute.mp4"], samples["silent.mp4"]
    assert not mute.has_audio and not mute.mel.any() and mute.face_found.all()
    assert silent.has_audio and not silent.mel.any()
    assert not silent.face_found.any(), "a test pattern has no face: centre crops"
    assert silent.faces.std() > 0
    assert [samples[n].label for n in ("t0.mp4", "v0.mp4")] == [-1, -1]


def test_config_is_saved_and_hashed(clean_cache):
    index = json.loads((clean_cache / schema.INDEX_FILE).read_text())
    assert index["config"]["faces"]["frames"] == 3
    # how the mel images were made, for readers that must not import the preprocessor
    assert index["mel"] == {"mode": "baseline", "sample_rate": 22050, "n_mels": 128,
                            "hop_length": 512, "mel_scale": "slaney", "fmin": 0.0,
                            "fmax": 11025.0, "image_size": 256}  # fmt: skip
    assert index["splits"]["train"] == {"shards": 4, "samples": 7, "failed": 5}
    assert "frames: 3" in (clean_cache / schema.CONFIG_FILE).read_text()


def test_two_jobs_equal_one_job(data, clean_cache, tmp_path):
    assert preprocess(data, tmp_path / "cache", "--jobs", "2") == 0
    assert_same_cache(clean_cache, tmp_path / "cache")


def test_rerun_keeps_finished_shards(data, clean_cache, tmp_path, capsys):
    out = tmp_path / "cache"
    shutil.copytree(clean_cache, out)
    shard = open_cache(out).shards[0].path
    before = shard.stat().st_mtime_ns
    assert preprocess(data, out) == 0
    assert "0 processed this run" in capsys.readouterr().out
    assert shard.stat().st_mtime_ns == before
    assert_same_cache(clean_cache, out)


def test_missing_shard_is_redone(data, clean_cache, tmp_path, capsys):
    out = tmp_path / "cache"
    shutil.copytree(clean_cache, out)
    victim = open_cache(out).shards[2].path
    victim.unlink()
    assert preprocess(data, out) == 0
    assert f"{SHARD_SIZE} processed this run" in capsys.readouterr().out
    assert_same_cache(clean_cache, out)


def test_an_unreadable_shard_is_redone(data, clean_cache, tmp_path, capsys):
    """Its receipt is not enough: a shard this avcache cannot read (truncated here; or
    written by an older one) is written again."""
    out = tmp_path / "cache"
    shutil.copytree(clean_cache, out)
    victim = open_cache(out).shards[1].path
    victim.write_bytes(victim.read_bytes()[:4096])
    assert preprocess(data, out) == 0
    assert f"{SHARD_SIZE} processed this run" in capsys.readouterr().out
    assert_same_cache(clean_cache, out)


def _started_shards(out: Path) -> int:
    return len(list(out.glob("shards/*/*.partial")) + list(out.glob("shards/*/*.json")))


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_kill_9_then_resume_equals_a_clean_run(data, clean_cache, tmp_path, jobs):
    out = tmp_path / "cache"
    command = [sys.executable, "-m", "avcache.preprocess.run",
               "--data", str(data), "--out", str(out),
               "--quiet", "--jobs", jobs, f"shards.size={SHARD_SIZE}", "faces.frames=3",
               "faces.size=64"]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while _started_shards(out) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / schema.INDEX_FILE).exists(), "killed before the index: nothing committed"
    assert preprocess(data, out, "--jobs", jobs) == 0
    assert_same_cache(clean_cache, out)
    assert not list(out.glob("shards/*/*.partial"))


def test_changed_config_writes_a_new_cache(data, clean_cache, tmp_path):
    out = tmp_path / "cache"
    shutil.copytree(clean_cache, out)
    old = open_cache(out)
    assert preprocess(data, out, "faces.frames=2") == 0
    new = open_cache(out)
    assert new.config_hash != old.config_hash
    assert all(old.config_hash not in str(entry.path) for entry in new.shards)
    assert new.find("talk 0.mp4").faces.shape[0] == 2
    kept = open_cache(out / f"index.{old.config_hash}.json")
    assert kept.find("talk 0.mp4").faces.shape[0] == 3, "the previous cache is still readable"


def test_a_killed_run_with_a_new_config_leaves_the_previous_cache(data, clean_cache, tmp_path):
    out = tmp_path / "cache"
    shutil.copytree(clean_cache, out)
    command = [sys.executable, "-m", "avcache.preprocess.run",
               "--data", str(data), "--out", str(out),
               "--quiet", "--jobs", "1", f"shards.size={SHARD_SIZE}", "faces.frames=2",
               "faces.size=64"]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    before, deadline = _started_shards(out), time.monotonic() + 120
    while _started_shards(out) <= before and process.poll() is None:
        assert time.monotonic() < deadline, "the new run started no shard in 2 minutes"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert (out / schema.INDEX_FILE).read_text() == (clean_cache / schema.INDEX_FILE).read_text()
    assert open_cache(out).find("talk 0.mp4").faces.shape[0] == 3


def test_second_preprocessor_is_refused(data, tmp_path, capsys):
    out = tmp_path / "cache"
    out.mkdir()
    with open(out / LOCK_FILE, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert preprocess(data, out) == 2
    assert "another avcache-preprocess is writing this cache" in capsys.readouterr().err


def test_exit_codes(data, tmp_path):
    assert preprocess(data, tmp_path / "strict", "--strict") == 1, "failures with --strict"
    only_broken = tmp_path / "broken"
    (only_broken / "trainset").mkdir(parents=True)
    broken_files(only_broken / "trainset", data / "trainset" / "talk 0.mp4")
    write_labels(only_broken / "train_label.txt", [("zero.mp4", 0), ("text.mp4", 1)])
    assert preprocess(only_broken, tmp_path / "none") == 1, "nothing could be cached"


def test_escaping_label_rows_refuse_the_run(data, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(data, root)
    write_labels(root / "val_label.txt", [("v0.mp4", 0), ("../trainset/talk 0.mp4", 1)])
    assert preprocess(root, tmp_path / "cache") == 2
    error = capsys.readouterr().err
    assert "val_label.txt:3: '../trainset/talk 0.mp4': '..' leaves the data root" in error
    assert not (tmp_path / "cache").exists()


def test_script_entry_point_runs_from_anywhere(data, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "preprocess" / "run.py"), "--help"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0 and "--jobs" in result.stdout


def test_a_dask_cluster_writes_the_same_cache(data, clean_cache, tmp_path):
    """joblib's Dask backend on a LocalCluster of 2 worker processes on loopback."""
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:  # fmt: skip
        out = tmp_path / "cache"
        assert preprocess(data, out, "--scheduler", cluster.scheduler_address) == 0
    assert_same_cache(clean_cache, out)


def test_dask_backend_starts_a_local_cluster(data, clean_cache, tmp_path):
    out = tmp_path / "cache"
    assert preprocess(data, out, "--backend", "dask", "--jobs", "2") == 0
    assert_same_cache(clean_cache, out)


def test_an_unreachable_scheduler_is_a_clear_error(data, tmp_path, capsys):
    import dask

    out = tmp_path / "cache"
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        assert preprocess(data, out, "--scheduler", "tcp://127.0.0.1:9") == 2
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err


def test_workers_reduce_floats_on_one_thread():
    """With 2 BLAS threads the mel filterbank's matmul sums in another order, and a mel
    pixel can land one grey level off: --jobs 1 and --jobs 2 would then differ."""
    from threadpoolctl import threadpool_info

    from avcache.preprocess.worker import one_thread_per_worker

    with one_thread_per_worker(uses_torch=True):
        pools = threadpool_info()
        assert pools and all(pool["num_threads"] == 1 for pool in pools), pools
