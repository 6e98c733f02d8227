"""One decode of a video for its face frames and its track windows (preprocess/frames.py),
in process or by an ffmpeg process, and one of its audio for the mel and the windows' audio
(tracks.track_rate_audio), each checked against the separate decodes they replace."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from avcache.preprocess import frames as frames_module
from avcache.preprocess.config import TracksConfig
from avcache.preprocess.faces import read_frames
from avcache.preprocess.frames import (
    audio_lead,
    decode_by_ffmpeg,
    decode_frames,
    decode_in_process,
    face_numbers,
    frame_numbers,
    numbered_frames,
    opened,
)
from avcache.preprocess.media import (
    Deadline,
    TimeLimitExceeded,
    ffmpeg_binary,
    read_audio,
)
from avcache.preprocess.tracks import choose_windows, on_timeline, track_rate_audio
from tests.hostile import ffmpeg_at, mov_rotated, processes_naming, variable_frame_rate
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


def windows_audio(path: Path) -> np.ndarray:
    """The track's 16 kHz audio as the worker makes it: the mel's PCM resampled, placed on
    the timeline by the audio stream's lead."""
    info, pcm = read_audio(path, ffmpeg_binary(), 44100, 2, 600.0)
    with opened(path) as container:
        lead = audio_lead(container)
    return on_timeline(track_rate_audio(pcm, 44100, 2, 16000, info.channels), lead, 16000)


def decode_of_its_own(path: Path) -> np.ndarray:
    """The audio as ffmpeg places it on the file's timeline (how the tracks read it before
    the mel's PCM served them): mono, 16 kHz, a late stream padded with silence."""
    command = [ffmpeg_binary(), "-nostdin", "-v", "error", "-i", str(path), "-vn", "-af",
               "aresample=16000:first_pts=0", "-ac", "1", "-f", "s16le", "pipe:"]  # fmt: skip
    return np.frombuffer(subprocess.run(command, capture_output=True, check=True).stdout, "<i2")


def late_audio(path: Path, clip: Path) -> Path:
    """The clip's sound starting 0.3 s after its picture."""
    ffmpeg("-i", str(clip), "-itsoffset", "0.3", "-i", str(clip), "-map", "0:v", "-map", "1:a",
           "-c", "copy", str(path))  # fmt: skip
    return path


@pytest.mark.parametrize("kind", ["as made", "audio starts late", "mpeg-ts"])
def test_the_windows_audio_is_a_decode_of_its_own_within_the_resamplers_difference(
    kind, clip, tmp_path
):
    """The same samples at the same instants as ffmpeg's own aresample=first_pts=0 decode:
    as many (within a resampler's edge), and differing by less than -40 dB of the speech
    (soxr and ffmpeg's resampler filter differently); one sample later would differ more."""
    makers = {"as made": lambda: clip, "audio starts late": lambda: late_audio(
        tmp_path / "late.mp4", clip), "mpeg-ts": lambda: mpeg_ts(tmp_path, clip)}  # fmt: skip
    path = makers[kind]()
    ours, theirs = windows_audio(path).astype(np.float64), decode_of_its_own(path)
    assert abs(len(ours) - len(theirs)) <= 2 and len(theirs) > 16000 * 2.5
    n = min(len(ours), len(theirs))
    speech = np.sqrt(np.mean(theirs[:n].astype(np.float64) ** 2))
    assert np.sqrt(np.mean((ours[:n] - theirs[:n]) ** 2)) < 0.01 * speech
    assert np.sqrt(np.mean((ours[1:n] - theirs[: n - 1]) ** 2)) > 0.03 * speech
    if kind == "audio starts late":  # silence first, the sound where ffmpeg puts it
        onset = [int(np.flatnonzero(np.abs(a) > 64)[0]) for a in (ours, theirs)]
        assert onset[1] > 0.25 * 16000 and abs(onset[0] - onset[1]) <= 16, onset


def test_a_video_without_audio_has_no_windows_audio(tmp_path):
    silent = tmp_path / "mute.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=64x48:d=1", "-c:v", "libx264", "-preset",
           "ultrafast", str(silent))  # fmt: skip
    info, pcm = read_audio(silent, ffmpeg_binary(), 44100, 2, 600.0)
    assert info.has_video and not info.has_audio and pcm == b""
    assert windows_audio(silent).size == 0


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


# --------------------------------------------------------------------------- in process


def rotated(path: Path, degrees: int) -> Path:
    """The talking clip with a display matrix turning it by `degrees` (as phones write)."""
    upright = talking_face(path.with_name(f"upright{degrees}.mp4"), seconds=1.0, size=96)
    ffmpeg_at(ffmpeg_binary(), "-display_rotation", str(degrees), "-i", str(upright), "-c",
              "copy", str(path))  # fmt: skip
    return path


def late_video(path: Path, clip: Path) -> Path:
    """The clip's picture starting 0.7 s after its sound: the file's timeline starts before
    the video stream's first frame."""
    ffmpeg("-i", str(clip), "-itsoffset", "0.7", "-i", str(clip), "-map", "1:v", "-map", "0:a",
           "-c", "copy", str(path))  # fmt: skip
    return path


def frames_both_ways(path: Path, windows: int = 3):
    """(in process, by an ffmpeg process): the numbered frames of the faces and windows a
    video of this name would cache."""
    info, _ = read_audio(path, ffmpeg_binary(), 16000, 1, 600.0)
    tracks = TracksConfig(windows=windows, frames=25)
    chosen = choose_windows(path.name, info.duration, tracks)
    faces_at, windows_at = frame_numbers(info.duration, FACES, chosen, tracks)
    numbers = sorted(set(faces_at).union(*windows_at))
    deadline = Deadline(0)
    with opened(path) as container:
        ours = list(decode_in_process(container, info, numbers, tracks.fps, deadline))
    theirs = list(decode_by_ffmpeg(path, ffmpeg_binary(), info, numbers, tracks.fps, deadline))
    return ours, theirs


def at_30_fps(folder: Path, clip: Path) -> Path:
    ffmpeg("-i", str(clip), "-r", "30", "-c:v", "libx264", "-preset", "ultrafast", "-c:a",
           "copy", str(folder / "30.mp4"))  # fmt: skip
    return folder / "30.mp4"


def vfr(folder: Path, clip: Path) -> Path:
    variable_frame_rate(folder / "vfr.mp4")
    return folder / "vfr.mp4"


def odd_yuv444(folder: Path, clip: Path) -> Path:
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=161x121:r=25:d=2", "-c:v", "libx264", "-pix_fmt",
           "yuv444p", "-preset", "ultrafast", str(folder / "odd.mp4"))  # fmt: skip
    return folder / "odd.mp4"


def mpeg_ts(folder: Path, clip: Path) -> Path:
    """Its timestamps start at 1.4 s (the muxer's default delay): the timeline's 0 is there."""
    ffmpeg("-i", str(clip), "-c", "copy", "-f", "mpegts", str(folder / "clip.ts"))
    return folder / "clip.ts"


FILES = {
    "talking face": lambda folder, clip: clip,
    "30 fps": at_30_fps,
    "variable frame rate": vfr,
    "mpeg-ts": mpeg_ts,
    "video starts late": lambda folder, clip: late_video(folder / "late.mp4", clip),
    "rotated 90": lambda folder, clip: rotated(folder / "r90.mov", 90),
    "rotated 180": lambda folder, clip: rotated(folder / "r180.mov", 180),
    "rotated 270": lambda folder, clip: rotated(folder / "r270.mov", 270),
    "yuv444, odd sides": odd_yuv444,
}


@pytest.mark.parametrize("kind", FILES)
def test_frames_decoded_in_process_are_those_of_an_ffmpeg_process(kind, clip, tmp_path):
    """Bit for bit: the same numbers, the same I420 bytes, at the same size."""
    path = FILES[kind](tmp_path, clip)
    ours, theirs = frames_both_ways(path)
    assert len(theirs) > FACES
    assert [number for number, _ in ours] == [number for number, _ in theirs]
    for (number, mine), (_, reference) in zip(ours, theirs, strict=True):
        assert mine.shape == reference.shape and np.array_equal(mine, reference), (kind, number)


def test_the_comparison_sees_a_frame_off_by_one(clip):
    """The check above can fail: neighbouring frames of the talking clip differ."""
    ours, theirs = frames_both_ways(clip)
    assert not np.array_equal(ours[5][1], theirs[6][1])


def test_frames_without_timestamps_come_from_an_ffmpeg_process(clip, tmp_path):
    """A raw H.264 stream: PyAV's frames carry no timestamps (the fps filter would drop
    them), ffmpeg's own process times them; the frames are its."""
    raw = tmp_path / "raw.h264"
    ffmpeg("-i", str(clip), "-an", "-c:v", "copy", "-bsf:v", "h264_mp4toannexb", "-f", "h264",
           str(raw))  # fmt: skip
    info, _ = read_audio(raw, ffmpeg_binary(), 16000, 1, 600.0)
    numbers = list(range(0, 40, 3))
    with opened(raw) as container:
        assert not list(decode_in_process(container, info, numbers, 25.0, Deadline(0)))
    with opened(raw) as container:
        got = list(numbered_frames(container, raw, ffmpeg_binary(), info, numbers, 25.0))
    reference = list(decode_by_ffmpeg(raw, ffmpeg_binary(), info, numbers, 25.0, Deadline(0)))
    assert len(got) == len(numbers)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(got, reference, strict=True))


def test_a_file_pyav_cannot_read_goes_to_an_ffmpeg_process_from_the_first_frame_not_given(
    clip, monkeypatch
):
    """PyAV failing after some frames: the rest come from ffmpeg, none twice, none lost."""
    info, _ = read_audio(clip, ffmpeg_binary(), 16000, 1, 600.0)
    numbers = list(range(10, 60, 2))
    with opened(clip) as container:
        whole = list(decode_in_process(container, info, numbers, 25.0, Deadline(0)))

    def fails_after_five(*args):
        yield from whole[:5]
        raise av.InvalidDataError(1094995529, "Invalid data found when processing input")

    monkeypatch.setattr(frames_module, "decode_in_process", fails_after_five)
    with opened(clip) as container:
        got = list(numbered_frames(container, clip, ffmpeg_binary(), info, numbers, 25.0))
    assert [n for n, _ in got] == numbers
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(got, whole, strict=True))


def test_a_stream_whose_size_changes_keeps_its_timeline(tmp_path):
    """Two MPEG-TS segments, 160x120 then 200x100, one after the other: every frame at the
    first's size, and the second second's frames move on (ffmpeg's command line, which
    restarts its filters at the change, repeats one frame there)."""
    parts = []
    for k, size in enumerate(("160x120", "200x100")):
        part = tmp_path / f"{k}.ts"
        ffmpeg("-f", "lavfi", "-i", f"testsrc2=s={size}:r=25:d=1", "-c:v", "mpeg2video",
               "-output_ts_offset", str(k), "-f", "mpegts", str(part))  # fmt: skip
        parts.append(part.read_bytes())
    joined = tmp_path / "sizes.ts"
    joined.write_bytes(b"".join(parts))
    info, _ = read_audio(joined, ffmpeg_binary(), 16000, 1, 600.0)
    with opened(joined) as container:
        got = list(decode_in_process(container, info, list(range(50)), 25.0, Deadline(0)))
    assert len(got) >= 48
    assert {frame.shape for _, frame in got} == {(180, 160)}
    second = [frame for number, frame in got if number >= 27]
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(second))
