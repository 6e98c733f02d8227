"""A run's P(fake) of each track frame of cached samples, for the pictures (`sheet --video
--run`, `gallery --run`): a locate model's own frame scores, another track model's window
by window (Model.step_logits), computed as the run's own localisation computes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avcache.cache import schema
from avcache.cache.reader import Cache
from avcache.cache.remote import location
from avcache.cache.timeline import frame_times


class FrameScorer:
    """The run's model, built once from RUN/best.pt, scoring samples of `cache` (read from
    its shards) one at a time. ValueError (FileNotFoundError too) names the run where it
    cannot score them."""

    def __init__(self, run: Path, cache: Cache) -> None:
        from avcache.train.engine import LOCATING
        from avcache.train.runs import RunFolder

        if cache.tracks is None:
            raise ValueError(f"{cache.location} holds no tracks: no frame to score")
        self.layout = cache.tracks
        self.trainer = RunFolder(run, cache=location(cache.location)).trainer(best=True)
        if not self.trainer.model.scores_frames:
            kind = self.trainer.config.model.kind
            raise ValueError(f"model.kind={kind} scores whole videos, not their frames (locate "
                             "does; sync, lips and speech window by window)")  # fmt: skip
        self.trainer.model.eval()
        self.fields = (*self.trainer.fields, *LOCATING)

    def __call__(self, sample: schema.Sample) -> np.ndarray:
        """P(fake) of each of the sample's track frames [W * T], windows in order."""
        from avcache.train.batches import cached_batch

        batch = cached_batch(sample, self.fields)
        return self.trainer.frame_scores(batch, self.layout.frames)[0]

    def held(self, sample: schema.Sample) -> tuple[np.ndarray, np.ndarray]:
        """(instants [S] in seconds, P(fake) [S]) of the frames the clip has, in time order."""
        scores = self(sample)
        tracks = sample.tracks
        times = frame_times(tracks.start, self.layout.frames, self.layout.fps).reshape(-1)
        mine = (np.arange(self.layout.frames) < tracks.frames_real[:, None]).reshape(-1)
        order = np.argsort(times[mine], kind="stable")
        return times[mine][order], scores[mine][order]
