"""Late fusion: experts trained separately, their calibrated scores combined. On a toy set
where half the fakes show only in the mel and half only in the faces, the fused score
finds both halves, which neither expert does alone."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from avcache.cache import schema
from avcache.cache.index import ShardRecord, build_index
from avcache.cache.writer import ShardWriter
from avcache.common.atomic import write_json_atomic
from avcache.train.fuse import combine, list_scores, logit
from avcache.train.fuse import main as fuse_main
from avcache.train.predict import main as predict_main
from avcache.train.run import main as train_main
from avcache.train.runs import RunFolder
from avcache.train.score import main as score_main
from tests.layouts import lavdf_entry
from tests.media import talking_face
from tests.toy import FRAMES, SIZE, index_config, small_config


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
        with ShardWriter(
            root / rel, schema.ShardLayout(frames=FRAMES, face_size=SIZE), split=split
        ) as writer:
            for i in range(count):
                writer.append(split_cue_sample(f"{split}{i:03d}.mp4", i, rng))
            records.append(ShardRecord(rel, split, *writer.close()))
    config = index_config(frames=FRAMES, size=SIZE, detector="haar", codec="raw")
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
    per_expert = [list_scores(RunFolder(run), names) for run in experts]
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


# ------------------------------------------------- the formula, worked out by hand
# fuse.py: P(fake) = sigmoid(bias + sum of weight_i * logit(p_i)), so the fused odds are
# e^bias * (odds_1)^w_1 * (odds_2)^w_2 with odds = p / (1 - p). The expected values below
# are written from that formula, never from fuse's own functions: a fusion that answers
# P(real), or mixes up its experts, differs from them.


def test_combine_gives_the_hand_worked_p_fake():
    # Odds 4 (P 0.8), 1 (P 0.5) and 1/4 (P 0.2); weights 1 and 2; bias ln 3.
    fusion = {"runs": ["a", "b"], "weights": [1.0, 2.0], "bias": math.log(3)}
    experts = np.array([[0.5, 0.5], [0.8, 0.5], [0.5, 0.2], [0.2, 0.8], [0.8, 0.2]])
    # fused odds: 3*1*1 = 3; 3*4*1 = 12; 3*1*(1/16) = 3/16; 3*(1/4)*16 = 12; 3*4*(1/16) = 3/4
    expected = [3 / 4, 12 / 13, 3 / 19, 12 / 13, 3 / 7]  # P = odds / (1 + odds)
    np.testing.assert_allclose(combine(fusion, logit(experts)), expected, rtol=1e-12)


@pytest.mark.parametrize("expert", [0, 1])
def test_an_expert_saying_fake_raises_the_fused_p_fake(expert):
    """With positive weights the fusion is monotone in each expert: one more sure of fake
    (the other unchanged) moves the fused score towards fake, and a sure one carries it."""
    fusion = {"runs": ["a", "b"], "weights": [0.7, 1.3], "bias": -0.2}
    scores = np.full((9, 2), 0.4)
    scores[:, expert] = np.linspace(0.01, 0.99, 9)  # from sure of real to sure of fake
    fused = combine(fusion, logit(scores))
    assert np.all(np.diff(fused) > 0), fused
    assert fused[0] < 0.5 < fused[-1], fused


def write_list(path: Path, split: str, count: int, labelled: bool = False) -> Path:
    """A competition list of `split`'s toy videos; with their targets (i % 2) if labelled."""
    rows = [f"{split}{i:03d}.mp4,{i % 2 if labelled else ''}\n" for i in range(count)]
    path.write_text("video_name,target\n" + "".join(rows))
    return path


def read_submission(path: Path) -> dict[str, float]:
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    return {name: float(value) for name, value in rows}


def scored_auc(submission: Path, labels: Path, capsys) -> float:
    """The AUC that avcache-score prints for a submission."""
    capsys.readouterr()
    assert score_main([str(submission), str(labels)]) == 0
    printed = dict(item.split(" ") for item in capsys.readouterr().out.strip().split(", "))
    return float(printed["auc"])


def test_predict_applies_a_handwritten_fusion_by_its_formula(experts, tmp_path):
    """Each expert's P(fake) from avcache-predict, the fusion's by hand from the formula."""
    listing = write_list(tmp_path / "list.csv", "test", 16)
    audio, faces = (expert_scores(run, listing, tmp_path / f"{run.name}.csv") for run in experts)
    weights, bias = (0.8, 1.5), -0.3
    fusion = tmp_path / "fused.json"
    fusion.write_text(json.dumps({"runs": list(map(str, experts)), "weights": weights,
                                  "bias": bias}))  # fmt: skip
    out = tmp_path / "fused.csv"
    assert fuse_main(["predict", str(fusion), "--list", str(listing), "--out", str(out)]) == 0
    fused = read_submission(out)
    assert list(fused) == list(audio)
    for name, value in fused.items():
        odds = math.exp(bias) * odds_of(audio[name]) ** 0.8 * odds_of(faces[name]) ** 1.5
        # the experts' scores come rounded to 6 decimals: that moves the result ~1e-6
        assert value == pytest.approx(odds / (1 + odds), abs=1e-5), name


def odds_of(p_fake: float) -> float:
    return p_fake / (1 - p_fake)


def expert_scores(run: Path, listing: Path, out: Path) -> dict[str, float]:
    """One expert's P(fake) of the listed videos, through avcache-predict."""
    assert predict_main(["--run", str(run), "--list", str(listing), "--out", str(out)]) == 0
    return read_submission(out)


def test_fit_and_predict_agree_on_the_fused_auc(fusion, tmp_path, capsys):
    """fit measures its fused AUC with scikit-learn's own probabilities; predict's
    submission of the same split, scored by avcache-score, must show the same AUC (a
    predict that answered P(real) would show 1 - AUC), and a high one on the test split."""
    fitted = json.loads(fusion.read_text())["auc"]["fused"]
    aucs = {}
    for split, count in (("val", 24), ("test", 16)):
        listing = write_list(tmp_path / f"{split}.csv", split, count)
        labels = write_list(tmp_path / f"{split}-labels.csv", split, count, labelled=True)
        out = tmp_path / f"{split}-fused.csv"
        assert fuse_main(["predict", str(fusion), "--list", str(listing), "--out", str(out)]) == 0
        aucs[split] = scored_auc(out, labels, capsys)
    # 0.01: rounded to 6 decimals, two near-certain scores may tie (1/288 of the AUC a pair)
    assert aucs["val"] == pytest.approx(fitted, abs=0.01), (aucs, fitted)
    assert aucs["test"] > 0.9, aucs


# ------------------------------------------------- videos the experts never cached


def test_a_list_the_caches_do_not_hold_is_refused_before_anything_is_written(
    fusion, tmp_path, capsys
):  # fmt: skip
    """As avcache-predict refuses it: a submission made of fallbacks is worthless."""
    listing = write_list(tmp_path / "new.csv", "new", 2)
    out = tmp_path / "fused.csv"
    capsys.readouterr()
    assert fuse_main(["predict", str(fusion), "--list", str(listing), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error
    assert "2 of 2 listed videos (100.0%) have no cached features" in error
    assert "over --max-fallback 0.01" in error and not out.exists()
    # the same share allowed: written, every row the fallback, as avcache-predict writes it
    argv = ["predict", str(fusion), "--list", str(listing), "--out", str(out)]
    assert fuse_main([*argv, "--max-fallback", "1"]) == 0
    assert read_submission(out) == {"new000.mp4": 0.5, "new001.mp4": 0.5}


def test_a_raw_video_gets_the_fusion_of_each_experts_own_score(experts, tmp_path, capsys):
    """--video: each expert's avcache-predict --video score, combined by the formula by hand."""
    video = talking_face(tmp_path / "clip.mp4", seconds=1.0)
    alone = []
    for run in experts:
        capsys.readouterr()
        assert predict_main(["--run", str(run), "--video", str(video)]) == 0
        alone.append(float(capsys.readouterr().out.strip().rsplit("= ", 1)[1]))
    weights, bias = (0.8, 1.5), -0.3
    fusion = tmp_path / "fused.json"
    fusion.write_text(json.dumps({"runs": list(map(str, experts)), "weights": weights,
                                  "bias": bias}))  # fmt: skip
    assert fuse_main(["predict", str(fusion), "--video", str(video)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{video}: P(fake) = "), line
    fused = float(line.rsplit("= ", 1)[1])
    odds = math.exp(bias) * odds_of(alone[0]) ** 0.8 * odds_of(alone[1]) ** 1.5
    expected = odds / (1 + odds)
    # each score is printed to 4 places (off by 5e-5 at most); through the logit that moves
    # the fused P(fake) by at most P(1 - P) * sum of w * 5e-5 / (p (1 - p)), plus its own 5e-5
    moved = sum(w * 5e-5 / (p * (1 - p)) for w, p in zip(weights, alone, strict=True))
    slack = expected * (1 - expected) * moved
    assert fused == pytest.approx(expected, abs=5e-5 + slack + 1e-9), (alone, fused)


def test_video_and_list_are_one_or_the_other(fusion, tmp_path):
    listing = write_list(tmp_path / "list.csv", "test", 2)
    argv = ["predict", str(fusion), "--list", str(listing), "--video", str(tmp_path / "a.mp4")]
    with pytest.raises(SystemExit) as exit_:
        fuse_main([*argv, "--out", str(tmp_path / "s.csv")])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        fuse_main(["predict", str(fusion), "--list", str(listing)])  # no --out
    assert exit_.value.code == 2


def test_cache_scores_another_cache_as_the_list_path_scores_the_experts_own(
    cache, fusion, tmp_path
):  # fmt: skip
    """--cache: every expert reads the copy; with the experts' own cache out of reach (its
    index moved away) the copy's scores are those of the list path on the original."""
    listing = write_list(tmp_path / "list.csv", "test", 16)
    own = tmp_path / "own.csv"
    assert fuse_main(["predict", str(fusion), "--list", str(listing), "--out", str(own)]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(cache, copy)
    index = cache / schema.INDEX_FILE
    index.rename(tmp_path / "away.json")
    try:
        argv = ["predict", str(fusion), "--list", str(listing), "--out"]
        assert fuse_main([*argv, str(tmp_path / "lost.csv")]) == 2  # proves it is out of reach
        out = tmp_path / "copy.csv"
        assert fuse_main([*argv, str(out), "--cache", str(copy)]) == 0
    finally:
        (tmp_path / "away.json").rename(index)
    assert read_submission(out) == read_submission(own)
    assert len(read_submission(out)) == 16


# ------------------------------------------------- lists of other layouts, several raw videos


def test_a_lavdf_list_is_fused_as_its_ffdv_twin(fusion, tmp_path):
    """--list metadata.json --layout lav-df --select split=test: the test entries' rows, in
    the file's order, equal to those of the same names in FFDV's list."""
    entries = [lavdf_entry(f"{split}{i:03d}.mp4", lavdf_split, [[0.1, 0.2]] if i % 2 else [],
                           bool(i % 2), False)
               for split, lavdf_split, count in (("val", "dev", 24), ("test", "test", 16))
               for i in range(count)]  # fmt: skip
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps(entries))
    lavdf, ffdv = tmp_path / "lavdf.csv", tmp_path / "ffdv.csv"
    argv = ["predict", str(fusion), "--list", str(metadata), "--layout", "lav-df", "--select",
            "split=test", "--out", str(lavdf)]  # fmt: skip
    assert fuse_main(argv) == 0
    listing = write_list(tmp_path / "list.csv", "test", 16)
    assert fuse_main(["predict", str(fusion), "--list", str(listing), "--out", str(ffdv)]) == 0
    assert lavdf.read_text() == ffdv.read_text()
    assert list(read_submission(lavdf)) == [f"test{i:03d}.mp4" for i in range(16)]


def test_raw_videos_of_a_folder_get_the_fusion_of_each_experts_score(experts, tmp_path,
                                                                     capsys):  # fmt: skip
    """--video FOLDER: every clip fused from the experts' own avcache-predict --video scores
    (the experts read caches made alike: one preprocessing serves both); a file that is no
    video is named, left out, and the exit status is 1."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for name, seconds in (("b.mp4", 1.0), ("a.mp4", 1.4)):
        talking_face(folder / name, seconds=seconds)
    (folder / "c.mp4").write_bytes(b"this is not a video\n" * 100)
    alone = []
    for run in experts:
        out = tmp_path / f"{run.name}.csv"
        assert predict_main(["--run", str(run), "--video", str(folder), "--out", str(out)]) == 1
        alone.append(read_submission(out))
    weights, bias = (0.8, 1.5), -0.3
    fusion = tmp_path / "fused.json"
    fusion.write_text(json.dumps({"runs": list(map(str, experts)), "weights": weights,
                                  "bias": bias}))  # fmt: skip
    out = tmp_path / "fused.csv"
    capsys.readouterr()
    assert fuse_main(["predict", str(fusion), "--video", str(folder), "--out", str(out)]) == 1
    assert f"avcache-fuse: {folder / 'c.mp4'}: cannot be read (" in capsys.readouterr().err
    fused = read_submission(out)
    assert list(fused) == ["a.mp4", "b.mp4"]
    for name, value in fused.items():
        odds = math.exp(bias) * odds_of(alone[0][name]) ** 0.8 * odds_of(alone[1][name]) ** 1.5
        assert value == pytest.approx(odds / (1 + odds), abs=1e-5), name  # six places each
