"""The FFDV layout: label files, names resolved strictly inside the data root, shard plans."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from avcache.cache.labels import LabelFileError, read_rows
from avcache.cache.schema import LABEL_UNKNOWN
from avcache.preprocess.config import SplitConfig

log = logging.getLogger(__name__)

TARGETS = {"0": 0, "1": 1}


@dataclass(frozen=True)
class Video:
    split: str
    name: str  # exactly as in the label file
    label: int  # 1 fake, 0 real, -1 unknown
    path: Path | None  # resolved inside the data root; None when no such file exists


@dataclass(frozen=True)
class ShardPlan:
    split: str
    number: int
    videos: tuple[Video, ...]

    @property
    def stem(self) -> str:
        return f"{self.split}-{self.number:05d}"

    def plan_hash(self) -> str:
        """Identifies the work of this shard: its videos, labels and which exist, in order."""
        digest = hashlib.sha256()
        for video in self.videos:
            digest.update(f"{video.name}\0{video.label}\0{video.path is not None}\n".encode())
        return digest.hexdigest()[:16]


def name_problem(name: str) -> str | None:
    """Why a name from a label file may not be used as a relative path, if it may not."""
    if not name:
        return "empty name"
    if "\0" in name:
        return "NUL byte in name"
    pure = PurePosixPath(name)
    if pure.is_absolute() or name.startswith("~"):
        return "absolute path"
    if ".." in pure.parts:
        return "'..' leaves the data root"
    return None


def resolve_inside(root: Path, folders: list[str], name: str) -> tuple[Path | None, str | None]:
    """(path, problem): the first existing file for `name`, refusing anything outside root.

    Symlinks are followed before the check, so a link that points out of the
    root is refused like a '..'.
    """
    real_root = root.resolve()
    for folder in folders:
        try:
            candidate = (root / folder / name).resolve()
            if not candidate.is_relative_to(real_root):
                return None, f"resolves outside the data root ({candidate})"
            if candidate.is_file():
                return candidate, None
        except (OSError, RuntimeError) as error:  # a name too long; a symlink loop (3.11)
            return None, f"cannot be resolved ({getattr(error, 'strerror', None) or error})"
    return None, None


def read_split(root: Path, split: str, config: SplitConfig) -> list[Video]:
    """Every row of a split's list as a Video; raises LabelFileError listing all bad rows.

    Two names for one file (`a.mp4` and `./a.mp4`, or a symlink beside its target) are
    duplicates too: the same video must not land twice in a split, maybe with two labels.
    """
    path = root / config.labels
    videos, problems, seen, files, missing = [], [], {}, {}, []
    for line, cells in read_rows(path):
        name = cells[0].strip()
        problem = name_problem(name)
        label = LABEL_UNKNOWN
        if problem is None and name in seen:
            problem = f"duplicate of line {seen[name]}"
        if problem is None and config.has_targets:
            target = cells[1].strip() if len(cells) > 1 else ""
            label = TARGETS.get(target)
            problem = None if label is not None else f"target {target!r} is not 0 or 1"
        resolved = None
        if problem is None:
            resolved, problem = resolve_inside(root, config.videos, name)
        if problem is None and resolved in files:
            problem = f"same file as line {files[resolved]}"
        if problem:
            problems.append(f"  {path}:{line}: {name!r}: {problem}")
            continue
        seen[name] = line
        if resolved is None:
            missing.append(f"{path}:{line}: {name!r}")
        else:
            files[resolved] = line
        videos.append(Video(split, name, label, resolved))
    if problems:
        raise LabelFileError(
            f"{path}: {len(problems)} bad row(s), nothing was cached:\n" + "\n".join(problems)
        )
    _warn_missing(missing, config.videos)
    return videos


def _warn_missing(rows: list[str], folders: list[str]) -> None:
    """Missing files are recorded as failures by name; say here which rows they are."""
    if rows:
        shown = "\n  ".join(rows[:10]) + ("\n  ..." if len(rows) > 10 else "")
        log.warning(
            "%d listed video(s) not found in %s (recorded as failures):\n  %s",
            len(rows), ", ".join(f"{folder}/" for folder in folders), shown,
        )  # fmt: skip


def plan_shards(videos: list[Video], shard_size: int) -> list[ShardPlan]:
    """Consecutive slices of one split's list, in label-file order."""
    if shard_size < 1:
        raise ValueError(f"shards.size must be at least 1, got {shard_size}")
    return [
        ShardPlan(videos[0].split, number, tuple(videos[start : start + shard_size]))
        for number, start in enumerate(range(0, len(videos), shard_size))
    ]
