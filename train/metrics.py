"""Video-level detection metrics (scikit-learn): ROC AUC first, as the competition scores;
per kind of fake where a cache records kinds."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score, roc_curve

TPR_AT_FPR = 1e-3  # the competition's tie-break


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Where the false positive rate equals the false negative rate: the mean of the two at
    the ROC point where they are closest (no interpolation between points)."""
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


def log_loss(labels: np.ndarray, scores: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of P(fake) scores, clipped away from 0 and 1."""
    clipped = np.clip(scores, eps, 1 - eps)
    return float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)))


def auc_by_kind(labels: np.ndarray, scores: np.ndarray, kinds: list[str]) -> dict[str, float]:
    """ROC AUC of each kind of fake against every real of the same split: how well the
    detector finds that kind (NaN without reals). Kinds in order of first appearance."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    kinds_array = np.asarray(kinds, dtype=object)
    reals = labels == 0
    fake_kinds = dict.fromkeys(k for k, label in zip(kinds, labels, strict=True) if label == 1)
    aucs = {}
    for kind in fake_kinds:
        chosen = reals | ((labels == 1) & (kinds_array == kind))
        aucs[kind] = detection_metrics(labels[chosen], scores[chosen])["auc"]
    return aucs
