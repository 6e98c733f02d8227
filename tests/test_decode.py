"""`data.decode`: JPEG faces read and checked by the workers, decoded as a batch on the training
device. torchvision's decoder runs here on the CPU; the same call on CUDA is in test_cuda.py."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from avcache.cache import schema
from avcache.cache.codec import round_trip, round_trip_grey
from avcache.cache.reader import DamagedShardError, open_cache
from avcache.train.batches import JPEG_BYTES, JPEG_ENDS
from avcache.train.decode import decode_faces, decode_on_device
from avcache.train.engine import LAST
from avcache.train.loader import LoaderPlan, ShardStream
from avcache.train.predict import main as predict_main
from avcache.train.run import main as train_main
from tests.test_codec import COUNT, FRAMES, SIZE, flip_in_sample, forge_first_crop, write
from tests.test_mistakes import one_line_error
from tests.toy import small_config, write_toy_cache

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def streams(cache, plan: LoaderPlan) -> tuple[ShardStream, ShardStream]:
    fields = (schema.FACES, schema.VIDEO_NAME)
    return ShardStream(cache.shards, fields, plan), ShardStream(cache.shards, fields, plan,
                                                                jpeg_faces=True)  # fmt: skip


def test_device_decoding_gives_the_workers_batches(tmp_path):
    """Blocks that split shards and batches; the bytes cross as one flat tensor."""
    write(tmp_path, ["jpeg", "jpeg"])
    cache = open_cache(tmp_path)
    decoded_by_workers, left_encoded = streams(cache, LoaderPlan(batch_size=10, block_size=3))
    batches = 0
    for expected, encoded in zip(decoded_by_workers, left_encoded, strict=True):
        assert schema.FACES not in encoded
        data, ends = encoded[JPEG_BYTES], encoded[JPEG_ENDS]
        assert data.dtype == torch.uint8 and data.dim() == 1
        assert ends.shape == (len(encoded[schema.LABEL]), FRAMES) and ends[-1, -1] == len(data)
        # the bytes, not the pixels, leave the worker: several times fewer of them
        assert expected[schema.FACES].numel() > 3 * data.numel()
        got = decode_faces(encoded, CPU)
        assert got[schema.VIDEO_NAME] == expected[schema.VIDEO_NAME]
        torch.testing.assert_close(got[schema.FACES], expected[schema.FACES], rtol=0, atol=0)
        batches += 1
    assert batches == -(-2 * COUNT // 10)


def test_a_damaged_sample_stops_the_worker_before_its_batch(tmp_path):
    write(tmp_path, ["jpeg"])
    flip_in_sample(tmp_path / "shards/train-00000.h5", 9)
    _, encoded = streams(open_cache(tmp_path), LoaderPlan(batch_size=4, shuffle=False))
    batches = iter(encoded)
    next(batches), next(batches)  # samples 0-7
    with pytest.raises(DamagedShardError, match=r"train-00000.h5.*sample 9 .*faces_xxh3"):
        next(batches)


def test_a_forged_crop_of_another_size_is_refused_by_the_worker(tmp_path):
    """Its checksum matches; its header says 16x16 where 48x48 is stored."""
    import simplejpeg

    write(tmp_path, ["jpeg"])
    small = simplejpeg.encode_jpeg(np.zeros((16, 16, 3), np.uint8), 90, "RGB")
    forge_first_crop(tmp_path / "shards/train-00000.h5", small)
    _, encoded = streams(open_cache(tmp_path), LoaderPlan(batch_size=4, shuffle=False))
    with pytest.raises(DamagedShardError, match=r"train-00000.h5.*a 16x16 crop where 48x48"):
        next(iter(encoded))


def test_a_forged_crop_that_does_not_decode_names_where_it_was_read(tmp_path):
    """A truncated crop with a whole header passes the worker's checks; the device's decoder
    refuses it and the error names the shard and samples of the batch."""
    write(tmp_path, ["jpeg"])
    path = tmp_path / "shards/train-00000.h5"
    with open_cache(tmp_path).shards[0].open() as shard:
        data, ends = shard.read_jpeg(0, 1)
    crop = data[: int(ends[0, 0])].tobytes()
    forge_first_crop(path, crop[: crop.index(b"\xff\xda") + 40])  # the scan cut short
    _, encoded = streams(open_cache(tmp_path), LoaderPlan(batch_size=4, shuffle=False))
    batch = next(iter(encoded))
    with pytest.raises(DamagedShardError, match=r"train-00000.h5 samples 0-3 do not decode on cpu"):
        decode_faces(batch, CPU)


def test_sound_crops_the_device_cannot_decode_blame_the_decoder_not_the_shard(
    tmp_path, monkeypatch
):
    """A decoder failure on crops the CPU decodes (no nvJPEG, a driver error) is no damage."""
    from avcache.train import decode

    def no_decoder(crops, device):
        raise RuntimeError("decode_jpegs_cuda: torchvision not compiled with nvJPEG support")

    write(tmp_path, ["jpeg"])
    _, encoded = streams(open_cache(tmp_path), LoaderPlan(batch_size=4, shuffle=False))
    monkeypatch.setattr(decode, "_decode_batch", no_decoder)
    with pytest.raises(ValueError, match=r"decode on the CPU \(decode_jpegs_cuda: .*\); train "
                       r"with data\.decode=cpu") as raised:  # fmt: skip
        decode_faces(next(iter(encoded)), CPU)
    assert not isinstance(raised.value, DamagedShardError)


def test_raw_faces_and_mel_batches_pass_through(tmp_path):
    write(tmp_path, ["raw"])
    stream = ShardStream(open_cache(tmp_path).shards, (schema.FACES,), LoaderPlan(batch_size=8))
    batch = next(iter(stream))
    assert decode_faces(batch, CPU) is batch
    assert batch[schema.FACES].shape == (8, FRAMES, SIZE, SIZE, 3)


@pytest.mark.parametrize(
    ("choice", "device", "codecs", "decodes_here"),
    [
        ("cpu", CUDA, {"jpeg"}, False),
        ("auto", CUDA, {"jpeg"}, True),
        ("auto", CUDA, {"jpeg", "raw"}, False),  # mixed shards: every batch decoded alike
        ("auto", CPU, {"jpeg"}, False),
        ("auto", CUDA, set(), False),  # a model without faces
        ("cuda", CUDA, {"jpeg"}, True),
    ],
)
def test_where_faces_are_decoded(choice, device, codecs, decodes_here):
    assert decode_on_device(choice, device, codecs) is decodes_here


def test_decode_cuda_where_it_cannot_work_is_refused():
    with pytest.raises(ValueError, match=r"training runs on cpu: use data\.decode=cpu or auto"):
        decode_on_device("cuda", CPU, {"jpeg"})
    with pytest.raises(ValueError, match=r"store them raw.*faces\.codec=jpeg"):
        decode_on_device("cuda", CUDA, {"raw", "jpeg"})


def test_the_trainer_refuses_decode_cuda_on_a_cpu_before_writing_a_run(tmp_path, capsys):
    write_toy_cache(tmp_path / "cache", {"train": 8, "val": 4}, codec="jpeg")
    run = tmp_path / "run"
    assert train_main(["--cache", str(tmp_path / "cache"), "--out", str(run), "model.kind=av",
                       "data.decode=cuda", "run.device=cpu"]) == 2  # fmt: skip
    error = one_line_error(capsys, "avcache-train")
    assert "data.decode=cuda decodes faces on the training GPU, but training runs on cpu" in error
    assert not run.exists()


def test_the_trainers_device_path_trains_as_the_workers_path(tmp_path, monkeypatch):
    """The trainer with faces left encoded by the workers and decoded where it runs (here by
    torchvision on the CPU, bit-exact with simplejpeg): the same weights as decoding in the
    workers. On CUDA the same path runs with nvJPEG (test_cuda.py)."""
    from avcache.train import engine, loading

    write_toy_cache(tmp_path / "cache", {"train": 24, "val": 8}, codec="jpeg")
    args = ["--cache", str(tmp_path / "cache"), *small_config(**{"model.kind": "av"})]
    assert train_main([*args, "--out", str(tmp_path / "workers")]) == 0
    decoded = []

    def decode_counted(batch, device):
        decoded.append(JPEG_BYTES in batch)
        return decode_faces(batch, device)

    monkeypatch.setattr(loading, "decode_on_device", lambda choice, device, codecs: True)
    monkeypatch.setattr(engine, "decode_faces", decode_counted)
    assert train_main([*args, "--out", str(tmp_path / "device")]) == 0
    assert decoded and all(decoded)
    a = torch.load(tmp_path / "workers" / LAST, weights_only=True)["model"]
    b = torch.load(tmp_path / "device" / LAST, weights_only=True)["model"]
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def raw_sample(rng: np.random.Generator) -> schema.Sample:
    """A raw video's sample as the preprocessor gives it: smooth faces, mouths, audio."""
    x = np.mgrid[0:48, 0:48][1]
    faces = np.stack([np.stack([(120 + 50 * np.sin(x / 7 + c + k)).astype(np.uint8)
                                for c in range(3)], -1) for k in range(3)])  # fmt: skip
    faces = np.clip(faces + rng.integers(0, 8, faces.shape), 0, 255).astype(np.uint8)
    lips = np.clip(100 + 40 * np.sin(x[None, None, :32, :32] / 5 + np.arange(5)[None, :, None,
                   None]), 0, 255).astype(np.uint8)  # fmt: skip
    tracks = schema.Tracks(lips, np.ones((1, 5), bool), np.zeros(1), np.full(1, 5, np.int16),
                           rng.integers(-3000, 3000, (1, 3200)).astype(np.int16),
                           np.ones(1, np.float32))  # fmt: skip
    mel = rng.integers(0, 256, (schema.MEL_SIZE, schema.MEL_SIZE)).astype(np.uint8)
    return schema.Sample("clip.mp4", -1, mel, faces, True, np.ones(3, bool),
                         np.zeros((3, 4), np.float32), 1.0, tracks)  # fmt: skip


@pytest.mark.parametrize("faces_on_device", [False, True])
def test_a_raw_videos_batch_gives_what_its_cached_twin_gives(faces_on_device):
    """avcache-predict --video batches a raw video as the loader batches its cached twin: the
    model's fields alone, the faces through the cache's JPEG and decoded where the run decodes
    them (in the workers, or left coded for the device: torchvision here, on the CPU), the
    mouths through the cache's grey JPEG; the cache's round trip either way."""
    from avcache.preprocess.config import PreprocessConfig
    from avcache.train.batches import raw_batch

    sample, config = raw_sample(np.random.default_rng(0)), PreprocessConfig()
    config.faces.codec, config.faces.quality, config.tracks.quality = "jpeg", 90, 80
    fields = (schema.MEL, schema.FACES, schema.LIPS, schema.TRACK_AUDIO)
    batch = raw_batch(sample, fields, config, jpeg_faces=faces_on_device)
    assert (JPEG_BYTES in batch, schema.FACES in batch) == (faces_on_device, not faces_on_device)
    batch = decode_faces(batch, CPU)
    assert sorted(batch) == sorted((*fields, schema.LABEL))
    expected = {schema.MEL: sample.mel, schema.FACES: round_trip(sample.faces, 90),
                schema.LIPS: round_trip_grey(sample.tracks.lips, 80),
                schema.TRACK_AUDIO: sample.tracks.audio}  # fmt: skip
    assert not np.array_equal(expected[schema.FACES], sample.faces)  # the codec did something
    for field, values in expected.items():
        assert torch.equal(batch[field], torch.from_numpy(values)[None]), field
    mel_only = raw_batch(sample, (schema.MEL,), config, faces_on_device)
    assert sorted(mel_only) == sorted((schema.MEL, schema.LABEL))


def test_a_run_trained_on_gpu_decoded_faces_is_scored_on_a_cpu_with_a_warning(tmp_path, caplog):
    write_toy_cache(tmp_path / "cache", {"train": 16, "val": 8, "test": 4}, codec="jpeg")
    run = tmp_path / "run"
    args = ["--cache", str(tmp_path / "cache"), "--out", str(run)]
    assert train_main([*args, *small_config(**{"model.kind": "av", "run.epochs": 1})]) == 0
    config = run / "config.yaml"  # as a GPU run records it
    config.write_text(config.read_text().replace("decode: cpu", "decode: cuda"))
    listing = tmp_path / "list.csv"
    listing.write_text("video_name,target\n" + "".join(f"test{i:03d}.mp4,\n" for i in range(4)))
    with caplog.at_level(logging.WARNING):
        assert predict_main(["--run", str(run), "--list", str(listing)]) == 0
    assert "decoded its faces with nvJPEG (data.decode=cuda)" in caplog.text
    assert len((run / "submission.csv").read_text().splitlines()) == 5
