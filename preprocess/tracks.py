"""Time-aligned tracks: W windows of T contiguous frames of the mouth, and the speech of
exactly the same instants.

A lip/speech mismatch is visible only where frames and audio are aligned, so both come
from one timeline, the one ffmpeg gives a file (time 0 = its first timestamp):
- frames are taken at the track's own rate (`tracks.fps`, 25 by default) by ffmpeg's fps
  filter: frame k of the track is the source frame shown at k / fps, whatever the source's
  rate, constant or variable, so track frame k and audio sample k x rate / fps are the same
  instant (within half a source frame);
- the audio is decoded mono at `tracks.audio_rate` with `aresample=first_pts=0`, which pads
  with silence an audio stream that starts after time 0 (instead of shifting it earlier);
- a window's start is drawn from the video's name (the same windows whatever the worker,
  machine or run), inside the frames the clip has.
What could not be aligned is recorded, never hidden: frames a short clip lacks repeat its
last frame and are counted out of `frames_real`; audio that ends early (or is absent) is
zero and counted out of `audio_real`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avcache.cache import schema
from avcache.preprocess.config import TracksConfig
from avcache.preprocess.media import (
    NO_DEADLINE,
    Deadline,
    MediaError,
    MediaInfo,
    allowed_input,
    ffmpeg_reason,
    run_ffmpeg,
)


@dataclass(frozen=True)
class Windows:
    """Where a video's windows lie on its timeline, in track frames."""

    starts: np.ndarray  # int64 [W]: first track frame of each window
    available: int  # track frames the clip has

    def start_times(self, fps: float) -> np.ndarray:
        return self.starts / fps


def name_seed(video_name: str) -> int:
    """A seed from the video's name alone (not Python's salted hash)."""
    return int.from_bytes(hashlib.sha256(video_name.encode("utf-8")).digest()[:8], "little")


def choose_windows(video_name: str, duration: float, config: TracksConfig) -> Windows:
    """W window starts drawn from the name, each window inside the clip where it fits,
    sorted; a clip shorter than a window gets windows at its start."""
    available = max(int(np.floor(duration * config.fps + 1e-6)), 1)
    room = max(available - config.frames, 0)
    rng = np.random.default_rng(name_seed(video_name))
    starts = np.sort(rng.integers(0, room + 1, config.windows))
    return Windows(starts.astype(np.int64), available)


def read_window_frames(path: Path, binary: str, windows: Windows, config: TracksConfig,
                       info: MediaInfo, deadline: Deadline = NO_DEADLINE,
                       ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(RGB frames uint8 [W, T, H, W'] at the track's rate, real frames per window [W]).
    One ffmpeg process decodes up to the last window's end and keeps only the windows'
    frames; frames past the clip's end repeat its last decoded frame."""
    width, height = _decoded_size(info, config.frame_size)
    wanted = [range(int(s), int(s) + config.frames) for s in windows.starts]
    # ffmpeg-python escapes the commas itself
    select = "+".join(f"between(n,{r.start},{r.stop - 1})" for r in wanted)
    end_seconds = (max(r.stop for r in wanted) + 1) / config.fps
    command = (
        allowed_input(path, end_seconds)
        .video.filter("fps", fps=config.fps, start_time=0)
        .filter("select", select)
        .filter("scale", width, height, flags="area")
        .output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough")
        .global_args("-nostdin", "-hide_banner")
        .compile(cmd=binary)
    )
    result = run_ffmpeg(command, deadline)
    frame_bytes = width * height * 3
    decoded = len(result.stdout) // frame_bytes
    if result.returncode != 0 or decoded == 0:
        reason = ffmpeg_reason(result.stderr.decode("utf-8", errors="replace"))
        raise MediaError(f"the track's frames cannot be decoded: {reason}")
    flat = np.frombuffer(result.stdout[: decoded * frame_bytes], np.uint8)
    return _into_windows(flat.reshape(decoded, height, width, 3), wanted, windows.available)


def _decoded_size(info: MediaInfo, longest: int) -> tuple[int, int]:
    """The source's size scaled to `longest` at most, even sides (what rgb24 scaling keeps)."""
    if not info.width or not info.height:
        raise MediaError("the video stream's size is unknown: no track frames to take")
    scale = min(1.0, longest / max(info.width, info.height))
    return max(2, round(info.width * scale / 2) * 2), max(2, round(info.height * scale / 2) * 2)


def _into_windows(frames: np.ndarray, wanted: list[range],
                  available: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """ffmpeg returns the union of the windows' frames in order (an overlap once): cut it
    back into windows, repeating the last frame where the clip ends early."""
    numbers = sorted(set().union(*wanted))[: len(frames)]
    position = {number: i for i, number in enumerate(numbers)}
    out = np.empty((len(wanted), len(wanted[0]), *frames.shape[1:]), np.uint8)
    real = np.zeros(len(wanted), np.int16)
    for w, window in enumerate(wanted):
        for k, number in enumerate(window):
            found = number in position
            real[w] += found
            out[w, k] = frames[position[number] if found else len(frames) - 1]
    return out, real


def read_track_audio(path: Path, binary: str, windows: Windows, config: TracksConfig,
                     info: MediaInfo, deadline: Deadline = NO_DEADLINE,
                     ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(mono int16 [W, L] of the windows' instants, share of each window's samples that
    came from the audio stream [W]); zeros and 0 without audio."""
    length = track_audio_samples(config)
    audio = np.zeros((len(windows.starts), length), np.int16)
    if not info.has_audio:
        return audio, np.zeros(len(windows.starts), np.float32)
    starts = np.round(windows.start_times(config.fps) * config.audio_rate).astype(np.int64)
    end_seconds = (int(starts.max()) + length) / config.audio_rate + 0.1
    command = (
        allowed_input(path, end_seconds)
        .audio.filter("aresample", config.audio_rate, first_pts=0)
        .output("pipe:", format="s16le", acodec="pcm_s16le", ac=1)
        .global_args("-nostdin", "-hide_banner")
        .compile(cmd=binary)
    )
    result = run_ffmpeg(command, deadline)
    if result.returncode != 0:
        reason = ffmpeg_reason(result.stderr.decode("utf-8", errors="replace"))
        raise MediaError(f"the track's audio cannot be decoded: {reason}")
    pcm = np.frombuffer(result.stdout[: len(result.stdout) // 2 * 2], "<i2")
    real = np.zeros(len(starts), np.float32)
    for w, start in enumerate(starts.tolist()):
        piece = pcm[start : start + length]
        audio[w, : len(piece)] = piece
        real[w] = len(piece) / length
    return audio, real


def track_layout(config: TracksConfig) -> schema.TrackLayout | None:
    """The shard layout of `config`'s tracks (None without windows)."""
    if not config.windows:
        return None
    return schema.TrackLayout(config.windows, config.frames, config.size, config.fps,
                              config.audio_rate, track_audio_samples(config))  # fmt: skip


def track_audio_samples(config: TracksConfig) -> int:
    """Audio samples of one window: T frames' worth at the track's rate."""
    return schema.window_audio_samples(config.frames, config.fps, config.audio_rate)


def video_tracks(
    path: Path,
    binary: str,
    video_name: str,
    info: MediaInfo,
    config: TracksConfig,
    deadline: Deadline = NO_DEADLINE,
) -> schema.Tracks:
    """A video's aligned windows: stabilised mouth crops and the same instants' audio."""
    from avcache.preprocess.lips import mouth_track  # landmarks only where tracks are made

    if not info.has_video:
        raise MediaError("no video stream (audio only): no mouth frames to cache; "
                         "tracks.windows=0 caches such files without tracks")  # fmt: skip
    windows = choose_windows(video_name, info.duration, config)
    frames, frames_real = read_window_frames(path, binary, windows, config, info, deadline)
    audio, audio_real = read_track_audio(path, binary, windows, config, info, deadline)
    crops = np.empty((config.windows, config.frames, config.size, config.size), np.uint8)
    found = np.zeros((config.windows, config.frames), bool)
    for w in range(config.windows):
        deadline.check("tracks")
        track = mouth_track(list(frames[w]), config.size, config.locator,
                            locate_every=config.locate_every)  # fmt: skip
        crops[w], found[w] = track.crops, track.found
    return schema.Tracks(lips=crops, lips_found=found, start=windows.start_times(config.fps),
                         frames_real=frames_real, audio=audio, audio_real=audio_real)  # fmt: skip
