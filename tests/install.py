"""avcache as a pip user has it: the wheel built offline, installed into a fresh virtual
environment that already holds the user's own torch and the other dependencies."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD_FILES = ("setup.cfg", "pyproject.toml", "README.md")
# Distributions the user's own environment lacks: avcache itself and the face detectors,
# which pip never installs for them (docs/dependencies.md).
NOT_THEIRS = ("avcache", "__editable__", "mediapipe", "facenet_pytorch", "pip")


def package_folders() -> list[str]:
    """The folders setup.cfg maps into avcache (package_dir's values)."""
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    lines = setup["options"]["package_dir"].strip().splitlines()
    return [line.split("=")[1].strip() for line in lines]


def build_wheel(root: Path) -> Path:
    """The wheel pip builds offline, from a copy of what it is built from (a build writes
    build/ and *.egg-info into the folder it builds)."""
    source = root / "source"
    for name in (*BUILD_FILES, *package_folders()):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
               "--no-index", "--quiet", "-w", str(root / "out"), str(source)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (built,) = (root / "out").glob("avcache-*.whl")
    return built


def their_packages(root: Path) -> Path:
    """A folder of this environment's third-party packages (torch, timm, h5py, ...) less
    avcache and the face detectors: the user's environment, reached through a .pth file
    since a test cannot download them."""
    theirs = root / "their-packages"
    theirs.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(NOT_THEIRS) and entry.suffix != ".pth":
            (theirs / entry.name).symlink_to(entry)
    return theirs


def fresh_environment(root: Path, wheel: Path) -> Path:
    """A new virtual environment with the user's packages and avcache installed from the
    wheel as pip installs it for them (resolved offline against what is there: nothing
    else may be fetched). Its bin/ folder."""
    venv = root / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)  # fmt: skip
    Path(site.stdout.strip(), "their-packages.pth").write_text(f"{their_packages(root)}\n")
    command = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index",
               "--quiet", str(wheel)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return venv / "bin"
