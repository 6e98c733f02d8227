"""Reading files of a cache or a run folder as untrusted input.

Caches and run folders travel: a teammate's cache, a download, a damaged disk.
Nothing in them is believed before it is checked, and every refusal is one
CacheFormatError whose message names the file and says what to do:
- a path they name stays inside their folder and is a regular file (a FIFO would
  block every reader, a device would never end);
- every file a user names or a data set lists is read by one function, `read_bounded`:
  under a root (a data set's label files, a cache's index) it must lie inside that root
  once every symlink on its path is followed; anywhere, it must be a regular file, which is
  checked before it is opened (nothing hangs on a FIFO or reads /dev/zero), and it is read
  to a bounded size;
- JSON is bounded in size, strict (no NaN, no number that overflows a float), and a depth
  that would overflow the parser is refused rather than crashing;
- an HDF5 dataset is used only when it is stored in the shard itself: a hard link
  to a contiguous or chunked dataset without external storage, not a virtual
  dataset, with no filter but HDF5's own checksum; its declared rows must be
  backed by the file's bytes, so a few kilobytes cannot declare gigabytes;
- text from these files is printed with control characters escaped, so a failure
  reason or a video name cannot rewrite the terminal.
"""

from __future__ import annotations

import json
import math
import os
import reprlib
import stat
from pathlib import Path

import h5py
import numpy as np

MAX_JSON_BYTES = 64 * 2**20  # an index of a million shards is ~150 MB; FFDV's is ~150 kB
# A label file or a list: AV-Deepfake1M's training metadata.json, the largest published, is
# a few hundred MB; FFDV's lists are a few MB.
MAX_LIST_BYTES = 2**30
REBUILD = "rebuild the cache with avcache-preprocess, or get a sound copy from a trusted source"
# The only HDF5 filter a shard may carry: HDF5's per-chunk checksum (ShardWriter(fletcher32=True)).
# Any other would be unexpected, and an unknown one makes HDF5 look for a plugin to load.
ALLOWED_FILTERS = {h5py.h5z.FILTER_FLETCHER32}
ALLOWED_LAYOUTS = {h5py.h5d.CONTIGUOUS: "contiguous", h5py.h5d.CHUNKED: "chunked"}


class CacheFormatError(ValueError):
    """A file that is not a cache (or run) this version of avcache can read."""


def printable(text: object) -> str:
    """`text` with every non-printable character (escapes, newlines, bidi overrides) written
    as a Python escape: what a file says reaches the terminal as visible characters."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def inside(root: Path, relative: object, where: str) -> Path:
    """`root / relative` resolved (symlinks followed), refused unless it stays in `root`."""
    if not isinstance(relative, str) or not relative or "\0" in relative:
        raise CacheFormatError(f"{where}: path {printable(repr(relative))} is not a file name")
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise CacheFormatError(
            f"{where}: path {printable(repr(relative))} leaves the cache {root}; avcache "
            f"reads nothing outside it: {REBUILD}"
        )
    return path


def regular_file(path: Path, what: str = "file", error: type[ValueError] = CacheFormatError,
                 real: Path | None = None) -> os.stat_result:  # fmt: skip
    """stat of `path` (of `real`, its resolved form, where known), refused unless it is a
    regular file (FileNotFoundError when absent). Only stat: nothing is opened, so a FIFO or
    a device is refused without side effects."""
    try:
        info = os.stat(real or path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} is missing") from None
    except (OSError, ValueError) as failure:  # ValueError: a NUL in the name
        reason = getattr(failure, "strerror", None) or failure
        raise error(f"{path}: cannot read the {what} ({reason})") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(
            f"{path}: the {what} is not a regular file (a FIFO, device or folder would never "
            "be read to its end); avcache reads only regular files"
        )
    return info


def within(root: Path, path: Path, what: str, error: type[ValueError] = CacheFormatError) -> Path:
    """`path` with every symlink on it followed (each folder on the way and the file itself),
    refused unless it lies inside `root` (resolved too: a root reached through a link is the
    user's own choice). The check is made on names only: nothing is opened."""
    try:
        real_root, real = Path(root).resolve(), Path(path).resolve()
    except (OSError, RuntimeError, ValueError) as failure:  # a loop (3.11), too long, a NUL
        reason = getattr(failure, "strerror", None) or failure
        raise error(f"{path}: the {what} cannot be resolved ({reason})") from None
    if not real.is_relative_to(real_root):
        raise error(
            f"{path}: the {what} leads outside {root} (to {printable(real)}); avcache reads "
            f"nothing outside the folder it is given"
        )
    return real


def no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def finite_float(text: str) -> float:
    """A JSON number with a fraction or exponent; one that overflows (1e400) is refused:
    it would become infinity, which JSON cannot hold."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:24]}{'...' if len(text) > 24 else ''} overflows a "
                         "float")  # fmt: skip
    return value


def read_bounded(path: Path, what: str, limit: int = MAX_JSON_BYTES, root: Path | None = None,
                 error: type[ValueError] = CacheFormatError) -> bytes:  # fmt: skip
    """The bytes of a regular file of at most `limit` bytes; with `root`, only one that lies
    inside `root` once its symlinks are followed. FileNotFoundError when it is absent.

    Every check is made before the file is opened (a FIFO, a device or a folder is never
    opened, a link out of the root never followed); it is then opened without blocking (and,
    under a root, without following a link), and what was opened must be the very file that
    was checked, so one swapped in meanwhile is refused too. At most `limit` + 1 bytes are
    read, so a file that grows (or a /proc file, whose size says 0) stays bounded."""
    path = Path(path)
    real = within(root, path, what, error) if root is not None else path
    info = regular_file(path, what, error, real)
    if info.st_size > limit:
        raise error(f"{path}: the {what} is {info.st_size} bytes, over the {limit} allowed")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if root is not None:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(real, flags)
    except OSError as failure:
        raise error(f"{path}: cannot read the {what} ({failure.strerror})") from None
    with os.fdopen(descriptor, "rb") as handle:
        opened = os.fstat(descriptor)
        if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            raise error(f"{path}: the {what} was replaced while it was opened; try again")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path}: the {what} is over the {limit} bytes allowed")
    return data


def parse_json(data: bytes, path: Path, what: str, error: type[ValueError] = CacheFormatError,
               hook=None) -> object:  # fmt: skip
    """One JSON document; NaN, Infinity and numbers that overflow a float are refused (JSON
    has no such numbers), and so is nesting too deep to parse. `hook`: json's
    object_pairs_hook."""
    try:
        return json.loads(data.decode("utf-8"), parse_constant=no_constant,
                          parse_float=finite_float, object_pairs_hook=hook)  # fmt: skip
    except RecursionError:
        raise error(f"{path}: the {what} nests too deeply to be a {what}") from None
    except (ValueError, UnicodeDecodeError) as failure:
        raise error(f"{path}: the {what} is not valid JSON ({failure})") from None


def load_json(path: Path, what: str, limit: int = MAX_JSON_BYTES, root: Path | None = None,
              error: type[ValueError] = CacheFormatError) -> object:  # fmt: skip
    """A JSON file read by `read_bounded` (regular, bounded, inside `root` if given), parsed
    by `parse_json`."""
    return parse_json(read_bounded(path, what, limit, root, error), path, what, error)


def finite_number(value: object, largest: float = math.inf) -> float | None:
    """A JSON number (not a bool) as a float, None unless it is finite and at most `largest`
    in size: an integer of 400 digits, which no float holds, is None too."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) and abs(number) <= largest else None


# How a value read from a user's file is shown in a message: a few levels, a few items, short
# strings (a forged value may be nested hundreds deep or a megabyte long).
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 3, 80, 80, 40


def shown(value: object) -> str:
    """A short, printable repr of `value`."""
    return printable(_SHOWN.repr(value))


def integer(value: object, where: str, minimum: int = 0, maximum: int | None = None) -> int:
    """A JSON or HDF5 integer (not a bool, a float or a string), at least `minimum` and, for
    a size that readers allocate for, at most `maximum` (the most avcache ever writes)."""
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CacheFormatError(f"{where} is {printable(repr(value))}: expected an integer >= "
                               f"{minimum}")  # fmt: skip
    if maximum is not None and value > maximum:
        raise CacheFormatError(
            f"{where} is {value}: over {maximum}, the most avcache writes (a forged size, which "
            f"every reader would allocate): {REBUILD}"
        )
    return value


ATTRIBUTE_TYPES = (str, bytes, int, float)  # what the shard writer stores: single values


def attribute(attrs: h5py.AttributeManager, name: str, where: Path, default: object = None):
    """A shard attribute as a plain Python value (`default` when absent). The writer stores
    single strings and numbers only: an array, a compound, a reference or an empty value in
    their place is refused, and so is one that HDF5 cannot read."""
    try:
        value = attrs.get(name, default)
    except (OSError, TypeError, ValueError) as error:
        raise CacheFormatError(f"{where}: attribute {name!r} cannot be read ({printable(error)})"
                               f": {REBUILD}") from None  # fmt: skip
    if isinstance(value, np.generic) and not isinstance(value, np.void):
        value = value.item()
    if value is not default and not isinstance(value, ATTRIBUTE_TYPES):
        shape = f" of shape {value.shape}" if isinstance(value, np.ndarray) else ""
        raise CacheFormatError(f"{where}: attribute {name!r} is {type(value).__name__}{shape}, "
                               f"not a single string or number: {REBUILD}")  # fmt: skip
    return value


def text(value: object, where: str) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise CacheFormatError(f"{where} is {printable(repr(value))}: expected a string")
    return value


def mapping(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise CacheFormatError(f"{where} is {type(value).__name__}: expected a JSON object")
    return value


# Datasets are opened so that, even before their layout is checked, HDF5 would not find a
# virtual dataset's source files: they are looked up under a prefix that does not exist, and
# its extent is that of its first missing source. (External raw files are only opened by a
# read, which the layout check refuses first; an external-file prefix here would also clash
# with other handles on the same file in this process.)
_NOWHERE = b"/nonexistent/avcache-reads-nothing-outside-the-shard"


def _dataset_access() -> h5py.h5p.PropDAID:
    access = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    access.set_virtual_prefix(_NOWHERE)
    access.set_virtual_view(h5py.h5d.VDS_FIRST_MISSING)
    return access


def stored_dataset(file: h5py.File, name: str, where: Path) -> h5py.Dataset | None:
    """Dataset `name` of an open shard, refused unless its data lie in the shard itself;
    None when there is no such name."""
    link = file.get(name, getlink=True)  # a link is looked at, never followed
    if link is None:
        return None
    if not isinstance(link, h5py.HardLink):
        target = f" to {printable(link.filename)}" if isinstance(link, h5py.ExternalLink) else ""
        kind = type(link).__name__.removesuffix("Link").lower()
        raise CacheFormatError(
            f"{where}: {name!r} is an HDF5 {kind} link{target}, not data stored in the shard: "
            f"{REBUILD}"
        )
    if h5py.h5o.get_info(file.id, name.encode()).type != h5py.h5o.TYPE_DATASET:
        raise CacheFormatError(f"{where}: {name!r} is not a dataset: {REBUILD}")
    dataset = h5py.Dataset(h5py.h5d.open(file.id, name.encode(), _dataset_access()))
    _check_storage(dataset.id.get_create_plist(), name, where)
    return dataset


def _check_storage(plist: h5py.h5p.PropDCID, name: str, where: Path) -> None:
    layout = plist.get_layout()
    if layout not in ALLOWED_LAYOUTS:
        kind = {h5py.h5d.VIRTUAL: "a virtual dataset (its data lie in other files)",
                h5py.h5d.COMPACT: "a compact dataset"}.get(layout, f"layout {layout}")  # fmt: skip
        raise CacheFormatError(f"{where}: {name!r} is {kind}; a shard holds only contiguous "
                               f"or chunked datasets: {REBUILD}")  # fmt: skip
    if plist.get_external_count():
        files = ", ".join(printable(plist.get_external(i)[0].decode("utf-8", "replace"))
                          for i in range(plist.get_external_count()))  # fmt: skip
        raise CacheFormatError(
            f"{where}: {name!r} keeps its data in external files ({files}), not in the "
            f"shard: {REBUILD}"
        )
    for number in range(plist.get_nfilters()):
        code, _, _, label = plist.get_filter(number)
        if code not in ALLOWED_FILTERS:
            raise CacheFormatError(
                f"{where}: {name!r} is stored through HDF5 filter {code} "
                f"({printable(label.decode('utf-8', 'replace'))}), which avcache never "
                f"writes: {REBUILD}"
            )


def check_backed_by_file(datasets: dict[str, h5py.Dataset], file_size: int, where: Path) -> None:
    """Every dataset's declared rows are stored in the file: without this a sparse chunked
    dataset of a few kB could declare millions of rows and every reader would allocate them
    (unwritten chunks read as zeros). Stored bytes together cannot exceed the file."""
    total = 0
    for name, dataset in datasets.items():
        stored = int(dataset.id.get_storage_size())
        declared = int(np.prod(dataset.shape, dtype=object)) * dataset.id.get_type().get_size()
        if stored < declared:
            raise CacheFormatError(
                f"{where}: {name!r} declares {dataset.shape[0]} rows ({declared} bytes) but the "
                f"file stores {stored} bytes of it: a truncated or forged shard: {REBUILD}"
            )
        total += stored
    if total > file_size:
        raise CacheFormatError(
            f"{where}: its datasets claim {total} bytes of storage in a file of {file_size} "
            f"bytes (chunks that overlap): {REBUILD}"
        )
