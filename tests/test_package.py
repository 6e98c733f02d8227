"""The installed package: one import name that does not collide, console scripts that run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["avcache-preprocess", "avcache-sample", "avcache-train", "avcache-predict",
           "avcache-score", "avcache-inspect", "avcache-fuse"]  # fmt: skip


def test_the_notebook_api_imports_beside_folders_named_like_its_parts(tmp_path):
    """A user's own `cache/` or `train/` folder (the natural names) shadows nothing."""
    for name in ("cache", "train", "preprocess"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("raise ImportError('the user\\'s own')\n")
    code = ("from avcache.cache import open_cache; import avcache.train.run, "
            "avcache.preprocess.run; print(open_cache.__module__)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "avcache.cache.reader"


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_console_script_answers_help(script):
    done = subprocess.run([str(BIN / script), "--help"], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "usage: " + script in done.stdout


def test_no_console_script_takes_a_standard_library_name():
    assert not (BIN / "inspect").exists()


def test_installing_into_an_environment_with_its_own_torch_keeps_it(tmp_path):
    """A GPU box's image brings its own torch: pip resolves avcache against the torch and
    torchvision installed (lower bounds, not pins). With no index to fetch from, wanting any
    other version would fail."""
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index",
               "--no-build-isolation", "--quiet", "--report", str(report), str(REPO)]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    installs = json.loads(report.read_text())["install"]
    assert [item["metadata"]["name"] for item in installs] == ["avcache"]
