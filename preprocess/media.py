"""One ffmpeg process per video: its stream dump is the probe, its stdout the audio.

ffmpeg prints the input's duration and streams before it decodes, so one
process both probes the file and pipes its audio into memory. (ffprobe would
cost a second process start per video, as much as the whole decode.) The
binary is imageio-ffmpeg's static build when installed (it starts in ~20 ms,
Debian's, linked to ~200 libraries, in ~100 ms; it is also the binary that
moviepy, and so the public baseline, uses by default), else `ffmpeg` on PATH.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import ffmpeg


class MediaError(RuntimeError):
    """ffmpeg could not read a file; the message is ffmpeg's own reason."""


@dataclass(frozen=True)
class MediaInfo:
    duration: float  # container duration in seconds, 10 ms precision (0.0 when unknown)
    has_audio: bool
    has_video: bool
    width: int = 0
    height: int = 0
    fps: float = 0.0


@functools.cache
def ffmpeg_binary(choice: str = "auto") -> str:
    """auto: imageio-ffmpeg's static binary if installed, else `ffmpeg` on PATH."""
    if choice == "auto":
        try:
            import imageio_ffmpeg

            return imageio_ffmpeg.get_ffmpeg_exe()
        except (ImportError, RuntimeError):
            choice = "ffmpeg"
    found = shutil.which(choice)
    if found is None:
        raise FileNotFoundError(f"no ffmpeg binary {choice!r}: apt-get install ffmpeg")
    return found


def as_ffmpeg_url(path: Path) -> str:
    """An explicit file: URL, so names with a colon or a leading dash stay plain file names."""
    return f"file:{Path(path).resolve()}"


_DURATION = re.compile(r"^  Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", re.MULTILINE)
_STREAM = re.compile(r"^  Stream #0:\d+\S*: (Video|Audio): (.*)$", re.MULTILINE)
_SIZE = re.compile(r", (\d{1,5})x(\d{1,5})[ ,]")
_FPS = re.compile(r", (\d+(?:\.\d+)?) fps")


def parse_info(dump: str) -> MediaInfo | None:
    """MediaInfo from ffmpeg's input dump (as moviepy reads it); None if no input was opened."""
    if "Input #0" not in dump:
        return None
    duration = _DURATION.search(dump)
    seconds = 0.0
    if duration:
        hours, minutes, secs = duration.groups()
        seconds = int(hours) * 3600 + int(minutes) * 60 + float(secs)
    streams = _STREAM.findall(dump)
    videos = [text for kind, text in streams if kind == "Video" and "(attached pic)" not in text]
    size = _SIZE.search(videos[0]) if videos else None
    fps = _FPS.search(videos[0]) if videos else None
    return MediaInfo(
        duration=seconds,
        has_audio=any(kind == "Audio" for kind, _ in streams),
        has_video=bool(videos),
        width=int(size.group(1)) if size else 0,
        height=int(size.group(2)) if size else 0,
        fps=float(fps.group(1)) if fps else 0.0,
    )


def ffmpeg_reason(stderr: str) -> str:
    """The last line ffmpeg printed: usually the actual reason."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "ffmpeg failed without a message"


def read_audio(path: Path, binary: str, rate: int, channels: int,
               max_seconds: float) -> tuple[MediaInfo, bytes]:  # fmt: skip
    """(what the file holds, s16le PCM of its default audio stream; b'' without one)."""
    command = (
        ffmpeg.input(as_ffmpeg_url(path), t=max_seconds)
        .output("pipe:", vn=None, f="s16le", acodec="pcm_s16le", ar=rate, ac=channels)
        .global_args("-nostdin", "-hide_banner")
        .compile(cmd=binary)
    )
    result = subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL)
    dump = result.stderr.decode("utf-8", errors="replace")
    info = parse_info(dump)
    if info is None:
        raise MediaError(ffmpeg_reason(dump).replace(as_ffmpeg_url(path), str(path)))
    if not info.has_video and not info.has_audio:
        raise MediaError("no audio or video stream")
    if result.returncode != 0 and info.has_audio:
        raise MediaError(f"audio cannot be decoded: {ffmpeg_reason(dump)}")
    return info, result.stdout if info.has_audio else b""
