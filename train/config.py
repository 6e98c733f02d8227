"""The training config: every key, its default and what it does.

configs/train.yaml mirrors these defaults; configs/train_baseline.yaml is the
public baseline's recipe (audio only, Adam 3e-3, StepLR(4, 0.85), batch 40).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    kind: str = "av"  # audio (mel), faces (face frames), av (both, fused); see train/models.py
    pretrained: str | None = None  # local ResNet18 weights (.safetensors or .pth); none: scratch
    frames: int | None = None  # face frames used per video (None: all that were cached)
    mel_size: int = 256  # mel images are resized to this on the device (smaller: faster, coarser)


@dataclass
class DataConfig:
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = 64
    block_size: int = 16  # samples per h5py read; a batch mixes batch_size / block_size blocks
    shard_group: int = 8  # shards whose blocks are shuffled together
    workers: int = 2  # DataLoader worker processes (0: read in the training process)


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


@dataclass
class RunConfig:
    epochs: int = 8
    seed: int = 0  # one seed for init, shuffling and augmentation
    device: str = "auto"  # auto (cuda when available), cpu, cuda
    amp: bool = True  # bf16 autocast on CUDA
    channels_last: bool = True  # on CUDA
    compile: bool = False  # torch.compile the model
    threads: int = 0  # CPU threads for torch (0: torch's default)
    checkpoint_every: int = 0  # optimiser steps between mid-epoch checkpoints (0: epoch ends only)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    run: RunConfig = field(default_factory=RunConfig)
