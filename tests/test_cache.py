"""Writer -> reader round trips, format refusal, verify, per-sample checksums."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from torch.optim.optimizer import register_optimizer_step_pre_hook

from avcache.cache import schema
from avcache.cache.encodings import Array
from avcache.cache.index import ShardRecord, build_index
from avcache.cache.reader import (
    CacheFormatError,
    DamagedShardError,
    ShardFacts,
    ShardReader,
    open_cache,
)
from avcache.cache.verify import verify_cache
from avcache.cache.writer import WRITE_BLOCK, ShardWriter, sha256_of
from avcache.common.atomic import write_json_atomic
from avcache.train.engine import BEST, LAST
from avcache.train.loader import LoaderPlan, ShardStream
from avcache.train.run import main as train_main
from tests.test_train import small_config, write_toy_cache

FRAMES, SIZE = 2, 8
REPO = Path(__file__).resolve().parents[1]


def make_sample(i: int, frames: int = FRAMES, size: int = SIZE) -> schema.Sample:
    rng = np.random.default_rng(i)
    return schema.Sample(
        video_name=f"vidéo {i}.mp4",
        label=i % 3 - 1,
        mel=rng.integers(0, 256, (256, 256), dtype=np.uint8),
        faces=rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8),
        has_audio=bool(i % 2),
        face_found=np.array([True, False][:frames]),
        face_box=rng.random((frames, 4), dtype=np.float32),
        duration=np.float32(i / 4),
    )


def write_cache(root, counts: list[int], frames: int = FRAMES, fletcher32: bool = False,
                size: int = SIZE) -> list[schema.Sample]:  # fmt: skip
    samples, records, offset = [], [], 0
    (root / "shards").mkdir(parents=True)
    for number, count in enumerate(counts):
        shard_samples = [make_sample(offset + j, frames, size) for j in range(count)]
        offset += count
        rel = f"shards/train-{number:05d}.h5"
        with ShardWriter(
            root / rel,
            schema.ShardLayout(frames=frames, face_size=size),
            split="train",
            fletcher32=fletcher32,
        ) as writer:
            for sample in shard_samples:
                writer.append(sample)
            n, digest = writer.close()
        records.append(ShardRecord(rel, "train", n, digest))
        samples.extend(shard_samples)
    write_json_atomic(root / schema.INDEX_FILE, build_index({}, "h", records))
    return samples


def assert_same(a: schema.Sample, b: schema.Sample) -> None:
    for (name, x), y in zip(a.fields().items(), b.fields().values(), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)


@pytest.mark.parametrize("counts", [[0], [1], [WRITE_BLOCK], [WRITE_BLOCK * 2 + 3, 5]])
def test_round_trip_every_field(tmp_path, counts):
    written = write_cache(tmp_path, counts)
    cache = open_cache(tmp_path)
    assert cache.num_samples() == sum(counts)
    assert len(cache.shards) == len(counts)
    read = list(cache.iter_samples())
    assert len(read) == len(written)
    for a, b in zip(written, read, strict=True):
        assert_same(a, b)
    assert verify_cache(cache) == []


def test_block_reads_match_samples(tmp_path):
    written = write_cache(tmp_path, [40])
    with ShardReader(open_cache(tmp_path).shards[0].path) as shard:
        block = shard.read(schema.MEL, 5, 29)
        out = np.empty((10, 256, 256), np.uint8)
        shard.read_into(schema.MEL, 30, out)
        assert list(shard.read(schema.VIDEO_NAME, 0, 2)) == ["vidéo 0.mp4", "vidéo 1.mp4"]
    np.testing.assert_array_equal(block, np.stack([s.mel for s in written[5:29]]))
    np.testing.assert_array_equal(out, np.stack([s.mel for s in written[30:40]]))


def test_mel_only_shards_have_zero_frames(tmp_path):
    write_cache(tmp_path, [3], frames=0)
    sample = open_cache(tmp_path).find("vidéo 2.mp4")
    assert sample.faces.shape == (0, SIZE, SIZE, 3)
    assert sample.label == 1


def test_find_unknown_name_raises(tmp_path):
    write_cache(tmp_path, [2])
    with pytest.raises(KeyError, match="nope"):
        open_cache(tmp_path).find("nope")


@pytest.mark.parametrize("fletcher32", [False, True])
def test_identical_writes_give_identical_bytes(tmp_path, fletcher32):
    write_cache(tmp_path / "a", [20], fletcher32=fletcher32)
    write_cache(tmp_path / "b", [20], fletcher32=fletcher32)
    a, b = (open_cache(tmp_path / name).shards[0].path for name in "ab")
    assert sha256_of(a) == sha256_of(b)


@pytest.mark.parametrize("key,value", [("format", "webdataset"), ("version", 4)])
def test_reader_refuses_unknown_index_format(tmp_path, key, value):
    write_cache(tmp_path, [1])
    index = json.loads((tmp_path / schema.INDEX_FILE).read_text())
    index[key] = value
    (tmp_path / schema.INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CacheFormatError, match=str(value)):
        open_cache(tmp_path)


def test_reader_refuses_unknown_shard_version(tmp_path):
    write_cache(tmp_path, [1])
    path = open_cache(tmp_path).shards[0].path
    with h5py.File(path, "a") as handle:
        handle.attrs[schema.ATTR_VERSION] = 99
    with pytest.raises(CacheFormatError, match="version 99"):
        ShardReader(path)


def test_reader_refuses_wrong_dtype(tmp_path):
    write_cache(tmp_path, [2])
    path = open_cache(tmp_path).shards[0].path
    with h5py.File(path, "a") as handle:
        del handle[schema.MEL]
        handle.create_dataset(schema.MEL, data=np.zeros((2, 256, 256), np.float32))
    with pytest.raises(CacheFormatError, match="'mel' is float32"):
        ShardReader(path)


def test_index_paths_may_not_leave_the_cache(tmp_path):
    write_cache(tmp_path, [1])
    index = json.loads((tmp_path / schema.INDEX_FILE).read_text())
    index["shards"][0]["path"] = "../../etc/passwd"
    (tmp_path / schema.INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CacheFormatError, match="leaves the cache"):
        open_cache(tmp_path)


def list_facts(root: Path, change: dict | None = None) -> None:
    """Rewrite the index listing each shard's facts as avcache-preprocess does, the first
    shard's `change`d."""
    index = json.loads((root / schema.INDEX_FILE).read_text())
    for row in index["shards"]:
        with ShardReader(root / row["path"]) as shard:
            row["facts"] = ShardFacts.of(shard).to_index()
    index["shards"][0]["facts"].update(change or {})
    write_json_atomic(root / schema.INDEX_FILE, index)


def test_the_first_checks_read_a_shards_facts_from_the_index_without_opening_it(tmp_path):
    write_cache(tmp_path, [6, 5])
    expected = open_cache(tmp_path).without_target("train")
    assert expected[0] == 4 and "sample 0" in expected[1], "every third sample has no label"
    list_facts(tmp_path)
    cache = open_cache(tmp_path, check_shards=False)
    for entry in cache.shards:
        entry.path.unlink()  # a shard opened now would be a FileNotFoundError
    assert cache.without_target("train") == expected
    assert cache.face_codecs("train") == {"raw"}


@pytest.mark.parametrize("change, says", [
    ({"unknown": 1, "first_unknown": "sample 3 ('x')"}, "the index lists facts of it"),
    ({"codec": "png"}, r"shards\[0\].facts: not facts of a shard of 6 samples"),
    ({"unknown": 2, "first_unknown": ""}, r"shards\[0\].facts: not facts of a shard"),
])  # fmt: skip
def test_facts_the_shard_does_not_hold_or_no_shard_could_are_refused(tmp_path, change, says):
    write_cache(tmp_path, [6, 5])
    list_facts(tmp_path, change)
    with pytest.raises(CacheFormatError, match=says):
        open_cache(tmp_path)


def test_verify_names_a_shard_with_one_flipped_byte(tmp_path):
    write_cache(tmp_path, [3, 3])
    cache = open_cache(tmp_path)
    damaged = cache.shards[1].path
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    problems = verify_cache(cache)
    assert len(problems) == 1
    assert str(damaged) in problems[0] and "sha256" in problems[0]


def test_verify_reports_missing_shard(tmp_path):
    write_cache(tmp_path, [1, 1])
    cache = open_cache(tmp_path)
    cache.shards[0].path.unlink()
    assert verify_cache(cache) == [f"{cache.shards[0].path}: missing"]


def test_open_cache_without_index_explains(tmp_path):
    with pytest.raises(FileNotFoundError, match="avcache-preprocess"):
        open_cache(tmp_path)


def test_writer_abort_leaves_nothing(tmp_path):
    path = tmp_path / "s.h5"
    with (
        pytest.raises(RuntimeError),
        ShardWriter(path, schema.ShardLayout(frames=1, face_size=4), split="x") as w,
    ):
        w.append(make_sample(0, frames=1, size=4))
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name,bad",
    [
        (schema.MEL, np.zeros((2, 128, 256), np.uint8)),  # another mel size
        (schema.FACES, np.zeros((2, FRAMES + 1, SIZE, SIZE, 3), np.uint8)),  # not the frames attr
        (schema.LABEL, np.zeros(2, np.int64)),
        (schema.FACE_BOX, np.zeros((2, FRAMES, 4), np.float64)),
    ],
)
def test_reader_refuses_a_wrong_shape_or_dtype_naming_the_shard(tmp_path, name, bad):
    write_cache(tmp_path, [2, 2])
    cache = open_cache(tmp_path)
    path = cache.shards[1].path
    with h5py.File(path, "a") as handle:
        del handle[name]
        handle.create_dataset(name, data=bad)
    with pytest.raises(CacheFormatError, match=f"dataset '{name}' is {bad.dtype}") as caught:
        ShardReader(path)
    assert str(path) in str(caught.value)
    stream = ShardStream(cache.shards, (schema.MEL,), LoaderPlan(batch_size=4, shuffle=False))
    with pytest.raises(CacheFormatError, match=str(path)):
        list(stream)


def flip_byte_in_chunk(path: Path, name: str, chunk: int) -> None:
    """Flip one byte in the middle of a stored chunk's data (not metadata)."""
    with h5py.File(path, "r") as handle:
        info = handle[name].id.get_chunk_info(chunk)
    with open(path, "r+b") as raw:
        raw.seek(info.byte_offset + info.size // 2)
        byte = raw.read(1)[0]
        raw.seek(-1, 1)
        raw.write(bytes([byte ^ 0x10]))


def test_a_damaged_checksummed_chunk_is_named_at_read_and_by_verify(tmp_path):
    write_cache(tmp_path, [WRITE_BLOCK, WRITE_BLOCK * 2], fletcher32=True)
    cache = open_cache(tmp_path)
    damaged = cache.shards[1].path
    flip_byte_in_chunk(damaged, schema.MEL, chunk=1)
    problems = verify_cache(cache)
    assert len(problems) == 1 and problems[0].startswith(f"{damaged}: sha256")
    with ShardReader(damaged) as shard:  # the rest of the shard still reads
        assert shard.read(schema.MEL, 0, WRITE_BLOCK).shape == (WRITE_BLOCK, 256, 256)
    plan = LoaderPlan(batch_size=8, block_size=4, shuffle=False)
    stream, yielded = ShardStream(cache.shards, (schema.MEL,), plan), []
    with pytest.raises(CacheFormatError) as caught:
        for batch in stream:
            yielded.append(batch)
    message = str(caught.value)
    assert message.startswith(f"{damaged}: reading 'mel' failed, the shard is damaged")
    assert "avcache-inspect CACHE verify" in message and "train-00001.json" in message
    # In order: the first shard and the damaged shard's first chunk, never the damaged chunk.
    assert len(yielded) == (WRITE_BLOCK + WRITE_BLOCK) // 8


def test_a_full_disk_names_the_shard_and_leaves_nothing(tmp_path):
    """RLIMIT_FSIZE makes a write past 256 KiB fail with EFBIG, as a full disk fails with
    ENOSPC: the writer raises an OSError naming the shard and removes its partial file."""
    script = f"""
import resource, signal, sys
from pathlib import Path
import numpy as np
from avcache.cache.schema import Sample, ShardLayout
from avcache.cache.writer import ShardWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
path = Path({str(tmp_path / "s.h5")!r})
sample = Sample("v.mp4", 1, np.ones((256, 256), np.uint8), np.ones((1, 4, 4, 3), np.uint8),
                True, np.ones(1, bool), np.zeros((1, 4), np.float32), 1.0)
try:
    with ShardWriter(path, ShardLayout(frames=1, face_size=4), split="x") as writer:
        for i in range(20):
            writer.append(sample)
        writer.close()
except OSError as error:
    print(error.errno, error.filename, error.strerror)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(None, 2) == [str(errno.EFBIG), str(tmp_path / "s.h5"),
                                            "File too large\n"]  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def write_facts_shard(path: Path, extra: dict[str, float], count: int = 3) -> None:
    """A shard with facts (every one the table has), `extra` added to each sample's."""
    with ShardWriter(
        path, schema.ShardLayout(frames=FRAMES, face_size=SIZE, facts=True), split="train"
    ) as writer:
        for i in range(count):
            sample = make_sample(i)
            sample.facts = {name: float(i) for name in schema.FACT_NUMBERS}
            sample.facts |= {name: "h264" for name in schema.FACT_STRINGS} | extra
            writer.append(sample)
        writer.close()


def test_a_new_column_is_one_entry_in_the_schema(tmp_path, monkeypatch):
    """A hypothetical fact added to the table, and the format's version raised with it (the
    versioning rule's new required dataset): written, under the metadata sha256, read back;
    a shard of the version before still reads, without it."""
    older, newer, width = tmp_path / "older.h5", tmp_path / "newer.h5", "fact_mouth_width"
    write_facts_shard(older, {})
    version = schema.VERSION + 1
    entry = schema.Column(width, Array(dtype="<f8"), f"facts.{width}", schema.FACTS,
                          meta=True, added=version)  # fmt: skip
    monkeypatch.setattr(schema, "COLUMNS", (*schema.COLUMNS, entry))
    monkeypatch.setattr(schema, "VERSION", version)
    monkeypatch.setattr(schema, "READABLE_VERSIONS", (*schema.READABLE_VERSIONS, version))
    write_facts_shard(newer, {width: 0.25})
    with ShardReader(newer) as shard:
        assert shard.version == version and shard.dtype(width) == np.float64
        assert [sample.facts[width] for sample in shard.samples([0, 2])] == [0.25, 0.25]
    with h5py.File(newer, "r+") as handle:
        handle[width][1] = 0.5
    with pytest.raises(DamagedShardError, match="do not match their sha256"):
        ShardReader(newer)
    with ShardReader(older) as shard:
        assert shard.version == version - 1 and width not in shard.sample(0).facts


# ---------------------------------------------------------------- per-sample checksums


def reference_sum64(row: np.ndarray) -> int:
    """sum64 of one row spelled out: zero-pad to whole 8-byte words, add them as
    little-endian integers, modulo 2**64."""
    data = row.tobytes() + bytes(-row.nbytes % 8)
    return sum(int.from_bytes(data[i : i + 8], "little") for i in range(0, len(data), 8)) % 2**64


SUM_SHAPES = [(3, 256, 256), (4, 1, 33, 33, 3), (3, 2, 8, 8, 3), (2, 0, 8, 8, 3), (0, 256, 256),
              (5, 7), (6,)]  # fmt: skip


@pytest.mark.parametrize("shape", SUM_SHAPES)
def test_sum64_is_the_sum_of_little_endian_words(shape):
    rows = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    sums = schema.sum64(rows)
    assert sums.dtype == np.uint64 and sums.shape == shape[:1]
    assert [int(value) for value in sums] == [reference_sum64(row) for row in rows]


def test_sum64_wraps_around_and_reads_any_dtype():
    assert int(schema.sum64(np.full((1, 16), 255, np.uint8))[0]) == (2 * (2**64 - 1)) % 2**64
    boxes = np.random.default_rng(2).random((3, 2, 4), dtype=np.float32)
    assert [int(v) for v in schema.sum64(boxes)] == [reference_sum64(row) for row in boxes]


@pytest.mark.parametrize("shape", [(1, 33, 33, 3), (256, 256), (5,)])  # 3267 bytes: a tail
def test_sum64_sees_any_single_changed_byte(shape):
    """Every byte position of odd-sized rows (tail word included), and positions across a
    mel row, each changed by several masks: the sum always changes."""
    row = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8).reshape(-1)
    size = row.size
    if size <= 4096:
        positions = np.arange(size)
    else:
        spread = np.random.default_rng(4).integers(0, size, 500)
        positions = np.unique([0, 1, 7, 8, size // 2, size - 9, size - 8, size - 1, *spread])
    (original,) = schema.sum64(row[None])
    for mask in (0x01, 0x10, 0x80, 0xFF):
        damaged = np.tile(row, (len(positions), 1))
        damaged[np.arange(len(positions)), positions] ^= mask
        assert (schema.sum64(damaged.reshape(len(positions), *shape)) != original).all()


def test_sum64_does_not_see_swapped_words():
    """The documented limit: a sum guards against storage damage, not rearranged data."""
    row = np.arange(32, dtype=np.uint8)
    swapped = np.concatenate([row[8:16], row[:8], row[16:]])
    assert schema.sum64(row[None]) == schema.sum64(swapped[None])


# The checksummed datasets of a raw shard and their sums.
CHECKSUMS = {schema.MEL: schema.MEL_SUM, schema.FACES: schema.FACES_SUM}


def test_every_dataset_is_a_sample_field_or_a_checksum():
    datasets = schema.ShardLayout(FRAMES, SIZE).datasets()
    fields = [field for field in schema.Sample.__dataclass_fields__
              if schema.sample_value(make_sample(0), field) is not None]  # fmt: skip
    assert [dataset.name for dataset in datasets] == [*fields, *CHECKSUMS.values()]
    assert set(CHECKSUMS) <= set(fields)
    sums = [dataset for dataset in datasets if dataset.name in CHECKSUMS.values()]
    assert all((dataset.dtype, dataset.shape) == (np.dtype("<u8"), ()) for dataset in sums)


@pytest.mark.parametrize("frames,size", [(FRAMES, SIZE), (1, 33), (0, SIZE)])
def test_written_shards_carry_the_sums_of_their_rows(tmp_path, frames, size):
    write_cache(tmp_path, [WRITE_BLOCK + 5], frames=frames, size=size)
    with h5py.File(open_cache(tmp_path).shards[0].path, "r") as handle:
        for name, sums in CHECKSUMS.items():
            assert handle[sums].dtype == np.dtype("<u8")
            np.testing.assert_array_equal(handle[sums][:], schema.sum64(handle[name][:]))
            assert len(handle[sums]) == WRITE_BLOCK + 5


def flip_byte_in_row(path: Path, name: str, row: int, at: int | None = None) -> None:
    """Flip byte `at` (default: the middle) of sample `row` of a dataset, in the file: the
    chunk holding the row is found by its coordinate, so the flip lands in data."""
    with h5py.File(path, "r") as handle:
        dataset = handle[name]
        rows_per_chunk, row_bytes = dataset.chunks[0], dataset[0].nbytes
        first = row - row % rows_per_chunk
        info = dataset.id.get_chunk_info_by_coord((first,) + (0,) * (dataset.ndim - 1))
    offset = info.byte_offset + (row - first) * row_bytes + (row_bytes // 2 if at is None else at)
    with open(path, "r+b") as raw:
        raw.seek(offset)
        byte = raw.read(1)[0]
        raw.seek(offset)
        raw.write(bytes([byte ^ 0x10]))


def stream_until_damage(cache, fields: tuple[str, ...]) -> tuple[list[dict], str]:
    """Unshuffled batches of 8 (blocks of 4) until the loader raises: (yielded, message)."""
    plan = LoaderPlan(batch_size=8, block_size=4, shuffle=False)
    yielded = []
    with pytest.raises(DamagedShardError) as caught:
        for batch in ShardStream(cache.shards, fields, plan):
            yielded.append(batch)
    return yielded, str(caught.value)


def test_a_flipped_mel_byte_is_named_by_the_loader_before_its_batch_and_by_verify(tmp_path):
    written = write_cache(tmp_path, [WRITE_BLOCK, WRITE_BLOCK * 2])
    cache = open_cache(tmp_path)
    damaged = cache.shards[1].path
    flip_byte_in_row(damaged, schema.MEL, row=20)  # sample 36 overall: global batch 4
    with h5py.File(damaged, "r") as handle:  # unfiltered: HDF5 itself reads it silently
        assert (handle[schema.MEL][20] != written[36].mel).sum() == 1
    yielded, message = stream_until_damage(cache, (schema.MEL,))
    assert len(yielded) == 4, "every batch before the damaged one, never the damaged one"
    expected = (f"{damaged}: reading 'mel' failed, the shard is damaged (sample 20 "
                "('vidéo 36.mp4') of 32 fails its 'mel' checksum (mel_sum64)). Run "
                "`avcache-inspect CACHE verify`")  # fmt: skip
    assert message.startswith(expected), message
    assert "delete it and its receipt train-00001.json" in message
    assert "run the same avcache-preprocess command again" in message
    (problem,) = verify_cache(cache)
    assert problem.startswith(f"{damaged}: sha256 ")
    assert problem.endswith("; sample 20 ('vidéo 36.mp4') of 32 fails its 'mel' checksum "
                            "(mel_sum64)")  # fmt: skip
    faces_only = ShardStream(cache.shards, (schema.FACES,), LoaderPlan(batch_size=8))
    assert sum(len(batch[schema.FACES]) for batch in faces_only) == 48, "faces are intact"


def test_a_flipped_byte_in_the_padded_tail_of_odd_sized_faces_is_named(tmp_path):
    write_cache(tmp_path, [6, 7], frames=1, size=33)  # 3267 bytes a row: 3 in the tail word
    cache = open_cache(tmp_path)
    damaged = cache.shards[1].path
    flip_byte_in_row(damaged, schema.FACES, row=2, at=33 * 33 * 3 - 2)
    yielded, message = stream_until_damage(cache, (schema.MEL, schema.FACES))
    assert len(yielded) == 1  # batch 1 holds samples 6 to 9 of shard 1
    assert message.startswith(f"{damaged}: reading 'faces' failed, the shard is damaged (sample "
                              "2 ('vidéo 8.mp4') of 7 fails its 'faces' checksum")  # fmt: skip
    (problem,) = verify_cache(cache)
    assert problem.startswith(f"{damaged}: sha256 ")
    assert "sample 2 ('vidéo 8.mp4') of 7 fails its 'faces' checksum (faces_sum64)" in problem


def test_verify_lists_every_damaged_sample_of_each_dataset(tmp_path):
    write_cache(tmp_path, [40])
    cache = open_cache(tmp_path)
    path = cache.shards[0].path
    for row in (3, 17, 18, 19, 25, 30, 39):
        flip_byte_in_row(path, schema.MEL, row)
    flip_byte_in_row(path, schema.FACES, row=0)
    (problem,) = verify_cache(cache)
    assert "samples 3 ('vidéo 3.mp4'), 17 ('vidéo 17.mp4'), 18 ('vidéo 18.mp4'), 19 " in problem
    assert "25 ('vidéo 25.mp4') and 2 more of 40 fail their 'mel' checksum (mel_sum64)" in problem
    assert problem.endswith("; sample 0 ('vidéo 0.mp4') of 40 fails its 'faces' checksum "
                            "(faces_sum64)")  # fmt: skip


def test_every_read_of_a_damaged_row_raises_and_the_rest_still_read(tmp_path):
    written = write_cache(tmp_path, [20])
    cache = open_cache(tmp_path)
    flip_byte_in_row(cache.shards[0].path, schema.MEL, row=5)
    with ShardReader(cache.shards[0].path) as shard:
        np.testing.assert_array_equal(shard.read(schema.MEL, 0, 5)[4], written[4].mel)
        np.testing.assert_array_equal(shard.take(schema.MEL, [1, 6])[1], written[6].mel)
        np.testing.assert_array_equal(shard.read(schema.FACES, 5, 6)[0], written[5].faces)
        out = np.empty((4, 256, 256), np.uint8)
        for read in (lambda: shard.read(schema.MEL), lambda: shard.take(schema.MEL, [1, 5]),
                     lambda: shard.sample(5), lambda: shard.samples([5]),
                     lambda: shard.read_into(schema.MEL, 4, out)):  # fmt: skip
            with pytest.raises(DamagedShardError, match=r"sample 5 \('vidéo 5.mp4'\) of 20"):
                read()
    with pytest.raises(DamagedShardError, match=r"vidéo 5\.mp4"):
        cache.sample("vidéo 5.mp4")
    with pytest.raises(DamagedShardError):
        list(cache.iter_samples())


def test_a_shard_without_checksums_is_refused_with_the_fix(tmp_path):
    """A v1 shard written before the checksums: refused, never read unchecked."""
    write_cache(tmp_path, [3])
    cache = open_cache(tmp_path)
    with h5py.File(cache.shards[0].path, "a") as handle:
        for name in CHECKSUMS.values():
            del handle[name]
    expected = (f"{cache.shards[0].path}: 'mel_sum64' is missing: the shard was written "
                "by an older avcache without checksums")  # fmt: skip
    stream = ShardStream(cache.shards, (schema.MEL,), LoaderPlan(batch_size=4))
    for read in (lambda: ShardReader(cache.shards[0].path), lambda: cache.sample("vidéo 1.mp4"),
                 lambda: list(stream)):  # fmt: skip
        with pytest.raises(CacheFormatError) as caught:
            read()
        assert str(caught.value).startswith(expected)
        assert "shards it cannot read are written again" in str(caught.value)


@pytest.mark.parametrize("field,offset", [(schema.LABEL, 2), (schema.VIDEO_NAME, 0),
                                          (schema.DURATION, 1)])  # fmt: skip
def test_damaged_metadata_refuses_the_shard_at_open(tmp_path, field, offset):
    """A label flipped from real to fake would be trained on unseen: the names, labels,
    flags, boxes and durations are checked against a sha256 whenever a shard opens."""
    write_cache(tmp_path, [5])
    path = open_cache(tmp_path).shards[0].path
    with h5py.File(path, "a") as handle:
        column = handle[field].asstr()[()] if field == schema.VIDEO_NAME else handle[field][()]
        if field == schema.VIDEO_NAME:
            column[offset] = column[offset].replace("vidéo", "video")
        elif field == schema.LABEL:
            column[offset] = 1 - column[offset]
        else:
            column[offset] += 1.0
        handle[field][...] = column
    with pytest.raises(DamagedShardError, match="do not match their sha256") as caught:
        ShardReader(path)
    assert str(path) in str(caught.value)
    with pytest.raises(DamagedShardError, match="do not match their sha256"):
        open_cache(tmp_path)  # every open of a cache opens its shards
    assert verify_cache(open_cache(tmp_path, check_shards=False)), "verify names it too"


@pytest.mark.parametrize("workers", [0, 1])
def test_training_on_a_damaged_shard_stops_before_any_step(tmp_path, capsys, workers):
    """Every mel row of the only training shard has one flipped byte, in a cache written
    without HDF5 checksums: the run exits 2 naming the shard, with no optimiser step taken
    and no checkpoint written; from a DataLoader worker too, with the same first line."""
    cache, run = tmp_path / "cache", tmp_path / "run"
    write_toy_cache(cache, {"train": 12, "val": 8})
    damaged = cache / "shards" / "train-00000.h5"
    for row in range(12):
        flip_byte_in_row(damaged, schema.MEL, row)
    steps = []
    hook = register_optimizer_step_pre_hook(lambda *args: steps.append(1))
    try:
        args = ["--cache", str(cache), "--out", str(run),
                *small_config(**{"model.kind": "audio", "run.epochs": 1,
                                 "data.workers": workers})]  # fmt: skip
        assert train_main(args) == 2
    finally:
        hook.remove()
    error = capsys.readouterr().err
    assert (f"avcache-train: error: {damaged}: reading 'mel' failed, the shard is damaged "
            "(samples ") in error  # fmt: skip
    assert "Traceback" not in error
    assert "fail their 'mel' checksum" in error and "train-00000.json" in error
    assert steps == []
    assert not (run / LAST).exists() and not (run / BEST).exists()
