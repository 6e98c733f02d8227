"""Caches of every format version stay readable, this writer still writes the caches it
wrote before, and each model kind still trains to the same weights (tests/fixture_caches.py
says how the fixtures were made)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from avcache.cache import open_cache, schema
from avcache.cache.verify import verify_cache
from avcache.common.lock import LOCK_FILE
from tests.fixture_caches import (
    CACHES,
    CURRENT,
    KINDS,
    SAMPLE,
    cpu_capability,
    reference_weights,
    train,
    weights_digest,
)

pytestmark = pytest.mark.slow


def labelled_videos(split: str) -> dict[str, int]:
    """The fixture sample's own labels of a split (its metadata.json, in LAV-DF's layout)."""
    split = {"val": "dev"}.get(split, split)
    entries = json.loads((SAMPLE / "metadata.json").read_text())
    return {entry["file"]: int(entry["n_fakes"] > 0) for entry in entries
            if entry["split"] == split}  # fmt: skip


@pytest.mark.parametrize("fixture", CACHES, ids=lambda cache: cache.name)
def test_a_cache_of_every_version_reads_and_verifies(fixture, tmp_path):
    cache = open_cache(fixture.extract(tmp_path))
    for entry in cache.shards:
        with entry.open() as shard:
            assert shard.version == fixture.version
    assert verify_cache(cache) == []
    for split in ("train", "val", "test"):
        expected = labelled_videos(split)
        samples = list(cache.iter_samples(split))
        # FFDV lists name a video by its file name, LAV-DF by its path from the data root.
        named = {sample.video_name: sample.label for sample in samples}
        assert named == expected or named == {Path(n).name: v for n, v in expected.items()}
        for sample in samples:
            assert sample.mel.shape == (schema.MEL_SIZE, schema.MEL_SIZE)
            assert sample.faces.shape == (2, 32, 32, 3)


def h5_contents(path: Path) -> dict:
    """Every dataset (dtype, shape, chunks, values) and attribute of a shard."""
    contents = {}
    with h5py.File(path, "r") as shard:
        contents["attrs"] = {key: np.asarray(value).tolist() for key, value in shard.attrs.items()}
        for name, dataset in shard.items():
            values = dataset[()]
            if dataset.dtype.kind == "O":
                values = [value.decode() if isinstance(value, bytes) else value
                          for value in values.tolist()]  # fmt: skip
            else:
                values = values.tobytes()
            contents[name] = (str(dataset.dtype), dataset.shape, dataset.chunks, values,
                              dict(dataset.attrs))  # fmt: skip
    return contents


def folder_contents(root: Path) -> dict[str, object]:
    """A cache folder as comparable values: shards by content, receipts without the shard
    file's sha256 (HDF5 may lay equal contents out otherwise), other files byte for byte."""
    contents = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_dir() or path.name == LOCK_FILE:
            continue
        if path.suffix == schema.SHARD_SUFFIX:
            contents[relative] = h5_contents(path)
        elif path.parent.parent.name == schema.SHARDS_DIR and path.suffix == ".json":
            receipt = json.loads(path.read_text())
            receipt.pop("sha256")
            contents[relative] = receipt
        else:
            contents[relative] = path.read_bytes()
    return contents


@pytest.mark.parametrize("fixture", CURRENT, ids=lambda cache: cache.name)
def test_this_writer_writes_the_reference_cache_again(fixture, tmp_path):
    reference = folder_contents(fixture.extract(tmp_path / "reference"))
    fixture.make(tmp_path / "made")
    made = folder_contents(tmp_path / "made")
    assert sorted(made) == sorted(reference)
    for name in reference:
        if isinstance(reference[name], dict) and name.endswith(schema.SHARD_SUFFIX):
            assert sorted(made[name]) == sorted(reference[name]), name
            for key in reference[name]:
                assert made[name][key] == reference[name][key], f"{name}: {key}"
        else:
            assert made[name] == reference[name], name


@pytest.fixture(scope="module")
def full_cache(tmp_path_factory) -> Path:
    (lavdf,) = (cache for cache in CURRENT if cache.name == "v3-lavdf")
    return lavdf.extract(tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("kind", KINDS)
def test_each_model_kind_trains_to_the_reference_weights(kind, full_cache, tmp_path):
    """One epoch, seed 0, one thread, on the CPU: bit for bit what this kind trained to
    when the fixtures were made, on a machine whose kernels round as this one's do (the same
    torch, a CPU of the same capability and kernels; python -m tests.fixture_caches to
    renew, --weights to add this machine's)."""
    references = reference_weights()
    if not references:
        pytest.skip(
            f"no weights recorded for CPU capability {cpu_capability()} (bit-exact "
            "only on one): python -m tests.fixture_caches --weights records them"
        )
    train(full_cache, kind, tmp_path / "run")
    digest = weights_digest(tmp_path / "run" / "last.pt")
    assert digest in {reference[kind] for reference in references}, (
        f"{kind} trained to {digest}, none of the {len(references)} set(s) recorded for "
        f"{cpu_capability()}: a change to training, or a CPU whose kernels round otherwise "
        "(python -m tests.fixture_caches --weights adds its set)"
    )
