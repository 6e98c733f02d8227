"""PNG plots of a run: loss and AUC per epoch, and the ROC curve of the best model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_curve


def plot_curves(history: list[dict], path: Path) -> None:
    """Train/val loss and val AUC against the epoch."""
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(10, 4))
    loss_axis, auc_axis = figure.subplots(1, 2)
    loss_axis.plot(epochs, [row["train_loss"] for row in history], "o-", label="train")
    loss_axis.plot(epochs, [row["val_loss"] for row in history], "o-", label="validation")
    loss_axis.set(xlabel="epoch", ylabel="binary cross-entropy", title="Loss")
    loss_axis.legend()
    auc_axis.plot(epochs, [row["val_auc"] for row in history], "o-", color="tab:green")
    auc_axis.set(xlabel="epoch", ylabel="ROC AUC", title="Validation AUC", ylim=(0.0, 1.02))
    for axis in (loss_axis, auc_axis):
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def plot_roc(labels: np.ndarray, scores: np.ndarray, auc: float, path: Path) -> None:
    fpr, tpr, _ = roc_curve(labels, scores)
    figure = Figure(figsize=(5, 5))
    axis = figure.subplots()
    axis.plot(fpr, tpr, label=f"AUC = {auc:.4f}")
    axis.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (validation)")
    axis.legend(loc="lower right")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
