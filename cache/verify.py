"""Check a cache against its index: every shard present, intact and well-formed.

A shard is intact when its sha256 matches the index and every sample of `mel` and
`faces` matches its stored per-sample sum; the sums also say which samples are damaged.
"""

from __future__ import annotations

import numpy as np

from avcache.cache.reader import Cache, CacheFormatError, ShardEntry, ShardReader
from avcache.cache.writer import sha256_of
from avcache.common.untrusted import regular_file

VERIFY_BYTES = 16 * 2**20  # bytes read per h5py call when checking sums: bounded memory


def verify_cache(cache: Cache) -> list[str]:
    """Problems found, one line each naming the shard; empty when the cache is sound."""
    problems = []
    for entry in cache.shards:
        problem = _verify_remote_shard(entry) if entry.store else _verify_shard(entry)
        if problem:
            problems.append(f"{entry.location}: {problem}")
    return problems


def _verify_remote_shard(entry: ShardEntry) -> str | None:
    """A shard on object storage: downloaded afresh (the store's copy is the one checked;
    its sha256 on the way), then read."""
    entry.store.discard(entry.store.relative(entry.path))
    try:
        with entry.open() as shard:
            return "; ".join(_damaged_samples(shard)) or None
    except FileNotFoundError:
        return "missing from the store"
    except CacheFormatError as error:  # its message names the shard: once is enough
        return str(error).split(": ", 1)[-1]


def _verify_shard(entry: ShardEntry) -> str | None:
    try:
        regular_file(entry.path, "shard")
    except FileNotFoundError:
        return "missing"
    except CacheFormatError as error:
        return str(error).removeprefix(f"{entry.path}: ")
    problems = []
    digest = sha256_of(entry.path)
    if digest != entry.sha256:
        problems.append(
            f"sha256 {digest[:12]}… does not match the index ({entry.sha256[:12]}…): damaged"
        )
    try:
        with entry.open() as shard:  # format, schema, storage, counts, split, faces
            problems += _damaged_samples(shard)
    except CacheFormatError as error:  # its message names the shard: once is enough
        problems.append(str(error).removeprefix(f"{entry.path}: "))
    return "; ".join(problems) or None


def _damaged_samples(shard: ShardReader) -> list[str]:
    """Every checksummed dataset read in blocks; each that has damaged samples, described."""
    problems = []
    for name in shard.checked_datasets:
        row_bytes = int(np.prod(shard.sample_shape(name))) * shard.dtype(name).itemsize
        step = max(1, VERIFY_BYTES // max(row_bytes, 1))
        bad = [shard.mismatches(name, start, start + step) for start in range(0, len(shard), step)]
        positions = np.concatenate([np.empty(0, np.int64), *bad])
        if positions.size:
            problems.append(shard.describe_damage(name, positions))
    return problems
