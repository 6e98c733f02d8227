"""Detectors: a registry of model kinds built from timm ResNet18 branches; output: P(fake) logits.

Every model is a `Model`: it names the cache fields it reads, gives one logit per sample in
every mode, and computes its own training loss from the labels; the trainer, the loaders and
predict ask it, never its kind's name. MODELS maps each kind to the builder that makes it
from the model config.

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
from avcache.train.augment import MISMATCHED
from avcache.train.config import ModelConfig

BACKBONE = "resnet18"
IMAGENET = "imagenet"  # model.pretrained: timm's own ImageNet weights, through its hub path
TRACK_INPUTS = (schema.LIPS, schema.TRACK_AUDIO)  # what the cache's aligned tracks hold
# What a model may read of a clip's windows and nothing else (one value a window each).
WINDOW_INPUTS = (*TRACK_INPUTS, schema.TRACK_FRAMES_REAL)
# A mismatched pair (augment.av_mismatch) by the field replaced: what a model must read to
# learn from it.
PAIRS = {schema.FACES: (schema.MEL, schema.FACES), schema.TRACK_AUDIO: TRACK_INPUTS}


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


FUSIONS = ("concat", "or")


class Model(nn.Module):
    """A detector as the trainer, the loaders and predict know it, whatever its kind.

    `fields`: the cache datasets it reads (train/config.py MODEL_INPUTS names them for the
    checks that run without torch). `forward(inputs, labels=None)` gives (logits, loss):
    P(fake) logits [B], one per sample in every mode, and, given the labels, the training
    loss the model defines for itself (nanoGPT's model returns its loss so). The loss is
    computed inside forward, which DistributedDataParallel and torch.compile wrap: what it
    needs besides the logits (branch verdicts, cross-clip similarities) stays inside, and
    the output keeps one shape whatever the kind, mode or options.
    """

    fields: tuple[str, ...] = ()
    # What its training loss reads beside `fields` (never needed to score): FRAME_FAKE, each
    # track frame's target (cache/timeline.py), for a model that sees windows of a clip.
    targets: tuple[str, ...] = ()
    # The mismatched pairs it learns from (augment.av_mismatch, train/augment.py): FACES,
    # another video's faces beside a mel; TRACK_AUDIO, other speech than the lips say.
    mismatches: tuple[str, ...] = ()
    # Whether it scores every track frame itself (train/locate.py); a model that reads a
    # clip only through its windows scores each window alone (step_logits).
    localises: bool = False

    @property
    def scores_frames(self) -> bool:
        """Whether step_logits can score its track frames: it localises, or it reads a clip
        through its windows alone."""
        return self.localises or set(self.fields) <= set(WINDOW_INPUTS)

    def step_logits(self, inputs: dict[str, torch.Tensor], frames: int) -> torch.Tensor:
        """Each track frame's P(fake) logit [B, W * T] (T = `frames`): here each window
        scored alone, as a clip of one window, its score given to each of its frames (the
        window classifier's localisation). A model that reads more of a video than its
        windows (a mel, faces) has none."""
        if not self.scores_frames:
            raise ValueError(f"a model reading {', '.join(self.fields)} scores whole videos, "
                             "not frames: train model.kind=locate, or one that reads the "
                             "tracks alone (sync, lips, speech)")  # fmt: skip
        batch, windows = inputs[self.fields[0]].shape[:2]
        alone = {field: inputs[field].flatten(0, 1).unsqueeze(1) for field in self.fields}
        logits, _ = self(alone)
        return logits.view(batch, windows).repeat_interleave(frames, dim=1)


def bce(logits: torch.Tensor, labels: torch.Tensor,
        weights: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Binary cross-entropy of P(fake) logits, in fp32 (bf16 under autocast rounds them);
    with `weights` [B], their weighted mean (samples of weight 0 count for nothing)."""
    if weights is None:
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
    each = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels,
                                                          reduction="none")  # fmt: skip
    return (each * weights).sum() / weights.sum().clamp_min(1)


class Detector(Model):
    """ResNet18 branches and how their verdicts combine into one P(fake) logit.

    Fusion (av): `concat` feeds both branches' pooled features to one linear head. `or` gives
    each branch a head of its own and calls a video fake when either sense finds it fake,
    P(fake) = 1 - P(mel real) x P(faces real): a fake that one branch already explains costs
    the other nothing, so neither has to learn the other's cues, and each keeps what only it
    can tell (a synthetic voice stays the mel branch's to find).
    Options that keep both senses: `modality_dropout` zeroes one branch's features of a sample
    at random while training; with `aux_weight` each branch's own verdict (its own head, or
    its `or` head) is trained too, its loss weighed by aux_weight, so neither stops learning.
    """

    def __init__(self, branches: tuple[str, ...], pretrained: str | Path | None,
                 track_frames: int = 0, modality_dropout: float = 0.0, aux_weight: float = 0.0,
                 fusion: str = "concat") -> None:  # fmt: skip
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"model.fusion {fusion!r} unknown (known: {', '.join(FUSIONS)})")
        self.branches = nn.ModuleDict(
            {name: BRANCHES[name].build(pretrained, track_frames) for name in branches}
        )
        self.fields = tuple(BRANCHES[name].field for name in branches)
        self.sees_windows = set(self.fields) <= set(TRACK_INPUTS)  # the lips, the speech
        self.targets = (schema.FRAME_FAKE,) if self.sees_windows else ()
        self.mismatches = tuple(replaced for replaced, pair in PAIRS.items()
                                if set(pair) <= set(self.fields))  # fmt: skip
        widths = {name: BRANCHES[name].width(branch) for name, branch in self.branches.items()}
        self.either = fusion == "or" and len(branches) > 1
        if self.either:  # one head per branch
            self.head = nn.ModuleDict({name: nn.Sequential(nn.Dropout(0.2), nn.Linear(
                width, 1)) for name, width in widths.items()})  # fmt: skip
        else:
            self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(sum(widths.values()), 1))
        self.modality_dropout = modality_dropout if len(branches) > 1 else 0.0
        self.aux_weight = aux_weight if len(branches) > 1 else 0.0  # one branch: its verdict
        self.aux = None
        if self.aux_weight and not self.either:  # the `or` heads are the branches' verdicts
            self.aux = nn.ModuleDict({name: nn.Linear(width, 1)
                                      for name, width in widths.items()})  # fmt: skip

    def forward(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """(logits [B], the training loss given `labels`)."""
        features = self._features(inputs)
        own = None  # [B, branches]: each branch's own verdict, where it has one
        if self.either:
            own = self._verdicts(features)
            logits = either_fake(own)
        else:
            logits = self.head(torch.cat(features, dim=1)).squeeze(1)
        if labels is None:
            return logits, None
        if self.sees_windows:
            labels = windows_label(inputs, labels)
        if self.aux is not None:
            own = torch.cat([h(f) for h, f in zip(self.aux.values(), features, strict=True)], 1)
        return logits, self.loss(logits, own if self.aux_weight else None, labels)

    def verdicts(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each branch's own P(fake) logit [B, branches] (fusion `or`: its own head)."""
        return self._verdicts(self._features(inputs))

    def _features(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        features = [BRANCHES[name].features(branch, inputs)
                    for name, branch in self.branches.items()]  # fmt: skip
        if self.training and self.modality_dropout:
            features = drop_one_branch(features, self.modality_dropout)
        return features

    def _verdicts(self, features: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([h(f) for h, f in zip(self.head.values(), features, strict=True)], 1)

    def loss(self, logits: torch.Tensor, own: torch.Tensor | None,
             labels: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """The fused verdict's loss, plus aux_weight x each branch verdict's in `own`."""
        if own is None:
            return bce(logits, labels)
        branch_losses = [bce(column, labels) for column in own.unbind(1)]
        return bce(logits, labels) + self.aux_weight * sum(branch_losses)


def windows_label(inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """The labels of a model that sees a clip only through its windows: fake where one of
    them holds a fake frame (FRAME_FAKE, where the batch has it: a LAV-DF fake whose windows
    all miss its fake words is, to them, a real clip), `labels` where the batch has no frame
    targets or augmentation mismatched the sample (it made the sample fake)."""
    fake = inputs.get(schema.FRAME_FAKE)
    if fake is None:
        return labels
    frames_real = inputs.get(schema.TRACK_FRAMES_REAL)
    if frames_real is not None:  # only the frames the clip has
        fake = fake * frames_held(frames_real, fake.shape[-1])
    held = fake.flatten(1).amax(dim=1).to(labels.dtype)
    mismatched = inputs.get(MISMATCHED)
    return held if mismatched is None else torch.where(mismatched, labels, held)


def frames_held(frames_real: torch.Tensor, frames: int) -> torch.Tensor:
    """bool [B, W, T]: the track frames each clip has, from its windows' counts [B, W] (past
    its end a tiled window has none; a short clip's last window repeats its last frame)."""
    steps = torch.arange(frames, device=frames_real.device)
    return steps < frames_real[..., None].to(steps.dtype)


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


class SyncDetector(Model):
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

    Its training loss adds a contrastive term (model.sync_weight, `contrastive_loss`) over
    every clip's lips against every clip's speech at offset 0: each real clip's lips must
    match its own speech better than the other real clips' speech. Only other clips make
    honest negatives. The same clip's speech at another offset does not: both trunks see
    where a frame sits in the window (their convolutions pad the edges), and that alone
    makes every clip peak at offset 0 while learning nothing about sync.
    """

    OFFSETS = 5  # K: frames either side (0.2 s at 25 fps: wider than any natural lag)
    EMBEDDING = 128
    fields = (schema.LIPS, schema.TRACK_AUDIO)
    targets = (schema.FRAME_FAKE,)
    mismatches = (schema.TRACK_AUDIO,)

    def __init__(self, pretrained: str | Path | None, track_frames: int,
                 sync_weight: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        add_sync_trunks(self, pretrained, track_frames)
        self.head = nn.Linear(3 * self.offsets, 1)
        self.sync_weight = sync_weight

    @property
    def offsets(self) -> int:
        return 2 * self.OFFSETS + 1

    def forward(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """(logits [B], the training loss given `labels`)."""
        logits, across = self.evidence(inputs)
        if labels is None:
            return logits, None
        return logits, self.loss(logits, across, windows_label(inputs, labels))

    def evidence(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B], each clip's lips against every clip's speech [B, B]): `compare`'s."""
        lips, audio = inputs[schema.LIPS], inputs[schema.TRACK_AUDIO]
        lip_steps, speech_steps = self.lips(lips), self.speech(audio)  # [B * W, T, C]
        return self.compare(lip_steps, speech_steps, lips.shape[0])

    def compare(self, lip_steps: torch.Tensor, speech_steps: torch.Tensor,
                batch: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """The trunks' per-step features [B * W, T, C] -> (logits [B], each clip's lips
        against the speech of every clip of the batch [B, B]: scaled similarities, the
        diagonal its own), in fp32.

        The evidence is small differences: each step's departure from its window's mean,
        then similarities that differ by a few hundredths between offsets. bf16 rounds them
        by about as much, so under autocast (CUDA) they are computed in fp32 from the
        trunks' features on (a few small matrix products)."""
        with torch.autocast(lip_steps.device.type, enabled=False):
            return self._evidence(lip_steps.float(), speech_steps.float(), batch)

    def _evidence(self, lip_steps: torch.Tensor, speech_steps: torch.Tensor,
                  batch: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
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
        logits = self.head(summary).squeeze(1)
        across = cross_similarity(lip_embedding, speech_embedding, batch)  # [B, B]
        return logits, self.temperature * across

    def loss(self, logits: torch.Tensor, across: torch.Tensor,
             labels: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """The real/fake loss, plus the contrastive term weighed by model.sync_weight."""
        loss = bce(logits, labels)
        if not self.sync_weight:
            return loss
        return loss + contrastive_loss(across, labels, self.sync_weight)


def add_sync_trunks(model: nn.Module, pretrained: str | Path | None, track_frames: int) -> None:
    """The lips and speech trunks, their projections to SyncDetector.EMBEDDING and the
    similarities' temperature (SyncNet's margin, learnt), as `model`'s modules, built in
    this order (the sync model of a seed and its relatives start from the same weights)."""
    model.lips, model.speech = LipsTrunk(pretrained), SpeechTrunk(track_frames)
    model.project_lips = nn.Linear(model.lips.num_features, SyncDetector.EMBEDDING)
    model.project_speech = nn.Linear(model.speech.num_features, SyncDetector.EMBEDDING)
    model.temperature = nn.Parameter(torch.tensor(10.0))


def contrastive_loss(across: torch.Tensor, labels: torch.Tensor,
                     weight: float = 1.0) -> torch.Tensor:  # fmt: skip
    """`weight` x the cross-entropy that makes each real clip's lips most similar to its own
    speech among the real clips' speech, averaged over the real clips; `across` [B, B]: the
    lips of clip i against the speech of clip j. A fake's speech may be another clip's, or
    its own edited: it is no clean negative, nor a positive."""
    # Masks, not boolean indexing: the batch's count of reals never has to reach the host.
    # A fake's speech is left out of every row but its own, a fake's row weighs nothing,
    # and a lone real clip has only its own speech left: no lesson either.
    real = labels < 0.5
    across = across.float()
    own = torch.eye(len(labels), dtype=torch.bool, device=across.device)
    across = across.masked_fill(~real[None, :] & ~own, float("-inf"))
    target = torch.arange(len(labels), device=across.device)
    contrastive = nn.functional.cross_entropy(across, target, reduction="none")
    return weight * (contrastive * real).sum() / real.sum().clamp_min(1)


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


class EveryView(Model):
    """Every view of a video in one detector: the mel, the faces, and the lips against the
    speech, each with a verdict of its own (the mel's and the faces' heads as Detector's
    `or` fusion has them, and SyncDetector's evidence), the video fake when any view finds
    it fake (either_fake).

    How each view learns (`loss`): the lips against the speech exactly as the sync model
    does, on their own verdict; the mel and the faces from the fused verdict with sync's
    verdict held fixed in it, so that a fake sync already sees costs them nothing and they
    learn what it cannot see (a synthetic voice, a pasted face) instead of guessing at what
    it sees, plus model.aux_weight x each one's own verdict. Its mismatched pairs are sync's
    (other speech than the lips say, augment.av_mismatch): the mel's and the faces' terms
    leave them out (they hear and see a real video)."""

    targets = (schema.FRAME_FAKE,)
    mismatches = (schema.TRACK_AUDIO,)

    def __init__(self, pretrained: str | Path | None, track_frames: int,
                 aux_weight: float = 0.0, sync_weight: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        # Sync first: it starts from the weights the sync model of the same seed starts
        # from. Built after the mel's and the faces' trunks, with the same sync loss, its
        # verdict scored clearly below the sync model's on held-out desync fakes in each
        # seed tried; built first, it matched.
        self.sync = SyncDetector(pretrained, track_frames, sync_weight)
        self.senses = Detector(("mel", "faces"), pretrained, track_frames, fusion="or")
        self.fields = (*self.senses.fields, *self.sync.fields)
        self.aux_weight = aux_weight

    def forward(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """(logits [B], the training loss given `labels`)."""
        sync, across = self.sync.evidence(inputs)
        own = torch.cat([self.senses.verdicts(inputs).float(), sync.float()[:, None]], dim=1)
        logits = either_fake(own)  # [B], of own [B, views]: mel, faces, sync
        if labels is None:
            return logits, None
        return logits, self.loss(own, across, labels, inputs.get(MISMATCHED),
                                 windows_label(inputs, labels))  # fmt: skip

    def loss(self, own: torch.Tensor, across: torch.Tensor, labels: torch.Tensor,
             mismatched: torch.Tensor | None,
             held: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """The sync model's loss on sync's verdict (own[:, -1]) against `held` (whether its
        windows hold a fake frame; `labels` where not given); the fused verdict's, with
        sync's detached, and aux_weight x each sense's own, on the samples the senses can
        see (not `mismatched`)."""
        seen = torch.ones_like(labels) if mismatched is None else (~mismatched).float()
        sync_fixed = torch.cat([own[:, :-1], own[:, -1:].detach()], dim=1)
        loss = self.sync.loss(own[:, -1], across, labels if held is None else held)
        loss = loss + bce(either_fake(sync_fixed), labels, seen)
        if not self.aux_weight:
            return loss
        return loss + self.aux_weight * sum(bce(column, labels, seen)
                                            for column in own[:, :-1].unbind(1))  # fmt: skip


def check_track_frames(kind: str, fields: tuple[str, ...], track_frames: int) -> None:
    """A model that reads the cache's aligned tracks is built for their frames per window."""
    if set(fields) & set(TRACK_INPUTS) and track_frames < 1:
        raise ValueError(f"model.kind={kind} reads the cache's aligned tracks: give their "
                         "frames per window (tracks.frames)")  # fmt: skip


def fused(*branches: str) -> Callable[[ModelConfig, int], Model]:
    """The builder of a kind whose Detector fuses `branches`."""
    fields = tuple(BRANCHES[name].field for name in branches)

    def build(config: ModelConfig, track_frames: int) -> Model:
        check_track_frames(config.kind, fields, track_frames)
        return Detector(branches, config.pretrained or None, track_frames,
                        config.modality_dropout, config.aux_weight, config.fusion)  # fmt: skip

    return build


def synced(config: ModelConfig, track_frames: int) -> Model:
    """The builder of `sync`: lips against speech over time (SyncDetector)."""
    check_track_frames(config.kind, SyncDetector.fields, track_frames)
    return SyncDetector(config.pretrained or None, track_frames, config.sync_weight)


def every_view(config: ModelConfig, track_frames: int) -> Model:
    """The builder of `all`: every view, each with its own verdict (EveryView)."""
    check_track_frames(config.kind, TRACK_INPUTS, track_frames)
    return EveryView(config.pretrained or None, track_frames, config.aux_weight,
                     config.sync_weight)  # fmt: skip


def locating(config: ModelConfig, track_frames: int) -> Model:
    """The builder of `locate`: a score for every track frame (train/locate.py, which builds
    on this module's trunks)."""
    from avcache.train.locate import Locator

    check_track_frames(config.kind, TRACK_INPUTS, track_frames)
    return Locator(config.pretrained or None, track_frames, config.sync_weight)


# Model kind -> its builder, from the model config and the cache's track frames per window.
MODELS: dict[str, Callable[[ModelConfig, int], Model]] = {
    "audio": fused("mel"),
    "faces": fused("faces"),
    "av": fused("mel", "faces"),
    "lips": fused("lips"),
    "speech": fused("speech"),
    "sync": synced,
    "all": every_view,
    "locate": locating,
}


def build_model(config: ModelConfig, track_frames: int = 0) -> Model:
    """The detector of `config.kind`; the track kinds need the cache's frames per window."""
    if config.kind not in MODELS:
        raise ValueError(f"model.kind {config.kind!r} unknown (known: {', '.join(MODELS)})")
    return MODELS[config.kind](config, track_frames)
