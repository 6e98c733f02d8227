"""Everyday mistakes: each is refused early in one line naming the key or file and the fix
(exit 2), or does the right thing; never a traceback, never a wrong answer with exit 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file

from avcache.cache import schema
from avcache.cache.index import ShardRecord, build_index
from avcache.cache.writer import ShardWriter
from avcache.common.atomic import write_json_atomic
from avcache.common.config import ConfigError, load_config
from avcache.common.lock import FolderLock
from avcache.preprocess.config import PreprocessConfig
from avcache.preprocess.run import main as preprocess_main
from avcache.train import engine
from avcache.train.config import TrainConfig
from avcache.train.engine import BEST, LAST, METRICS
from avcache.train.predict import FALLBACK
from avcache.train.predict import main as predict_main
from avcache.train.run import main as train_main
from avcache.train.score import main as score_main
from tests.test_train import small_config, toy_sample, write_toy_cache

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    write_toy_cache(root, {"train": 24, "val": 12, "test": 6})
    return root


@pytest.fixture(scope="module")
def run(toy, tmp_path_factory) -> Path:
    """A finished 2-epoch run on the toy cache."""
    folder = tmp_path_factory.mktemp("run") / "run"
    assert train_main(["--cache", str(toy), "--out", str(folder), *small_config()]) == 0
    return folder


def one_line_error(capsys, program: str) -> str:
    error = capsys.readouterr().err
    assert error.startswith(f"{program}: error: "), error
    assert error.count("\n") == 1 and "Traceback" not in error, error
    return error


# ---------------------------------------------------------------- settings checked first


@pytest.mark.parametrize("override,expected", [
    ("data.batch_size=0", "data.batch_size=0: must be at least 1"),
    ("data.block_size=0", "data.block_size=0: must be at least 1"),
    ("run.epochs=0", "run.epochs=0: must be at least 1"),
    ("optim.accumulate=0", "optim.accumulate=0: must be at least 1"),
    ("augment.hflip=2", "augment.hflip=2.0: must be a probability"),
    ("model.kind=video", "model.kind='video': must be one of audio, faces, av, lips, speech, sync"),
    ("data.val_split=train", "is the training split"),
    ("data.val_split=nope", "data.val_split='nope': the cache"),
    ("model.frames=9", "model.frames=9: the cache"),
])  # fmt: skip
def test_a_bad_setting_is_refused_before_anything_runs(toy, tmp_path, capsys, monkeypatch,
                                                       override, expected):  # fmt: skip
    out = tmp_path / "run"
    built = trainers_built(monkeypatch)
    assert train_main(["--cache", str(toy), "--out", str(out), *small_config(), override]) == 2
    assert expected in one_line_error(capsys, "avcache-train")
    assert not out.exists(), "nothing is written for a refused run"
    assert not built, "no model was built, so no epoch was trained first"


def trainers_built(monkeypatch) -> list[tuple]:
    """The Trainers that avcache-train builds from now on (each one refused): the model, and
    every epoch, come after that build."""
    built: list[tuple] = []

    def refuse(*args, **kwargs):
        built.append(args)
        raise AssertionError("avcache-train built a Trainer for a run it should refuse")

    monkeypatch.setattr(engine, "Trainer", refuse)
    return built


# A command in a fresh interpreter: its exit status and whether it imported what builds a model.
WITHOUT_A_MODEL = """
import sys
from avcache.train.run import main
try:
    code = main(sys.argv[1:])
except SystemExit as done:  # --help
    code = done.code
print(code, sorted({"torch", "timm", "torchvision"} & set(sys.modules)))
"""


@pytest.mark.parametrize("args,expected", [
    (["--help"], "key=value"),
    (["--out", "RUN", "modle.kind=av"], "unknown key 'modle'; did you mean 'model'?"),
    (["--out", "RUN", "--cache", "MISSING"], "/missing: no cache index here"),
    (["--resume", "TOY"], "not a run folder (no config.yaml)"),
    (["--out", "RUN", "--cache", "TOY", "data.val_split=nope"], "data.val_split='nope': the cache"),
    (["--resume", "TRAINED", "optim.lr=1"], "a resumed run keeps its config"),
])  # fmt: skip
def test_help_and_a_mistake_that_needs_no_model_import_no_torch(toy, run, tmp_path, args,
                                                               expected):  # fmt: skip
    """Importing torch, timm and torchvision takes seconds: --help and these refusals are
    answered before them (benchmarks/cli_bench.py times the commands)."""
    places = {"RUN": tmp_path / "new", "MISSING": tmp_path / "missing", "TOY": toy, "TRAINED": run}
    args = [str(places.get(arg, arg)) for arg in args]
    done = subprocess.run([sys.executable, "-c", WITHOUT_A_MODEL, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    code = 0 if args == ["--help"] else 2
    assert done.stdout.splitlines()[-1] == f"{code} []", done.stdout + done.stderr
    assert expected in (done.stdout if code == 0 else done.stderr), done.stderr
    assert not places["RUN"].exists()


def test_a_faces_model_on_a_mel_only_cache_is_refused(tmp_path, capsys):
    cache = tmp_path / "cache"
    (cache / "shards").mkdir(parents=True)
    records = []
    for split in ("train", "val"):
        rel = f"shards/{split}.h5"
        with ShardWriter(
            cache / rel, schema.ShardLayout(frames=0, face_size=32), split=split
        ) as writer:
            for i in range(4):
                sample = toy_sample(f"{split}{i}.mp4", bool(i % 2), np.random.default_rng(i))
                sample.faces, sample.face_found = sample.faces[:0], sample.face_found[:0]
                sample.face_box = sample.face_box[:0]
                writer.append(sample)
            records.append(ShardRecord(rel, split, *writer.close()))
    config = {"splits": {"train": {}, "val": {}}, "faces": {"frames": 0, "size": 32}}
    write_json_atomic(cache / schema.INDEX_FILE, build_index(config, "m", records))
    args = ["--cache", str(cache), "--out", str(tmp_path / "run"), *small_config()]
    assert train_main([*args, "model.kind=av"]) == 2
    assert "holds mel images only (faces.frames=0): use model.kind=audio" in one_line_error(
        capsys, "avcache-train"
    )


def test_an_override_error_names_the_override_not_the_file(capsys):
    path = REPO / "configs/train.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(TrainConfig, path, ["model.kindd=audio"])
    message = str(caught.value)
    assert message.startswith("override model.kindd=audio: model: unknown key 'kindd'")
    assert "did you mean 'kind'" in message and str(path) not in message
    with pytest.raises(ConfigError, match=r"^override run.epochs=x: run.epochs: expected int"):
        load_config(TrainConfig, path, ["run.epochs=x"])
    bad = path.parent.parent / "tests" / "bad.yaml"
    try:
        bad.write_text("run:\n  epochz: 3\n")
        with pytest.raises(ConfigError, match=rf"^{bad}: run: unknown key 'epochz'"):
            load_config(TrainConfig, bad)
    finally:
        bad.unlink()


def test_help_lists_the_keys_and_print_config_round_trips(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_main(["--help"])
    help_text = capsys.readouterr().out
    assert "optim.accumulate=1" in help_text and "model.kind=all" in help_text
    assert train_main(["--print-config", "run.epochs=3", "--config",
                       str(REPO / "configs/train_baseline.yaml")]) == 0  # fmt: skip
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    config = load_config(TrainConfig, printed)
    assert config.run.epochs == 3 and config.model.kind == "audio"
    assert preprocess_main(["faces.frames=3", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["faces"]["frames"] == 3
    assert load_config(PreprocessConfig, None, ["faces.frames=3"]).faces.frames == 3


def test_print_config_refuses_a_mistake_in_one_line(run, tmp_path, capsys):
    assert train_main(["--print-config", "modle.kind=av"]) == 2
    assert "override modle.kind=av: unknown key 'modle'" in one_line_error(capsys, "avcache-train")
    assert train_main(["--print-config", "--resume", str(tmp_path)]) == 2
    assert f"{tmp_path}: not a run folder" in one_line_error(capsys, "avcache-train")
    assert train_main(["--print-config", "--resume", str(run), "optim.lr=1"]) == 2
    assert "a resumed run keeps its config" in one_line_error(capsys, "avcache-train")


def test_overrides_may_come_between_options(toy, tmp_path):
    """argparse's intermixed parsing: key=value before, between and after options."""
    out = tmp_path / "run"
    args = ["run.epochs=1", "--cache", str(toy), "data.workers=0", "--out", str(out),
            *small_config(**{"run.epochs": 1})]  # fmt: skip
    assert train_main(args) == 0


# ---------------------------------------------------------------- run folders


def test_out_naming_a_file_is_one_line(toy, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("x")
    assert train_main(["--cache", str(toy), "--out", str(taken), *small_config()]) == 2
    assert "is a file, not a folder" in one_line_error(capsys, "avcache-train")
    assert preprocess_main(["--data", str(tmp_path), "--out", str(taken)]) == 2
    assert "is a file, not a folder" in one_line_error(capsys, "avcache-preprocess")


def test_best_holds_only_what_prediction_needs(run):
    best = torch.load(run / BEST, weights_only=True)
    last = torch.load(run / LAST, weights_only=True)
    assert "optimizer" not in best and "optimizer" in last
    assert (run / BEST).stat().st_size < 0.6 * (run / LAST).stat().st_size


def test_resume_refuses_what_it_cannot_apply_and_points_at_init(run, tmp_path, capsys):
    assert train_main(["--resume", str(run), "model.kind=audio"]) == 2
    error = one_line_error(capsys, "avcache-train")
    assert "override model.kind=audio: a resumed run keeps its config" in error
    assert train_main(["--resume", str(run), "run.epochs=3"]) == 2
    error = one_line_error(capsys, "avcache-train")
    assert "planned for 2 epochs" in error and f"--init {run / LAST} run.epochs=N" in error
    # The command it names works: a new run, a new schedule, from the old weights.
    more = tmp_path / "more"
    config = run / "config.yaml"
    assert train_main(["--config", str(config), "--cache", str(json.loads(
        (run / "cache.json").read_text())["path"]), "--out", str(more), "--init",
        str(run / LAST), "run.epochs=1"]) == 0  # fmt: skip
    history = [json.loads(line) for line in (more / METRICS).read_text().splitlines()]
    assert len(history) == 1 and history[0]["lr"] > 0
    # What a resume may change, it changes: it finds the run finished and says so.
    assert train_main(["--resume", str(run), "run.threads=1", "run.epochs=2"]) == 0


def test_a_second_trainer_on_a_run_folder_is_refused(run, capsys):
    with FolderLock(run, "held by the test"):
        assert train_main(["--resume", str(run)]) == 2
    assert "another avcache-train is using this run folder" in one_line_error(
        capsys, "avcache-train"
    )


@pytest.mark.parametrize("weights", ["resnet34", "junk"])
def test_pretrained_weights_of_another_kind_are_one_line(toy, tmp_path, capsys, weights):
    path = tmp_path / "weights.safetensors"
    if weights == "junk":
        path.write_bytes(b"not weights at all" * 10)
    else:
        save_file(timm.create_model(weights, num_classes=1000).state_dict(), path)
    args = ["--cache", str(toy), "--out", str(tmp_path / "run"), "--pretrained", str(path)]
    assert train_main([*args, *small_config()]) == 2
    assert f"{path}: not resnet18 weights that timm can load" in one_line_error(
        capsys, "avcache-train"
    )


def hearing_ctrl_c() -> None:
    """In the child before it starts: SIGINT handled as a terminal's program has it. A test
    run in the background of a script (`make test &`) inherits it ignored, and a program
    started with SIGINT ignored rightly stays deaf to it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt(command: list[str], ready: Path, group: bool) -> subprocess.CompletedProcess:
    """Run `command`, send SIGINT once `ready` exists (to the whole process group, DataLoader
    workers included, as a terminal's Ctrl-C does, or to the main process), return what it
    did."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=group,
                               preexec_fn=hearing_ctrl_c)  # fmt: skip
    deadline = time.monotonic() + 300
    while not ready.exists() and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    if group:
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


@pytest.mark.parametrize("group", [True, False], ids=["terminal", "main-process"])
def test_ctrl_c_during_training_is_one_line_and_leaves_whole_files(toy, tmp_path, group):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "avcache.train.run", "--cache", str(toy), "--out", str(out),
               *small_config(**{"run.epochs": 50, "data.workers": 1})]  # fmt: skip
    done = interrupt(command, out / METRICS, group)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr
    assert done.stderr.count("avcache-train: interrupted; checkpoints in") == 1
    assert not list(out.glob("*.partial"))
    assert torch.load(out / LAST, weights_only=True)["epoch"] >= 1
    assert (out / "curves.png").is_file()  # drawn each epoch, not only when a run ends


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(tmp_path):
    """An epoch long enough to be stopped inside (400 samples): no checkpoint is promised
    whole, since there is none; the message says a resume starts again."""
    cache, out = tmp_path / "cache", tmp_path / "run"
    write_toy_cache(cache, {"train": 400, "val": 8})
    command = [sys.executable, "-m", "avcache.train.run", "--cache", str(cache), "--out", str(out),
               *small_config(**{"run.epochs": 1, "data.batch_size": 2})]  # fmt: skip
    done = interrupt(command, out / "config.yaml", group=False)
    assert done.returncode == 130, done.stderr
    assert not (out / LAST).exists()
    assert done.stderr.count("interrupted before the first checkpoint") == 1, done.stderr
    assert "are whole" not in done.stderr


# ---------------------------------------------------------------- prediction


def test_predict_finds_listed_videos_in_any_split(run, tmp_path, capsys):
    listing = tmp_path / "val_list.csv"
    names = [f"val{i:03d}.mp4" for i in range(12)]
    listing.write_text("video_name,target\n" + "".join(f"{n},\n" for n in names))
    out = tmp_path / "submission.csv"
    assert predict_main(["--run", str(run), "--list", str(listing), "--out", str(out)]) == 0
    rows = out.read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == names
    assert all(float(row.split(",")[1]) != FALLBACK for row in rows)


def test_predict_refuses_a_list_the_cache_does_not_hold(run, tmp_path, capsys):
    listing = tmp_path / "other.csv"
    listing.write_text("video_name,target\n" + "".join(f"x{i}.mp4,\n" for i in range(9))
                       + "test000.mp4,\n")  # fmt: skip
    out = tmp_path / "submission.csv"
    args = ["--run", str(run), "--list", str(listing), "--out", str(out)]
    assert predict_main(args) == 2
    error = one_line_error(capsys, "avcache-predict")
    assert "9 of 10 listed videos (90.0%) have no cached features" in error
    assert not out.exists()
    assert predict_main([*args, "--max-fallback", "1"]) == 0
    assert len(out.read_text().splitlines()) == 11


# ---------------------------------------------------------------- scoring


@pytest.mark.parametrize("rows,expected", [
    (["a.mp4,0.2", "b.mp4,0.9", "a.mp4,0.8"], "sub.csv:4: a.mp4: listed again (first on line 2)"),
    (["a.mp4,0.2", "b.mp4,1.5"], "sub.csv:3: b.mp4: y_pred '1.5' is not a probability"),
    (["a.mp4,abc", "b.mp4,0.5"], "sub.csv:2: a.mp4: y_pred 'abc' is not a probability"),
    (["a.mp4,nan", "b.mp4,0.5"], "sub.csv:2: a.mp4: y_pred 'nan' is not a probability"),
])  # fmt: skip
def test_score_refuses_rows_it_cannot_trust(tmp_path, capsys, rows, expected):
    labels = tmp_path / "labels.txt"
    labels.write_text("video_name,target\na.mp4,1\nb.mp4,0\n")
    submission = tmp_path / "sub.csv"
    submission.write_text("video_name,y_pred\n" + "\n".join(rows) + "\n")
    assert score_main([str(submission), str(labels)]) == 2
    assert expected in one_line_error(capsys, "avcache-score")
    labels.write_text("video_name,target\na.mp4,2\nb.mp4,0\n")
    submission.write_text("video_name,y_pred\na.mp4,0.5\nb.mp4,0.5\n")
    assert score_main([str(submission), str(labels)]) == 2
    assert "labels.txt:2: a.mp4: target '2' is not 0 (real) or 1 (fake)" in capsys.readouterr().err


def test_a_run_started_deaf_to_ctrl_c_stays_deaf():
    """nohup, or `avcache-train ... &` in a script, starts it with SIGINT ignored; started
    with Python's handler, the first Ctrl-C only asks."""
    from avcache.train.interrupt import Interrupts

    before = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with Interrupts():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with Interrupts() as interrupts:
            signal.raise_signal(signal.SIGINT)  # asks only: acted on at the next batch
            assert interrupts.requested
            with pytest.raises(KeyboardInterrupt):
                interrupts.check()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
