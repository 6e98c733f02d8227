"""How a shard stores a column: one class per storage encoding.

An encoding writes a block of samples' values, reads a block back (into a new array or
straight into a batch's), checks every sample against its stored checksum, bounds each
size it reads from the file before anything is allocated for it, and reports the bytes it
takes. The schema's table (schema.COLUMNS) says which encoding each column has; the reader
and writer only ever ask a column's encoding, never its name. The encodings:

- Array: rows of one dtype and shape (scalars: shape ()), with a sum64 per row where the
  rows are big (mel, raw faces, track audio), checked on every read;
- JpegRegion: crops as JPEG in one flat byte region, cut by each crop's end, with an xxh3
  per sample (faces, and GreyJpegRegion for the mouth crops of the tracks);
- Ragged: a variable number of rows per sample in one flat region, cut by each sample's
  end (the fake segments);
- Strings: UTF-8 text, one string a sample (names, kinds, codecs).

The reader hands each encoding itself as `shard` (see Stored): encodings read through it,
so that every HDF5 failure becomes the same named DamagedShardError.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import h5py
import numpy as np

from avcache.cache import codec as codecs
from avcache.common.untrusted import REBUILD, CacheFormatError, printable

SUM_DTYPE = np.dtype("<u8")
STRING_DTYPE = h5py.string_dtype("utf-8")
NONE = np.empty(0, np.int64)  # no damaged positions
Where = slice | np.ndarray  # rows of a dataset: a block, or increasing positions
Dims = dict[str, int]  # the sizes a shard's attributes give (frames, face_size, ...)


def sum64(rows: np.ndarray) -> np.ndarray:
    """Per row (first axis): the sum modulo 2**64 of the row's bytes read as little-endian
    uint64 words, a row whose size is not a multiple of 8 padded with zero bytes.

    Any change inside one 8-byte word changes the sum (one flipped byte always does), and
    random damage goes unseen with probability 2**-64. Two changes that cancel, or words
    swapped with each other, do not: it guards against storage damage, not an attacker
    (the index's sha256 and `avcache-inspect CACHE verify` cover whole files). It costs one pass
    over the bytes at memory speed (~0.03 ms per MiB in cache, ~0.08 ms from RAM), so every
    batch can afford it.
    """
    rows = np.ascontiguousarray(rows)
    count = rows.shape[0]
    row_bytes = rows.nbytes // count if count else 0
    flat = rows.reshape(-1).view(np.uint8).reshape(count, row_bytes)
    whole = row_bytes - row_bytes % 8
    # numpy integer arithmetic wraps around: that is the modulo.
    sums = flat[:, :whole].view(SUM_DTYPE).sum(axis=1, dtype=np.uint64)
    if whole < row_bytes:  # the tail's 1-7 bytes, zero-padded into one more word
        tail = np.zeros((count, 8), np.uint8)
        tail[:, : row_bytes - whole] = flat[:, whole:]
        sums += tail.view(SUM_DTYPE)[:, 0]
    return sums


class Stored(Protocol):
    """What an encoding reads through: an open, checked shard (ShardReader)."""

    path: Path
    num_samples: int

    def dataset(self, name: str) -> h5py.Dataset: ...
    def fetch(self, name: str, where: Where) -> np.ndarray: ...
    def stored_sums(self, name: str) -> np.ndarray: ...
    def damaged(self, name: str, reason: str) -> CacheFormatError: ...
    def describe_damage(self, name: str, positions: np.ndarray) -> str: ...


@dataclass(frozen=True)
class Dataset:
    """One HDF5 dataset a column stores: a row per sample ([N, *shape]), or a flat region
    of rows that the column's ends cut into samples."""

    name: str
    dtype: np.dtype | str
    shape: tuple[int, ...] = ()  # of one row
    per_sample: bool = True
    chunks: tuple[int, ...] | bool = True
    filtered: bool = True  # HDF5 filters (fletcher32) no variable-length data

    def create(self, file: h5py.File, fletcher32: bool) -> None:
        """An empty dataset; no timestamps, so identical inputs give byte-identical shards."""
        file.create_dataset(self.name, shape=(0, *self.shape), maxshape=(None, *self.shape),
                            dtype=self.dtype, chunks=self.chunks,
                            fletcher32=fletcher32 and self.filtered,
                            track_times=False)  # fmt: skip


def extend(file: h5py.File, name: str, start: int, block: np.ndarray) -> None:
    """Rows [start, start + len(block)) of a dataset, grown to hold them."""
    dataset = file[name]
    dataset.resize(start + len(block), axis=0)
    if len(block):
        dataset[start : start + len(block)] = block


def _sized(shape: tuple[int | str, ...], dims: Dims) -> tuple[int, ...]:
    """A shape whose named sizes ("frames", ...) are looked up in the shard's dims."""
    return tuple(dims[size] if isinstance(size, str) else size for size in shape)


@dataclass(kw_only=True)
class Encoding:
    """What every encoding answers. The schema's table holds templates whose sizes may be
    named ("frames"); `sized` makes the encoding of one shard, with its own state."""

    name: str = ""  # the column's, set by the schema's table
    sums: str | None = None  # the dataset of its per-sample checksums, if any

    def sized(self, dims: Dims) -> Encoding:
        return replace(self)

    def datasets(self) -> list[Dataset]:
        """What it stores (ShardLayout.datasets puts them in the file's order)."""
        raise NotImplementedError

    def write(self, file: h5py.File, start: int, values: list) -> None:
        raise NotImplementedError

    def open(self, shard: Stored) -> None:
        """What is checked once, when a shard is opened (the ends that cut a region)."""

    def read(self, shard: Stored, start: int, stop: int | None,
             select: range | None = None) -> np.ndarray:  # fmt: skip
        """Samples [start, stop), checked; with `select`, only those numbers along each
        sample's first axis (windows)."""
        raise NotImplementedError

    def read_into(self, shard: Stored, start: int, out: np.ndarray) -> None:
        out[...] = self.read(shard, start, start + len(out))

    def take(self, shard: Stored, positions: np.ndarray,
             select: range | None = None) -> np.ndarray:  # fmt: skip
        """Samples at increasing positions (an Array reads them in one h5py call)."""
        return np.stack([self.read(shard, p, p + 1, select)[0] for p in positions.tolist()])

    def whole(self, shard: Stored) -> dict[str, np.ndarray]:
        """Its datasets read whole, as the shard's metadata sha256 covers them."""
        return {self.name: self.read(shard, 0, None)}

    def first_bad(self, bad: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, object]:
        """(samples with a bad value, the first one's first bad value) from a value check's
        `bad`, a flag per sample (more axes: per value of the sample)."""
        if bad.ndim > 1:  # (a shard of no samples too: its values reshape to [0, n])
            per_sample = int(np.prod(bad.shape[1:]))
            flat = bad.reshape(len(bad), per_sample)
            values = values.reshape(len(values), per_sample)
            values = values[np.arange(len(values)), flat.argmax(axis=1)]
            bad = flat.any(axis=1)
        positions = np.flatnonzero(bad)
        return positions, values[positions[0]] if positions.size else None

    def mismatches(self, shard: Stored, start: int, stop: int) -> np.ndarray:
        """Positions in [start, stop) that fail their checksums (none without any)."""
        return NONE

    def storage_bytes(self, shard: Stored) -> int:
        return int(shard.dataset(self.name).id.get_storage_size())

    def row_bytes(self, select: range | None = None) -> int:
        """Bytes one sample takes while it is read (what bounds a block of samples; a few
        bytes of text or rows count as none)."""
        return 0


def _rows(shard: Stored, start: int, stop: int | None) -> slice:
    return np.s_[start : shard.num_samples if stop is None else stop]


@dataclass(kw_only=True)
class Array(Encoding):
    """Rows of one dtype and shape (scalars: shape ()). With `sums`, each row's sum64 is
    stored beside it, computed from the very array written, and checked on every read."""

    dtype: np.dtype | str = "u1"
    shape: tuple[int | str, ...] = ()
    chunk_rows: int | None = None  # the big arrays get chunks along the sample axis

    def __post_init__(self) -> None:
        self.dtype = np.dtype(self.dtype)

    def sized(self, dims: Dims) -> Array:
        return replace(self, shape=_sized(self.shape, dims))

    def datasets(self) -> list[Dataset]:
        chunks = (self.chunk_rows, *self.shape) if self.chunk_rows and 0 not in self.shape \
            else True  # fmt: skip
        own = [Dataset(self.name, self.dtype, self.shape, chunks=chunks)]
        return own + ([Dataset(self.sums, SUM_DTYPE)] if self.sums else [])

    def write(self, file: h5py.File, start: int, values: list) -> None:
        block = np.asarray(values, dtype=self.dtype)
        if block.shape[1:] != self.shape:
            raise ValueError(f"{self.name}: expected per-sample shape {self.shape}, "
                             f"got {block.shape[1:]}")  # fmt: skip
        extend(file, self.name, start, block)
        if self.sums:
            extend(file, self.sums, start, sum64(block))

    def read(self, shard: Stored, start: int, stop: int | None,
             select: range | None = None) -> np.ndarray:  # fmt: skip
        where = _rows(shard, start, stop)
        rows = shard.fetch(self.name, where)
        self._check(shard, rows, where)
        return rows if select is None else rows[:, list(select)]

    def read_into(self, shard: Stored, start: int, out: np.ndarray) -> None:
        """One h5py call straight into `out` (no copy), checked before it returns."""
        where = np.s_[start : start + len(out)]
        try:
            shard.dataset(self.name).read_direct(out, where)
        except OSError as error:
            raise shard.damaged(self.name, str(error)) from error
        self._check(shard, out, where)

    def take(self, shard: Stored, positions: np.ndarray,
             select: range | None = None) -> np.ndarray:  # fmt: skip
        """One h5py call: a sparse pick reads only the chunks it needs."""
        rows = shard.fetch(self.name, positions)
        self._check(shard, rows, positions)
        return rows if select is None else rows[:, list(select)]

    def mismatches(self, shard: Stored, start: int, stop: int) -> np.ndarray:
        where = np.s_[start:stop]
        return self._mismatches(shard, shard.fetch(self.name, where), where)

    def _check(self, shard: Stored, rows: np.ndarray, where: Where) -> None:
        bad = self._mismatches(shard, rows, where)
        if bad.size:
            raise shard.damaged(self.name, shard.describe_damage(self.name, bad))

    def _mismatches(self, shard: Stored, rows: np.ndarray, where: Where) -> np.ndarray:
        if self.sums is None or rows.size == 0:
            return NONE
        differs = sum64(rows) != shard.stored_sums(self.sums)[where]
        if not differs.any():
            return NONE
        return np.arange(shard.num_samples)[where][np.flatnonzero(differs)]

    def row_bytes(self, select: range | None = None) -> int:
        # the whole row whatever `select` keeps: its checksum covers it
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass(kw_only=True)
class Strings(Encoding):
    """UTF-8 text, a string a sample; at most `max_chars` characters where bounded."""

    max_chars: int | None = None
    what: str = "strings"  # what the writer's refusal calls them ("fake kinds")
    shape = ()
    dtype = STRING_DTYPE

    def datasets(self) -> list[Dataset]:
        return [Dataset(self.name, STRING_DTYPE, filtered=False)]

    def write(self, file: h5py.File, start: int, values: list) -> None:
        for i, value in enumerate(values):
            if not isinstance(value, str) or len(value) > (self.max_chars or len(value)):
                bound = f" of at most {self.max_chars} characters" if self.max_chars else ""
                raise ValueError(f"this shard holds {self.what}: sample {start + i} has "
                                 f"{value!r}, expected a string{bound}")  # fmt: skip
        extend(file, self.name, start, np.asarray(values, dtype=object))

    def read(self, shard: Stored, start: int, stop: int | None,
             select: range | None = None) -> np.ndarray:  # fmt: skip
        where = _rows(shard, start, stop)
        return self._decoded(shard, shard.fetch(self.name, where), where)

    def take(self, shard: Stored, positions: np.ndarray,
             select: range | None = None) -> np.ndarray:  # fmt: skip
        return self._decoded(shard, shard.fetch(self.name, positions), positions)

    def _decoded(self, shard: Stored, raw: np.ndarray, where: Where) -> np.ndarray:
        """The bytes as str (what h5py's asstr gives); bytes that are not UTF-8 (written
        by a forger or another tool) are refused, naming the sample."""
        text = np.empty(raw.shape, object)
        for i, value in enumerate(raw.flat):
            try:
                text.flat[i] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            except UnicodeDecodeError as error:
                position = int(np.arange(shard.num_samples)[where][i])
                raise CacheFormatError(
                    f"{shard.path}: {self.name!r} of sample {position} is not UTF-8 text "
                    f"({printable(repr(value[:40]))}: {error.reason} at byte {error.start}): "
                    f"{REBUILD}"
                ) from None
        return text


@dataclass(kw_only=True)
class JpegRegion(Encoding):
    """Each sample's RGB crops as JPEG, crop after crop in one flat uint8 region (FFCV's
    data region): `ends` [N, crops] says where each crop's bytes end, `sums` holds each
    sample's xxh3. The bytes of samples [a, b) are one contiguous range, so a block is one
    h5py read; its checksums are checked, then every crop's header against the crop size,
    before a crop is decoded (straight into the caller's array)."""

    data: str = ""
    ends: str = ""
    crops: tuple[int | str, ...] = ()  # per sample: (K,) faces, (W, T) windows of frames
    side: int | str = 0
    quality: int | str | None = None  # the writer's; a reader does not need it
    chunk_bytes: int = 2**18  # a few samples' crops; at most this much unused at the end
    written: int = 0  # the region's bytes so far (a writer's)
    cut: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.int64))  # a reader's
    dtype = np.dtype(np.uint8)

    def sized(self, dims: Dims) -> JpegRegion:
        side, quality = _sized((self.side, self.quality), dims)
        return replace(self, crops=_sized(self.crops, dims), side=side, quality=quality)

    def pixels(self) -> tuple[int, ...]:
        return (self.side, self.side, 3)

    def _encode(self, crops: np.ndarray) -> list[bytes]:
        return codecs.encode_crops(crops, self.quality)

    def _decode(self, data: np.ndarray, ends: np.ndarray, before: int, out: np.ndarray,
                crops: list[int] | None) -> None:  # fmt: skip
        codecs.decode_block(data, ends, before, out, crops)

    @property
    def count(self) -> int:
        """Crops per sample."""
        return int(np.prod(self.crops, dtype=np.int64))

    @property
    def shape(self) -> tuple[int, ...]:
        """A sample's crops, decoded."""
        return (*self.crops, *self.pixels())

    def datasets(self) -> list[Dataset]:
        return [Dataset(self.ends, SUM_DTYPE, (self.count,)), Dataset(self.sums, SUM_DTYPE),
                Dataset(self.data, np.dtype(np.uint8), per_sample=False,
                        chunks=(self.chunk_bytes,))]  # fmt: skip

    def write(self, file: h5py.File, start: int, values: list) -> None:
        """Each sample's crops encoded and appended to the region; their ends and xxh3."""
        ends, sums, encoded = np.zeros((len(values), self.count), np.uint64), [], []
        position = self.written
        for i, crops in enumerate(values):
            if np.shape(crops) != self.shape or np.asarray(crops).dtype != np.uint8:
                raise ValueError(f"{self.name}: expected uint8{list(self.shape)}, got "
                                 f"{np.asarray(crops).dtype}{list(np.shape(crops))}")  # fmt: skip
            parts = self._encode(np.asarray(crops).reshape(self.count, *self.pixels()))
            ends[i] = position + np.cumsum([len(part) for part in parts], dtype=np.int64)
            position += sum(len(part) for part in parts)
            encoded.append(b"".join(parts))
            sums.append(codecs.xxh3(encoded[-1]))
        extend(file, self.data, self.written, np.frombuffer(b"".join(encoded), np.uint8))
        self.written = position
        extend(file, self.ends, start, ends)
        extend(file, self.sums, start, np.array(sums, SUM_DTYPE))

    def open(self, shard: Stored) -> None:
        """The crops' ends rise and close the region exactly, so every range read later
        lies inside it (8 bytes a crop, read once per open)."""
        ends = shard.fetch(self.ends, np.s_[:]).reshape(-1).astype(np.int64)
        size = shard.dataset(self.data).shape[0]
        if (ends.size and (ends[0] < 0 or np.any(np.diff(ends) < 0))) or (
            (ends[-1] if ends.size else 0) != size
        ):
            raise CacheFormatError(f"{shard.path}: {self.ends!r} does not cut {self.data!r} "
                                   f"({size} bytes) into its crops: {REBUILD}")  # fmt: skip
        self.cut = ends.reshape(shard.num_samples, self.count)

    def block(self, shard: Stored, start: int, stop: int) -> tuple[np.ndarray, int, np.ndarray]:
        """(bytes, offset of the first, block positions failing their xxh3) of samples
        [start, stop): one h5py read of one contiguous range."""
        stop = min(stop, shard.num_samples)
        if stop <= start or not self.count:
            return np.empty(0, np.uint8), 0, NONE
        before = int(self.cut[start - 1, -1]) if start else 0
        data = shard.fetch(self.data, np.s_[before : int(self.cut[stop - 1, -1])])
        sums = shard.stored_sums(self.sums)[start:stop]
        ranges = codecs.sample_ranges(self.cut[start:stop], before)
        return data, before, codecs.checksum_mismatches(data, ranges, sums)

    def checked_bytes(self, shard: Stored, start: int, stop: int,
                      crops: list[int] | None = None) -> tuple[np.ndarray, int]:  # fmt: skip
        """(bytes of samples [start, stop), offset of the first), checked against each
        sample's xxh3 and the headers of its `crops` (default all) against the crop size."""
        data, before, bad = self.block(shard, start, stop)
        if bad.size:
            raise shard.damaged(self.name, self.damage(shard, start + bad))
        try:
            if self.count:
                codecs.check_sizes(data, self.cut[start:stop], before, self.side, crops)
        except ValueError as error:
            raise self._undecodable(shard, error) from None
        return data, before

    def read(self, shard: Stored, start: int, stop: int | None,
             select: range | None = None) -> np.ndarray:  # fmt: skip
        """Decoded into a new array, allocated only once every crop's header says the
        region's crop size (a header is read in microseconds)."""
        stop = shard.num_samples if stop is None else min(stop, shard.num_samples)
        crops = self._numbers(select)
        shape = self.shape if select is None else (len(select), *self.shape[1:])
        if stop <= start or not self.count:
            return np.empty((max(stop - start, 0), *shape), np.uint8)
        data, before = self.checked_bytes(shard, start, stop, crops)
        rows = np.empty((stop - start, *shape), np.uint8)
        self._decoded_into(shard, data, self.cut[start:stop], before, rows, crops)
        return rows

    def read_into(self, shard: Stored, start: int, out: np.ndarray) -> None:
        """Checked against each sample's xxh3, then decoded straight into `out`."""
        data, before, bad = self.block(shard, start, start + len(out))
        if bad.size:
            raise shard.damaged(self.name, self.damage(shard, start + bad))
        if self.count:
            ends = self.cut[start : start + len(out)]
            self._decoded_into(shard, data, ends, before, out, None)

    def _decoded_into(self, shard: Stored, data: np.ndarray, ends: np.ndarray, before: int,
                      out: np.ndarray, crops: list[int] | None) -> None:  # fmt: skip
        flat = out.reshape(len(out), -1, *self.pixels())  # a view: windows of frames as crops
        try:
            self._decode(data, ends, before, flat, crops)
        except ValueError as error:
            raise self._undecodable(shard, error) from None

    def _numbers(self, select: range | None) -> list[int] | None:
        """The crop numbers of `select`, numbers along the first crop axis (None: all)."""
        if select is None:
            return None
        inner = self.count // self.crops[0]
        return [w * inner + k for w in select for k in range(inner)]

    def damage(self, shard: Stored, positions: np.ndarray) -> str:
        return shard.describe_damage(self.name, positions)

    def _undecodable(self, shard: Stored, error: ValueError) -> CacheFormatError:
        # The checksums agree: the bytes were written so (by a forger), not damaged since.
        return shard.damaged(self.name, f"a JPEG does not decode ({error})")

    def mismatches(self, shard: Stored, start: int, stop: int) -> np.ndarray:
        return start + self.block(shard, start, stop)[2]

    def storage_bytes(self, shard: Stored) -> int:
        """The region, its ends and its checksums."""
        names = (self.data, self.ends, self.sums)
        return sum(int(shard.dataset(name).id.get_storage_size()) for name in names)

    def row_bytes(self, select: range | None = None) -> int:
        kept = self.count if select is None else len(select) * self.count // self.crops[0]
        return kept * int(np.prod(self.pixels()))


@dataclass(kw_only=True)
class GreyJpegRegion(JpegRegion):
    """A JpegRegion of grey crops (one channel: a third of RGB's bytes). A damaged sample
    is named by its position (a read of a few windows names the first)."""

    def pixels(self) -> tuple[int, ...]:
        return (self.side, self.side)

    def _encode(self, crops: np.ndarray) -> list[bytes]:
        return codecs.encode_grey_crops(crops, self.quality)

    def _decode(self, data: np.ndarray, ends: np.ndarray, before: int, out: np.ndarray,
                crops: list[int] | None) -> None:  # fmt: skip
        codecs.decode_grey_block(data, ends, before, out, crops)

    def damage(self, shard: Stored, positions: np.ndarray) -> str:
        return f"sample {int(positions[0])} fails its xxh3 ({self.sums})"


@dataclass(kw_only=True)
class Ragged(Encoding):
    """A varying number of rows [k, *shape] a sample (k at most `max_rows`), sample after
    sample in one flat region cut by `ends` [N], each sample's end in it. Both are small and
    read whole when a shard is opened: the ends must rise by at most `max_rows` a sample
    and close the region exactly, so every sample's rows lie inside it."""

    ends: str = ""
    dtype: np.dtype | str = "<f8"
    shape: tuple[int, ...] = ()  # of one row
    max_rows: int = 0
    sound: Callable[[np.ndarray], np.ndarray] | None = None  # rows the writer accepts
    what: str = ""  # what a refusal calls the values ("fake segments")
    unit: str = "rows"  # and one row ("pairs")
    expected: str = ""  # the writer's words for a sound sample's rows
    chunk_rows: int = 1024  # a few samples' rows
    written: int = 0  # the region's rows so far (a writer's)
    cut: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # a reader's

    def __post_init__(self) -> None:
        self.dtype = np.dtype(self.dtype)

    def datasets(self) -> list[Dataset]:
        return [Dataset(self.ends, SUM_DTYPE),
                Dataset(self.name, self.dtype, self.shape, per_sample=False,
                        chunks=(self.chunk_rows, *self.shape))]  # fmt: skip

    def write(self, file: h5py.File, start: int, values: list) -> None:
        """Each sample's rows appended to the region, and its end there."""
        checked = [self._checked(start + i, rows) for i, rows in enumerate(values)]
        ends = self.written + np.cumsum([len(rows) for rows in checked], dtype=np.uint64)
        extend(file, self.name, self.written,
               np.concatenate([np.empty((0, *self.shape)), *checked]))  # fmt: skip
        self.written = int(ends[-1])
        extend(file, self.ends, start, ends)

    def _checked(self, position: int, rows: np.ndarray | None) -> np.ndarray:
        """[k, *shape] rows, k bounded, every row sound: what readers accept (every sample
        needs its rows; one without any has k = 0)."""
        block = np.empty((0, 0)) if rows is None else np.asarray(rows, self.dtype)
        if block.size == 0 and block.ndim < 1 + len(self.shape):
            block = block.reshape(0, *self.shape)
        shaped = block.shape[1:] == self.shape and len(block) <= self.max_rows
        if not (shaped and (self.sound is None or self.sound(block).all())):
            raise ValueError(f"this shard holds {self.what}: sample {position} has {rows!r}, "
                             f"expected at most {self.max_rows} {self.expected}")  # fmt: skip
        return block

    def open(self, shard: Stored) -> None:
        ends = shard.fetch(self.ends, np.s_[:]).astype(np.int64)
        counts = np.diff(ends, prepend=0)
        size = shard.dataset(self.name).shape[0]
        if (np.any(counts < 0) or np.any(counts > self.max_rows)
                or (ends[-1] if ends.size else 0) != size):  # fmt: skip
            raise CacheFormatError(
                f"{shard.path}: {self.ends!r} does not cut {self.name!r} ({size} {self.unit}) "
                f"into at most {self.max_rows} a sample: {REBUILD}"
            )
        self.cut = ends

    def read(self, shard: Stored, start: int, stop: int | None,
             select: range | None = None) -> np.ndarray:  # fmt: skip
        """Each sample's rows [k, *shape], in an object array: one read of their range."""
        stop = shard.num_samples if stop is None else min(stop, shard.num_samples)
        out = np.empty(max(stop - start, 0), object)
        if stop <= start:
            return out
        first = int(self.cut[start - 1]) if start else 0
        rows = shard.fetch(self.name, np.s_[first : int(self.cut[stop - 1])])
        bounds = (np.concatenate([[first], self.cut[start:stop]]) - first).tolist()
        for i, (a, b) in enumerate(itertools.pairwise(bounds)):  # one by one: never broadcast
            out[i] = rows[a:b]
        return out

    def take(self, shard: Stored, positions: np.ndarray,
             select: range | None = None) -> np.ndarray:  # fmt: skip
        out = np.empty(len(positions), object)
        for i, position in enumerate(positions.tolist()):
            out[i] = self.read(shard, position, position + 1)[0]
        return out

    def whole(self, shard: Stored) -> dict[str, np.ndarray]:
        return {self.ends: shard.fetch(self.ends, np.s_[:]),
                self.name: shard.fetch(self.name, np.s_[:])}  # fmt: skip

    def first_bad(self, bad: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, object]:
        """`bad` flags rows of the region: the sample whose rows hold the first is named."""
        rows = np.flatnonzero(bad)
        if not rows.size:
            return NONE, None
        return np.searchsorted(self.cut, rows[:1], side="right"), values[rows[0]].tolist()

    def storage_bytes(self, shard: Stored) -> int:
        return sum(int(shard.dataset(name).id.get_storage_size())
                   for name in (self.name, self.ends))  # fmt: skip
