"""The installed package: one import name that does not collide, console scripts that run."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from avcache.common.config import load_config, to_dict
from avcache.preprocess.config import PreprocessConfig
from avcache.preprocess.faces import MEDIAPIPE_INSTALL
from avcache.train.config import TrainConfig
from tests.install import REPO, build_wheel

BIN = Path(sys.executable).parent
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


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_ships_the_configs_and_they_are_the_defaults(wheel, tmp_path):
    """A pip user has no configs/ folder: the wheel carries it as avcache/configs/, byte for
    byte, and the shipped preprocess.yaml and train.yaml hold the built-in defaults."""
    with zipfile.ZipFile(wheel) as archive:
        shipped = {Path(name).name: archive.read(name) for name in archive.namelist()
                   if name.startswith("avcache/configs/")}  # fmt: skip
    assert shipped == {path.name: path.read_bytes() for path in (REPO / "configs").glob("*.yaml")}
    for name, cls in (("preprocess.yaml", PreprocessConfig), ("train.yaml", TrainConfig)):
        (tmp_path / name).write_bytes(shipped[name])
        assert to_dict(load_config(cls, tmp_path / name)) == to_dict(cls())


def test_an_installed_wheel_reads_a_shipped_config_by_name(wheel, tmp_path):
    """Unpacked as pip installs it and imported ahead of this checkout, from a folder with
    no configs/: `--config train_baseline` and `--config preprocess` are found."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    code = ("import avcache.common.config as c, avcache.preprocess.run as p; print(c.__file__); "
            "c.load_config(__import__('avcache.train.config').train.config.TrainConfig, "
            "'train_baseline'); p.main(['--config', 'preprocess', '--print-config', "
            "'splits.test.videos=[valset]'])")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    where, printed = done.stdout.split("\n", 1)
    assert Path(where).is_relative_to(site)
    assert yaml.safe_load(printed)["splits"]["test"]["videos"] == ["valset"]


def makefile_pip_lines() -> list[str]:
    """The Makefile's `pip install` lines as one types them: less the venv's path and -q."""
    lines = (REPO / "Makefile").read_text().splitlines()
    return [line.strip().replace("$(BIN)/", "").replace(" -q", "") for line in lines
            if line.strip().startswith("$(BIN)/pip install")]  # fmt: skip


def test_the_readmes_install_recipe_is_the_makefiles():
    """`make setup` (and so CI) runs the Makefile's lines; the README's lines and the warning
    without a detector (MEDIAPIPE_INSTALL) must install the same packages the same way."""
    made = makefile_pip_lines()
    readme = [line.strip() for line in (REPO / "README.md").read_text().splitlines()]
    ours = "pip install ."  # avcache itself
    recipe = [line for line in readme if line.startswith("pip install ") and ours not in line]
    assert set(MEDIAPIPE_INSTALL) <= set(recipe)
    mtcnn = "pip install --no-deps facenet-pytorch==2.6.0"  # in the README's text
    assert mtcnn in " ".join(readme)
    for line in [*recipe, mtcnn]:
        assert any(_specs(line) <= _specs(one) and _flags(line) == _flags(one)
                   for one in made), f"{line!r} is none of the Makefile's {made}"  # fmt: skip


def test_no_extra_asks_for_what_cannot_resolve():
    """facenet-pytorch pins torch<2.3 (avcache needs >=2.4): an extra holding it would make
    `pip install avcache[...]` fail to resolve."""
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    extras = dict(setup["options.extras_require"])
    assert "faces" not in extras and not any("facenet" in value for value in extras.values())


def _specs(line: str) -> set[str]:
    return {word.strip('"') for word in line.split()[2:] if not word.startswith("-")}


def _flags(line: str) -> set[str]:
    return {word for word in line.split()[2:] if word.startswith("-")}
