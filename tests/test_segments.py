"""Temporal localisation metrics (train/segments.py): hand-computed cases, and the official
AV-Deepfake1M SDK's figures on random cases where its evaluation can be loaded (the
`avdeepfake1m` package, or its compiled `_evaluation` module named by the environment
variable AVDEEPFAKE1M_EVALUATION: a test-only reference, never a dependency)."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from avcache.train.segments import (
    Video,
    average_precision,
    average_recall,
    iou,
    localisation_metrics,
    true_positives,
)

ONE_TRUTH = [[1.0, 2.0]]


def test_iou_of_spans():
    spans = np.array([[1.0, 2.0], [1.0, 3.0], [5.0, 6.0], [1.5, 1.5]])
    assert iou(spans, np.array(ONE_TRUTH))[:, 0].tolist() == [1.0, 0.5, 0.0, 0.0]


@pytest.mark.parametrize("proposals, expected", [
    ([[0.9, 1.0, 2.0]], 0.0),  # the step to the first proposal's recall is not counted
    ([[0.9, 5.0, 6.0], [0.8, 1.0, 2.0]], 0.5),  # recall 0 -> 1 at precision 1/2
    ([[0.1, 1.0, 2.0], [0.9, 5.0, 6.0]], 0.5),  # ranked by confidence across the pool
    ([[0.9, 5.0, 6.0], [0.8, 1.0, 3.0]], 0.0),  # IoU 0.5 exactly: no match at 0.5
    ([[0.9, 5.0, 6.0], [0.8, 1.0, 2.0], [0.7, 1.0, 2.0]], 0.5),  # a truth is found once
])  # fmt: skip
def test_average_precision_of_one_video(proposals, expected):
    assert average_precision([Video.of(proposals, ONE_TRUTH)], 0.5) == pytest.approx(expected)


def test_average_precision_pools_videos_and_counts_a_real_videos_proposals_false():
    """Pooled: 0.9 hit, 0.8 miss (the real video's), 0.7 hit; two truths. Back from the
    last: recall 1 -> 1/2 at the best precision 2/3, then 1/2 -> 1/2: AP 1/3."""
    videos = [Video.of([[0.9, 1.0, 2.0], [0.7, 4.0, 5.2]], [[1.0, 2.0], [4.0, 5.0]]),
              Video.of([[0.8, 0.0, 1.0]], [])]  # fmt: skip
    assert average_precision(videos, 0.5) == pytest.approx(1 / 3)
    assert average_precision(videos, 0.75) == pytest.approx(1 / 3)  # IoU 0.83 still matches
    assert average_precision(videos, 0.9) == pytest.approx(0.0)  # only the first: not counted


def test_each_truth_takes_the_first_free_proposal_in_listed_order():
    video = Video.of([[0.2, 1.0, 2.0], [0.9, 1.1, 2.0], [0.5, 4.0, 5.0]], [[1.0, 2.0], [1.0, 2.1]])
    assert true_positives(video, 0.5).tolist() == [True, True, False]


def test_average_recall_counts_truths_matched_among_the_first_n_proposals():
    videos = [Video.of([[0.9, 5.0, 6.0], [0.8, 1.0, 2.0]], ONE_TRUTH),
              Video.of([[0.9, 0.0, 1.0]], [[0.0, 1.2]]),  # IoU 0.83
              Video.of([[0.5, 3.0, 4.0]], [])]  # fmt: skip
    assert average_recall(videos, 1, [0.5]) == pytest.approx(1 / 2)
    assert average_recall(videos, 2, [0.5]) == pytest.approx(1.0)
    # 0.5:0.05:0.95: the exact match counts at all ten, the 0.83 one at seven (0.5 .. 0.8)
    assert average_recall(videos, 2) == pytest.approx(np.mean([2] * 7 + [1] * 3) / 2)


def test_the_challenge_score_is_an_eighth_of_the_aps_and_a_tenth_of_the_ars():
    videos = [Video.of([[0.9, 5.0, 6.0], [0.8, 1.0, 2.0]], ONE_TRUTH)]
    metrics = localisation_metrics(videos)
    assert [metrics[f"ap@{t}"] for t in ("0.5", "0.75", "0.9", "0.95")] == [0.5] * 4
    assert all(metrics[f"ar@{n}"] == 1.0 for n in (50, 30, 20, 10, 5))
    assert metrics["score"] == pytest.approx(4 * 0.5 / 8 + 5 * 1.0 / 10)


def official_evaluation():
    """The SDK's compiled evaluation, where it can be loaded; else None."""
    path = os.environ.get("AVDEEPFAKE1M_EVALUATION")
    if path:
        spec = importlib.util.spec_from_file_location("_evaluation", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    try:
        from avdeepfake1m import evaluation
    except ImportError:
        return None
    return evaluation


def random_videos(rng: np.random.Generator, count: int) -> list[Video]:
    """Videos of 0-2 truths and 1-59 proposals, half of them near a truth (the SDK's reader
    cannot take a video without proposals: an empty list has no shape for it)."""
    videos = []
    for _ in range(count):
        duration = rng.uniform(3, 12)
        truths = np.sort(rng.uniform(0, duration, (int(rng.integers(0, 3)), 2)), axis=1)
        spans = np.sort(rng.uniform(0, duration, (int(rng.integers(1, 60)), 2)), axis=1)
        near = truths[rng.integers(len(truths), size=len(spans))] if len(truths) else spans
        jitter = rng.normal(0, 0.1, spans.shape)
        spans = np.where(rng.random((len(spans), 1)) < 0.5, np.sort(near + jitter, axis=1), spans)
        confidence = np.sort(rng.random(len(spans)))[::-1]
        videos.append(Video(np.column_stack([confidence, spans]), truths))
    return videos


def test_the_figures_are_the_official_sdks_on_random_videos(tmp_path):
    official = official_evaluation()
    if official is None:
        pytest.skip("the AV-Deepfake1M SDK's evaluation is not installed here")
    videos = random_videos(np.random.default_rng(0), 200)
    names = [f"{number}.mp4" for number in range(len(videos))]
    proposals, labels = tmp_path / "proposals.json", tmp_path / "labels.json"
    proposals.write_text(
        json.dumps({n: v.proposals.tolist() for n, v in zip(names, videos, strict=True)})
    )
    labels.write_text(json.dumps([{"file": n, "fake_segments": v.truths.tolist()}
                                  for n, v in zip(names, videos, strict=True)]))  # fmt: skip
    theirs = official.ap_ar_1d(str(proposals), str(labels), "file", "fake_segments", 1.0,
                               [0.5, 0.75, 0.9, 0.95], [50, 30, 20, 10, 5],
                               [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])  # fmt: skip
    ours = localisation_metrics(videos)
    for threshold, value in theirs["ap"].items():
        assert ours[f"ap@{threshold:g}"] == pytest.approx(value, abs=1e-5), threshold
    for count, value in theirs["ar"].items():
        assert ours[f"ar@{count}"] == pytest.approx(value, abs=1e-5), count
