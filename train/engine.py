"""The training loop: epochs, validation, checkpoints, resume.

A run folder holds config.yaml, metrics.jsonl, last.pt and best.pt (train/checkpoints.py
says what each holds). The loaders are made once for the run (train/loading.py); the
model (train/models.py) gives P(fake) logits and its own training loss, so the loop is the
same for every kind.

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
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from avcache.cache import schema
from avcache.cache.reader import Cache
from avcache.cache.timeline import frame_times
from avcache.common.atomic import write_text_atomic
from avcache.train import distributed
from avcache.train.augment import (
    batch_seed,
    mismatch_faces,
    mismatch_speech,
    prepare,
    to_device,
)
from avcache.train.checkpoints import (
    Progress,
    checked_weights,
    checkpoint_state,
    read_checkpoint,
    restore,
    save_checkpoint,
)
from avcache.train.config import TrainConfig
from avcache.train.decode import decode_faces
from avcache.train.loader import BATCH_INDEX, REAL, ShardStream
from avcache.train.loading import Loaders
from avcache.train.metrics import auc_by_kind, detection_metrics, log_loss
from avcache.train.mix import Source, open_sources
from avcache.train.models import build_model, frames_held
from avcache.train.ranks import Ranks, ranks_from_env
from avcache.train.runs import BEST, LAST, METRICS
from avcache.train.segments import Video, localisation_metrics, proposals

log = logging.getLogger("avcache.train")


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


def track_frames(cache: Cache | None) -> int:
    """Frames per window of the cache's tracks, 0 where it holds none: a model that reads no
    tracks ignores them."""
    return cache.tracks.frames if cache is not None and cache.tracks is not None else 0


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
        self.model = build_model(config.model, track_frames(cache)).to(self.device)
        if config.model.init:
            self._load_weights(Path(config.model.init))
        self.fields, self.mismatches = self.model.fields, self.model.mismatches
        self.targets = self.model.targets  # read for training only
        self.loaders = Loaders(config, cache, self.sources, (*self.fields, *self.targets),
                               self.device, self.ranks)  # fmt: skip
        self._kinds: dict[tuple, list[str] | None] = {}  # (cache, split) -> its fake kinds
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
        self.progress = Progress()
        # Called after every batch: where a Ctrl-C is acted on (train/interrupt.py).
        self.between_batches: Callable[[], None] = lambda: None
        # Called by rank 0 after every epoch's checkpoint with the history and that epoch's
        # validation labels and scores (the trained caches'): the curves, TensorBoard.
        self.after_epoch: Callable[[list[dict], np.ndarray, np.ndarray], None] = (
            lambda history, labels, scores: None
        )
        self.validated = (np.zeros(0), np.zeros(0))  # the last validate()'s labels and scores

    def _wrap_ddp(self) -> DistributedDataParallel | None:
        return distributed.data_parallel(self.model, self.device) if self.ranks.distributed \
            else None  # fmt: skip

    def _loader(self, split: str, fields: tuple[str, ...], train: bool,
                cache: Cache | None = None) -> tuple[ShardStream, DataLoader]:  # fmt: skip
        """The split's stream and loader (of the run's cache, or of `cache`), made once: its
        workers live for the whole run."""
        return self.loaders.split(split, fields, train, cache)

    def decodes_faces_here(self, split: str, caches: list[Cache] | None = None) -> bool:
        """Whether this device decodes the split's JPEG faces (train/loading.py)."""
        return self.loaders.decodes_faces_here(split, caches)

    @property
    def _cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        """bf16 autocast where the run trains with it (run.amp on CUDA), else nothing."""
        enabled = self._cuda and self.config.run.amp
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _inputs(self, batch: dict, generator: torch.Generator | None) -> tuple[dict, torch.Tensor]:
        """Model inputs and labels of a loader batch; augmented when given a generator."""
        return self._prepared(to_device(decode_faces(batch, self.device), self.device),
                              generator)  # fmt: skip

    def _prepared(self, batch: dict, generator: torch.Generator | None
                  ) -> tuple[dict, torch.Tensor]:  # fmt: skip
        """Model inputs and labels of a batch on the device (evaluation: no generator)."""
        augment = self.config.augment if generator else None
        model = self.config.model
        inputs = prepare(batch, (*self.fields, *self.targets, *LOCATING), augment, generator,
                         model.frames, model.mel_size)  # fmt: skip
        labels = batch[schema.LABEL].float()
        share = augment.av_mismatch if augment else 0.0
        if share and schema.FACES in self.mismatches:
            inputs, labels = mismatch_faces(inputs, labels, share, generator)
        if share and schema.TRACK_AUDIO in self.mismatches:
            inputs, labels = mismatch_speech(inputs, labels, share, generator)
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
                _, loss = self.train_forward(inputs, labels)
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

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Train on the epoch's batches from `progress.batches_done` on."""
        stream, loader = self.loaders.training()
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

        def scored(batch: dict) -> tuple:  # the labels from the host's copy of the batch
            return batch[schema.VIDEO_NAME], batch[schema.LABEL].float().numpy(), \
                self.scores(batch)  # fmt: skip

        parts = self._each_batch(split, fields, cache, "predict", scored)
        parts = scores_read_back([(index, *payload) for index, payload in parts])
        parts = sorted((p for rank_parts in distributed.gather(parts) for p in rank_parts),
                       key=lambda part: part[0])  # fmt: skip
        names = [name for part in parts for name in part[1]]
        return names, np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts])

    @torch.no_grad()
    def scores(self, batch: dict) -> torch.Tensor:
        """P(fake) [B], on the device, of a batch as the loaders give it (train/batches.py:
        avcache-predict --video makes its batches alike), as the model is evaluated."""
        inputs, _ = self._inputs(batch, generator=None)
        with self.autocast():
            logits, _ = self.evaluate_forward(inputs)
            return torch.sigmoid(logits.float())

    @torch.no_grad()
    def frame_scores(self, batch: dict, frames: int | None = None) -> np.ndarray:
        """Each track frame's P(fake) [B, W * T] of a batch, on the host (the model's
        step_logits; T = `frames`, the run cache's frames per window by default)."""
        inputs, _ = self._inputs(batch, generator=None)
        with self.autocast():
            steps = self.model.step_logits(inputs, frames or track_frames(self.cache))
        return torch.sigmoid(steps.float()).cpu().numpy()

    def clips_localised(self, batch: dict, layout: schema.TrackLayout
                        ) -> list[tuple[float, np.ndarray]]:  # fmt: skip
        """Each clip of a batch (holding LOCATING's fields) as (P(fake): its most confident
        held frame's, its proposals [M, 3] from its held frames' scores)."""
        frame_scores = self.frame_scores(batch, layout.frames)
        held = frames_held(batch[schema.TRACK_FRAMES_REAL], layout.frames).flatten(1).numpy()
        times = frame_times(batch[schema.TRACK_START].numpy(), layout.frames, layout.fps)
        clips = []
        for scores, mine, instants in zip(frame_scores, held, times, strict=True):
            scores = scores[mine]
            found = proposals(scores, instants.reshape(-1)[mine], 1 / layout.fps)
            clips.append((float(scores.max(initial=0.0)), found))
        return clips

    @torch.no_grad()
    def localise_split(self, split: str, cache: Cache | None = None) -> Localised:
        """Every cached sample of a split (of the run's cache, or of `cache`) in index order:
        its name, label, P(fake) and proposals (train/segments.py) from its track frames'
        scores (the model's step_logits). Under torchrun each rank scores its share and
        every rank gets the whole."""
        layout = (cache or self.cache).tracks
        fields = (*self.fields, schema.VIDEO_NAME, *LOCATING)

        def localised(batch: dict) -> list[tuple]:
            named = zip(batch[schema.VIDEO_NAME], batch[schema.LABEL],
                        self.clips_localised(batch, layout), strict=True)  # fmt: skip
            return [(name, float(label), score, found) for name, label, (score, found) in named]

        parts = self._each_batch(split, fields, cache, "localise", localised)
        parts = sorted((p for rank_parts in distributed.gather(parts) for p in rank_parts),
                       key=lambda part: part[0])  # fmt: skip
        clips = [clip for _, batch_clips in parts for clip in batch_clips]
        return Localised([c[0] for c in clips], np.array([c[1] for c in clips]),
                         np.array([c[2] for c in clips]), [c[3] for c in clips])  # fmt: skip

    def _each_batch(self, split: str, fields: tuple[str, ...], cache: Cache | None, what: str,
                    per_batch: Callable[[dict], object]) -> list[tuple[int, object]]:  # fmt: skip
        """(global batch index, per_batch(batch)) of every batch of this rank's share of a
        split (of the run's cache, or of `cache`), the model in eval mode, a progress bar
        named `what` on rank 0."""
        stream, loader = self._loader(split, fields, train=False, cache=cache)
        self.model.eval()
        parts = []
        bar = tqdm(loader, total=len(stream), desc=f"{what} {split}", leave=False,
                   disable=not self.ranks.main)  # fmt: skip
        for batch in bar:
            if not batch[REAL]:
                continue
            parts.append((batch[BATCH_INDEX], per_batch(batch)))
            self.between_batches()
        return parts

    def localisation_row(self, split: str, source: Source) -> dict[str, float]:
        """The localisation metrics (val_ap@0.5, ..., val_ar@5, val_score: the challenge's)
        of a cache's split, where the model scores frames and the cache knows its fakes'
        segments."""
        localised = self.localise_split(split, source.cache)
        truths = source.cache.fake_segments(split)
        videos = [Video.of(found, truth) for found, truth in
                  zip(localised.proposals, truths, strict=True)]  # fmt: skip
        return {f"val_{key}": value for key, value in localisation_metrics(videos).items()}

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
        self.validated = labels, scores
        row = {
            "val_loss": log_loss(labels, scores),
            **{f"val_{k}": v for k, v in detection_metrics(labels, scores).items()},
        }
        if self.model.localises:
            row |= self._localisation_metrics()
        for source, source_labels, source_scores in scored:
            row[f"val_auc/{source.name}"] = detection_metrics(source_labels, source_scores)["auc"]
            kinds = self._fake_kinds(source.cache, len(source_labels))
            if kinds is not None:
                by_kind = auc_by_kind(source_labels, source_scores, kinds)
                row |= {f"val_auc/{source.name}/{kind}": auc for kind, auc in by_kind.items()}
        return row

    def _localisation_metrics(self) -> dict[str, float]:
        """The localisation metrics of the trained caches' val splits that know their
        fakes' segments (the first such cache's, where several do)."""
        split = self.config.data.val_split
        for source in self.sources:
            if source.weight > 0 and source.cache.fake_segments(split) is not None:
                return self.localisation_row(split, source)
        return {}

    def _fake_kinds(self, cache: Cache, count: int) -> list[str] | None:
        """Each val sample's kind of fake in index order, where the cache records kinds."""
        key = (str(cache.root), self.config.data.val_split)
        if key not in self._kinds:
            kinds = cache.fake_kinds(self.config.data.val_split)
            if kinds is not None and len(kinds) != count:
                log.warning("%s: %d fake kinds for %d val samples: per-kind AUC left out",
                            cache.location, len(kinds), count)  # fmt: skip
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
                self.after_epoch(self.progress.history, *self.validated)
                write_metrics(self.out / METRICS, self.progress.history)
                log.info(format_row(row))
        distributed.barrier()  # the other ranks may read the checkpoints next
        return self.progress

    def state(self, resumable: bool = True) -> dict:
        """Everything a resume needs, or (not resumable: best.pt) what prediction needs
        (train/checkpoints.py)."""
        if not resumable:
            return checkpoint_state(self.model, self.config.model.kind, self.progress)
        return checkpoint_state(self.model, self.config.model.kind, self.progress,
                                self.optimizer, self.scheduler)  # fmt: skip

    def save(self, path: Path, resumable: bool = True) -> None:
        save_checkpoint(path, self.state(resumable))

    def _load_weights(self, path: Path) -> None:
        """model.init: start from the weights of an avcache checkpoint (a new schedule)."""
        state = read_checkpoint(path)
        self.model.load_state_dict(checked_weights(self.model, state, path))
        log.info("weights from %s (epoch %s of its run)", path, state.get("epoch", "?"))

    def load(self, path: Path, weights_only_model: bool = False) -> None:
        """Restore a checkpoint: the weights, and unless `weights_only_model`, the optimiser,
        scheduler and progress (train/checkpoints.py checks each value before use)."""
        if weights_only_model:
            restore(path, self.model, self.config.model.kind)
            return
        self.progress = restore(path, self.model, self.config.model.kind, self.optimizer,
                                self.scheduler)  # fmt: skip


# What localising reads beside the model's inputs: where each window starts and ends.
LOCATING = (schema.TRACK_START, schema.TRACK_FRAMES_REAL)


@dataclass(frozen=True)
class Localised:
    """A split's samples in index order: names, labels, P(fake) (the most confident held
    frame's) and each one's proposals (float [M, 3]: confidence, start, end seconds)."""

    names: list[str]
    labels: np.ndarray
    scores: np.ndarray
    proposals: list[np.ndarray]


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
    located = ""
    if "val_score" in row:  # a model that localises, on a cache that knows the segments
        located = (f", segments AP@0.5 {row['val_ap@0.5']:.4f}, AR@10 {row['val_ar@10']:.4f}, "
                   f"score {row['val_score']:.4f}")  # fmt: skip
    return (
        f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, "
        f"val loss {row['val_loss']:.4f}, "
        f"AUC {row['val_auc']:.4f}, AP {row['val_ap']:.4f}, EER {row['val_eer']:.4f}, "
        f"TPR@FPR=1e-3 {row['val_tpr@fpr=1e-3']:.4f}, acc {row['val_accuracy']:.4f}{located} "
        f"({throughput(row['train_samples_per_s'])} samples/s, "
        f"data wait {row['data_wait_share']:.0%})"
    )


def throughput(per_second: float) -> str:
    """Samples a second as a person reads them: whole numbers where they are large, a
    decimal where they are small (a CPU run's 0.4 is not "0")."""
    return f"{per_second:,.0f}" if per_second >= 100 else f"{per_second:.1f}"
