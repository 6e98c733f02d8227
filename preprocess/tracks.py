"""Time-aligned tracks: W windows of T contiguous frames of the mouth, and the speech of
exactly the same instants.

A lip/speech mismatch is visible only where frames and audio are aligned, so both come
from one timeline, the one ffmpeg gives a file (time 0 = its first timestamp):
- frames are taken at the track's own rate (`tracks.fps`, 25 by default) by ffmpeg's fps
  filter: frame k of the track is the source frame shown at k / fps, whatever the source's
  rate, constant or variable, so track frame k and audio sample k x rate / fps are the same
  instant (within half a source frame); they come from the one decode that also gives the
  face frames (preprocess/frames.py);
- the audio is the mel's decoded PCM (one decode serves both), its channels averaged and
  resampled in process to `tracks.audio_rate` by soxr, then placed on the timeline as
  ffmpeg's `aresample=first_pts=0` would place it: an audio stream that starts after time 0
  is preceded by that much silence (frames.audio_lead), instead of being shifted earlier;
- a window's start is drawn from the video's name (the same windows whatever the worker,
  machine or run), inside the frames the clip has, and over the fake segments where the
  video's are known.
What could not be aligned is recorded, never hidden: frames a short clip lacks repeat its
last frame and are counted out of `frames_real`; audio that ends early (or is absent) is
zero and counted out of `audio_real`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import soxr

from avcache.cache import schema
from avcache.preprocess.config import TracksConfig
from avcache.preprocess.media import NO_DEADLINE, Deadline


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


PLACEMENTS = ("name", "tile")  # tracks.placement


def choose_windows(video_name: str, duration: float, config: TracksConfig,
                   segments: Sequence[tuple[float, float]] | None = None) -> Windows:  # fmt: skip
    """W window starts, sorted. Tiled (`tracks.placement: tile`): one after another from the
    clip's start. By name: drawn from the name, each window inside the clip where it fits;
    a clip shorter than a window gets windows at its start. Where the video's fake segments
    are known (LAV-DF, AV-Deepfake1M: a few words of a real clip), the windows are drawn over
    them, one segment after another, so that a fake's window holds its fake: a window drawn
    anywhere would miss two words of a ten-second clip and still say fake."""
    available = max(int(np.floor(duration * config.fps + 1e-6)), 1)
    if config.placement == "tile":
        return Windows(np.arange(config.windows, dtype=np.int64) * config.frames, available)
    room = max(available - config.frames, 0)
    rng = np.random.default_rng(name_seed(video_name))
    ranges = [r for r in (_overlapping_starts(s, available, config) for s in segments or ()) if r]
    if not ranges:
        starts = rng.integers(0, room + 1, config.windows)
    else:
        first = int(rng.integers(len(ranges)))
        starts = [rng.integers(*ranges[(first + w) % len(ranges)]) for w in range(config.windows)]
    return Windows(np.sort(np.asarray(starts, np.int64)), available)


def _overlapping_starts(segment: tuple[float, float], available: int,
                        config: TracksConfig) -> tuple[int, int] | None:  # fmt: skip
    """[low, high): the starts of windows inside the clip that share at least half a window
    with the segment (the part of it inside the clip), or the whole of a shorter one; None
    where the segment lies past the clip's end."""
    room = max(available - config.frames, 0)
    first, last = (min(max(t * config.fps, 0.0), available) for t in segment)  # track frames
    need = min(last - first, config.frames / 2)
    low = max(int(np.ceil(first + need - config.frames)), 0)
    high = min(int(np.floor(last - need)), room)
    return (low, high + 1) if low <= high and need > 0 else None


def track_rate_audio(pcm: bytes, rate: int, channels: int, audio_rate: int,
                     source_channels: int) -> np.ndarray:  # fmt: skip
    """Mono int16 at `audio_rate` of s16le PCM (`rate`, `channels`) decoded from a stream of
    `source_channels`: as ffmpeg would mix that stream to mono (its channels averaged; a
    mono source, which ffmpeg spread over two channels at -3 dB each, at its own level),
    resampled by soxr at its high quality (about 3 ms of CPU for 6 s of 44.1 kHz, where
    ffmpeg's own second output for it cost ~7 ms more a video)."""
    frame_bytes = 2 * channels
    samples = np.frombuffer(pcm[: len(pcm) // frame_bytes * frame_bytes], "<i2")
    if not samples.size:
        return np.zeros(0, np.int16)
    frames = samples.reshape(-1, channels)
    mono = frames[:, 0].astype(np.float32)
    for channel in range(1, channels):  # a column at a time: numpy's mean over a 2-wide axis
        mono += frames[:, channel]  # costs ~6 ms on 6 s of 44.1 kHz, this ~0.5 ms
    mono /= channels
    if source_channels == 1 and channels > 1:
        mono *= np.sqrt(2.0)  # ffmpeg's upmix put the mono source at 1/sqrt(2) on each side
    resampled = soxr.resample(mono, rate, audio_rate)
    return np.clip(np.round(resampled), -32768, 32767).astype(np.int16)


def on_timeline(audio: np.ndarray, lead: float, audio_rate: int) -> np.ndarray:
    """`audio` placed on the track's timeline: `lead` seconds of silence before it (a stream
    that starts after time 0), or its first -lead seconds cut (one that starts before)."""
    shift = round(lead * audio_rate)
    if shift <= 0:
        return audio[-shift:]
    return np.concatenate([np.zeros(shift, np.int16), audio])


def window_audio(aligned: np.ndarray, windows: Windows, config: TracksConfig,
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(mono int16 [W, L] of the windows' instants cut from the clip's `aligned` audio,
    share of each window's samples that came from the audio stream [W]); zeros and 0
    without audio."""
    length = track_audio_samples(config)
    audio = np.zeros((len(windows.starts), length), np.int16)
    real = np.zeros(len(windows.starts), np.float32)
    starts = np.round(windows.start_times(config.fps) * config.audio_rate).astype(np.int64)
    for w, start in enumerate(starts.tolist()):
        piece = aligned[start : start + length]
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


def video_tracks(windows: Windows, frames: np.ndarray, frames_real: np.ndarray,
                 aligned_audio: np.ndarray, config: TracksConfig,
                 deadline: Deadline = NO_DEADLINE) -> schema.Tracks:  # fmt: skip
    """A video's aligned windows from its decoded windows' frames (frames.decode_frames) and
    its aligned audio: stabilised mouth crops and the same instants' audio."""
    from avcache.preprocess.lips import mouth_track  # landmarks only where tracks are made

    audio, audio_real = window_audio(aligned_audio, windows, config)
    crops = np.empty((config.windows, config.frames, config.size, config.size), np.uint8)
    found = np.zeros((config.windows, config.frames), bool)
    for w in range(config.windows):
        deadline.check("tracks")
        if not frames_real[w]:  # past the clip's end (tiled): nothing to look for
            crops[w] = 0
            continue
        track = mouth_track(list(frames[w]), config.size, config.locator,
                            locate_every=config.locate_every)  # fmt: skip
        crops[w], found[w] = track.crops, track.found
    return schema.Tracks(lips=crops, lips_found=found, start=windows.start_times(config.fps),
                         frames_real=frames_real, audio=audio, audio_real=audio_real)  # fmt: skip
