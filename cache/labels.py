"""Reading FFDV list files (`video_name,target` with a header), shared by both halves."""

from __future__ import annotations

import csv
import io
from pathlib import Path

HEADER = ("video_name", "target")


class LabelFileError(ValueError):
    """A label file that cannot be used; the message lists every bad row."""


def read_rows(path: Path, header: tuple[str, str] = HEADER) -> list[tuple[int, list[str]]]:
    """(line number, cells) of a CSV list after its header; tolerates a BOM and CRLF endings."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as error:
        raise LabelFileError(f"{path}: cannot read ({error.strerror})") from error
    except UnicodeDecodeError as error:
        raise LabelFileError(f"{path}: not UTF-8 text ({error.reason})") from error
    rows = list(csv.reader(io.StringIO(text, newline="")))
    numbered = [(number, row) for number, row in enumerate(rows, start=1) if any(row)]
    if not numbered or tuple(cell.strip() for cell in numbered[0][1][:2]) != header:
        raise LabelFileError(f"{path}: the first line must be the header '{','.join(header)}'")
    return numbered[1:]


def read_names(path: Path) -> list[str]:
    """The video names of a list, in its order."""
    return [cells[0].strip() for _, cells in read_rows(path)]
