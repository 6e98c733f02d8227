"""The held-out protocols' runner (evaluation/sweep.py) with a stand-in for training: every
run once, results keyed as the tables read them, written after each run, a failure raised."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from evaluation.sweep import run_folder, sweep, table


def test_every_recipe_runs_once_per_part_and_seed_and_each_result_is_recorded():
    trained, recorded = [], []

    def train(part: str, recipe: str, seed: int) -> float:
        trained.append((part, recipe, seed))
        return {"a": 0.5, "b": 0.75}[part] + seed / 100

    def record(results: dict) -> None:
        recorded.append(sum(len(seeds) for by_part in results.values()
                            for seeds in by_part.values()))  # fmt: skip

    results = sweep(["a", "b"], ["audio", "av"], [0, 1], 2, train, record)
    assert sorted(trained) == sorted((p, r, s) for p in "ab" for r in ("audio", "av")
                                     for s in (0, 1))  # fmt: skip
    assert results == {recipe: {"a": {"seed 0": 0.5, "seed 1": 0.51},
                                "b": {"seed 0": 0.75, "seed 1": 0.76}}
                       for recipe in ("audio", "av")}  # fmt: skip
    assert recorded == list(range(1, 9))  # written after every run, never two at once


def test_runs_go_jobs_at_a_time():
    """Three runs at once: each waits until three are running (fewer would time out), and
    a count of those running never passes three."""
    running, most = [0], [0]
    lock, three = threading.Lock(), threading.Barrier(3, timeout=10)

    def train(part: str, recipe: str, seed: int) -> float:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        three.wait()
        with lock:
            running[0] -= 1
        return 0.5

    sweep(["a", "b", "c"], ["audio"], [0, 1], 3, train, lambda results: None)
    assert most[0] == 3


def test_a_failed_run_is_raised():
    def train(part: str, recipe: str, seed: int) -> float:
        if seed == 1:
            raise RuntimeError("training audio on a failed: ...")
        return 0.5

    with pytest.raises(RuntimeError, match="training audio on a failed"):
        sweep(["a"], ["audio"], [0, 1], 1, train, lambda results: None)


def test_run_folders_and_the_table():
    run = run_folder(Path("runs/a"), "av + mismatch", 1)
    assert run.parts == ("runs", "a", "av_+_mismatch", "seed1")
    results = {"audio": {"a": {"seed 0": 0.6, "seed 1": 0.7}, "b": {"seed 0": float("nan")}}}
    assert table(results, ["a", "b"]).splitlines() == [
        "| recipe | a | b | mean | worst |",
        "|---|---|---|---|---|",
        "| audio | 0.65 ±0.05 | — | 0.650 | 0.650 |",
    ]
