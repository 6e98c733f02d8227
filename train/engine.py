"""The training loop: epochs, validation, checkpoints, resume.

A run folder holds config.yaml, metrics.jsonl, last.pt (everything needed to
resume: model, optimiser, scheduler, epoch, the global batches done in it and
history; no RNG state, as each batch's randomness is seeded from its index) and
best.pt (chosen by validation ROC AUC). Checkpoints hold only tensors and plain
data and are loaded with torch.load(weights_only=True).

With data.caches the training batches come from several caches mixed by weight
(train/mix.py); every cache's val split is scored on its own (val_auc/NAME) and the
trained caches' together (val_auc, which chooses best.pt).

Under torchrun every rank trains on its share of each epoch's global batches
(train/loader.py) through DistributedDataParallel; training losses are summed
and validation predictions gathered across ranks, and rank 0 alone writes. A
step averages the gradients of `accumulate` batches on every rank, so
`accumulate x ranks` is what sets the step, not how it is split: one process
with accumulate=2 takes the same steps as two ranks with accumulate=1.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import time
import zipfile
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from avcache.cache import schema
from avcache.cache.reader import Cache
from avcache.common.atomic import atomic_path, write_text_atomic
from avcache.common.untrusted import printable, regular_file
from avcache.train import distributed
from avcache.train.augment import (
    batch_seed,
    mismatch_faces,
    mismatch_speech,
    prepare,
    to_device,
)
from avcache.train.config import TRACK_KINDS, TrainConfig
from avcache.train.decode import decode_faces, decode_on_device
from avcache.train.loader import BATCH_INDEX, REAL, LoaderPlan, ShardStream
from avcache.train.metrics import auc_by_kind, detection_metrics, log_loss
from avcache.train.mix import MixedStream, Source, open_sources, trained
from avcache.train.models import build_model
from avcache.train.ranks import Ranks, ranks_from_env
from avcache.train.runs import BEST, LAST, METRICS

log = logging.getLogger("avcache.train")
# What a checkpoint holds besides weights and optimiser: Progress's fields and their types.
PROGRESS_TYPES = {"epoch": int, "best_score": float, "history": list, "batches_done": int,
                  "loss_sum": float, "samples": int}  # fmt: skip


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """auto: CUDA when there is one. A rank uses the GPU of its local rank (round-robin when
    the ranks outnumber the GPUs: a correctness run of two ranks on a one-GPU box)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("run.device=cuda but no CUDA device is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)


def start_device(name: str) -> tuple[Ranks, torch.device]:
    """This process's rank and device, with the process group joined under torchrun: done
    once per process, by whoever starts the run (avcache-train's start_run, or a Trainer
    built without a device)."""
    ranks = ranks_from_env()
    device = select_device(name, ranks.local_rank)
    distributed.start(ranks, device)
    return ranks, device


def auto_workers(fields: tuple[str, ...], device: torch.device, faces_decoded_on_device: bool,
                 local_ranks: int = 1) -> int:  # fmt: skip
    """DataLoader workers for `data.workers: auto`: what the model's input needs, within this
    rank's share of the machine's cores less one for the training process itself.

    Measured needs (docs/performance.md): one process reads 31,400 mel samples/s, three
    times what a GPU trains on, so mel needs little; a core decodes about 5,000 JPEG crops
    of 224 px a second and a GPU eats about 10,000, so faces decoded in the workers need
    several cores a GPU; faces left for the GPU to decode need only reading and checking
    (6,500 samples/s a core). Mouth crops (lips, sync) are JPEG decoded in the workers
    too; the speech windows and the mel are read as they are. On a CPU, workers take cores
    from the step itself: one keeps reading off the step's path.
    """
    cores = len(os.sched_getaffinity(0)) // max(local_ranks, 1)
    spare = max(cores - 1, 0)
    if device.type != "cuda":
        return min(1, spare)
    needs_decoding = schema.LIPS in fields or (schema.FACES in fields
                                               and not faces_decoded_on_device)  # fmt: skip
    return min(6 if needs_decoding else 2, spare)


def make_loader(cache: Cache, split: str, fields: tuple[str, ...], config: TrainConfig,
                device: torch.device, ranks: Ranks, *, train: bool,
                jpeg_faces: bool = False) -> tuple[ShardStream, DataLoader]:  # fmt: skip
    """The split's stream (shuffled when `train`) and the DataLoader over it; `jpeg_faces`
    leaves faces encoded for the training device to decode (train/decode.py). Its workers
    persist across epochs (ShardStream.set_epoch reaches them): a fresh set per epoch
    would pay their start and the first batches' wait every epoch."""
    stream = ShardStream(split_shards(cache, split), fields, loader_plan(config, train),
                         ranks.rank, ranks.world, jpeg_faces)  # fmt: skip
    return stream, data_loader(stream, fields, config, device, ranks, jpeg_faces)


def make_mixed_loader(sources: list[Source], split: str, fields: tuple[str, ...],
                      config: TrainConfig, device: torch.device, ranks: Ranks,
                      jpeg_faces: bool = False) -> tuple[MixedStream, DataLoader]:  # fmt: skip
    """The training stream drawing from every source's split by weight (train/mix.py)."""
    shards = [split_shards(source.cache, split) for source in sources]
    stream = MixedStream(shards, [source.weight for source in sources], fields,
                         loader_plan(config, train=True), ranks.rank, ranks.world,
                         jpeg_faces)  # fmt: skip
    return stream, data_loader(stream, fields, config, device, ranks, jpeg_faces)


def split_shards(cache: Cache, split: str) -> list:
    shards = cache.shards_of(split)
    if not shards or not any(entry.num_samples for entry in shards):
        raise ValueError(f"{cache.root}: split {split!r} has no cached samples "
                         f"(splits: {', '.join(cache.splits) or 'none'})")  # fmt: skip
    return shards


def loader_plan(config: TrainConfig, train: bool) -> LoaderPlan:
    return LoaderPlan(
        batch_size=config.data.batch_size,
        block_size=config.data.block_size,
        shard_group=config.data.shard_group,
        shuffle=train,
        # Compiled, every training batch has one shape: graphs are specialised to it, and
        # a short last batch would compile another. Eager training keeps every sample (the
        # published figures were measured so); evaluation always does.
        drop_last=train and config.run.compile,
        seed=config.run.seed,
    )


def data_loader(stream: ShardStream, fields: tuple[str, ...], config: TrainConfig,
                device: torch.device, ranks: Ranks, jpeg_faces: bool) -> DataLoader:  # fmt: skip
    workers = config.data.workers
    if workers == "auto":
        workers = auto_workers(fields, device, jpeg_faces, ranks.local_world)
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=config.data.prefetch if workers else None,
        persistent_workers=workers > 0,
    )


def track_frames(kind: str, cache: Cache | None) -> int:
    """Frames per window of the cache's tracks, for the kinds that read them (0 otherwise:
    the other kinds open nothing for it)."""
    if kind not in TRACK_KINDS or cache is None or cache.tracks is None:
        return 0
    return cache.tracks.frames


@dataclass
class Progress:
    """What resuming needs besides the weights."""

    epoch: int = 0  # epochs finished
    best_score: float = -math.inf
    history: list[dict] = field(default_factory=list)
    batches_done: int = 0  # global batches of the unfinished epoch already trained on
    loss_sum: float = 0.0  # their summed training loss, over all ranks
    samples: int = 0  # and their samples


class Trainer:
    def __init__(self, config: TrainConfig, cache: Cache, out: Path,
                 device: torch.device | None = None,
                 sources: list[Source] | None = None) -> None:  # fmt: skip
        """`device`: the one start_device gave the caller; without it, the Trainer starts it.
        `sources`: the run's caches already opened (train/mix.py open_sources); without them
        the Trainer opens data.caches itself, or trains on `cache` alone."""
        self.config, self.cache, self.out = config, cache, out
        self.sources = sources if sources is not None else open_sources(config, cache)
        if device is None:
            self.ranks, self.device = start_device(config.run.device)
        else:
            self.ranks, self.device = ranks_from_env(), device
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        torch.manual_seed(config.run.seed)
        model = config.model
        self.model = build_model(model.kind, model.pretrained, model.modality_dropout,
                                 aux_heads=model.aux_weight > 0, fusion=model.fusion,
                                 track_frames=track_frames(model.kind, cache),
                                 sync_weight=model.sync_weight).to(self.device)  # fmt: skip
        if config.model.init:
            self._load_weights(Path(config.model.init))
        self.fields = self.model.fields
        # (split, caches) -> this device decodes their JPEG faces
        self._decoding: dict[tuple, bool] = {}
        self._kinds: dict[tuple, list[str] | None] = {}  # (cache, split) -> its fake kinds
        self._loaders: dict[tuple, tuple[ShardStream, DataLoader]] = {}
        if self._cuda:
            # Training batches all have one shape (the last partial one is dropped), so
            # cuDNN's search for the fastest convolutions is paid once.
            torch.backends.cudnn.benchmark = True
        if self._cuda and config.run.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ddp = self._wrap_ddp()
        compile_ = torch.compile if config.run.compile else lambda module: module
        self.evaluate_forward = compile_(self.model)
        self.train_forward = compile_(self.ddp) if self.ddp else self.evaluate_forward
        self.optimizer = make_optimizer(self.model, config)
        self.scheduler = make_scheduler(self.optimizer, config)
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.progress = Progress()
        # Called after every batch: where a Ctrl-C is acted on (train/interrupt.py).
        self.between_batches: Callable[[], None] = lambda: None
        # Called by rank 0 with the history after every epoch's checkpoint (the curves).
        self.after_epoch: Callable[[list[dict]], None] = lambda history: None

    def _wrap_ddp(self) -> DistributedDataParallel | None:
        return distributed.data_parallel(self.model, self.device) if self.ranks.distributed \
            else None  # fmt: skip

    def _loader(self, split: str, fields: tuple[str, ...], train: bool,
                cache: Cache | None = None) -> tuple[ShardStream, DataLoader]:  # fmt: skip
        """The split's stream and loader (of the run's cache, or of `cache`), made once: its
        workers live for the whole run."""
        cache = cache or self.cache
        key = (str(cache.root), split, fields, train)
        if key not in self._loaders:
            jpeg = schema.FACES in fields and self.decodes_faces_here(split, [cache])
            self._loaders[key] = make_loader(cache, split, fields, self.config, self.device,
                                             self.ranks, train=train, jpeg_faces=jpeg)  # fmt: skip
        return self._loaders[key]

    def _training_loader(self) -> tuple[ShardStream, DataLoader]:
        """The training split's stream: of the run's cache, or the mix of data.caches."""
        split = self.config.data.train_split
        if not self.config.data.caches:
            return self._loader(split, self.fields, train=True)
        if "mix" not in self._loaders:
            drawn = trained(self.sources)
            caches = [source.cache for source in drawn]
            jpeg = schema.FACES in self.fields and self.decodes_faces_here(split, caches)
            self._loaders["mix"] = make_mixed_loader(drawn, split, self.fields, self.config,
                                                     self.device, self.ranks, jpeg)  # fmt: skip
        return self._loaders["mix"]

    def decodes_faces_here(self, split: str, caches: list[Cache] | None = None) -> bool:
        """Whether this device decodes the split's JPEG faces (the workers only read them),
        of the run's cache or of `caches` read together.
        A run trained with data.decode=cuda and scored where there is no GPU decodes on the
        CPU, with a warning (training itself refuses it: train/run.py check_decoding)."""
        caches = caches or [self.cache]
        key = (split, tuple(str(cache.root) for cache in caches))
        if key not in self._decoding:
            codecs = set().union(*(cache.face_codecs(split) for cache in caches)) \
                if schema.FACES in self.fields else set()  # fmt: skip
            choice = self.config.data.decode
            if choice == "cuda" and not self._cuda and codecs:
                log.warning("this run decoded its faces with nvJPEG (data.decode=cuda); here, "
                            "without CUDA, the CPU decodes them, whose pixels differ by a grey "
                            "level or two (docs/performance.md)")  # fmt: skip
                choice = "cpu"
            self._decoding[key] = decode_on_device(choice, self.device, codecs)
        return self._decoding[key]

    @property
    def _cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        """bf16 autocast where the run trains with it (run.amp on CUDA), else nothing."""
        enabled = self._cuda and self.config.run.amp
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _inputs(self, batch: dict, generator: torch.Generator | None) -> tuple[dict, torch.Tensor]:
        """Model inputs and labels of a loader batch; augmented when given a generator."""
        return self.model_inputs(to_device(decode_faces(batch, self.device), self.device),
                                 generator)  # fmt: skip

    def model_inputs(self, batch: dict, generator: torch.Generator | None
                     ) -> tuple[dict, torch.Tensor]:  # fmt: skip
        """Model inputs and labels of a batch on the device (evaluation: no generator)."""
        augment = self.config.augment if generator else None
        model = self.config.model
        inputs = prepare(batch, self.fields, augment, generator, model.frames, model.mel_size)
        labels = batch[schema.LABEL].float()
        if augment and augment.av_mismatch and schema.FACES in inputs and schema.MEL in inputs:
            inputs, labels = mismatch_faces(inputs, labels, augment.av_mismatch, generator)
        if augment and augment.av_mismatch and schema.LIPS in inputs and \
                schema.TRACK_AUDIO in inputs:  # fmt: skip
            inputs, labels = mismatch_speech(inputs, labels, augment.av_mismatch, generator)
        if self._cuda and self.config.run.channels_last and schema.MEL in inputs:
            inputs[schema.MEL] = inputs[schema.MEL].contiguous(memory_format=torch.channels_last)
        return inputs, labels

    def _backward(self, batch: dict, epoch: int, step_ends: bool) -> torch.Tensor:
        """Forward and backward one batch; gradients are shared across ranks when a step ends.
        Returns the loss as a tensor on the device: reading it here would make the host wait
        for the GPU every batch."""
        # Flips, masks and dropout of a global batch depend on nothing else: not on the ranks
        # (which would otherwise draw the same dropout masks), nor on where a run resumed.
        seed = batch_seed(self.config.run.seed, epoch, batch[BATCH_INDEX])
        torch.manual_seed(seed)
        inputs, labels = self._inputs(batch, torch.Generator().manual_seed(seed))
        # A rank's padding batch counts for nothing, and a short last step is scaled as if
        # full: the same gradient as one process taking the rank's batches in turn.
        weight = float(batch[REAL]) / self.config.optim.accumulate
        keep_local = self.ddp.no_sync() if self.ddp and not step_ends else nullcontext()
        with keep_local:
            with self.autocast():
                loss = self._loss(self.train_forward(inputs).float(), labels)
            (loss * weight).backward()
        return loss.detach()

    def train_step(self, batch: dict, epoch: int, step_ends: bool) -> torch.Tensor:
        """One batch's backward, and the optimiser's step when `step_ends`; the loss stays
        on the device."""
        loss = self._backward(batch, epoch, step_ends)
        if step_ends:
            self.optimizer.step()
            # Under DDP the gradients are views of its buckets: zeroed in place they stay so
            # (set to None, each step's would be new tensors, copied into the buckets).
            self.optimizer.zero_grad(set_to_none=self.ddp is None)
        return loss

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The fused head's loss, plus model.aux_weight x each branch head's (when present)."""
        if logits.dim() == 1:
            return self.loss_fn(logits, labels)
        if hasattr(self.model, "training_loss"):  # a model with a loss of its own (sync)
            return self.model.training_loss(logits, labels, self.loss_fn)
        own = [self.loss_fn(column, labels) for column in logits[:, 1:].unbind(1)]
        return self.loss_fn(logits[:, 0], labels) + self.config.model.aux_weight * sum(own)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Train on the epoch's batches from `progress.batches_done` on."""
        stream, loader = self._training_loader()
        stream.set_epoch(epoch, self.progress.batches_done)
        per_rank, world = stream.batches_per_rank(), self.ranks.world
        accumulate = self.config.optim.accumulate
        self.model.train()
        # The checkpoint holds the sum over all ranks; one rank carries it on.
        restored = (self.progress.loss_sum, self.progress.samples) if self.ranks.main else (0, 0)
        # The loss sum stays on the device (float64: the same sums as on the host) and is read
        # only at checkpoints and at the end of the epoch.
        loss_sum = torch.tensor(float(restored[0]), dtype=torch.float64, device=self.device)
        samples, fresh, waited = restored[1], 0, 0.0
        start = mark = time.perf_counter()
        bar = tqdm(loader, total=len(stream), desc=f"epoch {epoch + 1}", leave=False,
                   disable=not self.ranks.main)  # fmt: skip
        for batch in bar:
            waited += time.perf_counter() - mark
            local = batch[BATCH_INDEX] // world
            step_ends = (local + 1) % accumulate == 0 or local + 1 == per_rank
            loss = self.train_step(batch, epoch, step_ends)
            if batch[REAL]:
                n = len(batch[schema.LABEL])
                loss_sum += loss.double() * n
                samples, fresh = samples + n, fresh + n
            if step_ends:
                self.progress.batches_done = (local + 1) * world
                if self._checkpoint_due(local + 1, per_rank):
                    self._checkpoint_mid_epoch(loss_sum.item(), samples)
            self.between_batches()
            mark = time.perf_counter()
        seconds = time.perf_counter() - start
        loss_sum, samples, fresh = distributed.sum_across([loss_sum.item(), samples, fresh],
                                                          self.device)  # fmt: skip
        distributed.average_batchnorm(self.model)
        self.scheduler.step()
        return {
            "train_loss": loss_sum / max(samples, 1),
            "train_samples_per_s": fresh / seconds,
            "data_wait_share": waited / seconds,
        }

    def _checkpoint_due(self, batches_done: int, per_rank: int) -> bool:
        every = self.config.run.checkpoint_every
        steps = -(-batches_done // self.config.optim.accumulate)
        return every > 0 and steps % every == 0 and batches_done < per_rank

    def _checkpoint_mid_epoch(self, loss_sum: float, samples: int) -> None:
        """last.pt in the middle of an epoch. Every rank takes part (the sums and BatchNorm
        statistics are collected), so a resumed run continues exactly from here."""
        total_loss, total_samples = distributed.sum_across([loss_sum, samples], self.device)
        distributed.average_batchnorm(self.model)
        if self.ranks.main:
            self.progress.loss_sum, self.progress.samples = total_loss, int(total_samples)
            self.save(self.out / LAST)

    @torch.no_grad()
    def predict_split(self, split: str, cache: Cache | None = None
                      ) -> tuple[list[str], np.ndarray, np.ndarray]:  # fmt: skip
        """(names, labels, P(fake)) of every cached sample of a split (of the run's cache, or
        of `cache`), in index order. Under torchrun each rank predicts its share and every
        rank gets the whole."""
        fields = (*self.fields, schema.VIDEO_NAME)
        stream, loader = self._loader(split, fields, train=False, cache=cache)
        self.model.eval()
        parts = []
        bar = tqdm(loader, total=len(stream), desc=f"predict {split}", leave=False,
                   disable=not self.ranks.main)  # fmt: skip
        for batch in bar:
            if not batch[REAL]:
                continue
            labels = batch[schema.LABEL].float().numpy()  # from the host's copy of the batch
            inputs, _ = self._inputs(batch, generator=None)
            with self.autocast():
                scores = torch.sigmoid(self.evaluate_forward(inputs).float())
            parts.append((batch[BATCH_INDEX], batch[schema.VIDEO_NAME], labels, scores))
            self.between_batches()
        parts = scores_read_back(parts)
        parts = sorted((p for rank_parts in distributed.gather(parts) for p in rank_parts),
                       key=lambda part: part[0])  # fmt: skip
        names = [name for part in parts for name in part[1]]
        return names, np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts])

    def validation_scores(self) -> list[tuple[Source, np.ndarray, np.ndarray]]:
        """(source, labels, P(fake)) of every cache's val split, in the caches' order."""
        split = self.config.data.val_split
        scored = []
        for source in self.sources:
            _, labels, scores = self.predict_split(split, source.cache)
            scored.append((source, labels, scores))
        return scored

    def validate(self) -> dict[str, float]:
        """val_* over the trained caches' val splits together (one cache: its own), then the
        AUC of each cache's val split (val_auc/NAME) and of each of its fake kinds, where
        the cache records them (val_auc/NAME/KIND: its reals against that kind's fakes)."""
        scored = self.validation_scores()
        labels, scores = joined([item for item in scored if item[0].weight > 0])
        row = {
            "val_loss": log_loss(labels, scores),
            **{f"val_{k}": v for k, v in detection_metrics(labels, scores).items()},
        }
        for source, source_labels, source_scores in scored:
            row[f"val_auc/{source.name}"] = detection_metrics(source_labels, source_scores)["auc"]
            kinds = self._fake_kinds(source.cache, len(source_labels))
            if kinds is not None:
                by_kind = auc_by_kind(source_labels, source_scores, kinds)
                row |= {f"val_auc/{source.name}/{kind}": auc for kind, auc in by_kind.items()}
        return row

    def _fake_kinds(self, cache: Cache, count: int) -> list[str] | None:
        """Each val sample's kind of fake in index order, where the cache records kinds."""
        key = (str(cache.root), self.config.data.val_split)
        if key not in self._kinds:
            reader = getattr(cache, "fake_kinds", None)  # caches read before kinds existed
            kinds = reader(self.config.data.val_split) if callable(reader) else None
            if kinds is not None and len(kinds) != count:
                log.warning("%s: %d fake kinds for %d val samples: per-kind AUC left out",
                            cache.root, len(kinds), count)  # fmt: skip
                kinds = None
            self._kinds[key] = kinds
        return self._kinds[key]

    def fit(self) -> Progress:
        """Train the remaining epochs; validate, log and checkpoint after each."""
        for epoch in range(self.progress.epoch, self.config.run.epochs):
            lr = self.optimizer.param_groups[0]["lr"]
            start = time.perf_counter()
            row = {"epoch": epoch + 1, "lr": lr, **self.train_epoch(epoch), **self.validate()}
            row["seconds"] = time.perf_counter() - start
            self.progress = Progress(epoch + 1, self.progress.best_score,
                                     [*self.progress.history, row])  # fmt: skip
            score = row["val_auc"] if math.isfinite(row["val_auc"]) else -row["val_loss"]
            improved = score > self.progress.best_score
            if improved:
                self.progress.best_score = score
            if self.ranks.main:
                if improved:
                    self.save(self.out / BEST, resumable=False)
                self.save(self.out / LAST)
                self.after_epoch(self.progress.history)
                write_metrics(self.out / METRICS, self.progress.history)
                log.info(format_row(row))
        distributed.barrier()  # the other ranks may read the checkpoints next
        return self.progress

    def state(self, resumable: bool = True) -> dict:
        """Everything a resume needs, or (not resumable: best.pt) what prediction needs: the
        weights, without the optimiser's state that would triple the file (AdamW keeps two
        values a weight)."""
        progress = self.progress
        weights = {"model": self.model.state_dict(), "kind": self.config.model.kind,
                   "epoch": progress.epoch, "best_score": progress.best_score}  # fmt: skip
        if not resumable:
            return weights
        return {
            **weights,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            **{key: getattr(self.progress, key) for key in PROGRESS_TYPES},
        }

    def save(self, path: Path, resumable: bool = True) -> None:
        with atomic_path(path) as partial:
            torch.save(self.state(resumable), partial)

    def _load_weights(self, path: Path) -> None:
        """model.init: start from the weights of an avcache checkpoint (a new schedule)."""
        state = read_checkpoint(path)
        self.model.load_state_dict(checked_weights(self.model, state, path))
        log.info("weights from %s (epoch %s of its run)", path, state.get("epoch", "?"))

    def load(self, path: Path, weights_only_model: bool = False) -> None:
        """Restore a checkpoint (untrusted data: tensors and plain values only, each checked
        before use, so a foreign or damaged file is refused in one line naming it)."""
        state = read_checkpoint(path)
        kind = self.config.model.kind
        if state.get("kind", kind) != kind:
            raise ValueError(f"{path}: written for model.kind={printable(state['kind'])}, "
                             f"this run's model is {kind}")  # fmt: skip
        self.model.load_state_dict(checked_weights(self.model, state, path))
        if weights_only_model:
            return
        self.progress = progress_of(state, path)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"{path}: its optimiser or scheduler state does not fit this run "
                             f"({printable(error)}); it was written by another config"
                             ) from None  # fmt: skip


def joined(scored: list[tuple[Source, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The labels and scores of several caches' splits as one."""
    return (np.concatenate([labels for _, labels, _ in scored]),
            np.concatenate([scores for _, _, scores in scored]))  # fmt: skip


def scores_read_back(parts: list[tuple]) -> list[tuple]:
    """(index, names, labels, scores) with each batch's scores as numpy, read from the device
    in one copy: a read per batch would make the host wait for the GPU every batch."""
    if not parts:
        return parts
    values = torch.cat([part[3] for part in parts]).cpu().numpy()
    ends = np.cumsum([len(part[2]) for part in parts])[:-1]
    return [(*part[:3], scores) for part, scores in zip(parts, np.split(values, ends), strict=True)]


NOT_OURS = "it is not a checkpoint written by avcache-train for this run"
# What a checkpoint's members may declare, all together, before torch reads them: torch.save
# stores every member uncompressed, so a checkpoint declares at most its own size, whatever
# its size; twice that, and 16 MiB more for a small file, leaves room for one compressed
# again, while a 2 MB zip declaring 2.4 GB is refused unread.
CHECKPOINT_INFLATION = 2
CHECKPOINT_SLACK = 16 << 20


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's state on the host. The model's and optimiser's load_state_dict copy each
    tensor to its parameter's device; AdamW's `step` counts stay on the host, where the
    optimiser reads them (loaded onto the GPU, every step would read them back, two host
    synchronisations per parameter). The file is checked as a zip archive first
    (`checked_archive`), and torch reads the very file that was checked."""
    with open_checkpoint(path) as handle:
        checked_archive(handle, path)
        handle.seek(0)
        try:
            state = torch.load(handle, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ValueError(
                f"{path}: refused to load: torch.load(weights_only=True) found more than "
                "tensors and plain data in it (pickled objects, which could run code when "
                "loaded, or a damaged file); checkpoints written by avcache-train hold nothing "
                "else"
            ) from error
        except (RuntimeError, EOFError, OSError, LookupError) as error:
            raise ValueError(f"{path}: not a readable checkpoint ({printable(error)})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a dict: {NOT_OURS}")
    return state


def open_checkpoint(path: Path):
    """The checkpoint opened for reading, refused unless it is a regular file (stat first: a
    FIFO is never opened) and still the same file once opened."""
    info = regular_file(path, "checkpoint")
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise ValueError(f"{path}: cannot read the checkpoint ({error.strerror})") from None
    handle = os.fdopen(descriptor, "rb")
    opened = os.fstat(descriptor)
    if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
        handle.close()
        raise ValueError(f"{path}: the checkpoint was replaced while it was opened; try again")
    return handle


def checked_archive(handle, path: Path) -> None:
    """Refuse, before torch reads a byte of tensor data, a file that is not the zip archive
    torch.save writes (a text file, an old or foreign format: torch would fail with an
    IndexError or KeyError), one without its data.pkl record, and one whose members declare
    more than CHECKPOINT_INFLATION times the file's size (a zip bomb: torch allocates what a
    member declares). Only the archive's directory is read."""
    size = os.fstat(handle.fileno()).st_size
    try:
        with zipfile.ZipFile(handle) as archive:  # leaves `handle` open
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as error:
        raise ValueError(f"{path}: not a checkpoint: not a zip archive, the format torch.save "
                         f"writes ({printable(error)}); {NOT_OURS}") from None  # fmt: skip
    if not any(member.filename.endswith("/data.pkl") for member in members):
        raise ValueError(f"{path}: not a checkpoint: a zip archive without the data.pkl "
                         f"record torch.save writes; {NOT_OURS}")  # fmt: skip
    declared = sum(member.file_size for member in members)
    bound = CHECKPOINT_INFLATION * size + CHECKPOINT_SLACK
    if declared > bound:
        raise ValueError(
            f"{path}: refused to load: its members would inflate to {declared / 2**20:,.0f} MiB "
            f"from a file of {size / 2**20:,.1f} MiB (at most {bound / 2**20:,.0f} MiB "
            f"allowed); torch.save stores checkpoints uncompressed: {NOT_OURS}"
        )


def checked_weights(model: nn.Module, state: dict, path: Path) -> dict:
    """The checkpoint's weights, which must have exactly the model's names and shapes."""
    weights = state.get("model")
    if not isinstance(weights, dict) or not all(
        isinstance(value, torch.Tensor) for value in weights.values()
    ):
        raise ValueError(f"{path}: no 'model' weights (a dict of tensors): {NOT_OURS}")
    expected = model.state_dict()
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    reshaped = [key for key in expected if key in weights
                and weights[key].shape != expected[key].shape]  # fmt: skip
    if missing or unexpected or reshaped:
        problems = [f"{len(names)} {what} (e.g. {printable(names[0])})"
                    for names, what in ((missing, "missing"), (unexpected, "unexpected"),
                                        (reshaped, "of another shape")) if names]  # fmt: skip
        raise ValueError(f"{path}: its weights do not fit this run's model: "
                         f"{', '.join(problems)}; {NOT_OURS}")  # fmt: skip
    return weights


def progress_of(state: dict, path: Path) -> Progress:
    """Progress restored by key, each value of its type (an int is a fine float)."""
    values = {}
    for key, kind in PROGRESS_TYPES.items():
        value = state.get(key)
        allowed = (int, float) if kind is float else kind
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise ValueError(f"{path}: {key!r} is {type(value).__name__}, expected "
                             f"{kind.__name__}: {NOT_OURS}")  # fmt: skip
        values[key] = value
    if not all(isinstance(row, dict) for row in values["history"]):
        raise ValueError(f"{path}: 'history' holds more than metric rows: {NOT_OURS}")
    return Progress(**values)


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
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in history))


def format_row(row: dict) -> str:
    return (
        f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, "
        f"val loss {row['val_loss']:.4f}, "
        f"AUC {row['val_auc']:.4f}, AP {row['val_ap']:.4f}, EER {row['val_eer']:.4f}, "
        f"TPR@FPR=1e-3 {row['val_tpr@fpr=1e-3']:.4f}, acc {row['val_accuracy']:.4f} "
        f"({throughput(row['train_samples_per_s'])} samples/s, "
        f"data wait {row['data_wait_share']:.0%})"
    )


def throughput(per_second: float) -> str:
    """Samples a second as a person reads them: whole numbers where they are large, a
    decimal where they are small (a CPU run's 0.4 is not "0")."""
    return f"{per_second:,.0f}" if per_second >= 100 else f"{per_second:.1f}"
