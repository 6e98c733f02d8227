"""avcache-score and its metrics on lists small enough to score by hand: the expected AUC,
EER and TPR at FPR = 1e-3 of each case are worked out in its comments, from the ROC
points (FPR, TPR) that each threshold gives (a video is called fake when its score is at
least the threshold)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avcache.train.metrics import detection_metrics, equal_error_rate, tpr_at_fpr
from avcache.train.score import main as score_main

# Four reals (0.1, 0.2, 0.3, 0.6) and four fakes (0.5, 0.7, 0.8, 0.9).
#   thresholds 0.9, 0.8, 0.7: TPR 1/4, 2/4, 3/4 at FPR 0
#   threshold 0.6: TPR 3/4, FPR 1/4 (the real at 0.6 is called fake) -> FNR 1/4 = FPR: EER 0.25
#   threshold 0.5: TPR 1, FPR 1/4; lower thresholds add only reals
# TPR@FPR<=1e-3: FPR 0 allows at most TPR 3/4.
# AUC: of the 16 (fake, real) pairs only (0.5, 0.6) is out of order: 15/16 = 0.9375.
# AP: precision 1, 1, 1 at recall 1/4, 2/4, 3/4, then 4/5 at recall 1:
#     (1 + 1 + 1 + 4/5) / 4 = 0.95.
# Accuracy at 0.5: the fake at exactly 0.5 counts as called fake; only the real at 0.6 is
#     wrong: 7/8 = 0.875.
SMALL = {
    "labels": [0, 0, 0, 0, 1, 1, 1, 1],
    "scores": [0.1, 0.2, 0.3, 0.6, 0.5, 0.7, 0.8, 0.9],
    "printed": "auc 0.9375, ap 0.9500, eer 0.2500, tpr@fpr=1e-3 0.7500, accuracy 0.8750",
}

# 1000 reals, so that one false alarm is an FPR of exactly 1e-3: two reals score 0.95 and
# 0.75, the other 998 score 0.1; four fakes score 0.9, 0.8, 0.7, 0.6.
#   threshold 0.95: TPR 0, FPR 1/1000
#   thresholds 0.9, 0.8: TPR 1/4, 2/4 at FPR 1/1000 (= 1e-3, which is allowed: "at most")
#   threshold 0.75: TPR 2/4, FPR 2/1000
#   thresholds 0.7, 0.6: TPR 3/4, 1 at FPR 2/1000 -> FNR 0, FPR 0.002: the closest the two
#   come (elsewhere FNR >= 1/4 or FPR ~1): EER their mean, 0.001
# TPR@FPR<=1e-3: 2/4 = 0.5 (0 if FPR had to stay below 1e-3).
# AUC: 0.9 and 0.8 beat 999 reals each, 0.7 and 0.6 beat 998: 3994/4000 = 0.9985.
# AP: precision 1/2, 2/3, 3/5, 4/6 as recall reaches 1/4, 2/4, 3/4, 1:
#     (1/2 + 2/3 + 3/5 + 2/3) / 4 = 0.60833.
# Accuracy at 0.5: the reals at 0.95 and 0.75 are wrong: 1002/1004 = 0.99801.
ONE_IN_A_THOUSAND = {
    "labels": [0] * 1000 + [1] * 4,
    "scores": [0.95, 0.75] + [0.1] * 998 + [0.9, 0.8, 0.7, 0.6],
    "printed": "auc 0.9985, ap 0.6083, eer 0.0010, tpr@fpr=1e-3 0.5000, accuracy 0.9980",
}

# Every score the same: one threshold, which calls all fake. ROC points (0, 0) and (1, 1):
# FNR 1 at FPR 0, FNR 0 at FPR 1, each pair 1 apart: EER (0 + 1) / 2 = 0.5 at the first.
# TPR@FPR<=1e-3: only (0, 0): 0. AUC 0.5; AP the share of fakes, 0.5; accuracy 2/4.
ALL_TIED = {
    "labels": [0, 1, 0, 1],
    "scores": [0.5, 0.5, 0.5, 0.5],
    "printed": "auc 0.5000, ap 0.5000, eer 0.5000, tpr@fpr=1e-3 0.0000, accuracy 0.5000",
}

CASES = {"small": SMALL, "one in a thousand": ONE_IN_A_THOUSAND, "all tied": ALL_TIED}


def write_files(folder: Path, labels: list[int], scores: list[float]) -> tuple[Path, Path]:
    """(submission, label file) as the competition has them. The submission lists the videos
    in reverse, with one unlabelled extra: scores are matched to labels by name."""
    names = [f"video{i:04d}.mp4" for i in range(len(labels))]
    submission, truth = folder / "submission.csv", folder / "labels.txt"
    predicted = [f"{name},{score:.6f}\n" for name, score in zip(names, scores, strict=True)]
    targets = [f"{name},{label}\n" for name, label in zip(names, labels, strict=True)]
    submission.write_text("video_name,y_pred\n" + "".join(reversed(predicted)) + "extra.mp4,0.5\n")
    truth.write_text("video_name,target\n" + "".join(targets))
    return submission, truth


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_command_line_prints_the_hand_worked_metrics(case, tmp_path, capsys):
    submission, truth = write_files(tmp_path, case["labels"], case["scores"])
    assert score_main([str(submission), str(truth)]) == 0
    assert capsys.readouterr().out == case["printed"] + "\n"


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_detection_metrics_match_the_hand_worked_values(case):
    printed = dict(item.split(" ") for item in case["printed"].split(", "))
    metrics = detection_metrics(np.array(case["labels"]), np.array(case["scores"]))
    assert list(metrics) == list(printed)
    for name, value in printed.items():
        assert metrics[name] == pytest.approx(float(value), abs=5e-5), name


def test_the_eer_is_where_false_alarms_and_misses_are_closest():
    # (FPR, TPR) points; FNR = 1 - TPR: 1, 0.6, 0.3, 0 against FPR 0, 0.1, 0.4, 1.
    # |FNR - FPR|: 1, 0.5, 0.1, 1: the third point, EER (0.4 + 0.3) / 2 = 0.35.
    fpr, tpr = np.array([0.0, 0.1, 0.4, 1.0]), np.array([0.0, 0.4, 0.7, 1.0])
    assert equal_error_rate(fpr, tpr) == pytest.approx(0.35)


def test_tpr_at_fpr_allows_a_false_positive_rate_equal_to_the_target():
    fpr, tpr = np.array([0.0, 0.001, 0.002, 1.0]), np.array([0.2, 0.6, 0.9, 1.0])
    assert tpr_at_fpr(fpr, tpr) == 0.6  # the default target, 1e-3, reached exactly
    assert tpr_at_fpr(fpr, tpr, target=0.0015) == 0.6
    assert tpr_at_fpr(fpr, tpr, target=0.002) == 0.9
    assert tpr_at_fpr(fpr[1:], tpr[1:], target=0.0005) == 0.0  # no point that low


def test_one_class_only_gives_nan_but_still_an_accuracy():
    metrics = detection_metrics(np.array([1, 1, 1]), np.array([0.9, 0.4, 0.5]))
    assert all(np.isnan(metrics[name]) for name in ("auc", "ap", "eer", "tpr@fpr=1e-3"))
    assert metrics["accuracy"] == pytest.approx(2 / 3)  # 0.9 and 0.5 called fake
