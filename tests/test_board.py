"""TensorBoard logs of a run, read back with TensorBoard's own reader."""

from __future__ import annotations

import json
import logging
import sys
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from avcache.train.board import BOARD, ROC_TAG, tag
from avcache.train.engine import METRICS
from avcache.train.run import main as train_main
from tests.toy import kill_after_first_epoch, small_config, write_toy_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    write_toy_cache(root, {"train": 16, "val": 8})
    return root


def read_board(run) -> EventAccumulator:
    board = EventAccumulator(str(run / BOARD), size_guidance={"scalars": 0, "images": 0})
    board.Reload()
    return board


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / METRICS).read_text().splitlines()]


def assert_board_matches_metrics(run) -> None:
    """Every figure of every metrics.jsonl row is on the board once, at its epoch."""
    board, rows = read_board(run), metrics(run)
    for key in rows[0]:
        if key == "epoch":
            continue
        events = board.Scalars(tag(key))
        assert [event.step for event in events] == [row["epoch"] for row in rows], key
        for event, row in zip(events, rows, strict=True):
            assert event.value == pytest.approx(row[key], rel=1e-6), (key, row["epoch"])


def test_each_epochs_metrics_and_roc_curve_are_on_the_board(cache, tmp_path):
    run = tmp_path / "run"
    args = ["--cache", str(cache), "--out", str(run), *small_config(**{"run.epochs": 2})]
    assert train_main(args) == 0
    assert_board_matches_metrics(run)
    board = read_board(run)
    expected = {"train/loss", "val/loss", "val/auc", "train/lr", "train/samples_per_s",
                "train/data_wait_share", f"val/auc/{cache.name}"}  # fmt: skip
    assert expected <= set(board.Tags()["scalars"])
    roc = board.Images(ROC_TAG)
    assert [image.step for image in roc] == [1, 2]
    assert all(image.encoded_image_string.startswith(b"\x89PNG") for image in roc)


def test_a_resumed_run_shows_each_epoch_once(cache, tmp_path):
    """Figures an earlier event file holds from the resumed epoch on (a run stopped after
    its board, before its checkpoint) are replaced, not shown beside the new ones."""
    run = tmp_path / "run"
    kill_after_first_epoch(["--cache", str(cache), "--out", str(run), *small_config()], run)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run / BOARD)) as stale:
        stale.add_scalar("val/auc", 99.0, 2)
    time.sleep(1.1)  # event files are read in the order of their names: their second first
    assert train_main(["--resume", str(run)]) == 0
    assert len(metrics(run)) == 2
    assert_board_matches_metrics(run)


def test_no_board_where_none_is_wanted(cache, tmp_path):
    run = tmp_path / "run"
    args = ["--cache", str(cache), "--out", str(run),
            *small_config(**{"run.epochs": 1, "run.tensorboard": "false"})]  # fmt: skip
    assert train_main(args) == 0
    assert metrics(run) and not (run / BOARD).exists()


def test_without_the_package_the_run_trains_and_says_so_once(cache, tmp_path, monkeypatch,
                                                             caplog):  # fmt: skip
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    run = tmp_path / "run"
    args = ["--cache", str(cache), "--out", str(run), *small_config(**{"run.epochs": 1})]
    with caplog.at_level(logging.WARNING):
        assert train_main(args) == 0
    warnings = [r.getMessage() for r in caplog.records if "no TensorBoard logs" in r.getMessage()]
    assert len(warnings) == 1 and "pip install tensorboard" in warnings[0]
    assert metrics(run) and not (run / BOARD).exists()
