"""ShardReader: one shard, opened read-only, checked, and read in blocks.

Mirrors cache/writer.py. Everything read from disk is checked before use: an
unknown format or version is refused, the shard's layout is built from its
attributes (every size bounded) and every dataset of its columns must have the
dtype and shape the schema says, so a damaged or foreign file fails with its
name, not later inside a model. Each column is read by its encoding
(cache/encodings.py), which checks every read of the big arrays against the
per-sample checksums the writer stored: damaged rows raise DamagedShardError,
naming the shard, the samples and the fix, and are never returned.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from avcache.cache import codec as codecs
from avcache.cache import schema
from avcache.cache.encodings import STRING_DTYPE, Array, Dataset, Encoding, JpegRegion, Where
from avcache.cache.index import receipt_path
from avcache.cache.timeline import frame_fake
from avcache.common.untrusted import (
    REBUILD,
    CacheFormatError,
    attribute,
    check_backed_by_file,
    integer,
    printable,
    regular_file,
    stored_dataset,
    text,
)

if TYPE_CHECKING:
    from avcache.cache.reader import ShardEntry

DAMAGE_LISTED = 5  # damaged samples named in one message


class DamagedShardError(CacheFormatError):
    """A shard whose bytes changed after it was written: HDF5 refused a read, or rows do not
    match their stored sums. Nothing read from it reaches the caller."""


def damaged_shard(path: Path, name: str, reason: str) -> DamagedShardError:
    """The one message for a damaged shard: which file and dataset, why, and the fix."""
    return DamagedShardError(
        f"{path}: reading {name!r} failed, the shard is damaged ({reason}). Run "
        "`avcache-inspect CACHE verify` to list every damaged shard; to rebuild one, delete it and "
        f"its receipt {receipt_path(path).name} (a shard with a receipt is reused as it is) "
        "and run the same avcache-preprocess command again"
    )


def _missing(path: Path, name: str, added: set[str]) -> str:
    if name in added:  # added to v1 after its release: the checksums
        return (
            f"{path}: {name!r} is missing: the shard was written by an older avcache "
            "without checksums, so damage in it could not be detected; re-run the same "
            "avcache-preprocess command (shards it cannot read are written again)"
        )
    return f"{path}: dataset {name!r} is missing"


def check_format(where: str, fmt: object, version: object) -> None:
    if fmt != schema.FORMAT:
        raise CacheFormatError(f"{where}: format {printable(repr(fmt))} is not {schema.FORMAT!r}")
    if type(version) is not int or version not in schema.READABLE_VERSIONS:
        readable = " and ".join(map(str, schema.READABLE_VERSIONS))
        raise CacheFormatError(
            f"{where}: cache format version {printable(repr(version))} is not supported "
            f"(this avcache reads versions {readable}); re-run the preprocessor"
        )


class ShardReader:
    """One shard file, opened read-only and validated; reads contiguous blocks.

    With the index's `entry`, the shard must also hold what the index says: its sample
    count, split and (where the cache's config names them) face frames and size.
    """

    def __init__(self, path: Path | str, entry: ShardEntry | None = None, held=None) -> None:
        """`held`: a remote shard's hold (cache/remote.py Held), released at close."""
        self.path = Path(path)
        self._held = held
        self._sum_columns: dict[str, np.ndarray] = {}  # read once per shard, 8 bytes a sample
        self._file_size = regular_file(self.path, "shard").st_size
        try:
            # No chunk cache: batches read whole chunks (a cache only adds a copy), and a
            # per-sample read would otherwise pull a whole 1 MiB chunk through it.
            self._file = h5py.File(self.path, "r", rdcc_nbytes=0)
        except OSError as error:
            raise CacheFormatError(f"{self.path}: cannot open as HDF5 ({error})") from error
        try:
            self._validate()
            if entry is not None:
                self._check_entry(entry)
        except BaseException:
            self._file.close()
            raise

    def _validate(self) -> None:
        attrs, path = self._file.attrs, self.path
        self.version = attribute(attrs, schema.ATTR_VERSION, path)
        check_format(str(path), attribute(attrs, schema.ATTR_FORMAT, path), self.version)
        self.split = text(attribute(attrs, schema.ATTR_SPLIT, path, ""), f"{path}: split")
        self.layout = self._layout(attrs)
        self.columns = {column.name: column for column in self.layout.columns(self.version)}
        self._datasets = self._stored_datasets()  # a name lookup costs ~0.1 ms per call
        check_backed_by_file(self._datasets, self._file_size, self.path)
        for column in self.columns.values():
            column.encoding.open(self)
        self.meta_digest = self._check_meta(attribute(attrs, schema.ATTR_META_SHA256, path))

    def _layout(self, attrs) -> schema.ShardLayout:
        """What the attributes say the shard holds, each size bounded before any dataset's
        shape is computed from it, let alone allocated."""
        path = self.path
        frames = integer(attribute(attrs, schema.ATTR_FRAMES, path), f"{path}: frames",
                         maximum=schema.MAX_FRAMES)  # fmt: skip
        face_size = integer(attribute(attrs, schema.ATTR_FACE_SIZE, path),
                            f"{path}: face_size", maximum=schema.MAX_FACE_SIZE)  # fmt: skip
        codec, tracks = self._faces_codec(attrs), self._track_layout(attrs)
        flags = (self._flag(attrs, name) for name in
                 (schema.ATTR_FACTS, schema.ATTR_FAKE_KIND, schema.ATTR_FAKE_SEGMENTS))  # fmt: skip
        layout = schema.ShardLayout(frames, face_size, codec, None, tracks, None, *flags)
        for part in layout.parts():
            self._since(part)
        return layout

    def _since(self, part: schema.Part) -> None:
        if self.version < part.since:
            raise CacheFormatError(f"{self.path}: {part.name} in a version {self.version} "
                                   f"shard: {REBUILD}")  # fmt: skip

    def _track_layout(self, attrs) -> schema.TrackLayout | None:
        """The shard's tracks (v3), each size bounded before anything is allocated for it."""
        path = self.path
        windows = integer(attribute(attrs, schema.ATTR_TRACK_WINDOWS, path, 0),
                          f"{path}: track_windows", maximum=schema.MAX_TRACK_WINDOWS)  # fmt: skip
        if not windows:
            return None
        self._since(schema.TRACKS)
        values = {field: attribute(attrs, f"track_{field}", path) for field in schema.TRACK_BOUNDS}
        return schema.bounded_tracks(windows, values, f"{path}: track_")

    def _flag(self, attrs, name: str) -> bool:
        """An optional 0/1 attribute saying the shard holds an optional part."""
        return bool(integer(attribute(attrs, name, self.path, 0), f"{self.path}: {name}",
                            maximum=1))  # fmt: skip

    def _faces_codec(self, attrs) -> str:
        codec = text(attribute(attrs, schema.ATTR_FACES_CODEC, self.path, "raw"),
                     f"{self.path}: codec")  # fmt: skip
        if codec not in codecs.CODECS or (codec != "raw" and self.version < 2):
            known = ", ".join(codecs.CODECS)
            raise CacheFormatError(f"{self.path}: faces codec {printable(repr(codec))} is not "
                                   f"one this avcache reads ({known})")  # fmt: skip
        return codec

    def _stored_datasets(self) -> dict[str, h5py.Dataset]:
        """Every dataset of the columns, stored in this file, of its dtype and shape; those
        of a row a sample agree on the sample count."""
        stored, specs = {}, schema.file_order(self.columns.values())
        added = {column.encoding.sums for column in self.columns.values() if column.since == 1}
        for spec in (spec for spec in specs if spec.per_sample):
            stored[spec.name] = self._dataset(spec, added)
        lengths = {dataset.shape[0] for dataset in stored.values()}
        if len(lengths) != 1:
            raise CacheFormatError(f"{self.path}: datasets disagree on the sample count {lengths}")
        self.num_samples = lengths.pop()
        for spec in (spec for spec in specs if not spec.per_sample):
            stored[spec.name] = self._dataset(spec, added)
        return stored

    def _dataset(self, spec: Dataset, added: set[str]) -> h5py.Dataset:
        """One dataset of the schema, stored in this file, of the schema's dtype and shape."""
        dataset = stored_dataset(self._file, spec.name, self.path)
        if dataset is None:
            raise CacheFormatError(_missing(self.path, spec.name, added))
        expected = np.dtype(spec.dtype)
        if dataset.shape[1:] != spec.shape or not _dtype_matches(dataset.dtype, expected):
            raise CacheFormatError(
                f"{self.path}: dataset {spec.name!r} is {dataset.dtype}{list(dataset.shape)}, "
                f"expected {expected}[N, {', '.join(map(str, spec.shape))}]"
            )
        return dataset

    def _check_meta(self, expected: object) -> str:
        """The small columns (names, labels, flags, boxes, durations and the optional parts')
        against the sha256 written with them, then their values."""
        if expected is None:
            raise CacheFormatError(_missing(self.path, schema.ATTR_META_SHA256,
                                            {schema.ATTR_META_SHA256}))  # fmt: skip
        table: dict[str, np.ndarray] = {}
        for column in self.columns.values():
            table |= column.encoding.whole(self) if column.meta else {}
        digest = schema.meta_sha256(table, tuple(table))
        if digest != expected:
            names = ", ".join(schema.META_FIELDS)
            raise damaged_shard(self.path, names, "they do not match their sha256")
        self._check_values(table)
        return digest

    def _check_values(self, table: dict[str, np.ndarray]) -> None:
        """Each column's values pass its check (a label of 7 would train as a target, a
        duration of inf sizes a time axis). Notes which samples have no target (-1):
        training refuses them, inspection shows them."""
        names = table[schema.VIDEO_NAME]
        for column in self.columns.values():
            if column.check is None:
                continue
            bad, shown = column.check(table[column.name], table, self.layout)
            positions, value = column.encoding.first_bad(bad, shown)
            if positions.size:
                raise CacheFormatError(f"{self.path}: {_first_sample(positions, names)} has "
                                       f"{column.refusal.format(value)}: {REBUILD}")  # fmt: skip
        self.unknown_labels = np.flatnonzero(table[schema.LABEL] == schema.LABEL_UNKNOWN)
        self.first_unknown = _first_sample(self.unknown_labels, names)

    def _check_entry(self, entry: ShardEntry) -> None:
        """The shard holds what the index says it holds."""
        found = {"sample count": self.num_samples, "split": self.split,
                 "face frames": self.frames, "face size": self.face_size}  # fmt: skip
        said = {"sample count": entry.num_samples, "split": entry.split,
                "face frames": entry.frames, "face size": entry.face_size}  # fmt: skip
        for what, value in said.items():
            if value is not None and found[what] != value:
                raise CacheFormatError(
                    f"{self.path}: its {what} is {printable(repr(found[what]))} but the "
                    f"cache's index says {printable(repr(value))}: {REBUILD}"
                )
        if entry.tracks_promised:
            self.check_tracks(entry.tracks, "the cache's index says")

    def check_tracks(self, expected: schema.TrackLayout | None, said: str) -> None:
        """The shard's track layout is `expected` (None: no tracks): every shard of a cache is
        read with one layout (a model, a sheet), so one of another is refused, naming the
        field that differs."""
        found = self.tracks
        if found == expected:
            return
        if found is None or expected is None:
            raise CacheFormatError(f"{self.path}: holds {_tracks_named(found)} but {said} "
                                   f"{_tracks_named(expected)}: {ONE_LAYOUT}")  # fmt: skip
        field = next(name for name in TRACK_FIELDS
                     if getattr(found, name) != getattr(expected, name))  # fmt: skip
        raise CacheFormatError(
            f"{self.path}: its track {field} is {getattr(found, field)!r} but {said} "
            f"{getattr(expected, field)!r}: {ONE_LAYOUT}"
        )

    # What the layout says, as earlier readers named it.
    frames = property(lambda self: self.layout.frames)
    face_size = property(lambda self: self.layout.face_size)
    codec = property(lambda self: self.layout.codec)
    tracks = property(lambda self: self.layout.tracks)
    has_facts = property(lambda self: self.layout.facts)
    has_fake_kinds = property(lambda self: self.layout.fake_kinds)
    has_fake_segments = property(lambda self: self.layout.fake_segments)

    def __len__(self) -> int:
        return self.num_samples

    def encoding(self, name: str) -> Encoding:
        """How dataset `name` is read: its column's encoding, or rows as stored for the
        other datasets (checksums, ends)."""
        column = self.columns.get(name)
        if column is not None:
            return column.encoding
        if name in self._datasets:
            dataset = self._datasets[name]
            return Array(name=name, dtype=dataset.dtype, shape=dataset.shape[1:])
        why = schema.absent(name)
        if why is None:
            raise KeyError(name)
        raise CacheFormatError(f"{self.path}: {why}")

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Samples [start, stop) of one column, in a single h5py call, checked (JPEG crops
        decoded)."""
        return self.encoding(name).read(self, start, stop)

    def read_into(self, name: str, start: int, out: np.ndarray) -> None:
        """Fill a preallocated array with samples [start, start + len(out)): no extra copy.
        Checked before it returns, so a batch built from it never holds damaged rows."""
        if out.size:
            self.encoding(name).read_into(self, start, out)

    def take(self, name: str, positions: np.ndarray | list[int]) -> np.ndarray:
        """Samples at increasing `positions` of one column, in one h5py call where it can: a
        sparse pick (a gallery's mistakes) reads only the chunks it needs."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size == 0:
            return self.read(name, 0, 0)
        return self.encoding(name).take(self, positions)

    def mismatches(self, name: str, start: int, stop: int) -> np.ndarray:
        """Positions in [start, stop) whose rows do not match their stored sums (verify lists
        every damaged sample where a read stops at the first)."""
        return self.encoding(name).mismatches(self, start, stop)

    def describe_damage(self, name: str, positions: np.ndarray) -> str:
        """Which samples fail their checksums, by position and (when readable) video name."""
        try:
            names = self.video_names
        except CacheFormatError:
            names = None  # the names column is damaged too: positions only
        listed = ", ".join(
            f"{p} ({names[p]!r})" if names else str(p) for p in positions[:DAMAGE_LISTED]
        )
        more = len(positions) - DAMAGE_LISTED
        listed += f" and {more} more" if more > 0 else ""
        one = len(positions) == 1
        return (
            f"{'sample' if one else 'samples'} {listed} of {self.num_samples} "
            f"{'fails its' if one else 'fail their'} {name!r} checksum "
            f"({self.encoding(name).sums})"
        )

    def read_tracks(self, start: int, stop: int,
                    windows: range | None = None) -> dict[str, np.ndarray]:  # fmt: skip
        """The aligned windows of samples [start, stop): `lips` uint8 [n, W, T, S, S]
        decoded (each sample's bytes checked against its xxh3 and every crop's header
        against S first), `track_audio` int16 [n, W, L] checked, and the small columns.
        With `windows` (a range of window numbers), only those: W' of them decoded and kept
        (a sheet draws one window of 16; the rest are read only for their checksums)."""
        return self._read_part(schema.TRACKS, start, stop, self._windows(windows))

    def read_facts(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """The per-video facts of samples [start, stop) by schema name (float64, and str for
        the codecs); checked with the other small columns when the shard was opened."""
        return self._read_part(schema.FACTS, start, stop)

    def read_fake_kinds(self, start: int = 0, stop: int | None = None) -> list[str]:
        """The data set's kind of fake of samples [start, stop); checked with the other small
        columns when the shard was opened."""
        return list(self.read(schema.FAKE_KIND, start, stop))

    def read_fake_segments(self, start: int = 0, stop: int | None = None) -> list[np.ndarray]:
        """Each sample's fake segments of samples [start, stop), float64 [k, 2] seconds (k = 0:
        none); one read of their contiguous range, bounded and checked at open."""
        return list(self.read(schema.FAKE_SEGMENTS, start, stop))

    def read_frame_fake(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """float32 [n, W, T]: whether each track frame of samples [start, stop) is fake, from
        their labels, window starts and fake segments (cache/timeline.py); not stored."""
        layout = self.tracks
        if layout is None:
            raise CacheFormatError(f"{self.path}: holds no {schema.TRACKS.name} "
                                   f"({schema.TRACKS.absent}): no frame has a time")  # fmt: skip
        starts = self.read(schema.TRACK_START, start, stop)
        labels = self.read(schema.LABEL, start, stop)
        segments = self.read_fake_segments(start, stop) if self.has_fake_segments else None
        return np.stack([
            frame_fake(starts[i], layout.frames, layout.fps, int(labels[i]),
                       None if segments is None else segments[i])
            for i in range(len(labels))
        ]) if len(labels) else np.zeros((0, layout.windows, layout.frames), np.float32)  # fmt: skip

    def _read_part(self, part: schema.Part, start: int, stop: int | None,
                   select: range | None = None) -> dict[str, np.ndarray]:  # fmt: skip
        columns = [column for column in self.columns.values() if column.part is part]
        if not columns:
            raise CacheFormatError(f"{self.path}: holds no {part.name} ({part.absent})")
        stop = self.num_samples if stop is None else min(stop, self.num_samples)
        return {column.name: column.encoding.read(self, start, stop, select)
                for column in columns}  # fmt: skip

    def _windows(self, windows: range | None) -> range | None:
        """`windows` checked against the shard's tracks (None: all of them)."""
        layout = self.tracks
        if windows is None or layout is None:
            return windows
        if windows.start < 0 or windows.stop > layout.windows or windows.step < 1:
            raise ValueError(f"windows {windows}: {self.path} holds {layout.windows}")
        return windows

    def read_jpeg(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """The JPEG bytes of the face crops of samples [start, stop), undecoded (to decode on
        the training device), and each crop's end in them [n, K]: one contiguous read,
        checked against each sample's xxh3 and every crop's header against the face size."""
        region = self.encoding(schema.FACES)
        if not isinstance(region, JpegRegion):
            raise CacheFormatError(f"{self.path}: stores its faces raw, not as JPEG")
        data, before = region.checked_bytes(self, start, stop)
        return data, region.cut[start:stop].astype(np.int64) - before

    def storage_bytes(self, name: str) -> int:
        """Bytes that one column's data takes in the file (a cache's size per modality;
        JPEG faces: their data region, ends and checksums)."""
        return self.encoding(name).storage_bytes(self)

    def sample_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.encoding(name).shape)

    def dtype(self, name: str) -> np.dtype:
        return self.encoding(name).dtype

    def sample_bytes(self, windows: range | None = None) -> int:
        """Bytes one sample takes while it is read whole (sample): its big columns (those
        with checksums: mel, faces decoded, every window's audio, read for its checksum)
        and the tracks' `windows` decoded (default all)."""
        return sum(column.encoding.row_bytes(windows if column.part.windowed else None)
                   for column in self.columns.values() if column.encoding.sums)  # fmt: skip

    @property
    def checked_datasets(self) -> list[str]:
        """The columns with per-sample checksums this shard holds (verify reads each)."""
        return [name for name, column in self.columns.items() if column.encoding.sums]

    @cached_property
    def video_names(self) -> list[str]:
        return list(self.read(schema.VIDEO_NAME))

    def sample(self, position: int, windows: range | None = None) -> schema.Sample:
        """One whole sample (for inspection; training reads blocks); with `windows`, only
        those of its tracks (see read_tracks)."""
        return self.samples([position], windows)[0]

    def samples(self, positions: np.ndarray | list[int],
                windows: range | None = None) -> list[schema.Sample]:  # fmt: skip
        """Whole samples at increasing positions, one h5py call per column where it can
        (inspection); with `windows`, only those of their tracks."""
        positions, select = np.asarray(positions, dtype=np.int64), self._windows(windows)
        columns = list(self.columns.values())
        if not positions.size:
            return []
        read = {column.name: column.encoding.take(self, positions, select if
                                                  column.part.windowed else None)
                for column in columns}  # fmt: skip
        return [schema.sample_of({name: values[i] for name, values in read.items()}, columns)
                for i in range(len(positions))]  # fmt: skip

    # What encodings read through (encodings.Stored).
    def dataset(self, name: str) -> h5py.Dataset:
        return self._datasets[name]

    def fetch(self, name: str, where: Where) -> np.ndarray:
        """One h5py read; one that HDF5 refuses (a bad chunk address, a failed fletcher32
        checksum) is a damaged shard, named. Rows of no bytes (the faces of a mel-only cache)
        are made, not read: h5py cannot select from a dataset of zero width."""
        dataset = self._datasets[name]
        if 0 in dataset.shape[1:]:
            rows = np.arange(dataset.shape[0])[where]
            return np.empty((len(rows), *dataset.shape[1:]), dataset.dtype)
        try:
            return dataset[where]
        except OSError as error:
            raise damaged_shard(self.path, name, str(error)) from error

    def stored_sums(self, name: str) -> np.ndarray:
        stored = self._sum_columns.get(name)
        if stored is None:
            stored = self._sum_columns[name] = self.fetch(name, np.s_[:])
        return stored

    def damaged(self, name: str, reason: str) -> DamagedShardError:
        return damaged_shard(self.path, name, reason)

    def close(self) -> None:
        self._file.close()
        if self._held is not None:
            self._held.close()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _first_sample(positions: np.ndarray, names: np.ndarray) -> str:
    """`sample P ('NAME')`, the first of `positions` ("" when there are none)."""
    if not positions.size:
        return ""
    return f"sample {int(positions[0])} ({printable(repr(names[positions[0]]))})"


TRACK_FIELDS = ("windows", *schema.TRACK_BOUNDS)
ONE_LAYOUT = f"the shards of one cache share one track layout: {REBUILD}"


def _tracks_named(layout: schema.TrackLayout | None) -> str:
    if layout is None:
        return "no tracks (tracks.windows=0)"
    return f"tracks ({layout.windows} windows of {layout.frames} frames)"


def _dtype_matches(found: np.dtype, expected: np.dtype) -> bool:
    if expected == STRING_DTYPE:
        return h5py.check_string_dtype(found) is not None
    return found == expected
