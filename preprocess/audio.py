"""Mel images from a video's audio: a registry of recipes, `baseline` by default.

`baseline` reproduces the public FFDV recipe (moviepy 1.0.3 + librosa + cv2,
see shared/reference) without its temp WAV: ffmpeg decodes to 44.1 kHz stereo
s16 as moviepy does, the clip is cut or zero-padded to the container duration
and clipped to ±0.99 as moviepy's WAV writer does, then librosa's own load,
mel and dB steps run on the array, and OpenCV normalises and resizes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import librosa
import numpy as np

from cache.schema import MEL_SIZE
from preprocess.config import AudioConfig
from preprocess.media import MediaInfo, decode_audio_s16

MOVIEPY_RATE = 44100  # moviepy's write_audiofile default
LIBROSA_RATE = 22050  # librosa.load default
N_MELS = 128
MOVIEPY_CLIP = int(0.99 * 2**15)  # moviepy clips to ±0.99 before quantising (truncating)


def empty_mel() -> np.ndarray:
    """The defined image for a clip without audio."""
    return np.zeros((MEL_SIZE, MEL_SIZE), dtype=np.uint8)


def moviepy_duration(seconds: float) -> float:
    """The container duration as moviepy parses it from ffmpeg's 'Duration:' line (10 ms)."""
    return int(round(seconds * 1e6) + 5000) // 10000 / 100


def baseline_waveform(pcm: bytes, duration: float) -> np.ndarray:
    """The float32 mono 22,050 Hz signal librosa.load returns for moviepy's WAV."""
    stereo = np.frombuffer(pcm, dtype=np.int16).reshape(-1, 2)
    if duration > 0:  # moviepy writes exactly int(44100 x duration) frames, padding with zeros
        frames = int(MOVIEPY_RATE * moviepy_duration(duration))
        stereo = stereo[:frames]
        stereo = np.pad(stereo, ((0, frames - len(stereo)), (0, 0)))
    stereo = np.clip(stereo, -MOVIEPY_CLIP, MOVIEPY_CLIP).astype(np.float32) / 2**15
    mono = stereo.mean(axis=1)  # librosa.to_mono
    return librosa.resample(mono, orig_sr=MOVIEPY_RATE, target_sr=LIBROSA_RATE, res_type="soxr_hq")


def baseline_image(waveform: np.ndarray) -> np.ndarray:
    """The published steps: mel power -> dB re max -> MINMAX to uint8 -> 256x256."""
    if waveform.size == 0:
        return empty_mel()
    power = librosa.feature.melspectrogram(y=waveform, sr=LIBROSA_RATE, n_mels=N_MELS)
    decibels = librosa.power_to_db(power, ref=np.max)
    # cv2.normalize maps a constant image (silence) to zeros instead of dividing by zero.
    scaled = cv2.normalize(decibels, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return cv2.resize(scaled, (MEL_SIZE, MEL_SIZE), interpolation=cv2.INTER_LINEAR)


def baseline_mel(path: Path, info: MediaInfo, config: AudioConfig) -> np.ndarray:
    pcm = decode_audio_s16(path, MOVIEPY_RATE, 2, config.max_seconds)
    duration = min(info.duration, config.max_seconds)
    return baseline_image(baseline_waveform(pcm, duration))


MelRecipe = Callable[[Path, MediaInfo, AudioConfig], np.ndarray]
MEL_MODES: dict[str, MelRecipe] = {"baseline": baseline_mel}


def mel_image(path: Path, info: MediaInfo, config: AudioConfig) -> np.ndarray:
    """The uint8 [256, 256] mel image of a file (zeros when it has no audio)."""
    if not info.has_audio:
        return empty_mel()
    return MEL_MODES[config.mode](path, info, config)
