"""Streaming batches from cache shards: block reads, deterministic shuffling, uint8 batches.

The order of an epoch is a pure function of (seed, epoch), whatever the number
of ranks and workers:
  1. shards are permuted, then taken in groups of `shard_group`;
  2. each shard is cut into blocks of `block_size` contiguous samples (one h5py
     call each) and the blocks of a group are permuted together, so a batch
     mixes several shards even when a label file was sorted by class;
  3. that sequence of samples is cut into global batches of `batch_size`. A batch
     is read block by block straight into its preallocated arrays: the in-memory
     buffer is the batch itself, and its composition is what the shuffle decides
     (the order of rows inside a batch does not change a gradient).
Global batch g goes to rank g % world; the rank's i-th batch to worker
i % workers, so torch's round-robin over workers yields every rank's batches in
global order, each sample exactly once per epoch. Every rank yields the same
number of batches (a rank short of one repeats a batch marked not real, which
counts for nothing), so collectives never wait on a rank that has run dry, the
usual hang of sharded loaders under DDP. An epoch can start at any global batch
that is a multiple of the world size: that is how a run resumes mid-epoch at
the exact next sample. Batches stay uint8 and are normalised where the model
runs (train/augment.py). Every block of mel images or faces is checked against
its per-sample sums as it is read (cache/reader.py): a damaged shard stops the
epoch with an error naming it before its batch is yielded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from avcache.cache import schema
from avcache.cache.reader import ShardEntry, ShardReader
from avcache.cache.remote import FetchAhead
from avcache.train.batches import JpegFaces, batch_of
from avcache.train.config import REMOTE_OPEN_GROUPS

MAX_OPEN_SHARDS = 64  # per worker; HDF5 handles are cheap but not free
# Per-sample scalars, and what a reader derives from them, are read once per shard and
# sliced in memory: a 16-byte h5py read costs as much as a 1 MiB one.
SMALL_FIELDS = (schema.LABEL, schema.HAS_AUDIO, schema.DURATION)
# What a reader derives from the columns a shard stores, by field (all of a shard's samples).
DERIVED_FIELDS = {schema.FRAME_FAKE: ShardReader.read_frame_fake}
# Keys a batch carries besides its datasets: its global index in the epoch (which seeds
# its augmentation) and whether it is real or a rank's padding.
BATCH_INDEX, REAL = "batch_index", "real"


@dataclass(frozen=True)
class Block:
    """Samples [start, stop) of shard number `shard`: one contiguous h5py read."""

    shard: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class LoaderPlan:
    batch_size: int
    block_size: int = 16  # samples per h5py read; smaller mixes batches better, reads more often
    shard_group: int = 8  # shards whose blocks are shuffled together
    shuffle: bool = True
    drop_last: bool = False  # drop a final partial batch (compiled training) or keep it
    seed: int = 0


def ordered_blocks(sizes: list[int], plan: LoaderPlan, epoch: int,
                   stream: int = 0) -> list[Block]:  # fmt: skip
    """Every sample of the epoch once, as blocks in the epoch's order. `stream` (a cache of a
    mix, train/mix.py) draws from its own random stream; 0 is a single cache's, as always."""
    rng = np.random.default_rng([plan.seed, epoch, stream] if stream else [plan.seed, epoch])
    order = rng.permutation(len(sizes)) if plan.shuffle else np.arange(len(sizes))
    blocks: list[Block] = []
    for first in range(0, len(order), plan.shard_group):
        group = [
            Block(int(shard), start, min(start + plan.block_size, sizes[shard]))
            for shard in order[first : first + plan.shard_group]
            for start in range(0, sizes[shard], plan.block_size)
        ]
        if plan.shuffle:
            group = [group[i] for i in rng.permutation(len(group))]
        blocks.extend(group)
    return blocks


def epoch_batches(sizes: list[int], plan: LoaderPlan, epoch: int) -> list[list[Block]]:
    """The epoch's global batches, each a list of block reads (a block may be split)."""
    return cut_batches(ordered_blocks(sizes, plan, epoch), plan)


def cut_batches(blocks: list[Block], plan: LoaderPlan) -> list[list[Block]]:
    """A sequence of blocks cut into global batches of `plan.batch_size` samples."""
    batches: list[list[Block]] = [[]]
    room = plan.batch_size
    for block in blocks:
        start = block.start
        while start < block.stop:
            take = min(room, block.stop - start)
            batches[-1].append(Block(block.shard, start, start + take))
            start, room = start + take, room - take
            if room == 0:
                batches.append([])
                room = plan.batch_size
    # A partial last batch is dropped when asked, unless it is the only one (a split
    # smaller than a batch still trains).
    if not batches[-1] or (plan.drop_last and room > 0 and len(batches) > 1):
        batches.pop()
    return batches


class ShardStream(IterableDataset):
    """An iterable of batches (dicts of uint8/int8 tensors) over a list of shards.

    Only `fields` are read: a mel-only model never touches `faces`. HDF5 files are
    opened lazily inside the process that iterates (each DataLoader worker). With
    `jpeg_faces`, faces are read and checked but not decoded (train/batches.py JpegFaces).
    """

    def __init__(
        self,
        shards: list[ShardEntry],
        fields: tuple[str, ...],
        plan: LoaderPlan,
        rank: int = 0,
        world: int = 1,
        jpeg_faces: bool = False,
        fetch_ahead: int = 0,
    ) -> None:
        self.shards = list(shards)  # each opened against its entry: counts, split, faces
        self.sizes = [entry.num_samples for entry in shards]
        self.fields = tuple(dict.fromkeys((*fields, schema.LABEL)))
        self.plan, self.rank, self.world = plan, rank, world
        self.jpeg_faces = jpeg_faces
        # (epoch, first global batch) in shared memory: persistent DataLoader workers keep
        # the copy of this stream they were started with, and read these at every epoch.
        self._position = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._readers: OrderedDict[int, ShardReader] = OrderedDict()
        # On object storage an open shard is held in the bounded local folder
        # (cache/remote.py): a worker keeps open only the shard groups its batches read at
        # once, and lets them go when its pass ends; it downloads up to `fetch_ahead` shards
        # before it needs them, in the order it will open them.
        self.remote = any(entry.store is not None for entry in self.shards)
        self.open_limit = REMOTE_OPEN_GROUPS * plan.shard_group if self.remote else MAX_OPEN_SHARDS
        self.fetch_ahead = fetch_ahead
        self._fetching: FetchAhead | None = None
        self._first_opened: dict[int, int] = {}  # shard -> its place in the pass's opening order
        self._columns: dict[tuple[int, str], np.ndarray] = {}

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch `epoch` from global batch `start` (a multiple of the world size)."""
        if start % self.world:
            raise ValueError(f"an epoch can start only at a multiple of the {self.world} ranks, "
                             f"not at global batch {start}")  # fmt: skip
        self._position[0], self._position[1] = epoch, start

    @property
    def epoch(self) -> int:
        return int(self._position[0])

    @property
    def start(self) -> int:
        return int(self._position[1])

    def epoch_blocks(self, epoch: int) -> list[Block]:
        """The epoch's samples as blocks in their order (a mix of caches orders its own)."""
        return ordered_blocks(self.sizes, self.plan, epoch)

    def global_batches(self) -> list[list[Block]]:
        """The current epoch's global batches."""
        return cut_batches(self.epoch_blocks(self.epoch), self.plan)

    def batches_per_rank(self) -> int:
        """Batches every rank yields in a whole epoch (padding included)."""
        return self._per_rank(self.global_batches())

    def _per_rank(self, batches: list) -> int:
        return -(-len(batches) // self.world)

    def __len__(self) -> int:
        """Batches this rank yields from the start of this iteration."""
        return self.batches_per_rank() - self.start // self.world

    def __iter__(self) -> Iterator[dict[str, object]]:
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        batches = self.global_batches()
        first = self.start // self.world
        mine = [
            (local * self.world + self.rank)
            for local in range(first, self._per_rank(batches))
            if (local - first) % workers == worker_id
        ]
        if self.remote:
            self._fetch_ahead_of([batches[g % len(batches)] for g in mine])
        try:
            for global_index in mine:
                real = global_index < len(batches)
                batch = self.read_batch(
                    batches[global_index if real else global_index % len(batches)]
                )
                yield {**batch, BATCH_INDEX: global_index, REAL: real}
        finally:
            if self.remote:
                self.close()

    def _fetch_ahead_of(self, batches: list[list[Block]]) -> None:
        """Start fetching this pass's shards ahead of their reading, in the order it first
        opens them (cache/remote.py FetchAhead)."""
        order = list(dict.fromkeys(block.shard for batch in batches for block in batch))
        self._first_opened = {shard: place for place, shard in enumerate(order)}
        fetches = [self.shards[shard].hold for shard in order]
        self._fetching = FetchAhead(fetches, self.fetch_ahead).start()

    def close(self) -> None:
        """Close the shards this process has open (each holds its shard in a remote cache's
        bounded folder), and stop fetching ahead; they are opened again when next read."""
        if self._fetching is not None:
            self._fetching.close()
            self._fetching = None
        while self._readers:
            self._readers.popitem()[1].close()

    def read_batch(self, blocks: list[Block]) -> dict[str, torch.Tensor | list[str]]:
        """The blocks' samples as a batch (train/batches.py: the format every path shares)."""
        columns, faces = {}, None
        for field in self.fields:
            if field == schema.FACES and self.jpeg_faces:
                faces = self._read_jpeg(blocks)
            else:
                columns[field] = self._read_field(field, blocks)
        return batch_of(columns, faces)

    def _read_jpeg(self, blocks: list[Block]) -> JpegFaces:
        """The blocks' face crops as checked JPEG bytes, joined, with each crop's end."""
        parts, ends, offset = [], [], 0
        for block in blocks:
            data, block_ends = self._reader(block.shard).read_jpeg(block.start, block.stop)
            parts.append(data)
            ends.append(block_ends + offset)
            offset += len(data)
        where = [f"{self.shards[b.shard].path} samples {b.start}-{b.stop - 1}" for b in blocks]
        return JpegFaces(np.concatenate(parts), np.concatenate(ends), where)

    def _read_field(self, field: str, blocks: list[Block]) -> np.ndarray | list[str]:
        if field == schema.VIDEO_NAME:
            return [n for b in blocks for n in self._column(b.shard, field)[b.start : b.stop]]
        if field in SMALL_FIELDS or field in DERIVED_FIELDS:
            parts = [self._column(b.shard, field)[b.start : b.stop] for b in blocks]
            return np.concatenate(parts)
        first = self._reader(blocks[0].shard)
        size = sum(len(block) for block in blocks)
        out = np.empty((size, *first.sample_shape(field)), dtype=first.dtype(field))
        position = 0
        for block in blocks:  # one h5py call per block, straight into the batch
            # read_into checks the rows against their stored sums and raises a
            # DamagedShardError naming the shard (as for a read HDF5 refuses): the batch is
            # never yielded, so no optimiser step sees a damaged sample.
            target = out[position : position + len(block)]
            self._reader(block.shard).read_into(field, block.start, target)
            position += len(block)
        return out

    def _column(self, shard: int, field: str) -> np.ndarray:
        column = self._columns.get((shard, field))
        if column is None:
            reader = self._reader(shard)
            derive = DERIVED_FIELDS.get(field)
            column = derive(reader) if derive else reader.read(field)
            self._columns[(shard, field)] = column
        return column

    def _reader(self, shard: int) -> ShardReader:
        reader = self._readers.get(shard)
        if reader is None:
            if len(self._readers) >= self.open_limit:
                self._readers.popitem(last=False)[1].close()
            reader = self._readers[shard] = self.shards[shard].open()
            if self._fetching is not None and shard in self._first_opened:
                self._fetching.opened(self._first_opened[shard])
        self._readers.move_to_end(shard)
        return reader

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_readers"] = OrderedDict()  # open HDF5 handles never cross a process boundary
        state["_columns"] = {}
        state["_fetching"] = None  # nor does a fetching thread
        return state
