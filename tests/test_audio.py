"""Mel images: parity with the public baseline recipe, and defined output without sound."""

from __future__ import annotations

import re
import subprocess

import cv2
import librosa
import numpy as np
import pytest

from avcache.preprocess.audio import mel_image
from avcache.preprocess.config import AudioConfig
from avcache.preprocess.media import ffmpeg_binary, read_audio
from tests.media import face_without_audio, silent_clip, talking_face


def ffmpeg_duration(path) -> float:
    """The 'Duration:' line of `ffmpeg -i`, which moviepy parses (10 ms precision)."""
    result = subprocess.run(["ffmpeg", "-nostdin", "-i", str(path)], capture_output=True, text=True)
    hours, minutes, seconds = re.search(r"Duration: (\d+):(\d+):([\d.]+)", result.stderr).groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def published_steps(wav) -> np.ndarray:
    """generate_mel_spectrogram() of the baseline, from its librosa.load on."""
    y, sr = librosa.load(wav)
    S = librosa.feature.melspectrogram(y=y, sr=sr, n_mels=128)
    S_dB = librosa.power_to_db(S, ref=np.max)
    S_dB_normalized = cv2.normalize(S_dB, None, 0, 255, cv2.NORM_MINMAX)
    S_dB_normalized = S_dB_normalized.astype(np.uint8)
    return cv2.resize(S_dB_normalized, (256, 256), interpolation=cv2.INTER_LINEAR)


def ffmpeg_wav_recipe(video, tmp_path) -> np.ndarray:
    """The recipe with ffmpeg writing the 44.1 kHz stereo WAV as moviepy does (the
    container's duration, silence-padded), then librosa.load and the published steps."""
    wav = tmp_path / "extracted_audio.wav"
    subprocess.run(
        [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-y", "-i", str(video), "-vn",
         "-af", "apad", "-t", str(ffmpeg_duration(video)),
         "-ar", "44100", "-ac", "2", "-c:a", "pcm_s16le", str(wav)],
        check=True,
    )  # fmt: skip
    return published_steps(wav)


def moviepy_recipe(video, tmp_path) -> np.ndarray:
    """The baseline exactly as published: moviepy 1.0.3 writes the WAV."""
    import moviepy.editor as mp

    wav = str(tmp_path / "extracted_audio.wav")
    clip = mp.VideoFileClip(str(video))
    clip.audio.write_audiofile(wav, verbose=False, logger=None)
    clip.close()
    return published_steps(wav)


def ours(video, mode: str = "baseline") -> np.ndarray:
    info, pcm = read_audio(video, ffmpeg_binary(), 44100, 2, 600.0)
    return mel_image(pcm, info, AudioConfig(mode=mode))


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape == (256, 256) and a.dtype == b.dtype == np.uint8
    assert a.std() > 20, "the reference should show speech, not a flat image"
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


SAME_LENGTH = {
    "16k mono": dict(seconds=3.0, sample_rate=16000, channels=1),
    "44.1k stereo": dict(seconds=2.5, sample_rate=44100, channels=2, speech_start=1.0),
    "8k, longer than one reader buffer": dict(seconds=6.0, sample_rate=8000, speech_start=2.0),
}
SHORT_AUDIO = {
    "audio 0.1 s shorter than the video": dict(seconds=3.0, audio_seconds=2.9),
    "audio under half the video": dict(seconds=3.0, sample_rate=22050, audio_seconds=1.3),
    "6.5 s video, 6.3 s audio": dict(seconds=6.5, audio_seconds=6.3, speech_start=1.0),
}


@pytest.mark.parametrize("clip", list(SAME_LENGTH))
def test_baseline_mode_matches_the_ffmpeg_wav_recipe(tmp_path, clip):
    video = talking_face(tmp_path / "clip.mp4", **SAME_LENGTH[clip])
    assert mean_abs_diff(ffmpeg_wav_recipe(video, tmp_path), ours(video)) <= 1.0


@pytest.mark.parametrize("clip", list(SAME_LENGTH) + list(SHORT_AUDIO))
def test_baseline_mode_matches_moviepy_1_0_3_bit_for_bit(tmp_path, clip):
    video = talking_face(tmp_path / "clip.mp4", **{**SAME_LENGTH, **SHORT_AUDIO}[clip])
    assert mean_abs_diff(moviepy_recipe(video, tmp_path), ours(video)) == 0.0


def test_padded_mode_differs_only_where_audio_is_short(tmp_path):
    same = talking_face(tmp_path / "same.mp4", **SAME_LENGTH["16k mono"])
    assert mean_abs_diff(ours(same), ours(same, "padded")) == 0.0
    short = talking_face(tmp_path / "short.mp4", **SHORT_AUDIO["audio under half the video"])
    padded = ours(short, "padded")
    assert mean_abs_diff(ffmpeg_wav_recipe(short, tmp_path), padded) <= 1.0
    assert mean_abs_diff(padded, ours(short)) > 5.0, "1.0.3 garbles audio under half a buffer"


def test_silent_audio_gives_zeros_not_nan(tmp_path):
    video = silent_clip(tmp_path / "silent.mp4")
    info, _ = read_audio(video, ffmpeg_binary(), 44100, 2, 600.0)
    assert info.has_audio
    for mode in ("baseline", "padded"):
        np.testing.assert_array_equal(ours(video, mode), np.zeros((256, 256), np.uint8))


def test_no_audio_gives_a_defined_image(tmp_path):
    video = face_without_audio(tmp_path / "mute.mp4")
    info, pcm = read_audio(video, ffmpeg_binary(), 44100, 2, 600.0)
    assert not info.has_audio and info.has_video and pcm == b""
    assert abs(info.duration - 1.0) < 0.05 and info.fps == 25.0 and info.width == 128
    np.testing.assert_array_equal(ours(video), np.zeros((256, 256), np.uint8))
