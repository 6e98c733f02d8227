"""Training on several caches mixed by weight: shares, order invariance, resume, refusals,
metrics per cache and per kind of fake."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from avcache.cache import open_cache, schema
from avcache.cache.index import ShardRecord, build_index
from avcache.cache.writer import ShardWriter
from avcache.common.atomic import write_json_atomic
from avcache.train.engine import LAST, METRICS
from avcache.train.loader import REAL, LoaderPlan, ShardStream
from avcache.train.metrics import auc_by_kind
from avcache.train.mix import MixedStream, source_counts
from avcache.train.run import main as train_main
from avcache.train.run import parse_args, start_run
from tests.test_loader import global_order
from tests.toy import FRAMES, SIZE, index_config, small_config, toy_sample

KINDS = ("face_swap", "voice_clone")  # the kinds of fake of a cache written with kinds


def with_frames(sample: schema.Sample, frames: int) -> schema.Sample:
    """The sample with `frames` face frames (the first one repeated)."""
    return dataclasses.replace(
        sample, faces=np.repeat(sample.faces[:1], frames, axis=0),
        face_found=np.ones(frames, bool), face_box=np.zeros((frames, 4), np.float32),
    )  # fmt: skip


def write_source(root: Path, prefix: str, splits: dict[str, int], seed: int = 0,
                 frames: int = FRAMES, kinds: bool = False) -> Path:  # fmt: skip
    """A toy cache (tests/toy.py's separable samples, shards of 12) whose video names start
    with `prefix`, so that a mixed batch tells which cache each sample came from."""
    rng = np.random.default_rng(seed)
    records = []
    (root / "shards").mkdir(parents=True)
    extra = {"fake_kinds": True} if kinds else {}
    for split, count in splits.items():
        for number, start in enumerate(range(0, count, 12)):
            rel = f"shards/{split}-{number:05d}.h5"
            with ShardWriter(
                root / rel, schema.ShardLayout(frames=frames, face_size=SIZE, **extra), split=split
            ) as writer:
                for i in range(start, min(start + 12, count)):
                    sample = with_frames(toy_sample(f"{prefix}-{split}{i:03d}.mp4", bool(i % 2),
                                                    rng), frames)  # fmt: skip
                    if kinds:
                        sample.fake_kind = KINDS[(i // 2) % 2] if i % 2 else "real"
                    writer.append(sample)
                records.append(ShardRecord(rel, split, *writer.close()))
    config = index_config(frames=frames, size=SIZE, detector="haar", codec="raw")
    write_json_atomic(root / schema.INDEX_FILE, build_index(config, "toy", records))
    return root


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mix")
    return {
        "a": write_source(root / "a", "a", {"train": 48, "val": 12}, seed=1),
        "b": write_source(root / "b", "b", {"train": 30, "val": 12}, seed=2),
    }


def mixed_names(caches: dict[str, Path], weights: list[float], plan: LoaderPlan, epoch: int = 0,
                world: int = 1, workers: int = 0, start: int = 0) -> list[list[str]]:  # fmt: skip
    """The global order of an epoch's batches (video names) through the DataLoader, each
    rank's real batches interleaved back as test_loader does."""
    shards = [open_cache(path).shards_of("train") for path in caches.values()]
    per_rank = []
    for rank in range(world):
        stream = MixedStream(shards, weights, (schema.VIDEO_NAME,), plan, rank, world)
        stream.set_epoch(epoch, start)
        loader = DataLoader(stream, batch_size=None, num_workers=workers)
        per_rank.append([list(batch[schema.VIDEO_NAME]) for batch in loader if batch[REAL]])
    return global_order(per_rank)


def by_source(batches: list[list[str]]) -> Counter:
    return Counter(name.split("-")[0] for batch in batches for name in batch)


PLAN = LoaderPlan(batch_size=5, block_size=4, shard_group=2, seed=3)


def test_source_counts_round_shares_to_the_epoch():
    assert source_counts([48, 30], [3, 1]) == [59, 19]  # 58.5 and 19.5: the tie to the first
    assert source_counts([10, 30], [1, 1]) == [20, 20]
    assert source_counts([5, 5], [1, 2]) == [3, 7]  # 3.33 and 6.67
    assert source_counts([5, 5, 5], [1, 1, 1]) == [5, 5, 5]
    assert source_counts([4, 4, 4], [1, 1, 1.5]) == [4, 3, 5]  # 3.43, 3.43, 5.14: tie to the first
    assert source_counts([48, 30], [48, 30]) == [48, 30]  # weights as sizes: each sample once


@pytest.mark.parametrize("weights,expected", [([3, 1], {"a": 59, "b": 19}),
                                              ([1, 1], {"a": 39, "b": 39}),
                                              ([1, 3], {"a": 20, "b": 58})])  # fmt: skip
def test_an_epoch_draws_each_cache_by_its_weight(caches, weights, expected):
    """An epoch holds 48 + 30 = 78 samples, each cache's share of them by weight."""
    batches = mixed_names(caches, weights, PLAN)
    assert by_source(batches) == expected
    assert all(len(batch) == PLAN.batch_size for batch in batches[:-1])


def test_a_cache_drawn_below_its_size_shows_every_sample_before_any_twice(caches):
    """At 1:3, a gives 20 of its 48 samples an epoch: epochs 0-1 hold 40 distinct ones, and
    epochs 0-2 every one of the 48 once or twice (60 = 48 + 12); b, drawn at 58 of its 30
    samples an epoch, shows 28 of them twice and 2 once within the epoch."""
    epochs = [[n for b in mixed_names(caches, [1, 3], PLAN, epoch=e) for n in b]
              for e in range(3)]  # fmt: skip
    a_names = [[name for name in epoch if name.startswith("a-")] for epoch in epochs]
    assert len(set(a_names[0] + a_names[1])) == 40
    seen = Counter(a_names[0] + a_names[1] + a_names[2])
    assert len(seen) == 48 and set(seen.values()) == {1, 2}
    b_seen = Counter(name for name in epochs[0] if name.startswith("b-"))
    assert len(b_seen) == 30 and sorted(Counter(b_seen.values()).items()) == [(1, 2), (2, 28)]


def test_the_merge_spreads_the_caches_over_the_epoch(caches):
    """Not one cache first and the other after: both are in each half of the epoch."""
    batches = mixed_names(caches, [1, 1], PLAN)
    half = len(batches) // 2
    assert set(by_source(batches[:half])) == set(by_source(batches[half:])) == {"a", "b"}


@pytest.mark.parametrize("world,workers", [(1, 2), (2, 0), (2, 2), (3, 0)])
def test_the_mixed_order_is_the_same_for_any_ranks_and_workers(caches, world, workers):
    reference = mixed_names(caches, [3, 1], PLAN, epoch=1)
    assert mixed_names(caches, [3, 1], PLAN, epoch=1, world=world, workers=workers) == reference


def test_the_mixed_order_follows_seed_and_epoch(caches):
    first = mixed_names(caches, [3, 1], PLAN)
    assert mixed_names(caches, [3, 1], PLAN) == first
    assert mixed_names(caches, [3, 1], PLAN, epoch=1) != first
    assert mixed_names(caches, [3, 1], dataclasses.replace(PLAN, seed=4)) != first


@pytest.mark.parametrize("world", [1, 2])
def test_a_mixed_epoch_started_mid_way_yields_exactly_the_rest(caches, world):
    whole = mixed_names(caches, [3, 1], PLAN, epoch=2)
    start = 4 * world
    assert mixed_names(caches, [3, 1], PLAN, epoch=2, world=world, start=start) == whole[start:]


def test_a_mix_of_one_cache_is_that_caches_run(caches):
    shards = open_cache(caches["a"]).shards_of("train")
    for epoch in (0, 1):
        alone = ShardStream(shards, (schema.VIDEO_NAME,), PLAN)
        mixed = MixedStream([shards], [2.0], (schema.VIDEO_NAME,), PLAN)
        alone.set_epoch(epoch), mixed.set_epoch(epoch)
        assert mixed.global_batches() == alone.global_batches()


def test_auc_by_kind_sets_each_kinds_fakes_against_every_real():
    labels = np.array([0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.5, 0.9, 0.8, 0.3, 0.4])
    kinds = ["real", "real", "swap", "swap", "clone", "clone"]
    assert auc_by_kind(labels, scores, kinds) == {"swap": 1.0, "clone": 0.5}


# Tiny runs: the mel alone at 32 px, batches of 4 (36 training samples of a 3:1 mix: 9).
RUN = {"model.kind": "audio", "model.mel_size": 32, "data.batch_size": 4,
       "data.block_size": 2, "run.threads": 1, "optim.lr": 1e-3}  # fmt: skip


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("small")
    return {
        "a": write_source(root / "a", "a", {"train": 24, "val": 12}, seed=1),
        "b": write_source(root / "b", "b", {"train": 12, "val": 12}, seed=2),
    }


def mix_args(small: dict[str, Path], out: Path, **overrides) -> list[str]:
    listing = f"data.caches=[{small['a']}:3,{small['b']}:1]"
    return ["--out", str(out), listing, *small_config(**{**RUN, **overrides})]


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / METRICS).read_text().splitlines()]


def stop_after(args: list[str], batches: int) -> None:
    """A run stopped in the middle of its first epoch, after `batches` batches."""
    trainer, lock = start_run(parse_args(args))
    done = [0]

    def count() -> None:
        done[0] += 1
        if done[0] == batches:
            raise KeyboardInterrupt

    trainer.between_batches = count
    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
    finally:
        lock.release()


def test_a_mixed_run_stopped_mid_epoch_resumes_to_the_same_weights(small, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    every = {"run.checkpoint_every": 3}
    assert train_main(mix_args(small, straight, **every)) == 0
    stop_after(mix_args(small, stopped, **every), batches=5)
    assert torch.load(stopped / LAST, weights_only=True)["batches_done"] == 3
    assert train_main(["--resume", str(stopped)]) == 0
    a = torch.load(straight / LAST, weights_only=True)
    b = torch.load(stopped / LAST, weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    rows = history(straight)
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in history(stopped)]
    for row in rows:  # metrics of each cache, and of both together
        for key in ("val_auc", "val_auc/a", "val_auc/b"):
            assert 0 <= row[key] <= 1, key
    assert rows[-1]["val_auc"] > 0.7  # the toy set is separable (chance: 0.5)


def test_caches_that_differ_in_what_the_model_reads_are_refused(small, tmp_path, capsys):
    other = write_source(tmp_path / "four", "c", {"train": 12, "val": 12}, frames=4)
    args = ["--out", str(tmp_path / "run"), f"data.caches=[{small['a']},{other}]",
            *small_config(**{"model.kind": "faces"})]  # fmt: skip
    assert train_main(args) == 2
    error = capsys.readouterr().err
    assert f"a ({small['a']}) and four ({other}) differ in faces.frames: 2 and 4" in error
    assert not (tmp_path / "run").exists()


def test_cache_and_data_caches_together_are_refused(small, tmp_path, capsys):
    args = ["--cache", str(small["a"]), *mix_args(small, tmp_path / "run")]
    assert train_main(args) == 2
    assert "give --cache DIR or data.caches, not both" in capsys.readouterr().err


def test_kinds_are_scored_apart_and_a_weight_of_0_is_only_validated(small, tmp_path):
    kinds = write_source(tmp_path / "kinds", "k", {"train": 12, "val": 12}, seed=3, kinds=True)
    run = tmp_path / "run"
    listing = f"data.caches=[{small['a']}:1,{kinds}:0]"
    assert train_main(["--out", str(run), listing, *small_config(**{**RUN, "run.epochs": 1})]) == 0
    (row,) = history(run)
    assert set(KINDS) == {key.split("/")[2] for key in row if key.startswith("val_auc/kinds/")}
    for key in ("val_auc/a", "val_auc/kinds", *(f"val_auc/kinds/{k}" for k in KINDS)):
        assert math.isfinite(row[key]) and 0 <= row[key] <= 1, key
    assert (run / "curves.png").stat().st_size > 0
