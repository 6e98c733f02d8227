"""avcache-score and its metrics on lists small enough to score by hand: the expected AUC,
EER and TPR at FPR = 1e-3 of each case are worked out in its comments, from the ROC
points (FPR, TPR) that each threshold gives (a video is called fake when its score is at
least the threshold)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avcache.train.metrics import detection_metrics, equal_error_rate, tpr_at_fpr
from avcache.train.score import main as score_main
from tests.layouts import LAVDF_ENTRIES, lavdf_entry, write_replicas

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


# ------------------------------------------------- label files of other layouts
# LAV-DF's metadata.json scored as it is, its test split chosen by --select. Three reals
# (0.1, 0.4, 0.6); fakes: video 0.5 and 0.9, audio 0.7, audio+video 0.3.
#   overall: 0.5 beats 2 reals, 0.9 and 0.7 beat 3, 0.3 beats 1: 9/12 = 0.75
#   video: (2 + 3) / 6 = 0.8333; audio: 3/3 = 1; audio+video: 1/3 = 0.3333
# The train and dev entries have no prediction: scored, they would be refused.
LAVDF_TEST = [  # (file, fake periods, modify_video, modify_audio, P(fake))
    ("test/000010.mp4", [], False, False, 0.1),
    ("test/000011.mp4", [[0.2, 0.4]], True, False, 0.5),
    ("test/000012.mp4", [], False, False, 0.4),
    ("test/000013.mp4", [[0.0, 0.3]], False, True, 0.7),
    ("test/000014.mp4", [[0.1, 0.2]], True, False, 0.9),
    ("test/000015.mp4", [], False, False, 0.6),
    ("test/000016.mp4", [[0.5, 0.9]], True, True, 0.3),
]
LAVDF_PRINTED = ("auc by kind of fake, against all 3 reals: video 0.8333 (2 fakes), "
                 "audio 1.0000 (1 fake), audio+video 0.3333 (1 fake)")  # fmt: skip


def lavdf_files(folder: Path) -> tuple[Path, Path, Path]:
    """(submission of the test split, LAV-DF metadata.json, the same labels as FFDV's CSV)."""
    entries = [lavdf_entry(*entry) for entry in LAVDF_ENTRIES if entry[1] != "test"]
    entries += [lavdf_entry(file, "test", periods, video, audio)
                for file, periods, video, audio, _ in LAVDF_TEST]  # fmt: skip
    metadata = folder / "metadata.json"
    metadata.write_text(json.dumps(entries))
    submission, ffdv = folder / "submission.csv", folder / "labels.txt"
    submission.write_text("video_name,y_pred\n" + "".join(
        f"{file},{score}\n" for file, *_, score in reversed(LAVDF_TEST)))  # fmt: skip
    ffdv.write_text("video_name,target\n" + "".join(
        f"{file},{int(bool(periods))}\n" for file, periods, *_ in LAVDF_TEST))  # fmt: skip
    return submission, metadata, ffdv


def test_a_lavdf_metadata_json_is_scored_as_it_is_with_the_auc_of_each_kind(tmp_path, capsys):
    submission, metadata, ffdv = lavdf_files(tmp_path)
    argv = [str(submission), str(metadata), "--layout", "lav-df", "--select", "split=test"]
    assert score_main(argv) == 0
    overall, by_kind = capsys.readouterr().out.splitlines()
    assert overall.startswith("auc 0.7500, ") and by_kind == LAVDF_PRINTED
    assert score_main([str(submission), str(ffdv)]) == 0  # the same labels in FFDV's form
    assert capsys.readouterr().out == overall + "\n"  # and no kinds to score apart


@pytest.mark.parametrize("argv,expected", [
    (["--select", "split=val"], "avcache-score: error: --select: split=val matches no entry of "
     "{metadata}; its split values are: train, dev, test\n"),
    (["--select", "fold=1"], "select names 'fold', a field no entry has"),
    (["--select", "split"], "--select split: expected FIELD=VALUE[,VALUE...], e.g. split=test"),
    ([], "no prediction for 5 labelled videos, e.g. dev/000003.mp4, dev/000004.mp4"),
])  # fmt: skip
def test_a_selection_that_chooses_wrong_is_refused_in_one_line(tmp_path, capsys, argv,
                                                               expected):  # fmt: skip
    submission, metadata, _ = lavdf_files(tmp_path)
    assert score_main([str(submission), str(metadata), "--layout", "lav-df", *argv]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and expected.format(metadata=metadata) in error, error


@pytest.mark.parametrize("argv,expected", [
    (["--layout", "lavdf"], "--layout: layout 'lavdf' unknown (known: ffdv, fakeavceleb, "
     "lav-df, av-deepfake1m, dfdc, csv)"),
    (["--select", "split=test"], "--select: the ffdv layout has no fields to select on"),
    (["--layout", "dfdc"], "--layout dfdc names videos by their path from the data root"),
])  # fmt: skip
def test_a_wrong_layout_is_refused_before_the_files_are_read(tmp_path, capsys, argv, expected):
    missing = tmp_path / "absent.csv"
    assert score_main([str(missing), str(missing), *argv]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and expected in error, error


def replica_argv(root: Path, config: dict) -> list[str]:
    """The command line options that read a split of a replica as its config does."""
    argv = [str(root / config["labels"]), "--layout", config["layout"], "--data", str(root)]
    for key, values in config.get("select", {}).items():
        argv += ["--select", f"{key}={','.join(values)}"]
    return argv


@pytest.fixture(scope="module")
def replicas(tmp_path_factory) -> tuple[Path, list, dict]:
    root = tmp_path_factory.mktemp("replicas")
    listed, splits = write_replicas(root)
    # one DFDC part: a list names one file (the preprocessor also reads a glob of them)
    splits["dfdc"]["labels"] = "dfdc/dfdc_train_part_0/metadata.json"
    listed = [video for video in listed if "part_10" not in video.name]
    return root, listed, splits


def test_every_layout_names_its_videos_as_the_cache_does(replicas, tmp_path, capsys):
    """Each replica's split, scored from its own label file, against a submission that names
    the videos as the cache holds them (tests/layouts.py's Listed, which test_layouts.py reads
    back from a cache of them): scored alike its FFDV twin, with each kind apart."""
    root, listed, splits = replicas
    for split, config in splits.items():
        videos = [video for video in listed if video.split == split]
        scores = {video.name: (i * 37 % 10) / 10 for i, video in enumerate(videos)}
        submission, ffdv = tmp_path / f"{split}.csv", tmp_path / f"{split}-labels.csv"
        submission.write_text("video_name,y_pred\n" + "".join(
            f"{name},{score}\n" for name, score in scores.items()))  # fmt: skip
        ffdv.write_text("video_name,target\n" + "".join(
            f"{video.name},{video.label}\n" for video in videos))  # fmt: skip
        assert score_main([str(submission), str(ffdv)]) == 0, split
        expected = capsys.readouterr().out
        assert score_main([str(submission), *replica_argv(root, config)]) == 0, split
        printed = capsys.readouterr().out.splitlines()
        assert printed[0] + "\n" == expected, split
        kinds = {video.kind for video in videos if video.label == 1}
        assert printed[1:] == ([by_kind_line(videos, scores)] if kinds else []), split


def by_kind_line(videos: list, scores: dict[str, float]) -> str:
    """The per-kind line worked out from the AUC's definition: the share of (fake, real)
    pairs the fake wins (ties half)."""
    reals = [scores[video.name] for video in videos if video.label == 0]
    kinds = list(dict.fromkeys(video.kind for video in videos if video.label == 1))
    parts = []
    for kind in kinds:
        fakes = [scores[video.name] for video in videos if video.label == 1 and video.kind == kind]
        wins = sum((f > r) + 0.5 * (f == r) for f in fakes for r in reals)
        auc = wins / (len(fakes) * len(reals)) if reals else float("nan")
        parts.append(f"{kind} {auc:.4f} ({len(fakes)} fake{'s' * (len(fakes) != 1)})")
    plural = "s" * (len(reals) != 1)
    return f"auc by kind of fake, against all {len(reals)} real{plural}: {', '.join(parts)}"
