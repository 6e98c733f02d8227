"""avcache-predict --video preprocesses one raw file as the run's cache was made (the same
mel, faces through JPEG and decoded where the run decodes them, the same track windows from
its name) and scores it: for every model kind, the P(fake) of its cached twin."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from avcache.preprocess.run import main as preprocess_main
from avcache.train.models import MODELS
from avcache.train.predict import main as predict_main
from avcache.train.run import main as train_main
from avcache.train.runs import RunFolder
from avcache.train.score import main as score_main
from tests.layouts import lavdf_entry
from tests.media import talking_face
from tests.toy import small_config

CLIPS = {"trainset": ("a", "b"), "valset": ("c", "d"), "testset": ("e",)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Five real clips cached with every view: mel, 2 faces of 32 px (JPEG) and one track."""
    root = tmp_path_factory.mktemp("raw")
    data = root / "data"
    for folder, names in CLIPS.items():
        (data / folder).mkdir(parents=True)
        for i, name in enumerate(names):
            talking_face(data / folder / f"{name}.mp4", seconds=1.2 + 0.2 * i)
    (data / "train_label.txt").write_text("video_name,target\na.mp4,0\nb.mp4,1\n")
    (data / "val_label.txt").write_text("video_name,target\nc.mp4,0\nd.mp4,1\n")
    (data / "prediction.txt.csv").write_text("video_name,target\ne.mp4,\n")
    views = ["faces.frames=2", "faces.size=32", "tracks.windows=1", "tracks.frames=16",
             "tracks.size=32"]  # fmt: skip
    assert preprocess_main(["--data", str(data), "--out", str(root / "cache"), "--quiet",
                            "--jobs", "1", *views]) == 0  # fmt: skip
    return root


@pytest.mark.parametrize("kind", list(MODELS))
def test_a_raw_video_scores_as_its_cached_twin(cache, tmp_path, capsys, monkeypatch, kind):
    """Named as the cache names it (FFDV: the file's name), since the track windows are
    drawn from the video's name."""
    run = tmp_path / kind
    options = {"model.kind": kind, "run.epochs": 1, "data.batch_size": 2, "model.mel_size": 64}
    assert train_main(["--cache", str(cache / "cache"), "--out", str(run),
                       *small_config(**options)]) == 0  # fmt: skip
    listing = tmp_path / "list.csv"
    listing.write_text("video_name,target\ne.mp4,\n")
    assert predict_main(["--run", str(run), "--list", str(listing)]) == 0
    cached = float((run / "submission.csv").read_text().splitlines()[1].split(",")[1])
    capsys.readouterr()
    monkeypatch.chdir(cache / "data" / "testset")
    assert predict_main(["--run", str(run), "--video", "e.mp4"]) == 0
    raw = float(capsys.readouterr().out.strip().rsplit("= ", 1)[1])
    assert raw == pytest.approx(cached, abs=6e-5)  # printed to 4 places


@pytest.fixture(scope="module")
def av_run(cache, tmp_path_factory):
    """A run of the faces-and-mel model on the clips, and its cached P(fake) of each of them."""
    root = tmp_path_factory.mktemp("av")
    options = {"model.kind": "av", "run.epochs": 1, "data.batch_size": 2, "model.mel_size": 64}
    assert train_main(["--cache", str(cache / "cache"), "--out", str(root / "run"),
                       *small_config(**options)]) == 0  # fmt: skip
    names = [f"{name}.mp4" for names in CLIPS.values() for name in names]
    listing = root / "list.csv"
    listing.write_text("video_name,target\n" + "".join(f"{name},\n" for name in names))
    assert predict_main(["--run", str(root / "run"), "--list", str(listing)]) == 0
    return root / "run", read_scores(root / "run" / "submission.csv")


def read_scores(path: Path) -> dict[str, float]:
    rows = [line.split(",") for line in path.read_text().splitlines()]
    assert rows[0] == ["video_name", "y_pred"], rows[0]
    return {name: float(value) for name, value in rows[1:]}


def test_folders_globs_and_files_are_scored_by_one_model(cache, av_run, tmp_path, capsys,
                                                         monkeypatch):  # fmt: skip
    """Each video named by a folder (by its path from it), a file or a glob (as given) gets
    its cached twin's score, from one model; a file that is no video is named on stderr, left
    out, and the exit status says so."""
    run, cached = av_run
    data = cache / "data"
    mixed = tmp_path / "mixed"
    (mixed / "sub").mkdir(parents=True)
    shutil.copyfile(data / "testset" / "e.mp4", mixed / "e.mp4")
    broken = mixed / "sub" / "text.mp4"
    broken.write_bytes(b"this is not a video\n" * 100)
    (mixed / "notes.txt").write_text("not searched: not a video's suffix")
    built = []
    trainer = RunFolder.trainer
    monkeypatch.setattr(RunFolder, "trainer", lambda *a, **k: built.append(1) or trainer(*a, **k))
    out = tmp_path / "scores.csv"
    folder, file = str(data / "trainset"), str(data / "valset" / "c.mp4")
    pattern = f"{data}/valset/d*"
    capsys.readouterr()
    argv = ["--run", str(run), "--video", folder, file, pattern, str(mixed), "--out", str(out)]
    assert predict_main(argv) == 1
    assert len(built) == 1
    error = capsys.readouterr().err
    assert f"avcache-predict: {broken}: cannot be read (" in error
    assert "1 of 6 videos could not be read" in error, error
    scores = read_scores(out)
    assert list(scores) == ["a.mp4", "b.mp4", file, f"{data}/valset/d.mp4", "e.mp4"]
    for name, value in scores.items():
        # the CSV's six places; the raw file's features are the cache's
        assert value == pytest.approx(cached[Path(name).name], abs=2e-6), name


def test_several_videos_are_printed_one_line_each(av_run, cache, capsys):
    run, cached = av_run
    videos = [cache / "data" / "valset" / "c.mp4", cache / "data" / "valset" / "d.mp4"]
    capsys.readouterr()
    assert predict_main(["--run", str(run), "--video", *map(str, videos)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.rsplit(": P(fake) = ", 1)[0] for line in lines] == list(map(str, videos))
    for line, video in zip(lines, videos, strict=True):
        assert float(line.rsplit("= ", 1)[1]) == pytest.approx(cached[video.name], abs=6e-5)


@pytest.mark.parametrize("given,expected", [
    ("{tmp}", "{tmp}: a folder without videos (searched for .mp4, .m4v"),
    ("{tmp}/*.mp4", "{tmp}/*.mp4: the pattern matches no file"),
    ("{tmp}/clip.mp4", "{tmp}/clip.mp4: no such file or folder"),
])  # fmt: skip
def test_a_video_that_names_nothing_is_refused_before_the_model(av_run, tmp_path, capsys,
                                                                monkeypatch, given,
                                                                expected):  # fmt: skip
    (tmp_path / "notes.txt").write_text("no video here")
    built = []
    monkeypatch.setattr(RunFolder, "trainer", lambda *a, **k: built.append(1))
    argv = ["--run", str(av_run[0]), "--video", given.format(tmp=tmp_path)]
    assert predict_main(argv) == 2 and not built
    error = capsys.readouterr().err
    assert error.startswith(f"avcache-predict: error: --video {expected.format(tmp=tmp_path)}")
    assert error.count("\n") == 1, error


def test_a_video_that_cannot_be_read_is_named_and_the_status_says_so(av_run, tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"this is not a video\n" * 100)
    assert predict_main(["--run", str(av_run[0]), "--video", str(video)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"avcache-predict: {video}: cannot be "
                                                          "read (")  # fmt: skip
    assert captured.err.endswith("1 of 1 videos could not be read (named above) and have no "
                                 "score\n")  # fmt: skip


def test_a_data_roots_raw_videos_are_named_as_its_label_file_names_them(cache, av_run,
                                                                         tmp_path):  # fmt: skip
    """--video DATA on a LAV-DF data root: the CSV names each file by its path from DATA, as
    metadata.json does, so avcache-score reads it against that file, its test split alone."""
    clips, root = cache / "data", tmp_path / "lavdf"
    entries = []
    for i, (clip, split, fake) in enumerate([("trainset/a.mp4", "train", False),
                                             ("valset/c.mp4", "test", False),
                                             ("valset/d.mp4", "test", True)]):  # fmt: skip
        name = f"{split}/{i:06d}.mp4"
        (root / split).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clips / clip, root / name)
        entries.append(lavdf_entry(name, split, [[0.2, 0.6]] if fake else [], fake, False))
    (root / "metadata.json").write_text(json.dumps(entries))
    out = tmp_path / "raw.csv"
    assert predict_main(["--run", str(av_run[0]), "--video", str(root), "--out", str(out)]) == 0
    assert list(read_scores(out)) == ["test/000001.mp4", "test/000002.mp4", "train/000000.mp4"]
    assert score_main([str(out), str(root / "metadata.json"), "--layout", "lav-df",
                       "--select", "split=test"]) == 0  # fmt: skip
