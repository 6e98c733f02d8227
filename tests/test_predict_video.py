"""avcache-predict --video preprocesses one raw file as the run's cache was made (the same
mel, faces through JPEG and decoded where the run decodes them, the same track windows from
its name) and scores it: for every model kind, the P(fake) of its cached twin."""

from __future__ import annotations

import pytest

from avcache.preprocess.run import main as preprocess_main
from avcache.train.models import MODELS
from avcache.train.predict import main as predict_main
from avcache.train.run import main as train_main
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
def test_a_raw_video_scores_as_its_cached_twin(cache, tmp_path, capsys, kind):
    run = tmp_path / kind
    options = {"model.kind": kind, "run.epochs": 1, "data.batch_size": 2, "model.mel_size": 64}
    assert train_main(["--cache", str(cache / "cache"), "--out", str(run),
                       *small_config(**options)]) == 0  # fmt: skip
    listing = tmp_path / "list.csv"
    listing.write_text("video_name,target\ne.mp4,\n")
    assert predict_main(["--run", str(run), "--list", str(listing)]) == 0
    cached = float((run / "submission.csv").read_text().splitlines()[1].split(",")[1])
    capsys.readouterr()
    video = cache / "data" / "testset" / "e.mp4"
    assert predict_main(["--run", str(run), "--video", str(video)]) == 0
    raw = float(capsys.readouterr().out.strip().rsplit("= ", 1)[1])
    assert raw == pytest.approx(cached, abs=6e-5)  # printed to 4 places
