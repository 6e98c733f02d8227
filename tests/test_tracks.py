"""Time-aligned tracks (cache format v3): W windows of T mouth frames and the audio of the
same instants, written by the preprocessor and read back checked.

The alignment test films clips whose picture flashes white on known frames while the audio
clicks at the same instants, at 25 and 30 fps, with AAC (whose encoder delay the container's
edit list must undo) and a late-starting audio stream; the stored frames and the stored
audio must agree on every flash to within one frame."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import h5py
import numpy as np
import pytest

from avcache.cache import open_cache, schema
from avcache.cache.reader import CacheFormatError, DamagedShardError
from avcache.cache.verify import verify_cache
from avcache.preprocess.config import TracksConfig
from avcache.preprocess.media import ffmpeg_binary
from avcache.preprocess.run import main as preprocess_main
from avcache.preprocess.tracks import choose_windows, track_audio_samples
from tests.media import face_without_audio, talking_face

RATE = 16000
FLASH_EVERY = 0.36  # seconds between flashes: a 1 s window holds two or three
SIZE = 96


def flash_clip(path: Path, fps: int, seconds: float, audio_delay: float = 0.0,
               audio_seconds: float | None = None) -> list[float]:  # fmt: skip
    """A black clip that flashes white for one frame at known times, its audio clicking at
    each of them (the audio stream may start late or end early); returns the times."""
    frames = int(seconds * fps)
    flashes = [f for f in range(3, frames - 2) if (f / fps) % FLASH_EVERY < 1 / fps]
    video = np.zeros((frames, SIZE, SIZE, 3), np.uint8)
    for first in flashes:  # lit for at least a track frame (1/25 s), whatever the rate
        video[first : first + -(-fps // 25)] = 255
    times = [f / fps for f in flashes]
    audio_seconds = seconds if audio_seconds is None else audio_seconds
    audio = np.zeros(int((audio_seconds - audio_delay) * RATE), np.int16)
    for t in times:
        start = round((t - audio_delay) * RATE)
        if 0 <= start < len(audio) - 80:
            audio[start : start + 80] = 20000  # a 5 ms click
    wav = path.with_suffix(".wav")
    with wave.open(str(wav), "wb") as handle:
        handle.setnchannels(1), handle.setsampwidth(2), handle.setframerate(RATE)
        handle.writeframes(audio.tobytes())
    command = [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo",
               "-pix_fmt", "rgb24", "-s", f"{SIZE}x{SIZE}", "-r", str(fps), "-i", "pipe:",
               "-itsoffset", str(audio_delay), "-i", str(wav), "-c:v", "libx264", "-preset",
               "veryfast", "-qp", "0", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k",
               str(path)]  # fmt: skip
    subprocess.run(command, input=video.tobytes(), check=True, capture_output=True)
    wav.unlink()
    return times


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tracks")
    for folder in ("trainset", "valset", "testset"):
        (root / folder).mkdir()
    flash_clip(root / "trainset" / "flash25.mp4", 25, 3.0)
    flash_clip(root / "trainset" / "flash30.mp4", 30, 3.0)
    flash_clip(root / "trainset" / "late audio.mp4", 25, 3.0, audio_delay=0.3)
    flash_clip(root / "trainset" / "short audio.mp4", 25, 3.0, audio_seconds=1.2)
    face_without_audio(root / "trainset" / "mute.mp4", seconds=1.5)
    talking_face(root / "valset" / "talk.mp4", seconds=2.0)
    (root / "train_label.txt").write_text(
        "video_name,target\nflash25.mp4,0\nflash30.mp4,1\n"
        "late audio.mp4,0\nshort audio.mp4,1\nmute.mp4,0\n"
    )
    (root / "val_label.txt").write_text("video_name,target\ntalk.mp4,1\n")
    (root / "prediction.txt.csv").write_text("video_name,target\ntalk.mp4,\n")
    return root


@pytest.fixture(scope="module")
def cache(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "cache"
    code = preprocess_main(["--data", str(data), "--out", str(out), "--quiet", "--jobs", "1",
                            "faces.frames=2", "faces.size=32", "tracks.windows=2",
                            "tracks.frames=25"])  # fmt: skip
    assert code == 0
    return out


def samples(cache: Path) -> dict[str, schema.Sample]:
    return {sample.video_name: sample for sample in open_cache(cache).iter_samples()}


def flashes_and_clicks(tracks: schema.Tracks, window: int) -> tuple[list[int], list[float]]:
    """Track frames where a flash starts, and where (in frames) each click of the window is."""
    lit = tracks.lips[window].reshape(25, -1).mean(axis=1) > 128
    bright = [k for k in range(25) if lit[k] and (k == 0 or not lit[k - 1])]
    audio = np.abs(tracks.audio[window].astype(np.int32))
    per_frame = RATE // 25
    loud = np.flatnonzero(audio > 10000)
    onsets = [int(i) for k, i in enumerate(loud) if k == 0 or i - loud[k - 1] > per_frame]
    return bright, [i / per_frame for i in onsets]


@pytest.mark.parametrize("name", ["flash25.mp4", "flash30.mp4", "late audio.mp4"])
def test_stored_frames_and_audio_agree_on_every_flash_within_a_frame(cache, name):
    tracks = samples(cache)[name].tracks
    assert tracks.lips.shape == (2, 25, 88, 88) and tracks.audio.shape == (2, RATE)
    for window in range(2):
        bright, clicks = flashes_and_clicks(tracks, window)
        assert 2 <= len(bright) <= 4, bright
        heard = [click for click in clicks if -0.5 <= click < 25]
        assert len(heard) == len(bright), (bright, clicks)
        for frame, click in zip(bright, heard, strict=True):
            assert abs(frame - click) <= 1.0, (name, window, bright, clicks)


def test_windows_lie_on_the_timeline_where_the_name_puts_them(cache):
    config = TracksConfig(windows=2, frames=25)
    for name, sample in samples(cache).items():
        expected = choose_windows(name, float(sample.duration), config).start_times(25.0)
        np.testing.assert_allclose(sample.tracks.start, expected)
        assert np.all(sample.tracks.start + 1.0 <= max(float(sample.duration), 1.0) + 1e-6)


def test_what_could_not_be_aligned_is_recorded(cache):
    found = samples(cache)
    short, mute, whole = found["short audio.mp4"], found["mute.mp4"], found["flash25.mp4"]
    np.testing.assert_array_equal(whole.tracks.audio_real, [1.0, 1.0])
    np.testing.assert_array_equal(whole.tracks.frames_real, [25, 25])
    # the audio ends at 1.2 s: a window starting at s holds max(0, 1.2 - s) s of it
    expected = np.clip(1.2 - short.tracks.start, 0, 1)
    np.testing.assert_allclose(short.tracks.audio_real, expected, atol=0.02)
    assert not mute.has_audio and not mute.tracks.audio.any()
    np.testing.assert_array_equal(mute.tracks.audio_real, [0.0, 0.0])
    # 1.5 s of video: a 1 s window starts at most 0.5 s in and has all its frames
    assert np.all(mute.tracks.frames_real == 25)


def test_a_clip_shorter_than_a_window_repeats_its_last_frame_and_says_so(tmp_path):
    root = tmp_path / "data"
    for folder in ("trainset", "valset", "testset"):
        (root / folder).mkdir(parents=True)
    flash_clip(root / "trainset" / "short.mp4", 25, 0.6)
    (root / "train_label.txt").write_text("video_name,target\nshort.mp4,0\n")
    flash_clip(root / "valset" / "other.mp4", 25, 0.8)
    (root / "val_label.txt").write_text("video_name,target\nother.mp4,1\n")
    (root / "prediction.txt.csv").write_text("video_name,target\nother.mp4,\n")
    out = tmp_path / "cache"
    assert preprocess_main(["--data", str(root), "--out", str(out), "--quiet", "--jobs", "1",
                            "faces.frames=0", "tracks.windows=1"]) == 0  # fmt: skip
    tracks = samples(out)["short.mp4"].tracks
    assert tracks.start.tolist() == [0.0] and tracks.frames_real.tolist() == [15]
    np.testing.assert_array_equal(tracks.lips[0, 15:], np.repeat(tracks.lips[0, 14:15], 10, 0))


def test_a_real_face_gets_its_mouth_located(cache):
    talk = samples(cache)["talk.mp4"].tracks
    assert talk.lips_found.mean() > 0.9
    assert talk.audio_real.min() == 1.0 and np.abs(talk.audio).max() > 1000


def test_a_tracks_cache_verifies_and_a_damaged_window_is_named(cache, tmp_path):
    assert verify_cache(open_cache(cache)) == []
    copy = tmp_path / "copy"
    shutil.copytree(cache, copy)
    shard = next((copy / "shards").rglob("train-*.h5"))
    with h5py.File(shard, "r+") as handle:
        handle[schema.TRACK_AUDIO][1, 0, 100] += 1
    shard_entry = open_cache(copy, check_shards=False).shards_of("train")[0]
    with (shard_entry.open() as reader,
          pytest.raises(DamagedShardError, match=r"'track_audio'.*sample 1 ")):  # fmt: skip
        reader.read_tracks(0, len(reader))
    with h5py.File(shard, "r+") as handle:
        handle[schema.LIPS_JPEG][-5] ^= 0xFF
    with open_cache(copy, check_shards=False).shards_of("train")[0].open() as reader:
        last = len(reader) - 1
        with pytest.raises(DamagedShardError, match=rf"'lips'.*sample {last} fails its xxh3"):
            reader.read_tracks(last, last + 1)
    problems = verify_cache(open_cache(copy, check_shards=False))
    assert any("track_audio" in text and "'lips'" in text for text in problems), problems


def test_track_audio_length_is_the_windows_frames_at_the_audio_rate():
    assert track_audio_samples(TracksConfig(frames=25, fps=25.0, audio_rate=16000)) == 16000
    assert track_audio_samples(TracksConfig(frames=16, fps=25.0, audio_rate=16000)) == 10240


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        (schema.ATTR_TRACK_FRAMES, 10**6, "track_frames is 1000000: over 250"),
        (schema.ATTR_TRACK_WINDOWS, 2**20, "track_windows is 1048576: over 16"),
        (schema.ATTR_TRACK_AUDIO_SAMPLES, 2**31, "over 480000"),
        (schema.ATTR_TRACK_FPS, "fast", "track_fps is 'fast'"),
        (schema.ATTR_TRACK_FPS, 5e-324, "track_fps is 5e-324: expected a frame rate from 1 "),
        (schema.ATTR_TRACK_SIZE, 0, "expected an integer >= 8"),
        (schema.ATTR_TRACK_AUDIO_RATE, 384000, "track_audio_rate is 384000: over 48000"),
        (
            schema.ATTR_TRACK_AUDIO_SAMPLES,
            100,
            "track_audio_samples is 100: 25 frames at 25 fps are 16000 samples at 16000 Hz",
        ),
    ],
)
def test_forged_track_sizes_are_refused_before_anything_is_allocated(
    cache, tmp_path, attribute, value, message
):
    copy = tmp_path / "copy"
    shutil.copytree(cache, copy)
    shard = next((copy / "shards").rglob("train-*.h5"))
    with h5py.File(shard, "r+") as handle:
        handle.attrs[attribute] = value
    entry = open_cache(copy, check_shards=False).shards_of("train")[0]
    with pytest.raises(CacheFormatError, match=message):
        entry.open()


def overlap(start: float, length: float, segment) -> float:
    return min(start + length, segment[1]) - max(start, segment[0])


def test_a_fakes_windows_lie_over_its_fake_segments_and_a_reals_where_its_name_puts_them():
    """A few words faked in a ten-second clip: each window shares at least half a window with
    a segment (or the whole of a shorter one), the segments taken in turn; without segments,
    or with none inside the clip, the windows are where the name alone puts them."""
    config = TracksConfig(windows=3, frames=25, fps=25.0)
    rng = np.random.default_rng(0)
    for number in range(300):
        name, duration = f"clip {number}.mp4", float(rng.uniform(2, 12))
        ends = np.sort(rng.uniform(0, duration, (int(rng.integers(1, 4)), 2)), axis=1)
        segments = [(float(a), float(max(b, a + 0.04))) for a, b in ends]
        windows = choose_windows(name, duration, config, segments)
        assert np.all(windows.starts >= 0) and np.all(windows.starts + 25 <= windows.available)
        for start in windows.start_times(config.fps):
            best = max(overlap(start, 1.0, s) - min(s[1] - s[0], 0.5) for s in segments)
            assert best >= -1e-9, (name, start, segments)
        if len(segments) >= 3:  # each of three segments gets a window of its own
            for segment in segments:
                assert any(overlap(t, 1.0, segment) > 0 for t in windows.start_times(25.0))
        named = choose_windows(name, duration, config)
        assert np.array_equal(choose_windows(name, duration, config, []).starts, named.starts)
        past_the_end = [(duration + 1, duration + 2)]
        assert np.array_equal(choose_windows(name, duration, config, past_the_end).starts,
                              named.starts)  # fmt: skip


@pytest.fixture(scope="module")
def tiled(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiled") / "cache"
    code = preprocess_main(["--data", str(data), "--out", str(out), "--quiet", "--jobs", "1",
                            "faces.frames=0", "tracks.windows=4",
                            "tracks.placement=tile"])  # fmt: skip
    assert code == 0
    return out


def test_tiled_windows_cover_the_clip_aligned_and_say_where_it_ends(tiled):
    """Four windows of a second from the start of 3-second clips: the first three hold the
    clip, flashes and clicks within a frame; the fourth lies past its end and says so."""
    for name in ("flash25.mp4", "flash30.mp4", "late audio.mp4"):
        tracks = samples(tiled)[name].tracks
        np.testing.assert_allclose(tracks.start, [0.0, 1.0, 2.0, 3.0])
        assert tracks.frames_real.tolist() == [25, 25, 25, 0]
        assert not tracks.lips_found[3].any() and not tracks.lips[3].any()
        assert tracks.audio_real[3] < 0.1  # at most the audio stream's own tail (AAC pads it)
        for window in range(3):
            bright, clicks = flashes_and_clicks(tracks, window)
            heard = [click for click in clicks if -0.5 <= click < 25]
            assert len(heard) == len(bright) >= 2, (name, window, bright, clicks)
            for frame, click in zip(bright, heard, strict=True):
                assert abs(frame - click) <= 1.0, (name, window, bright, clicks)
    assert open_cache(tiled).config["tracks"]["placement"] == "tile"


def test_a_placement_other_than_name_or_tile_is_refused(data, tmp_path, capsys):
    code = preprocess_main(["--data", str(data), "--out", str(tmp_path / "c"), "--quiet",
                            "tracks.placement=random"])  # fmt: skip
    assert code == 2 and "tracks.placement name or tile" in capsys.readouterr().err
