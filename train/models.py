"""Detectors: a registry of model kinds built from timm ResNet18 branches; output: P(fake) logits.

Pretrained weights come from timm's own hub path (`model.pretrained: imagenet`: the
Hugging Face cache, filled from the hub when online) or from a local file through timm's
`pretrained_cfg_overlay`; either way timm adapts conv1 to one channel for the mel and
drops the ImageNet head.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.models import load_state_dict
from torch import nn

from avcache.cache import schema
from avcache.train.config import TRACK_KINDS

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


class LipsTrunk(nn.Module):
    """Mouth sequences [B, W, T, 1, S, S] -> per-step features [B * W, T, 512]: a ResNet18
    on each grey frame (LipForensics' front end, 2D), then temporal convolutions that see
    a few frames either side (lip motion, not one mouth shape)."""

    def __init__(self, pretrained: str | Path | None) -> None:
        super().__init__()
        self.frame = backbone(1, pretrained)
        self.num_features = self.frame.num_features
        self.temporal = temporal_block(self.num_features)

    def forward(self, lips: torch.Tensor) -> torch.Tensor:
        batch, windows, steps = lips.shape[:3]
        frames = self.frame(lips.flatten(0, 2)).view(batch * windows, steps, -1)
        return frames + self.temporal(frames.transpose(1, 2)).transpose(1, 2)


class SpeechTrunk(nn.Module):
    """Audio windows [B, W, L] -> per-step features [B * W, T, 512], one step per track
    frame: a strided convolutional encoder on the waveform (wav2vec's front end: 100
    frames a second at 16 kHz), averaged over each track frame's share of the audio, then
    the same temporal convolutions as the lips."""

    STRIDES = (5, 4, 4, 2)  # 160 samples a step: 100 steps a second at 16 kHz

    def __init__(self, steps: int, num_features: int = 512) -> None:
        super().__init__()
        self.steps = steps  # track frames a window holds: the features' time steps
        widths = (64, 128, 256, num_features)
        layers, previous = [], 1
        for width, stride in zip(widths, self.STRIDES, strict=True):
            layers += [nn.Conv1d(previous, width, 2 * stride, stride, padding=stride // 2),
                       nn.GroupNorm(1, width), nn.GELU()]  # fmt: skip
            previous = width
        self.encoder = nn.Sequential(*layers)
        self.num_features = num_features
        self.temporal = temporal_block(num_features)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        batch, windows, length = audio.shape
        encoded = self.encoder(audio.reshape(batch * windows, 1, length))
        per_frame = nn.functional.adaptive_avg_pool1d(encoded, self.steps)  # [B * W, C, T]
        return (per_frame + self.temporal(per_frame)).transpose(1, 2)


def temporal_block(width: int) -> nn.Module:
    """Two temporal convolutions (kernel 3: a frame and its neighbours) over [N, C, T]."""
    return nn.Sequential(
        nn.Conv1d(width, width // 2, 3, padding=1), nn.BatchNorm1d(width // 2), nn.GELU(),
        nn.Conv1d(width // 2, width, 3, padding=1), nn.BatchNorm1d(width),
    )  # fmt: skip


def pool_steps(steps: torch.Tensor, batch: int) -> torch.Tensor:
    """[B * W, T, C] -> [B, 2C]: mean and max over time, averaged over the windows."""
    pooled = torch.cat([steps.mean(dim=1), steps.amax(dim=1)], dim=1)
    return pooled.view(batch, -1, pooled.shape[1]).mean(dim=1)


def lips_features(trunk: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    lips = inputs[schema.LIPS]
    return pool_steps(trunk(lips), lips.shape[0])


def speech_features(trunk: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    audio = inputs[schema.TRACK_AUDIO]
    return pool_steps(trunk(audio), audio.shape[0])


def _pooled_width(trunk: nn.Module) -> int:
    return 2 * trunk.num_features


@dataclass(frozen=True)
class Branch:
    field: str  # the cache dataset it reads
    build: Callable[[str | Path | None, int], nn.Module]  # (pretrained, track frames)
    features: Callable[[nn.Module, dict], torch.Tensor]  # -> [B, width]
    width: Callable[[nn.Module], int] = lambda module: module.num_features


# Branch name -> what it reads, how it is built and how it makes its features.
BRANCHES: dict[str, Branch] = {
    "mel": Branch(schema.MEL, lambda pretrained, _: backbone(1, pretrained), mel_features),
    "faces": Branch(schema.FACES, lambda pretrained, _: backbone(3, pretrained), face_features),
    "lips": Branch(
        schema.LIPS, lambda pretrained, _: LipsTrunk(pretrained), lips_features, _pooled_width
    ),
    "speech": Branch(
        schema.TRACK_AUDIO, lambda _, steps: SpeechTrunk(steps), speech_features, _pooled_width
    ),
}
# Model kind -> the branches it fuses (`sync` is a model of its own, SyncDetector).
MODELS: dict[str, tuple[str, ...]] = {
    "audio": ("mel",),
    "faces": ("faces",),
    "av": ("mel", "faces"),
    "lips": ("lips",),
    "speech": ("speech",),
    "sync": ("lips", "speech"),
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
                 fusion: str = "concat", track_frames: int = 0) -> None:  # fmt: skip
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"model.fusion {fusion!r} unknown (known: {', '.join(FUSIONS)})")
        self.branches = nn.ModuleDict(
            {name: BRANCHES[name].build(pretrained, track_frames) for name in branches}
        )
        self.fields = tuple(BRANCHES[name].field for name in branches)
        widths = {name: BRANCHES[name].width(branch) for name, branch in self.branches.items()}
        self.either = fusion == "or" and len(branches) > 1
        if self.either:  # one head per branch
            self.head = nn.ModuleDict({name: nn.Sequential(nn.Dropout(0.2), nn.Linear(
                width, 1)) for name, width in widths.items()})  # fmt: skip
        else:
            self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(sum(widths.values()), 1))
        self.modality_dropout = modality_dropout if len(branches) > 1 else 0.0
        self.aux = None
        if aux_heads and len(branches) > 1 and not self.either:
            self.aux = nn.ModuleDict({name: nn.Linear(width, 1)
                                      for name, width in widths.items()})  # fmt: skip
        self.own_losses = aux_heads and len(branches) > 1  # training returns branch logits too

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [B]; while training with aux heads, [B, 1 + branches] (the fused first)."""
        features = [BRANCHES[name].features(branch, inputs)
                    for name, branch in self.branches.items()]  # fmt: skip
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


class SyncDetector(nn.Module):
    """Do the lips move with the speech? SyncNet's question, asked over time.

    The lips and speech trunks give one embedding per track frame, centred over the window
    (what stays put, a face or a voice, says nothing about sync; how each moves does). Their
    cosine similarity at offsets -K..K frames (the audio shifted against the lips), averaged
    over the frames both cover, says how well the two agree and at which lag: a real clip
    peaks at 0, a lip-synced or desynchronised one peaks elsewhere or nowhere. The real/fake
    head reads those similarities alone: given the trunks' pooled features beside them, it
    fits what a face or a voice gives away in the training fakes and leaves the sync
    evidence nearly unread, and a lip-sync fake shows nothing else. What a face or a voice
    alone gives away is the other experts' to find (`avcache-fuse` combines them).

    While training, forward also returns every clip's lips against every clip's speech at
    offset 0, and `training_loss` adds a contrastive term (model.sync_weight): each real
    clip's lips must match its own speech better than the other real clips' speech. Only
    other clips make honest negatives. The same clip's speech at another offset does not:
    both trunks see where a frame sits in the window (their convolutions pad the edges),
    and that alone makes every clip peak at offset 0 while learning nothing about sync.
    """

    OFFSETS = 5  # K: frames either side (0.2 s at 25 fps: wider than any natural lag)
    EMBEDDING = 128

    def __init__(self, pretrained: str | Path | None, track_frames: int,
                 sync_weight: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        self.lips, self.speech = LipsTrunk(pretrained), SpeechTrunk(track_frames)
        self.fields = (schema.LIPS, schema.TRACK_AUDIO)
        self.project_lips = nn.Linear(self.lips.num_features, self.EMBEDDING)
        self.project_speech = nn.Linear(self.speech.num_features, self.EMBEDDING)
        self.temperature = nn.Parameter(torch.tensor(10.0))  # SyncNet's margin, learnt
        self.head = nn.Linear(3 * self.offsets, 1)
        self.sync_weight = sync_weight

    @property
    def offsets(self) -> int:
        return 2 * self.OFFSETS + 1

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [B]; while training [B, 1 + B]: then each clip's lips against the speech
        of every clip of the batch (scaled similarities, the diagonal its own)."""
        lips, audio = inputs[schema.LIPS], inputs[schema.TRACK_AUDIO]
        lip_steps, speech_steps = self.lips(lips), self.speech(audio)  # [B * W, T, C]
        return self.compare(lip_steps, speech_steps, lips.shape[0])

    def compare(self, lip_steps: torch.Tensor, speech_steps: torch.Tensor,
                batch: int) -> torch.Tensor:  # fmt: skip
        """The trunks' per-step features [B * W, T, C] -> forward's output, in fp32.

        The evidence is small differences: each step's departure from its window's mean,
        then similarities that differ by a few hundredths between offsets. bf16 rounds them
        by about as much, so under autocast (CUDA) they are computed in fp32 from the
        trunks' features on (a few small matrix products)."""
        with torch.autocast(lip_steps.device.type, enabled=False):
            return self._evidence(lip_steps.float(), speech_steps.float(), batch)

    def _evidence(self, lip_steps: torch.Tensor, speech_steps: torch.Tensor,
                  batch: int) -> torch.Tensor:  # fmt: skip
        lip_embedding = moving_part(self.project_lips(lip_steps))
        speech_embedding = moving_part(self.project_speech(speech_steps))
        similarity = offset_similarity(lip_embedding, speech_embedding, self.OFFSETS)
        per_offset = similarity.sum(dim=2) / overlap(similarity)
        per_offset = per_offset.view(batch, -1, self.offsets).mean(dim=1)  # [B, 2K + 1]
        peaks = similarity.amax(dim=2).view(batch, -1, self.offsets).mean(dim=1)
        # At the contrastive loss's scale (similarities times the temperature), not in
        # [-1, 1]: a freshly initialised head's logits then move with the evidence at once.
        scaled = self.temperature * per_offset
        summary = torch.cat([scaled, self.temperature * peaks, scaled.softmax(dim=1)], dim=1)
        logits = self.head(summary)
        if not self.training:
            return logits.squeeze(1)
        across = cross_similarity(lip_embedding, speech_embedding, batch)  # [B, B]
        return torch.cat([logits, self.temperature * across], dim=1)

    def training_loss(self, output: torch.Tensor, labels: torch.Tensor,
                      loss_fn: Callable) -> torch.Tensor:  # fmt: skip
        """Real/fake loss, plus sync_weight x cross-entropy that makes each real clip's lips
        most similar to its own speech among the real clips' speech (a fake's speech may be
        another clip's, or its own edited: it is no clean negative, nor a positive)."""
        loss = loss_fn(output[:, 0], labels)
        if not self.sync_weight:
            return loss
        # Masks, not boolean indexing: the batch's count of reals never has to reach the
        # host. A fake's speech is left out of every row but its own, a fake's row weighs
        # nothing, and a lone real clip has only its own speech left: no lesson either.
        real = labels < 0.5
        across = output[:, 1:].float()
        own = torch.eye(len(labels), dtype=torch.bool, device=output.device)
        across = across.masked_fill(~real[None, :] & ~own, float("-inf"))
        target = torch.arange(len(labels), device=output.device)
        contrastive = nn.functional.cross_entropy(across, target, reduction="none")
        return loss + self.sync_weight * (contrastive * real).sum() / real.sum().clamp_min(1)


def moving_part(steps: torch.Tensor) -> torch.Tensor:
    """[N, T, E] -> unit vectors of each step's departure from the window's mean."""
    return nn.functional.normalize(steps - steps.mean(dim=1, keepdim=True), dim=-1)


def offset_similarity(lips: torch.Tensor, speech: torch.Tensor, offsets: int) -> torch.Tensor:
    """[N, T, E] unit embeddings -> [N, 2K + 1, T]: lips at t against speech at t + d for
    d = -K..K (zero where t + d leaves the window)."""
    steps = lips.shape[1]
    padded = nn.functional.pad(speech, (0, 0, offsets, offsets))  # [N, T + 2K, E]
    shifted = padded.unfold(1, steps, 1)  # [N, 2K + 1, E, T]
    return torch.einsum("nte,nket->nkt", lips, shifted)


def overlap(similarity: torch.Tensor) -> torch.Tensor:
    """[2K + 1], on the similarities' device: the frames lips and speech share at each
    offset of offset_similarity's [N, 2K + 1, T] (T - |d|), so that a mean over them does
    not favour offset 0 merely for covering more frames."""
    offsets, steps = similarity.shape[1] // 2, similarity.shape[2]
    lags = torch.arange(-offsets, offsets + 1, device=similarity.device).abs()
    return (steps - lags).clamp_min(1).float()


def cross_similarity(lips: torch.Tensor, speech: torch.Tensor, batch: int) -> torch.Tensor:
    """[B * W, T, E] unit embeddings -> [B, B]: clip i's lips against clip j's speech at
    offset 0, averaged over the frames and windows."""
    windows, steps = lips.shape[0] // batch, lips.shape[1]
    lips = lips.reshape(batch, windows * steps, -1)
    speech = speech.reshape(batch, windows * steps, -1)
    return torch.einsum("ise,jse->ij", lips, speech) / (windows * steps)


def build_model(kind: str, pretrained: str | Path | None = None, modality_dropout: float = 0.0,
                aux_heads: bool = False, fusion: str = "concat", track_frames: int = 0,
                sync_weight: float = 1.0) -> nn.Module:  # fmt: skip
    """A detector of `kind`; the track kinds need the cache's frames per window."""
    if kind not in MODELS:
        raise ValueError(f"model.kind {kind!r} unknown (known: {', '.join(MODELS)})")
    if kind in TRACK_KINDS and track_frames < 1:
        raise ValueError(f"model.kind={kind} reads the cache's aligned tracks: give their "
                         "frames per window (tracks.frames)")  # fmt: skip
    if kind == "sync":
        return SyncDetector(pretrained or None, track_frames, sync_weight)
    return Detector(MODELS[kind], pretrained or None, modality_dropout, aux_heads, fusion,
                    track_frames)  # fmt: skip
