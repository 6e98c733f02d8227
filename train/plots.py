"""PNG plots of a run: loss and AUC per epoch (per cache and per kind of fake where the rows
have them), and the ROC curve of the best model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_curve

PER_SOURCE = "val_auc/"  # metrics.jsonl keys val_auc/NAME and val_auc/NAME/KIND


def breakdowns(history: list[dict]) -> tuple[list[str], list[str]]:
    """The per-cache and per-kind AUC keys the rows carry, in the order they appear."""
    keys = dict.fromkeys(key for row in history for key in row if key.startswith(PER_SOURCE))
    sources = [key for key in keys if key.count("/") == 1]
    kinds = [key for key in keys if key.count("/") >= 2]
    return sources, kinds


def plot_curves(history: list[dict], path: Path) -> None:
    """Train/val loss and val AUC against the epoch; with several caches, each cache's AUC
    beside the joint one, and a panel of AUC per kind of fake where the caches record kinds."""
    epochs = [row["epoch"] for row in history]
    sources, kinds = breakdowns(history)
    panels = 3 if kinds else 2
    figure = Figure(figsize=(5 * panels, 4))
    loss_axis, auc_axis, *kind_axis = figure.subplots(1, panels)
    # Training's loss is what the model optimises (auxiliary heads' and the sync model's
    # contrastive terms included); validation's is the fused score's cross-entropy alone.
    loss_axis.plot(epochs, [row["train_loss"] for row in history], "o-",
                   label="train (as optimised, extra terms included)")  # fmt: skip
    loss_axis.plot(epochs, [row["val_loss"] for row in history], "o-",
                   label="validation (binary cross-entropy)")  # fmt: skip
    loss_axis.set(xlabel="epoch", ylabel="loss", title="Loss")
    loss_axis.legend()
    auc_axis.plot(epochs, [row["val_auc"] for row in history], "o-", color="tab:green",
                  label="trained caches" if len(sources) > 1 else None)  # fmt: skip
    if len(sources) > 1:  # one cache's own AUC is the joint one
        draw_series(auc_axis, epochs, history, sources, "--")
    auc_axis.set(xlabel="epoch", ylabel="ROC AUC", title="Validation AUC", ylim=(0.0, 1.02))
    for axis in kind_axis:
        draw_series(axis, epochs, history, kinds, ".-")
        axis.set(xlabel="epoch", ylabel="ROC AUC (reals against one kind's fakes)",
                 title="Validation AUC per kind of fake", ylim=(0.0, 1.02))  # fmt: skip
    for axis in (loss_axis, auc_axis, *kind_axis):
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")


def draw_series(axis, epochs: list[int], history: list[dict], keys: list[str], style: str) -> None:
    for key in keys:
        values = [row.get(key, math.nan) for row in history]
        axis.plot(epochs, values, style, label=key.removeprefix(PER_SOURCE))
    axis.legend(fontsize="small")


def plot_roc(labels: np.ndarray, scores: np.ndarray, auc: float, path: Path) -> None:
    roc_figure(labels, scores, auc).savefig(path, dpi=100)


def roc_figure(labels: np.ndarray, scores: np.ndarray, auc: float) -> Figure:
    """The ROC curve of validation scores (both classes present), AUC in the legend."""
    fpr, tpr, _ = roc_curve(labels, scores)
    figure = Figure(figsize=(5, 5))
    axis = figure.subplots()
    axis.plot(fpr, tpr, label=f"AUC = {auc:.4f}")
    axis.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (validation)")
    axis.legend(loc="lower right")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure
