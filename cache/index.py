"""index.json and per-shard receipts: what is finished, and how to check it.

A receipt (`<shard>.json`) is written right after its shard is renamed into
place, so a receipt whose shard exists marks a finished shard; a resumed run
keeps those. `index.json` is assembled from the receipts and written last: it
is the commit point of the whole cache and lists only finished shards.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cache import schema


@dataclass
class Failure:
    """A video that could not be cached, and why."""

    split: str
    video_name: str
    stage: str  # resolve, decode, audio, faces
    error: str


@dataclass
class ShardRecord:
    """A finished shard as listed in the index (path relative to the cache root)."""

    path: str
    split: str
    num_samples: int
    sha256: str
    plan_hash: str = ""
    failures: list[Failure] = field(default_factory=list)

    def index_entry(self) -> dict:
        """The public index fields of this shard."""
        return {
            "path": self.path,
            "split": self.split,
            "num_samples": self.num_samples,
            "sha256": self.sha256,
        }


def write_json_atomic(path: Path, payload: dict | list) -> None:
    """Write JSON under a temporary name, fsync, rename: readers never see half a file."""
    partial = schema.partial_path(path)
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1, ensure_ascii=False, sort_keys=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def receipt_path(shard_path: Path) -> Path:
    return shard_path.with_suffix(schema.RECEIPT_SUFFIX)


def write_receipt(root: Path, record: ShardRecord) -> None:
    write_json_atomic(receipt_path(root / record.path), asdict(record))


def read_receipt(root: Path, shard_rel_path: str) -> ShardRecord | None:
    """The receipt of a finished shard, or None if the shard is not finished."""
    shard = root / shard_rel_path
    receipt = receipt_path(shard)
    if not (shard.is_file() and receipt.is_file()):
        return None
    try:
        payload = json.loads(receipt.read_text(encoding="utf-8"))
        payload["failures"] = [Failure(**item) for item in payload.get("failures", [])]
        return ShardRecord(**payload)
    except (ValueError, TypeError):
        return None  # a damaged receipt means the shard is redone


def build_index(config: dict, config_hash: str, records: list[ShardRecord]) -> dict:
    """The index.json payload; no timestamps, so equal caches have equal indexes."""
    splits: dict[str, dict[str, int]] = {}
    for record in records:
        counts = splits.setdefault(record.split, {"shards": 0, "samples": 0, "failed": 0})
        counts["shards"] += 1
        counts["samples"] += record.num_samples
        counts["failed"] += len(record.failures)
    return {
        "format": schema.FORMAT,
        "version": schema.VERSION,
        "config_hash": config_hash,
        "config": config,
        "splits": splits,
        "failures": schema.FAILURES_FILE,
        "shards": [record.index_entry() for record in records],
    }


def write_failures(path: Path, records: list[ShardRecord]) -> None:
    """All failures as JSON lines, in plan order (the same for every run of a plan)."""
    partial = schema.partial_path(path)
    with open(partial, "w", encoding="utf-8") as handle:
        for record in records:
            for failure in record.failures:
                handle.write(json.dumps(asdict(failure), ensure_ascii=False) + "\n")
    os.replace(partial, path)


def read_failures(path: Path) -> list[Failure]:
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [Failure(**json.loads(line)) for line in lines if line.strip()]
