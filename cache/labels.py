"""Reading label lists (CSV with a header), shared by both halves: FFDV's `video_name,target`
and the headed tables of other data sets (preprocess/layouts.py)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

HEADER = ("video_name", "target")


class LabelFileError(ValueError):
    """A label file that cannot be used; the message lists every bad row."""


def read_table(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header cells stripped, (line number, cells) of every non-empty row after it) of a CSV
    file (an empty file: no header, no rows); tolerates a BOM and CRLF endings."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as error:
        raise LabelFileError(f"{path}: cannot read ({error.strerror})") from error
    except UnicodeDecodeError as error:
        raise LabelFileError(f"{path}: not UTF-8 text ({error.reason})") from error
    rows = list(csv.reader(io.StringIO(text, newline="")))
    numbered = [(number, row) for number, row in enumerate(rows, start=1) if any(row)]
    if not numbered:
        return [], []
    return [cell.strip() for cell in numbered[0][1]], numbered[1:]


def read_rows(path: Path, header: tuple[str, str] = HEADER) -> list[tuple[int, list[str]]]:
    """(line number, cells) of a CSV list after its header `header`."""
    found, rows = read_table(path)
    if tuple(found[:2]) != header:
        raise LabelFileError(f"{path}: the first line must be the header '{','.join(header)}'")
    return rows


def read_names(path: Path) -> list[str]:
    """The video names of a list, in its order."""
    return [cells[0].strip() for _, cells in read_rows(path)]
