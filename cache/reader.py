"""Reading a cache: the index, its shards, and samples by position or by name.

Mirrors cache/writer.py. Everything read from disk is checked before use: an
unknown format or version is refused, and every dataset's dtype and shape must
match the schema, so a damaged or foreign file fails with its name, not later
inside a model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np

from cache import schema
from cache.index import Failure, read_failures


class CacheFormatError(ValueError):
    """A file that is not a cache this version of avcache can read."""


def check_format(where: str, fmt: object, version: object) -> None:
    if fmt != schema.FORMAT:
        raise CacheFormatError(f"{where}: format {fmt!r} is not {schema.FORMAT!r}")
    if version != schema.VERSION:
        raise CacheFormatError(
            f"{where}: cache format version {version!r} is not supported "
            f"(this avcache reads version {schema.VERSION}); re-run the preprocessor"
        )


class ShardReader:
    """One shard file, opened read-only and validated; reads contiguous blocks."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            # No chunk cache: batches read whole chunks (a cache only adds a copy), and a
            # per-sample read would otherwise pull a whole 1 MiB chunk through it.
            self._file = h5py.File(self.path, "r", rdcc_nbytes=0)
        except OSError as error:
            raise CacheFormatError(f"{self.path}: cannot open as HDF5 ({error})") from error
        try:
            self._validate()
        except BaseException:
            self._file.close()
            raise

    def _validate(self) -> None:
        attrs = self._file.attrs
        check_format(
            str(self.path),
            _plain(attrs.get(schema.ATTR_FORMAT)),
            _plain(attrs.get(schema.ATTR_VERSION)),
        )
        self.split = str(attrs.get(schema.ATTR_SPLIT, ""))
        self.frames = int(attrs.get(schema.ATTR_FRAMES, -1))
        self.face_size = int(attrs.get(schema.ATTR_FACE_SIZE, -1))
        specs = schema.dataset_specs(self.frames, self.face_size)
        lengths = set()
        self._datasets: dict[str, h5py.Dataset] = {}  # a name lookup costs ~0.1 ms per call
        for name, (dtype, shape) in specs.items():
            dataset = self._file.get(name)
            if not isinstance(dataset, h5py.Dataset):
                raise CacheFormatError(f"{self.path}: dataset {name!r} is missing")
            if dataset.shape[1:] != shape or not _dtype_matches(dataset.dtype, dtype):
                raise CacheFormatError(
                    f"{self.path}: dataset {name!r} is {dataset.dtype}{list(dataset.shape)}, "
                    f"expected {dtype}[N, {', '.join(map(str, shape))}]"
                )
            lengths.add(dataset.shape[0])
            self._datasets[name] = dataset
        if len(lengths) != 1:
            raise CacheFormatError(f"{self.path}: datasets disagree on the sample count {lengths}")
        self.num_samples = lengths.pop()

    def __len__(self) -> int:
        return self.num_samples

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Samples [start, stop) of one dataset, in a single h5py call."""
        stop = self.num_samples if stop is None else stop
        if name == schema.VIDEO_NAME:
            return self._datasets[name].asstr()[start:stop]
        return self._datasets[name][start:stop]

    def read_into(self, name: str, start: int, out: np.ndarray) -> None:
        """Fill a preallocated array with samples [start, start + len(out)): no extra copy."""
        if out.size:
            self._datasets[name].read_direct(out, np.s_[start : start + len(out)])

    def take(self, name: str, positions: np.ndarray | list[int]) -> np.ndarray:
        """Samples at increasing `positions` of one dataset, in one h5py call: a sparse pick
        (a gallery's mistakes) reads only the chunks it needs, not the blocks between."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size == 0:
            return self.read(name, 0, 0)
        dataset = self._datasets[name]
        return (dataset.asstr() if name == schema.VIDEO_NAME else dataset)[positions]

    def storage_bytes(self, name: str) -> int:
        """Bytes that one dataset's data takes in the file (a cache's size per modality)."""
        return int(self._datasets[name].id.get_storage_size())

    def sample_shape(self, name: str) -> tuple[int, ...]:
        return self._datasets[name].shape[1:]

    def dtype(self, name: str) -> np.dtype:
        return self._datasets[name].dtype

    @cached_property
    def video_names(self) -> list[str]:
        return list(self.read(schema.VIDEO_NAME))

    def sample(self, position: int) -> schema.Sample:
        """One whole sample (for inspection; training reads blocks)."""
        values = {name: self.read(name, position, position + 1)[0] for name in _SAMPLE_FIELDS}
        return schema.Sample(**values)

    def samples(self, positions: np.ndarray | list[int]) -> list[schema.Sample]:
        """Whole samples at increasing positions, one h5py call per dataset (inspection)."""
        columns = {name: self.take(name, positions) for name in _SAMPLE_FIELDS}
        return [
            schema.Sample(**{name: column[i] for name, column in columns.items()})
            for i in range(len(positions))
        ]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_SAMPLE_FIELDS = list(schema.Sample.__dataclass_fields__)


def _plain(value: object) -> object:
    """numpy scalars from HDF5 attributes as plain Python values."""
    return value.item() if isinstance(value, np.generic) else value


def _dtype_matches(found: np.dtype, expected: np.dtype) -> bool:
    if expected == schema.STRING_DTYPE:
        return h5py.check_string_dtype(found) is not None
    return found == expected


@dataclass(frozen=True)
class ShardEntry:
    """A shard as the index lists it."""

    path: Path
    split: str
    num_samples: int
    sha256: str


class Cache:
    """A finished cache: its index, config and shards."""

    def __init__(self, root: Path, index: dict) -> None:
        self.root = root
        self.index = index
        self.config: dict = index.get("config", {})
        self.config_hash: str = index.get("config_hash", "")
        self.shards = [_shard_entry(root, item) for item in index.get("shards", [])]

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(entry.split for entry in self.shards))

    def shards_of(self, split: str) -> list[ShardEntry]:
        return [entry for entry in self.shards if entry.split == split]

    def num_samples(self, split: str | None = None) -> int:
        entries = self.shards if split is None else self.shards_of(split)
        return sum(entry.num_samples for entry in entries)

    def failures(self) -> list[Failure]:
        return read_failures(self.root / self.index.get("failures", schema.FAILURES_FILE))

    def iter_samples(self, split: str | None = None) -> Iterator[schema.Sample]:
        """Every sample, in index order (inspection and tests; training streams blocks)."""
        for entry in self.shards if split is None else self.shards_of(split):
            with ShardReader(entry.path) as shard:
                for position in range(len(shard)):
                    yield shard.sample(position)

    def samples_at(
        self, picks: list[tuple[int, int]], block: int = 64
    ) -> Iterator[tuple[tuple[int, int], schema.Sample]]:
        """(pick, sample) for (shard number, position) picks, in file order: each shard is
        opened once and read in blocks (one h5py call per dataset), however many picks."""
        by_shard: dict[int, list[int]] = {}
        for number, position in sorted(set(picks)):
            by_shard.setdefault(number, []).append(position)
        for number, positions in by_shard.items():
            with ShardReader(self.shards[number].path) as shard:
                for start in range(0, len(positions), block):
                    chunk = positions[start : start + block]
                    for position, sample in zip(chunk, shard.samples(chunk), strict=True):
                        yield (number, position), sample

    @cached_property
    def _locations(self) -> dict[str, list[tuple[int, int]]]:
        """video name -> (shard number, position) of each copy, read once from the name
        columns, so that repeated lookups (a notebook, a gallery) do not rescan every shard."""
        locations: dict[str, list[tuple[int, int]]] = {}
        for number, entry in enumerate(self.shards):
            with ShardReader(entry.path) as shard:
                for position, name in enumerate(shard.video_names):
                    locations.setdefault(name, []).append((number, position))
        return locations

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
        with ShardReader(entry.path) as shard:
            return shard.sample(position)

    def find(self, video_name: str) -> schema.Sample:
        """Look a sample up by its video name (the same as `sample`)."""
        return self.sample(video_name)


def _shard_entry(root: Path, item: dict) -> ShardEntry:
    """An index row, with its path kept inside the cache folder."""
    path = (root / item["path"]).resolve()
    if not path.is_relative_to(root.resolve()):
        raise CacheFormatError(
            f"{root / schema.INDEX_FILE}: shard path {item['path']!r} leaves the cache"
        )
    return ShardEntry(path, str(item["split"]), int(item["num_samples"]), str(item["sha256"]))


def open_cache(path: Path | str) -> Cache:
    """Open a cache folder (or its index.json); refuses unknown formats and versions."""
    path = Path(path)
    index_path = path if path.is_file() else path / schema.INDEX_FILE
    if not index_path.is_file():
        raise FileNotFoundError(
            f"{index_path}: no cache index here; run avcache-preprocess to build the cache "
            "(an index is written only when a run finishes)"
        )
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise CacheFormatError(f"{index_path}: not valid JSON ({error})") from error
    if not isinstance(index, dict):
        raise CacheFormatError(f"{index_path}: expected a JSON object")
    check_format(str(index_path), index.get("format"), index.get("version"))
    return Cache(index_path.parent, index)
