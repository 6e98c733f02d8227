"""Hostile caches and run folders, built by hand with h5py and JSON: each is refused in one
line naming the file (exit 2 from the commands), and nothing outside the cache is read.

A bait file outside the cache holds exactly the bytes an attack wants read (the real mel
images), so only the refusal stops it. Its access time is set before the mtime: on Linux
(relatime or strictatime) the first read of it moves the atime, which the tests check.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from avcache.cache import schema
from avcache.cache.index import ShardRecord, read_failures, read_receipt, write_receipt
from avcache.cache.reader import CacheFormatError, ShardReader, open_cache
from avcache.common.untrusted import MAX_JSON_BYTES, printable
from avcache.inspection.cli import main as inspect_main
from avcache.train.engine import BEST
from avcache.train.loader import LoaderPlan, ShardStream
from avcache.train.predict import main as predict_main
from avcache.train.run import main as train_main
from tests.media import talking_face
from tests.test_cache import FRAMES, SIZE, make_sample
from tests.test_train import small_config, write_toy_cache

REPO = Path(__file__).resolve().parents[1]
COUNT = 20  # samples per shard


# ---------------------------------------------------------------- building hostile caches


def build(root: Path, splits: dict[str, int] | None = None, codec: str = "raw") -> Path:
    """A sound cache (real config, faces 2 x 8 px) with `splits` shard counts."""
    from avcache.cache.index import build_index
    from avcache.cache.writer import ShardWriter
    from avcache.common.atomic import write_json_atomic

    config = {"splits": {"train": {}, "val": {}, "test": {}},
              "faces": {"frames": FRAMES, "size": SIZE}}  # fmt: skip
    records, number = [], 0
    (root / "shards").mkdir(parents=True)
    for split, shards in (splits or {"train": 2, "val": 1}).items():
        for shard in range(shards):
            rel = f"shards/{split}-{shard:05d}.h5"
            with ShardWriter(
                root / rel,
                schema.ShardLayout(frames=FRAMES, face_size=SIZE, codec=codec),
                split=split,
            ) as writer:
                for _ in range(COUNT):
                    sample = make_sample(number)
                    sample.label = number % 2  # train on 0/1 labels
                    writer.append(sample)
                    number += 1
                records.append(ShardRecord(rel, split, *writer.close()))
    write_json_atomic(root / schema.INDEX_FILE, build_index(config, "hostile", records))
    return root


def index_of(root: Path) -> dict:
    return json.loads((root / schema.INDEX_FILE).read_text())


def write_index(root: Path, index: dict | str) -> None:
    text = index if isinstance(index, str) else json.dumps(index)
    (root / schema.INDEX_FILE).write_text(text)


def resign(root: Path, shard: Path) -> None:
    """Give the index the shard's new sha256, as a forger would."""
    index = index_of(root)
    for row in index["shards"]:
        if root / row["path"] == shard:
            row["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    write_index(root, index)


@pytest.fixture
def cache(tmp_path) -> Path:
    return build(tmp_path / "cache")


@pytest.fixture
def bait(tmp_path) -> Path:
    """A folder outside the cache for files an attack points at."""
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


@contextmanager
def never_read(path: Path) -> Iterator[None]:
    """Fails unless `path` is left unread inside the block (its atime stays put)."""
    stamp = os.stat(path).st_mtime - 3600
    os.utime(path, (stamp, os.stat(path).st_mtime))
    yield
    assert os.stat(path).st_atime == stamp, f"{path} was read"


def test_the_atime_check_sees_a_read(bait):
    """The check above can fail: on this file system a read moves the atime."""
    probe = bait / "probe"
    probe.write_bytes(b"x" * 100)
    with pytest.raises(AssertionError, match="was read"), never_read(probe):
        probe.read_bytes()
    probe.write_bytes(b"y" * 100)
    with pytest.raises(AssertionError, match="was read"), never_read(probe):
        with h5py.File(probe.with_suffix(".h5"), "w") as handle:
            handle["x"] = np.zeros(3)
        with h5py.File(probe.with_suffix(".h5"), "r") as handle:  # an HDF5 read, too
            pass
        probe.read_bytes()


def replace_dataset(shard: Path, name: str, make) -> None:
    """Swap dataset `name` of a shard for what `make(handle, data)` creates under that name."""
    with h5py.File(shard, "a") as handle:
        data = handle[name][()]
        del handle[name]
        make(handle, data)


def bait_h5(bait: Path, shard: Path, name: str = schema.MEL) -> Path:
    """An HDF5 file outside the cache holding the shard's real `name` dataset."""
    path = bait / "bait.h5"
    with h5py.File(shard, "r") as source, h5py.File(path, "w") as target:
        target[name] = source[name][()]
    return path


def first_shard(root: Path) -> Path:
    return root / index_of(root)["shards"][0]["path"]


def forge_column(root: Path, shard: Path, name: str, change) -> None:
    """Rewrite one small column of a shard as `change(values)` returns it, with its metadata
    sha256 and the index's sha256 rewritten to match, as a forger would."""
    with h5py.File(shard, "a") as handle:
        handle[name][...] = change(handle[name][()])
        columns = {column: handle[column][()] for column in schema.META_FIELDS}
        handle.attrs[schema.ATTR_META_SHA256] = schema.meta_sha256(columns)
    resign(root, shard)


def refusals(root: Path, capsys) -> list[str]:
    """What inspect (summary, verify), the notebook API and the loader say; each a refusal."""
    messages = []
    for argv in ([str(root)], [str(root), "verify"]):
        status = inspect_main(argv)
        captured = capsys.readouterr()
        assert status in (1, 2), (argv, captured)
        if status == 2:  # one line: `avcache-inspect: error: ...`
            assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured
        messages.append(captured.err)
    with pytest.raises(CacheFormatError) as caught:
        ShardStream(open_cache(root).shards, (schema.MEL,), LoaderPlan(8))
    messages.append(str(caught.value))
    return messages


# ---------------------------------------------------------------- HDF5 indirection


def soft_link(handle, data):
    handle["elsewhere"] = data
    handle[schema.MEL] = h5py.SoftLink("/elsewhere")


INDIRECTIONS = {
    "external link": ("is an HDF5 external link to", True),
    "soft link": ("is an HDF5 soft link", False),
    "external storage": ("keeps its data in external files", True),
    "virtual dataset": ("is a virtual dataset", True),
    "gzip filter": ("HDF5 filter 1 (deflate)", False),
    "compact layout": ("is a compact dataset", False),
}


def make_indirection(kind: str, shard: Path, bait: Path) -> Path | None:
    """Turn the shard's `mel` into `kind`; the bait file it reads from, if any."""
    outside = None
    if kind in ("external link", "virtual dataset"):
        outside = bait_h5(bait, shard)
    if kind == "external storage":
        with h5py.File(shard, "r") as handle:
            outside = bait / "mel.raw"
            outside.write_bytes(handle[schema.MEL][()].tobytes())

    def make(handle, data):
        if kind == "external link":
            handle[schema.MEL] = h5py.ExternalLink(str(outside), schema.MEL)
        elif kind == "soft link":
            soft_link(handle, data)
        elif kind == "external storage":
            handle.create_dataset(schema.MEL, data.shape, data.dtype,
                                  external=[(str(outside), 0, data.nbytes)])  # fmt: skip
        elif kind == "virtual dataset":
            layout = h5py.VirtualLayout(data.shape, data.dtype)
            layout[:] = h5py.VirtualSource(str(outside), schema.MEL, data.shape)
            handle.create_virtual_dataset(schema.MEL, layout)
        elif kind == "gzip filter":
            handle.create_dataset(schema.MEL, data=data, compression="gzip", chunks=True)
        elif kind == "compact layout":
            space = h5py.h5s.create_simple((1, 8))
            plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            plist.set_layout(h5py.h5d.COMPACT)
            h5py.h5d.create(handle.id, schema.MEL.encode(), h5py.h5t.STD_U8LE, space, plist)

    replace_dataset(shard, schema.MEL, make)
    return outside


@pytest.mark.parametrize("kind", list(INDIRECTIONS))
def test_hdf5_indirection_is_refused_and_nothing_outside_is_read(cache, bait, capsys, kind):
    shard = first_shard(cache)
    outside = make_indirection(kind, shard, bait)
    resign(cache, shard)  # even with a matching index sha256
    expected, _ = INDIRECTIONS[kind]
    with never_read(outside) if outside else nullcontext():
        for message in refusals(cache, capsys):
            assert str(shard) in message and expected in message, message
            assert "rebuild the cache" in message


def test_training_on_an_external_link_exits_2_without_reading_it(cache, bait, tmp_path, capsys):
    shard = first_shard(cache)
    outside = make_indirection("external link", shard, bait)
    resign(cache, shard)
    args = ["--cache", str(cache), "--out", str(tmp_path / "run"), *small_config()]
    with never_read(outside):
        assert train_main([*args, "model.kind=audio"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{shard}: 'mel' is an HDF5 external link" in error


def test_a_link_in_an_extra_dataset_is_never_followed(cache, bait):
    """Datasets outside the schema are welcome and never opened."""
    shard = first_shard(cache)
    outside = bait_h5(bait, shard)
    with h5py.File(shard, "a") as handle:
        handle["notes"] = h5py.ExternalLink(str(outside), schema.MEL)
    resign(cache, shard)
    with never_read(outside):
        assert len(list(open_cache(cache).iter_samples("train"))) == 2 * COUNT


# ---------------------------------------------------------------- files that are not files


@pytest.mark.parametrize("target", ["shard", "index", "failures"])
def test_a_fifo_is_refused_at_once(cache, target):
    """A FIFO nobody writes would block a reader forever: the commands run in a subprocess
    with a timeout, so a hang fails the test instead of stalling it."""
    path = {"shard": first_shard(cache), "index": cache / schema.INDEX_FILE,
            "failures": cache / schema.FAILURES_FILE}[target]  # fmt: skip
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    commands = [[str(cache)], [str(cache), "sheet", "-o", str(cache.parent / "s.png")],
                [str(cache), "verify"]]  # fmt: skip
    for argv in commands[:1] if target == "failures" else commands:  # only summary reads it
        done = subprocess.run([sys.executable, "-m", "avcache.inspection.cli", *argv], cwd=REPO,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode in (1, 2), done
        assert f"{path}: the" in done.stderr and "not a regular file" in done.stderr, done


def test_training_refuses_a_fifo_shard(cache, tmp_path):
    shard = first_shard(cache)
    shard.unlink()
    os.mkfifo(shard)
    command = [sys.executable, "-m", "avcache.train.run", "--cache", str(cache), "--out",
               str(tmp_path / "run"), *small_config()]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done
    assert f"{shard}: the shard is not a regular file" in done.stderr


def test_the_failures_entry_stays_inside_the_cache(cache, bait, capsys):
    secret = bait / "secret.txt"
    secret.write_text('{"split": "train", "video_name": "x", "stage": "s", "error": "leak"}\n')
    index = index_of(cache)
    index["failures"] = os.path.relpath(secret, cache)
    write_index(cache, index)
    with never_read(secret):
        assert inspect_main([str(cache)]) == 2
    error = capsys.readouterr().err
    assert "'failures'" in error and "leaves the cache" in error and "leak" not in error


# ---------------------------------------------------------------- sizes bounded before use


def test_an_index_count_of_a_billion_is_refused_before_any_allocation(cache, tmp_path, capsys):
    index = index_of(cache)
    index["shards"][0]["num_samples"] = 10**9
    index["splits"]["train"]["samples"] += 10**9 - COUNT
    write_index(cache, index)
    shard = first_shard(cache)
    args = ["--cache", str(cache), "--out", str(tmp_path / "run"), *small_config()]
    assert train_main(args) == 2
    error = capsys.readouterr().err
    assert f"{shard}: its sample count is {COUNT} but the cache's index says 1000000000" in error
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("count", [COUNT - 3, 0])
def test_an_index_count_below_the_file_is_refused(cache, capsys, count):
    """Training on part of a shard (or on none of it) with exit 0 is not an option."""
    index = index_of(cache)
    index["shards"][1]["num_samples"] = count
    index["splits"]["train"]["samples"] -= COUNT - count
    write_index(cache, index)
    messages = refusals(cache, capsys)
    assert all(f"sample count is {COUNT} but the cache's index says {count}" in m
               for m in messages)  # fmt: skip


def test_a_sparse_shard_declaring_millions_of_rows_is_refused(cache, capsys):
    """A 2 MB file declaring 2 million rows of every dataset, 131 GB of mel alone (unwritten
    chunks read as zeros): refused from the file's size before anything is read."""
    shard, rows = first_shard(cache), 2_000_000
    with h5py.File(shard, "a") as handle:
        for dataset in schema.ShardLayout(FRAMES, SIZE).datasets():
            if dataset.per_sample:
                handle[dataset.name].resize(rows, axis=0)
    assert shard.stat().st_size < 2**23
    index = index_of(cache)
    index["shards"][0]["num_samples"] = rows
    index["splits"]["train"]["samples"] += rows - COUNT
    write_index(cache, index)
    resign(cache, shard)
    for message in refusals(cache, capsys):
        assert f"{shard}: " in message and f"declares {rows} rows" in message, message


def test_faces_larger_than_the_config_says_are_refused(cache, capsys):
    """A shard whose faces are 16 x 64 px where the cache's config says 2 x 8."""
    from avcache.cache.writer import ShardWriter

    shard = first_shard(cache)
    with ShardWriter(shard, schema.ShardLayout(frames=16, face_size=64), split="train") as writer:
        for number in range(COUNT):
            sample = make_sample(1000 + number)
            sample.faces = np.full((16, 64, 64, 3), number, np.uint8)
            sample.face_found, sample.face_box = np.ones(16, bool), np.zeros((16, 4), np.float32)
            writer.append(sample)
        writer.close()
    resign(cache, shard)
    for message in refusals(cache, capsys):
        assert f"{shard}: its face frames is 16 but the cache's index says {FRAMES}" in message


def test_forged_face_attributes_cannot_declare_a_huge_row(cache, capsys):
    """face_size 1024 (the most avcache writes) with a faces dataset to match, no chunk
    written: refused from the file's size."""
    shard, size = first_shard(cache), schema.MAX_FACE_SIZE
    with h5py.File(shard, "a") as handle:
        handle.attrs[schema.ATTR_FACE_SIZE] = size
        del handle[schema.FACES]
        shape = (COUNT, FRAMES, size, size, 3)
        handle.create_dataset(schema.FACES, shape, np.uint8, chunks=(1, 1, 64, 64, 3))
    assert shard.stat().st_size < 2**22  # the 20 mel images; faces declare 126 MB
    index = index_of(cache)
    index["config"].pop("faces")  # no config to compare with: the file's size still bounds it
    write_index(cache, index)
    resign(cache, shard)
    for message in refusals(cache, capsys):
        assert f"{shard}: 'faces' declares {COUNT} rows" in message, message


def declare_face_size(root: Path, size: int, in_index: bool) -> Path:
    """Every shard (and, `in_index`, the index's config) declares faces of `size` px; the
    crops inside stay 8 px JPEGs."""
    index = index_of(root)
    for row in index["shards"]:
        with h5py.File(root / row["path"], "a") as handle:
            handle.attrs[schema.ATTR_FACE_SIZE] = size
        row["sha256"] = hashlib.sha256((root / row["path"]).read_bytes()).hexdigest()
    if in_index:
        index["config"]["faces"]["size"] = size
    else:
        index["config"].pop("faces")
    write_index(root, index)
    return root / index["shards"][0]["path"]


def one_line_refusals(root: Path, tmp_path: Path, capsys) -> list[str]:
    """What sheet, sheet --video, gallery and training say: each exit 2, one line."""
    root_, out = str(root), tmp_path
    commands = [
        (inspect_main, [root_, "sheet", "-o", str(out / "s.png")]),
        (inspect_main, [root_, "sheet", "--video", "vidéo 3.mp4", "-o", str(out / "v.png")]),
        (inspect_main, [root_, "gallery", "-o", str(out / "gallery")]),
        (train_main, ["--cache", root_, "--out", str(out / "run"), *small_config()]),
    ]
    messages = []
    for main, argv in commands:
        assert main(argv) == 2, argv
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "Traceback" not in error, error
        messages.append(error)
    return messages


@pytest.mark.parametrize("size", [2**20, 32768, 16384, schema.MAX_FACE_SIZE + 1])
@pytest.mark.parametrize("in_index", [True, False], ids=["index and shards", "shards"])
def test_a_face_size_over_the_limit_is_refused_before_any_allocation(tmp_path, capsys, size,
                                                                     in_index):  # fmt: skip
    """JPEG shards of 8 px crops declaring `size` px faces: 2**20 would have every reader
    allocate 6 TiB a sample; refused when the index or the shard is opened."""
    root = build(tmp_path / "cache", codec="jpeg")
    shard = declare_face_size(root, size, in_index)
    where = f"{root / schema.INDEX_FILE}: config.faces.size" if in_index else f"{shard}: face_size"
    expected = f"{where} is {size}: over {schema.MAX_FACE_SIZE}, the most avcache writes"
    for message in [*refusals(root, capsys), *one_line_refusals(root, tmp_path, capsys)]:
        assert expected in message, message


def test_jpeg_headers_are_read_before_their_faces_are_allocated(tmp_path, capsys):
    """A shard declaring the largest faces (1024 px) over 8 px crops: refused from the crops'
    headers, without allocating the 126 MB that 20 samples of 2 such faces would take."""
    import tracemalloc

    root = build(tmp_path / "cache", codec="jpeg")
    shard = declare_face_size(root, schema.MAX_FACE_SIZE, in_index=True)
    with ShardReader(shard) as reader:
        tracemalloc.start()
        try:
            with pytest.raises(CacheFormatError, match="a 8x8 crop where 1024x1024 is stored"):
                reader.read(schema.FACES, 0, COUNT)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 2**20, peak  # the JPEG bytes and their ends: a few kB
    for message in one_line_refusals(root, tmp_path, capsys)[:3]:  # training reads no faces first
        assert f"{shard}: reading 'faces' failed" in message and "a 8x8 crop where" in message


# ---------------------------------------------------------------- integrity of the index


def test_a_training_shard_listed_under_validation_is_refused(cache, tmp_path, capsys):
    index = index_of(cache)
    index["shards"].append({**index["shards"][0], "split": "val"})
    index["splits"]["val"] = {"shards": 2, "samples": 2 * COUNT, "failed": 0}
    write_index(cache, index)
    assert train_main(["--cache", str(cache), "--out", str(tmp_path / "run"),
                       *small_config()]) == 2  # fmt: skip
    error = capsys.readouterr().err
    assert "shards[3]: the same path as shards[0] (split 'train')" in error
    assert "validated on what trained" in error


def test_the_same_shard_listed_twice_is_refused(cache, capsys):
    index = index_of(cache)
    index["shards"].insert(1, index["shards"][0])
    index["splits"]["train"] = {"shards": 3, "samples": 3 * COUNT, "failed": 0}
    write_index(cache, index)
    assert inspect_main([str(cache)]) == 2
    assert "shards[1]: the same path as shards[0]" in capsys.readouterr().err


def test_a_copy_of_a_training_shard_as_validation_is_refused(cache, capsys):
    """Copied under another name with its split attribute and the index rewritten: the
    same samples twice, found by the shards' metadata digests."""
    source = first_shard(cache)
    copy = cache / "shards/val-00001.h5"
    copy.write_bytes(source.read_bytes())
    with h5py.File(copy, "a") as handle:
        handle.attrs[schema.ATTR_SPLIT] = "val"
    index = index_of(cache)
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    index["shards"].append({"path": "shards/val-00001.h5", "split": "val",
                            "num_samples": COUNT, "sha256": digest})  # fmt: skip
    index["splits"]["val"] = {"shards": 2, "samples": 2 * COUNT, "failed": 0}
    write_index(cache, index)
    assert inspect_main([str(cache)]) == 2
    assert f"{copy}: holds the same samples as {source}" in capsys.readouterr().err


def test_a_split_summary_that_disagrees_with_the_rows_is_refused(cache, capsys):
    index = index_of(cache)
    index["splits"]["train"]["samples"] = 7
    write_index(cache, index)
    assert inspect_main([str(cache)]) == 2
    assert f"splits.train says 2 shards, 7 samples; its shard list holds 2 shards, {2 * COUNT}" \
        in capsys.readouterr().err  # fmt: skip


# ---------------------------------------------------------------- values the reader computes with


ARRAY_ATTRIBUTES = {
    "format as an array": (schema.ATTR_FORMAT, np.array([b"avcache"]), "is ndarray of shape (1,)"),
    "version as an array": (schema.ATTR_VERSION, np.array([2, 2]), "is ndarray of shape (2,)"),
    "version as a float": (schema.ATTR_VERSION, 2.0, "version 2.0 is not supported"),
    "face size as an array": (schema.ATTR_FACE_SIZE, np.array([SIZE]), "is ndarray of shape"),
    "split as an array": (schema.ATTR_SPLIT, np.array([b"train"]), "is ndarray of shape (1,)"),
    "sha256 as an array": (schema.ATTR_META_SHA256, np.zeros(4), "is ndarray of shape (4,)"),
}


@pytest.mark.parametrize("case", list(ARRAY_ATTRIBUTES))
def test_an_attribute_of_another_type_is_one_line(cache, tmp_path, capsys, case):
    name, value, expected = ARRAY_ATTRIBUTES[case]
    shard = first_shard(cache)
    with h5py.File(shard, "a") as handle:
        handle.attrs[name] = value
    resign(cache, shard)
    for message in [*refusals(cache, capsys), *one_line_refusals(cache, tmp_path, capsys)]:
        assert f"{shard}: " in message and expected in message, message


@pytest.mark.parametrize("value", [np.inf, np.nan, -1.0])
def test_a_duration_that_is_no_length_is_refused(cache, tmp_path, capsys, value):
    """+inf would size the sheet's time axis (int(inf) raises); refused when opened."""
    shard = first_shard(cache)
    forge_column(cache, shard, schema.DURATION, lambda d: np.where(np.arange(len(d)) == 3,
                                                                   value, d))  # fmt: skip
    expected = f"{shard}: sample 3 ('vidéo 3.mp4') has duration {np.float32(value)}: not a length"
    for message in [*refusals(cache, capsys), *one_line_refusals(cache, tmp_path, capsys)]:
        assert expected in message, message


def test_an_index_config_section_that_is_not_one_is_refused_by_every_command(cache, tmp_path,
                                                                            capsys):  # fmt: skip
    index = index_of(cache)
    index["config"]["audio"] = "baseline"  # sheets read config.audio.mode
    write_index(cache, index)
    for message in one_line_refusals(cache, tmp_path, capsys):
        assert f"{cache / schema.INDEX_FILE}: config.audio is str: expected a JSON object" \
            in message  # fmt: skip


# ---------------------------------------------------------------- labels training can use


def train_refusal(root: Path, tmp_path: Path, capsys, *overrides: str) -> str:
    args = ["--cache", str(root), "--out", str(tmp_path / "run"), *small_config(), *overrides]
    assert train_main(args) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error, error
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before the run began
    return error


def test_a_label_other_than_1_0_or_minus_1_is_refused_by_every_reader(cache, tmp_path, capsys):
    shard = first_shard(cache)
    forge_column(cache, shard, schema.LABEL, lambda labels: np.where(labels == 1, 7, labels))
    expected = f"{shard}: sample 1 ('vidéo 1.mp4') has label 7: a label is 1 (fake), 0 (real)"
    assert expected in train_refusal(cache, tmp_path, capsys)
    for message in refusals(cache, capsys):
        assert expected in message, message


@pytest.mark.parametrize("unknown", ["one", "all"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_training_refuses_samples_without_a_target(cache, tmp_path, capsys, unknown, split):
    """-1 (unknown) is no target: trained on, it would be one."""
    index = index_of(cache)
    shard = cache / next(row["path"] for row in index["shards"] if row["split"] == split)
    first = 5 if unknown == "one" else 0
    forge_column(cache, shard, schema.LABEL, lambda labels: np.where(
        np.arange(COUNT) >= first if unknown == "all" else np.arange(COUNT) == first, -1,
        labels))  # fmt: skip
    name = f"vidéo {first + (COUNT * 2 if split == 'val' else 0)}.mp4"
    count = 1 if unknown == "one" else COUNT
    total = index["splits"][split]["samples"]
    error = train_refusal(cache, tmp_path, capsys)
    assert (
        f"{shard}: sample {first} ({name!r}) has no target (label -1, unknown; {count} of "
        f"the {total} samples of split {split!r} have none): data.{split}_split must name a "
        "split whose every sample is labelled 0 (real) or 1 (fake)" in error
    ), error
    assert inspect_main([str(cache)]) == 0  # a split without targets is sound, to inspect
    capsys.readouterr()


def test_training_on_a_test_split_without_targets_is_refused(tmp_path, capsys):
    root = build(tmp_path / "cache", {"train": 2, "val": 1, "test": 1})
    shard = root / "shards/test-00000.h5"
    forge_column(root, shard, schema.LABEL, lambda labels: np.full_like(labels, -1))
    error = train_refusal(root, tmp_path, capsys, "data.train_split=test")
    assert f"{shard}: sample 0 ('vidéo 60.mp4') has no target" in error
    assert f"{COUNT} of the {COUNT} samples of split 'test' have none): data.train_split" in error
    assert f"(in {root}: train, val)" in error


# ---------------------------------------------------------------- malformed JSON


def edit(index: dict, path: str, value: object) -> dict:
    """Set a dotted path (list positions as numbers) of the index."""
    *parents, last = path.split(".")
    node = index
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(last) if isinstance(node, list) else last] = value
    return index


BAD_INDEXES = {
    "shards not a list": (lambda i: edit(i, "shards", {"a": 1}), "'shards' is dict"),
    "a row not an object": (lambda i: edit(i, "shards.0", "x"), "shards[0] is str"),
    "count a string": (lambda i: edit(i, "shards.0.num_samples", "20"), "num_samples is '20'"),
    "count a bool": (lambda i: edit(i, "shards.0.num_samples", True), "num_samples is True"),
    "count a float": (lambda i: edit(i, "shards.0.num_samples", 20.5), "num_samples is 20.5"),
    "count negative": (lambda i: edit(i, "shards.0.num_samples", -1), "num_samples is -1"),
    "path a number": (lambda i: edit(i, "shards.0.path", 3), "path 3 is not a file name"),
    "split null": (lambda i: edit(i, "shards.0.split", None), "split is None"),
    "unknown split": (lambda i: edit(i, "shards.0.split", "holdout"), "split 'holdout' is not"),
    "sha256 short": (lambda i: edit(i, "shards.0.sha256", "abc"), "is not a hex sha256"),
    "config a list": (lambda i: edit(i, "config", [1]), "'config' is list"),
    "faces size text": (lambda i: edit(i, "config.faces.size", "8"), "config.faces.size is"),
    "audio a string": (lambda i: edit(i, "config.audio", "baseline"), "config.audio is str"),
    "top level a list": (lambda i: [i], "is list: expected a JSON object"),
}


@pytest.mark.parametrize("case", list(BAD_INDEXES))
def test_a_malformed_index_is_one_line_naming_it(cache, capsys, case):
    change, expected = BAD_INDEXES[case]
    write_index(cache, change(index_of(cache)))
    for argv in ([str(cache)], [str(cache), "verify"]):
        assert inspect_main(argv) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"avcache-inspect: error: {cache / schema.INDEX_FILE}")
        assert expected in error and error.count("\n") == 1, error


@pytest.mark.parametrize("text,expected", [
    ('{"format": "avcache", "version": 1, "shards": [{"num_samples": NaN}]}', "NaN is not"),
    ('{"format": "avcache", "version": 1, "x": Infinity}', "Infinity is not"),
    ("[" * 100_000 + "]" * 100_000, "nests too deeply"),
    ('{"format": "avcache", "version": 1, "shards": [', "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
])  # fmt: skip
def test_json_that_python_would_choke_on_is_refused(cache, capsys, text, expected):
    path = cache / schema.INDEX_FILE
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert inspect_main([str(cache)]) == 2
    error = capsys.readouterr().err
    assert (
        error.startswith(f"avcache-inspect: error: {path}: the cache index") and expected in error
    )


def test_an_oversized_index_is_refused_unread(cache, capsys):
    index = index_of(cache)
    index["padding"] = "x" * MAX_JSON_BYTES
    write_index(cache, index)
    assert inspect_main([str(cache)]) == 2
    assert f"bytes, over the {MAX_JSON_BYTES} allowed" in capsys.readouterr().err


@pytest.mark.parametrize("line,expected", [
    ("not json", "not a JSON failure record"),
    ("[1, 2]", "is list: expected a JSON object"),
    ('{"split": "train", "video_name": "a"}', "a failure holds exactly"),
    ('{"split": "train", "video_name": 3, "stage": "s", "error": "e"}', "video_name is 3"),
    ('{"split": "train", "video_name": "a", "stage": "s", "error": NaN}', "NaN is not a JSON"),
])  # fmt: skip
def test_a_malformed_failures_row_is_named_by_line(cache, capsys, line, expected):
    good = '{"split": "train", "video_name": "a.mp4", "stage": "decode", "error": "e"}'
    (cache / schema.FAILURES_FILE).write_text(f"{good}\n\n{line}\n")
    assert inspect_main([str(cache)]) == 2
    error = capsys.readouterr().err
    assert f"{cache / schema.FAILURES_FILE}:3: " in error and expected in error, error
    assert error.count("\n") == 1


@pytest.mark.parametrize("payload", [
    [1], {"path": 3}, {"path": "shards/train-00000.h5", "split": "train", "num_samples": "1",
                       "sha256": "x"},
    {"path": "shards/train-00000.h5", "split": "train", "num_samples": 1, "sha256": "x",
     "failures": [{"split": 1}]},
    {"path": "shards/other.h5", "split": "train", "num_samples": 1, "sha256": "x"},
])  # fmt: skip
def test_a_malformed_receipt_means_the_shard_is_redone(cache, payload):
    rel = "shards/train-00000.h5"
    write_receipt(cache, ShardRecord(rel, "train", COUNT, "x"))
    assert read_receipt(cache, rel) is not None  # a sound one is read
    receipt = cache / "shards/train-00000.json"
    receipt.write_text(json.dumps(payload))
    assert read_receipt(cache, rel) is None
    receipt.write_text("[" * 100_000)
    assert read_receipt(cache, rel) is None


# ---------------------------------------------------------------- what reaches the terminal


def test_control_characters_are_printed_escaped(cache, capsys):
    reason = "ffmpeg: bad\r\n\x1b[2J\x1b]0;owned\x07 \u202eevil"  # the last line is shown
    row = {"split": "train", "video_name": "a\x1b[31m.mp4", "stage": "decode", "error": reason}
    (cache / schema.FAILURES_FILE).write_text(json.dumps(row) + "\n")
    assert read_failures(cache / schema.FAILURES_FILE)[0].error == reason  # kept as written
    assert inspect_main([str(cache)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
    assert r"\x1b[2J" in out
    assert printable("a\x1bb\nc") == r"a\x1bb\nc" and printable("视频 ok") == "视频 ok"


def test_an_escape_in_a_forged_split_name_is_printed_escaped(cache, capsys):
    index = index_of(cache)
    edit(index, "shards.0.split", "\x1b[2Jx")
    write_index(cache, index)
    assert inspect_main([str(cache)]) == 2
    error = capsys.readouterr().err
    assert "\x1b" not in error and r"'\x1b[2Jx'" in error


# ---------------------------------------------------------------- trusted index hash


def test_verify_with_a_trusted_index_hash(cache, capsys):
    digest = hashlib.sha256((cache / schema.INDEX_FILE).read_bytes()).hexdigest()
    assert inspect_main([str(cache), "verify", "--sha256", digest.upper()]) == 0
    assert "every shard is the one it names" in capsys.readouterr().out
    # A forger rewrites a label, the shard's metadata digest and the index's sha256: every
    # checksum agrees, so plain verify passes; the trusted hash does not.
    shard = first_shard(cache)
    with h5py.File(shard, "a") as handle:
        handle[schema.LABEL][0] = 1 - handle[schema.LABEL][0]
        columns = {name: handle[name][()] for name in schema.META_FIELDS}
        handle.attrs[schema.ATTR_META_SHA256] = schema.meta_sha256(columns)
    resign(cache, shard)
    assert inspect_main([str(cache), "verify"]) == 0
    capsys.readouterr()
    assert inspect_main([str(cache), "verify", "--sha256", digest]) == 1
    assert "is not the" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        inspect_main([str(cache), "verify", "--sha256", "abc"])


# ---------------------------------------------------------------- run folders


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("run")
    write_toy_cache(root / "cache", {"train": 24, "val": 12, "test": 4})
    run = root / "run"
    assert train_main(["--cache", str(root / "cache"), "--out", str(run),
                       *small_config(**{"run.epochs": 1})]) == 0  # fmt: skip
    return root, run


def forged_run(trained, tmp_path, change) -> Path:
    """A copy of the trained run whose best.pt is what `change(state)` returns."""
    _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    state = torch.load(run / BEST, weights_only=True)
    torch.save(change(state), copy / BEST)
    return copy


def first_weight(state: dict) -> dict:
    key = next(iter(state["model"]))
    state["model"][key] = torch.zeros(3, 3)
    return state


@pytest.mark.parametrize("change,expected", [
    (lambda s: {k: v for k, v in s.items() if k != "model"}, "no 'model' weights"),
    (lambda s: {**s, "model": {"x": 1}}, "no 'model' weights"),
    (first_weight, "1 of another shape"),
    (lambda s: {**s, "model": dict(list(s["model"].items())[:-2])}, "2 missing"),
    (lambda s: {**s, "kind": "audio"}, "written for model.kind=audio"),
    (lambda s: [1, 2], "holds a list, not a dict"),
])  # fmt: skip
def test_a_foreign_checkpoint_is_one_line(trained, tmp_path, capsys, change, expected):
    run = forged_run(trained, tmp_path, change)
    listing = tmp_path / "list.csv"
    listing.write_text("video_name,target\ntest000.mp4,\n")
    assert predict_main(["--run", str(run), "--list", str(listing)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"avcache-predict: error: {run / BEST}: ") and expected in error
    assert error.count("\n") == 1


def test_a_junk_checkpoint_and_a_junk_cache_record(trained, tmp_path, capsys):
    run = forged_run(trained, tmp_path, lambda s: s)
    (run / BEST).write_bytes(b"\x00junk" * 100)
    listing = tmp_path / "list.csv"
    listing.write_text("video_name,target\ntest000.mp4,\n")
    assert predict_main(["--run", str(run), "--list", str(listing)]) == 2
    error = capsys.readouterr().err
    assert f"{run / BEST}: " in error and "Traceback" not in error and error.count("\n") == 1
    (run / "cache.json").write_text('["not", "an", "object"]')
    assert predict_main(["--run", str(run), "--list", str(listing)]) == 2
    assert f"{run / 'cache.json'} is list" in capsys.readouterr().err


def test_resume_refuses_a_checkpoint_with_forged_progress(trained, tmp_path, capsys):
    _, run = trained
    copy = forged_run(trained, tmp_path, lambda s: s)
    state = torch.load(run / "last.pt", weights_only=True)
    torch.save({**state, "epoch": "one"}, copy / "last.pt")
    assert train_main(["--resume", str(copy)]) == 2
    error = capsys.readouterr().err
    assert f"{copy / 'last.pt'}: 'epoch' is str, expected int" in error


def test_the_keys_naming_a_program_or_a_file_are_the_local_ones():
    """Every config key that names a program or a file is marked LOCAL (a new one must be)."""
    from avcache.common.config import ConfigError, local_keys, local_values
    from avcache.preprocess.config import AudioConfig, PreprocessConfig
    from avcache.train.config import TrainConfig

    assert local_keys(PreprocessConfig) == ["audio.ffmpeg"]
    assert local_keys(TrainConfig) == ["model.pretrained", "model.init"]
    recorded = PreprocessConfig(audio=AudioConfig(ffmpeg="/tmp/x", mode="padded"))
    given = local_values(recorded, "f", {"audio.ffmpeg": "auto"}, "fix")
    assert (given.audio.ffmpeg, given.audio.mode, recorded.audio.ffmpeg) == ("auto", "padded",
                                                                            "/tmp/x")  # fmt: skip
    assert local_values(PreprocessConfig(), "f", {}, "fix") == PreprocessConfig()
    with pytest.raises(ConfigError, match=r"^f: audio.ffmpeg='/tmp/x' names a program .*: fix$"):
        local_values(recorded, "f", {}, "fix")


def hostile_program(bait: Path) -> tuple[Path, Path]:
    """A script named like ffmpeg that leaves a marker file when it runs."""
    marker, script = bait / "it-ran", bait / "ffmpeg"
    script.write_text(f"#!/bin/sh\ntouch '{marker}'\nexit 1\n")
    script.chmod(0o755)
    return script, marker


def test_the_marker_check_sees_a_run(bait, tmp_path):
    """The check below can fail: a config of the user's own naming the script runs it."""
    from avcache.preprocess.config import AudioConfig, PreprocessConfig
    from avcache.preprocess.worker import VideoFailed, process_video_file

    script, marker = hostile_program(bait)
    video = talking_face(tmp_path / "clip.mp4", seconds=1.0)
    with pytest.raises(VideoFailed):
        process_video_file(video, PreprocessConfig(audio=AudioConfig(ffmpeg=str(script))))
    assert marker.exists()


def test_a_run_folder_naming_a_program_never_runs_it(trained, tmp_path, bait, capsys):
    script, marker = hostile_program(bait)
    run = forged_run(trained, tmp_path, lambda s: s)
    record = json.loads((run / "cache.json").read_text())
    record["config"]["audio"]["ffmpeg"] = str(script)
    (run / "cache.json").write_text(json.dumps(record))
    video = talking_face(tmp_path / "clip.mp4", seconds=1.0)
    assert predict_main(["--run", str(run), "--video", str(video)]) == 2
    error = capsys.readouterr().err
    assert error == (
        f"avcache-predict: error: {run / 'cache.json'}: audio.ffmpeg={str(script)!r} names a "
        "program or file to use; avcache runs and reads none that a cache or run folder names: "
        "pass --ffmpeg auto to decode with this installation's ffmpeg, or --ffmpeg PATH to "
        "name one you trust\n"
    )
    assert not marker.exists()
    # The user's own choice, on the command line, is used: this installation's ffmpeg.
    assert predict_main(["--run", str(run), "--video", str(video), "--ffmpeg", "auto"]) == 0
    assert capsys.readouterr().out.startswith(f"{video}: P(fake) = ")
    assert not marker.exists()


@pytest.mark.parametrize("change,expected", [
    (lambda c: c["faces"].update(size=2**20), "faces.size must be at most 1024"),
    (lambda c: c["faces"].update(frames=10**6), "faces.frames at most 64"),
    (lambda c: c.update(faces="x"), "cache.json: config.faces is str: expected a JSON object"),
    (lambda c: c.update(audio="x"), "cache.json: audio: expected a mapping, got 'x'"),
])  # fmt: skip
def test_a_forged_preprocessing_record_is_one_line(trained, tmp_path, capsys, change, expected):
    """--video preprocesses as the record says: its sizes are bounded as the preprocessor's
    (2**20 px crops would allocate 3 TiB a frame)."""
    run = forged_run(trained, tmp_path, lambda s: s)
    record = json.loads((run / "cache.json").read_text())
    change(record["config"])
    (run / "cache.json").write_text(json.dumps(record))
    video = talking_face(tmp_path / "clip.mp4", seconds=1.0)
    assert predict_main(["--run", str(run), "--video", str(video)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and expected in error, error


def run_naming_weights(trained, tmp_path: Path, bait: Path) -> tuple[Path, list[Path]]:
    """A copy of the trained run whose config.yaml names weights outside it: real ones
    (a copy of its own last.pt, a timm state dict), so reading them would succeed."""
    run = forged_run(trained, tmp_path, lambda s: s)
    init, pretrained = bait / "init.pt", bait / "resnet18.pth"
    init.write_bytes((run / "last.pt").read_bytes())
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, pretrained)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"].update(init=str(init), pretrained=str(pretrained))
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run, [init, pretrained]


def test_resume_and_predict_read_no_weights_the_run_folder_names(trained, tmp_path, bait,
                                                                capsys):  # fmt: skip
    """Its checkpoints hold its weights: the files that started it are not read again."""
    run, outside = run_naming_weights(trained, tmp_path, bait)
    listing = tmp_path / "list.csv"
    listing.write_text("video_name,target\ntest000.mp4,\n")
    with never_read(outside[0]), never_read(outside[1]):
        assert train_main(["--resume", str(run)]) == 0  # finished already: nothing to train
        assert predict_main(["--run", str(run), "--list", str(listing)]) == 0
    assert (run / "submission.csv").read_text().startswith("video_name,y_pred\ntest000.mp4,")
    capsys.readouterr()


def test_a_resume_without_a_checkpoint_refuses_the_weights_its_folder_names(
    trained, tmp_path, bait, capsys
):
    """Stopped before its first checkpoint, a resume would start from those files."""
    run, outside = run_naming_weights(trained, tmp_path, bait)
    (run / "last.pt").unlink()
    with never_read(outside[0]), never_read(outside[1]):
        assert train_main(["--resume", str(run)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{run / 'config.yaml'}: model.pretrained=" in error
    assert f"{run} holds no checkpoint yet" in error
    assert f"avcache-train --config {run / 'config.yaml'} --cache " in error


# ---------------------------------------------------------------- files that are no checkpoint

INFLATED = 2_400_000_000  # bytes the zip bomb's tensor storage declares
# A fresh interpreter running one command's main(), then reporting its own peak RSS in MiB:
# VmHWM, which starts anew at exec (getrusage's ru_maxrss would count the forking parent's).
MEASURED_COMMAND = """
import importlib, re, sys
from pathlib import Path
code = importlib.import_module(sys.argv[1]).main(sys.argv[2:])
status = Path("/proc/self/status").read_text()
print("peak_mib", int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) // 1024)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory) -> Path:
    """A checkpoint as torch.save writes it but for its one tensor's storage, which declares
    2.4 GB of zeros, deflated (about 11 MB on disk): torch.load would allocate and inflate it
    all (3 GB peak) before the weights' names could be checked. Written in chunks."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.pt"
    numel = INFLATED // 4
    small = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(7)}, "kind": "faces"}, small)
    with zipfile.ZipFile(small) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED,
                                                           compresslevel=1) as bomb:  # fmt: skip
        for member in source.infolist():
            data = source.read(member)
            if member.filename.endswith("/data.pkl"):  # the storage's element count: 7 -> numel
                data = data.replace(
                    b"cpuq\x08K\x07t", b"cpuq\x08J" + struct.pack("<i", numel) + b"t"
                )
                assert struct.pack("<i", numel) in data
            if not member.filename.endswith("/data/0"):
                bomb.writestr(member.filename, data)
                continue
            chunk = bytes(1 << 24)
            with bomb.open(member.filename, "w", force_zip64=True) as storage:
                for start in range(0, INFLATED, len(chunk)):
                    storage.write(chunk[: INFLATED - start])
    assert path.stat().st_size < INFLATED / 100
    return path


def checkpoint_commands(trained, tmp_path: Path, checkpoint: Path) -> dict[str, tuple]:
    """Each command that reads a checkpoint, given `checkpoint`'s bytes where it reads one:
    (module, argv, the file it must name)."""
    root, _ = trained
    run = forged_run(trained, tmp_path, lambda s: s)
    for name in ("last.pt", BEST):
        (run / name).unlink()
        os.link(checkpoint, run / name)  # the same bytes, without copying them
    listing = tmp_path / "list.csv"
    listing.write_text("video_name,target\ntest000.mp4,\n")
    init = [
        "--cache", str(root / "cache"), "--out", str(tmp_path / "new"), "--init",
        str(checkpoint), *small_config(**{"run.epochs": 1}),
    ]  # fmt: skip
    return {
        "init": ("avcache.train.run", init, checkpoint),
        "resume": ("avcache.train.run", ["--resume", str(run)], run / "last.pt"),
        "predict": ("avcache.train.predict", ["--run", str(run), "--list", str(listing)],
                    run / BEST),
    }  # fmt: skip


@pytest.mark.parametrize("command", ["init", "resume", "predict"])
def test_a_zip_bomb_as_a_checkpoint_is_refused_before_it_inflates(trained, tmp_path, zip_bomb,
                                                                  command):  # fmt: skip
    module, argv, named = checkpoint_commands(trained, tmp_path, zip_bomb)[command]
    done = subprocess.run([sys.executable, "-c", MEASURED_COMMAND, module, *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"error: {named}: refused to load: its members would inflate to 2,289 MiB" in (
        done.stderr
    )
    peak = int(done.stdout.split("peak_mib")[-1])
    assert peak < INFLATED / 2**20 / 2, f"peak RSS {peak} MiB"  # torch alone is ~0.8 GB


@pytest.mark.parametrize("command", ["init", "resume", "predict"])
def test_a_text_file_as_a_checkpoint_is_one_line(trained, tmp_path, command, capsys):
    text = tmp_path / "notes.pt"
    text.write_text("epoch 3: val_auc 0.91\n")
    module, argv, named = checkpoint_commands(trained, tmp_path, text)[command]
    main = train_main if module == "avcache.train.run" else predict_main
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert f"error: {named}: not a checkpoint: not a zip archive, the format torch.save" in error


# ---------------------------------------------------------------- the preprocessor


@pytest.mark.parametrize(
    "previous", ['{"config_hash": "../../../escape"}', "[1]", "{", "[" * 99999]
)
def test_a_forged_previous_index_names_no_file_outside(tmp_path, previous):
    """The previous index is set aside as index.<its config hash>.json: a hash that is not
    one cannot name a path."""
    from avcache.preprocess.config import PreprocessConfig
    from avcache.preprocess.pipeline import Preprocessor

    (tmp_path / "data").mkdir()
    out = tmp_path / "cache"
    out.mkdir()
    (out / schema.INDEX_FILE).write_text(previous)
    preprocessor = Preprocessor(PreprocessConfig(), tmp_path / "data", out, jobs=1)
    assert preprocessor._previous_config_hash() == "unreadable"


def test_a_shard_also_open_through_plain_h5py_still_opens(cache):
    """HDF5 shares one open file between handles in a process: a notebook (or a benchmark)
    holding the shard through h5py does not stop avcache from opening it."""
    shard = first_shard(cache)
    with h5py.File(shard, "r") as handle:
        mel = handle[schema.MEL][:2]
        with ShardReader(shard) as reader:
            np.testing.assert_array_equal(reader.read(schema.MEL, 0, 2), mel)
