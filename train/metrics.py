"""Video-level detection metrics (scikit-learn): ROC AUC first, as the competition scores."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score, roc_curve

TPR_AT_FPR = 1e-3  # the competition's tie-break


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Where the false positive rate equals the false negative rate (interpolated)."""
    fnr = 1.0 - tpr
    index = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[index] + fnr[index]) / 2)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float = TPR_AT_FPR) -> float:
    """The best true positive rate with a false positive rate of at most `target`."""
    allowed = fpr <= target
    return float(tpr[allowed].max()) if allowed.any() else 0.0


def detection_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AUC, AP, EER, TPR@FPR=1e-3 and accuracy at 0.5; NaN where one class is missing."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    accuracy = float(accuracy_score(labels, scores >= 0.5)) if len(labels) else math.nan
    if len(np.unique(labels)) < 2:
        nan = math.nan
        return {"auc": nan, "ap": nan, "eer": nan, "tpr@fpr=1e-3": nan, "accuracy": accuracy}
    fpr, tpr, _ = roc_curve(labels, scores)
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "ap": float(average_precision_score(labels, scores)),
        "eer": equal_error_rate(fpr, tpr),
        "tpr@fpr=1e-3": tpr_at_fpr(fpr, tpr),
        "accuracy": accuracy,
    }
