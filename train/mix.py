"""Training on several caches at once, each drawn in proportion to its weight (data.caches).

An epoch of a mix holds L samples, L = the sum of the train sizes of the caches trained on
(weight above 0), as MosaicML Streaming sizes an epoch of streams given only `proportion`:
a mix of caches weighted by their sizes reads every sample once, like one cache holding
them all, and the schedule's epochs keep their meaning. The order is a pure function of
(seed, epoch), built in three steps:
  1. cache i gets n_i of the L samples, L * w_i / sum(w) rounded by largest remainder so
     that the n_i add up to L (each within one sample of its exact share);
  2. each cache is an endless sequence of passes over its train split, pass p ordered as
     a single cache's epoch p is (train/loader.py ordered_blocks, in the cache's own random
     stream; the first cache's stream is a single cache's, so a mix of one cache is that
     cache's run). Epoch e takes samples [e * n_i, (e + 1) * n_i) of that sequence: a cache
     drawn below its size shows new samples each epoch until all have been seen (no
     sample twice before every sample once), one drawn above its size is repeated, each
     repeat in a new order;
  3. the caches' blocks are merged in a random order drawn from (seed, epoch) that keeps
     each cache's own order (a uniform random merge), so every stretch of the epoch holds
     the caches near their shares, block by block (a batch of batch_size / block_size
     blocks is the finest grain: blocks stay one h5py read each).
The merged blocks are cut into global batches and dealt to ranks and workers exactly as
for one cache (ShardStream), so the order does not depend on their number, and a resume
starts at the exact next global batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from avcache.cache import open_cache, schema
from avcache.cache.identity import Identity, shard_identities
from avcache.cache.reader import Cache, ShardEntry
from avcache.common.config import ConfigError
from avcache.common.untrusted import printable
from avcache.train.config import TrainConfig, remote_settings
from avcache.train.loader import Block, LoaderPlan, ShardStream, ordered_blocks

# The random stream of the merge, above any cache's own (cache i draws from stream i).
MERGE_STREAM = 2**31 - 1
TRACK_FIELDS = (schema.LIPS, schema.TRACK_AUDIO)


@dataclass(frozen=True)
class Source:
    """One cache of a run: the name its metrics go by, its weight, the opened cache."""

    name: str
    weight: float
    cache: Cache


def open_sources(config: TrainConfig, cache: Cache | None) -> list[Source]:
    """The run's caches: `cache` alone (weight 1) without data.caches, else every entry, each
    opened as --cache opens one (open_cache: its index, shards and the cache-level trust
    rules); `cache` is reused where an entry names its folder."""
    if not config.data.caches:
        return [] if cache is None else [Source(cache.name, 1.0, cache)]
    sources, remote = [], remote_settings(config.data)
    for entry in config.data.caches:
        same = cache is not None and cache.lies_at(entry.path)
        opened = cache if same else open_cache(entry.path, remote=remote)
        sources.append(Source(entry.label, entry.weight, opened))
    return sources


def trained(sources: list[Source]) -> list[Source]:
    """The caches training draws from (a weight of 0 is validated only)."""
    return [source for source in sources if source.weight > 0]


def model_inputs(cache: Cache, fields: tuple[str, ...]) -> dict[str, object]:
    """What a model reading `fields` finds in the cache, by the key that names it: shapes and
    dtypes of one sample, and the tracks' layout for the track kinds. Every shard of a
    cache has one config, so its first shard with samples speaks for it."""
    entry = next(entry for entry in cache.shards if entry.num_samples)
    found: dict[str, object] = {}
    with entry.open() as shard:
        for field in fields:
            shape = shard.sample_shape(field)
            if field == schema.FACES:
                found |= {"faces.frames": shape[0], "faces.size": shape[1]}
            else:
                found[f"{field} shape"] = shape
            found[f"{field} dtype"] = str(shard.dtype(field))
    if cache.tracks is not None and set(fields) & set(TRACK_FIELDS):
        layout = dataclasses.asdict(cache.tracks)
        found |= {f"tracks.{key}": value for key, value in layout.items()}
    return found


def check_sources_agree(sources: list[Source], fields: tuple[str, ...], kind: str) -> None:
    """Refuse a mix whose caches differ in what the model reads, its `fields` (batches are
    assembled from every cache's blocks at once), naming both caches, the key and the
    model's kind."""
    if len(sources) < 2:
        return
    first, expected = sources[0], model_inputs(sources[0].cache, fields)
    for other in sources[1:]:
        found = model_inputs(other.cache, fields)
        for key, value in expected.items():
            if found.get(key) != value:
                raise ConfigError(
                    f"data.caches: {first.name} ({first.cache.location}) and {other.name} "
                    f"({other.cache.location}) differ in {key}: {value} and {found.get(key)}; "
                    f"model.kind={kind} reads it from both: preprocess them alike"
                )


def check_held_out(sources: list[Source], train_split: str, val_split: str) -> None:
    """Refuse a run that validates on a sample it trains on: any sample of a trained cache's
    train split (weight above 0) found in any cache's val split (weight 0 included, the
    same cache included), by identity (cache/identity.py: video name, mel sum64, duration),
    so that a copy of a shard, a copy of a cache with its splits swapped, or one video
    cached in two layouts is caught as surely as a shard listed twice. It opens each of
    those shards once more and reads three small columns, no pixel."""
    trained_on: dict[Identity, tuple[Source, ShardEntry]] = {}
    for source in trained(sources):
        for entry in source.cache.shards_of(train_split):
            for identity in shard_identities(entry):
                trained_on.setdefault(identity, (source, entry))
    first, found, total = None, 0, 0
    for source in sources:
        for entry in source.cache.shards_of(val_split):
            identities = shard_identities(entry)
            hits = [identity for identity in identities if identity in trained_on]
            if hits and first is None:
                first = (source, entry, hits[0])
            found, total = found + len(hits), total + len(identities)
    if first is not None:
        raise ConfigError(validated_on_training_data(first, trained_on, found, total,
                                                     (train_split, val_split)))  # fmt: skip


def validated_on_training_data(first: tuple[Source, ShardEntry, Identity],
                               trained_on: dict[Identity, tuple[Source, ShardEntry]],
                               found: int, total: int, splits: tuple[str, str]) -> str:  # fmt: skip
    """The one line naming both shards, their caches and one video."""
    source, entry, identity = first
    owner, where = trained_on[identity]
    video = printable(repr(identity[0]))
    return (
        f"{entry.path} (cache {source.name}, split {splits[1]}) holds {video}, which the run "
        f"trains on in {where.path} (cache {owner.name}, split {splits[0]}): the same sample "
        f"(its video name, mel image and duration); {found} of the {total} validation "
        "samples are trained on, so val_auc would score what the model learnt: validate on "
        "videos no trained cache's train split holds (drop the copy from data.caches, or "
        "preprocess the splits apart)"
    )


def source_counts(totals: list[int], weights: list[float]) -> list[int]:
    """Samples each cache gives an epoch of sum(totals) samples: its exact share rounded by
    largest remainder (ties to the earlier cache), so that they add up to the epoch."""
    epoch = sum(totals)
    weights = [Fraction(weight) for weight in weights]
    shares = [epoch * weight / sum(weights) for weight in weights]
    counts = [int(share) for share in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in by_remainder[: epoch - sum(counts)]:
        counts[i] += 1
    return counts


def source_window(sizes: list[int], plan: LoaderPlan, stream: int, epoch: int,
                  count: int) -> list[Block]:  # fmt: skip
    """Samples [epoch * count, (epoch + 1) * count) of the cache's endless sequence of passes,
    pass p ordered as ordered_blocks' epoch p in the cache's random stream."""
    total, first = sum(sizes), epoch * count
    if not count:
        return []
    if not total:
        raise ValueError("a cache drawn from must hold training samples")
    run, skip = divmod(first, total)
    blocks: list[Block] = []
    taken = 0
    while taken < count:
        for block in ordered_blocks(sizes, plan, run, stream):
            if skip >= len(block):
                skip -= len(block)
                continue
            start = block.start + skip
            stop = min(block.stop, start + count - taken)
            blocks.append(Block(block.shard, start, stop))
            skip, taken = 0, taken + stop - start
            if taken == count:
                break
        run += 1
    return blocks


def mixed_blocks(sizes: list[list[int]], counts: list[int], plan: LoaderPlan,
                 epoch: int) -> list[Block]:  # fmt: skip
    """The epoch's blocks of every cache (shards numbered through the caches in turn),
    merged in a random order that keeps each cache's own."""
    windows, offset = [], 0
    for stream, (shard_sizes, count) in enumerate(zip(sizes, counts, strict=True)):
        window = source_window(shard_sizes, plan, stream, epoch, count)
        windows.append([Block(b.shard + offset, b.start, b.stop) for b in window])
        offset += len(shard_sizes)
    turns = np.repeat(np.arange(len(windows)), [len(window) for window in windows])
    if plan.shuffle:
        turns = np.random.default_rng([plan.seed, epoch, MERGE_STREAM]).permutation(turns)
    queues = [iter(window) for window in windows]
    return [next(queues[turn]) for turn in turns]


class MixedStream(ShardStream):
    """A ShardStream over the train shards of several caches, drawn by weight per epoch."""

    def __init__(self, shards: list[list[ShardEntry]], weights: list[float],
                 fields: tuple[str, ...], plan: LoaderPlan, rank: int = 0, world: int = 1,
                 jpeg_faces: bool = False) -> None:  # fmt: skip
        flat = [entry for entries in shards for entry in entries]
        super().__init__(flat, fields, plan, rank, world, jpeg_faces)
        self.source_sizes = [[entry.num_samples for entry in entries] for entries in shards]
        self.counts = source_counts([sum(sizes) for sizes in self.source_sizes], weights)
        # shard number -> its cache's number, for whoever counts samples by cache
        self.source_of_shard = [i for i, sizes in enumerate(self.source_sizes) for _ in sizes]

    def epoch_blocks(self, epoch: int) -> list[Block]:
        return mixed_blocks(self.source_sizes, self.counts, self.plan, epoch)
