"""Reading label lists (CSV with a header), shared by both halves: FFDV's `video_name,target`
and the headed tables of other data sets (preprocess/layouts.py).

Every label file, list, submission and prediction CSV the project reads comes through
`read_file` (regular, bounded, inside the data root where there is one: common/untrusted.py
`read_bounded`) and every CSV through `read_table`, so that whatever a file holds, it is
refused in one LabelFileError naming the file (and its line) rather than a traceback.
"""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path

from avcache.common.untrusted import MAX_LIST_BYTES, parse_json, read_bounded

HEADER = ("video_name", "target")
Rows = list[tuple[int, list[str]]]  # (line number, cells) of a CSV


class LabelFileError(ValueError):
    """A label file that cannot be used; the message lists every bad row."""


def read_file(path: Path, what: str = "list", root: Path | None = None) -> bytes:
    """The bytes of a label file or list, a UTF-8 BOM left out: a regular file (a FIFO, a
    device or a folder is refused before it is opened) of at most MAX_LIST_BYTES; with
    `root` (a data set's folder) one that stays inside it once its symlinks are followed."""
    try:
        data = read_bounded(Path(path), what, MAX_LIST_BYTES, root, LabelFileError)
    except FileNotFoundError:
        raise LabelFileError(f"{path}: cannot read the {what} (no such file)") from None
    return data.removeprefix(codecs.BOM_UTF8)


def read_text(path: Path, what: str = "list", root: Path | None = None) -> str:
    """`read_file` decoded as UTF-8; bytes that are not UTF-8 are refused naming their line."""
    data = read_file(path, what, root)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise LabelFileError(f"{path}:{line}: not UTF-8 text ({error.reason})") from None


def read_json(path: Path, what: str = "label file", root: Path | None = None, hook=None) -> object:
    """A JSON label file through `read_file` and the one JSON guard (untrusted.parse_json:
    no NaN, no overflowing number, no nesting that would crash the parser)."""
    return parse_json(read_file(path, what, root), path, what, LabelFileError, hook)


def csv_rows(text: str, path: Path) -> Rows:
    """(line number where the row starts, cells) of every row of a CSV text. A row the csv
    module refuses (a field over its 131,072-character limit, which no video name comes near)
    is refused naming its line."""
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return rows
        except csv.Error as error:
            raise LabelFileError(f"{path}:{line}: cannot be read as CSV ({error})") from None
        rows.append((line, cells))


def read_table(path: Path, what: str = "list", root: Path | None = None) -> tuple[list[str], Rows]:
    """(header cells stripped, (line number, cells) of every non-empty row after it) of a CSV
    file (an empty file: no header, no rows); tolerates a BOM and CRLF endings."""
    rows = csv_rows(read_text(path, what, root), path)
    numbered = [(line, row) for line, row in rows if any(row)]
    if not numbered:
        return [], []
    return [cell.strip() for cell in numbered[0][1]], numbered[1:]


def read_rows(path: Path, header: tuple[str, str] = HEADER, what: str = "list",
              root: Path | None = None) -> Rows:  # fmt: skip
    """(line number, cells) of a CSV list after its header `header`."""
    found, rows = read_table(path, what, root)
    if tuple(found[:2]) != header:
        raise LabelFileError(f"{path}: the first line must be the header '{','.join(header)}'")
    return rows


def read_names(path: Path, what: str = "list") -> list[str]:
    """The video names of a list, in its order."""
    return [cells[0].strip() for _, cells in read_rows(path, what=what)]
