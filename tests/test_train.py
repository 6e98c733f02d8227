"""The trainer on small real caches: every model kind, learning, resume, predict, weights."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from avcache.cache import open_cache, schema
from avcache.train.augment import prepare
from avcache.train.config import MODEL_INPUTS, MODEL_KINDS, ModelConfig, TrainConfig
from avcache.train.engine import BEST, LAST, METRICS, Trainer
from avcache.train.models import MODELS, build_model, face_features, mel_features
from avcache.train.predict import FALLBACK
from avcache.train.predict import main as predict_main
from avcache.train.run import main as train_main
from tests.media import talking_face
from tests.toy import (  # noqa: F401 (shared with the other tests)
    FRAMES,
    REPO,
    SIZE,
    kill_after_first_epoch,
    small_config,
    toy_sample,
    write_toy_cache,
)


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    write_toy_cache(root, {"train": 48, "val": 24, "test": 10})
    return root


def every_field(batch: int = 2) -> dict[str, torch.Tensor]:
    """A batch of every field a model may read, as the cache gives it (mouths of 5 frames,
    0.2 s of audio, all 5 frames in the clip)."""
    return {
        schema.MEL: torch.randint(0, 256, (batch, 256, 256), dtype=torch.uint8),
        schema.FACES: torch.randint(0, 256, (batch, FRAMES, SIZE, SIZE, 3), dtype=torch.uint8),
        schema.LIPS: torch.randint(0, 256, (batch, 1, 5, 16, 16), dtype=torch.uint8),
        schema.TRACK_AUDIO: torch.randint(-3000, 3000, (batch, 1, 3200), dtype=torch.int16),
        schema.TRACK_FRAMES_REAL: torch.full((batch, 1), 5, dtype=torch.int16),
    }


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_model_kind_scores_one_logit_a_sample_and_trains_on_its_own_loss(kind):
    """Whatever the kind and its options, and in either mode, forward gives one logit per
    sample, and given the labels the model's own training loss, whose gradient reaches every
    weight (the branch heads of aux_weight included)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind=kind, aux_weight=0.5, modality_dropout=0.5),
                        track_frames=5)  # fmt: skip
    inputs = prepare(every_field(), model.fields, mel_size=64)
    labels = torch.tensor([0.0, 1.0])
    for training in (False, True):
        model.train(training)
        logits, loss = model(inputs)
        assert logits.shape == (2,) and loss is None
        logits, loss = model(inputs, labels)
        assert logits.shape == (2,) and loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_branch_heads_add_their_weighed_losses_to_the_fused_one():
    """aux_weight: the fused verdict's loss plus aux_weight x each branch head's own."""
    torch.manual_seed(0)
    plain = build_model(ModelConfig(kind="av"))
    torch.manual_seed(0)
    with_heads = build_model(ModelConfig(kind="av", aux_weight=0.5))
    for model in (plain, with_heads):
        model.eval()  # no dropout: the two fused verdicts are equal
    inputs = prepare(every_field(), plain.fields, mel_size=64)
    labels = torch.tensor([0.0, 1.0])
    with torch.no_grad():
        logits, fused = plain(inputs, labels)
        same, total = with_heads(inputs, labels)
        features = [mel_features(with_heads.branches["mel"], inputs),
                    face_features(with_heads.branches["faces"], inputs)]  # fmt: skip
        own = [
            head(f).squeeze(1) for head, f in zip(with_heads.aux.values(), features, strict=True)
        ]
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    assert torch.equal(logits, same)
    torch.testing.assert_close(total, fused + 0.5 * sum(bce(o, labels) for o in own))
    assert total > fused


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_the_config_names_what_each_model_kind_reads(kind):
    """train/config.py names the kinds and their inputs without torch (for --help and the
    checks of a cache against a run); the models built read exactly those."""
    assert set(MODELS) == set(MODEL_KINDS)
    assert build_model(ModelConfig(kind=kind), track_frames=5).fields == MODEL_INPUTS[kind]


def test_unknown_model_kind_is_refused():
    with pytest.raises(ValueError, match=r"model\.kind 'video' unknown"):
        build_model(ModelConfig(kind="video"))


def test_training_separates_a_separable_set(toy_cache, tmp_path):
    run = tmp_path / "run"
    assert train_main(["--cache", str(toy_cache), "--out", str(run),
                       *small_config(**{"run.epochs": 3})]) == 0  # fmt: skip
    history = [json.loads(line) for line in (run / METRICS).read_text().splitlines()]
    assert len(history) == 3
    assert max(row["val_auc"] for row in history) > 0.9
    for name in ("config.yaml", "curves.png", "roc.png", LAST, BEST):
        assert (run / name).stat().st_size > 0


def test_killed_run_resumes_to_where_an_uninterrupted_run_ends(toy_cache, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = [*small_config(), "--cache", str(toy_cache)]
    assert train_main([*args, "--out", str(straight)]) == 0
    kill_after_first_epoch([*args, "--out", str(killed)], killed)
    assert torch.load(killed / LAST, weights_only=True)["epoch"] == 1
    assert train_main(["--resume", str(killed)]) == 0
    a = torch.load(straight / LAST, weights_only=True)
    b = torch.load(killed / LAST, weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    rows = [json.loads(line) for line in (killed / METRICS).read_text().splitlines()]
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in a["history"]]


def test_a_run_folder_is_not_overwritten(toy_cache, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--cache", str(toy_cache), "--out", str(run), *small_config(**{"run.epochs": 1})]
    assert train_main(args) == 0
    assert train_main(args) == 2
    assert "already holds a run: use --resume" in capsys.readouterr().err


def test_submission_rows_follow_the_list(toy_cache, tmp_path, caplog):
    run = tmp_path / "run"
    assert train_main(["--cache", str(toy_cache), "--out", str(run),
                       *small_config(**{"run.epochs": 1})]) == 0  # fmt: skip
    names = [f"test{i:03d}.mp4" for i in (7, 2, 9, 0)] + ["broken.mp4"]
    listing = tmp_path / "prediction.txt.csv"
    listing.write_text("\ufeffvideo_name,target\r\n" + "".join(f"{n},\r\n" for n in names))
    out = tmp_path / "submission.csv"
    with caplog.at_level(logging.WARNING):
        assert predict_main(["--run", str(run), "--list", str(listing), "--out", str(out),
                             "--max-fallback", "0.2"]) == 0  # fmt: skip
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["video_name", "y_pred"]
    assert [row[0] for row in rows[1:]] == names
    scores = [float(row[1]) for row in rows[1:]]
    assert all(0.0 <= s <= 1.0 for s in scores) and scores[-1] == FALLBACK
    assert "broken.mp4" in caplog.text


def test_pretrained_weights_load_from_a_local_file(tmp_path):
    source = timm.create_model("resnet18", num_classes=1000)
    path = tmp_path / "resnet18.safetensors"
    save_file(source.state_dict(), path)
    model = build_model(ModelConfig(kind="av", pretrained=str(path)))
    faces, mel = model.branches["faces"], model.branches["mel"]
    assert torch.equal(faces.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert torch.allclose(mel.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    from_pth = build_model(ModelConfig(kind="audio", pretrained=str(tmp_path / "resnet18.pth")))
    assert torch.equal(
        from_pth.branches["mel"].layer4[1].conv2.weight, source.layer4[1].conv2.weight
    )


def test_missing_weights_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        build_model(ModelConfig(kind="audio", pretrained=str(tmp_path / "nope.pth")))


def test_trainer_refuses_a_split_that_is_not_cached(toy_cache, tmp_path):
    config = TrainConfig()
    config.data.val_split = "holdout"
    config.model.kind = "faces"
    trainer = Trainer(config, open_cache(toy_cache), tmp_path)
    with pytest.raises(ValueError, match="split 'holdout' has no cached samples"):
        trainer.validate()


def test_predict_one_raw_video(toy_cache, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(["--cache", str(toy_cache), "--out", str(run),
                       *small_config(**{"run.epochs": 1, "model.kind": "av"})]) == 0  # fmt: skip
    video = talking_face(tmp_path / "clip.mp4", seconds=1.0)
    capsys.readouterr()
    assert predict_main(["--run", str(run), "--video", str(video)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{video}: P(fake) = ")
    assert 0.0 <= float(line.rsplit("= ", 1)[1]) <= 1.0
    assert predict_main(["--run", str(run), "--video", str(tmp_path / "nope.mp4")]) == 2
    assert "no such file" in capsys.readouterr().err


def hub_run(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    """Python in a fresh process whose Hugging Face cache is tmp_path/hf (huggingface_hub
    reads its settings at import) and which never reaches the network."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_imagenet_weights_come_through_timms_hub_cache(tmp_path):
    """A hub-cache layout built from a locally saved state dict (nothing is downloaded):
    model.pretrained=imagenet loads exactly those weights, as timm users expect."""
    source = timm.create_model("resnet18", num_classes=1000)
    hub_id = timm.models.get_pretrained_cfg("resnet18").hf_hub_id  # timm/resnet18.a1_in1k
    repo = tmp_path / "hf" / "hub" / f"models--{hub_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(source.state_dict(), repo / "snapshots" / commit / "model.safetensors")
    torch.save(source.layer3[0].conv1.weight, tmp_path / "expected.pt")
    done = hub_run(tmp_path, (
        "import torch; from train.config import ModelConfig; "
        "from train.models import build_model; "
        "model = build_model(ModelConfig(kind='av', pretrained='imagenet')); "
        f"expected = torch.load({str(tmp_path / 'expected.pt')!r}); "
        "assert torch.equal(model.branches['faces'].layer3[0].conv1.weight, expected); "
        "assert torch.equal(model.branches['mel'].layer3[0].conv1.weight, expected); "
        "print('loaded')"))  # fmt: skip
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr


def test_imagenet_offline_and_uncached_names_the_way_out(tmp_path):
    done = hub_run(
        tmp_path,
        "from train.config import ModelConfig; from train.models import build_model; "
        "build_model(ModelConfig(kind='audio', pretrained='imagenet'))",
    )
    assert done.returncode != 0
    error = done.stderr.strip().splitlines()[-1]
    assert "model.pretrained=imagenet: timm's timm/resnet18" in error
    assert "--pretrained PATH" in error and "HF_HOME" in error and str(tmp_path / "hf") in error


def test_fusion_options_train_and_keep_results_reproducible(toy_cache, tmp_path):
    """Modality dropout, per-branch heads and audio-visual mismatch all train an av model;
    the same seed gives the same weights (their randomness is seeded per batch)."""
    options = {"model.kind": "av", "run.epochs": 1, "model.modality_dropout": 0.5,
               "model.aux_weight": 0.5, "augment.av_mismatch": 0.25}  # fmt: skip
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        args = ["--cache", str(toy_cache), "--out", str(run), *small_config(**options)]
        assert train_main(args) == 0
    a, b = (torch.load(run / LAST, weights_only=True)["model"] for run in runs)
    assert any(key.startswith("aux.") for key in a)
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
    best = torch.load(runs[0] / BEST, weights_only=True)
    assert predict_main(["--run", str(runs[0]), "--video", str(
        talking_face(tmp_path / "clip.mp4", seconds=1.0))]) == 0 and "model" in best  # fmt: skip


def test_mismatched_faces_come_from_another_video_and_are_fake():
    from avcache.train.augment import mismatch_faces

    faces = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1, 1).expand(8, 2, 3, 4, 4)
    inputs = {schema.MEL: torch.zeros(8, 1, 4, 4), schema.FACES: faces}
    labels = torch.zeros(8)
    out, new = mismatch_faces(inputs, labels, 0.5, torch.Generator().manual_seed(0))
    moved = (out[schema.FACES][:, 0, 0, 0, 0] != torch.arange(8)).nonzero().flatten()
    assert len(moved) == 4 and torch.equal(new[moved], torch.ones(4))
    assert new.sum() == 4 and torch.equal(inputs[schema.FACES], faces)  # the input is untouched


def test_modality_dropout_zeroes_one_branch_of_a_sample_never_both():
    from avcache.train.models import drop_one_branch

    torch.manual_seed(0)
    features = [torch.ones(1000, 4), torch.ones(1000, 4)]
    kept = [f[:, 0] for f in drop_one_branch(features, 0.5)]
    dropped = [(k == 0) for k in kept]
    assert not (dropped[0] & dropped[1]).any()
    assert 400 < int((dropped[0] | dropped[1]).sum()) < 600


def test_either_sense_fusion_is_fake_when_either_branch_says_fake():
    from avcache.train.models import either_fake

    logits = torch.tensor([[3.0, -2.0], [-4.0, -5.0], [-200.0, -300.0], [40.0, 50.0]])
    p = torch.sigmoid(logits)
    expected = 1 - (1 - p[:, 0]) * (1 - p[:, 1])
    fused = torch.sigmoid(either_fake(logits))
    assert torch.allclose(fused[:2], expected[:2], atol=1e-6)
    assert torch.isfinite(either_fake(logits)).all()  # both sure of real, both sure of fake
    assert fused[2] < 1e-5 and fused[3] == 1.0


def test_either_sense_fusion_trains_and_predicts(toy_cache, tmp_path):
    run = tmp_path / "run"
    options = {"model.kind": "av", "run.epochs": 1, "model.fusion": "or", "model.aux_weight": 0.5}
    assert train_main(["--cache", str(toy_cache), "--out", str(run), *small_config(**options)]) == 0
    state = torch.load(run / LAST, weights_only=True)["model"]
    assert {key.split(".")[1] for key in state if key.startswith("head.")} == {"mel", "faces"}
    assert not any(key.startswith("aux.") for key in state)  # its branch heads are the aux heads
    assert predict_main(["--run", str(run), "--video", str(
        talking_face(tmp_path / "clip.mp4", seconds=1.0))]) == 0  # fmt: skip


def test_the_epoch_line_shows_a_slow_runs_throughput():
    from avcache.train.engine import format_row

    row = {"epoch": 1, "train_loss": 0.7, "val_loss": 0.69, "val_auc": 0.5, "val_ap": 0.5,
           "val_eer": 0.5, "val_tpr@fpr=1e-3": 0.0, "val_accuracy": 0.5,
           "train_samples_per_s": 0.4, "data_wait_share": 0.0}  # fmt: skip
    assert "(0.4 samples/s" in format_row(row)
    assert "(1,234 samples/s" in format_row({**row, "train_samples_per_s": 1234.4})


def test_train_help_names_every_model_kind(capsys):
    from avcache.train.models import MODELS

    with pytest.raises(SystemExit):
        train_main(["--help"])
    described = " ".join(capsys.readouterr().out.split())
    assert f"model.kind: {', '.join(MODELS)}" in described


WITHOUT_MATPLOTLIB = """
import importlib.abc, sys
class Lacking(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "matplotlib":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Lacking())
from avcache.train.run import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_run_trains_where_matplotlib_is_missing(toy_cache, tmp_path):
    """A GPU box's own image may lack matplotlib: the run trains, records its metrics and
    says once that it draws no plots."""
    run = tmp_path / "run"
    args = ["--cache", str(toy_cache), "--out", str(run), *small_config(**{"run.epochs": 2})]
    done = subprocess.run([sys.executable, "-c", WITHOUT_MATPLOTLIB, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("no plots (curves.png, roc.png)") == 1, done.stderr
    assert len((run / METRICS).read_text().splitlines()) == 2
    assert not (run / "curves.png").exists() and (run / BEST).is_file()
