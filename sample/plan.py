"""What each clip of a sample will be (name, label, source, size, manipulations), all
drawn from the seed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np

from avcache.sample.manipulations import (
    DESYNC,
    FACE_MANIPULATIONS,
    LIP_SYNC,
    VOICE_MANIPULATIONS,
    WORD_LIPS,
    WORD_TTS,
)
from avcache.sample.sources import SELF_TALKING, choose_source

# Bump when the same arguments would produce a different sample (2: a desync moves the
# audio within one continuous recording, and a synthetic voice speaks to both ends of what
# it replaces: no gap of room noise that a real clip would not have; 3: real and synthetic
# speech are both strung together phrase by phrase and cut in at a random point, so a
# clip's leading silence says nothing about its voice).
FORMAT_VERSION = 3
MANIFEST = "sample_manifest.json"  # written last: its presence means the sample is complete
SPLIT_DIRS = {"train": "trainset", "val": "valset", "test": "testset"}
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}  # mixed into the per-clip seeds
LABEL_FILES = {"train": "train_label.txt", "val": "val_label.txt", "test": "test_label_hidden.txt"}
PREDICTION_FILE = "prediction.txt.csv"  # the competition's test list: targets left empty
HEADER = "video_name,target"
DEFAULT_LAYOUT = "ffdv"  # the folders and label files a sample is written in (sample/layouts.py)
DEFAULT_COUNTS = {"train": 200, "val": 60, "test": 60}  # about a minute on 2 cores

CLIP_FRAMES = (50, 80)  # 2 to 3.2 seconds at 25 fps: encoding time grows with length
FRAME_SIZES = ((192, 192), (224, 224), (256, 256), (256, 192), (192, 256), (240, 240))  # (w, h)
AUDIO_RATES = (16000, 22050, 44100)  # the rates found in FFDV-like uploads
AUDIO_CHANNELS = (1, 2)
CRF_RANGE = (20, 29)  # H.264 quality varies like uploads do
X264_PRESET = "superfast"  # encoding dominates the run time; superfast keeps it near a minute

FACE_FRACTION = (0.28, 0.42)  # face box width / frame width: big enough for any detector

# Fake recipes: which families a fake draws from, and how often. Face-only and
# audio-only fakes each make up a share, so a one-modality detector catches part.
FAKE_GROUPS = {("face",): 0.4, ("audio",): 0.4, ("face", "audio"): 0.2}
DESYNC_PROBABILITY = 0.25  # added on top of a recipe, never alone: alone it is often invisible
# Lip-sync fakes (opt-in, --lip-sync) are decided by a generator of their own, keyed by the
# clip's seed and this tag, so that turning them on changes no draw of the plan's stream.
LIP_SYNC_STREAM = 1
# Bump when the same --lip-sync share would make another sample (2: no talking head).
LIP_SYNC_VERSION = 2
# Partial fakes (opt-in, --partial): LAV-DF's few words of a real clip, from a generator of
# their own too. Every clip of such a sample, real or fake, is 4 to 6 s long (LAV-DF's are
# a few seconds to twenty; words replaced in a 2 s clip would be most of it), so that a
# clip's length says nothing about what was done to it.
PARTIAL_STREAM = 2
PARTIAL_VERSION = 1
PARTIAL_FRAMES = (100, 150)
PARTIAL_LIPS = 0.5  # share of partial fakes whose lips are re-driven by the new words


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class ClipSpec:
    """Everything decided about one clip before rendering; the manifest stores these."""

    split: str
    name: str  # 32 hex characters + .mp4, like FFDV
    label: int  # 1 fake, 0 real
    source: str  # portrait name
    kinds: tuple[str, ...]  # manipulations applied; empty for a real clip
    width: int
    height: int
    frames: int
    audio_rate: int
    channels: int
    crf: int
    seed: int  # drives every random choice made while rendering


def clip_name(seed: int, split: str, index: int) -> str:
    """A stable FFDV-looking name: the same seed, split and index give the same name."""
    digest = hashlib.md5(f"avcache-sample:{seed}:{split}:{index}".encode()).hexdigest()
    return f"{digest}.mp4"


def choose_kinds(rng: np.random.Generator) -> tuple[str, ...]:
    groups = list(FAKE_GROUPS)
    weights = np.array(list(FAKE_GROUPS.values()))
    group = groups[rng.choice(len(groups), p=weights / weights.sum())]
    families = {"face": sorted(FACE_MANIPULATIONS), "audio": sorted(VOICE_MANIPULATIONS)}
    kinds = [str(rng.choice(families[family])) for family in group]
    if rng.random() < DESYNC_PROBABILITY:
        kinds.append(DESYNC)
    return tuple(kinds)


def as_lip_sync(spec: ClipSpec, share: float) -> ClipSpec:
    """With probability `share`, a fake becomes a lip-sync fake instead of its recipe: its
    own face and real speech, its mouth driven by other speech. Alone, so that the mismatch
    is its only evidence; on a still face, whose jaw the generator moves.

    Every clip drawn on a face filmed talking (SELF_TALKING) is redrawn among the still
    faces too, real or fake: that face's lips move on their own over speech they do not
    say, so with it a real clip would show the mismatch a lip-sync fake is made of."""
    rng = np.random.default_rng([spec.seed, LIP_SYNC_STREAM])
    chosen = spec.label and rng.random() < share
    return replace(spec, source=still_face(spec.source, rng),
                   kinds=(LIP_SYNC,) if chosen else spec.kinds)  # fmt: skip


def still_face(source: str, rng: np.random.Generator) -> str:
    """`source`, or another drawn among the still faces where it was filmed talking."""
    while source in SELF_TALKING:
        source = choose_source(rng)
    return source


def as_partial(spec: ClipSpec, share: float) -> ClipSpec:
    """With probability `share`, a fake becomes a partial fake instead of its recipe: one to
    three of its words replaced by a synthetic voice (word_tts), its lips re-driven by them
    in PARTIAL_LIPS of them (word_lips). Every clip gets a length drawn from PARTIAL_FRAMES
    and a still face (as as_lip_sync's: a face filmed talking says its own words)."""
    rng = np.random.default_rng([spec.seed, PARTIAL_STREAM])
    chosen = spec.label and rng.random() < share
    kinds = ((WORD_TTS, WORD_LIPS) if rng.random() < PARTIAL_LIPS else (WORD_TTS,)) \
        if chosen else spec.kinds  # fmt: skip
    frames = int(rng.integers(PARTIAL_FRAMES[0], PARTIAL_FRAMES[1] + 1))
    return replace(spec, source=still_face(spec.source, rng), kinds=kinds, frames=frames)


def plan_clip(seed: int, split: str, index: int, label: int, lip_sync: float = 0.0,
              partial: float = 0.0) -> ClipSpec:  # fmt: skip
    # Each clip has its own generator, so its content does not depend on the other counts.
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    width, height = FRAME_SIZES[rng.integers(len(FRAME_SIZES))]
    spec = ClipSpec(
        split=split,
        name=clip_name(seed, split, index),
        label=label,
        source=choose_source(rng),
        kinds=choose_kinds(rng) if label else (),
        width=width,
        height=height,
        frames=int(rng.integers(CLIP_FRAMES[0], CLIP_FRAMES[1] + 1)),
        audio_rate=int(rng.choice(AUDIO_RATES)),
        channels=int(rng.choice(AUDIO_CHANNELS)),
        crf=int(rng.integers(CRF_RANGE[0], CRF_RANGE[1] + 1)),
        seed=int(rng.integers(2**62)),
    )
    spec = as_lip_sync(spec, lip_sync) if lip_sync else spec
    return as_partial(spec, partial) if partial else spec


def plan_sample(seed: int, counts: dict[str, int], lip_sync: float = 0.0,
                partial: float = 0.0) -> list[ClipSpec]:  # fmt: skip
    """All clips of all splits; exactly count // 2 fakes per split, in shuffled order.
    `lip_sync`, `partial`: the shares of fakes (on average) made lip-sync fakes and partial
    fakes (a partial fake drawn over a lip-sync one replaces it); 0 leaves the plan as it
    always was."""
    specs = []
    for split, count in counts.items():
        fakes = np.arange(count) < count // 2
        labels = np.random.default_rng([seed, SPLIT_IDS[split]]).permutation(fakes)
        specs += [plan_clip(seed, split, i, int(fake), lip_sync, partial)
                  for i, fake in enumerate(labels)]  # fmt: skip
    return specs
