"""ShardWriter: appends samples to one HDF5 shard, commits it atomically on close.

The shard is written under a temporary name, hashed and only then published
(common/atomic.py), so a finished name always means a complete file. Samples
are buffered in small blocks so memory stays bounded whatever the shard size.
With every block of mel images and faces go their per-sample sums
(`schema.sum64`), which every read checks.
A write that fails (a full disk, a file-size limit) raises an OSError naming the
shard and removes the partial file; nothing finished before it is touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import h5py
import numpy as np

from avcache.cache import codec as codecs
from avcache.cache import schema
from avcache.common.atomic import partial_path, publish

# Samples buffered before one block write; mel chunks hold this many samples (1 MiB).
WRITE_BLOCK = 16
# Bytes per chunk of the JPEG data region: a few samples' crops (8 x 224 px ~ 90 kB a sample)
# and at most this much unused at the end of a shard.
JPEG_CHUNK = 2**18
# The big per-sample arrays get chunks along the sample axis; the rest are tiny.
_CHUNKED = (schema.MEL, schema.FACES)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class ShardWriter:
    """Context manager that writes one shard; `close()` returns (num_samples, sha256)."""

    def __init__(
        self,
        path: Path,
        *,
        split: str,
        frames: int,
        face_size: int,
        attrs: dict[str, str] | None = None,
        fletcher32: bool = False,
        codec: str = "raw",
        quality: int = 90,
        tracks: schema.TrackLayout | None = None,
        tracks_quality: int = 90,
        facts: bool = False,
        fake_kinds: bool = False,
        fake_segments: bool = False,
    ) -> None:
        self.path = Path(path)
        self.partial_path = partial_path(self.path)
        if codec not in codecs.CODECS:
            raise ValueError(f"faces codec {codec!r} unknown (known: {', '.join(codecs.CODECS)})")
        self.codec, self.quality = codec, quality
        self.tracks, self.tracks_quality = (
            tracks if tracks and tracks.windows else None,
            tracks_quality,
        )
        self.specs = schema.dataset_specs(frames, face_size, codec)
        layout = self.tracks
        self.track_specs = (
            schema.track_specs(layout.windows, layout.frames, layout.audio_samples)
            if layout
            else {}
        )
        self.fact_specs = schema.fact_specs(facts)  # audit.facts: per-video facts
        # The data set's kinds of fake and fake segments, where its layout has them.
        self.label_specs = schema.label_specs(fake_kinds, fake_segments)
        self.fake_kinds, self.fake_segments = fake_kinds, fake_segments
        self._segments = 0  # FAKE_SEGMENTS's rows so far
        self._lips_bytes = 0  # LIPS_JPEG's length so far
        self.face_shape = (frames, face_size, face_size, 3)
        self._jpeg_bytes = 0  # FACES_JPEG's length so far
        self.fletcher32 = fletcher32  # HDF5's per-chunk checksum, verified on every read
        self.num_samples = 0
        self._buffer: list[schema.Sample] = []
        # No chunk cache: every block write is whole chunks and goes to disk at once, so a
        # full disk fails that write, here. With a cache the data would be written while the
        # file closes, where h5py only prints the error and may crash the process.
        try:
            self._file = h5py.File(self.partial_path, "w", libver="latest", rdcc_nbytes=0)
        except OSError as error:
            self.partial_path.unlink(missing_ok=True)
            raise self._failed(error) from error
        try:
            self._write_attrs(split, frames, face_size, attrs or {})
            self._create_datasets()
        except OSError as error:
            self.abort()
            raise self._failed(error) from error

    def _write_attrs(self, split: str, frames: int, face_size: int, extra: dict) -> None:
        attrs = self._file.attrs
        attrs[schema.ATTR_FORMAT] = schema.FORMAT
        attrs[schema.ATTR_VERSION] = schema.VERSION
        attrs[schema.ATTR_SPLIT] = split
        attrs[schema.ATTR_FRAMES] = frames
        attrs[schema.ATTR_FACE_SIZE] = face_size
        attrs[schema.ATTR_FACES_CODEC] = self.codec
        if self.codec == "jpeg":
            attrs[schema.ATTR_FACES_QUALITY] = self.quality
        if self.tracks:
            attrs.update(self.tracks.attrs())
            attrs[schema.ATTR_LIPS_QUALITY] = self.tracks_quality
        if self.fact_specs:
            attrs[schema.ATTR_FACTS] = 1
        if self.fake_kinds:
            attrs[schema.ATTR_FAKE_KIND] = 1
        if self.fake_segments:
            attrs[schema.ATTR_FAKE_SEGMENTS] = 1
        for key, value in extra.items():
            attrs[key] = value

    def _create_datasets(self) -> None:
        specs = {**self.specs, **self.track_specs, **self.fact_specs, **self.label_specs}
        for name, (dtype, shape) in specs.items():
            chunk_rows = WRITE_BLOCK if name == schema.MEL else 1
            chunks = (chunk_rows, *shape) if name in _CHUNKED and 0 not in shape else True
            self._file.create_dataset(
                name,
                shape=(0, *shape),
                maxshape=(None, *shape),
                dtype=dtype,
                chunks=chunks,
                # HDF5 filters no variable-length data: the names go unchecked.
                fletcher32=self.fletcher32 and name not in (schema.VIDEO_NAME, schema.FAKE_KIND),
                track_times=False,  # identical inputs give byte-identical shards
            )
        regions = [schema.FACES_JPEG] if self.codec == "jpeg" else []
        regions += [schema.LIPS_JPEG] if self.tracks else []
        for name in regions:  # flat data regions, in chunks of a few samples' crops
            self._file.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.uint8,
                                      chunks=(JPEG_CHUNK,), fletcher32=self.fletcher32,
                                      track_times=False)  # fmt: skip
        if self.fake_segments:  # a flat region of [start, end] pairs, a few samples a chunk
            self._file.create_dataset(schema.FAKE_SEGMENTS, shape=(0, 2), maxshape=(None, 2),
                                      dtype="<f8", chunks=(1024, 2), fletcher32=self.fletcher32,
                                      track_times=False)  # fmt: skip

    def append(self, sample: schema.Sample) -> None:
        """Queue one sample; full blocks go to disk."""
        self._buffer.append(sample)
        if len(self._buffer) >= WRITE_BLOCK:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        try:
            self._write_block()
        except OSError as error:
            raise self._failed(error) from error

    def _write_block(self) -> None:
        """Each Sample field as one column, and after mel and faces their per-sample sums,
        computed from the very array that is written."""
        start, rows = self.num_samples, [sample.fields() for sample in self._buffer]
        for name in rows[0]:
            if name == schema.FACES and self.codec == "jpeg":
                self._write_jpeg_faces(start, [row[name] for row in rows])
                continue
            block = self._column(name, [row[name] for row in rows])
            self._extend(name, start, block)
            if name in schema.CHECKSUMS:
                self._extend(schema.CHECKSUMS[name], start, schema.sum64(block))
        if self.tracks:
            self._write_tracks(start, [sample.tracks for sample in self._buffer])
        if self.fact_specs:
            self._write_facts(start, [sample.facts for sample in self._buffer])
        if self.fake_kinds:
            self._write_kinds(start, [sample.fake_kind for sample in self._buffer])
        if self.fake_segments:
            self._write_segments(start, [sample.fake_segments for sample in self._buffer])
        self.num_samples += len(rows)
        self._buffer.clear()

    def _write_tracks(self, start: int, tracks: list[schema.Tracks | None]) -> None:
        """The windows' small columns, their audio with its sums, the mouth crops as JPEG."""
        if any(track is None for track in tracks):
            raise ValueError("this shard holds tracks (tracks.windows > 0): every sample "
                             "needs its Tracks")  # fmt: skip
        for name in tracks[0].columns():
            block = self._track_column(name, [track.columns()[name] for track in tracks])
            self._extend(name, start, block)
            if name in schema.TRACK_CHECKSUMS:
                self._extend(schema.TRACK_CHECKSUMS[name], start, schema.sum64(block))
        self._write_lips(start, [track.lips for track in tracks])

    def _write_facts(self, start: int, facts: list[dict[str, float | str] | None]) -> None:
        """One column per fact; every sample of a shard with facts needs all of them."""
        for i, values in enumerate(facts):
            missing = set(schema.FACT_FIELDS) - set(values or {})
            if missing:
                raise ValueError(f"this shard holds facts (audit.facts): sample {start + i} "
                                 f"lacks {', '.join(sorted(missing))}")  # fmt: skip
        for name, (dtype, _) in self.fact_specs.items():
            strings = name in schema.FACT_STRINGS
            column = [str(values[name]) if strings else values[name] for values in facts]
            self._extend(name, start, np.asarray(column, dtype=object if strings else dtype))

    def _write_kinds(self, start: int, kinds: list[str | None]) -> None:
        """Every sample of a shard with kinds needs one, of bounded length."""
        for i, kind in enumerate(kinds):
            if not isinstance(kind, str) or len(kind) > schema.MAX_FAKE_KIND_CHARS:
                raise ValueError(f"this shard holds fake kinds: sample {start + i} has "
                                 f"{kind!r}, expected a string of at most "
                                 f"{schema.MAX_FAKE_KIND_CHARS} characters")  # fmt: skip
        self._extend(schema.FAKE_KIND, start, np.asarray(kinds, dtype=object))

    def _write_segments(self, start: int, segments: list[np.ndarray | None]) -> None:
        """Each sample's [start, end] pairs appended to the flat region, and its end there."""
        checked = [self._checked_segments(start + i, pairs) for i, pairs in enumerate(segments)]
        ends = self._segments + np.cumsum([len(pairs) for pairs in checked], dtype=np.uint64)
        self._extend(schema.FAKE_SEGMENTS, self._segments,
                     np.concatenate([np.empty((0, 2)), *checked]))  # fmt: skip
        self._segments = int(ends[-1])
        self._extend(schema.FAKE_SEGMENTS_ENDS, start, ends)

    @staticmethod
    def _checked_segments(position: int, pairs: np.ndarray | None) -> np.ndarray:
        """[k, 2] float64 seconds, 0 <= start <= end, k bounded: what readers accept (every
        sample of a shard with segments needs them; a real one has none, k = 0)."""
        block = np.empty((0, 3)) if pairs is None else np.asarray(pairs, np.float64)
        if block.size == 0 and block.ndim < 2:
            block = block.reshape(0, 2)
        shaped = block.ndim == 2 and block.shape[1] == 2 and len(block) <= schema.MAX_FAKE_SEGMENTS
        if not (shaped and np.isfinite(block).all() and (block[:, 0] >= 0).all()
                and (block[:, 0] <= block[:, 1]).all()):  # fmt: skip
            raise ValueError(f"this shard holds fake segments: sample {position} has "
                             f"{pairs!r}, expected at most {schema.MAX_FAKE_SEGMENTS} "
                             "[start, end] pairs of seconds, 0 <= start <= end")  # fmt: skip
        return block

    def _track_column(self, name: str, values: list) -> np.ndarray:
        dtype, shape = self.track_specs[name]
        block = np.asarray(values, dtype=dtype)
        if block.shape[1:] != shape:
            raise ValueError(f"{name}: expected per-sample shape {shape}, got {block.shape[1:]}")
        return block

    def _write_lips(self, start: int, lips: list[np.ndarray]) -> None:
        shape = self.tracks.lips_shape()
        crops = shape[0] * shape[1]
        ends, sums, encoded = np.zeros((len(lips), crops), np.uint64), [], []
        position = self._lips_bytes
        for i, windows in enumerate(lips):
            if np.shape(windows) != shape or np.asarray(windows).dtype != np.uint8:
                found = f"{np.asarray(windows).dtype}{list(np.shape(windows))}"
                raise ValueError(f"lips: expected uint8{list(shape)}, got {found}")
            parts = codecs.encode_grey_crops(np.asarray(windows).reshape(crops, *shape[2:]),
                                             self.tracks_quality)  # fmt: skip
            ends[i] = position + np.cumsum([len(part) for part in parts])
            position = int(ends[i, -1])
            joined = b"".join(parts)
            encoded.append(joined)
            sums.append(codecs.xxh3(joined))
        self._extend(schema.LIPS_JPEG, self._lips_bytes, np.frombuffer(b"".join(encoded), np.uint8))
        self._lips_bytes = position
        self._extend(schema.LIPS_ENDS, start, ends)
        self._extend(schema.LIPS_XXH3, start, np.array(sums, schema.SUM_DTYPE))

    def _write_jpeg_faces(self, start: int, faces: list[np.ndarray]) -> None:
        """Each sample's crops as JPEG, appended to the flat data region; their ends and
        each sample's xxh3."""
        frames = self.face_shape[0]
        encoded, ends, sums = [], np.zeros((len(faces), frames), np.uint64), []
        position = self._jpeg_bytes
        for i, crops in enumerate(faces):
            if np.shape(crops) != self.face_shape or np.asarray(crops).dtype != np.uint8:
                raise ValueError(f"faces: expected uint8{list(self.face_shape)}, got "
                                 f"{np.asarray(crops).dtype}{list(np.shape(crops))}")  # fmt: skip
            parts = codecs.encode_crops(np.asarray(crops), self.quality)
            for k, part in enumerate(parts):
                position += len(part)
                ends[i, k] = position
            joined = b"".join(parts)
            encoded.append(joined)
            sums.append(codecs.xxh3(joined))
        data = np.frombuffer(b"".join(encoded), np.uint8)
        self._extend(schema.FACES_JPEG, self._jpeg_bytes, data)
        self._jpeg_bytes = position
        self._extend(schema.FACES_ENDS, start, ends)
        self._extend(schema.FACES_XXH3, start, np.array(sums, schema.SUM_DTYPE))

    def _column(self, name: str, values: list) -> np.ndarray:
        """One field of the buffered samples as an array of the schema's dtype and shape."""
        dtype, shape = self.specs[name]
        block = np.asarray(values, dtype=object if name == schema.VIDEO_NAME else dtype)
        if block.shape[1:] != shape:
            raise ValueError(f"{name}: expected per-sample shape {shape}, got {block.shape[1:]}")
        return block

    def _extend(self, name: str, start: int, block: np.ndarray) -> None:
        dataset = self._file[name]
        dataset.resize(start + len(block), axis=0)
        if len(block):
            dataset[start : start + len(block)] = block

    def close(self) -> tuple[int, str]:
        """Flush, fsync, rename into place; returns (num_samples, sha256 of the file)."""
        self._flush()
        try:
            fields = schema.META_FIELDS + (schema.TRACK_META_FIELDS if self.tracks else ())
            fields += tuple(self.fact_specs)
            fields += schema.label_fields(self.fake_kinds, self.fake_segments)
            columns = {name: self._file[name][()] for name in fields}
            self._file.attrs[schema.ATTR_META_SHA256] = schema.meta_sha256(columns, fields)
            self._file.flush()  # metadata: a failure raises here, not inside close()
            self._file.close()
            digest = sha256_of(self.partial_path)
            publish(self.partial_path, self.path)
        except OSError as error:
            raise self._failed(error) from error
        return self.num_samples, digest

    def _failed(self, error: OSError) -> OSError:
        """The error of a failed write, naming the shard (h5py's names only the .partial)."""
        if error.errno:
            return OSError(error.errno, os.strerror(error.errno), str(self.path))
        return OSError(f"{self.path}: writing the shard failed ({error})")

    def abort(self) -> None:
        """Drop the partial file (used when the shard cannot be finished)."""
        # Closing after a failed write may fail again; the first error is the one raised.
        with contextlib.suppress(Exception):
            self._file.close()
        self.partial_path.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
