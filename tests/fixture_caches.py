"""Caches kept as test fixtures, and how each was made: tests/fixtures/caches/NAME.tar.gz
holds the cache that `avcache-preprocess --config tests/fixtures/CONFIG --data
tests/fixtures/sample --jobs 1 OVERRIDES` wrote at the commit named below.

The v1 and v2 caches come from the releases that wrote those formats (run from a checkout of
that commit: `python -m preprocess.run ...` there). The v3 caches are the reference that this
code's writer must still reproduce (tests/test_fixture_caches.py). Rebuild the current ones
after a deliberate change to what a cache holds:

    python -m tests.fixture_caches             # rewrites the v3 tarballs and weights.json
    python -m tests.fixture_caches --weights   # adds this machine's weights only

Trained weights are bit for bit only on one kind of CPU: torch, oneDNN and MKL choose their
kernels by the instructions a CPU has (AVX2, AVX-512) and, within one such capability, by
the CPU model (two AVX2-only AMD EPYCs trained the convolutions on raw audio to different
weights), and the sums of a different kernel round differently. weights.json keeps, by CPU
capability (torch's name for it), the digest sets of the machines that recorded them; a
machine whose weights match none of its capability's sets records its own with --weights,
beside the others.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SAMPLE = FIXTURES / "sample"  # avcache-sample --layout lav-df --train 2 --val 2 --test 2
WEIGHTS = FIXTURES / "weights.json"
SMALL = ("faces.frames=2", "faces.size=32", "faces.detector=haar")
# The mouth located on every frame, as before tracks.locate_every existed (the v3 caches were
# made then; at 1 the key stays out of their config and hash).
TRACKS = ("tracks.windows=1", "tracks.frames=5", "tracks.size=16", "tracks.locator=facebox",
          "tracks.locate_every=1")  # fmt: skip
RAW = ("faces.codec=raw", "audit.facts=false", "tracks.windows=0")


@dataclass(frozen=True)
class FixtureCache:
    name: str
    version: int
    commit: str  # the commit whose code wrote it ("" : this code, rebuilt by main())
    config: str  # under tests/fixtures/
    overrides: tuple[str, ...]

    @property
    def tarball(self) -> Path:
        return FIXTURES / "caches" / f"{self.name}.tar.gz"

    def extract(self, into: Path) -> Path:
        """The cache unpacked under `into`; its folder (the archive's one top folder)."""
        with tarfile.open(self.tarball) as archive:
            archive.extractall(into, filter="data")
            top = archive.getnames()[0].split("/")[0]
        return into / top

    def make(self, out: Path) -> None:
        """The cache as this code writes it, from the fixture sample."""
        command = [sys.executable, "-m", "avcache.preprocess.run", "--config",
                   str(FIXTURES / self.config), "--data", str(SAMPLE), "--out", str(out),
                   "--jobs", "1", "--quiet", *self.overrides]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]


CACHES = (
    FixtureCache("v1-raw", 1, "eb0557d", "ffdv.yaml", SMALL),
    FixtureCache("v2-jpeg", 2, "744c003", "ffdv.yaml", SMALL),
    # Every optional part: JPEG faces, mouth tracks, audit facts, kinds and segments; as the
    # release before one decode served the faces and the windows wrote it, and as this code does.
    FixtureCache("v3-lavdf-e2e0269", 3, "e2e0269", "lav-df.yaml", (*SMALL, *TRACKS)),
    FixtureCache("v3-lavdf", 3, "", "lav-df.yaml", (*SMALL, *TRACKS)),
    FixtureCache("v3-raw", 3, "", "ffdv.yaml", (*SMALL, *RAW)),
)
CURRENT = tuple(cache for cache in CACHES if not cache.commit)
# Each model kind trained briefly on v3-lavdf (it holds every field): the weights' digest.
KINDS = ("audio", "faces", "av", "lips", "speech", "sync", "all")
TRAINING = ["run.epochs=1", "data.batch_size=2", "model.mel_size=32", "run.threads=1",
            "data.workers=0", "run.seed=0"]  # fmt: skip


def train(cache: Path, kind: str, out: Path) -> None:
    command = [sys.executable, "-m", "avcache.train.run", "--cache", str(cache), "--out",
               str(out), f"model.kind={kind}", *TRAINING]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def weights_digest(checkpoint: Path) -> str:
    """sha256 over the model's tensors, by name, as stored (bit for bit)."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def cpu_capability() -> str:
    """torch's name for the instructions its CPU kernels use here (AVX2, AVX512, ...)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def reference_weights() -> list[dict[str, str]]:
    """The digest sets (kind -> digest) recorded for this machine's CPU capability, one a
    machine that recorded them ([]: none recorded)."""
    return json.loads(WEIGHTS.read_text()).get(cpu_capability(), [])


def record_weights(scratch: Path) -> None:
    """Train each kind on the v3-lavdf tarball; its digests join this capability's sets
    (unless a set already holds them all)."""
    (lavdf,) = (cache for cache in CURRENT if cache.name == "v3-lavdf")
    cache = lavdf.extract(scratch)
    digests = {}
    for kind in KINDS:
        train(cache, kind, scratch / f"run-{kind}")
        digests[kind] = weights_digest(scratch / f"run-{kind}" / "last.pt")
    recorded = json.loads(WEIGHTS.read_text()) if WEIGHTS.exists() else {}
    sets = recorded.setdefault(cpu_capability(), [])
    if digests not in sets:
        sets.append(digests)
    WEIGHTS.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", action="store_true",
                        help="only record this CPU capability's weight digests")  # fmt: skip
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if not args.weights:
            WEIGHTS.unlink(missing_ok=True)  # new caches: every recorded digest is stale
            for cache in CURRENT:
                cache.make(scratch / cache.name)
                (scratch / cache.name / ".lock").unlink(missing_ok=True)
                with tarfile.open(cache.tarball, "w:gz") as archive:
                    archive.add(scratch / cache.name, arcname=cache.name)
        record_weights(scratch / "weights")
    return 0


if __name__ == "__main__":
    sys.exit(main())
