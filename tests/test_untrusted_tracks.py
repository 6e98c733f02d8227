"""Caches whose tracks or text an attacker, another tool or an unlucky merge wrote, built
with the real ShardWriter (and h5py where a forger would rewrite bytes): every command
refuses them in one line naming the file (exit 2), and what is drawn is all that is decoded.

Memory is measured as the peak RSS of the real command in a fresh interpreter, against
what decoding every window of the samples it reads would take.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from avcache.cache import open_cache, schema
from avcache.cache.index import ShardRecord, build_index
from avcache.cache.reader import BLOCK_BYTES, ShardReader
from avcache.cache.writer import ShardWriter
from avcache.common.atomic import write_json_atomic
from avcache.common.config import ConfigError, load_config
from avcache.inspection.cli import main as inspect_main
from avcache.train.config import (
    MAX_BATCH_TRACK_BYTES,
    MIN_SPEECH_SAMPLES,
    TrainConfig,
    check_batch_fits,
)
from avcache.train.models import SpeechTrunk
from avcache.train.predict import main as predict_main
from avcache.train.run import main as train_main
from tests.toy import REPO, index_config, small_config, write_toy_cache

FRAMES, SIZE = 2, 32  # faces
DURATION = 2.0  # seconds, every sample
TOY = schema.TrackLayout(1, 16, 32, 25.0, 16000, 10240)  # what tests/toy.py writes
MIB = 2**20


def layout(windows: int, frames: int, size: int, fps: float, rate: int) -> schema.TrackLayout:
    """A layout as the preprocessor makes it (its audio: the frames' time at the rate)."""
    return schema.TrackLayout(windows, frames, size, fps, rate,
                              schema.window_audio_samples(frames, fps, rate))  # fmt: skip


def tracks_of(shape: schema.TrackLayout, number: int) -> schema.Tracks:
    """Flat grey mouths (a few hundred bytes of JPEG each), silence, windows from 0 s."""
    windows = shape.windows
    return schema.Tracks(
        lips=np.full((windows, shape.frames, shape.size, shape.size), number % 250, np.uint8),
        lips_found=np.ones((windows, shape.frames), bool),
        start=np.zeros(windows),
        frames_real=np.full(windows, shape.frames, np.int16),
        audio=np.zeros((windows, shape.audio_samples), np.int16),
        audio_real=np.ones(windows, np.float32),
    )


def write_shard(path: Path, split: str, count: int, shape: schema.TrackLayout | None,
                first: int = 0, frames: int = FRAMES, **options) -> ShardRecord:  # fmt: skip
    """`count` samples of `split` with tracks of `shape` (None: none), named from `first`."""
    rng = np.random.default_rng(first)
    path.parent.mkdir(parents=True, exist_ok=True)
    with ShardWriter(
        path,
        schema.ShardLayout(frames=frames, face_size=SIZE, tracks=shape, **options),
        split=split,
    ) as writer:
        for number in range(first, first + count):
            sample = schema.Sample(f"{split}{number:03d}.mp4", number % 2,
                                   rng.integers(0, 255, (256, 256), np.uint8),
                                   np.full((frames, SIZE, SIZE, 3), 90, np.uint8), True,
                                   np.ones(frames, bool), np.zeros((frames, 4), np.float32),
                                   np.float32(DURATION))  # fmt: skip
            sample.tracks = tracks_of(shape, number) if shape else None
            sample.fake_kind = "audio+video" if options.get("fake_kinds") else None
            writer.append(sample)
        return ShardRecord(path.name, split, *writer.close())


def write_cache(root: Path, shards: list[tuple[str, int, schema.TrackLayout | None]],
                config: schema.TrackLayout | str | None = "first",
                frames: int = FRAMES) -> Path:  # fmt: skip
    """A cache of `shards` (split, samples, layout), its index made as the preprocessor
    makes it; `config`: the tracks its config says ("first": the first shard's, "none": an
    index made before tracks existed, which says nothing of them)."""
    records, first = [], 0
    for number, (split, count, shape) in enumerate(shards):
        record = write_shard(root / "shards" / f"{split}-{number:05d}.h5", split, count, shape,
                             first, frames)  # fmt: skip
        records.append(ShardRecord(f"shards/{record.path}", split, record.num_samples,
                                   record.sha256))  # fmt: skip
        first += count
    values = index_config(frames=frames, size=SIZE)
    said = shards[0][2] if config == "first" else config
    if said == "none":
        del values["tracks"]
    elif said is not None:
        values["tracks"].update(windows=said.windows, frames=said.frames, size=said.size,
                                fps=said.fps, audio_rate=said.audio_rate)  # fmt: skip
    write_json_atomic(root / schema.INDEX_FILE, build_index(values, "tracks", records))
    return root


def resign(root: Path) -> None:
    """Give the index every shard's present sha256, as a forger would."""
    index = json.loads((root / schema.INDEX_FILE).read_text())
    for row in index["shards"]:
        row["sha256"] = hashlib.sha256((root / row["path"]).read_bytes()).hexdigest()
    (root / schema.INDEX_FILE).write_text(json.dumps(index))


def one_line(capsys, prefix: str) -> str:
    error = capsys.readouterr().err
    assert error.startswith(f"{prefix}: error: ") and error.count("\n") == 1, error
    assert "Traceback" not in error
    return error


def refused_by_inspect(root: Path, capsys, *command: str) -> str:
    assert inspect_main([str(root), *command]) == 2
    return one_line(capsys, "avcache-inspect")


def refused_by_train(root: Path, tmp_path: Path, capsys, *overrides: str) -> str:
    out = tmp_path / "refused-run"
    args = ["--cache", str(root), "--out", str(out), *small_config(**{"model.kind": "sync"})]
    assert train_main([*args, *overrides]) == 2
    assert not out.exists(), "refused after the run folder was made"
    return one_line(capsys, "avcache-train")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A trained run (mel only, one epoch): predict is then pointed at other caches."""
    root = tmp_path_factory.mktemp("run")
    write_toy_cache(root / "cache", {"train": 8, "val": 4})
    assert train_main(["--cache", str(root / "cache"), "--out", str(root / "run"),
                       *small_config(**{"model.kind": "audio", "run.epochs": 1})]) == 0  # fmt: skip
    return root / "run"


def refused_by_predict(run: Path, root: Path, tmp_path: Path, capsys) -> str:
    listing = tmp_path / "list.csv"
    listing.write_text("video_name,target\ntrain000.mp4,\n")
    capsys.readouterr()
    assert predict_main(["--run", str(run), "--list", str(listing), "--cache", str(root)]) == 2
    return one_line(capsys, "avcache-predict")


# ---------------------------------------------------------------- what is drawn is decoded

# Runs avcache-inspect in a fresh interpreter and reports its exit status and peak RSS: the
# VmHWM of its own memory map. (getrusage's ru_maxrss would not do: Linux carries the high
# water mark of the process that forked it across exec, here pytest's.)
MEASURED_INSPECT = """
import json, sys
from avcache.inspection.cli import main
code = main(sys.argv[1:])
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"exit": code, "peak_mib": int(peak.split()[1]) / 1024}))
"""


needs_proc = pytest.mark.skipif(not Path("/proc/self/status").is_file(),
                                reason="peak RSS is read from /proc (Linux)")  # fmt: skip


def peak_mib(*argv: str) -> float:
    result = subprocess.run([sys.executable, "-c", MEASURED_INSPECT, *argv], cwd=REPO,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["exit"] == 0, result.stderr[-3000:]
    return report["peak_mib"]


# 16 windows of 25 frames of 256 px: 25 MiB a sample decoded, ~0.5 MB on disk
WIDE = layout(16, 25, 256, 100.0, 8000)
WIDE_SAMPLES = 32


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> Path:
    root = write_cache(tmp_path_factory.mktemp("wide") / "cache", [("val", WIDE_SAMPLES, WIDE)])
    assert sum(path.stat().st_size for path in root.rglob("*")) < 24 * MIB
    return root


@needs_proc
def test_the_gallery_decodes_only_the_window_it_draws(wide, tmp_path):
    """Every thumbnail draws the first window: the other 15 are never decoded. Against a
    gallery of one sample, 32 cost less than a quarter of what their windows would take
    (measured: 105 and 158 MiB; 129 and 909 MiB when every window was decoded)."""
    every_window = WIDE_SAMPLES * WIDE.windows * WIDE.frames * WIDE.size**2 / MIB  # 800 MiB
    one = peak_mib(str(wide), "gallery", "-o", str(tmp_path / "one"), "--limit", "1")
    whole = peak_mib(str(wide), "gallery", "-o", str(tmp_path / "all"))
    assert len(list((tmp_path / "all/thumbs").iterdir())) == WIDE_SAMPLES
    assert whole - one < every_window / 4, (one, whole, every_window)


@needs_proc
def test_a_sheet_decodes_only_the_window_it_draws(wide, tmp_path):
    """Measured: 109 MiB for one panel, 170 for 16; 133 and 546 when every window was."""
    every_window = 16 * WIDE.windows * WIDE.frames * WIDE.size**2 / MIB  # 400 MiB
    one = peak_mib(str(wide), "sheet", "-n", "1", "-o", str(tmp_path / "one.png"))
    sixteen = peak_mib(str(wide), "sheet", "-n", "16", "-o", str(tmp_path / "16.png"))
    assert sixteen - one < every_window / 4, (one, sixteen, every_window)


def test_a_window_read_alone_is_the_window_read_with_the_others(tmp_path):
    shape = layout(3, 4, 16, 25.0, 8000)
    root = write_cache(tmp_path / "cache", [("val", 3, shape)])
    with open_cache(root).shards[0].open() as shard:
        shard_tracks = shard.read_tracks(0, 3)
        middle = shard.read_tracks(0, 3, range(1, 2))
        picked = dict(open_cache(root).samples_at([(0, 2)], windows=range(1)))[(0, 2)]
    for name, column in shard_tracks.items():
        np.testing.assert_array_equal(middle[name], column[:, 1:2])
    assert picked.tracks.lips.shape == (1, 4, 16, 16)
    assert (picked.tracks.lips == 2).all()  # sample 2's mouths are grey level 2


def test_a_block_of_samples_is_bounded_by_bytes_not_only_by_count(wide, monkeypatch):
    """64 samples a block are 4 MiB of mel images but 1.6 GiB of these tracks: a block of
    samples_at holds BLOCK_BYTES at most, counting only the windows it decodes."""
    blocks, read = [], ShardReader.samples

    def counted(shard, positions, windows=None):
        blocks.append(len(positions))
        return read(shard, positions, windows)

    monkeypatch.setattr(ShardReader, "samples", counted)
    cache, every = open_cache(wide), [(0, p) for p in range(WIDE_SAMPLES)]
    window = WIDE.frames * WIDE.size**2
    audio = WIDE.windows * 2 * WIDE.audio_samples  # every window's, read for its checksum
    small = 256 * 256 + FRAMES * SIZE * SIZE * 3  # mel, faces
    for windows, decoded in ((None, WIDE.windows), (range(1), 1)):
        blocks.clear()
        samples = [sample for _, sample in cache.samples_at(every, windows=windows)]
        assert [sample.tracks.lips.shape[0] for sample in samples] == [decoded] * WIDE_SAMPLES
        held = min(WIDE_SAMPLES, BLOCK_BYTES // (small + audio + decoded * window))
        assert max(blocks) == held and sum(blocks) == WIDE_SAMPLES  # 2, then 32 (of 37)
        del samples


# ---------------------------------------------------------------- a batch that cannot fit

BOUNDS = layout(schema.MAX_TRACK_WINDOWS, schema.MAX_TRACK_FRAMES, schema.MAX_TRACK_SIZE,
                120.0, 8000)  # fmt: skip


def test_training_at_the_bounds_is_refused_before_anything_is_read(tmp_path, capsys):
    """One sample of 16 windows of 250 frames of 256 px decodes to 265 MiB, and a batch of
    one would ask for 16.8 GB in the lips trunk's first convolution."""
    root = write_cache(tmp_path / "cache", [("train", 1, BOUNDS), ("val", 1, BOUNDS)])
    error = refused_by_train(root, tmp_path, capsys, "data.batch_size=1")
    assert f"the cache {root} (16 windows of 250 frames of 256 px" in error
    assert "even one sample is over it" in error and "fewer tracks.windows" in error


def test_a_batch_too_large_for_its_tracks_names_the_largest_that_fits(tmp_path, capsys):
    root = write_cache(tmp_path / "cache", [("train", 2, TOY), ("val", 2, TOY)])
    lips, audio = TOY.frames * TOY.size**2, 2 * TOY.audio_samples  # of its one window
    most = MAX_BATCH_TRACK_BYTES // (lips + audio)
    error = refused_by_train(root, tmp_path, capsys, f"data.batch_size={most + 1}")
    assert f"use data.batch_size={most} or less" in error
    cache = open_cache(root)
    for kind, per_sample in (("sync", lips + audio), ("lips", lips), ("speech", audio)):
        fits = MAX_BATCH_TRACK_BYTES // per_sample
        config = load_config(TrainConfig, None, [f"model.kind={kind}", f"data.batch_size={fits}"])
        check_batch_fits(config, cache)
        config.data.batch_size += 1
        with pytest.raises(ConfigError, match=f"use data.batch_size={fits} or less"):
            check_batch_fits(config, cache)


def test_a_window_too_short_for_the_speech_encoder_is_refused(tmp_path, capsys):
    """One frame at 100 fps, 8 kHz: 80 samples, which the preprocessor writes and the speech
    trunk cannot take (MIN_SPEECH_SAMPLES is the shortest it takes)."""
    short = layout(1, 1, 32, 100.0, 8000)
    root = write_cache(tmp_path / "cache", [("train", 2, short), ("val", 2, short)])
    error = refused_by_train(root, tmp_path, capsys)
    assert "model.kind=sync hears windows of 80 audio samples" in error
    trunk = SpeechTrunk(1).eval()  # batch norm of one value
    assert trunk(torch.zeros(1, 1, MIN_SPEECH_SAMPLES)).shape == (1, 1, trunk.num_features)
    with pytest.raises(RuntimeError, match="Kernel size"):
        trunk(torch.zeros(1, 1, MIN_SPEECH_SAMPLES - 1))


# ---------------------------------------------------------------- one layout a cache

OTHER_LAYOUTS = {
    "frames": layout(1, 20, 32, 25.0, 16000),
    "size": layout(1, 16, 48, 25.0, 16000),
    "audio_rate": layout(1, 16, 32, 25.0, 8000),
    "fps": layout(1, 16, 32, 30.0, 16000),
    "windows": layout(2, 16, 32, 25.0, 16000),
}


@pytest.mark.parametrize("field", OTHER_LAYOUTS)
@pytest.mark.parametrize("config", ["first", "none"])
def test_a_shard_of_another_track_layout_is_refused(tmp_path, capsys, run, field, config):
    """Two preprocessing runs merged into one index: the second shard is named, with the
    field that differs, whether the index's config says the layout or not (an older one)."""
    root = write_cache(tmp_path / "cache", [("train", 4, TOY), ("train", 4, OTHER_LAYOUTS[field]),
                                            ("val", 4, TOY)], config)  # fmt: skip
    second = root / "shards/train-00001.h5"
    expected = f"{second}: its track {field} is {getattr(OTHER_LAYOUTS[field], field)!r} but "
    for error in (refused_by_inspect(root, capsys), refused_by_train(root, tmp_path, capsys),
                  refused_by_predict(run, root, tmp_path, capsys)):  # fmt: skip
        assert expected in error and "share one track layout" in error


@pytest.mark.parametrize("without", [0, 1])
def test_shards_with_and_without_tracks_are_refused(tmp_path, capsys, run, without):
    shards = [("train", 4, TOY), ("val", 4, TOY)]
    shards[without] = (shards[without][0], 4, None)
    root = write_cache(tmp_path / "cache", shards, TOY)
    named = root / f"shards/{shards[without][0]}-{without:05d}.h5"
    for error in (refused_by_inspect(root, capsys), refused_by_train(root, tmp_path, capsys),
                  refused_by_predict(run, root, tmp_path, capsys)):  # fmt: skip
        assert f"{named}: holds no tracks (tracks.windows=0) but the cache's index says " \
               "tracks (1 windows of 16 frames)" in error  # fmt: skip


# ---------------------------------------------------------------- values no writer writes


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        (schema.TrackLayout(1, 16, 32, 25.0, 16000, 1), "track_audio_samples is 1: 16 frames "
         "at 25 fps are 10240 samples at 16000 Hz"),
        (schema.TrackLayout(1, 16, 32, 25.0, 16000, 100), "track_audio_samples is 100"),
        (schema.TrackLayout(1, 16, 32, 5e-324, 16000, 10240), "track_fps is 5e-324: expected a "
         "frame rate from 1 to 120"),
        (schema.TrackLayout(1, 16, 4, 25.0, 16000, 10240), "track_size is 4: expected an integer "
         ">= 8"),
        (schema.TrackLayout(1, 16, 32, 25.0, 96000, 61440), "track_audio_rate is 96000: over "
         "48000"),
    ],
)  # fmt: skip
def test_a_layout_no_preprocessor_writes_is_refused(tmp_path, capsys, shape, expected):
    """Written by the ShardWriter itself, which takes any layout it is given."""
    root = write_cache(tmp_path / "cache", [("train", 2, shape), ("val", 2, shape)], "none")
    for command in ([], ["verify"]):
        status = inspect_main([str(root), *command])
        error = capsys.readouterr().err
        assert status in (1, 2) and f"shards/train-00000.h5: {expected}" in error, error
    assert expected in refused_by_train(root, tmp_path, capsys)


@pytest.mark.parametrize("start", [1.7e308, DURATION + 1.0, -0.5, np.nan])
def test_a_window_starting_outside_its_video_is_refused(tmp_path, capsys, start):
    root = write_cache(tmp_path / "cache", [("train", 2, TOY), ("val", 2, TOY)])
    shard = root / "shards/train-00000.h5"
    with h5py.File(shard, "a") as handle:  # a forger rewrites the column and its sha256
        handle[schema.TRACK_START][1] = [start]
        fields = schema.ShardLayout(FRAMES, SIZE, tracks=TOY).meta_datasets()
        columns = {name: handle[name][()] for name in fields}
        handle.attrs[schema.ATTR_META_SHA256] = schema.meta_sha256(columns, fields)
    resign(root)
    expected = f"{shard}: sample 1 ('train001.mp4') has track start {start}: not seconds"
    assert expected in refused_by_inspect(root, capsys, "sheet", "-o", str(tmp_path / "s.png"))
    assert expected in refused_by_train(root, tmp_path, capsys)


# ---------------------------------------------------------------- text that is not UTF-8


@pytest.mark.parametrize("column", [schema.VIDEO_NAME, schema.FAKE_KIND])
def test_text_that_is_not_utf8_is_refused_by_every_command(tmp_path, capsys, run, column):
    root = tmp_path / "cache"
    records = [
        write_shard(root / "shards" / f"{split}.h5", split, 4, None, first, fake_kinds=True)
        for first, split in enumerate(("train", "val"))
    ]
    records = [ShardRecord(f"shards/{r.path}", r.split, r.num_samples, r.sha256) for r in records]
    values = index_config(frames=FRAMES, size=SIZE)
    write_json_atomic(root / schema.INDEX_FILE, build_index(values, "text", records))
    shard = root / "shards/val.h5"
    with h5py.File(shard, "a") as handle:  # bytes another tool wrote, no UTF-8
        handle[column][2] = b"clip\xff\xfe.mp4"
    resign(root)
    expected = f"{shard}: {column!r} of sample 2 is not UTF-8 text"
    for command in ([], ["sheet", "--split", "val", "-o", str(tmp_path / "s.png")],
                    ["gallery", "-o", str(tmp_path / "g")]):  # fmt: skip
        assert expected in refused_by_inspect(root, capsys, *command)
    assert inspect_main([str(root), "verify"]) == 1
    assert expected.replace(f"{shard}: ", f"DAMAGED {shard}: ") in capsys.readouterr().err
    assert expected in refused_by_train(root, tmp_path, capsys, "model.kind=audio")
    assert expected in refused_by_predict(run, root, tmp_path, capsys)


# ---------------------------------------------------------------- no faces at all


def test_a_mel_only_cache_draws_sheets_and_galleries(tmp_path, capsys):
    """faces.frames=0: a zero-width faces column is never indexed (h5py cannot select from
    one), however many samples are picked."""
    root = write_cache(tmp_path / "cache", [("val", 20, None)], None, frames=0)
    assert inspect_main([str(root), "sheet", "-n", "16", "-o", str(tmp_path / "s.png")]) == 0
    assert inspect_main([str(root), "gallery", "-o", str(tmp_path / "g")]) == 0
    assert inspect_main([str(root), "verify"]) == 0
    capsys.readouterr()
    picks = [(0, p) for p in range(0, 20, 2)]
    samples = dict(open_cache(root).samples_at(picks))
    assert [samples[pick].faces.shape for pick in picks] == [(0, SIZE, SIZE, 3)] * 10
    with open_cache(root).shards[0].open() as shard:
        assert shard.take(schema.FACE_BOX, [1, 5, 19]).shape == (3, 0, 4)
        assert shard.read(schema.FACES, 3, 17).shape == (14, 0, SIZE, SIZE, 3)
