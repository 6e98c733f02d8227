"""Hostile caches and run folders, built by hand with h5py and JSON: each is refused in one
line naming the file (exit 2 from the commands), and nothing outside the cache is read.

A bait file outside the cache holds exactly the bytes an attack wants read (the real mel
images), so only the refusal stops it. Its access time is set before the mtime: on Linux
(relatime or strictatime) the first read of it moves the atime, which the tests check.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from avcache.cache import schema
from avcache.cache.index import ShardRecord, read_failures, read_receipt, write_receipt
from avcache.cache.inspection import main as inspect_main
from avcache.cache.reader import CacheFormatError, ShardReader, open_cache
from avcache.cache.untrusted import MAX_JSON_BYTES, printable
from avcache.train.engine import BEST
from avcache.train.loader import LoaderPlan, ShardStream
from avcache.train.predict import main as predict_main
from avcache.train.run import main as train_main
from tests.test_cache import FRAMES, SIZE, make_sample
from tests.test_train import small_config, write_toy_cache

REPO = Path(__file__).resolve().parents[1]
COUNT = 20  # samples per shard


# ---------------------------------------------------------------- building hostile caches


def build(root: Path, splits: dict[str, int] | None = None) -> Path:
    """A sound cache (real config, faces 2 x 8 px) with `splits` shard counts."""
    from avcache.cache.atomic import write_json_atomic
    from avcache.cache.index import build_index
    from avcache.cache.writer import ShardWriter

    config = {"splits": {"train": {}, "val": {}, "test": {}},
              "faces": {"frames": FRAMES, "size": SIZE}}  # fmt: skip
    records, number = [], 0
    (root / "shards").mkdir(parents=True)
    for split, shards in (splits or {"train": 2, "val": 1}).items():
        for shard in range(shards):
            rel = f"shards/{split}-{shard:05d}.h5"
            with ShardWriter(root / rel, split=split, frames=FRAMES, face_size=SIZE) as writer:
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
        done = subprocess.run([sys.executable, "-m", "avcache.cache.inspection", *argv], cwd=REPO,
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
        for name in schema.dataset_specs(FRAMES, SIZE):
            handle[name].resize(rows, axis=0)
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
    with ShardWriter(shard, split="train", frames=16, face_size=64) as writer:
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
    """face_size 2**20 with a faces dataset to match, no chunk written: refused."""
    shard = first_shard(cache)
    with h5py.File(shard, "a") as handle:
        handle.attrs[schema.ATTR_FACE_SIZE] = 2**20
        del handle[schema.FACES]
        shape = (COUNT, FRAMES, 2**20, 2**20, 3)
        handle.create_dataset(schema.FACES, shape, np.uint8, chunks=(1, 1, 64, 64, 3))
    assert shard.stat().st_size < 2**22  # the 20 mel images; faces declare 132 TB
    index = index_of(cache)
    index["config"].pop("faces")  # no config to compare with: the file's size still bounds it
    write_index(cache, index)
    resign(cache, shard)
    for message in refusals(cache, capsys):
        assert f"{shard}: 'faces' declares {COUNT} rows" in message, message


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
    copy.mkdir()
    for item in run.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
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
