"""index.json and per-shard receipts: what is finished, and how to check it.

A receipt (`<shard>.json`) is written right after its shard is renamed into
place, so a receipt whose shard exists marks a finished shard; a resumed run
keeps those. `index.json` is assembled from the receipts and written last: it
is the commit point of the whole cache and lists only finished shards.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from avcache.cache import schema
from avcache.common.atomic import atomic_path, write_json_atomic
from avcache.common.untrusted import (
    CacheFormatError,
    integer,
    load_json,
    mapping,
    no_constant,
    regular_file,
    text,
)


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
    # What the first checks of a run need of the shard (cache/reader.py ShardFacts), so that
    # they need not open it: a cache on object storage would download every shard for them.
    facts: dict | None = None

    def index_entry(self) -> dict:
        """The public index fields of this shard."""
        entry = {
            "path": self.path,
            "split": self.split,
            "num_samples": self.num_samples,
            "sha256": self.sha256,
        }
        return entry if self.facts is None else {**entry, "facts": self.facts}


def receipt_path(shard_path: Path) -> Path:
    return shard_path.with_suffix(schema.RECEIPT_SUFFIX)


def write_receipt(root: Path, record: ShardRecord) -> None:
    write_json_atomic(receipt_path(root / record.path), asdict(record))


def read_receipt(root: Path, shard_rel_path: str) -> ShardRecord | None:
    """The receipt of a finished shard, or None if the shard is not finished (or its
    receipt is damaged or does not describe this very shard: then the shard is redone)."""
    if not (root / shard_rel_path).is_file():
        return None
    return receipt_of(root, shard_rel_path)


def receipt_of(root: Path, shard_rel_path: str) -> ShardRecord | None:
    """The receipt of the shard at `shard_rel_path`, wherever the shard itself is (None where
    there is none, or it is damaged or describes another shard)."""
    receipt = receipt_path(root / shard_rel_path)
    if not receipt.is_file():
        return None
    try:
        payload = load_json(receipt, "receipt", root=root)  # a receipt linked out is not read
        record = _record(mapping(payload, str(receipt)), str(receipt))
    except (CacheFormatError, OSError):
        return None
    return record if record.path == shard_rel_path else None


def _record(payload: dict, where: str) -> ShardRecord:
    failures = payload.get("failures", [])
    if not isinstance(failures, list):
        raise CacheFormatError(f"{where}: 'failures' is not a list")
    return ShardRecord(
        path=text(payload.get("path"), f"{where}: path"),
        split=text(payload.get("split"), f"{where}: split"),
        num_samples=integer(payload.get("num_samples"), f"{where}: num_samples"),
        sha256=text(payload.get("sha256"), f"{where}: sha256"),
        plan_hash=text(payload.get("plan_hash", ""), f"{where}: plan_hash"),
        failures=[failure_of(item, where) for item in failures],
        facts=_facts(payload.get("facts"), where),
    )


def _facts(facts: object, where: str) -> dict | None:
    """A receipt's facts of its shard (cache/reader.py ShardFacts checks their fields where the
    index is read); None where it has none (written before receipts had them)."""
    return None if facts is None else mapping(facts, f"{where}: facts")


def failure_of(item: object, where: str) -> Failure:
    """A Failure from its JSON object, every field a string."""
    item = mapping(item, f"{where}: the record")
    fields = Failure.__dataclass_fields__
    if set(item) != set(fields):
        raise CacheFormatError(f"{where}: a failure holds exactly {', '.join(fields)}")
    return Failure(**{name: text(item[name], f"{where}: {name}") for name in fields})


def build_index(config: dict, config_hash: str, records: list[ShardRecord],
                mel: dict | None = None) -> dict:  # fmt: skip
    """The index.json payload; no timestamps, so equal caches have equal indexes. `mel`:
    how the mel images were made (preprocess/audio.py mel_settings), where known."""
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
        **({"mel": mel} if mel is not None else {}),
    }


def write_failures(path: Path, records: list[ShardRecord]) -> None:
    """All failures as JSON lines, in plan order (the same for every run of a plan)."""
    with atomic_path(path) as partial, open(partial, "w", encoding="utf-8") as handle:
        for record in records:
            for failure in record.failures:
                handle.write(json.dumps(asdict(failure), ensure_ascii=False) + "\n")


MAX_FAILURES_BYTES = 2**30  # ~2 million failures with long ffmpeg reasons


def read_failures(path: Path) -> list[Failure]:
    """failures.jsonl (none when absent); a malformed line is refused, naming its number."""
    try:
        size = regular_file(path, "failures file").st_size
    except FileNotFoundError:
        return []
    if size > MAX_FAILURES_BYTES:
        raise CacheFormatError(f"{path}: {size} bytes, over the {MAX_FAILURES_BYTES} allowed")
    failures = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                failures.append(_failure_line(line, f"{path}:{number}"))
    return failures


def _failure_line(line: str, where: str) -> Failure:
    try:
        item = json.loads(line, parse_constant=no_constant)
    except ValueError as error:
        raise CacheFormatError(f"{where}: not a JSON failure record ({error})") from None
    except RecursionError:
        raise CacheFormatError(f"{where}: nests too deeply to be a failure record") from None
    return failure_of(item, where)
