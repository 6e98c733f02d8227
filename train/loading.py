"""The run's data loaders: each split's stream over the shards (train/loader.py), or the mix
of several caches (train/mix.py), under a torch DataLoader with as many workers as the
model's inputs need, made once for the whole run."""

from __future__ import annotations

import logging
import os

import torch
from torch.utils.data import DataLoader

from avcache.cache import schema
from avcache.cache.reader import Cache
from avcache.train.config import TrainConfig
from avcache.train.decode import decode_on_device
from avcache.train.loader import LoaderPlan, ShardStream
from avcache.train.mix import MixedStream, Source, trained
from avcache.train.ranks import Ranks

log = logging.getLogger("avcache.train")


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
        raise ValueError(f"{cache.location}: split {split!r} has no cached samples "
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


class Loaders:
    """A run's loaders, each made once (its workers live for the whole run), for a model
    reading `fields`: every split of the run's cache or of another, and the training mix
    of data.caches; and, for each, whether this device decodes its JPEG faces."""

    def __init__(self, config: TrainConfig, cache: Cache, sources: list[Source],
                 fields: tuple[str, ...], device: torch.device, ranks: Ranks) -> None:  # fmt: skip
        self.config, self.cache, self.sources = config, cache, sources
        self.fields, self.device, self.ranks = fields, device, ranks
        self._decoding: dict[tuple, bool] = {}  # (split, caches) -> this device decodes
        self._made: dict[tuple | str, tuple[ShardStream, DataLoader]] = {}

    def split(self, split: str, fields: tuple[str, ...], train: bool,
              cache: Cache | None = None) -> tuple[ShardStream, DataLoader]:  # fmt: skip
        """The split's stream and loader, of the run's cache or of `cache`."""
        cache = cache or self.cache
        key = (str(cache.root), split, fields, train)
        if key not in self._made:
            jpeg = schema.FACES in fields and self.decodes_faces_here(split, [cache])
            self._made[key] = make_loader(cache, split, fields, self.config, self.device,
                                          self.ranks, train=train, jpeg_faces=jpeg)  # fmt: skip
        return self._made[key]

    def training(self) -> tuple[ShardStream, DataLoader]:
        """The training split's stream: of the run's cache, or the mix of data.caches."""
        split = self.config.data.train_split
        if not self.config.data.caches:
            return self.split(split, self.fields, train=True)
        if "mix" not in self._made:
            drawn = trained(self.sources)
            caches = [source.cache for source in drawn]
            jpeg = schema.FACES in self.fields and self.decodes_faces_here(split, caches)
            self._made["mix"] = make_mixed_loader(drawn, split, self.fields, self.config,
                                                  self.device, self.ranks, jpeg)  # fmt: skip
        return self._made["mix"]

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
            if choice == "cuda" and self.device.type != "cuda" and codecs:
                log.warning("this run decoded its faces with nvJPEG (data.decode=cuda); here, "
                            "without CUDA, the CPU decodes them, whose pixels differ by a grey "
                            "level or two (docs/performance.md)")  # fmt: skip
                choice = "cpu"
            self._decoding[key] = decode_on_device(choice, self.device, codecs)
        return self._decoding[key]
