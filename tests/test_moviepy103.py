"""The in-memory replay of moviepy 1.0.3's WAV writer (real moviepy comparisons: test_audio)."""

from __future__ import annotations

import numpy as np
import pytest

from avcache.preprocess.moviepy103 import QUANTIZED_MAX, RATE, moviepy_wav


@pytest.mark.parametrize("seconds,audio_seconds", [(1.0, 1.2), (2.5, 2.5001), (4.5, 4.6)])
def test_shortcut_equals_the_replay(seconds, audio_seconds):
    rng = np.random.default_rng(0)
    pcm = rng.integers(-32768, 32767, (int(RATE * audio_seconds), 2), dtype=np.int16)
    fast = moviepy_wav(pcm, seconds)
    np.testing.assert_array_equal(fast, moviepy_wav(pcm, seconds, shortcut=False))
    assert fast.shape == (int(RATE * seconds), 2)
    assert fast.max() == QUANTIZED_MAX and fast.min() == -QUANTIZED_MAX


def test_long_clips_lag_one_sample_after_the_first_buffer_refill():
    ramp = np.arange(RATE * 6) % 20000  # no clipping, no int16 overflow
    pcm = np.stack([ramp, ramp], axis=1).astype(np.int16)
    wav = moviepy_wav(pcm, 6.0)[:, 0].astype(int)
    lag = (ramp[: len(wav)] - wav) % 20000
    refill = int(np.argmax(lag != 0))  # the first writer chunk that needs the next buffer
    assert 195000 < refill <= 200000
    assert not lag[:refill].any() and (lag[refill:] == 1).all()


def test_no_samples_raises_like_moviepy():
    with pytest.raises(IndexError):
        moviepy_wav(np.zeros((0, 2), np.int16), 1.0)
