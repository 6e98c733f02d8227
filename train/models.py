"""Detectors: a registry of model kinds built from timm ResNet18 branches; output: P(fake) logits.

Pretrained weights come from timm's own hub path (`model.pretrained: imagenet`: the
Hugging Face cache, filled from the hub when online) or from a local file through timm's
`pretrained_cfg_overlay`; either way timm adapts conv1 to one channel for the mel and
drops the ImageNet head.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import timm
import torch
from timm.models import load_state_dict
from torch import nn

from avcache.cache import schema

BACKBONE = "resnet18"
IMAGENET = "imagenet"  # model.pretrained: timm's own ImageNet weights, through its hub path


def backbone(in_chans: int, pretrained: str | Path | None) -> nn.Module:
    """ResNet18 without its head (512 features): timm's ImageNet weights, local weights, or
    from scratch."""
    if pretrained is None:
        return timm.create_model(BACKBONE, pretrained=False, num_classes=0, in_chans=in_chans)
    if str(pretrained) == IMAGENET:
        return imagenet_backbone(in_chans)
    pretrained = Path(pretrained)
    if not pretrained.is_file():
        raise FileNotFoundError(
            f"{pretrained}: no such weights file (--pretrained / model.pretrained)"
        )
    try:
        check_backbone_weights(load_state_dict(str(pretrained)))
        return timm.create_model(
            BACKBONE,
            pretrained=True,
            pretrained_cfg_overlay={"file": str(pretrained), "hf_hub_id": None, "url": None},
            num_classes=0,
            in_chans=in_chans,
        )
    except Exception as error:  # whatever the file held: timm, torch and safetensors differ
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(
            f"{pretrained}: not {BACKBONE} weights that timm can load ({reason[:200]}); "
            f"--pretrained takes a {BACKBONE} state dict as .safetensors or .pth"
        ) from None


def imagenet_backbone(in_chans: int) -> nn.Module:
    """timm's ResNet18 ImageNet weights, the way timm users get them: from the Hugging Face
    cache (HF_HOME, HF_HUB_CACHE), downloaded into it when the machine is online."""
    try:
        return timm.create_model(BACKBONE, pretrained=True, num_classes=0, in_chans=in_chans)
    except Exception as error:  # huggingface_hub's offline and network errors differ by version
        hub_id = timm.models.get_pretrained_cfg(BACKBONE).hf_hub_id
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(
            f"model.pretrained={IMAGENET}: timm's {hub_id} weights are not in the Hugging Face "
            f"cache ({hub_cache()}) and could not be downloaded ({reason[:160]}). Fill the "
            'cache once where the network is reachable (python -c "import timm; '
            f"timm.create_model('{BACKBONE}', pretrained=True)\"), copy it here and point "
            "HF_HOME or HF_HUB_CACHE at it, or pass --pretrained PATH with a local weights file"
        ) from None


def hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def check_backbone_weights(weights: dict) -> None:
    """The file holds exactly ResNet18's names and shapes (its head and conv1's input
    channels aside, which timm adapts): timm itself would load a ResNet34's matching
    subset and only log the rest."""
    expected = timm.create_model(BACKBONE, num_classes=0).state_dict()
    ours = {key: value for key, value in weights.items() if not key.startswith("fc.")}
    unexpected = sorted(ours.keys() - expected.keys())
    missing = sorted(expected.keys() - ours.keys())
    reshaped = [key for key in expected.keys() & ours.keys() if key != "conv1.weight"
                and tuple(ours[key].shape) != tuple(expected[key].shape)]  # fmt: skip
    for names, what in ((unexpected, "unexpected"), (missing, "missing"),
                        (reshaped, "of another shape")):  # fmt: skip
        if names:
            raise ValueError(f"{len(names)} weights {what}, e.g. {names[0]}")


def mel_features(backbone: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, 1, 256, 256] mel images -> [B, 512]."""
    return backbone(inputs[schema.MEL])


def face_features(backbone: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, K, 3, S, S] face frames -> per-frame features averaged over the K frames -> [B, 512]."""
    faces = inputs[schema.FACES]
    batch, frames = faces.shape[:2]
    return backbone(faces.flatten(0, 1)).view(batch, frames, -1).mean(dim=1)


# Branch name -> (cache dataset it reads, input channels, feature function).
BRANCHES: dict[str, tuple[str, int, Callable]] = {
    "mel": (schema.MEL, 1, mel_features),
    "faces": (schema.FACES, 3, face_features),
}
# Model kind -> the branches it fuses.
MODELS: dict[str, tuple[str, ...]] = {
    "audio": ("mel",),
    "faces": ("faces",),
    "av": ("mel", "faces"),
}


FUSIONS = ("concat", "or")


class Detector(nn.Module):
    """ResNet18 branches and how their verdicts combine into one P(fake) logit.

    Fusion (av): `concat` feeds both branches' pooled features to one linear head. `or` gives
    each branch a head of its own and calls a video fake when either sense finds it fake,
    P(fake) = 1 - P(mel real) x P(faces real): a fake that one branch already explains costs
    the other nothing, so neither has to learn the other's cues, and each keeps what only it
    can tell (a synthetic voice stays the mel branch's to find).
    Options that keep both senses: `modality_dropout` zeroes one branch's features of a sample
    at random while training; with `aux_heads` each branch also has its own head, trained on
    its own (the trainer weighs their losses with model.aux_weight), so neither stops learning.
    """

    def __init__(self, branches: tuple[str, ...], pretrained: str | Path | None,
                 modality_dropout: float = 0.0, aux_heads: bool = False,
                 fusion: str = "concat") -> None:  # fmt: skip
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"model.fusion {fusion!r} unknown (known: {', '.join(FUSIONS)})")
        self.branches = nn.ModuleDict(
            {name: backbone(BRANCHES[name][1], pretrained) for name in branches}
        )
        self.fields = tuple(BRANCHES[name][0] for name in branches)
        self.either = fusion == "or" and len(branches) > 1
        if self.either:  # one head per branch
            self.head = nn.ModuleDict({name: nn.Sequential(nn.Dropout(0.2), nn.Linear(
                branch.num_features, 1)) for name, branch in self.branches.items()})  # fmt: skip
        else:
            width = sum(branch.num_features for branch in self.branches.values())
            self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(width, 1))
        self.modality_dropout = modality_dropout if len(branches) > 1 else 0.0
        self.aux = None
        if aux_heads and len(branches) > 1 and not self.either:
            self.aux = nn.ModuleDict({name: nn.Linear(branch.num_features, 1)
                                      for name, branch in self.branches.items()})  # fmt: skip
        self.own_losses = aux_heads and len(branches) > 1  # training returns branch logits too

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [B]; while training with aux heads, [B, 1 + branches] (the fused first)."""
        features = [BRANCHES[name][2](branch, inputs) for name, branch in self.branches.items()]
        if self.training and self.modality_dropout:
            features = drop_one_branch(features, self.modality_dropout)
        if self.either:  # the branch heads are the branches' own verdicts
            own = torch.cat([h(f) for h, f in zip(self.head.values(), features, strict=True)], 1)
            logits = either_fake(own)[:, None]
        else:
            logits = self.head(torch.cat(features, dim=1))
        if not (self.training and self.own_losses):
            return logits.squeeze(1)
        if not self.either:
            own = torch.cat([h(f) for h, f in zip(self.aux.values(), features, strict=True)], 1)
        return torch.cat([logits, own], dim=1)


def either_fake(branch_logits: torch.Tensor) -> torch.Tensor:
    """The logit of 1 - prod(1 - sigmoid(l)) over the branches of each row, computed stably:
    -log P(all real) = s = sum softplus(l), so the logit is log(e^s - 1)."""
    real_nll = nn.functional.softplus(branch_logits.float()).sum(dim=1)
    real_nll = real_nll.clamp_min(1e-6)  # every branch sure it is real: e^s - 1 underflows
    return real_nll + torch.log(-torch.expm1(-real_nll))


def drop_one_branch(features: list[torch.Tensor], probability: float) -> list[torch.Tensor]:
    """For a `probability` share of samples, one branch's features (drawn at random) become
    zeros; never every branch of a sample."""
    batch, device = features[0].shape[0], features[0].device
    dropped = torch.rand(batch, device=device) < probability
    which = torch.randint(len(features), (batch,), device=device)
    return [f * ~(dropped & (which == i))[:, None] for i, f in enumerate(features)]


def build_model(kind: str, pretrained: str | Path | None = None, modality_dropout: float = 0.0,
                aux_heads: bool = False, fusion: str = "concat") -> nn.Module:  # fmt: skip
    if kind not in MODELS:
        raise ValueError(f"model.kind {kind!r} unknown (known: {', '.join(MODELS)})")
    return Detector(MODELS[kind], pretrained or None, modality_dropout, aux_heads, fusion)
