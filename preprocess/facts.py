"""Per-video facts for the shortcut audit: cheap measurements that say nothing about a
manipulation (`avcache-inspect CACHE audit` asks whether any of them gives the labels away).

They come from what the mel stage has anyway: ffmpeg's stream dump (codecs, rates, sizes,
bit rates), the PCM it decoded (durations, silence, loudness) and the file's size; the video
stream's duration is its frame count over its frame rate, from the container's header
(OpenCV opens it without decoding a frame). Silence is an energy threshold on 10 ms frames
(audio.frame_levels): silero-vad would tell speech from noise, but it would load torch in
every worker for a fact this coarse.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from avcache.preprocess.audio import frame_power, sound_span
from avcache.preprocess.config import AuditConfig
from avcache.preprocess.faces import _open_capture
from avcache.preprocess.media import NO_DEADLINE, Deadline, MediaInfo

NAN = float("nan")


def video_seconds(path: Path, info: MediaInfo, deadline: Deadline = NO_DEADLINE) -> float:
    """The video stream's duration from its header: frame count / frame rate (NaN unknown)."""
    if not info.has_video:
        return NAN
    capture = _open_capture(path, deadline)
    try:
        frames = capture.get(cv2.CAP_PROP_FRAME_COUNT) if capture.isOpened() else 0.0
        fps = info.fps or (capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0)
    finally:
        capture.release()
    return frames / fps if frames > 0 and fps > 0 else NAN


def audio_facts(pcm: bytes, info: MediaInfo, rate: int, channels: int,
                config: AuditConfig) -> dict[str, float]:  # fmt: skip
    """Decoded duration, leading and trailing silence and RMS level (NaN without audio)."""
    if not info.has_audio:
        names = ("fact_audio_seconds", "fact_lead_silence", "fact_trail_silence",
                 "fact_loudness_db")  # fmt: skip
        return dict.fromkeys(names, NAN)
    seconds = len(pcm) / (2 * channels * rate)
    power = frame_power(pcm, rate, channels)
    levels = 10 * np.log10(np.maximum(power, 1e-12))
    span = sound_span(levels, config.silence_db)
    first, last = span if span else (len(levels), len(levels))
    mean_power = float(power.mean()) if power.size else 0.0  # of the channels' mix
    return {
        "fact_audio_seconds": seconds,
        "fact_lead_silence": first / 100,
        "fact_trail_silence": seconds - last / 100 if span else seconds,
        "fact_loudness_db": 10 * math.log10(max(mean_power, 1e-12)),
    }


def video_facts(
    path: Path,
    pcm: bytes,
    info: MediaInfo,
    rate: int,
    channels: int,
    config: AuditConfig,
    deadline: Deadline = NO_DEADLINE,
) -> dict[str, float | str]:
    """Every schema.FACT_FIELDS value of one video (NaN and "" where the file says nothing)."""

    def known(value: float) -> float:
        return float(value) if value else NAN

    facts: dict[str, float | str] = {
        "fact_video_seconds": video_seconds(path, info, deadline),
        **audio_facts(pcm, info, rate, channels, config),
        "fact_sample_rate": known(info.sample_rate),
        "fact_channels": known(info.channels),
        "fact_fps": known(info.fps),
        "fact_width": known(info.width),
        "fact_height": known(info.height),
        "fact_bit_rate": known(info.bit_rate),
        "fact_video_bit_rate": known(info.video_bit_rate),
        "fact_audio_bit_rate": known(info.audio_bit_rate),
        "fact_file_bytes": float(Path(path).stat().st_size),
        "fact_video_codec": info.video_codec,
        "fact_audio_codec": info.audio_codec,
    }
    return facts
