"""The lists avcache-predict, avcache-fuse and avcache-score read: FFDV's `video_name,target`
by default, or the label file of any layout the preprocessor reads (preprocess/layouts.py,
docs/datasets.md), its entries chosen by `--select` as a split's `select` chooses them in
the preprocessing config. A name is the one the preprocessor gives the video (the cache's
video_name), so a LAV-DF user predicts and scores from metadata.json itself.

Nothing here loads a model: a wrong list is refused in a fraction of a second.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from avcache.common.labels import LabelFileError, read_names
from avcache.preprocess.dataset import bad_rows_message, select_rows
from avcache.preprocess.layouts import LAYOUTS, Row, layout_named, name_problem

DEFAULT_LAYOUT = "ffdv"
# Layouts that name a video by its path from the data root, not as listed (dfdc: the part's
# folder, then the file), so they need the root the cache was preprocessed from.
NAMED_FROM_ROOT = ("dfdc",)


@dataclass(frozen=True)
class ListSpec:
    """How to read a list: its layout, which of its entries, and the data root."""

    layout: str = DEFAULT_LAYOUT
    select: dict[str, list[str]] = field(default_factory=dict)
    data: Path | None = None

    @property
    def ffdv(self) -> bool:
        return self.layout == DEFAULT_LAYOUT


@dataclass(frozen=True)
class Entry:
    """One listed video: its name in the cache, its label (-1 where the list has none) and
    its kind of fake where the layout gives kinds."""

    name: str
    label: int
    kind: str | None


def add_list_options(parser: argparse.ArgumentParser, flag: str) -> None:
    """--layout, --select and --data, for the list that `flag` names."""
    parser.add_argument("--layout", default=DEFAULT_LAYOUT, help=f"{flag}'s layout: "
                        f"{', '.join(LAYOUTS)} (default {DEFAULT_LAYOUT}; see "
                        "docs/datasets.md)")  # fmt: skip
    parser.add_argument("--select", action="append", default=[], metavar="FIELD=VALUE[,VALUE]",
                        help=f"only {flag}'s entries whose FIELD holds one of the values, as the "
                        "preprocessing config's select (e.g. split=test for LAV-DF); repeat "
                        "for several fields, which must all match")  # fmt: skip
    parser.add_argument("--data", type=Path, metavar="ROOT", help="the data root the cache was "
                        f"preprocessed from (its --data): {flag} must lie inside it; needed by "
                        f"{', '.join(NAMED_FROM_ROOT)}, which names videos by their path from "
                        "it")  # fmt: skip


def list_spec(args: argparse.Namespace) -> ListSpec:
    """The parsed --layout, --select and --data; ValueError (one line) for a mistake."""
    try:
        layout_named(args.layout)
    except ValueError as error:
        raise ValueError(f"--layout: {error}") from None
    select: dict[str, list[str]] = {}
    for text in args.select:
        key, _, values = text.partition("=")
        if not key.strip() or not values.strip():
            raise ValueError(f"--select {text}: expected FIELD=VALUE[,VALUE...], e.g. split=test")
        select.setdefault(key.strip(), []).extend(v.strip() for v in values.split(","))
    if select and args.layout == DEFAULT_LAYOUT:
        raise ValueError(f"--select: the {DEFAULT_LAYOUT} layout has no fields to select on; "
                         "give --layout (e.g. --layout lav-df --select split=test)")  # fmt: skip
    if args.layout in NAMED_FROM_ROOT and args.data is None:
        raise ValueError(f"--layout {args.layout} names videos by their path from the data root "
                         "(dfdc_train_part_0/aaqaifqrwn.mp4): give --data, the folder the cache "
                         "was preprocessed from")  # fmt: skip
    return ListSpec(args.layout, select, args.data)


def read_entries(path: Path, spec: ListSpec, labelled: bool) -> list[Entry]:
    """The selected entries of a label file in `spec`'s layout, in its order. Every bad entry
    (a bad label, name or segment, a name listed twice) is named in one LabelFileError, as the
    preprocessor refuses it. `labelled`: the labels are needed (a layout that may list videos
    without them, ffdv or csv, is then read with them)."""
    layout = layout_named(spec.layout)
    has_targets = labelled or not layout.lists_tests
    root = None if spec.data is None else spec.data.absolute()
    file = Path(path).absolute() if root is not None else Path(path)
    if root is not None and not file.is_relative_to(root):
        raise LabelFileError(f"{path}: not inside --data {spec.data}; give the data root that "
                             "holds it")  # fmt: skip
    rows = layout.read(root, file, has_targets)  # type: ignore[arg-type]
    chosen = select_rows(rows, spec.select, Path(path), "--select")
    checked(chosen, Path(path), layout.unit)
    return [Entry(row.name, row.label, row.kind) for row in chosen]


def checked(rows: list[Row], path: Path, unit: str) -> None:
    """Refuse the rows if any has a problem (its own, a name that is no relative path, or a
    name listed twice), in the preprocessor's one-line refusal."""
    problems, seen = [], {}
    for row in rows:
        problem = name_problem(row.name) or row.problem
        if problem is None and row.name in seen:
            problem = f"listed again (first at {seen[row.name].seen_from(row)}); each video once"
        if problem:
            problems.append(f"{row.where}: {row.name!r}: {problem}")
        else:
            seen[row.name] = row
    if problems:
        raise LabelFileError(bad_rows_message(path, unit, problems, outcome=""))


def list_names(path: Path, spec: ListSpec, what: str = "list to predict") -> list[str]:
    """The names of a list to predict, in its order: an FFDV list's first column (its targets,
    empty in a test list, are not read), or the selected entries of another layout."""
    if spec.ffdv:
        return read_names(path, what)
    return [entry.name for entry in read_entries(path, spec, labelled=False)]
