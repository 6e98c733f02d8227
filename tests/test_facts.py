"""Per-video facts (audit.facts): measured by the preprocessor from ffmpeg's stream dump, the
decoded PCM and the file, written as optional datasets, read back checked."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from avcache.cache import open_cache, schema
from avcache.cache.reader import CacheFormatError, DamagedShardError, ShardReader
from avcache.preprocess.audio import frame_levels, sound_span
from avcache.preprocess.run import main as preprocess_main
from tests.media import ffmpeg, speech_wav


def pcm_with_silence(lead: float, sound: float, trail: float, rate: int = 44100) -> bytes:
    """Stereo s16le: `lead` s of near silence (-80 dBFS noise), `sound` s of noise, `trail`."""
    rng = np.random.default_rng(0)
    quiet = lambda seconds: rng.normal(0, 3, (int(seconds * rate), 2))  # noqa: E731
    loud = rng.normal(0, 8000, (int(sound * rate), 2))
    return np.concatenate([quiet(lead), loud, quiet(trail)]).astype(np.int16).tobytes()


def test_silence_is_found_to_within_a_frame():
    levels = frame_levels(pcm_with_silence(0.5, 1.0, 0.2), 44100, 2)
    first, last = sound_span(levels, silence_db=40.0)
    assert abs(first / 100 - 0.5) <= 0.01 and abs(len(levels) - last - 20) <= 1
    assert sound_span(frame_levels(pcm_with_silence(1.0, 0.0, 0.0), 44100, 2), 40.0) is None
    assert sound_span(np.empty(0), 40.0) is None


def clip(path: Path, *, fps: int, lead: float = 0.0, size: str = "64x48", audio: bool = True):
    """A test pattern at `fps` with real speech delayed by `lead` s of digital silence."""
    inputs = ["-f", "lavfi", "-i", f"testsrc=size={size}:rate={fps}:d=1.5"]
    if audio:
        inputs += ["-i", str(speech_wav()), "-af", f"adelay={int(lead * 1000)}:all=1",
                   "-c:a", "aac", "-ar", "22050", "-ac", "1"]  # fmt: skip
    ffmpeg(*inputs, "-t", "1.5", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("facts")
    for folder in ("trainset", "valset"):
        (root / folder).mkdir()
    clip(root / "trainset" / "plain.mp4", fps=25)
    clip(root / "trainset" / "late.mp4", fps=25, lead=0.3)
    clip(root / "valset" / "fast.mp4", fps=30, size="80x60")
    clip(root / "valset" / "mute.mp4", fps=25, audio=False)
    (root / "train_label.txt").write_text("video_name,target\nplain.mp4,0\nlate.mp4,1\n")
    (root / "val_label.txt").write_text("video_name,target\nfast.mp4,1\nmute.mp4,0\n")
    return root


def preprocess(data: Path, out: Path, *overrides: str) -> Path:
    code = preprocess_main(["--data", str(data), "--out", str(out), "--quiet", "--jobs", "1",
                            "faces.frames=0", *overrides])  # fmt: skip
    assert code == 0
    return out


@pytest.fixture(scope="module")
def facts(data, tmp_path_factory) -> dict[str, dict]:
    cache = preprocess(data, tmp_path_factory.mktemp("cache") / "cache")
    return {sample.video_name: sample.facts for sample in open_cache(cache).iter_samples()}


def test_stream_facts_are_what_the_file_holds(data, facts):
    plain, fast, mute = facts["plain.mp4"], facts["fast.mp4"], facts["mute.mp4"]
    assert set(plain) == set(schema.FACT_FIELDS)
    assert (plain["fact_fps"], fast["fact_fps"]) == (25.0, 30.0)
    assert (fast["fact_width"], fast["fact_height"]) == (80.0, 60.0)
    assert (plain["fact_video_codec"], plain["fact_audio_codec"]) == ("h264", "aac")
    assert (plain["fact_sample_rate"], plain["fact_channels"]) == (22050.0, 1.0)
    assert plain["fact_file_bytes"] == (data / "trainset" / "plain.mp4").stat().st_size
    assert plain["fact_bit_rate"] > 0 and plain["fact_video_bit_rate"] > 0
    assert plain["fact_video_seconds"] == pytest.approx(1.5, abs=0.05)
    assert plain["fact_audio_seconds"] == pytest.approx(1.5, abs=0.06)
    assert mute["fact_audio_codec"] == "" and math.isnan(mute["fact_lead_silence"])
    assert all(math.isnan(mute[name]) for name in ("fact_audio_seconds", "fact_sample_rate"))


def test_leading_silence_is_measured(facts):
    # The speech recording starts with its own pause: the delayed copy has 0.3 s more.
    extra = facts["late.mp4"]["fact_lead_silence"] - facts["plain.mp4"]["fact_lead_silence"]
    assert extra == pytest.approx(0.3, abs=0.03)
    assert -40 < facts["plain.mp4"]["fact_loudness_db"] < 0


def test_without_facts_the_shards_hold_none(data, tmp_path):
    cache = open_cache(preprocess(data, tmp_path / "cache", "audit.facts=false"))
    sample = next(cache.iter_samples())
    assert sample.facts is None
    with cache.shards[0].open() as shard, pytest.raises(CacheFormatError, match="no facts"):
        shard.read_facts()


def test_a_changed_fact_is_damage(data, tmp_path):
    cache = open_cache(preprocess(data, tmp_path / "cache"))
    path = cache.shards[0].path
    with h5py.File(path, "r+") as handle:
        handle["fact_fps"][0] = 30.0
    with pytest.raises(DamagedShardError, match="sha256"):
        ShardReader(path)
