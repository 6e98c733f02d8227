"""Hostile media: the messy files users really have, one small generator per kind.

Every kind is made by the real ffmpeg from lavfi sources (testsrc2, sine,
anoisesrc, anullsrc), scikit-image's astronaut (a real face) and real speech
(codec2 / asterisk), or written byte by byte. KINDS maps a kind's name to how
it is made and what the preprocessor must do with it: cache it, or record a
failure at a given stage with a reason holding given key words. The table in
docs/hardening.md lists the same kinds.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from avcache.preprocess.media import ffmpeg_binary
from tests.media import astronaut_png, ffmpeg, speech_wav

SIZE = "64x48"  # small frames keep the whole set fast
SECONDS = "1"
CACHED = "cached"
STALL_FIFO = "stall.fifo"  # not listed: the pipe that the stall kind makes ffmpeg wait on


@dataclass(frozen=True)
class Kind:
    file: str  # the file name in the data root's trainset/ (some kinds are about the name)
    make: Callable[[Path], None]  # writes the file
    how: str  # how it is made (the table in docs/hardening.md)
    outcome: str = CACHED  # or the failure stage recorded in failures.jsonl
    reason: tuple[str, ...] = ()  # key words the failure's reason must hold
    has_audio: bool = True  # what a cached sample's has_audio must be
    audible: bool = True  # the audio holds sound: its mel image is not flat
    face: bool = False  # a real face is on screen: the detector must find it


def _pattern(seconds: str = SECONDS, size: str = SIZE, rate: int = 25) -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc2=s={size}:r={rate}:d={seconds}"]


def _speech(seconds: str = SECONDS) -> list[str]:
    return ["-t", seconds, "-i", str(speech_wav())]


def _h264(*extra: str) -> list[str]:
    return ["-c:v", "libx264", "-preset", "ultrafast", *extra]


def _talking(path: Path, *video: str, audio: tuple[str, ...] = ("-c:a", "aac")) -> None:
    """The test pattern with real speech, encoded with the given codec arguments."""
    ffmpeg(*_pattern(), *_speech(), "-map", "0:v", "-map", "1:a", *video, *audio, "-shortest",
           str(path))  # fmt: skip


def webm_vp9_opus(path: Path) -> None:
    video = ("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "100k")
    _talking(path, *video, audio=("-c:a", "libopus", "-b:a", "24k"))


def avi_mpeg4_mp3(path: Path) -> None:
    _talking(path, "-c:v", "mpeg4", audio=("-c:a", "libmp3lame", "-b:a", "32k"))


def mov_rotated(path: Path) -> None:
    """An upright face stored turned 90° clockwise, with a display matrix that turns it
    back (what phones write). Debian's ffmpeg 5.1 cannot write the matrix; the static
    ffmpeg 9 can (-display_rotation)."""
    upright = path.with_name("upright.tmp.mp4")
    ffmpeg("-loop", "1", "-framerate", "10", "-t", SECONDS, "-i", str(astronaut_png()),
           *_speech(), "-vf", "scale=256:256,transpose=clock,format=yuv420p",
           *_h264(), "-c:a", "aac", "-shortest", str(upright))  # fmt: skip
    ffmpeg_at(ffmpeg_binary(), "-display_rotation", "90", "-i", str(upright), "-c", "copy",
              str(path))  # fmt: skip
    upright.unlink()


def ffmpeg_at(binary: str, *args: str) -> None:
    result = subprocess.run([binary, "-nostdin", "-loglevel", "error", "-y", *args],
                            capture_output=True, text=True)  # fmt: skip
    if result.returncode:
        raise RuntimeError(f"{binary} {' '.join(args)} failed: {result.stderr[-500:]}")


def mkv_two_audio(path: Path) -> None:
    ffmpeg(*_pattern(), *_speech(), "-f", "lavfi", "-i", "sine=f=440:d=1",
           "-map", "0:v", "-map", "1:a", "-map", "2:a", *_h264(), "-c:a", "libopus",
           "-shortest", str(path))  # fmt: skip


def h264_10bit(path: Path) -> None:
    _talking(path, *_h264("-pix_fmt", "yuv420p10le"))


def h264_yuv444(path: Path) -> None:
    _talking(path, *_h264("-pix_fmt", "yuv444p"))


def no_audio(path: Path) -> None:
    ffmpeg(*_pattern(), *_h264(), str(path))


def audio_only(path: Path) -> None:
    ffmpeg(*_speech(), "-c:a", "aac", str(path))


def zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def truncated(path: Path) -> None:
    """A third of a normal MP4 (its index, written last, is lost): an interrupted copy."""
    whole = path.with_name("whole.tmp.mp4")
    _talking(whole, *_h264())
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    whole.unlink()


def random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(20000))


def text_as_mp4(path: Path) -> None:
    path.write_text("this is not a video, just a text file named .mp4\n" * 50)


def single_frame(path: Path) -> None:
    """One video frame in a clip that lasts as long as its second of speech."""
    ffmpeg(*_pattern("0.04"), *_speech(), *_h264(), "-c:a", "aac", str(path))


def ten_minutes(path: Path) -> None:
    """600 s at 2 fps, 32x32, with a quiet noise track: tiny on disk, long in time."""
    ffmpeg(*_pattern("600", "32x32", rate=2), "-f", "lavfi", "-i",
           "anoisesrc=d=600:c=pink:r=8000:a=0.1", *_h264("-g", "240"), "-c:a", "aac",
           "-b:a", "16k", str(path))  # fmt: skip


def video_4k(path: Path) -> None:
    """3840x2160, two frames."""
    ffmpeg(*_pattern("0.2", "3840x2160", rate=10), *_speech("0.2"), "-map", "0:v", "-map",
           "1:a", *_h264(), "-c:a", "aac", str(path))  # fmt: skip


def odd_dimensions(path: Path) -> None:
    """97x61: H.264 4:2:0 refuses odd sizes, VP9 takes them."""
    _talking(path, "-vf", "scale=97:61", "-c:v", "libvpx-vp9", "-deadline", "realtime",
             "-cpu-used", "8", audio=("-c:a", "libopus"))  # fmt: skip


def variable_frame_rate(path: Path) -> None:
    """Twelve frames at 25 fps, then a 0.5 s gap, then frames at 5 fps."""
    pts = "if(lt(N\\,12)\\,N/25\\,0.98+(N-12)/5)/TB"
    ffmpeg(*_pattern("2", rate=25), *_speech("2"), "-map", "0:v", "-map", "1:a",
           "-vf", f"select='lt(n\\,12)+not(mod(n\\,5))',setpts='{pts}'", "-fps_mode", "vfr",
           *_h264(), "-c:a", "aac", "-shortest", str(path))  # fmt: skip


def audio_8k_mono(path: Path) -> None:
    _talking(path, *_h264(), audio=("-c:a", "aac", "-ar", "8000", "-ac", "1"))


def audio_5_1(path: Path) -> None:
    ffmpeg(*_pattern(), *_speech(), "-map", "0:v", "-map", "1:a", *_h264(),
           "-af", "pan=5.1|FL=c0|FR=c0|FC=c0|LFE=c0|BL=c0|BR=c0", "-c:a", "ac3",
           "-shortest", str(path))  # fmt: skip


def silent_audio(path: Path) -> None:
    ffmpeg(*_pattern(), "-f", "lavfi", "-i", "anullsrc=r=44100:cl=stereo", "-t", SECONDS,
           *_h264(), "-c:a", "aac", str(path))  # fmt: skip


def stalls_ffmpeg(path: Path) -> None:
    """An ffconcat list whose only entry is a named pipe that nobody writes to: an ffmpeg
    that opened it would wait forever (avcache refuses file lists; the test of the time
    limit runs ffmpeg on it directly)."""
    os.mkfifo(path.with_name(STALL_FIFO))
    path.write_text(f"ffconcat version 1.0\nfile {STALL_FIFO}\n")


def playlist_out_of_root(path: Path) -> None:
    """An HLS playlist (ffmpeg takes a .m3u8 name as one) listing a real clip by an
    absolute path outside the data root."""
    bait = path.parent.parent.parent / f"{path.parent.parent.name}-bait.mp4"
    plain(bait)
    path.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{bait}\n#EXT-X-ENDLIST\n")


def plain(path: Path) -> None:
    """A well-formed clip: the kinds about names use it."""
    _talking(path, *_h264())


def _kinds() -> dict[str, Kind]:
    decode, unknown_format = "decode", ("no media format found", "Invalid data")
    return {
        "webm vp9/opus": Kind("vp9 opus.webm", webm_vp9_opus, "speech; libvpx-vp9, libopus"),
        "avi mpeg4/mp3": Kind("mpeg4.avi", avi_mpeg4_mp3, "speech; mpeg4, libmp3lame"),
        "mov rotated 90°": Kind(
            "rotated.mov", mov_rotated, "a face stored turned 90°, display matrix", face=True
        ),
        "mkv two audio tracks": Kind(
            "two tracks.mkv", mkv_two_audio, "speech and a 440 Hz sine, two opus tracks"
        ),
        "h264 10-bit": Kind("h264 10bit.mp4", h264_10bit, "libx264 yuv420p10le"),
        "h264 yuv444": Kind("h264 444.mp4", h264_yuv444, "libx264 yuv444p"),
        "no audio": Kind("no audio.mp4", no_audio, "testsrc2 only", has_audio=False),
        "audio only": Kind(
            "audio only.mp4",
            audio_only,
            "speech in an MP4 without a video stream",
            "faces",
            ("no video stream", "faces.frames=0"),
        ),
        "zero bytes": Kind(
            "zero.mp4", zero_bytes, "an empty file", decode, ("empty file (0 bytes)",)
        ),
        "truncated": Kind(
            "truncated.mp4",
            truncated,
            "the first third of an MP4",
            decode,
            ("truncated", "moov atom not found"),
        ),
        "random bytes": Kind(
            "random.mp4", random_bytes, "20 kB of random bytes", decode, unknown_format
        ),
        "text named .mp4": Kind("notes.mp4", text_as_mp4, "a text file", decode, unknown_format),
        "single frame": Kind("one frame.mp4", single_frame, "one video frame, 1 s of speech"),
        "10 minutes": Kind("ten minutes.mp4", ten_minutes, "600 s, 32x32 at 2 fps, pink noise"),
        "4K": Kind("4k.mp4", video_4k, "3840x2160, 2 frames, speech"),
        "odd dimensions": Kind("odd 97x61.webm", odd_dimensions, "97x61 VP9, speech"),
        "variable frame rate": Kind("vfr.mp4", variable_frame_rate, "25 fps, a gap, then 5 fps"),
        "8 kHz mono audio": Kind("8k mono.mp4", audio_8k_mono, "speech as AAC 8 kHz mono"),
        "5.1 audio": Kind("surround.mp4", audio_5_1, "speech on six AC-3 channels"),
        "silent audio": Kind("silent.mp4", silent_audio, "anullsrc, all zeros", audible=False),
        "name with spaces": Kind("a clip  with  spaces.mp4", plain, "a normal clip"),
        "unicode name": Kind("видео_日本語_é🎬.mp4", plain, "a normal clip"),
        "quotes in name": Kind('say "hi", it\'s.mp4', plain, "a normal clip, CSV-quoted"),
        "leading dash": Kind("-i -y.mp4", plain, "a normal clip"),
        "file list": Kind(
            "stall.mp4",
            stalls_ffmpeg,
            "an ffconcat list naming a pipe nobody writes",
            "decode",
            ("not a container avcache opens",),
        ),
        "playlist out of the root": Kind(
            "playlist.m3u8",
            playlist_out_of_root,
            "an HLS playlist naming a clip outside the data root by its absolute path",
            "decode",
            ("not a container avcache opens", "outside the data root"),
        ),
    }


KINDS: dict[str, Kind] = _kinds()


def make_all(folder: Path) -> dict[str, Path]:
    """Every kind written into `folder`; kind name -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, kind in KINDS.items():
        kind.make(folder / kind.file)
        files[name] = folder / kind.file
    return files


def processes_naming(path: Path) -> list[psutil.Process]:
    """Live processes whose command line names `path`."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(path) in part for part in process.info["cmdline"] or ()):
            found.append(process)
    return found
