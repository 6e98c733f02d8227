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
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import ffmpeg


class MediaError(RuntimeError):
    """ffmpeg could not read a file; the message says why, in ffmpeg's own words too."""


LIMIT_KEY = "limits.seconds_per_video"


class TimeLimitExceeded(MediaError):
    """A video ran past its time limit; the message names the limit and how to raise it."""

    def __init__(self, seconds: float, stage: str) -> None:
        super().__init__(
            f"took longer than {LIMIT_KEY} = {seconds:g} s (stopped in stage {stage}); "
            f"raise {LIMIT_KEY}, or set it to 0 for no limit"
        )


@dataclass(frozen=True)
class Deadline:
    """A per-video time limit that each step checks between units of work.

    Cooperative, not signal.alarm: the same code runs in threads of a Dask worker,
    where signals cannot reach it. Subprocesses get the time left as their timeout.
    """

    seconds: float  # 0: no limit
    start: float = field(default_factory=time.monotonic)

    def remaining(self) -> float | None:
        """Seconds left, None without a limit (never negative)."""
        if self.seconds <= 0:
            return None
        return max(self.seconds - (time.monotonic() - self.start), 0.0)

    def check(self, stage: str) -> None:
        if self.remaining() == 0.0:
            raise TimeLimitExceeded(self.seconds, stage)


NO_DEADLINE = Deadline(0.0)


@dataclass(frozen=True)
class MediaInfo:
    duration: float  # container duration in seconds, 10 ms precision (0.0 when unknown)
    has_audio: bool
    has_video: bool
    width: int = 0
    height: int = 0
    fps: float = 0.0
    # What else the dump says, for the audit's facts (0 and "" where it says nothing).
    bit_rate: float = 0.0  # container, kb/s
    video_codec: str = ""
    video_bit_rate: float = 0.0  # kb/s
    audio_codec: str = ""
    audio_bit_rate: float = 0.0  # kb/s
    sample_rate: int = 0  # of the audio stream, Hz
    channels: int = 0
    rotation: float = 0.0  # degrees the display matrix turns the video (ffmpeg applies it)

    def display_size(self) -> tuple[int, int]:
        """(width, height) of the frames ffmpeg decodes: the stored size, turned as shown."""
        turned = round(self.rotation / 90) % 2 == 1
        return (self.height, self.width) if turned else (self.width, self.height)


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


_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees", re.IGNORECASE)
_DURATION = re.compile(r"^  Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", re.MULTILINE)
_STREAM = re.compile(r"^  Stream #0:\d+\S*: (Video|Audio): (.*)$", re.MULTILINE)
_SIZE = re.compile(r", (\d{1,5})x(\d{1,5})[ ,]")
_FPS = re.compile(r", (\d+(?:\.\d+)?) fps")
_BIT_RATE = re.compile(r"(\d+(?:\.\d+)?) kb/s")
_CONTAINER_BIT_RATE = re.compile(r"^  Duration: .*bitrate: (\d+(?:\.\d+)?) kb/s", re.MULTILINE)
_RATE = re.compile(r", (\d{1,6}) Hz")
_LAYOUTS = {"mono": 1, "stereo": 2, "2.1": 3, "quad": 4, "4.0": 4, "5.0": 5, "5.1": 6,
            "6.1": 7, "7.1": 8}  # fmt: skip
_CHANNELS = re.compile(r" Hz, (?:(\d{1,3}) channels|([\w.()]+))")


def _number(pattern: re.Pattern, text: str) -> float:
    found = pattern.search(text) if text else None
    return float(found.group(1)) if found else 0.0


def _stream_facts(video: str, audio: str) -> dict:
    """Codecs, bit rates, sample rate and channels from the streams' lines ("" when absent)."""
    channels = _CHANNELS.search(audio) if audio else None
    count = 0
    if channels:
        count = int(channels.group(1)) if channels.group(1) else _LAYOUTS.get(
            channels.group(2).split("(")[0], 0)  # fmt: skip
    return {
        "video_codec": video.split(" ", 1)[0].rstrip(",") if video else "",
        "video_bit_rate": _number(_BIT_RATE, video),
        "audio_codec": audio.split(" ", 1)[0].rstrip(",") if audio else "",
        "audio_bit_rate": _number(_BIT_RATE, audio),
        "sample_rate": int(_number(_RATE, audio)),
        "channels": count,
    }


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
    audios = [text for kind, text in streams if kind == "Audio"]
    return MediaInfo(
        duration=seconds,
        has_audio=any(kind == "Audio" for kind, _ in streams),
        has_video=bool(videos),
        width=int(size.group(1)) if size else 0,
        height=int(size.group(2)) if size else 0,
        fps=float(fps.group(1)) if fps else 0.0,
        bit_rate=_number(_CONTAINER_BIT_RATE, dump),
        rotation=_number(_ROTATION, dump),
        **_stream_facts(videos[0] if videos else "", audios[0] if audios else ""),
    )


def ffmpeg_reason(stderr: str) -> str:
    """The last line ffmpeg printed: usually the actual reason."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "ffmpeg failed without a message"


# ffmpeg's last line ("Invalid data found when processing input") is the same for a text
# file, random bytes and an interrupted copy; earlier lines of its log tell them apart.
# The containers (ffmpeg demuxer names) avcache opens, in ffmpeg and in OpenCV alike.
# Playlists and lists of other files (hls, concat, image2 patterns, dash manifests) are
# not among them: a file named clip.m3u8 would make ffmpeg read whatever paths it lists,
# outside the data root too.
ALLOWED_FORMATS = ("mov", "matroska", "avi", "flv", "mpegts", "mpeg", "asf", "ogg", "nut",
                   "mxf", "m4v", "h264", "hevc", "ivf", "mp3", "aac", "wav", "flac")  # fmt: skip
FORMAT_WHITELIST = ",".join(ALLOWED_FORMATS)

_UNREADABLE_HINTS = {
    "not on whitelist": "not a container avcache opens (playlists and file lists are refused: "
    "they can point outside the data root)",
    "detected only with low score": "no media format found (not a video file, or damaged)",
    "moov atom not found": "truncated or unfinished MP4/MOV (moov atom not found)",
}


def unreadable_reason(path: Path, dump: str) -> str:
    """Why ffmpeg could not open `path`: our reading of its log, then its own last line."""
    said = ffmpeg_reason(dump).replace(as_ffmpeg_url(path), str(path))
    if Path(path).stat().st_size == 0:
        return f"empty file (0 bytes); ffmpeg: {said}"
    hint = next((text for key, text in _UNREADABLE_HINTS.items() if key in dump), None)
    return f"{hint}; ffmpeg: {said}" if hint else said


def run_ffmpeg(command: list[str], deadline: Deadline) -> subprocess.CompletedProcess:
    """Run ffmpeg within the time left; on expiry it is killed and TimeLimitExceeded raised.

    ffmpeg runs in a session of its own: a terminal's Ctrl-C goes to the whole foreground
    process group, and ffmpeg, which catches SIGINT and exits "normally", would turn the
    user's interruption into a decoding failure recorded against the video (never retried).
    The preprocessor stops its workers itself; an ffmpeg whose worker is gone ends at its
    next write to the closed pipe."""
    deadline.check("decode")
    try:
        return subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL,
                              timeout=deadline.remaining(), start_new_session=True)  # fmt: skip
    except subprocess.TimeoutExpired:  # subprocess.run has killed and reaped ffmpeg
        raise TimeLimitExceeded(deadline.seconds, "decode") from None


class FfmpegStream:
    """ffmpeg with its stdout read as it comes, so that memory holds what the reader keeps,
    not the whole output (decoded frames at full size). Started as run_ffmpeg starts it, in
    a session of its own; killed when the video's time is up, which `finish` reports as
    TimeLimitExceeded. Use: `with FfmpegStream(command, deadline) as stream: ... read ...`,
    then `stream.finish()` for (return code, ffmpeg's messages)."""

    def __init__(self, command: list[str], deadline: Deadline) -> None:
        deadline.check("decode")
        self.deadline, self.expired = deadline, False
        # Never a pipe: one left unread blocks ffmpeg. Closed by __exit__.
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=self._errors,
                                        start_new_session=True)  # fmt: skip
        left = deadline.remaining()
        self._timer = None if left is None else threading.Timer(left, self._expire)
        if self._timer:
            self._timer.start()

    def _expire(self) -> None:
        self.expired = True
        self.process.kill()

    def read(self, size: int) -> bytes:
        """Up to `size` bytes: fewer only at the end of the output."""
        return self.process.stdout.read(size)

    def finish(self) -> tuple[int, str]:
        """Wait for ffmpeg to end; (its return code, its messages)."""
        returncode = self.process.wait()
        if self.expired:
            raise TimeLimitExceeded(self.deadline.seconds, "decode")
        self._errors.seek(0)
        return returncode, self._errors.read().decode("utf-8", errors="replace")

    def __enter__(self) -> FfmpegStream:
        return self

    def __exit__(self, *exc) -> None:
        if self._timer:
            self._timer.cancel()
        if self.process.poll() is None:  # left early (an error): stop it
            self.process.kill()
        self.process.stdout.close()
        self.process.wait()
        self._errors.close()


def allowed_input(path: Path, seconds: float, **options):
    """ffmpeg's input of `path`: read for at most `seconds`, opened only as one of the
    allowed containers, from a plain file (never a playlist or a URL it names); `options`
    are more input options (threads=1)."""
    return ffmpeg.input(as_ffmpeg_url(path), t=seconds, format_whitelist=FORMAT_WHITELIST,
                        protocol_whitelist="file", **options)  # fmt: skip


def read_audio(path: Path, binary: str, rate: int, channels: int, max_seconds: float,
               deadline: Deadline = NO_DEADLINE) -> tuple[MediaInfo, bytes]:  # fmt: skip
    """(what the file holds, s16le PCM of its default audio stream; b'' without one)."""
    source = allowed_input(path, max_seconds)
    command = (source.output("pipe:", vn=None, f="s16le", acodec="pcm_s16le", ar=rate,
                             ac=channels)
               .global_args("-nostdin", "-hide_banner").compile(cmd=binary))  # fmt: skip
    result = run_ffmpeg(command, deadline)
    dump = result.stderr.decode("utf-8", errors="replace")
    info = parse_info(dump)
    if info is None:
        raise MediaError(unreadable_reason(path, dump))
    if not info.has_video and not info.has_audio:
        raise MediaError("no audio or video stream")
    if result.returncode != 0 and info.has_audio:
        raise MediaError(f"audio cannot be decoded: {ffmpeg_reason(dump)}")
    return info, result.stdout if info.has_audio else b""
