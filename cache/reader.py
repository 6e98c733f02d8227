"""Reading a cache: its index checked, its shards (cache/shard.py), samples by name.

Everything read from disk is checked before use: the index must fit its schema (every
shard inside the cache, listed once, in a split the cache knows, the totals equal to the
rows), and every shard must hold what the index says (counts, split, faces, tracks).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from avcache.cache import schema
from avcache.cache.codec import CODECS
from avcache.cache.index import Failure, read_failures
from avcache.cache.remote import Held, RemoteSettings, ShardStore, is_remote
from avcache.cache.shard import DamagedShardError as DamagedShardError
from avcache.cache.shard import ShardReader, check_format
from avcache.common.untrusted import (
    REBUILD,
    CacheFormatError,
    inside,
    integer,
    mapping,
    parse_json,
    printable,
    read_bounded,
    text,
)

# Bytes of the samples Cache.samples_at holds at once: 64 mel-only samples take 4 MiB, while
# one sample at the bounds (64 faces of 1024 px, 16 windows of 250 frames of 256 px) takes
# 457 MiB, so the count of a block alone does not bound its memory.
BLOCK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class ShardFacts:
    """What the first checks of a run need of each shard, so that none opens it twice: from
    the index where it lists them (avcache-preprocess does), else from the shard, opened."""

    codec: str  # how it stores its faces
    unknown: int  # samples without a target (label -1)
    first_unknown: str  # the first of them, `sample P ('NAME')` ("" when none)

    @staticmethod
    def of(shard: ShardReader) -> ShardFacts:
        return ShardFacts(shard.codec, int(shard.unknown_labels.size), shard.first_unknown)

    def to_index(self) -> dict:
        return {"codec": self.codec, "unknown": self.unknown, "first_unknown": self.first_unknown}

    @staticmethod
    def from_index(row: object, at: str, num_samples: int) -> ShardFacts:
        row = mapping(row, at)
        codec = text(row.get("codec"), f"{at}.codec")
        unknown = integer(row.get("unknown"), f"{at}.unknown")
        first = text(row.get("first_unknown"), f"{at}.first_unknown")
        if codec not in CODECS or not 0 <= unknown <= num_samples or bool(first) != bool(unknown):
            raise CacheFormatError(f"{at}: not facts of a shard of {num_samples} samples "
                                   f"({printable(repr(row))}): {REBUILD}")  # fmt: skip
        return ShardFacts(codec, unknown, printable(first))


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
    facts: ShardFacts | None = field(default=None, compare=False)  # as the index lists them
    # A cache on object storage: where `path`'s shard is downloaded from (cache/remote.py).
    store: ShardStore | None = field(default=None, compare=False, repr=False)
    size: int | None = field(default=None, compare=False)  # its bytes in the store

    @property
    def location(self) -> str:
        """Where the shard is kept: its path, or on object storage its URL."""
        if self.store is None:
            return str(self.path)
        return self.store.remote.of(self.store.relative(self.path))

    def hold(self) -> Held:
        """A shard on object storage as a local file, downloaded and checked where it is not
        here, and held (never evicted) until the hold is closed."""
        if self.store is None:
            raise ValueError(f"{self.path}: a local shard; only a remote one is held")
        return self.store.acquire(self.store.relative(self.path), self.sha256, self.size)

    def open(self) -> ShardReader:
        """The shard, checked against this entry; on object storage, downloaded (and checked
        against its sha256) where it is not here, and held while it is open."""
        if self.store is None:
            return ShardReader(self.path, self)
        held = self.hold()
        try:
            return ShardReader(held.path, self, held=held)
        except BaseException:
            held.close()
            raise


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
        self.store: ShardStore | None = None  # a cache on object storage (open_cache)

    @property
    def location(self) -> str:
        """Where the cache is kept: its folder, or on object storage its URL."""
        return str(self.root) if self.store is None else self.store.remote.url

    @property
    def name(self) -> str:
        """The last part of its location: the name its metrics go by by default."""
        return self.root.name if self.store is None else self.location.rsplit("/", 1)[-1]

    def lies_at(self, place: Path | str) -> bool:
        """Whether `place` (a folder or a URL) names this cache."""
        if self.store is not None or is_remote(place):
            return str(place).rstrip("/") == self.location
        return Path(place).resolve() == self.root.resolve()

    @property
    def recorded_location(self) -> str:
        """What a run folder records: the resolved folder, or the URL."""
        return str(self.root.resolve()) if self.store is None else self.location

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
                self._facts[entry.path] = _checked_facts(entry, shard)
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
        """The shard's facts: as opened already, else as the index lists them, else opened."""
        known = self._facts.get(entry.path) or entry.facts
        if known is None:
            with entry.open() as shard:
                known = self._facts[entry.path] = ShardFacts.of(shard)
        return known

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
        if self.store is not None:  # fetched each time: the store's copy is the record
            fetched = self.store.fetch_file(self.store.relative(self._failures))
            return [] if fetched is None else read_failures(fetched)
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
        facts = (
            ShardFacts.from_index(row["facts"], f"{at}.facts", count) if "facts" in row else None
        )
        entries.append(ShardEntry(path, split, count, sha256, frames, face_size, promised, tracks,
                                  facts=facts))  # fmt: skip
    _check_split_totals(index, entries, where)
    return entries


def _checked_facts(entry: ShardEntry, shard: ShardReader) -> ShardFacts:
    """The shard's facts, which the index's (where it lists them) must equal."""
    facts = ShardFacts.of(shard)
    if entry.facts is not None and entry.facts != facts:
        raise CacheFormatError(f"{entry.path}: the index lists facts of it ({entry.facts}) that "
                               f"are not the shard's ({facts}): {REBUILD}")  # fmt: skip
    return facts


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
    return True, schema.bounded_tracks(windows, values, at)


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


def open_cache(path: Path | str, check_shards: bool = True,
               remote: RemoteSettings | None = None) -> Cache:  # fmt: skip
    """Open a cache folder (or its index.json); refuses unknown formats and versions, an
    index that does not fit its schema and (with `check_shards`, the default) shards that
    do not hold what the index says. Every refusal is a CacheFormatError naming the file.
    A URL (s3://bucket/prefix) opens a cache on object storage through `remote`'s local
    folder (default: RemoteSettings.from_env())."""
    if is_remote(path):
        return open_remote_cache(str(path), remote or RemoteSettings.from_env())
    path = Path(path)
    index_path = path / schema.INDEX_FILE if path.is_dir() else path
    if not index_path.exists():
        raise FileNotFoundError(
            f"{index_path}: no cache index here; run avcache-preprocess to build the cache "
            "(an index is written only when a run finishes)"
        )
    index, digest = _read_index(index_path)
    cache = Cache(index_path.parent, index, index_path)
    cache.index_sha256 = digest
    if check_shards:
        cache.check_shards()
    return cache


def open_remote_cache(url: str, remote: RemoteSettings) -> Cache:
    """A cache on object storage: its index fetched into the local folder and checked as a
    local one is; its shards are downloaded when first opened, each checked against the
    sha256 the index lists and then against its entry, as a local shard is when opened. The
    check of every shard at open, which would download them all, is left to those: a copy
    of a shard under two entries is refused by the index's sha256 column alone."""
    store = remote.store(url)
    index_path = store.fetch_index()
    index, digest = _read_index(index_path)
    cache = Cache(store.shard_root, index, index_path)
    cache.index_sha256 = digest
    sizes = store.listing()
    shards = []
    for entry in cache.shards:
        relative = store.relative(entry.path)
        if relative not in sizes:
            raise FileNotFoundError(f"{store.remote.of(relative)}: listed in the index, missing "
                                    f"from the store: {REBUILD}")  # fmt: skip
        shards.append(replace(entry, store=store, size=sizes[relative]))
    cache.shards, cache.store = shards, store
    return cache


def _read_index(index_path: Path) -> tuple[dict, str]:
    """(the index, the sha256 of the very bytes parsed) of an index.json,
    refused where it is not one this version reads. It must lie inside its folder once
    symlinks are followed: an index.json linked out of the cache (to another cache, to any
    file) is never read."""
    data = read_bounded(index_path, "cache index", root=index_path.parent)
    index = mapping(parse_json(data, index_path, "cache index"), str(index_path))
    check_format(str(index_path), index.get("format"), index.get("version"))
    return index, hashlib.sha256(data).hexdigest()
