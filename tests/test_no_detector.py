"""A pip user without MediaPipe or MTCNN: one loud warning naming the install recipe, from
the process that starts the work, none from its workers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from avcache.cache import open_cache
from avcache.preprocess.faces import MEDIAPIPE_INSTALL, warn_without_detector
from tests.media import silent_clip, write_labels

WARNING = "no face detector installed"
CLIPS = 3

# Put first on PYTHONPATH, it runs in every interpreter of the run, the workers that loky
# starts included: the detectors' packages become unimportable (a None in sys.modules makes
# `import` fail and importlib.util.find_spec answer None), and each process notes its id.
SITECUSTOMIZE = """\
import os, sys
sys.modules["mediapipe"] = None
sys.modules["facenet_pytorch"] = None
with open(os.environ["AVCACHE_TEST_PIDS"], "a") as pids:
    pids.write(f"{os.getpid()}\\n")
"""


@pytest.mark.slow
def test_without_a_detector_one_warning_comes_from_the_parent_only(tmp_path):
    """Faces and mouth tracks (whose face-box locator resolves `auto` per video) on 3 clips
    with 2 workers: the warning once, before the work, not once per worker or video."""
    data = tmp_path / "data"
    (data / "trainset").mkdir(parents=True)
    for i in range(CLIPS):
        silent_clip(data / "trainset" / f"c{i}.mp4", seconds=1.2, size=64)
    write_labels(data / "train_label.txt", [(f"c{i}.mp4", i % 2) for i in range(CLIPS)])
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(SITECUSTOMIZE)
    pids = tmp_path / "pids"
    env = {**os.environ, "PYTHONPATH": str(blocker), "AVCACHE_TEST_PIDS": str(pids)}
    out = tmp_path / "cache"
    args = ["--data", str(data), "--out", str(out), "--quiet", "--jobs", "2", "shards.size=1",
            "faces.frames=2", "faces.size=32", "tracks.windows=1", "tracks.frames=5",
            "tracks.size=32"]  # fmt: skip
    code = f"import sys; from avcache.preprocess.run import main; sys.exit(main({args!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-3000:]
    assert len(set(pids.read_text().split())) >= 2, "the workers ran without the detectors too"
    assert said.count(WARNING) == 1, said
    warning = next(line for line in said.splitlines() if WARNING in line)
    assert all(line in warning for line in MEDIAPIPE_INSTALL)
    assert "faces and mouth tracks" in warning and "Haar" in warning
    # before the label files are read (their log line comes from the run, after the start)
    assert done.stderr.index(WARNING) < done.stderr.index("split test: no prediction.txt.csv")
    assert open_cache(out).config["faces"]["detector"] == "haar"


def test_no_warning_where_a_detector_is_installed_or_none_is_needed(caplog):
    assert not warn_without_detector(faces=False, tracks=False)
    installed = any(importlib.util.find_spec(name) for name in ("mediapipe", "facenet_pytorch"))
    assert warn_without_detector(faces=True, tracks=False) is not installed
    assert (WARNING in caplog.text) is not installed
