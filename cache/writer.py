"""ShardWriter: appends samples to one HDF5 shard, commits it atomically on close.

The shard is written under a `.partial` name, fsynced, hashed and only then
renamed into place, so a finished name always means a complete file. Samples
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

from cache import schema

# Samples buffered before one block write; mel chunks hold this many samples (1 MiB).
WRITE_BLOCK = 16
# The big per-sample arrays get chunks along the sample axis; the rest are tiny.
_CHUNKED = (schema.MEL, schema.FACES)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    ) -> None:
        self.path = Path(path)
        self.partial_path = schema.partial_path(self.path)
        self.specs = schema.dataset_specs(frames, face_size)
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
        for key, value in extra.items():
            attrs[key] = value

    def _create_datasets(self) -> None:
        for name, (dtype, shape) in self.specs.items():
            chunk_rows = WRITE_BLOCK if name == schema.MEL else 1
            chunks = (chunk_rows, *shape) if name in _CHUNKED and 0 not in shape else True
            self._file.create_dataset(
                name,
                shape=(0, *shape),
                maxshape=(None, *shape),
                dtype=dtype,
                chunks=chunks,
                # HDF5 filters no variable-length data: the names go unchecked.
                fletcher32=self.fletcher32 and name != schema.VIDEO_NAME,
                track_times=False,  # identical inputs give byte-identical shards
            )

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
            block = self._column(name, [row[name] for row in rows])
            self._extend(name, start, block)
            if name in schema.CHECKSUMS:
                self._extend(schema.CHECKSUMS[name], start, schema.sum64(block))
        self.num_samples += len(rows)
        self._buffer.clear()

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
        dataset[start : start + len(block)] = block

    def close(self) -> tuple[int, str]:
        """Flush, fsync, rename into place; returns (num_samples, sha256 of the file)."""
        self._flush()
        try:
            columns = {name: self._file[name][()] for name in schema.META_FIELDS}
            self._file.attrs[schema.ATTR_META_SHA256] = schema.meta_sha256(columns)
            self._file.flush()  # metadata: a failure raises here, not inside close()
            self._file.close()
            _fsync(self.partial_path)
        except OSError as error:
            raise self._failed(error) from error
        digest = sha256_of(self.partial_path)
        os.replace(self.partial_path, self.path)
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
