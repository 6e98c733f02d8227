"""Label files of every layout, names resolved strictly inside the data root, shard plans."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from avcache.cache.schema import LABEL_UNKNOWN, MAX_FAKE_KIND_CHARS
from avcache.common.labels import LabelFileError
from avcache.preprocess.config import SplitConfig
from avcache.preprocess.layouts import Row, Segments, label_paths, layout_named, name_problem

__all__ = ["LabelFileError", "MissingVideosError", "ShardPlan", "Video", "name_problem",
           "plan_shards", "read_split", "resolve_inside"]  # fmt: skip

log = logging.getLogger(__name__)


class MissingVideosError(ValueError):
    """Too many of a split's listed files are missing to be lost files: a wrong data root."""


@dataclass(frozen=True)
class Video:
    split: str
    name: str  # exactly as in the label file (dfdc: with its part's folder)
    label: int  # 1 fake, 0 real, -1 unknown
    path: Path | None  # resolved inside the data root; None when no such file exists
    kind: str | None = None  # the data set's kind of fake, where its layout has kinds
    segments: Segments | None = None  # fake segments in seconds, where its layout has them


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
            if video.kind is not None or video.segments is not None:  # none in FFDV's plans
                digest.update(f"{video.kind}\0{video.segments}\n".encode())
        return digest.hexdigest()[:16]

    @property
    def has_kinds(self) -> bool:
        """Its layout gives kinds (every row of a label file has one, or none has)."""
        return any(video.kind is not None for video in self.videos)

    @property
    def has_segments(self) -> bool:
        return any(video.segments is not None for video in self.videos)


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


def read_split(root: Path, split: str, config: SplitConfig,
               max_missing: float = 1.0) -> list[Video]:  # fmt: skip
    """Every selected row of a split's label file(s) as a Video; raises LabelFileError
    listing all bad rows, and MissingVideosError when more than one listed file and more
    than `max_missing` of them (a share) is missing: a wrong data root, not lost files.

    Two names for one file (`a.mp4` and `./a.mp4`, or a symlink beside its target) are
    duplicates too: the same video must not land twice in a split, maybe with two labels.
    """
    layout = layout_named(config.layout, config.has_targets)
    where = root / config.labels
    paths = label_paths(root, config.labels)
    if not paths:
        raise LabelFileError(f"{where}: no label file matches")
    rows = [row for path in paths for row in layout.read(root, path, config.has_targets)]
    chosen = select_rows(rows, config.select, where, f"splits.{split}.select")
    videos, problems, missing = _checked(root, split, config, chosen)
    if problems:
        raise LabelFileError(bad_rows_message(where, layout.unit, problems))
    _check_missing(root, split, config, (missing, len(videos)), max_missing)
    _warn_missing(missing, config.videos)
    return videos


# Bad rows a refusal lists; the count says how many more there are.
ROWS_LISTED = 20


def bad_rows_message(where: Path, unit: str, problems: list[str],
                     outcome: str = ", nothing was cached") -> str:  # fmt: skip
    """One line (a refusal is printed as one, newlines escaped): the count and the first
    ROWS_LISTED bad rows, each with its place, name and reason, separated by `; `."""
    listed = "; ".join(problems[:ROWS_LISTED])
    more = len(problems) - ROWS_LISTED
    if more > 0:
        listed += f"; and {more} more"
    return f"{where}: {len(problems)} bad {unit}(s){outcome}: {listed}"


def select_rows(rows: list[Row], select: dict[str, list[str]], where: Path, key_path: str
              ) -> list[Row]:  # fmt: skip
    """The rows whose fields hold one of `select`'s values, and every row with a problem (a
    wrong label file is refused whichever split reads it). A value no entry holds, or values
    that together choose no entry, are refused: an empty split would fail only at training."""
    for key in select:
        if rows and not any(key in row.fields for row in rows):
            raise LabelFileError(f"{where}: select names {key!r}, a field no entry has")
    unmatched = [_unmatched(rows, key, values, where) for key, values in select.items()]
    if any(unmatched):
        raise LabelFileError(f"{key_path}: " + "; ".join(filter(None, unmatched)))
    chosen = []
    for row in rows:
        lacking = [key for key in select if key not in row.fields]
        if lacking and not row.problem:
            row.problem = f"has no {lacking[0]!r} to select by"
        if row.problem or all(row.fields[key] in values for key, values in select.items()):
            chosen.append(row)
    if rows and select and not chosen:
        wanted = ", ".join(f"{key}={','.join(values)}" for key, values in select.items())
        raise LabelFileError(f"{key_path}: {wanted} together match no entry of {where}")
    return chosen


def _unmatched(rows: list[Row], key: str, values: list[str], where: Path,
               shown: int = 20) -> str | None:  # fmt: skip
    """Why `values` of `key` are refused (some match no entry), or None."""
    present = list(dict.fromkeys(row.fields[key] for row in rows if key in row.fields))
    absent = [value for value in values if value not in present]
    if not rows or not absent:
        return None
    listing = ", ".join(present[:shown])
    if len(present) > shown:
        listing += f", ... ({len(present)} values in all)"
    return f"{key}={','.join(absent)} matches no entry of {where}; its {key} values are: {listing}"


def _checked(root: Path, split: str, config: SplitConfig,
             rows: list[Row]) -> tuple[list[Video], list[str], list[str]]:  # fmt: skip
    """(videos, bad rows, rows whose file is missing): each name checked, its file resolved."""
    videos, problems, seen, files, missing = [], [], {}, {}, []
    for row in rows:
        problem = name_problem(row.name)
        if problem is None and row.name in seen:
            problem = f"duplicate of {seen[row.name].seen_from(row)}"
        problem = problem or row.problem or _kind_problem(row.kind)
        resolved = None
        if problem is None:
            resolved, problem = resolve_inside(root, config.videos, row.name)
        if problem is None and resolved in files:
            problem = f"same file as {files[resolved].seen_from(row)}"
        if problem:
            problems.append(f"{row.where}: {row.name!r}: {problem}")
            continue
        seen[row.name] = row
        if resolved is None:
            missing.append(f"{row.where}: {row.name!r}")
        else:
            files[resolved] = row
        label = row.label if config.has_targets else LABEL_UNKNOWN
        videos.append(Video(split, row.name, label, resolved, row.kind, row.segments))
    return videos, problems, missing


def _kind_problem(kind: str | None) -> str | None:
    if kind is not None and len(kind) > MAX_FAKE_KIND_CHARS:
        return f"a kind of {len(kind)} characters (at most {MAX_FAKE_KIND_CHARS})"
    return None


def _check_missing(root: Path, split: str, config: SplitConfig, counts: tuple[list[str], int],
                   max_missing: float) -> None:  # fmt: skip
    """Refuse the split when its missing files are too many to be lost ones."""
    missing, listed = counts
    share = len(missing) / listed if listed else 0.0
    if len(missing) <= 1 or share <= max_missing:
        return
    shown = ", ".join(row.removeprefix(f"{root}/") for row in missing[:3])
    shown += ", ..." if len(missing) > 3 else ""
    folders = ", ".join(f"{folder}/" for folder in config.videos)
    raise MissingVideosError(
        f"split {split}: {len(missing)} of {listed} listed videos ({share:.1%}) are not found "
        f"in {folders} under {root} ({shown}): more than limits.max_missing={max_missing:g}, "
        f"nothing was cached. Check --data and splits.{split}.videos, or raise "
        "limits.max_missing (e.g. limits.max_missing=1) to cache the rest and record these "
        "as failures"
    )


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
