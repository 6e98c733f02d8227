"""Temporal localisation metrics as LAV-DF and AV-Deepfake1M define them: which time segments
of a video are fake, scored by average precision at an IoU threshold (AP@t) and average
recall with N proposals a video (AR@N), and the 2025 challenge's combined score.

A video's proposals are (confidence, start, end) rows in seconds, ranked as listed (highest
first is what a detector writes); its truths are its fake segments (none for a real video).
The definitions follow the benchmarks' own evaluation code, quirks included, so that a
figure here is the figure they would give (tests/test_segments.py checks hand-computed cases,
and the official SDK's where it is installed):
- a proposal matches a truth when their IoU is strictly above the threshold; each truth, in
  its listed order, takes the first proposal in listed order that matches it and no other
  truth took, so a proposal is a true positive at most once;
- AP pools every video's proposals, sorts them by confidence (stable), and sums the recall
  steps times the best precision at that recall or beyond, from the last proposal back to
  the first; the step from recall 0 to the first proposal's recall is not counted (the
  benchmarks' code starts its curve there), so a lone perfect proposal scores 0;
- AR@N counts, at each IoU threshold, the truths that one of the video's first N proposals
  matches (IoU strictly above it), over every video's truths, and averages over thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

AP_THRESHOLDS = (0.5, 0.75, 0.9, 0.95)  # the challenge's AP@IoU
AR_PROPOSALS = (50, 30, 20, 10, 5)  # the challenge's AR@N
AR_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.5:0.05:0.95


@dataclass(frozen=True)
class Video:
    """One video's proposals (float [M, 3]: confidence, start, end; ranked as listed) and its
    true fake segments (float [N, 2]: start, end; empty for a real video), in seconds."""

    proposals: np.ndarray
    truths: np.ndarray

    @staticmethod
    def of(proposals: Sequence, truths: Sequence) -> Video:
        return Video(np.asarray(proposals, np.float64).reshape(-1, 3),
                     np.asarray(truths, np.float64).reshape(-1, 2))  # fmt: skip


def iou(spans: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """[M, N] intersection over union of M (start, end) spans against N truths."""
    start = np.maximum(spans[:, None, 0], truths[None, :, 0])
    end = np.minimum(spans[:, None, 1], truths[None, :, 1])
    inter = np.clip(end - start, 0, None)
    union = (spans[:, 1] - spans[:, 0])[:, None] + (truths[:, 1] - truths[:, 0])[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def true_positives(video: Video, threshold: float) -> np.ndarray:
    """bool [M]: the video's proposals that a truth took (see the module's rule)."""
    taken = np.zeros(len(video.proposals), bool)
    if not len(video.truths) or not len(video.proposals):
        return taken
    matches = iou(video.proposals[:, 1:], video.truths) > threshold
    for truth in range(len(video.truths)):
        free = np.flatnonzero(matches[:, truth] & ~taken)
        if len(free):
            taken[free[0]] = True
    return taken


def average_precision(videos: Sequence[Video], threshold: float) -> float:
    """AP at one IoU threshold over every video's proposals pooled."""
    truths = sum(len(video.truths) for video in videos)
    if not truths:
        return 0.0
    confidence = np.concatenate([video.proposals[:, 0] for video in videos])
    hits = np.concatenate([true_positives(video, threshold) for video in videos])
    order = np.argsort(-confidence, kind="stable")
    found = np.cumsum(hits[order])
    precision = found / np.arange(1, len(found) + 1)
    recall = found / truths
    # From the last proposal back to the first, after a point of recall 1 and precision 0:
    # each step's width times the best precision at its far end or beyond.
    recall_back = np.concatenate([[1.0], recall[::-1]])
    precision_back = np.maximum.accumulate(np.concatenate([[0.0], precision[::-1]]))
    return float(np.sum(np.abs(np.diff(recall_back)) * precision_back[:-1]))


def average_recall(videos: Sequence[Video], proposals: int,
                   thresholds: Sequence[float] = AR_THRESHOLDS) -> float:  # fmt: skip
    """AR with each video's first `proposals` proposals, averaged over the IoU thresholds."""
    truths = sum(len(video.truths) for video in videos)
    if not truths:
        return 0.0
    best = [_best_iou(video, proposals) for video in videos]
    best = np.concatenate(best) if best else np.zeros(0)
    return float(np.mean([np.sum(best > threshold) / truths for threshold in thresholds]))


def _best_iou(video: Video, proposals: int) -> np.ndarray:
    """Each truth's best IoU among the video's first `proposals` proposals."""
    if not len(video.truths):
        return np.zeros(0)
    first = video.proposals[:proposals, 1:]
    if not len(first):
        return np.zeros(len(video.truths))
    return iou(first, video.truths).max(axis=0)


def localisation_metrics(videos: Sequence[Video]) -> dict[str, float]:
    """AP@{0.5, 0.75, 0.9, 0.95}, AR@{50, 30, 20, 10, 5} and the 2025 challenge's score,
    1/8 of the APs' sum plus 1/10 of the ARs'."""
    metrics = {f"ap@{t:g}": average_precision(videos, t) for t in AP_THRESHOLDS}
    metrics |= {f"ar@{n}": average_recall(videos, n) for n in AR_PROPOSALS}
    aps = sum(metrics[f"ap@{t:g}"] for t in AP_THRESHOLDS)
    ars = sum(metrics[f"ar@{n}"] for n in AR_PROPOSALS)
    metrics["score"] = aps / 8 + ars / 10
    return metrics


# Thresholds on a frame's P(fake) whose runs of frames above become proposals: several, so
# that a segment found faintly or strongly is proposed either way (AR@N asks for many).
PROPOSAL_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MAX_PROPOSALS = 100  # a video's, at most (AR@50 counts the first 50)
NMS_IOU = 0.7  # a proposal overlapping a better one by more is dropped


def proposals(scores: np.ndarray, times: np.ndarray, frame: float,
              most: int = MAX_PROPOSALS, overlap: float = NMS_IOU) -> np.ndarray:  # fmt: skip
    """A video's proposals [M, 3] (confidence, start, end; ranked) from its frames' P(fake)
    `scores` [S] at the instants `times` [S] (seconds, each frame standing for the `frame`
    seconds around it): every run of consecutive frames above each of PROPOSAL_THRESHOLDS,
    its confidence the mean score inside it, ranked by confidence, those overlapping one
    ranked higher by an IoU above `overlap` dropped (non-maximum suppression)."""
    order = np.argsort(times, kind="stable")
    scores, times = np.asarray(scores, np.float64)[order], np.asarray(times, np.float64)[order]
    # Frames more than a frame and a half apart are not consecutive (a gap between windows).
    apart = np.flatnonzero(np.diff(times) > 1.5 * frame) + 1
    found = [run for threshold in PROPOSAL_THRESHOLDS
             for run in runs_above(scores, threshold, apart)]  # fmt: skip
    if not found:
        return np.zeros((0, 3))
    candidates = np.array([(scores[a:b].mean(), times[a] - frame / 2, times[b - 1] + frame / 2)
                           for a, b in sorted(set(found))])  # fmt: skip
    return suppressed(candidates[np.argsort(-candidates[:, 0], kind="stable")], most, overlap)


def runs_above(scores: np.ndarray, threshold: float, breaks: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of consecutive scores above `threshold`, cut at `breaks`."""
    above = np.concatenate([[False], scores > threshold, [False]]).astype(np.int8)
    edges = np.diff(above)
    runs = list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))
    cut = []
    for start, end in runs:
        inside = [b for b in breaks.tolist() if start < b < end]
        bounds = [start, *inside, end]
        cut += [(int(a), int(b)) for a, b in pairwise(bounds)]
    return cut


def suppressed(ranked: np.ndarray, most: int, overlap: float) -> np.ndarray:
    """The ranked proposals [M, 3] left after non-maximum suppression, at most `most`."""
    kept: list[int] = []
    for i in range(len(ranked)):
        if len(kept) == most:
            break
        if not kept or iou(ranked[i : i + 1, 1:], ranked[kept, 1:]).max() <= overlap:
            kept.append(i)
    return ranked[kept]
