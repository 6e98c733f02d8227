"""Reading a cache: the index, its shards, and samples by position or by name.

Mirrors cache/writer.py. Everything read from disk is checked before use: an
unknown format or version is refused, and every dataset's dtype and shape must
match the schema, so a damaged or foreign file fails with its name, not later
inside a model. Every read of `mel` or `faces` is checked against the per-sample
sums the writer stored (`schema.sum64`): damaged rows raise DamagedShardError,
naming the shard, the samples and the fix, and are never returned.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np

from avcache.cache import codec as codecs
from avcache.cache import schema
from avcache.cache.index import Failure, read_failures, receipt_path
from avcache.common.untrusted import (
    REBUILD,
    CacheFormatError,
    attribute,
    check_backed_by_file,
    inside,
    integer,
    mapping,
    parse_json,
    printable,
    read_bounded,
    regular_file,
    stored_dataset,
    text,
)

_NONE = np.empty(0, np.int64)  # no damaged positions
LABELS = (schema.LABEL_FAKE, schema.LABEL_REAL, schema.LABEL_UNKNOWN)
STRING_COLUMNS = {schema.VIDEO_NAME, schema.FAKE_KIND, *schema.FACT_STRINGS}  # UTF-8 text
DAMAGE_LISTED = 5  # damaged samples named in one message
# Bytes of the samples Cache.samples_at holds at once: 64 mel-only samples take 4 MiB, while
# one sample at the bounds (64 faces of 1024 px, 16 windows of 250 frames of 256 px) takes
# 457 MiB, so the count of a block alone does not bound its memory.
BLOCK_BYTES = 64 * 2**20


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


def _missing(path: Path, name: str) -> str:
    # The checksums are the only things added to v1 after its release.
    if name in (*schema.CHECKSUMS.values(), schema.ATTR_META_SHA256):
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

    def __init__(self, path: Path | str, entry: ShardEntry | None = None) -> None:
        self.path = Path(path)
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
        # Bounded before any dataset's shape is computed from them, let alone allocated.
        self.frames = integer(attribute(attrs, schema.ATTR_FRAMES, path), f"{path}: frames",
                              maximum=schema.MAX_FRAMES)  # fmt: skip
        self.face_size = integer(attribute(attrs, schema.ATTR_FACE_SIZE, path),
                                 f"{path}: face_size", maximum=schema.MAX_FACE_SIZE)  # fmt: skip
        self.codec = self._faces_codec(attrs)
        self.tracks = self._track_layout(attrs)
        self.has_facts = self._has_facts(attrs)
        self.has_fake_kinds = self._flag(attrs, schema.ATTR_FAKE_KIND)
        self.has_fake_segments = self._flag(attrs, schema.ATTR_FAKE_SEGMENTS)
        self._datasets: dict[str, h5py.Dataset] = {}  # a name lookup costs ~0.1 ms per call
        specs = schema.dataset_specs(self.frames, self.face_size, self.codec)
        if self.tracks:
            layout = self.tracks
            specs |= schema.track_specs(layout.windows, layout.frames, layout.audio_samples)
        specs |= schema.fact_specs(self.has_facts)
        specs |= schema.label_specs(self.has_fake_kinds, self.has_fake_segments)
        for name, spec in specs.items():
            self._datasets[name] = self._dataset(name, *spec)
        lengths = {dataset.shape[0] for dataset in self._datasets.values()}
        if len(lengths) != 1:
            raise CacheFormatError(f"{self.path}: datasets disagree on the sample count {lengths}")
        self.num_samples = lengths.pop()
        if self.codec == "jpeg":
            self._datasets[schema.FACES_JPEG] = self._dataset(schema.FACES_JPEG, np.uint8, ())
        if self.tracks:
            self._datasets[schema.LIPS_JPEG] = self._dataset(schema.LIPS_JPEG, np.uint8, ())
        if self.has_fake_segments:
            self._datasets[schema.FAKE_SEGMENTS] = self._dataset(schema.FAKE_SEGMENTS, "<f8", (2,))
        check_backed_by_file(self._datasets, self._file_size, self.path)
        if self.codec == "jpeg":
            self._jpeg_ends = self._crop_ends(schema.FACES_ENDS, schema.FACES_JPEG, self.frames)
        if self.tracks:
            crops = self.tracks.windows * self.tracks.frames
            self._lips_ends = self._crop_ends(schema.LIPS_ENDS, schema.LIPS_JPEG, crops)
        if self.has_fake_segments:
            self._segment_ends = self._fake_segment_ends()
        self.meta_digest = self._check_meta(attribute(attrs, schema.ATTR_META_SHA256, path))

    def _track_layout(self, attrs) -> schema.TrackLayout | None:
        """The shard's tracks (v3), each size bounded before anything is allocated for it."""
        path = self.path
        windows = integer(attribute(attrs, schema.ATTR_TRACK_WINDOWS, path, 0),
                          f"{path}: track_windows", maximum=schema.MAX_TRACK_WINDOWS)  # fmt: skip
        if not windows:
            return None
        if self.version < 3:
            raise CacheFormatError(f"{path}: tracks in a version {self.version} shard: {REBUILD}")
        values = {field: attribute(attrs, f"track_{field}", path) for field in TRACK_BOUNDS}
        return bounded_tracks(windows, values, f"{path}: track_")

    def _has_facts(self, attrs) -> bool:
        """Whether the shard holds the per-video facts (audit.facts)."""
        flag = integer(attribute(attrs, schema.ATTR_FACTS, self.path, 0), f"{self.path}: facts",
                       maximum=1)  # fmt: skip
        return bool(flag)

    def _flag(self, attrs, name: str) -> bool:
        """An optional 0/1 attribute saying the shard holds some optional datasets."""
        return bool(integer(attribute(attrs, name, self.path, 0), f"{self.path}: {name}",
                            maximum=1))  # fmt: skip

    def _fake_segment_ends(self) -> np.ndarray:
        """Each sample's end in FAKE_SEGMENTS [N]: they rise by at most MAX_FAKE_SEGMENTS a
        sample and close the region exactly, so every sample's pairs lie inside it."""
        ends = self._fetch(schema.FAKE_SEGMENTS_ENDS, np.s_[:]).astype(np.int64)
        counts = np.diff(ends, prepend=0)
        size = self._datasets[schema.FAKE_SEGMENTS].shape[0]
        if (
            np.any(counts < 0)
            or np.any(counts > schema.MAX_FAKE_SEGMENTS)
            or ((ends[-1] if ends.size else 0) != size)
        ):
            raise CacheFormatError(
                f"{self.path}: {schema.FAKE_SEGMENTS_ENDS!r} does not cut "
                f"{schema.FAKE_SEGMENTS!r} ({size} pairs) into at most "
                f"{schema.MAX_FAKE_SEGMENTS} a sample: {REBUILD}"
            )
        return ends

    def _faces_codec(self, attrs) -> str:
        codec = text(attribute(attrs, schema.ATTR_FACES_CODEC, self.path, "raw"),
                     f"{self.path}: codec")  # fmt: skip
        if codec not in codecs.CODECS or (codec != "raw" and self.version < 2):
            known = ", ".join(codecs.CODECS)
            raise CacheFormatError(f"{self.path}: faces codec {printable(repr(codec))} is not "
                                   f"one this avcache reads ({known})")  # fmt: skip
        return codec

    def _crop_ends(self, ends_name: str, data_name: str, crops: int) -> np.ndarray:
        """The crops' ends [N, crops]: they rise and close the data region exactly, so every
        range read later lies inside it (8 bytes a crop, read once per open)."""
        ends = self._fetch(ends_name, np.s_[:]).reshape(-1).astype(np.int64)
        size = self._datasets[data_name].shape[0]
        if (ends.size and (ends[0] < 0 or np.any(np.diff(ends) < 0))) or (
            (ends[-1] if ends.size else 0) != size
        ):
            raise CacheFormatError(
                f"{self.path}: {ends_name!r} does not cut {data_name!r} "
                f"({size} bytes) into its crops: {REBUILD}"
            )
        return ends.reshape(self.num_samples, crops)

    def _dataset(self, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> h5py.Dataset:
        """One schema dataset, stored in this file, of the schema's dtype and shape."""
        dataset = stored_dataset(self._file, name, self.path)
        if dataset is None:
            raise CacheFormatError(_missing(self.path, name))
        if dataset.shape[1:] != shape or not _dtype_matches(dataset.dtype, dtype):
            raise CacheFormatError(
                f"{self.path}: dataset {name!r} is {dataset.dtype}{list(dataset.shape)}, "
                f"expected {dtype}[N, {', '.join(map(str, shape))}]"
            )
        return dataset

    def _check_meta(self, expected: object) -> str:
        """Names, labels, flags, boxes and durations against the sha256 written with them."""
        if expected is None:
            raise CacheFormatError(_missing(self.path, schema.ATTR_META_SHA256))
        fields = schema.META_FIELDS + (schema.TRACK_META_FIELDS if self.tracks else ())
        fields += schema.FACT_FIELDS if self.has_facts else ()
        fields += schema.label_fields(self.has_fake_kinds, self.has_fake_segments)
        # FAKE_SEGMENTS has a row per pair, not per sample: read whole
        columns = {name: self._fetch(name, np.s_[:]) if name == schema.FAKE_SEGMENTS
                   else self.read(name) for name in fields}  # fmt: skip
        digest = schema.meta_sha256(columns, fields)
        if digest != expected:
            names = ", ".join(schema.META_FIELDS)
            raise damaged_shard(self.path, names, "they do not match their sha256")
        self._check_values(columns)
        return digest

    def _check_values(self, columns: dict[str, np.ndarray]) -> None:
        """Labels are 1, 0 or -1 and durations finite seconds: values every reader computes
        with (a label of 7 would train as a target, a duration of inf sizes a time axis).
        Notes which samples have no target (-1): training refuses them, inspection shows them."""
        labels, durations, names = (columns[name] for name in
                                    (schema.LABEL, schema.DURATION, schema.VIDEO_NAME))  # fmt: skip
        self._refuse_first(~np.isin(labels, LABELS), names, labels,
                           "label {}: a label is 1 (fake), 0 (real) or -1 (unknown)")  # fmt: skip
        self._refuse_first(~(np.isfinite(durations) & (durations >= 0)), names, durations,
                           "duration {}: not a length in seconds")  # fmt: skip
        if self.tracks:
            self._check_track_values(columns, names)
        for name in schema.FACT_NUMBERS if self.has_facts else ():
            self._refuse_first(np.isinf(columns[name]), names, columns[name],
                               f"{name} {{}}: not a number or NaN")  # fmt: skip
        self._check_label_values(columns, names)
        self.unknown_labels = np.flatnonzero(labels == schema.LABEL_UNKNOWN)
        self.first_unknown = _first_sample(self.unknown_labels, names)

    def _check_label_values(self, columns: dict[str, np.ndarray], names: np.ndarray) -> None:
        """Kinds are bounded strings; segments are [start, end] seconds, 0 <= start <= end."""
        if self.has_fake_kinds:
            kinds = columns[schema.FAKE_KIND]
            long = np.array([len(kind) > schema.MAX_FAKE_KIND_CHARS for kind in kinds], bool)
            self._refuse_first(long, names, np.array([len(kind) for kind in kinds]),
                               "a fake kind of {} characters")  # fmt: skip
        if self.has_fake_segments:
            pairs = columns[schema.FAKE_SEGMENTS]
            sound = (
                np.isfinite(pairs).all(axis=1) & (pairs[:, 0] >= 0) & (pairs[:, 0] <= pairs[:, 1])
            )
            bad = np.flatnonzero(~sound)
            if bad.size:
                owner = np.searchsorted(self._segment_ends, bad[:1], side="right")
                raise CacheFormatError(
                    f"{self.path}: {_first_sample(owner, names)} has fake segment "
                    f"{pairs[bad[0]].tolist()}: not [start, end] seconds: {REBUILD}"
                )

    def _check_track_values(self, columns: dict[str, np.ndarray], names: np.ndarray) -> None:
        """Window starts are seconds inside the video (the writer draws them so that a window
        fits: half a track frame of slack for the float32 duration), real frames at most T,
        real audio a share."""
        start, frames, audio = (columns[name] for name in (schema.TRACK_START,
                                schema.TRACK_FRAMES_REAL, schema.TRACK_AUDIO_REAL))  # fmt: skip
        latest = columns[schema.DURATION].astype(np.float64)[:, None] + 0.5 / self.tracks.fps
        inside = np.isfinite(start) & (start >= 0) & (start <= latest)
        checks = (
            (~inside, start, "track start {}: not seconds within the video's duration"),
            ((frames < 0) | (frames > self.tracks.frames), frames, "real track frames {}"),
            (~((audio >= 0) & (audio <= 1)), audio, "real track audio {}: not a share"),
        )
        for bad, values, what in checks:  # each sample's first bad value is named
            first = values[np.arange(len(values)), bad.argmax(axis=1)]
            self._refuse_first(bad.any(axis=1), names, first, what)

    def _refuse_first(self, bad: np.ndarray, names: np.ndarray, values: np.ndarray,
                      what: str) -> None:  # fmt: skip
        positions = np.flatnonzero(bad)
        if positions.size:
            raise CacheFormatError(f"{self.path}: {_first_sample(positions, names)} has "
                                   f"{what.format(values[positions[0]])}: {REBUILD}")  # fmt: skip

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

    def __len__(self) -> int:
        return self.num_samples

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Samples [start, stop) of one dataset, in a single h5py call, checked (JPEG faces
        decoded)."""
        where = np.s_[start : self.num_samples if stop is None else stop]
        if self._encoded(name):
            return self._read_jpeg(*where.indices(self.num_samples)[:2])
        rows = self._fetch(name, where)
        self._check(name, rows, where)
        return rows

    def read_into(self, name: str, start: int, out: np.ndarray) -> None:
        """Fill a preallocated array with samples [start, start + len(out)): no extra copy.
        Checked before it returns, so a batch built from it never holds damaged rows."""
        if not out.size:
            return
        if name == schema.LIPS:
            self._read_lips_into(start, out)
            return
        if self._encoded(name):
            self._read_jpeg_into(start, out)
            return
        where = np.s_[start : start + len(out)]
        try:
            self._datasets[name].read_direct(out, where)
        except OSError as error:
            raise damaged_shard(self.path, name, str(error)) from error
        self._check(name, out, where)

    def take(self, name: str, positions: np.ndarray | list[int]) -> np.ndarray:
        """Samples at increasing `positions` of one dataset, in one h5py call: a sparse pick
        (a gallery's mistakes) reads only the chunks it needs, not the blocks between."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size == 0:
            return self.read(name, 0, 0)
        if self._encoded(name):  # each sample's bytes are one range: read them one by one
            return np.stack([self.read(name, p, p + 1)[0] for p in positions.tolist()])
        rows = self._fetch(name, positions)
        self._check(name, rows, positions)
        return rows

    def mismatches(self, name: str, start: int, stop: int) -> np.ndarray:
        """Positions in [start, stop) whose rows do not match their stored sums (verify lists
        every damaged sample where a read stops at the first)."""
        if name == schema.LIPS:
            return start + self._region_block(schema.LIPS_JPEG, schema.LIPS_XXH3,
                                              self._lips_ends, start, stop)[2]  # fmt: skip
        if self._encoded(name):
            return start + self._jpeg_block(start, stop)[2]
        where = np.s_[start:stop]
        return self._mismatches(name, self._fetch(name, where), where)

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
            f"{'fails its' if one else 'fail their'} {name!r} checksum ({self._sums_of(name)})"
        )

    def _sums_of(self, name: str) -> str:
        if name == schema.LIPS:
            return schema.LIPS_XXH3
        if name in schema.TRACK_CHECKSUMS:
            return schema.TRACK_CHECKSUMS[name]
        return schema.FACES_XXH3 if self._encoded(name) else schema.CHECKSUMS[name]

    def _encoded(self, name: str) -> bool:
        return name == schema.FACES and self.codec == "jpeg"

    def _jpeg_block(self, start: int, stop: int) -> tuple[np.ndarray, int, np.ndarray]:
        """(bytes, offset of the first, block positions failing their xxh3) of the JPEG crops
        of samples [start, stop): one h5py read of one contiguous range."""
        if not self.frames:
            return np.empty(0, np.uint8), 0, _NONE
        return self._region_block(schema.FACES_JPEG, schema.FACES_XXH3, self._jpeg_ends,
                                  start, stop)  # fmt: skip

    def _region_block(self, data_name: str, sums_name: str, ends: np.ndarray, start: int,
                      stop: int) -> tuple[np.ndarray, int, np.ndarray]:  # fmt: skip
        """What _jpeg_block gives, for any flat data region (faces, lips)."""
        stop = min(stop, self.num_samples)
        if stop <= start:
            return np.empty(0, np.uint8), 0, _NONE
        before = int(ends[start - 1, -1]) if start else 0
        data = self._fetch(data_name, np.s_[before : int(ends[stop - 1, -1])])
        sums = self._stored_sums(sums_name)[start:stop]
        bad = codecs.checksum_mismatches(data, codecs.sample_ranges(ends[start:stop], before),
                                         sums)  # fmt: skip
        return data, before, bad

    def _read_lips_into(self, start: int, out: np.ndarray, windows: range | None = None) -> None:
        """Mouth crops of samples [start, start + len(out)) decoded into `out` [n, W', T, S, S]:
        the `windows` of each (default all W), each sample's bytes checked against its xxh3
        and every decoded crop's header against S first; the other windows stay undecoded."""
        if not self.tracks:
            raise CacheFormatError(f"{self.path}: holds no tracks (made with tracks.windows=0)")
        stop = start + len(out)
        data, before, bad = self._region_block(schema.LIPS_JPEG, schema.LIPS_XXH3,
                                               self._lips_ends, start, stop)  # fmt: skip
        if bad.size:
            raise damaged_shard(self.path, schema.LIPS, f"sample {start + int(bad[0])} fails "
                                f"its xxh3 ({schema.LIPS_XXH3})")  # fmt: skip
        flat = out.reshape(len(out), -1, *out.shape[-2:])
        frames = self.tracks.frames
        crops = None if windows is None else [w * frames + k for w in windows
                                              for k in range(frames)]  # fmt: skip
        try:
            codecs.decode_grey_block(data, self._lips_ends[start:stop], before, flat, crops)
        except ValueError as error:
            raise damaged_shard(
                self.path, schema.LIPS, f"a JPEG does not decode ({error})"
            ) from None

    def read_tracks(self, start: int, stop: int,
                    windows: range | None = None) -> dict[str, np.ndarray]:  # fmt: skip
        """The aligned windows of samples [start, stop): `lips` uint8 [n, W, T, S, S]
        decoded (each sample's bytes checked against its xxh3 and every crop's header
        against S first), `track_audio` int16 [n, W, L] checked, and the small columns.
        With `windows` (a range of window numbers), only those: W' of them decoded and kept
        (a sheet draws one window of 16; the rest are read only for their checksums)."""
        if not self.tracks:
            raise CacheFormatError(f"{self.path}: holds no tracks (made with tracks.windows=0)")
        stop = min(stop, self.num_samples)
        kept = range(self.tracks.windows) if windows is None else windows
        if kept.start < 0 or kept.stop > self.tracks.windows or kept.step < 1:
            raise ValueError(f"windows {kept}: {self.path} holds {self.tracks.windows}")
        shape = (len(kept), *self.tracks.lips_shape()[1:])
        lips = np.empty((max(stop - start, 0), *shape), np.uint8)
        self._read_lips_into(start, lips, windows)
        columns = {name: self.read(name, start, stop)
                   for name in (*schema.TRACK_META_FIELDS, schema.TRACK_AUDIO)}  # fmt: skip
        if windows is not None:  # copies: the whole rows read for the checksums are let go
            columns = {name: column[:, list(kept)] for name, column in columns.items()}
        return {schema.LIPS: lips, **columns}

    def read_facts(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """The per-video facts of samples [start, stop) by schema name (float64, and str for
        the codecs); checked with the other small columns when the shard was opened."""
        if not self.has_facts:
            raise CacheFormatError(f"{self.path}: holds no facts (made with audit.facts=false)")
        return {name: self.read(name, start, stop) for name in schema.FACT_FIELDS}

    def read_fake_kinds(self, start: int = 0, stop: int | None = None) -> list[str]:
        """The data set's kind of fake of samples [start, stop); checked with the other small
        columns when the shard was opened."""
        if not self.has_fake_kinds:
            raise CacheFormatError(f"{self.path}: holds no fake kinds (its layout has none)")
        return list(self.read(schema.FAKE_KIND, start, stop))

    def read_fake_segments(self, start: int = 0, stop: int | None = None) -> list[np.ndarray]:
        """Each sample's fake segments of samples [start, stop), float64 [k, 2] seconds (k = 0:
        none); one read of their contiguous range, bounded and checked at open."""
        if not self.has_fake_segments:
            raise CacheFormatError(f"{self.path}: holds no fake segments (its layout has none)")
        stop = self.num_samples if stop is None else min(stop, self.num_samples)
        if stop <= start:
            return []
        ends = self._segment_ends[start:stop]
        first = int(self._segment_ends[start - 1]) if start else 0
        pairs = self._fetch(schema.FAKE_SEGMENTS, np.s_[first : int(ends[-1])])
        bounds = np.concatenate([[first], ends]) - first
        return [pairs[a:b] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)]

    def read_jpeg(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """The JPEG bytes of the face crops of samples [start, stop), undecoded (to decode on
        the training device), and each crop's end in them [n, K]: one contiguous read,
        checked against each sample's xxh3 and every crop's header against the face size."""
        if not self._encoded(schema.FACES):
            raise CacheFormatError(f"{self.path}: stores its faces raw, not as JPEG")
        data, before = self._checked_jpeg_block(start, stop)
        try:
            codecs.check_sizes(data, self._jpeg_ends[start:stop], before, self.face_size)
        except ValueError as error:
            raise self._undecodable(error) from None
        return data, self._jpeg_ends[start:stop].astype(np.int64) - before

    def _read_jpeg(self, start: int, stop: int) -> np.ndarray:
        """Faces of samples [start, stop) decoded into a new array, allocated only once every
        crop's header says the shard's face size (a header is read in microseconds)."""
        count = max(stop - start, 0)
        if not self.frames or not count:
            return np.empty((count, *self.sample_shape(schema.FACES)), np.uint8)
        data, ends = self.read_jpeg(start, stop)
        rows = np.empty((count, *self.sample_shape(schema.FACES)), np.uint8)
        try:
            codecs.decode_block(data, ends, 0, rows)
        except ValueError as error:
            raise self._undecodable(error) from None
        return rows

    def _read_jpeg_into(self, start: int, out: np.ndarray) -> None:
        """Checked against each sample's xxh3, then decoded straight into `out`."""
        data, before = self._checked_jpeg_block(start, start + len(out))
        if not self.frames:
            return
        try:
            codecs.decode_block(data, self._jpeg_ends[start : start + len(out)], before, out)
        except ValueError as error:
            raise self._undecodable(error) from None

    def _checked_jpeg_block(self, start: int, stop: int) -> tuple[np.ndarray, int]:
        data, before, bad = self._jpeg_block(start, stop)
        if bad.size:
            raise damaged_shard(self.path, schema.FACES,
                                self.describe_damage(schema.FACES, start + bad))  # fmt: skip
        return data, before

    def _undecodable(self, error: ValueError) -> DamagedShardError:
        # The checksums agree: the bytes were written so (by a forger), not damaged since.
        return damaged_shard(self.path, schema.FACES, f"a JPEG does not decode ({error})")

    def _stored_sums(self, checksum: str) -> np.ndarray:
        stored = self._sum_columns.get(checksum)
        if stored is None:
            stored = self._sum_columns[checksum] = self._fetch(checksum, np.s_[:])
        return stored

    def _fetch(self, name: str, where: slice | np.ndarray) -> np.ndarray:
        """One h5py read; one that HDF5 refuses (a bad chunk address, a failed fletcher32
        checksum) is a damaged shard, named. Rows of no bytes (the faces of a mel-only cache)
        are made, not read: h5py cannot select from a dataset of zero width."""
        dataset = self._datasets[name]
        if 0 in dataset.shape[1:]:
            rows = np.arange(dataset.shape[0])[where]
            return np.empty((len(rows), *dataset.shape[1:]), dataset.dtype)
        try:
            rows = dataset[where]
        except OSError as error:
            raise damaged_shard(self.path, name, str(error)) from error
        return self._decoded(name, rows, where) if name in STRING_COLUMNS else rows

    def _decoded(self, name: str, raw: np.ndarray, where: slice | np.ndarray) -> np.ndarray:
        """A text column's bytes as str (what h5py's asstr gives); bytes that are not UTF-8
        (written by a forger or another tool) are refused, naming the sample."""
        text = np.empty(raw.shape, object)
        for i, value in enumerate(raw.flat):
            try:
                text.flat[i] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            except UnicodeDecodeError as error:
                position = int(np.arange(self.num_samples)[where][i])
                raise CacheFormatError(
                    f"{self.path}: {name!r} of sample {position} is not UTF-8 text "
                    f"({printable(repr(value[:40]))}: {error.reason} at byte {error.start}): "
                    f"{REBUILD}"
                ) from None
        return text

    def _check(self, name: str, rows: np.ndarray, where: slice | np.ndarray) -> None:
        bad = self._mismatches(name, rows, where)
        if bad.size:
            raise damaged_shard(self.path, name, self.describe_damage(name, bad))

    def _mismatches(self, name: str, rows: np.ndarray, where: slice | np.ndarray) -> np.ndarray:
        """Positions (selected by `where`) whose rows differ from their stored sums; none for
        a dataset without sums."""
        checksum = schema.CHECKSUMS.get(name) or schema.TRACK_CHECKSUMS.get(name)
        if checksum is None or rows.size == 0:
            return _NONE
        differs = schema.sum64(rows) != self._stored_sums(checksum)[where]
        if not differs.any():
            return _NONE
        return np.arange(self.num_samples)[where][np.flatnonzero(differs)]

    def storage_bytes(self, name: str) -> int:
        """Bytes that one dataset's data takes in the file (a cache's size per modality;
        JPEG faces: their data region, ends and checksums)."""
        names = (schema.FACES_JPEG, schema.FACES_ENDS, schema.FACES_XXH3) \
            if self._encoded(name) else (name,)  # fmt: skip
        return sum(int(self._datasets[n].id.get_storage_size()) for n in names)

    def sample_shape(self, name: str) -> tuple[int, ...]:
        if name == schema.LIPS and self.tracks:
            return self.tracks.lips_shape()
        if self._encoded(name):
            return (self.frames, self.face_size, self.face_size, 3)
        return self._datasets[name].shape[1:]

    def sample_bytes(self, windows: range | None = None) -> int:
        """Bytes one sample takes while it is read whole (sample): mel, faces decoded, every
        window's audio (read for its checksum) and the `windows` decoded (default all)."""
        faces = self.frames * self.face_size * self.face_size * 3
        total = schema.MEL_SIZE * schema.MEL_SIZE + faces
        if self.tracks:
            layout = self.tracks
            kept = layout.windows if windows is None else len(windows)
            total += layout.windows * 2 * layout.audio_samples
            total += kept * layout.frames * layout.size * layout.size
        return total

    def dtype(self, name: str) -> np.dtype:
        encoded = self._encoded(name) or name == schema.LIPS
        return np.dtype(np.uint8) if encoded else self._datasets[name].dtype

    @cached_property
    def video_names(self) -> list[str]:
        return list(self.read(schema.VIDEO_NAME))

    def sample(self, position: int, windows: range | None = None) -> schema.Sample:
        """One whole sample (for inspection; training reads blocks); with `windows`, only
        those of its tracks (see read_tracks)."""
        values = {name: self.read(name, position, position + 1)[0] for name in _SAMPLE_FIELDS}
        return schema.Sample(**values, tracks=self._tracks_at(position, windows),
                             facts=self._facts_at(position),
                             **self._labels_at(position))  # fmt: skip

    def samples(self, positions: np.ndarray | list[int],
                windows: range | None = None) -> list[schema.Sample]:  # fmt: skip
        """Whole samples at increasing positions, one h5py call per dataset (inspection);
        with `windows`, only those of their tracks."""
        columns = {name: self.take(name, positions) for name in _SAMPLE_FIELDS}
        return [
            schema.Sample(
                **{name: column[i] for name, column in columns.items()},
                tracks=self._tracks_at(int(positions[i]), windows),
                facts=self._facts_at(int(positions[i])),
                **self._labels_at(int(positions[i])),
            )
            for i in range(len(positions))
        ]

    def _facts_at(self, position: int) -> dict[str, float | str] | None:
        if not self.has_facts:
            return None
        return {name: column[0].item() if isinstance(column[0], np.generic) else column[0]
                for name, column in self.read_facts(position, position + 1).items()}  # fmt: skip

    def _labels_at(self, position: int) -> dict[str, object]:
        """The optional label fields of one Sample (only those this shard holds)."""
        labels = {}
        if self.has_fake_kinds:
            labels["fake_kind"] = self.read_fake_kinds(position, position + 1)[0]
        if self.has_fake_segments:
            labels["fake_segments"] = self.read_fake_segments(position, position + 1)[0]
        return labels

    def _tracks_at(self, position: int, windows: range | None = None) -> schema.Tracks | None:
        if not self.tracks:
            return None
        read = self.read_tracks(position, position + 1, windows)
        read = {name: column[0] for name, column in read.items()}
        return schema.Tracks(lips=read[schema.LIPS], lips_found=read[schema.LIPS_FOUND],
                             start=read[schema.TRACK_START],
                             frames_real=read[schema.TRACK_FRAMES_REAL],
                             audio=read[schema.TRACK_AUDIO],
                             audio_real=read[schema.TRACK_AUDIO_REAL])  # fmt: skip

    @property
    def checked_datasets(self) -> list[str]:
        """The datasets with per-sample checksums this shard holds (verify reads each)."""
        names = [schema.MEL, schema.FACES]
        return [*names, schema.TRACK_AUDIO, schema.LIPS] if self.tracks else names

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_SAMPLE_FIELDS = schema.Sample.stored_fields()


def _first_sample(positions: np.ndarray, names: np.ndarray) -> str:
    """`sample P ('NAME')`, the first of `positions` ("" when there are none)."""
    if not positions.size:
        return ""
    return f"sample {int(positions[0])} ({printable(repr(names[positions[0]]))})"


# TrackLayout field -> (least, most): what the preprocessor writes (schema's bounds).
TRACK_BOUNDS = {
    "frames": (1, schema.MAX_TRACK_FRAMES),
    "size": (schema.MIN_TRACK_SIZE, schema.MAX_TRACK_SIZE),
    "fps": schema.TRACK_FPS,
    "audio_rate": schema.TRACK_AUDIO_RATES,
    "audio_samples": (1, schema.MAX_TRACK_AUDIO),
}


def bounded_tracks(windows: int, values: dict[str, object], at: str) -> schema.TrackLayout:
    """A track layout from untrusted `values` (by TrackLayout field; `at` + field names one
    in a refusal), each within what the preprocessor writes, and a window's audio exactly
    its frames' time at the audio rate, as the writer computes it (what it is when `values`
    has no audio_samples: a config says none)."""
    fps = values.get("fps")
    least, most = TRACK_BOUNDS["fps"]
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not least <= fps <= most:
        raise CacheFormatError(f"{at}fps is {printable(repr(fps))}: expected a frame rate "
                               f"from {least:g} to {most:g}: {REBUILD}")  # fmt: skip
    frames, size, rate = (integer(values.get(field), f"{at}{field}", *TRACK_BOUNDS[field])
                          for field in ("frames", "size", "audio_rate"))  # fmt: skip
    expected = schema.window_audio_samples(frames, fps, rate)
    samples = integer(values.get("audio_samples", expected), f"{at}audio_samples",
                      *TRACK_BOUNDS["audio_samples"])  # fmt: skip
    if samples != expected:
        raise CacheFormatError(
            f"{at}audio_samples is {samples}: {frames} frames at {fps:g} fps are {expected} "
            f"samples at {rate} Hz, the only window avcache writes: {REBUILD}"
        )
    return schema.TrackLayout(windows, frames, size, float(fps), rate, samples)


TRACK_FIELDS = ("windows", *TRACK_BOUNDS)
ONE_LAYOUT = f"the shards of one cache share one track layout: {REBUILD}"


def _tracks_named(layout: schema.TrackLayout | None) -> str:
    if layout is None:
        return "no tracks (tracks.windows=0)"
    return f"tracks ({layout.windows} windows of {layout.frames} frames)"


def _dtype_matches(found: np.dtype, expected: np.dtype) -> bool:
    if expected == schema.STRING_DTYPE:
        return h5py.check_string_dtype(found) is not None
    return found == expected


@dataclass(frozen=True)
class ShardFacts:
    """What a cache keeps of each shard it has opened, so that no check opens it twice."""

    codec: str  # how it stores its faces
    unknown: int  # samples without a target (label -1)
    first_unknown: str  # the first of them, `sample P ('NAME')` ("" when none)

    @staticmethod
    def of(shard: ShardReader) -> ShardFacts:
        return ShardFacts(shard.codec, int(shard.unknown_labels.size), shard.first_unknown)


@dataclass(frozen=True)
class ShardEntry:
    """A shard as the index lists it, with the face frames and size that the cache's config
    promises (None where the index carries no faces config) and its track layout."""

    path: Path
    split: str
    num_samples: int
    sha256: str
    frames: int | None = None
    face_size: int | None = None
    tracks_promised: bool = False  # whether the config says the track layout, `tracks`
    tracks: schema.TrackLayout | None = None  # None: no tracks (tracks.windows=0)

    def open(self) -> ShardReader:
        """The shard, checked against this entry."""
        return ShardReader(self.path, self)


class Cache:
    """A finished cache: its index, config and shards, checked against the index's schema
    (see `shard_entries`)."""

    def __init__(self, root: Path, index: dict, where: Path | None = None) -> None:
        where = where or root / schema.INDEX_FILE
        self.root = root
        self.index_path = where
        self.index_sha256 = ""  # set by open_cache
        self.index = index
        self.config: dict = config_sections(index, where)
        self.config_hash: str = text(index.get("config_hash", ""), f"{where}: 'config_hash'")
        self.shards = shard_entries(root, index, where)
        self._facts: dict[Path, ShardFacts] = {}  # of each shard opened so far
        self._failures = inside(root, index.get("failures", schema.FAILURES_FILE),
                                f"{where}: 'failures'")  # fmt: skip

    @property
    def frames(self) -> int:
        """Face frames per video (0: a mel-only cache), as the config or a shard says."""
        for entry in self.shards:
            if entry.frames is not None:
                return entry.frames
            with entry.open() as shard:
                return shard.frames
        return 0

    @cached_property
    def tracks(self) -> schema.TrackLayout | None:
        """The aligned tracks' layout (None: a cache made with tracks.windows=0), as the
        config says (else the first shard): every shard is opened against it."""
        for entry in self.shards:
            if entry.tracks_promised:
                return entry.tracks
            with entry.open() as shard:
                return shard.tracks
        return None

    def check_shards(self) -> None:
        """Open every shard and check it against its entry (counts, split, faces, tracks) and
        the others: the same samples under two entries (a copy of a shard) are refused, and
        so are track layouts that differ where the config says none (an older index)."""
        seen: dict[str, ShardEntry] = {}
        first: tuple[schema.TrackLayout | None, str] | None = None  # its tracks, who says
        for entry in self.shards:
            with entry.open() as shard:
                digest = shard.meta_digest if len(shard) else None
                self._facts[entry.path] = ShardFacts.of(shard)
                first = first or (shard.tracks, f"{shard.path} (the cache's first shard) holds")
                shard.check_tracks(*first)
            if digest in seen:
                raise CacheFormatError(
                    f"{entry.path}: holds the same samples as {seen[digest].path} (a copy, "
                    f"split {printable(repr(seen[digest].split))}); a sample is cached once: "
                    f"{REBUILD}"
                )
            seen[digest or f"empty {entry.path}"] = entry

    def _facts_of(self, entry: ShardEntry) -> ShardFacts:
        if entry.path not in self._facts:
            with entry.open() as shard:
                self._facts[entry.path] = ShardFacts.of(shard)
        return self._facts[entry.path]

    def face_codecs(self, split: str) -> set[str]:
        """How the split's shards store their faces: raw, jpeg (a v1 shard is raw)."""
        return {self._facts_of(entry).codec for entry in self.shards_of(split)}

    def fake_kinds(self, split: str) -> list[str] | None:
        """The data set's kind of fake of every sample of `split`, in the order iter_samples
        gives them (shards in index order, then position); None where the split's layout
        records no kinds (FFDV)."""
        return self._optional_column(split, "has_fake_kinds", ShardReader.read_fake_kinds)

    def fake_segments(self, split: str) -> list[np.ndarray] | None:
        """Each sample's fake segments (float64 [k, 2] seconds) of `split` in the same order;
        None where its layout records none."""
        return self._optional_column(split, "has_fake_segments", ShardReader.read_fake_segments)

    def _optional_column(self, split: str, flag: str, read) -> list | None:
        values, holding = [], set()
        for entry in self.shards_of(split):
            with entry.open() as shard:
                holding.add(getattr(shard, flag))
                if getattr(shard, flag):
                    values += read(shard)
        if len(holding) > 1:  # one split comes from one label file: all or none
            raise CacheFormatError(f"{self.index_path}: only some shards of split "
                                   f"{printable(repr(split))} hold {flag[4:]}: "
                                   f"{REBUILD}")  # fmt: skip
        return values if holding == {True} else None

    def source_of(self, split: str) -> str:
        """The label layout `split` was read from (preprocess/layouts.py): ffdv where the
        config names none (the default, and every cache made before layouts existed)."""
        splits = self.config.get("splits", {})
        section = splits.get(split, {}) if isinstance(splits, dict) else {}
        layout = section.get("layout", "ffdv") if isinstance(section, dict) else "ffdv"
        return printable(text(layout, f"{self.index_path}: config.splits.{split}.layout"))

    @property
    def source_name(self) -> str:
        """Where the cache came from: its splits' layouts, joined by '+' where they differ
        (`ffdv`, `lav-df`, `fakeavceleb+dfdc`)."""
        names = dict.fromkeys(self.source_of(split) for split in self.splits)
        return "+".join(names) or "ffdv"

    def without_target(self, split: str) -> tuple[int, str]:
        """(how many samples of `split` have no target (label -1), the first of them as
        `SHARD: sample P ('NAME')`, or "" when every sample has one)."""
        facts = [(entry, self._facts_of(entry)) for entry in self.shards_of(split)]
        count = sum(fact.unknown for _, fact in facts)
        first = next((f"{entry.path}: {fact.first_unknown}" for entry, fact in facts
                      if fact.unknown), "")  # fmt: skip
        return count, first

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(entry.split for entry in self.shards))

    def shards_of(self, split: str) -> list[ShardEntry]:
        return [entry for entry in self.shards if entry.split == split]

    def num_samples(self, split: str | None = None) -> int:
        entries = self.shards if split is None else self.shards_of(split)
        return sum(entry.num_samples for entry in entries)

    def failures(self) -> list[Failure]:
        return read_failures(self._failures)

    def iter_samples(self, split: str | None = None) -> Iterator[schema.Sample]:
        """Every sample, in index order (inspection and tests; training streams blocks)."""
        for entry in self.shards if split is None else self.shards_of(split):
            with entry.open() as shard:
                for position in range(len(shard)):
                    yield shard.sample(position)

    def samples_at(
        self, picks: list[tuple[int, int]], block: int = 64, windows: range | None = None
    ) -> Iterator[tuple[tuple[int, int], schema.Sample]]:
        """(pick, sample) for (shard number, position) picks, in file order: each shard is
        opened once and read in blocks (one h5py call per dataset), however many picks. A
        block holds at most `block` samples and BLOCK_BYTES of them (one sample at least);
        with `windows`, only those of each sample's tracks are decoded (what a sheet draws)."""
        by_shard: dict[int, list[int]] = {}
        for number, position in sorted(set(picks)):
            by_shard.setdefault(number, []).append(position)
        for number, positions in by_shard.items():
            with self.shards[number].open() as shard:
                step = max(1, min(block, BLOCK_BYTES // shard.sample_bytes(windows)))
                for start in range(0, len(positions), step):
                    chunk = positions[start : start + step]
                    samples = shard.samples(chunk, windows)
                    for position, sample in zip(chunk, samples, strict=True):
                        yield (number, position), sample
                    del samples, sample  # before the next block is read, not after

    @cached_property
    def _locations(self) -> dict[str, list[tuple[int, int]]]:
        """video name -> (shard number, position) of each copy, read once from the name
        columns, so that repeated lookups (a notebook, a gallery) do not rescan every shard."""
        locations: dict[str, list[tuple[int, int]]] = {}
        for number, entry in enumerate(self.shards):
            with entry.open() as shard:
                for position, name in enumerate(shard.video_names):
                    locations.setdefault(name, []).append((number, position))
        return locations

    def splits_holding(self, video_name: str) -> list[str]:
        """The splits with a copy of the video (none: it is not cached)."""
        return [self.shards[number].split for number, _ in self._locations.get(video_name, [])]

    def names(self) -> list[str]:
        """Every cached video name, once each, in index order."""
        return list(self._locations)

    def locate(self, video_name: str, split: str | None = None) -> tuple[ShardEntry, int]:
        """The shard and position of a video (its first copy, or its copy in `split`)."""
        for number, position in self._locations.get(video_name, []):
            entry = self.shards[number]
            if split is None or entry.split == split:
                return entry, position
        where = f" split {split!r} of" if split else ""
        raise KeyError(f"{video_name!r} is not in{where} the cache at {self.root}")

    def sample(self, video_name: str, split: str | None = None) -> schema.Sample:
        """One sample by video name: `open_cache(path).sample(name).mel` in a notebook."""
        entry, position = self.locate(video_name, split)
        with entry.open() as shard:
            return shard.sample(position)

    def find(self, video_name: str) -> schema.Sample:
        """Look a sample up by its video name (the same as `sample`)."""
        return self.sample(video_name)


SHA256 = re.compile("[0-9a-f]{64}")


def shard_entries(root: Path, index: dict, where: Path) -> list[ShardEntry]:
    """The index's shard list, checked: each row a JSON object of the right types, its path
    inside the cache, its split one the cache knows, every shard listed once (by path and
    by sha256) and the per-split totals equal to the rows."""
    rows = index.get("shards")
    if not isinstance(rows, list):
        raise CacheFormatError(f"{where}: 'shards' is {type(rows).__name__}: expected a list")
    config = config_sections(index, where)
    known = _known_splits(index, config, where)
    frames, face_size = _faces_promised(config, where)
    promised, tracks = _tracks_promised(config, where)
    entries: list[ShardEntry] = []
    by_path: dict[Path, int] = {}
    by_sha: dict[str, int] = {}
    for number, row in enumerate(rows):
        at = f"{where}: shards[{number}]"
        row = mapping(row, at)
        path = inside(root, row.get("path"), at)
        split = text(row.get("split"), f"{at}.split")
        if known is not None and split not in known:
            raise CacheFormatError(f"{at}: split {printable(repr(split))} is not one of the "
                                   f"cache's splits ({', '.join(known)}): {REBUILD}")  # fmt: skip
        count = integer(row.get("num_samples"), f"{at}.num_samples")
        sha256 = text(row.get("sha256"), f"{at}.sha256")
        if not SHA256.fullmatch(sha256):
            raise CacheFormatError(f"{at}.sha256 is not a hex sha256: {REBUILD}")
        _listed_once(at, path, by_path, "path", rows)
        _listed_once(at, sha256, by_sha, "sha256 (the same bytes)", rows)
        by_path[path], by_sha[sha256] = number, number
        entries.append(ShardEntry(path, split, count, sha256, frames, face_size, promised, tracks))
    _check_split_totals(index, entries, where)
    return entries


def _listed_once(at: str, key: object, seen: dict, what: str, rows: list) -> None:
    if key in seen:
        first = rows[seen[key]]
        raise CacheFormatError(
            f"{at}: the same {what} as shards[{seen[key]}] (split "
            f"{printable(repr(first.get('split')))}): a shard is listed once, in one split, so "
            f"no sample is trained on twice or validated on what trained: {REBUILD}"
        )


def _known_splits(index: dict, config: dict, where: Path) -> list[str] | None:
    """The splits a shard may name: the preprocessing config's, else the index's totals."""
    for source, name in ((config, "config.splits"), (index, "splits")):
        if "splits" in source:
            return list(mapping(source["splits"], f"{where}: {name!r}"))
    return None


def config_sections(index: dict, where: Path) -> dict:
    """The index's preprocessing config: a JSON object of sections, each an object (what
    inspection, sheets and run folders read from it)."""
    config = mapping(index.get("config", {}), f"{where}: 'config'")
    for name, section in config.items():
        mapping(section, f"{where}: config.{printable(name)}")
    return config


def _faces_promised(config: dict, where: Path) -> tuple[int | None, int | None]:
    """(frames, size) of the faces config, which every shard must match; bounded like the
    shards' own."""
    faces = config.get("faces")
    if not isinstance(faces, dict) or not {"frames", "size"} <= faces.keys():
        return None, None
    frames = integer(faces["frames"], f"{where}: config.faces.frames", maximum=schema.MAX_FRAMES)
    size = integer(faces["size"], f"{where}: config.faces.size", maximum=schema.MAX_FACE_SIZE)
    return frames, size


def _tracks_promised(config: dict, where: Path) -> tuple[bool, schema.TrackLayout | None]:
    """(whether the config says the tracks' layout, that layout or None without tracks),
    which every shard must hold; bounded like the shards' own. An index made before tracks
    existed says nothing: its shards must then agree with each other (Cache.check_shards)."""
    tracks = config.get("tracks")
    if not isinstance(tracks, dict) or "windows" not in tracks:
        return False, None
    at = f"{where}: config.tracks."
    windows = integer(tracks["windows"], f"{at}windows", maximum=schema.MAX_TRACK_WINDOWS)
    if not windows:
        return True, None
    values = {field: tracks.get(field) for field in ("frames", "size", "fps", "audio_rate")}
    return True, bounded_tracks(windows, values, at)


def _check_split_totals(index: dict, entries: list[ShardEntry], where: Path) -> None:
    """The index's per-split totals (what `avcache-inspect` and users read first) match its rows."""
    totals = mapping(index.get("splits", {}), f"{where}: 'splits'")
    for split, counts in totals.items():
        counts = mapping(counts, f"{where}: splits.{printable(split)}")
        rows = [entry for entry in entries if entry.split == split]
        said = (counts.get("shards"), counts.get("samples"))
        found = (len(rows), sum(entry.num_samples for entry in rows))
        if said != found:
            raise CacheFormatError(
                f"{where}: splits.{printable(split)} says {said[0]} shards, {said[1]} samples; "
                f"its shard list holds {found[0]} shards, {found[1]} samples: {REBUILD}"
            )


def open_cache(path: Path | str, check_shards: bool = True) -> Cache:
    """Open a cache folder (or its index.json); refuses unknown formats and versions, an
    index that does not fit its schema and (with `check_shards`, the default) shards that
    do not hold what the index says. Every refusal is a CacheFormatError naming the file."""
    path = Path(path)
    index_path = path / schema.INDEX_FILE if path.is_dir() else path
    if not index_path.exists():
        raise FileNotFoundError(
            f"{index_path}: no cache index here; run avcache-preprocess to build the cache "
            "(an index is written only when a run finishes)"
        )
    # inside its folder once symlinks are followed: an index.json linked out of the cache
    # (to another cache, to any file) is never read
    data = read_bounded(index_path, "cache index", root=index_path.parent)
    index = mapping(parse_json(data, index_path, "cache index"), str(index_path))
    check_format(str(index_path), index.get("format"), index.get("version"))
    cache = Cache(index_path.parent, index, index_path)
    cache.index_sha256 = hashlib.sha256(data).hexdigest()  # of the very bytes parsed
    if check_shards:
        cache.check_shards()
    return cache
