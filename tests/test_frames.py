"""One decode of a video for its face frames and its track windows (preprocess/frames.py),
and one of its audio for the mel and the windows' audio (media.read_audio_aligned), each
checked against the separate decodes they replace."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from avcache.preprocess.config import TracksConfig
from avcache.preprocess.faces import read_frames
from avcache.preprocess.frames import decode_frames, face_numbers
from avcache.preprocess.media import (
    Deadline,
    TimeLimitExceeded,
    ffmpeg_binary,
    read_audio,
    read_audio_aligned,
)
from avcache.preprocess.tracks import choose_windows
from tests.hostile import mov_rotated, processes_naming
from tests.media import ffmpeg, talking_face

TRACKS = TracksConfig(windows=2, frames=25, frame_size=96)
FACES = 6


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A real talking face, 3 s at 25 fps, 192 x 144: larger than the windows' frames."""
    folder = tmp_path_factory.mktemp("frames")
    return talking_face(folder / "talk.mp4", seconds=3.0, size=192)


def decoded(path: Path, name: str = "v.mp4", tracks: TracksConfig = TRACKS):
    info, _ = read_audio(path, ffmpeg_binary(), 16000, 1, 600.0)
    windows = choose_windows(name, info.duration, tracks)
    return info, windows, decode_frames(path, ffmpeg_binary(), info, FACES, windows, tracks)


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_face_frames_are_the_frames_opencv_reads_at_25_fps(clip):
    info, _, frames = decoded(clip)
    theirs = read_frames(clip, info, FACES)
    assert len(frames.faces) == FACES
    for ours, reference in zip(frames.faces, theirs, strict=True):
        assert ours.shape == reference.shape
        # the same frame; the decoders' YUV to RGB conversions differ by a grey level or two
        assert mean_difference(ours, reference) < 2.5


def test_a_different_face_frame_would_be_told_apart(clip):
    """The check above can fail: the next frame of the moving camera differs by more."""
    info, _, frames = decoded(clip)
    theirs = read_frames(clip, info, FACES)
    assert mean_difference(frames.faces[1], theirs[2]) > 2.5


def reference_windows(path: Path, numbers: list[int], size: tuple[int, int]) -> np.ndarray:
    """The windows' frames as a decode of their own gives them: ffmpeg's fps filter, its
    select and its area scaling to RGB (how the tracks were read before one decode)."""
    select = "+".join(f"eq(n\\,{n})" for n in numbers)
    command = [ffmpeg_binary(), "-nostdin", "-v", "error", "-i", str(path), "-vf",
               f"fps=25:start_time=0,select={select},scale={size[0]}:{size[1]}:flags=area",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-fps_mode", "passthrough",
               "pipe:"]  # fmt: skip
    data = subprocess.run(command, capture_output=True, check=True).stdout
    return np.frombuffer(data, np.uint8).reshape(-1, size[1], size[0], 3)


def test_window_frames_are_those_a_decode_of_their_own_gives(clip):
    _, windows, frames = decoded(clip)
    height, width = frames.windows.shape[2:4]
    assert max(height, width) == TRACKS.frame_size
    for w, start in enumerate(windows.starts):
        numbers = list(range(int(start), int(start) + TRACKS.frames))
        reference = reference_windows(clip, numbers, (width, height))
        assert reference.shape == frames.windows[w].shape
        for k in range(TRACKS.frames):
            assert mean_difference(frames.windows[w, k], reference[k]) < 3.0, (w, k)
        assert frames.windows_real[w] == TRACKS.frames


def test_face_numbers_are_the_centres_of_equal_slices_on_the_track_timeline():
    assert face_numbers(4.0, 4, 100, 25.0) == [12, 37, 62, 87]
    assert face_numbers(4.0, 4, 50, 25.0) == [12, 37, 49, 49], "inside the frames the clip has"


def test_the_mel_audio_is_unchanged_and_the_aligned_audio_is_a_decode_of_its_own(clip):
    binary = ffmpeg_binary()
    info, pcm = read_audio(clip, binary, 44100, 2, 600.0)
    info_aligned, pcm_too, aligned = read_audio_aligned(clip, binary, 44100, 2, 600.0, 16000)
    assert pcm_too == pcm, "the mel's audio stays bit for bit what read_audio gives"
    assert info_aligned == info
    command = [binary, "-nostdin", "-v", "error", "-i", str(clip), "-vn", "-af",
               "aresample=16000:first_pts=0", "-ac", "1", "-f", "s16le", "pipe:"]  # fmt: skip
    alone = np.frombuffer(subprocess.run(command, capture_output=True, check=True).stdout, "<i2")
    assert len(aligned) == len(alone) > 16000 * 2.5
    assert np.abs(aligned.astype(np.int32) - alone).max() <= 1


def test_a_video_without_audio_has_no_aligned_audio(tmp_path):
    silent = tmp_path / "mute.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=64x48:d=1", "-c:v", "libx264", "-preset",
           "ultrafast", str(silent))  # fmt: skip
    info, pcm, aligned = read_audio_aligned(silent, ffmpeg_binary(), 44100, 2, 600.0, 16000)
    assert info.has_video and not info.has_audio
    assert pcm == b"" and aligned.size == 0


def test_a_rotated_video_is_decoded_as_shown(tmp_path):
    """Stored turned 90 degrees with a display matrix: the frames come upright, as OpenCV
    shows them, not squeezed into the stored size."""
    path = tmp_path / "rotated.mov"
    mov_rotated(path)
    info, _, frames = decoded(path)
    assert info.rotation % 180 == 90
    theirs = read_frames(path, info, FACES)
    for ours, reference in zip(frames.faces, theirs, strict=True):
        assert ours.shape == reference.shape
        assert mean_difference(ours, reference) < 2.5


def test_odd_sides_are_cut_to_even_ones(tmp_path):
    path = tmp_path / "odd.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=161x121:r=25:d=2", "-c:v", "libx264", "-pix_fmt",
           "yuv444p", "-preset", "ultrafast", str(path))  # fmt: skip
    _, _, frames = decoded(path)
    assert frames.faces[0].shape == (120, 160, 3)
    assert frames.windows.shape[2:4] == (72, 96)


def test_frames_past_the_clips_end_repeat_its_last_and_are_counted_out(tmp_path):
    short = talking_face(tmp_path / "short.mp4", seconds=0.6, size=96)
    _, windows, frames = decoded(short, tracks=TracksConfig(windows=1, frames=25))
    assert windows.starts.tolist() == [0]
    real = int(frames.windows_real[0])
    assert 0 < real < 25
    assert all(np.array_equal(frame, frames.windows[0, real - 1])
               for frame in frames.windows[0, real:])  # fmt: skip


def test_a_limit_reached_during_the_decode_stops_it_and_leaves_no_ffmpeg(tmp_path):
    long = talking_face(tmp_path / "long.mp4", seconds=4.0, size=480)
    info, _ = read_audio(long, ffmpeg_binary(), 16000, 1, 600.0)
    windows = choose_windows("v.mp4", info.duration, TRACKS)
    with pytest.raises(TimeLimitExceeded):  # ffmpeg alone takes longer than 20 ms to start
        decode_frames(long, ffmpeg_binary(), info, FACES, windows, TRACKS, Deadline(0.02))
    assert not processes_naming(long)
    frames = decode_frames(long, ffmpeg_binary(), info, FACES, windows, TRACKS, Deadline(60))
    assert len(frames.faces) == FACES, "a limit set, the frames read"
