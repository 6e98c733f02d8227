"""The training loop: epochs, validation, checkpoints, resume.

A run folder holds config.yaml, metrics.jsonl, last.pt (everything needed to
resume: model, optimiser, scheduler, epoch, RNG states, history) and best.pt
(chosen by validation ROC AUC). Checkpoints hold only tensors and plain data
and are loaded with torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cache import schema
from cache.reader import Cache
from train.augment import prepare, to_device
from train.config import TrainConfig
from train.loader import LoaderPlan, ShardStream
from train.metrics import detection_metrics
from train.models import build_model

log = logging.getLogger("avcache.train")
LAST, BEST, METRICS = "last.pt", "best.pt", "metrics.jsonl"


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device=cuda but no CUDA device is available")
    return torch.device(name)


def make_loader(cache: Cache, split: str, fields: tuple[str, ...], config: TrainConfig,
                train: bool, device: torch.device) -> tuple[ShardStream, DataLoader]:  # fmt: skip
    shards = cache.shards_of(split)
    if not shards or not any(entry.num_samples for entry in shards):
        raise ValueError(f"{cache.root}: split {split!r} has no cached samples "
                         f"(splits: {', '.join(cache.splits) or 'none'})")  # fmt: skip
    plan = LoaderPlan(
        batch_size=config.data.batch_size,
        block_size=config.data.block_size,
        shard_group=config.data.shard_group,
        shuffle=train,
        drop_last=False,
        seed=config.run.seed,
    )
    stream = ShardStream(shards, fields, plan)
    workers = config.data.workers
    loader = DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    return stream, loader


@dataclass
class Progress:
    """What resuming needs besides the weights."""

    epoch: int = 0  # epochs finished
    best_score: float = -math.inf
    history: list[dict] = field(default_factory=list)


class Trainer:
    def __init__(self, config: TrainConfig, cache: Cache, out: Path) -> None:
        self.config, self.cache, self.out = config, cache, out
        self.device = select_device(config.run.device)
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        torch.manual_seed(config.run.seed)
        self.model = build_model(config.model.kind, config.model.pretrained).to(self.device)
        self.fields = self.model.fields
        if self._cuda and config.run.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if config.run.compile else self.model
        self.optimizer = make_optimizer(self.model, config)
        self.scheduler = make_scheduler(self.optimizer, config)
        self.augment_rng = torch.Generator().manual_seed(config.run.seed)
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.progress = Progress()

    @property
    def _cuda(self) -> bool:
        return self.device.type == "cuda"

    def _autocast(self):
        enabled = self._cuda and self.config.run.amp
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _inputs(self, batch: dict, train: bool) -> tuple[dict, torch.Tensor]:
        batch = to_device(batch, self.device)
        augment = self.config.augment if train else None
        model = self.config.model
        inputs = prepare(
            batch, self.fields, augment, self.augment_rng, model.frames, model.mel_size
        )
        if self._cuda and self.config.run.channels_last and schema.MEL in inputs:
            inputs[schema.MEL] = inputs[schema.MEL].contiguous(memory_format=torch.channels_last)
        return inputs, batch[schema.LABEL].float()

    def train_epoch(self, epoch: int) -> dict[str, float]:
        stream, loader = make_loader(self.cache, self.config.data.train_split, self.fields,
                                     self.config, train=True, device=self.device)  # fmt: skip
        stream.set_epoch(epoch)
        self.model.train()
        total_loss, samples, waited = 0.0, 0, 0.0
        start = mark = time.perf_counter()
        for batch in tqdm(loader, total=len(stream), desc=f"epoch {epoch + 1}", leave=False):
            waited += time.perf_counter() - mark
            inputs, labels = self._inputs(batch, train=True)
            with self._autocast():
                loss = self.loss_fn(self.forward(inputs).float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total_loss += loss.item() * len(labels)
            samples += len(labels)
            mark = time.perf_counter()
        seconds = time.perf_counter() - start
        self.scheduler.step()
        return {
            "train_loss": total_loss / max(samples, 1),
            "train_samples_per_s": samples / seconds,
            "data_wait_share": waited / seconds,
        }

    @torch.no_grad()
    def predict_split(self, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(names, labels, P(fake)) of every cached sample of a split, in index order."""
        fields = (*self.fields, schema.VIDEO_NAME)
        stream, loader = make_loader(self.cache, split, fields, self.config, train=False,
                                     device=self.device)  # fmt: skip
        self.model.eval()
        names, labels, scores = [], [], []
        for batch in tqdm(loader, total=len(stream), desc=f"predict {split}", leave=False):
            inputs, batch_labels = self._inputs(batch, train=False)
            with self._autocast():
                logits = self.forward(inputs).float()
            names.extend(batch[schema.VIDEO_NAME])
            labels.append(batch_labels.cpu().numpy())
            scores.append(torch.sigmoid(logits).cpu().numpy())
        return names, np.concatenate(labels), np.concatenate(scores)

    def validate(self) -> dict[str, float]:
        _, labels, scores = self.predict_split(self.config.data.val_split)
        eps = 1e-7
        clipped = np.clip(scores, eps, 1 - eps)
        loss = -np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
        return {
            "val_loss": float(loss),
            **{f"val_{k}": v for k, v in detection_metrics(labels, scores).items()},
        }

    def fit(self) -> Progress:
        """Train the remaining epochs; validate, log and checkpoint after each."""
        for epoch in range(self.progress.epoch, self.config.run.epochs):
            lr = self.optimizer.param_groups[0]["lr"]
            start = time.perf_counter()
            row = {"epoch": epoch + 1, "lr": lr, **self.train_epoch(epoch), **self.validate()}
            row["seconds"] = time.perf_counter() - start
            self.progress.epoch = epoch + 1
            self.progress.history.append(row)
            score = row["val_auc"] if math.isfinite(row["val_auc"]) else -row["val_loss"]
            if score > self.progress.best_score:
                self.progress.best_score = score
                self.save(self.out / BEST)
            self.save(self.out / LAST)
            write_metrics(self.out / METRICS, self.progress.history)
            log.info(format_row(row))
        return self.progress

    def state(self) -> dict:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.progress.epoch,
            "best_score": self.progress.best_score,
            "history": self.progress.history,
            "torch_rng": torch.get_rng_state(),
            "augment_rng": self.augment_rng.get_state(),
            "kind": self.config.model.kind,
        }
        if self._cuda:
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def save(self, path: Path) -> None:
        partial = path.with_name(path.name + ".partial")
        torch.save(self.state(), partial)
        os.replace(partial, path)

    def load(self, path: Path, weights_only_model: bool = False) -> None:
        """Restore a checkpoint (untrusted data: tensors and plain values only)."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        if weights_only_model:
            return
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.progress = Progress(state["epoch"], state["best_score"], state["history"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self.augment_rng.set_state(state["augment_rng"].cpu())
        if self._cuda and "cuda_rng" in state:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    optim = config.optim
    factories = {
        "adam": lambda p: torch.optim.Adam(p, lr=optim.lr, weight_decay=optim.weight_decay),
        "adamw": lambda p: torch.optim.AdamW(p, lr=optim.lr, weight_decay=optim.weight_decay),
        "sgd": lambda p: torch.optim.SGD(
            p, lr=optim.lr, momentum=0.9, weight_decay=optim.weight_decay
        ),
    }
    if optim.name not in factories:
        raise ValueError(f"optim.name {optim.name!r} unknown (known: {', '.join(factories)})")
    return factories[optim.name](model.parameters())


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    optim, epochs = config.optim, max(config.run.epochs, 1)
    factories = {
        "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs),
        "step": lambda: torch.optim.lr_scheduler.StepLR(optimizer, optim.step_size, optim.gamma),
        "constant": lambda: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
    }
    if optim.schedule not in factories:
        raise ValueError(
            f"optim.schedule {optim.schedule!r} unknown (known: {', '.join(factories)})"
        )
    return factories[optim.schedule]()


def write_metrics(path: Path, history: list[dict]) -> None:
    """metrics.jsonl rewritten from the checkpointed history: a resumed run never repeats a line."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(row) + "\n" for row in history), encoding="utf-8")
    os.replace(partial, path)


def format_row(row: dict) -> str:
    return (
        f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, "
        f"val loss {row['val_loss']:.4f}, "
        f"AUC {row['val_auc']:.4f}, AP {row['val_ap']:.4f}, EER {row['val_eer']:.4f}, "
        f"TPR@FPR=1e-3 {row['val_tpr@fpr=1e-3']:.4f}, acc {row['val_accuracy']:.4f} "
        f"({row['train_samples_per_s']:.0f} samples/s, data wait {row['data_wait_share']:.0%})"
    )
