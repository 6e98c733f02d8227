"""Check a cache against its index: every shard present, intact and well-formed."""

from __future__ import annotations

from cache.reader import Cache, CacheFormatError, ShardReader
from cache.writer import sha256_of


def verify_cache(cache: Cache) -> list[str]:
    """Problems found, one line each naming the shard; empty when the cache is sound."""
    problems = []
    for entry in cache.shards:
        problem = _verify_shard(entry)
        if problem:
            problems.append(f"{entry.path}: {problem}")
    return problems


def _verify_shard(entry) -> str | None:
    if not entry.path.is_file():
        return "missing"
    digest = sha256_of(entry.path)
    if digest != entry.sha256:
        return f"sha256 {digest[:12]}… does not match the index ({entry.sha256[:12]}…): damaged"
    try:
        with ShardReader(entry.path) as shard:
            if len(shard) != entry.num_samples:
                return f"holds {len(shard)} samples, the index says {entry.num_samples}"
            if shard.split != entry.split:
                return f"split {shard.split!r}, the index says {entry.split!r}"
    except CacheFormatError as error:
        return str(error)
    return None
