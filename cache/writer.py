"""ShardWriter: appends samples to one HDF5 shard, commits it atomically on close.

The shard is written under a temporary name, hashed and only then published
(common/atomic.py), so a finished name always means a complete file. Samples
are buffered in small blocks so memory stays bounded whatever the shard size.
What the shard holds is its layout (schema.ShardLayout): each of its columns is
written by its encoding (cache/encodings.py), the big arrays with the per-sample
checksums that every read checks.
A write that fails (a full disk, a file-size limit) raises an OSError naming the
shard and removes the partial file; nothing finished before it is touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import h5py

from avcache.cache import schema
from avcache.cache.schema import WRITE_BLOCK
from avcache.common.atomic import partial_path, publish


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class ShardWriter:
    """Context manager that writes one shard of `layout`; `close()` returns
    (num_samples, sha256)."""

    def __init__(self, path: Path, layout: schema.ShardLayout, *, split: str,
                 attrs: dict[str, str] | None = None,
                 fletcher32: bool = False) -> None:  # fmt: skip
        self.path = Path(path)
        self.partial_path = partial_path(self.path)
        self.layout = layout
        self.columns = self.layout.columns()
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
            self._write_attrs(split, attrs or {})
            for dataset in schema.file_order(self.columns):
                dataset.create(self._file, self.fletcher32)
        except OSError as error:
            self.abort()
            raise self._failed(error) from error

    def _write_attrs(self, split: str, extra: dict) -> None:
        attrs = self._file.attrs
        attrs[schema.ATTR_FORMAT] = schema.FORMAT
        attrs[schema.ATTR_VERSION] = schema.VERSION
        attrs[schema.ATTR_SPLIT] = split
        for key, value in (self.layout.attrs() | extra).items():
            attrs[key] = value

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
        """The buffered samples column after column, each by its encoding."""
        start = self.num_samples
        for column in self.columns:
            values = [schema.sample_value(sample, column.field) for sample in self._buffer]
            self._check_held(column, start, values)
            column.encoding.write(self._file, start, values)
        self.num_samples += len(self._buffer)
        self._buffer.clear()

    @staticmethod
    def _check_held(column: schema.Column, start: int, values: list) -> None:
        """Every sample of a shard holding a part has its values (an encoding with bounds
        refuses a value it would not read back)."""
        missing = next((i for i, value in enumerate(values) if value is None), None)
        if missing is not None:
            raise ValueError(f"this shard holds {column.part.name}: sample {start + missing} "
                             f"lacks {column.field}")  # fmt: skip

    def close(self) -> tuple[int, str]:
        """Flush, fsync, rename into place; returns (num_samples, sha256 of the file)."""
        self._flush()
        try:
            fields = schema.meta_datasets(self.columns)
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
