"""Mel images from a video's audio: a registry of recipes, `baseline` by default.

`baseline` reproduces the public FFDV recipe (moviepy 1.0.3 + librosa + cv2,
tests/test_audio.py runs it) without its temp WAV: ffmpeg decodes 44.1 kHz stereo s16
as moviepy does, moviepy's WAV is replayed in memory (preprocess/moviepy103.py),
then librosa's own load, mel and dB steps run on the array and OpenCV
normalises and resizes. `padded` runs the same steps on the audio cut or padded
with silence to the container duration (moviepy 2.x's behaviour), without the
1.0.3 reader's artefacts on clips whose audio is shorter than their video.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import librosa
import numpy as np

from avcache.cache.schema import MEL_SIZE
from avcache.preprocess.config import AudioConfig
from avcache.preprocess.media import MediaInfo
from avcache.preprocess.moviepy103 import RATE as MOVIEPY_RATE
from avcache.preprocess.moviepy103 import moviepy_wav

LIBROSA_RATE = 22050  # librosa.load default
N_MELS = 128
HOP_LENGTH = 512  # librosa's default, passed explicitly so that what is recorded is what ran


def mel_settings(mode: str) -> dict:
    """How a mode's mel images are made, recorded in the cache's index (`mel`): readers,
    such as the inspect sheets' axes in seconds and hertz, then need not know this module."""
    return {"mode": mode, "sample_rate": LIBROSA_RATE, "n_mels": N_MELS,
            "hop_length": HOP_LENGTH, "mel_scale": "slaney", "fmin": 0.0,
            "fmax": LIBROSA_RATE / 2, "image_size": MEL_SIZE}  # fmt: skip


def empty_mel() -> np.ndarray:
    """The defined image for a clip without audio (and for silence)."""
    return np.zeros((MEL_SIZE, MEL_SIZE), dtype=np.uint8)


def librosa_load(wav: np.ndarray) -> np.ndarray:
    """What librosa.load returns for an int16 stereo WAV at 44.1 kHz: mono, 22,050 Hz."""
    # soundfile's scaling then to_mono, i.e. (wav / 2**15).mean(axis=1) in float32, bit for
    # bit: int16 sums are exact in float32 and the scalings are powers of two. Summing the
    # channels in place skips two float32 stereo copies (~400 MB on a 600 s clip).
    mono = wav[:, 0].astype(np.float32)
    mono += wav[:, 1]
    mono *= np.float32(2**-16)
    return librosa.resample(mono, orig_sr=MOVIEPY_RATE, target_sr=LIBROSA_RATE, res_type="soxr_hq")


def baseline_waveform(pcm: bytes, info: MediaInfo) -> np.ndarray:
    stereo = np.frombuffer(pcm, dtype=np.int16).reshape(-1, 2)
    try:
        return librosa_load(moviepy_wav(stereo, info.duration))
    except IndexError:  # no samples at all (moviepy itself crashes there)
        return np.zeros(0, dtype=np.float32)


def padded_waveform(pcm: bytes, info: MediaInfo) -> np.ndarray:
    stereo = np.frombuffer(pcm, dtype=np.int16).reshape(-1, 2)
    if info.duration > 0:
        frames = int(MOVIEPY_RATE * info.duration)
        stereo = np.pad(stereo[:frames], ((0, max(frames - len(stereo), 0)), (0, 0)))
    return librosa_load(np.clip(stereo, -32440, 32440))  # moviepy's ±0.99 clip


SILENCE_FLOOR_DB = -60.0  # quieter 10 ms frames are silent whatever the clip's loudest


def frame_power(pcm: bytes, rate: int, channels: int) -> np.ndarray:
    """Mean power (full scale 1) of each whole 10 ms frame of s16le PCM, channels mixed."""
    samples = np.frombuffer(pcm, dtype=np.int16)
    hop = max(rate // 100, 1)
    count = len(samples) // (hop * channels)
    samples = samples[: count * hop * channels]
    mono = samples[0::channels].astype(np.float32)  # strided slices: ~10x faster than sum()
    for channel in range(1, channels):
        mono += samples[channel::channels]
    mono *= np.float32(1 / (32768 * channels))
    frames = mono.reshape(count, hop)
    return np.einsum("ij,ij->i", frames, frames) / hop


def frame_levels(pcm: bytes, rate: int, channels: int) -> np.ndarray:
    """RMS level in dBFS of each whole 10 ms frame of s16le PCM, channels mixed."""
    return 10 * np.log10(np.maximum(frame_power(pcm, rate, channels), 1e-12))


def sound_span(levels: np.ndarray, silence_db: float) -> tuple[int, int] | None:
    """(first, one past the last) 10 ms frame with sound, None for silence throughout: a frame
    has sound when it is within `silence_db` of the loudest and above SILENCE_FLOOR_DB."""
    if not levels.size:
        return None
    loud = np.flatnonzero(levels >= max(levels.max() - silence_db, SILENCE_FLOOR_DB))
    return (int(loud[0]), int(loud[-1]) + 1) if loud.size else None


def baseline_image(waveform: np.ndarray) -> np.ndarray:
    """The published steps: mel power -> dB re max -> MINMAX to uint8 -> 256x256."""
    if waveform.size == 0:
        return empty_mel()
    power = librosa.feature.melspectrogram(y=waveform, sr=LIBROSA_RATE, n_mels=N_MELS,
                                           hop_length=HOP_LENGTH)  # fmt: skip
    decibels = librosa.power_to_db(power, ref=np.max)
    # cv2.normalize maps a constant image (silence) to zeros instead of dividing by zero.
    scaled = cv2.normalize(decibels, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return cv2.resize(scaled, (MEL_SIZE, MEL_SIZE), interpolation=cv2.INTER_LINEAR)


@dataclass(frozen=True)
class MelMode:
    rate: int  # what ffmpeg decodes to
    channels: int
    waveform: Callable[[bytes, MediaInfo], np.ndarray]
    image: Callable[[np.ndarray], np.ndarray]


MEL_MODES: dict[str, MelMode] = {
    "baseline": MelMode(MOVIEPY_RATE, 2, baseline_waveform, baseline_image),
    "padded": MelMode(MOVIEPY_RATE, 2, padded_waveform, baseline_image),
}


def mel_image(pcm: bytes, info: MediaInfo, config: AudioConfig) -> np.ndarray:
    """The uint8 [256, 256] mel image of decoded audio (zeros when the file has none)."""
    if not info.has_audio:
        return empty_mel()
    if info.duration > config.max_seconds:
        # ffmpeg decoded only max_seconds; both recipes cut or pad to the duration, which
        # on a multi-hour file would allocate hours of audio.
        info = dataclasses.replace(info, duration=config.max_seconds)
    mode = MEL_MODES[config.mode]
    if config.trim_silence_db:
        pcm, info = trim_silence(pcm, info, mode.rate, mode.channels, config.trim_silence_db)
    return mode.image(mode.waveform(pcm, info))


def trim_silence(pcm: bytes, info: MediaInfo, rate: int, channels: int,
                 silence_db: float) -> tuple[bytes, MediaInfo]:  # fmt: skip
    """The PCM from its first to its last 10 ms frame with sound (sound_span), and the
    duration that long: a clip's leading and trailing silence never reaches the mel image.
    Audio silent throughout is kept as it is."""
    span = sound_span(frame_levels(pcm, rate, channels), silence_db)
    if span is None:
        return pcm, info
    frame_bytes = max(rate // 100, 1) * channels * 2
    cut = pcm[span[0] * frame_bytes : span[1] * frame_bytes]
    return cut, dataclasses.replace(info, duration=len(cut) / (2 * channels * rate))
