"""Mel images: parity with the public baseline recipe, and defined output without sound."""

from __future__ import annotations

import re
import subprocess

import cv2
import librosa
import numpy as np
import pytest

from preprocess.audio import mel_image
from preprocess.config import AudioConfig
from preprocess.media import probe
from tests.media import face_without_audio, silent_clip, talking_face


def ffmpeg_duration(path) -> float:
    """The 'Duration:' line of `ffmpeg -i`, which moviepy parses (10 ms precision)."""
    result = subprocess.run(["ffmpeg", "-nostdin", "-i", str(path)], capture_output=True, text=True)
    hours, minutes, seconds = re.search(r"Duration: (\d+):(\d+):([\d.]+)", result.stderr).groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def baseline_recipe(video, tmp_path) -> np.ndarray:
    """The published function, run as published: a 44.1 kHz stereo WAV on disk as moviepy
    writes it (the container duration, silence-padded), then librosa.load and the steps."""
    wav = tmp_path / "extracted_audio.wav"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(video), "-vn",
         "-af", "apad", "-t", str(ffmpeg_duration(video)),
         "-ar", "44100", "-ac", "2", "-c:a", "pcm_s16le", str(wav)],
        check=True,
    )  # fmt: skip
    y, sr = librosa.load(wav)
    S = librosa.feature.melspectrogram(y=y, sr=sr, n_mels=128)
    S_dB = librosa.power_to_db(S, ref=np.max)
    S_dB_normalized = cv2.normalize(S_dB, None, 0, 255, cv2.NORM_MINMAX)
    S_dB_normalized = S_dB_normalized.astype(np.uint8)
    return cv2.resize(S_dB_normalized, (256, 256), interpolation=cv2.INTER_LINEAR)


def ours(video) -> np.ndarray:
    return mel_image(video, probe(video), AudioConfig())


CLIPS = {
    "16k mono": dict(seconds=3.0, sample_rate=16000, channels=1),
    "44.1k stereo": dict(seconds=2.5, sample_rate=44100, channels=2, speech_start=1.0),
    "22.05k, audio shorter than video": dict(seconds=3.0, sample_rate=22050, audio_seconds=1.7),
    "8k, long": dict(seconds=6.0, sample_rate=8000, speech_start=2.0),
}


@pytest.mark.parametrize("clip", list(CLIPS))
def test_baseline_mode_matches_the_published_recipe(tmp_path, clip):
    video = talking_face(tmp_path / "clip.mp4", **CLIPS[clip])
    reference, mine = baseline_recipe(video, tmp_path), ours(video)
    assert mine.shape == (256, 256) and mine.dtype == np.uint8
    assert reference.std() > 20, "the reference should show speech, not a flat image"
    mad = np.abs(reference.astype(int) - mine.astype(int)).mean()
    assert mad <= 1.0, f"mean absolute difference {mad:.3f} grey levels"


def test_silent_audio_gives_zeros_not_nan(tmp_path):
    video = silent_clip(tmp_path / "silent.mp4")
    info = probe(video)
    assert info.has_audio
    np.testing.assert_array_equal(ours(video), np.zeros((256, 256), np.uint8))


def test_no_audio_gives_a_defined_image(tmp_path):
    video = face_without_audio(tmp_path / "mute.mp4")
    info = probe(video)
    assert not info.has_audio and info.has_video
    np.testing.assert_array_equal(ours(video), np.zeros((256, 256), np.uint8))
