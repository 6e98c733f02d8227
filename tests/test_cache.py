"""Writer -> reader round trips, format refusal, verify."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from cache import schema
from cache.index import ShardRecord, build_index, write_json_atomic
from cache.reader import CacheFormatError, ShardReader, open_cache
from cache.verify import verify_cache
from cache.writer import WRITE_BLOCK, ShardWriter, sha256_of
from train.loader import LoaderPlan, ShardStream

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


def write_cache(root, counts: list[int], frames: int = FRAMES,
                fletcher32: bool = False) -> list[schema.Sample]:  # fmt: skip
    samples, records, offset = [], [], 0
    (root / "shards").mkdir(parents=True)
    for number, count in enumerate(counts):
        shard_samples = [make_sample(offset + j, frames) for j in range(count)]
        offset += count
        rel = f"shards/train-{number:05d}.h5"
        with ShardWriter(root / rel, split="train", frames=frames, face_size=SIZE,
                         fletcher32=fletcher32) as writer:  # fmt: skip
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
    assert "inspect CACHE verify" in message and "train-00001.json" in message
    # In order: the first shard and the damaged shard's first chunk, never the damaged chunk.
    assert len(yielded) == (WRITE_BLOCK + WRITE_BLOCK) // 8


def test_a_full_disk_names_the_shard_and_leaves_nothing(tmp_path):
    """RLIMIT_FSIZE makes a write past 256 KiB fail with EFBIG, as a full disk fails with
    ENOSPC: the writer raises an OSError naming the shard and removes its partial file."""
    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
import numpy as np
from cache.schema import Sample
from cache.writer import ShardWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
path = Path({str(tmp_path / "s.h5")!r})
sample = Sample("v.mp4", 1, np.ones((256, 256), np.uint8), np.ones((1, 4, 4, 3), np.uint8),
                True, np.ones(1, bool), np.zeros((1, 4), np.float32), 1.0)
try:
    with ShardWriter(path, split="x", frames=1, face_size=4) as writer:
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
