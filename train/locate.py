"""Where in the clip is it fake: a score for every track frame (temporal localisation).

LAV-DF's and AV-Deepfake1M's fakes change a few words of a real clip. `Locator` reads the
clip through its track windows laid end to end (tracks.placement: tile covers the clip;
any placement works, the steps are scored where the windows are) and scores every frame:

- each frame's evidence: the lips and the speech of that instant as the sync model embeds
  them (their departure from the window's mean: how each moves), their similarity at
  offsets -K..K (SyncNet's profile at that frame: a real frame peaks at 0), and the speech's
  own embedding before centring (what a voice sounds like, which centring removes);
- temporal convolutions over the whole clip's frames (dilated: about a second either side
  of a frame), one logit per frame.

It learns from each frame's target (cache/timeline.py: fake where the frame's instant lies
in a fake segment), the frames the clip has only, plus the sync model's contrastive term
over the clips that hold no fake frame. A video's logit is its most confident frame's;
segments and their confidences come from the frame scores (train/segments.py proposals).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from avcache.cache import schema
from avcache.train.augment import MISMATCHED
from avcache.train.models import (
    Model,
    SyncDetector,
    add_sync_trunks,
    bce,
    contrastive_loss,
    cross_similarity,
    frames_held,
    moving_part,
    offset_similarity,
    windows_label,
)


class Locator(Model):
    """Per-frame P(fake) logits over a clip's track windows, and the video's from them."""

    OFFSETS = SyncDetector.OFFSETS
    EMBEDDING = SyncDetector.EMBEDDING
    WIDTH = 128  # the temporal convolutions' channels
    DILATIONS = (1, 2, 4)  # kernel 5 each: 29 frames seen, over a second at 25 fps
    fields = (schema.LIPS, schema.TRACK_AUDIO, schema.TRACK_FRAMES_REAL)
    targets = (schema.FRAME_FAKE,)
    mismatches = (schema.TRACK_AUDIO,)
    localises = True

    def __init__(self, pretrained: str | Path | None, track_frames: int,
                 sync_weight: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        add_sync_trunks(self, pretrained, track_frames)
        self.sync_weight = sync_weight
        layers, width = [], 2 * self.OFFSETS + 1 + 3 * self.EMBEDDING
        for dilation in self.DILATIONS:
            layers += [nn.Conv1d(width, self.WIDTH, 5, padding=2 * dilation, dilation=dilation),
                       nn.BatchNorm1d(self.WIDTH), nn.GELU()]  # fmt: skip
            width = self.WIDTH
        self.temporal = nn.Sequential(*layers, nn.Conv1d(width, 1, 1))

    def forward(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """(the video's logits [B]: its most confident frame's, the training loss given
        `labels`)."""
        steps, across = self._steps(inputs)
        valid = frames_held(inputs[schema.TRACK_FRAMES_REAL], inputs[schema.LIPS].shape[2])
        valid = valid.flatten(1)  # [B, W * T], as the frames' scores
        logits = steps.masked_fill(~valid, float("-inf")).amax(dim=1)
        if labels is None:
            return logits, None
        return logits, self.loss(steps, valid, logits, across, labels, inputs)

    def step_logits(self, inputs: dict[str, torch.Tensor], frames: int = 0) -> torch.Tensor:
        """Each track frame's P(fake) logit [B, W * T], windows in their order."""
        return self._steps(inputs)[0]

    def _steps(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        lips, audio = inputs[schema.LIPS], inputs[schema.TRACK_AUDIO]
        batch, windows, frames = lips.shape[:3]
        lip_steps, speech_steps = self.lips(lips), self.speech(audio)  # [B * W, T, C]
        # As in the sync model, the small differences that are the evidence are computed in
        # fp32 under autocast, and so is the head that reads them.
        with torch.autocast(lip_steps.device.type, enabled=False):
            lip_steps, speech_steps = lip_steps.float(), speech_steps.float()
            voice = self.project_speech(speech_steps)
            lip_moves = moving_part(self.project_lips(lip_steps))
            speech_moves = moving_part(voice)
            similarity = offset_similarity(lip_moves, speech_moves, self.OFFSETS)
            evidence = torch.cat([self.temperature * similarity, lip_moves.transpose(1, 2),
                                  speech_moves.transpose(1, 2),
                                  nn.functional.normalize(voice, dim=-1).transpose(1, 2)],
                                 dim=1)  # fmt: skip
            # [B * W, C, T] -> [B, C, W * T]: the windows one after another in time.
            evidence = evidence.view(batch, windows, -1, frames).permute(0, 2, 1, 3)
            steps = self.temporal(evidence.reshape(batch, -1, windows * frames)).squeeze(1)
            across = cross_similarity(lip_moves, speech_moves, batch)
        return steps, self.temperature * across

    def loss(self, steps: torch.Tensor, valid: torch.Tensor, logits: torch.Tensor,
             across: torch.Tensor, labels: torch.Tensor,
             inputs: dict[str, torch.Tensor]) -> torch.Tensor:  # fmt: skip
        """Every held frame's loss against its target, the video's against whether it holds
        a fake frame, and the contrastive term over the clips that hold none."""
        targets = frame_targets(inputs, labels).flatten(1)
        each = nn.functional.binary_cross_entropy_with_logits(steps, targets, reduction="none")
        frames = (each * valid).sum() / valid.sum().clamp_min(1)
        held = windows_label(inputs, labels)
        loss = frames + bce(logits, held)
        if self.sync_weight:
            loss = loss + contrastive_loss(across, held, self.sync_weight)
        return loss


def frame_targets(inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """[B, W, T] each frame's target: the cache's (FRAME_FAKE) where the batch has them, else
    the video's label at every frame; every frame of a mismatched sample (augment) is fake."""
    lips = inputs[schema.LIPS]
    fake = inputs.get(schema.FRAME_FAKE)
    if fake is None:
        fake = labels[:, None, None].expand(*lips.shape[:3])
    fake = fake.float()
    mismatched = inputs.get(MISMATCHED)
    if mismatched is not None:
        fake = torch.where(mismatched[:, None, None], torch.ones_like(fake), fake)
    return fake
