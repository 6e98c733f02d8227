"""The whole way a new user goes, with avcache pip-installed into an environment of their own
(their torch, no face detector) and a data set in LAV-DF's layout: cache, audit, train two
experts (the mel and lips against speech), fuse them, score raw videos and the cached test
split, and score both submissions from the data set's own metadata.json. Every command is
the installed console script, run from a folder with no configs/."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

from avcache.preprocess.faces import MEDIAPIPE_INSTALL
from tests.install import build_wheel, fresh_environment

pytestmark = pytest.mark.slow

# The docs' config for a LAV-DF data root (docs/datasets.md), as a user writes it.
LAV_DF_CONFIG = """\
splits:
  train: {layout: lav-df, labels: metadata.json, videos: [.], select: {split: [train]}}
  val:   {layout: lav-df, labels: metadata.json, videos: [.], select: {split: [dev]}}
  test:  {layout: lav-df, labels: metadata.json, videos: [.], select: {split: [test]}}
"""
# Small enough for two CPU cores in a few minutes: 2 faces of 64 px, one window of lips.
SMALL_CACHE = ["faces.frames=2", "faces.size=64", "tracks.windows=1", "tracks.frames=15",
               "tracks.size=48", "shards.size=16"]  # fmt: skip
SMALL_RUN = ["run.epochs=2", "data.batch_size=8", "run.threads=1", "data.workers=0"]
TEST_SPLIT = ["--layout", "lav-df", "--select", "split=test"]


class User:
    """Runs the installed commands in their working folder; each must exit 0."""

    def __init__(self, bin_folder: Path, home: Path) -> None:
        self.bin, self.home = bin_folder, home

    def run(self, command: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run([str(self.bin / command), *map(str, args)], cwd=cwd or self.home,
                              capture_output=True, text=True, timeout=900)  # fmt: skip
        assert done.returncode == 0, f"{command} {' '.join(map(str, args))}\n{done.stderr[-3000:]}"
        return done


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> User:
    root = tmp_path_factory.mktemp("new-user")
    home = root / "home"
    home.mkdir()
    return User(fresh_environment(root, build_wheel(root / "wheel")), home)


def read_scores(path: Path) -> dict[str, float]:
    with path.open(newline="") as file:
        return {row["video_name"]: float(row["y_pred"]) for row in csv.DictReader(file)}


def split_labels(metadata: Path, split: str) -> dict[str, int]:
    """name -> 1 (fake: any period modified) or 0, as LAV-DF's metadata.json says."""
    return {entry["file"]: int(entry["n_fakes"] > 0)
            for entry in json.loads(metadata.read_text()) if entry["split"] == split}  # fmt: skip


def auc_of(score_output: str) -> float:
    """The AUC avcache-score prints first ("auc 0.8125, ap ...")."""
    line = next(line for line in score_output.splitlines() if line.startswith("auc "))
    return float(line.split()[1].rstrip(","))


def test_from_a_lav_df_folder_to_scored_submissions(user):
    data, home = user.home / "data", user.home
    user.run("avcache-sample", data, "--layout", "lav-df", "--train", 24, "--val", 12,
             "--test", 12, "--lip-sync", 0.3, "--jobs", 2)  # fmt: skip
    metadata = data / "metadata.json"
    (home / "lav-df.yaml").write_text(LAV_DF_CONFIG)

    cached = user.run("avcache-preprocess", "--config", "lav-df.yaml", "--data", data,
                      "--out", "cache", "--jobs", 2, *SMALL_CACHE)  # fmt: skip
    # No face detector in their environment: said once, loudly, with the recipe.
    assert cached.stderr.count(MEDIAPIPE_INSTALL[0]) == 1, cached.stderr[-3000:]

    audit = user.run("avcache-inspect", "cache", "audit", "--json", "audit.json", "--brief")
    # LAV-DF's kinds (the modality modified) come from the cache itself: no manifest.
    kinds = json.loads((home / "audit.json").read_text())["kinds"]
    assert "from the cache" in kinds and "audio" in kinds and "video" in kinds, audit.stdout

    for kind in ("audio", "sync"):
        user.run("avcache-train", "--config", "train", "--cache", "cache", "--out", kind,
                 f"model.kind={kind}", "model.mel_size=64", *SMALL_RUN)  # fmt: skip
        assert (home / kind / "curves.png").is_file()
    user.run("avcache-fuse", "fit", "--out", "fused.json", "audio", "sync")

    # The cached test split, named by the data set's own label file.
    user.run("avcache-fuse", "predict", "fused.json", "--list", metadata, *TEST_SPLIT,
             "--out", "cached.csv")  # fmt: skip
    # The same videos from the raw files, as a user with new videos has them.
    user.run("avcache-fuse", "predict", home / "fused.json", "--video", "test/*.mp4", "--out",
             home / "raw.csv", cwd=data)  # fmt: skip
    labels = split_labels(metadata, "test")
    cached_scores, raw_scores = read_scores(home / "cached.csv"), read_scores(home / "raw.csv")
    assert set(cached_scores) == set(raw_scores) == set(labels)
    for name in labels:  # the track windows are drawn from the name: named alike, scored alike
        assert raw_scores[name] == pytest.approx(cached_scores[name], abs=1e-3), name

    for submission, scores in (("cached.csv", cached_scores), ("raw.csv", raw_scores)):
        scored = user.run("avcache-score", submission, metadata, *TEST_SPLIT)
        names = sorted(labels)
        expected = roc_auc_score([labels[n] for n in names], [scores[n] for n in names])
        assert auc_of(scored.stdout) == pytest.approx(expected, abs=1e-4), scored.stdout
        assert "by kind of fake" in scored.stdout
