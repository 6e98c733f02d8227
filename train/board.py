"""TensorBoard logs of a run (RUN/tensorboard, `run.tensorboard`): each epoch's row of
metrics.jsonl as scalars, and the validation ROC curve as a figure, so that a run can be
watched where people watch training (`tensorboard --logdir RUN`). metrics.jsonl stays the
record: the logs are written from its rows, by rank 0, after each epoch's checkpoint.

A resumed run opens a new event file that purges, for TensorBoard's readers, whatever an
earlier file holds from its first epoch on, so no epoch is shown twice.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BOARD = "tensorboard"  # the folder in a run
ROC_TAG = "val/roc"
# metrics.jsonl keys that are not a phase's own: shown beside the training figures.
RUN_KEYS = {"lr": "train/lr", "seconds": "train/epoch_seconds",
            "data_wait_share": "train/data_wait_share"}  # fmt: skip


def tag(key: str) -> str:
    """A metrics.jsonl key as a TensorBoard tag, grouped by phase: train_loss -> train/loss,
    val_auc/CACHE/KIND -> val/auc/CACHE/KIND, lr -> train/lr."""
    if key in RUN_KEYS:
        return RUN_KEYS[key]
    phase, _, rest = key.partition("_")
    return f"{phase}/{rest}" if phase in ("train", "val") and rest else key


class Board:
    """One run's TensorBoard writer; steps are epochs (1, 2, ...), as in metrics.jsonl."""

    def __init__(self, folder: Path, first_epoch: int, plots=None) -> None:
        """`plots`: train/plots.py, or None where matplotlib is missing (no ROC figures)."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder), purge_step=first_epoch)
        self.plots = plots

    def epoch(self, row: dict, labels: np.ndarray, scores: np.ndarray) -> None:
        """The epoch's figures, and its ROC curve where validation had both classes."""
        step = row["epoch"]
        for key, value in row.items():
            if key != "epoch" and isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(tag(key), value, step)
        if self.plots is not None and len(np.unique(labels)) == 2:
            figure = self.plots.roc_figure(labels, scores, row["val_auc"])
            self.writer.add_figure(ROC_TAG, figure, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_board(out: Path, wanted: bool, completed_epochs: int, plots=None) -> Board | None:
    """The run's Board, where wanted and the tensorboard package is installed (said once
    where it is not: the run trains and records its metrics all the same)."""
    if not wanted:
        return None
    try:
        return Board(out / BOARD, completed_epochs + 1, plots)
    except ImportError as error:
        log.warning("no TensorBoard logs: %s (pip install tensorboard, or run.tensorboard=false "
                    "to say none are wanted); metrics.jsonl holds the figures", error)  # fmt: skip
        return None
