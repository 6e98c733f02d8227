"""Detectors: a registry of model kinds built from timm ResNet18 branches; output: P(fake) logits.

Pretrained weights come only from a local file through timm's
`pretrained_cfg_overlay` (which adapts conv1 to one channel and drops the
ImageNet head); nothing is ever downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from torch import nn

from cache import schema

log = logging.getLogger("avcache.train")
BACKBONE = "resnet18"


def backbone(in_chans: int, pretrained: Path | None) -> nn.Module:
    """ResNet18 without its head (512 features), from local weights or from scratch."""
    if pretrained is None:
        return timm.create_model(BACKBONE, pretrained=False, num_classes=0, in_chans=in_chans)
    if not pretrained.is_file():
        raise FileNotFoundError(
            f"{pretrained}: no such weights file (--pretrained / model.pretrained)"
        )
    return timm.create_model(
        BACKBONE,
        pretrained=True,
        pretrained_cfg_overlay={"file": str(pretrained), "hf_hub_id": None, "url": None},
        num_classes=0,
        in_chans=in_chans,
    )


class AudioNet(nn.Module):
    """ResNet18 on the one-channel mel image."""

    fields = (schema.MEL,)

    def __init__(self, pretrained: Path | None) -> None:
        super().__init__()
        self.mel = backbone(1, pretrained)
        self.head = nn.Linear(self.mel.num_features, 1)

    def features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mel(inputs[schema.MEL])

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.features(inputs)).squeeze(1)


class FacesNet(nn.Module):
    """ResNet18 on every face frame, features averaged over the frames of a video."""

    fields = (schema.FACES,)

    def __init__(self, pretrained: Path | None) -> None:
        super().__init__()
        self.faces = backbone(3, pretrained)
        self.head = nn.Linear(self.faces.num_features, 1)

    def features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        faces = inputs[schema.FACES]  # [B, K, 3, S, S]
        batch, frames = faces.shape[:2]
        per_frame = self.faces(faces.flatten(0, 1))
        return per_frame.view(batch, frames, -1).mean(dim=1)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.features(inputs)).squeeze(1)


class AudioVisualNet(nn.Module):
    """Both branches; their pooled features concatenated into one linear head."""

    fields = (schema.MEL, schema.FACES)

    def __init__(self, pretrained: Path | None) -> None:
        super().__init__()
        self.audio = AudioNet(pretrained)
        self.video = FacesNet(pretrained)
        width = self.audio.mel.num_features + self.video.faces.num_features
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(width, 1))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        joined = torch.cat([self.audio.features(inputs), self.video.features(inputs)], dim=1)
        return self.head(joined).squeeze(1)


MODELS: dict[str, Callable[[Path | None], nn.Module]] = {
    "audio": AudioNet,
    "faces": FacesNet,
    "av": AudioVisualNet,
}


def build_model(kind: str, pretrained: str | Path | None = None) -> nn.Module:
    if kind not in MODELS:
        raise ValueError(f"model.kind {kind!r} unknown (known: {', '.join(MODELS)})")
    if pretrained is None:
        log.warning("no pretrained weights given (--pretrained PATH): training from scratch")
    return MODELS[kind](Path(pretrained) if pretrained else None)
