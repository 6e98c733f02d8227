"""What ffprobe says about a file, and ffmpeg decoding straight into memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ffmpeg


class MediaError(RuntimeError):
    """ffmpeg or ffprobe could not read a file; the message is ffmpeg's own reason."""


@dataclass(frozen=True)
class MediaInfo:
    duration: float  # container duration in seconds (0.0 when unknown)
    has_audio: bool
    has_video: bool
    width: int = 0
    height: int = 0
    fps: float = 0.0


def as_ffmpeg_url(path: Path) -> str:
    """An explicit file: URL, so names with a colon or a leading dash stay plain file names."""
    return f"file:{Path(path).resolve()}"


def ffmpeg_reason(error: ffmpeg.Error) -> str:
    """The last meaningful line ffmpeg printed: usually the actual reason."""
    lines = [line.strip() for line in (error.stderr or b"").decode(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    return lines[-1] if lines else "ffmpeg failed without a message"


def _without_url(reason: str, path: Path) -> str:
    """ffmpeg prefixes its reason with the input URL; the failure record names the file already."""
    return reason.replace(f"{as_ffmpeg_url(path)}: ", "")


def probe(path: Path) -> MediaInfo:
    """Streams and duration of a media file; raises MediaError when it is not one."""
    try:
        info = ffmpeg.probe(as_ffmpeg_url(path), cmd="ffprobe")
    except ffmpeg.Error as error:
        raise MediaError(_without_url(ffmpeg_reason(error), path)) from None
    streams = info.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video" and not _is_cover(s)), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None and audio is None:
        raise MediaError("no audio or video stream")
    return MediaInfo(
        duration=_float(info.get("format", {}).get("duration")),
        has_audio=audio is not None,
        has_video=video is not None,
        width=int(video.get("width", 0)) if video else 0,
        height=int(video.get("height", 0)) if video else 0,
        fps=_rate(video.get("avg_frame_rate")) if video else 0.0,
    )


def _is_cover(stream: dict) -> bool:
    """Embedded cover art shows up as a one-picture video stream."""
    return bool(stream.get("disposition", {}).get("attached_pic"))


def _float(text: object) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return 0.0
    return value if value > 0 and value != float("inf") else 0.0


def _rate(text: object) -> float:
    num, _, den = str(text or "0/1").partition("/")
    try:
        return float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return 0.0


def decode_audio_s16(path: Path, sample_rate: int, channels: int, max_seconds: float) -> bytes:
    """Raw s16le PCM of the default audio stream, resampled by ffmpeg, via a pipe."""
    stream = ffmpeg.input(as_ffmpeg_url(path), t=max_seconds).output(
        "pipe:", vn=None, f="s16le", acodec="pcm_s16le", ar=sample_rate, ac=channels
    )
    try:
        out, _ = stream.global_args("-nostdin", "-loglevel", "error").run(
            cmd="ffmpeg", capture_stdout=True, capture_stderr=True
        )
    except ffmpeg.Error as error:
        raise MediaError(_without_url(ffmpeg_reason(error), path)) from None
    return out
