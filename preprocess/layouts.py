"""The label files of the published audio-visual deepfake data sets, read into one kind of row.

A layout reads one label file and gives, per listed video, the name it is listed by (a path
relative to the data root), its label and, where the data set publishes them, its kind of
fake and its fake time segments. preprocess/dataset.py then selects, checks and resolves the
rows the same way whatever the layout. A problem with one row stays on that row, so that one
refusal lists them all; a problem with the whole file (unreadable, not JSON, a missing
column) raises at once. docs/datasets.md describes every layout.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from avcache.cache.schema import LABEL_FAKE, LABEL_REAL, LABEL_UNKNOWN, MAX_FAKE_SEGMENTS
from avcache.common.labels import LabelFileError, read_json, read_rows, read_table
from avcache.common.untrusted import finite_number, shown

Segments = tuple[tuple[float, float], ...]

log = logging.getLogger(__name__)


@dataclass
class Row:
    """One listed video as its label file gives it, before its name is checked."""

    file: Path  # the label file
    at: str  # where in it: "line 3" (a CSV) or "entry 2" (JSON)
    name: str  # the video's path relative to the data root, as listed
    label: int = LABEL_UNKNOWN
    kind: str | None = None  # the data set's kind of fake (None: it publishes none)
    segments: Segments | None = None  # fake segments, seconds (None: it publishes none)
    fields: dict[str, str] = field(default_factory=dict)  # what `select` matches
    problem: str | None = None  # why the row cannot be used

    @property
    def where(self) -> str:
        """`FILE:LINE` for a CSV row, `FILE: entry N` for a JSON entry."""
        if self.at.startswith("line "):
            return f"{self.file}:{self.at.removeprefix('line ')}"
        return f"{self.file}: {self.at}"

    def seen_from(self, other: Row) -> str:
        """How `other` (a later row) names this one: its line, with its file if another."""
        return self.at if other.file == self.file else self.where


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


LABEL_FILE = "label file"  # what a refusal calls it

# FFDV: `video_name,target` with a header; a test list has no targets.
FFDV_TARGETS = {"0": LABEL_REAL, "1": LABEL_FAKE}


def read_ffdv(root: Path, path: Path, has_targets: bool) -> list[Row]:
    rows = []
    for line, cells in read_rows(path, what=LABEL_FILE, root=root):
        row = Row(path, f"line {line}", cells[0].strip())
        if has_targets:
            target = cells[1].strip() if len(cells) > 1 else ""
            row.label = FFDV_TARGETS.get(target, LABEL_UNKNOWN)
            row.problem = None if target in FFDV_TARGETS else f"target {target!r} is not 0 or 1"
        rows.append(row)
    return rows


def _unnamed(column: str) -> bool:
    """A column without a name: empty, or pandas' `Unnamed: 0` of a saved index."""
    return not column or column.startswith("Unnamed:")


def _table(root: Path, path: Path, required: tuple[str, ...]) -> tuple[list[str], list]:
    """A headed CSV whose header names every `required` column."""
    header, rows = read_table(path, LABEL_FILE, root)
    missing = [name for name in required if name not in header]
    if missing:
        names = shown(",".join(header)) if header else "nothing"
        raise LabelFileError(f"{path}: the header lacks the column(s) {', '.join(missing)} "
                             f"(it names: {names})")  # fmt: skip
    return header, rows


def _fields(header: list[str], cells: list[str]) -> dict[str, str]:
    """The named columns of one row, stripped (a short row leaves its last ones out)."""
    return {name: cells[i].strip() for i, name in enumerate(header)
            if i < len(cells) and not _unnamed(name)}  # fmt: skip


# FakeAVCeleb v1.2: meta_data.csv. Its type says which of picture and sound are fake.
FAKEAVCELEB_TYPES = {
    "RealVideo-RealAudio": LABEL_REAL,
    "RealVideo-FakeAudio": LABEL_FAKE,
    "FakeVideo-RealAudio": LABEL_FAKE,
    "FakeVideo-FakeAudio": LABEL_FAKE,
}
# The published folders start with the release's own top folder (`FakeAVCeleb/RealVideo-...`);
# the data root is that folder (where meta_data.csv lies), so the name drops it.
FAKEAVCELEB_TOP = "FakeAVCeleb"
NO_METHOD = ("", "-", "real")


def read_fakeavceleb(root: Path, path: Path, has_targets: bool) -> list[Row]:
    header, table = _table(root, path, ("type", "path"))
    rows = []
    for line, cells in table:
        fields = _fields(header, cells)
        name, problem = _fakeavceleb_name(header, cells)
        row = Row(path, f"line {line}", name, fields=fields, problem=problem)
        kind = fields.get("type", "")
        if kind in FAKEAVCELEB_TYPES:
            row.label = FAKEAVCELEB_TYPES[kind]
            method = fields.get("method", "")
            row.kind = kind if method in NO_METHOD else f"{kind}/{method}"
        else:
            known = ", ".join(FAKEAVCELEB_TYPES)
            row.problem = row.problem or f"type {kind!r} is not one of {known}"
        rows.append(row)
    return without_repeats(rows, path)


def without_repeats(rows: list[Row], path: Path) -> list[Row]:
    """The rows less each exact repeat of an earlier one (the same name, label, kind and
    fields: the same video said twice), with one warning for the file. Public code that
    reads FakeAVCeleb's meta_data.csv drops repeated rows; a name listed again with
    anything else (another type, another field) is left in, and refused as a duplicate."""
    kept: list[Row] = []
    first: dict[str, Row] = {}
    repeats: list[tuple[Row, Row]] = []
    for row in rows:
        earlier = first.get(row.name)
        if earlier is not None and _same_video(earlier, row):
            repeats.append((row, earlier))
            continue
        first.setdefault(row.name, row)
        kept.append(row)
    if repeats:
        row, earlier = repeats[0]
        log.warning("%s: %d row(s) that repeat an earlier row exactly were left out (the first: "
                    "%s, a repeat of %s)", path, len(repeats), row.at, earlier.at)  # fmt: skip
    return kept


def _same_video(a: Row, b: Row) -> bool:
    """Both sound and saying the same of one name (a row with a problem is always listed)."""
    said = [(row.label, row.kind, row.segments, row.fields) for row in (a, b)]
    return a.problem is None and b.problem is None and said[0] == said[1]


def _fakeavceleb_name(header: list[str], cells: list[str]) -> tuple[str, str | None]:
    """(folder/file, problem) of one row. The published header ends `...,gender,path,`, and
    its rows hold the file name under `path` and the folder in the unnamed column after it;
    other copies name a `filename` column beside a `path` folder, or put folder and file
    together under `path`. Of two cells the file name is the one with a suffix (`.mp4`)."""
    place = header.index("path")

    def cell(i: int) -> str:
        return cells[i].strip() if i < len(cells) else ""

    after = place + 1
    unnamed_after = after < len(cells) and (after >= len(header) or _unnamed(header[after]))
    if "filename" in header:
        folder, file = cell(place), cell(header.index("filename"))
    elif unnamed_after and cell(after):
        pair = (cell(place), cell(after))
        files = [part for part in pair if PurePosixPath(part).suffix]
        if len(files) != 1:
            return "/".join(pair), f"cannot tell the file name from its folder in {pair}"
        file = files[0]
        folder = pair[1] if file == pair[0] else pair[0]
    else:
        folder, file = "", cell(place)
    problem = (name_problem(folder) if folder else None) or name_problem(file)
    parts = [part for part in (folder.rstrip("/"), file) if part]
    name = "/".join(parts)
    if name.startswith(f"{FAKEAVCELEB_TOP}/"):
        name = name.removeprefix(f"{FAKEAVCELEB_TOP}/")
    return name, problem


class Pairs(list):
    """A JSON object as its (key, value) pairs, in order, repeated keys kept (json.loads
    would keep only the last of them: a file listed twice would go unseen)."""


def _json(root: Path, path: Path, expected: type, what: str,
          hook: Callable | None = None) -> list | dict:  # fmt: skip
    """The JSON document of a label file inside `root`, refused unless it is a `what`."""
    data = read_json(path, LABEL_FILE, root, hook)
    if not isinstance(data, expected):
        raise LabelFileError(f"{path}: expected {what}, found a JSON {type(data).__name__}")
    return data


def _scalars(entry: dict) -> dict[str, str]:
    """An entry's scalar values as `select` matches them: strings as they are, the rest as
    JSON writes them (true, 3, null)."""
    return {str(key): value if isinstance(value, str) else json.dumps(value)
            for key, value in entry.items() if not isinstance(value, list | dict)}  # fmt: skip


# LAV-DF and AV-Deepfake1M: which modality was modified. LAV-DF writes two flags, AV-Deepfake1M
# a modify_type (its own loader spells one of them both ways).
MODIFIED_KINDS = {(False, False): "real", (True, False): "video", (False, True): "audio",
                  (True, True): "audio+video"}  # fmt: skip
MODIFY_TYPES = {"real": "real", "visual_modified": "video", "audio_modified": "audio",
                "both_modified": "audio+video", "both-modified": "audio+video"}  # fmt: skip


def read_lavdf(root: Path, path: Path, has_targets: bool) -> list[Row]:
    entries = _json(root, path, list, "a list of objects (LAV-DF's metadata.json)")
    return [_timed_row(path, i, entry, "fake_periods") for i, entry in enumerate(entries)]


def read_av_deepfake1m(root: Path, path: Path, has_targets: bool) -> list[Row]:
    entries = _json(root, path, list, "a list of objects (AV-Deepfake1M's <split>_metadata.json)")
    return [_timed_row(path, i, entry, "fake_segments") for i, entry in enumerate(entries)]


def _timed_row(path: Path, index: int, entry: object, segments_key: str) -> Row:
    """A row of a data set with fake segments: fake when it has any (or n_fakes > 0), its
    kind the modified modality, which must agree with the label."""
    row = Row(path, f"entry {index}", "")
    if not isinstance(entry, dict):
        row.problem = f"a JSON {type(entry).__name__}, not an object"
        return row
    name = entry.get("file")
    row.name, row.fields = (name if isinstance(name, str) else ""), _scalars(entry)
    segments, segments_problem = _segments(entry, segments_key)
    kind, kind_problem = _modified_kind(entry)
    fakes = entry.get("n_fakes", 0)
    fakes_problem = None if _count(fakes) else f"n_fakes {shown(fakes)} is not a count"
    row.problem = ("no 'file' string" if not isinstance(name, str) else None) or \
        segments_problem or kind_problem or fakes_problem  # fmt: skip
    if row.problem:
        return row
    row.label = LABEL_FAKE if segments or fakes > 0 else LABEL_REAL
    if (kind == "real") != (row.label == LABEL_REAL):
        said = "fake" if row.label == LABEL_FAKE else "real"
        row.problem = f"{segments_key} and n_fakes say {said} but the modified modality is {kind}"
    row.kind, row.segments = kind, segments
    return row


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _segments(entry: dict, key: str) -> tuple[Segments, str | None]:
    """The [start, end] seconds pairs under `key`: numbers, 0 <= start <= end, bounded."""
    if key not in entry:
        return (), f"missing key {key!r}"
    value = entry[key]
    if not isinstance(value, list) or len(value) > MAX_FAKE_SEGMENTS:
        return (), f"{key} is not a list of at most {MAX_FAKE_SEGMENTS} [start, end] pairs"
    pairs = []
    for pair in value:
        # each a finite float: an integer of 400 digits would overflow one
        start, end = (finite_number(x) for x in pair) if _pair(pair) else (None, None)
        if start is None or end is None or not 0 <= start <= end:
            return (), f"{key} holds {shown(pair)}: not [start, end] seconds, 0 <= start <= end"
        pairs.append((start, end))
    return tuple(pairs), None


def _pair(value: object) -> bool:
    return isinstance(value, list) and len(value) == 2


def _modified_kind(entry: dict) -> tuple[str, str | None]:
    """real, video, audio or audio+video, from modify_type or the two modify flags."""
    if "modify_type" in entry:
        value = entry["modify_type"]
        if isinstance(value, str) and value in MODIFY_TYPES:  # a list would not even hash
            return MODIFY_TYPES[value], None
        return "", f"modify_type {shown(value)} is not one of {', '.join(MODIFY_TYPES)}"
    flags = (entry.get("modify_video"), entry.get("modify_audio"))
    if not all(isinstance(flag, bool) for flag in flags):
        return "", "needs modify_video and modify_audio (true or false), or modify_type"
    return MODIFIED_KINDS[flags], None


# DFDC: dfdc_train_part_N/metadata.json maps each file beside it to its label.
DFDC_LABELS = {"FAKE": LABEL_FAKE, "REAL": LABEL_REAL}


def read_dfdc(root: Path, path: Path, has_targets: bool) -> list[Row]:
    """Names are the files' paths from the data root (`dfdc_train_part_0/aaqaifqrwn.mp4`), so
    that every part can go into one split."""
    entries = _json(root, path, Pairs, "an object of file name -> {label, split, original}", Pairs)
    folder = PurePosixPath(path.relative_to(root).parent.as_posix())
    rows = []
    for index, (key, value) in enumerate(entries):
        problem = name_problem(key)
        row = Row(path, f"entry {index}", key if problem else str(folder / key), problem=problem)
        entry = dict(value) if isinstance(value, Pairs) else value
        if not isinstance(entry, dict):
            row.problem = row.problem or f"a JSON {type(entry).__name__}, not an object"
            rows.append(row)
            continue
        row.fields = _scalars(entry)
        label = entry.get("label")
        if isinstance(label, str) and label.upper() in DFDC_LABELS:
            row.label = DFDC_LABELS[label.upper()]
            row.kind = label.lower()
        else:
            row.problem = row.problem or f"label {shown(label)} is not FAKE or REAL"
        rows.append(row)
    return rows


# A plain CSV: `path,label` (0/1 or fake/real), optional kind and split columns.
CSV_LABELS = {"0": LABEL_REAL, "1": LABEL_FAKE, "real": LABEL_REAL, "fake": LABEL_FAKE}


def read_csv(root: Path, path: Path, has_targets: bool) -> list[Row]:
    header, table = _table(root, path, ("path", "label") if has_targets else ("path",))
    rows = []
    for line, cells in table:
        fields = _fields(header, cells)
        row = Row(path, f"line {line}", fields.get("path", ""), fields=fields)
        row.kind = fields.get("kind", "") if "kind" in header else None
        if has_targets:
            value = fields.get("label", "")
            row.label = CSV_LABELS.get(value.lower(), LABEL_UNKNOWN)
            if value.lower() not in CSV_LABELS:
                row.problem = f"label {value!r} is not 0, 1, fake or real"
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Layout:
    """How to read one data set's label files."""

    read: Callable[[Path, Path, bool], list[Row]]  # (data root, label file, has_targets)
    unit: str = "row"  # what the file lists: rows (CSV) or entries (JSON)
    lists_tests: bool = False  # a list without labels is allowed (has_targets: false)


LAYOUTS = {
    "ffdv": Layout(read_ffdv, lists_tests=True),
    "fakeavceleb": Layout(read_fakeavceleb),
    "lav-df": Layout(read_lavdf, unit="entry"),
    "av-deepfake1m": Layout(read_av_deepfake1m, unit="entry"),
    "dfdc": Layout(read_dfdc, unit="entry"),
    "csv": Layout(read_csv, lists_tests=True),
}


def layout_named(name: str, has_targets: bool = True) -> Layout:
    """The layout of that name; raises ValueError for an unknown one, or for a list without
    targets where the layout always has labels."""
    if name not in LAYOUTS:
        raise ValueError(f"layout {name!r} unknown (known: {', '.join(LAYOUTS)})")
    layout = LAYOUTS[name]
    if not has_targets and not layout.lists_tests:
        lists = ", ".join(key for key, value in LAYOUTS.items() if value.lists_tests)
        raise ValueError(f"layout {name!r} always has labels: has_targets: false is for "
                         f"{lists}")  # fmt: skip
    return layout


GLOB = re.compile(r"[*?\[]")


def label_paths(root: Path, labels: str) -> list[Path]:
    """The label files of a split: the one named, or every file a glob pattern matches
    (dfdc_train_part_*/metadata.json), in natural order (part_2 before part_10)."""
    if not GLOB.search(labels):
        return [root / labels]
    if name_problem(labels):
        raise LabelFileError(f"{root / labels}: a pattern must stay inside the data root")
    # every match, not only regular files: one that is not (a FIFO, a folder) or that leads
    # out of the root is refused when it is read, never silently left out
    return sorted(root.glob(labels), key=_natural)


def _natural(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]
