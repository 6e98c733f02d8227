"""Cache format v2: JPEG-coded faces, read in contiguous blocks, checked, decoded on the CPU;
v1 caches still read; damaged or forged encoded samples refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import simplejpeg

from avcache.cache import schema
from avcache.cache.codec import round_trip, xxh3
from avcache.cache.index import ShardRecord, build_index
from avcache.cache.reader import DamagedShardError, ShardReader, open_cache
from avcache.cache.verify import verify_cache
from avcache.cache.writer import ShardWriter
from avcache.common.atomic import write_json_atomic
from avcache.train.loader import LoaderPlan, ShardStream
from tests.test_cache import make_sample

FRAMES, SIZE, COUNT = 3, 48, 37  # 37: blocks that do not divide the shard


def face_like(number: int) -> np.ndarray:
    """Smooth crops with some texture, as faces are (JPEG's case), different per sample."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    rng = np.random.default_rng(number)
    crops = []
    for k in range(FRAMES):
        phase = rng.uniform(0, 6)
        channels = [128 + 80 * np.sin(x / (7 + c) + y / 11 + phase + k) for c in range(3)]
        image = np.stack(channels, -1) + rng.normal(0, 1, (SIZE, SIZE, 3))
        crops.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(crops)


def sample(number: int):
    item = make_sample(number, frames=2, size=SIZE)
    item.faces = face_like(number)
    item.face_found, item.face_box = np.ones(FRAMES, bool), np.zeros((FRAMES, 4), np.float32)
    return item


def write(root: Path, codecs: list[str]) -> list:
    """A cache with one shard per codec, every shard of COUNT samples."""
    (root / "shards").mkdir(parents=True)
    records, samples = [], []
    for number, codec in enumerate(codecs):
        rel = f"shards/train-{number:05d}.h5"
        with ShardWriter(
            root / rel,
            schema.ShardLayout(frames=FRAMES, face_size=SIZE, codec=codec),
            split="train",
        ) as writer:
            for i in range(COUNT):
                samples.append(sample(number * COUNT + i))
                writer.append(samples[-1])
            records.append(ShardRecord(rel, "train", *writer.close()))
    config = {"splits": {"train": {}}, "faces": {"frames": FRAMES, "size": SIZE}}
    write_json_atomic(root / schema.INDEX_FILE, build_index(config, "v2", records))
    return samples


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / error)


def test_jpeg_faces_round_trip_in_blocks_and_one_by_one(tmp_path):
    written = write(tmp_path, ["jpeg"])
    cache = open_cache(tmp_path)
    with cache.shards[0].open() as shard:
        assert shard.codec == "jpeg" and schema.FACES not in shard._datasets
        everything = shard.read(schema.FACES)
        for start in range(0, COUNT, 5):  # blocks straight into a batch, as the loader reads
            out = np.empty((min(5, COUNT - start), FRAMES, SIZE, SIZE, 3), np.uint8)
            shard.read_into(schema.FACES, start, out)
            np.testing.assert_array_equal(out, everything[start : start + len(out)])
        np.testing.assert_array_equal(shard.take(schema.FACES, [2, 30]), everything[[2, 30]])
    for original, decoded in zip(written, everything, strict=True):
        assert psnr(original.faces, decoded) > 35  # quality 90
        np.testing.assert_array_equal(decoded, round_trip(original.faces, 90))
    read = list(cache.iter_samples())
    np.testing.assert_array_equal(np.stack([s.faces for s in read]), everything)
    assert verify_cache(cache) == []


def test_the_encoded_crops_are_one_flat_region_cut_by_their_ends(tmp_path):
    """FFCV's layout: a block of samples is one contiguous byte range, no HDF5 vlen objects."""
    write(tmp_path, ["jpeg"])
    with h5py.File(tmp_path / "shards/train-00000.h5", "r") as handle:
        data, ends = handle[schema.FACES_JPEG], handle[schema.FACES_ENDS][()]
        assert (
            data.dtype == np.uint8 and data.ndim == 1 and h5py.check_vlen_dtype(data.dtype) is None
        )
        assert ends.shape == (COUNT, FRAMES) and ends[-1, -1] == data.shape[0]
        assert np.all(np.diff(ends.reshape(-1).astype(np.int64)) > 0)
        crop = data[int(ends[4, 0]) : int(ends[4, 1])].tobytes()
        assert simplejpeg.decode_jpeg_header(crop)[:2] == (SIZE, SIZE)
        assert (
            handle.attrs[schema.ATTR_VERSION] == schema.VERSION
            and handle.attrs[schema.ATTR_FACES_CODEC] == "jpeg"
        )


def test_jpeg_is_several_times_smaller_than_raw(tmp_path):
    """On these smooth synthetic crops; real face crops are measured in faces_bench.py."""
    write(tmp_path / "raw", ["raw"])
    write(tmp_path / "jpeg", ["jpeg"])
    with h5py.File(tmp_path / "jpeg/shards/train-00000.h5", "r") as handle:
        encoded = handle[schema.FACES_JPEG].shape[0]
    with open_cache(tmp_path / "raw").shards[0].open() as shard:
        raw = shard.storage_bytes(schema.FACES)
    assert raw == COUNT * FRAMES * SIZE * SIZE * 3
    assert raw > 4 * encoded, (raw, encoded)


def test_a_v1_cache_still_reads(tmp_path):
    """A cache written before v2: version 1 everywhere, no codec attribute."""
    written = write(tmp_path, ["raw"])
    shard = tmp_path / "shards/train-00000.h5"
    with h5py.File(shard, "a") as handle:
        handle.attrs[schema.ATTR_VERSION] = 1
        del handle.attrs[schema.ATTR_FACES_CODEC]
    index = json.loads((tmp_path / schema.INDEX_FILE).read_text())
    index["version"] = 1
    index["shards"][0]["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    (tmp_path / schema.INDEX_FILE).write_text(json.dumps(index))
    cache = open_cache(tmp_path)
    for original, read in zip(written, cache.iter_samples(), strict=True):
        np.testing.assert_array_equal(original.faces, read.faces)
    assert verify_cache(cache) == []


def test_a_v1_shard_claiming_jpeg_is_refused(tmp_path):
    write(tmp_path, ["jpeg"])
    shard = tmp_path / "shards/train-00000.h5"
    with h5py.File(shard, "a") as handle:
        handle.attrs[schema.ATTR_VERSION] = 1
    with pytest.raises(Exception, match="faces codec 'jpeg' is not one this avcache reads"):
        ShardReader(shard)


def test_raw_and_jpeg_shards_mix_in_one_batch(tmp_path):
    """Mixed shards (v1/raw beside v2/jpeg) are handled: each is read by its own codec."""
    written = write(tmp_path, ["raw", "jpeg"])
    cache = open_cache(tmp_path)
    plan = LoaderPlan(batch_size=16, block_size=4, shuffle=True, seed=3)
    stream = ShardStream(cache.shards, (schema.FACES, schema.VIDEO_NAME), plan)
    by_name = {item.video_name: item for item in written}
    seen = 0
    for batch in stream:
        for name, faces in zip(batch[schema.VIDEO_NAME], batch[schema.FACES].numpy(), strict=True):
            original = by_name[name].faces
            number = int(name.split()[1].split(".")[0])
            expected = original if number < COUNT else round_trip(original, 90)
            np.testing.assert_array_equal(faces, expected)
            seen += 1
    assert seen == 2 * COUNT


def flip_in_sample(path: Path, position: int) -> None:
    with h5py.File(path, "a") as handle:
        ends = handle[schema.FACES_ENDS][()]
        at = int(ends[position, 0]) + 40  # inside the first crop's entropy-coded data
        handle[schema.FACES_JPEG][at] ^= 0x10


def test_a_damaged_encoded_sample_is_named_by_reads_verify_and_the_loader(tmp_path):
    write(tmp_path, ["jpeg"])
    path = tmp_path / "shards/train-00000.h5"
    flip_in_sample(path, 9)
    cache = open_cache(tmp_path)
    with cache.shards[0].open() as shard:
        with pytest.raises(DamagedShardError, match=r"sample 9 \('vidéo 9.mp4'\) of 37 fails its "
                           r"'faces' checksum \(faces_xxh3\)"):  # fmt: skip
            shard.read(schema.FACES, 8, 12)
        shard.read(schema.FACES, 0, 9)  # the samples before it still read
        assert shard.mismatches(schema.FACES, 0, COUNT).tolist() == [9]
    problems = verify_cache(cache)
    assert len(problems) == 1 and "sample 9" in problems[0] and "faces_xxh3" in problems[0]
    stream = ShardStream(cache.shards, (schema.FACES,), LoaderPlan(batch_size=4, shuffle=False))
    batches = iter(stream)
    next(batches), next(batches)  # samples 0-7
    with pytest.raises(DamagedShardError, match="sample 9"):
        next(batches)


def forge_first_crop(path: Path, crop: bytes) -> None:
    """Replace sample 0's first crop by `crop` and rewrite the ends and xxh3 to match, as a
    forger would (the damage no checksum sees)."""
    with h5py.File(path, "a") as handle:
        data = handle[schema.FACES_JPEG][()].tobytes()
        ends = handle[schema.FACES_ENDS][()].astype(np.int64)
        new = crop + data[ends[0, 0] :]
        shift = len(crop) - int(ends[0, 0])
        del handle[schema.FACES_JPEG]
        handle.create_dataset(schema.FACES_JPEG, data=np.frombuffer(new, np.uint8),
                              chunks=True, maxshape=(None,))  # fmt: skip
        handle[schema.FACES_ENDS][...] = (ends + shift).astype(np.uint64)
        sums = handle[schema.FACES_XXH3][()]
        sums[0] = xxh3(np.frombuffer(new, np.uint8)[: ends[0, -1] + shift])
        handle[schema.FACES_XXH3][...] = sums


def test_a_forged_jpeg_with_matching_checksums_is_refused_not_decoded_wrong(tmp_path):
    """A crop of another size whose xxh3 was rewritten to match: it would not fill S x S."""
    write(tmp_path, ["jpeg"])
    path = tmp_path / "shards/train-00000.h5"
    forge_first_crop(path, simplejpeg.encode_jpeg(np.zeros((16, 16, 3), np.uint8), 90, "RGB"))
    with ShardReader(path) as shard, pytest.raises(DamagedShardError, match="a 16x16 crop"):
        shard.read(schema.FACES, 0, 1)


def test_inspect_summarises_verifies_and_draws_a_jpeg_cache(tmp_path, capsys):
    from avcache.inspection.cli import main as inspect_main

    write(tmp_path / "cache", ["jpeg", "raw"])
    root = tmp_path / "cache"
    assert inspect_main([str(root)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("train"))
    assert f"{2 * COUNT}" in row
    assert inspect_main([str(root), "verify"]) == 0
    assert "verified 2 shards: 0 damaged" in capsys.readouterr().out
    sheet = tmp_path / "sheet.png"
    assert inspect_main([str(root), "sheet", "-n", "4", "--seed", "1", "-o", str(sheet)]) == 0
    assert sheet.stat().st_size > 10_000
    assert inspect_main([str(root), "gallery", "-o", str(tmp_path / "gallery")]) == 0
    assert len(list((tmp_path / "gallery" / "thumbs").iterdir())) == 2 * COUNT
