"""Writer -> reader round trips, format refusal, verify."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from cache import schema
from cache.index import ShardRecord, build_index, write_json_atomic
from cache.reader import CacheFormatError, ShardReader, open_cache
from cache.verify import verify_cache
from cache.writer import WRITE_BLOCK, ShardWriter, sha256_of

FRAMES, SIZE = 2, 8


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


def write_cache(root, counts: list[int], frames: int = FRAMES) -> list[schema.Sample]:
    samples, records, offset = [], [], 0
    (root / "shards").mkdir(parents=True)
    for number, count in enumerate(counts):
        shard_samples = [make_sample(offset + j, frames) for j in range(count)]
        offset += count
        rel = f"shards/train-{number:05d}.h5"
        with ShardWriter(root / rel, split="train", frames=frames, face_size=SIZE) as writer:
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


def test_identical_writes_give_identical_bytes(tmp_path):
    write_cache(tmp_path / "a", [20])
    write_cache(tmp_path / "b", [20])
    a, b = (open_cache(tmp_path / name).shards[0].path for name in "ab")
    assert sha256_of(a) == sha256_of(b)


@pytest.mark.parametrize("key,value", [("format", "webdataset"), ("version", 2)])
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
    with pytest.raises(RuntimeError), ShardWriter(path, split="x", frames=1, face_size=4) as w:
        w.append(make_sample(0, frames=1, size=4))
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
