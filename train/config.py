"""The training config: every key, its default and what it does.

configs/train.yaml mirrors these defaults; configs/train_baseline.yaml is the
public baseline's recipe (audio only, Adam 3e-3, StepLR(4, 0.85), batch 40).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avcache.cache import schema
from avcache.cache.reader import Cache
from avcache.cache.remote import RemoteSettings, parse_size
from avcache.cache.schema import TrackLayout
from avcache.common.config import LOCAL, SINCE_ADDED, ConfigError

# The model kinds and the cache datasets each reads (train/models.py MODELS builds a branch
# for each), named here so that the config, avcache-train --help and the checks of a cache
# against a run need no torch; and the kinds that read the cache's aligned tracks.
MODEL_INPUTS: dict[str, tuple[str, ...]] = {
    "audio": (schema.MEL,),
    "faces": (schema.FACES,),
    "av": (schema.MEL, schema.FACES),
    "lips": (schema.LIPS,),
    "speech": (schema.TRACK_AUDIO,),
    "sync": (schema.LIPS, schema.TRACK_AUDIO),
    "all": (schema.MEL, schema.FACES, schema.LIPS, schema.TRACK_AUDIO),
    "locate": (schema.LIPS, schema.TRACK_AUDIO, schema.TRACK_FRAMES_REAL),
}
MODEL_KINDS = tuple(MODEL_INPUTS)
# The kinds that read the aligned tracks (the protocols cache tracks only for these).
TRACK_KINDS = tuple(kind for kind, fields in MODEL_INPUTS.items() if schema.LIPS in fields
                    or schema.TRACK_AUDIO in fields)  # fmt: skip


@dataclass
class ModelConfig:
    # all (the default: the mel, the faces and lips against speech, each with its own verdict,
    # either-sense; needs a cache with tracks); audio (mel), faces (face frames), av (both,
    # fused); lips (mouth frames), speech (the same instants' audio), sync (lips against
    # speech); train/models.py. Chosen on held-out kinds of fake: docs/generalisation.md.
    # locate: a score for every track frame, where in the clip it is fake (train/locate.py)
    kind: str = "all"
    # The weights a new run starts from. LOCAL: files to read, so a resumed or scoring run never
    # reads them from its run folder (its checkpoint holds its weights).
    pretrained: str | None = field(default=None, metadata=LOCAL)  # imagenet (timm's), a file
    init: str | None = field(default=None, metadata=LOCAL)  # an avcache checkpoint (RUN/last.pt)
    frames: int | None = None  # face frames used per video (None: all that were cached)
    mel_size: int = 256  # mel images are resized to this on the device (smaller: faster, coarser)
    modality_dropout: float = 0.0  # av, training: chance a sample loses one branch's features
    aux_weight: float = 0.0  # av: weight of each branch's own head and loss (0: no such heads)
    fusion: str = "concat"  # av: concat (one head on both branches) or or (fake if either is)
    sync_weight: float = 1.0  # sync: weight of the contrastive loss that aligns lips and speech


@dataclass
class CacheSource:
    """One cache of a mix (data.caches): where it is, its share of the training samples, and
    the name its metrics go by (default: the folder's name)."""

    path: str
    weight: float = 1.0  # its share is weight / the sum of weights (0: validated, not trained)
    name: str | None = None

    @staticmethod
    def parse(text: str) -> CacheSource:
        """The short form of the command line: `DIR:WEIGHT`, or `DIR` (weight 1)."""
        path, sep, tail = text.rpartition(":")
        try:
            return CacheSource(path, float(tail)) if sep and path else CacheSource(text)
        except ValueError:  # a colon that is part of the folder's name
            return CacheSource(text)

    @property
    def label(self) -> str:
        return self.name or Path(self.path).name


@dataclass
class DataConfig:
    # Caches to train on together (train/mix.py): a list of {path, weight, name} or, on the
    # command line, DIR:WEIGHT; empty: the one cache --cache names.
    caches: list[CacheSource | str] = field(default_factory=list, metadata=SINCE_ADDED)
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = 64
    block_size: int = 16  # samples per h5py read; a batch mixes batch_size / block_size blocks
    shard_group: int = 8  # shards whose blocks are shuffled together
    # DataLoader worker processes: auto (from this rank's cores and the model kind, see
    # train/loading.py auto_workers), or a number (0: read in the training process)
    workers: int | str = "auto"
    prefetch: int = 4  # batches each worker keeps ready ahead of the step
    decode: str = "cpu"  # JPEG faces: cpu (in the workers), cuda (batched on the GPU), auto
    # Caches on object storage (s3://bucket/prefix as --cache or in data.caches; cache/remote.py):
    # the local folder their shards are downloaded into (null: AVCACHE_REMOTE_CACHE, else
    # ~/.cache/avcache/remote), the bytes they may take there (null: AVCACHE_REMOTE_CACHE_LIMIT,
    # else 64G), and an S3-compatible store's endpoint (null: AWS_ENDPOINT_URL, else AWS).
    remote_cache: str | None = field(default=None, metadata=SINCE_ADDED)
    remote_cache_limit: int | str | None = field(default=None, metadata=SINCE_ADDED)
    remote_endpoint: str | None = field(default=None, metadata=SINCE_ADDED)
    # Shards a worker downloads before it needs them, in the order it will read them, so that
    # downloads overlap reading (fewer where data.remote_cache_limit leaves no room for them).
    remote_fetch_ahead: int = field(default=8, metadata=SINCE_ADDED)

    def __post_init__(self) -> None:
        self.caches = [CacheSource.parse(c) if isinstance(c, str) else c for c in self.caches]


@dataclass
class OptimConfig:
    name: str = "adamw"  # adam, adamw, sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine (per epoch, to zero), step (StepLR), constant
    step_size: int = 4  # StepLR: epochs between decays
    gamma: float = 0.85  # StepLR: decay factor
    accumulate: int = 1  # batches per optimiser step (a step sees batch_size x accumulate x ranks)


@dataclass
class AugmentConfig:
    hflip: float = 0.5  # probability of flipping mel images left-right (time) and faces
    vflip: float = 0.0  # probability of flipping mel images upside down (the baseline does)
    time_mask: int = 24  # mel: width of one random time mask in columns (0: off)
    freq_mask: int = 16  # mel: height of one random frequency mask in rows (0: off)
    # Share of a batch whose senses are mismatched and labelled fake: av, another video's faces;
    # sync, another clip's speech or its own shifted (train/augment.py)
    av_mismatch: float = 0.0


@dataclass
class RunConfig:
    epochs: int = 8
    seed: int = 0  # one seed for init, shuffling and augmentation
    device: str = "auto"  # auto (cuda when available), cpu, cuda
    amp: bool = True  # bf16 autocast on CUDA
    channels_last: bool = True  # on CUDA
    compile: bool = False  # torch.compile the model
    # CPU threads for torch in each rank: about the cores the DataLoader workers leave, divided
    # by the ranks; 1 on a shared or busy machine (2 ran 2-3x slower than 1 on a busy 2-core
    # one). 0: torch's default, every core, which oversubscribes those the workers use.
    threads: int = 0
    checkpoint_every: int = 0  # optimiser steps between mid-epoch checkpoints (0: epoch ends only)
    # Write RUN/tensorboard (each epoch's metrics and ROC curve) where the tensorboard package
    # is installed; train/board.py.
    tensorboard: bool = True


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _is_size(value: object) -> bool:
    try:
        return value is None or parse_size(value) > 0
    except ValueError:
        return False


# (key, test, what it must be): every value a run needs, checked before anything is built.
RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("model.kind", lambda v: v in MODEL_KINDS, "one of " + ", ".join(MODEL_KINDS)),
    ("model.sync_weight", lambda v: 0 <= v < math.inf, "0 or more"),
    ("model.frames", lambda v: v is None or v >= 1, "at least 1, or null for all cached"),
    ("model.mel_size", lambda v: 32 <= v <= 1024, "between 32 and 1024"),
    ("data.batch_size", lambda v: v >= 1, "at least 1"),
    ("data.block_size", lambda v: v >= 1, "at least 1"),
    ("data.shard_group", lambda v: v >= 1, "at least 1"),
    ("data.workers", lambda v: v == "auto" or (type(v) is int and v >= 0), "auto or 0 or more"),
    ("data.prefetch", lambda v: v >= 1, "at least 1"),
    ("data.decode", lambda v: v in ("auto", "cpu", "cuda"), "auto, cpu or cuda"),
    ("data.remote_cache_limit", _is_size, "a size such as 500M, 64G or 1.5T, or null"),
    ("data.remote_fetch_ahead", lambda v: type(v) is int and v >= 0, "0 (none) or more"),
    ("optim.name", lambda v: v in ("adam", "adamw", "sgd"), "adam, adamw or sgd"),
    ("optim.lr", lambda v: 0 < v < math.inf, "a positive number"),
    ("optim.weight_decay", lambda v: 0 <= v < math.inf, "0 or more"),
    ("optim.schedule", lambda v: v in ("cosine", "step", "constant"), "cosine, step or constant"),
    ("optim.step_size", lambda v: v >= 1, "at least 1"),
    ("optim.gamma", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("optim.accumulate", lambda v: v >= 1, "at least 1"),
    ("augment.hflip", lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    ("augment.vflip", lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    ("augment.time_mask", lambda v: 0 <= v < 256, "between 0 and 255 columns"),
    ("augment.av_mismatch", lambda v: 0 <= v < 1, "a share in [0, 1)"),
    ("model.modality_dropout", lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    ("model.aux_weight", lambda v: 0 <= v < math.inf, "0 or more"),
    ("model.fusion", lambda v: v in ("concat", "or"), "concat or or"),
    ("augment.freq_mask", lambda v: 0 <= v < 256, "between 0 and 255 rows"),
    ("run.epochs", lambda v: v >= 1, "at least 1"),
    ("run.device", lambda v: v in ("auto", "cpu", "cuda"), "auto, cpu or cuda"),
    ("run.threads", lambda v: v >= 0, "0 (torch's default) or more"),
    ("run.checkpoint_every", lambda v: v >= 0, "0 (epoch ends only) or more"),
]


def remote_settings(data: DataConfig) -> RemoteSettings:
    """How caches on object storage are read (cache/remote.py): data.remote_*, else their
    environment variables and defaults."""
    return RemoteSettings.from_env(data.remote_cache, data.remote_cache_limit,
                                   data.remote_endpoint)  # fmt: skip


def validate(config: TrainConfig, where: str = "config") -> None:
    """Refuse, naming the key, any value a run could not use (before a model is built)."""
    for key, test, expected in RULES:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if not test(value):
            raise ConfigError(f"{where}: {key}={value!r}: must be {expected}")
    if config.data.train_split == config.data.val_split:
        raise ConfigError(f"{where}: data.val_split={config.data.val_split!r} is the training "
                          "split: validate on samples the model does not train on")  # fmt: skip
    check_sources(config.data.caches, where)


def check_sources(sources: list[CacheSource], where: str) -> None:
    """data.caches: weights of 0 or more with a positive sum, and one name per cache (the
    names key its metrics)."""
    if not sources:
        return
    for source in sources:
        if not source.path:
            raise ConfigError(f"{where}: data.caches: an entry without a path")
        if not 0 <= source.weight < math.inf:
            raise ConfigError(f"{where}: data.caches: {source.path}: weight {source.weight!r} "
                              "must be 0 or more")  # fmt: skip
        if not source.label or "/" in source.label:
            raise ConfigError(f"{where}: data.caches: {source.path}: name {source.label!r} "
                              "must be a non-empty name without '/'")  # fmt: skip
    if not sum(source.weight for source in sources) > 0:
        raise ConfigError(f"{where}: data.caches: every weight is 0: nothing to train on")
    labels = [source.label for source in sources]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ConfigError(f"{where}: data.caches: two caches are named {twice[0]!r} (their "
                          "folders' names): give each a name: of its own")  # fmt: skip


# Shard groups (data.shard_group) a DataLoader worker keeps open at once from a cache on
# object storage (train/loader.py): the one it reads and the next, which a batch may reach.
REMOTE_OPEN_GROUPS = 2


def check_remote_room(config: TrainConfig, cache: Cache) -> None:
    """A cache on object storage: its local folder's limit holds the shards a node keeps open
    at once (the workers and ranks read the same groups, and share their copies) and one
    being downloaded, each as large as its largest."""
    if cache.store is None:
        return
    largest = largest_shard(cache)
    needed = (REMOTE_OPEN_GROUPS * config.data.shard_group + 1) * largest
    if needed > cache.store.limit:
        raise ConfigError(
            f"data.remote_cache_limit={cache.store.limit} bytes is too small for {cache.location}: "
            f"a node keeps {REMOTE_OPEN_GROUPS} groups of data.shard_group="
            f"{config.data.shard_group} of its shards open and downloads one more, up to "
            f"{largest} bytes each: at least {needed} bytes (or a smaller data.shard_group)"
        )


def largest_shard(cache: Cache) -> int:
    return max((entry.size or 0 for entry in cache.shards), default=0)


def remote_fetch_ahead(config: TrainConfig, cache: Cache) -> int:
    """Shards a worker may fetch ahead from `cache`: data.remote_fetch_ahead, as many as the
    local folder's limit leaves room for beside the groups held open (check_remote_room made
    sure of room for one: the shard being downloaded)."""
    if cache.store is None:
        return 0
    room = cache.store.limit // max(largest_shard(cache), 1)
    spare = room - REMOTE_OPEN_GROUPS * config.data.shard_group
    return max(min(config.data.remote_fetch_ahead, spare), 0)


def check_cache_fits(config: TrainConfig, cache: Cache) -> None:
    """The cache holds what this config trains on: both splits, and the face frames the
    model needs (a mel-only cache has none); on object storage, room for its shards."""
    check_remote_room(config, cache)
    for key in ("train_split", "val_split"):
        split = getattr(config.data, key)
        if cache.num_samples(split) == 0:
            known = ", ".join(cache.splits) or "none"
            raise ConfigError(f"data.{key}={split!r}: the cache {cache.location} holds no samples "
                              f"of it (its splits: {known})")  # fmt: skip
    check_targets(config, cache)
    fields = MODEL_INPUTS[config.model.kind]
    if schema.LIPS in fields or schema.TRACK_AUDIO in fields:
        check_tracks_fit(config, cache)
    if schema.FACES in fields:
        check_faces_fit(config, cache)


def check_faces_fit(config: TrainConfig, cache: Cache) -> None:
    cached = cache.frames
    if not cached:
        raise ConfigError(f"model.kind={config.model.kind} needs faces, but the cache "
                          f"{cache.location} holds mel images only (faces.frames=0): use "
                          "model.kind=audio, or preprocess again with faces")  # fmt: skip
    if config.model.frames is not None and config.model.frames > cached:
        raise ConfigError(f"model.frames={config.model.frames}: the cache {cache.location} holds "
                          f"{cached} face frames per video; use model.frames={cached} or "
                          "fewer")  # fmt: skip


def check_targets(config: TrainConfig, cache: Cache) -> None:
    """Every sample trained or validated on has a target, 0 (real) or 1 (fake): a split cached
    from a list without targets (label -1, a test list) would train on -1 as if it were one.
    (The reader refuses any other label when it opens a shard.)"""
    for key in ("train_split", "val_split"):
        split = getattr(config.data, key)
        count, first = cache.without_target(split)
        if count:
            total = cache.num_samples(split)
            usable = [name for name in cache.splits if not cache.without_target(name)[0]]
            raise ConfigError(
                f"{first} has no target (label -1, unknown; {count} of the {total} samples of "
                f"split {split!r} have none): data.{key} must name a split whose every sample "
                f"is labelled 0 (real) or 1 (fake) (in {cache.location}: "
                f"{', '.join(usable) or 'none'})"
            )


def check_tracks_fit(config: TrainConfig, cache: Cache) -> None:
    if cache.tracks is None:
        raise ConfigError(f"model.kind={config.model.kind} reads aligned lips and speech, but "
                          f"the cache {cache.location} holds no tracks (tracks.windows=0): "
                          "preprocess again with tracks.windows=1 (or more)")  # fmt: skip
    check_speech_fits(config, cache)
    check_batch_fits(config, cache)


# The shortest window the speech trunk takes (train/models.py SpeechTrunk: four strided
# convolutions, each needing a whole kernel; a test holds the two to each other). The
# preprocessor writes shorter ones (one frame at 50 fps or more, at 8 kHz).
MIN_SPEECH_SAMPLES = 161


def check_speech_fits(config: TrainConfig, cache: Cache) -> None:
    layout, kind = cache.tracks, config.model.kind
    if kind in SPEECH_KINDS and layout.audio_samples < MIN_SPEECH_SAMPLES:
        raise ConfigError(
            f"model.kind={kind} hears windows of {layout.audio_samples} audio samples in the "
            f"cache {cache.location} ({layout.frames} frames at {layout.fps:g} fps, "
            f"{layout.audio_rate} Hz): its speech encoder needs {MIN_SPEECH_SAMPLES} at least; "
            "preprocess with more tracks.frames, or use model.kind=lips"
        )


# The most one batch's decoded tracks may take. The lips trunk's first convolution turns each
# decoded byte into 64 float32 channels at half the side, 64 bytes, and its forward and
# backward take 12-15 times that output (a ResNet18 on one window of 16 frames of 128 px or
# 32 of 160 px, measured on the CPU): 64 MiB of crops is ~50 GiB of training memory, more
# than most GPUs hold. The default (one window of 25 frames of 88 px, batch 64) decodes
# 12 MiB. A constant, not a share of this machine's memory: a config is accepted or refused
# alike on a laptop and on the GPU box it goes to.
MAX_BATCH_TRACK_BYTES = 64 * 2**20
LIPS_KINDS = tuple(kind for kind, fields in MODEL_INPUTS.items() if schema.LIPS in fields)
SPEECH_KINDS = tuple(kind for kind, fields in MODEL_INPUTS.items() if schema.TRACK_AUDIO in fields)


def sample_track_bytes(kind: str, layout: TrackLayout) -> int:
    """Bytes of one sample's tracks decoded for `kind`: its mouth crops (uint8 W x T x S x S)
    and its audio (int16 W x L), each where the kind reads it."""
    lips = layout.windows * layout.frames * layout.size**2 if kind in LIPS_KINDS else 0
    return lips + (layout.windows * 2 * layout.audio_samples if kind in SPEECH_KINDS else 0)


def check_batch_fits(config: TrainConfig, cache: Cache) -> None:
    """One batch of the cache's tracks fits MAX_BATCH_TRACK_BYTES; refused before anything
    is read, naming the layout and the fix, where a batch of it would ask for tens of GB."""
    layout, kind, batch = cache.tracks, config.model.kind, config.data.batch_size
    per_sample = sample_track_bytes(kind, layout)
    if batch * per_sample <= MAX_BATCH_TRACK_BYTES:
        return
    most = MAX_BATCH_TRACK_BYTES // per_sample
    fix = f"use data.batch_size={most} or less" if most else "even one sample is over it"
    mib = 2**20
    raise ConfigError(
        f"data.batch_size={batch}: model.kind={kind} decodes {batch * per_sample / mib:.0f} "
        f"MiB of tracks a batch from the cache {cache.location} ({layout.windows} windows of "
        f"{layout.frames} frames of {layout.size} px, {layout.audio_samples} audio samples a "
        f"window: {per_sample / mib:.1f} MiB a sample), over the "
        f"{MAX_BATCH_TRACK_BYTES // mib} MiB a batch may hold (training the lips takes ~800 "
        f"times their bytes): {fix}, or preprocess a cache with fewer tracks.windows, "
        "tracks.frames or a smaller tracks.size"
    )
