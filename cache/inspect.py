"""inspect: look at a cache. `inspect CACHE` summarises it; `inspect CACHE verify` checks it.

inspect CACHE            per split: shards, samples, real/fake, failures, bytes
inspect CACHE verify     recompute every shard's sha256 and check its schema and counts
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from cache import schema
from cache.reader import Cache, CacheFormatError, ShardReader, open_cache
from cache.verify import verify_cache


def summary_lines(cache: Cache) -> list[str]:
    """A few lines per split: counts, labels, failures and size on disk."""
    failures = cache.failures()
    lines = [f"cache {cache.root} (format v{schema.VERSION}, config {cache.config_hash})"]
    for split in cache.splits:
        labels: Counter[int] = Counter()
        no_audio = 0
        for entry in cache.shards_of(split):
            with ShardReader(entry.path) as shard:
                labels.update(shard.read(schema.LABEL).tolist())
                no_audio += int((~shard.read(schema.HAS_AUDIO)).sum())
        size = sum(entry.path.stat().st_size for entry in cache.shards_of(split))
        failed = Counter(f.stage for f in failures if f.split == split)
        lines.append(
            f"  {split}: {cache.num_samples(split)} samples in {len(cache.shards_of(split))} "
            f"shards ({size / 2**20:.1f} MiB); real {labels[schema.LABEL_REAL]}, "
            f"fake {labels[schema.LABEL_FAKE]}, unknown {labels[schema.LABEL_UNKNOWN]}; "
            f"without audio {no_audio}; failed {sum(failed.values())} {dict(failed) or ''}"
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="inspect", description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path, help="cache folder (holding index.json)")
    parser.add_argument("command", nargs="?", default="summary", choices=["summary", "verify"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cache = open_cache(args.cache)
    except (FileNotFoundError, CacheFormatError) as error:
        print(f"inspect: error: {error}", file=sys.stderr)
        return 2
    if args.command == "verify":
        problems = verify_cache(cache)
        for problem in problems:
            print(f"DAMAGED {problem}", file=sys.stderr)
        print(f"verified {len(cache.shards)} shards: {len(problems)} damaged")
        return 1 if problems else 0
    print("\n".join(summary_lines(cache)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
