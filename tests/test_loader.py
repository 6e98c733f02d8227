"""The streaming loader: exactly once per epoch, deterministic, disjoint (rank, worker) splits."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

from avcache.cache import open_cache, schema
from avcache.cache.reader import DamagedShardError, ShardReader
from avcache.train.loader import BATCH_INDEX, REAL, LoaderPlan, ShardStream, epoch_batches
from tests.test_cache import flip_byte_in_row, make_sample, write_cache

SHARDS = [13, 0, 7, 30, 5]  # uneven on purpose, one empty
TOTAL = sum(SHARDS)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    write_cache(root, SHARDS)
    return open_cache(root)


def names_in_order(cache, plan, epoch=0, world=1, workers=0, start=0) -> list[list[str]]:
    """Per rank, the names of its real batches in the order the DataLoader yields them."""
    per_rank = []
    for rank in range(world):
        stream = ShardStream(cache.shards, (schema.VIDEO_NAME,), plan, rank, world)
        stream.set_epoch(epoch, start)
        loader = DataLoader(stream, batch_size=None, num_workers=workers)
        per_rank.append([list(batch[schema.VIDEO_NAME]) for batch in loader if batch[REAL]])
    return per_rank


def global_order(per_rank: list[list[list[str]]]) -> list[list[str]]:
    """Interleave ranks' batches back into global order: batch g came from rank g % world."""
    world, merged = len(per_rank), []
    for step in range(max(len(batches) for batches in per_rank)):
        merged.extend(per_rank[rank][step] for rank in range(world) if step < len(per_rank[rank]))
    return merged


@pytest.mark.parametrize("batch_size,block_size", [(4, 3), (8, 16), (64, 2), (1, 1)])
def test_every_sample_once_per_epoch(cache, batch_size, block_size):
    plan = LoaderPlan(batch_size=batch_size, block_size=block_size, shard_group=2)
    (batches,) = names_in_order(cache, plan)
    names = [name for batch in batches for name in batch]
    assert Counter(names) == Counter(f"vidéo {i}.mp4" for i in range(TOTAL))
    assert all(len(batch) == batch_size for batch in batches[:-1])


@pytest.mark.parametrize("world,workers", [(1, 2), (2, 0), (2, 3), (3, 2)])
def test_ranks_and_workers_split_disjointly_and_keep_the_global_order(cache, world, workers):
    plan = LoaderPlan(batch_size=5, block_size=4, shard_group=3, seed=7)
    (reference,) = names_in_order(cache, plan, epoch=1)
    per_rank = names_in_order(cache, plan, epoch=1, world=world, workers=workers)
    assert global_order(per_rank) == reference
    seen = [name for batches in per_rank for batch in batches for name in batch]
    assert len(seen) == len(set(seen)) == TOTAL


def test_same_seed_same_order_and_epochs_differ(cache):
    plan = LoaderPlan(batch_size=6, block_size=2, seed=3)
    first, again = names_in_order(cache, plan), names_in_order(cache, plan)
    assert first == again
    assert names_in_order(cache, plan, epoch=1) != first
    assert names_in_order(cache, LoaderPlan(batch_size=6, block_size=2, seed=4)) != first


def test_unshuffled_order_is_the_index_order(cache):
    (batches,) = names_in_order(cache, LoaderPlan(batch_size=10, shuffle=False))
    assert [n for b in batches for n in b] == [f"vidéo {i}.mp4" for i in range(TOTAL)]


def test_drop_last_keeps_only_full_batches():
    plan = LoaderPlan(batch_size=4, block_size=3, drop_last=True)
    batches = epoch_batches([5, 6], plan, epoch=0)
    assert [sum(len(b) for b in batch) for batch in batches] == [4, 4]


def test_batches_hold_the_written_arrays(cache):
    stream = ShardStream(cache.shards, (schema.MEL, schema.FACES, schema.VIDEO_NAME),
                         LoaderPlan(batch_size=9, block_size=4, seed=1))  # fmt: skip
    for batch in stream:
        assert batch[schema.MEL].dtype == torch.uint8 and batch[schema.LABEL].dtype == torch.int8
        for row, name in enumerate(batch[schema.VIDEO_NAME]):
            expected = make_sample(int(name.split()[1].split(".")[0]))
            assert torch.equal(batch[schema.MEL][row], torch.from_numpy(expected.mel))
            assert torch.equal(batch[schema.FACES][row], torch.from_numpy(expected.faces))
            assert batch[schema.LABEL][row] == expected.label


def test_mel_only_never_reads_faces(cache, monkeypatch):
    read = Counter()
    original_into, original_read = ShardReader.read_into, ShardReader.read

    def counting_into(self, name, start, out):
        read[name] += 1
        return original_into(self, name, start, out)

    def counting_read(self, name, start=0, stop=None):
        read[name] += 1
        return original_read(self, name, start, stop)

    monkeypatch.setattr(ShardReader, "read_into", counting_into)
    monkeypatch.setattr(ShardReader, "read", counting_read)
    batches = list(ShardStream(cache.shards, (schema.MEL,), LoaderPlan(batch_size=8)))
    assert set(batches[0]) == {schema.MEL, schema.LABEL, BATCH_INDEX, REAL}
    # Opening a shard reads its small columns once, to check them; of the big ones, mel only.
    assert set(read) - set(schema.META_FIELDS) == {schema.MEL}


def test_every_rank_yields_as_many_batches_padding_marked_not_real(cache):
    plan = LoaderPlan(batch_size=4)
    total = -(-TOTAL // 4)  # 14 global batches on 3 ranks: 5, 5 and 4 real ones
    streams = [ShardStream(cache.shards, (schema.MEL,), plan, rank, 3) for rank in range(3)]
    yielded = [list(stream) for stream in streams]
    assert [len(s) for s in streams] == [len(batches) for batches in yielded] == [5, 5, 5]
    real = [[b[BATCH_INDEX] for b in batches if b[REAL]] for batches in yielded]
    assert sorted(i for indices in real for i in indices) == list(range(total))
    assert [b[BATCH_INDEX] for b in yielded[2] if not b[REAL]] == [14]


def test_three_shards_on_two_ranks_stay_in_step(tmp_path):
    """The WebDataset + DDP hang: shards dealt to ranks leave one rank with less to do."""
    write_cache(tmp_path, [8, 8, 1])  # 17 samples: 5 batches of 4, so one rank is short
    plan = LoaderPlan(batch_size=4, block_size=4, seed=2)
    streams = [ShardStream(open_cache(tmp_path).shards, (schema.VIDEO_NAME,), plan, rank, 2)
               for rank in range(2)]  # fmt: skip
    yielded = [list(stream) for stream in streams]
    assert [len(batches) for batches in yielded] == [3, 3]
    names = [n for batches in yielded for b in batches if b[REAL] for n in b[schema.VIDEO_NAME]]
    assert sorted(names) == sorted(f"vidéo {i}.mp4" for i in range(17))


@pytest.mark.parametrize("world,workers", [(1, 0), (1, 2), (2, 0), (2, 3)])
def test_an_epoch_started_mid_way_yields_exactly_the_rest(cache, world, workers):
    plan = LoaderPlan(batch_size=3, block_size=2, shard_group=2, seed=5)
    (reference,) = names_in_order(cache, plan, epoch=2)
    start = 4 * world
    rest = global_order(names_in_order(cache, plan, epoch=2, world=world, workers=workers,
                                       start=start))  # fmt: skip
    assert rest == reference[start:]


def test_an_epoch_cannot_start_between_ranks(cache):
    stream = ShardStream(cache.shards, (schema.MEL,), LoaderPlan(batch_size=4), 0, 2)
    with pytest.raises(ValueError, match="multiple of the 2 ranks"):
        stream.set_epoch(0, start=3)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_damaged_row_stops_the_stream_at_its_batch_in_workers_too(tmp_path, workers):
    """Worker processes check the rows as they read them; the error crosses to the training
    process with its type and the shard's name, after exactly the batches before it."""
    write_cache(tmp_path, [16, 16])
    cache = open_cache(tmp_path)
    flip_byte_in_row(cache.shards[1].path, schema.MEL, row=5)  # global batch 5 of 4 samples
    stream = ShardStream(cache.shards, (schema.MEL, schema.VIDEO_NAME),
                         LoaderPlan(batch_size=4, block_size=2, shuffle=False))  # fmt: skip
    yielded = []
    with pytest.raises(DamagedShardError) as caught:
        for batch in DataLoader(stream, batch_size=None, num_workers=workers):
            yielded.append(batch[BATCH_INDEX])
    assert yielded == [0, 1, 2, 3, 4]
    damaged = cache.shards[1].path
    assert f"{damaged}: reading 'mel' failed, the shard is damaged (sample 5 " in str(caught.value)


def test_persistent_workers_follow_set_epoch_and_a_resume_point(cache):
    """Workers started once keep their copy of the stream; the epoch and the first batch
    still reach them (a run resuming mid-epoch continues from its next batch)."""
    plan = LoaderPlan(batch_size=4, block_size=3, shard_group=2, seed=3)
    stream = ShardStream(cache.shards, (schema.VIDEO_NAME,), plan)
    loader = DataLoader(stream, batch_size=None, num_workers=2, persistent_workers=True)
    for epoch, start in ((0, 0), (1, 0), (2, 5)):
        stream.set_epoch(epoch, start)
        got = [list(batch[schema.VIDEO_NAME]) for batch in loader]
        (expected,) = names_in_order(cache, plan, epoch=epoch, start=start)
        assert got == expected and len(got) == len(stream)
    assert names_in_order(cache, plan, epoch=1) != names_in_order(cache, plan, epoch=2)


def test_training_drops_a_partial_last_batch_unless_it_is_the_only_one():
    plan = LoaderPlan(batch_size=4, block_size=3, drop_last=True)
    assert [sum(map(len, batch)) for batch in epoch_batches([7, 3], plan, 0)] == [4, 4]
    assert [sum(map(len, batch)) for batch in epoch_batches([3], plan, 0)] == [3]


@pytest.mark.parametrize(("kind", "on_gpu", "expected"), [
    ("audio", False, 2), ("speech", False, 2), ("faces", True, 2), ("av", True, 2),
    ("faces", False, 6), ("av", False, 6), ("lips", False, 6), ("sync", False, 6),
])  # fmt: skip
def test_auto_workers_are_many_where_the_workers_decode_jpeg(monkeypatch, kind, on_gpu,
                                                             expected):  # fmt: skip
    """On a 16-core GPU box: several decoding workers for JPEG faces left to the CPU and for
    mouth crops (always decoded there), two to read what needs no decoding."""
    from avcache.train.config import MODEL_INPUTS
    from avcache.train.loading import auto_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(16)))
    fields = MODEL_INPUTS[kind]
    assert auto_workers(fields, torch.device("cuda"), on_gpu) == expected
    assert auto_workers(fields, torch.device("cpu"), on_gpu) == 1
    assert auto_workers(fields, torch.device("cuda"), on_gpu, local_ranks=8) == 1
