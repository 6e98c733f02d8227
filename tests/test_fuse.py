"""Late fusion: experts trained separately, their calibrated scores combined. On a toy set
where half the fakes show only in the mel and half only in the faces, the fused score
finds both halves, which neither expert does alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from avcache.cache import schema
from avcache.cache.atomic import write_json_atomic
from avcache.cache.config import to_dict
from avcache.cache.index import ShardRecord, build_index
from avcache.cache.writer import ShardWriter
from avcache.preprocess.config import PreprocessConfig
from avcache.train.fuse import combine, list_scores, logit
from avcache.train.fuse import main as fuse_main
from avcache.train.run import main as train_main
from avcache.train.score import main as score_main
from tests.toy import FRAMES, SIZE, small_config


def split_cue_sample(name: str, index: int, rng: np.random.Generator) -> schema.Sample:
    """Real (even index), or fake with its cue in the mel alone (index % 4 == 1) or in the
    faces alone (index % 4 == 3)."""
    mel = rng.integers(0, 120, (256, 256), dtype=np.uint8)
    faces = rng.integers(0, 120, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    if index % 4 == 1:
        mel[100:140] += 120
    if index % 4 == 3:
        faces[..., 0] += 120
    return schema.Sample(name, index % 2, mel, faces, True, np.ones(FRAMES, bool),
                         np.zeros((FRAMES, 4), np.float32), np.float32(1.0))  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("split-cues")
    (root / "shards").mkdir()
    rng, records = np.random.default_rng(0), []
    for split, count in (("train", 48), ("val", 24), ("test", 16)):
        rel = f"shards/{split}.h5"
        with ShardWriter(root / rel, split=split, frames=FRAMES, face_size=SIZE) as writer:
            for i in range(count):
                writer.append(split_cue_sample(f"{split}{i:03d}.mp4", i, rng))
            records.append(ShardRecord(rel, split, *writer.close()))
    config = to_dict(PreprocessConfig())
    config["faces"].update(frames=FRAMES, size=SIZE, detector="haar", codec="raw")
    write_json_atomic(root / schema.INDEX_FILE, build_index(config, "split-cues", records))
    return root


@pytest.fixture(scope="module")
def experts(cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    runs = []
    for kind in ("audio", "faces"):
        run = root / kind
        options = {"model.kind": kind, "run.epochs": 3, "model.mel_size": 32}
        assert train_main(["--cache", str(cache), "--out", str(run),
                           *small_config(**options)]) == 0  # fmt: skip
        runs.append(run)
    return runs


@pytest.fixture(scope="module")
def fusion(experts, tmp_path_factory):
    path = tmp_path_factory.mktemp("fusion") / "fused.json"
    assert fuse_main(["fit", *map(str, experts), "--out", str(path)]) == 0
    return path


def test_the_fused_experts_find_what_each_finds_alone(experts, fusion):
    fitted = json.loads(fusion.read_text())
    aucs = fitted["auc"]
    alone = [aucs[str(run)] for run in experts]
    assert aucs["fused"] > max(alone) + 0.05 and aucs["fused"] > 0.9, aucs
    assert all(weight > 0 for weight in fitted["weights"])  # both experts count
    assert fitted["samples"] == 24 and fitted["split"] == "val"


def test_fused_predictions_combine_the_experts_as_fitted(experts, fusion, tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text("video_name,target\n" + "".join(f"test{i:03d}.mp4,\n" for i in range(16)))
    labels = tmp_path / "labels.csv"
    labels.write_text("video_name,target\n" + "".join(f"test{i:03d}.mp4,{i % 2}\n"
                                                    for i in range(16)))  # fmt: skip
    out = tmp_path / "fused.csv"
    assert fuse_main(["predict", str(fusion), "--list", str(listing), "--out", str(out)]) == 0
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    names = [f"test{i:03d}.mp4" for i in range(16)]
    assert [name for name, _ in rows] == names
    per_expert = [list_scores(run, names) for run in experts]
    logits = np.stack([logit([scores[name] for name in names]) for scores in per_expert], 1)
    expected = combine(json.loads(fusion.read_text()), logits)
    np.testing.assert_allclose([float(value) for _, value in rows], expected, atol=2e-6)
    assert score_main([str(out), str(labels)]) == 0


def test_a_fusion_file_that_is_not_one_is_refused_in_one_line(tmp_path, capsys):
    bad = tmp_path / "fused.json"
    bad.write_text(json.dumps({"runs": ["a"], "weights": ["x"], "bias": 0}))
    listing = tmp_path / "list.csv"
    listing.write_text("video_name,target\na.mp4,\n")
    assert fuse_main(["predict", str(bad), "--list", str(listing), "--out",
                      str(tmp_path / "s.csv")]) == 2  # fmt: skip
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "not a fusion written by avcache-fuse fit" in error
