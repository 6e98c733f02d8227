"""Which instants of a clip are fake: each track frame's target, from its sample's label and
fake segments.

A LAV-DF or AV-Deepfake1M fake changes a few words of a real clip and leaves the rest real,
so a window of it is fake only where it holds one of those words. A track frame
(preprocess/tracks.py) stands for the middle of its frame period, start + (t + 0.5) / fps
seconds into the clip; it is fake where that instant lies inside one of the sample's fake
segments. A fake whose segments are not known (FFDV's lists, a whole-clip fake) is fake at
every instant, a real clip at none; a sample without a target (label -1) is -1 throughout.
Nothing here is stored: readers derive it from the columns the cache holds.
"""

from __future__ import annotations

import numpy as np

from avcache.cache import schema


def frame_times(starts: np.ndarray, frames: int, fps: float) -> np.ndarray:
    """float64 [..., W, T]: the instant each track frame stands for, seconds into the clip,
    from the windows' first frames `starts` [..., W] (seconds)."""
    return starts[..., None] + (np.arange(frames) + 0.5) / fps


def frame_fake(starts: np.ndarray, frames: int, fps: float, label: int,
               segments: np.ndarray | None) -> np.ndarray:  # fmt: skip
    """float32 [W, T] of one sample: 1 where the frame's instant is fake, 0 where real, -1
    throughout without a target; `segments` [k, 2] seconds, or None (or none listed) where
    its fakes are not known."""
    shape = (len(starts), frames)
    if label not in (schema.LABEL_FAKE, schema.LABEL_REAL):
        return np.full(shape, -1.0, np.float32)
    if label == schema.LABEL_REAL:
        return np.zeros(shape, np.float32)
    if segments is None or not len(segments):
        return np.ones(shape, np.float32)
    times = frame_times(np.asarray(starts, np.float64), frames, fps)
    inside = (times[..., None] >= segments[:, 0]) & (times[..., None] < segments[:, 1])
    return inside.any(axis=-1).astype(np.float32)
