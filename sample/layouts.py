"""The folders and label files a sample is written in: FFDV's (the default) or LAV-DF's.

Both hold the same clips, byte for byte, under the names each data set gives them. LAV-DF's
published layout is `train/`, `dev/` and `test/` holding the videos and one `metadata.json`
at the root: a list with an entry per video (the keys of its `metadata.min.json`, the file
LAV-DF's own loader reads), labels of the test split included. The entries say what the
generator did: which of picture and sound it manipulated, and when.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from avcache.common.atomic import write_json_atomic
from avcache.sample.manipulations import (
    DESYNC,
    FACE_MANIPULATIONS,
    MOUTH_MANIPULATIONS,
    SOUND_EDITS,
)
from avcache.sample.plan import SPLIT_DIRS, ClipSpec
from avcache.sample.render import Span, ffdv_file, write_lists
from avcache.sample.sources import FPS

Changes = dict[str, dict[str, list[Span]]]  # clip name -> manipulation -> the spans it changed


@dataclass(frozen=True)
class SampleLayout:
    """Where a sample's clips lie and how they are labelled."""

    folders: dict[str, str]  # the plan's split -> the folder holding its clips
    rename: Callable[[list[ClipSpec]], list[ClipSpec]]  # the names the data set gives clips
    file_of: Callable[[ClipSpec], str]  # a clip's path relative to the data root
    write_labels: Callable[[Path, list[ClipSpec], Changes], None]


def as_planned(specs: list[ClipSpec]) -> list[ClipSpec]:
    return specs


def write_ffdv_lists(out: Path, specs: list[ClipSpec], changes: Changes) -> None:
    """FFDV's lists carry labels only: when a clip was changed is not theirs to say."""
    write_lists(out, specs)


# --------------------------------------------------------------------------- LAV-DF

LAVDF_SPLITS = {"train": "train", "val": "dev", "test": "test"}  # its folders too
METADATA = "metadata.json"

# What each manipulation changes, as LAV-DF's modify_video and modify_audio flag it. A
# lip-sync re-drives the mouth: the picture. A desync plays the sound track off its
# picture, both real: the sound is what no longer belongs (it is never a fake's only change).
VIDEO, AUDIO = "video", "audio"
MODALITY = {
    **dict.fromkeys(FACE_MANIPULATIONS, VIDEO),
    **dict.fromkeys(MOUTH_MANIPULATIONS, VIDEO),
    **dict.fromkeys(SOUND_EDITS, AUDIO),
    DESYNC: AUDIO,
}


def lavdf_names(specs: list[ClipSpec]) -> list[ClipSpec]:
    """LAV-DF's names: six digits numbered across the whole data set (each number once),
    under the split's folder: train/000000.mp4, ..., dev/000006.mp4, ..."""
    return [replace(spec, name=f"{LAVDF_SPLITS[spec.split]}/{number:06d}.mp4")
            for number, spec in enumerate(specs)]  # fmt: skip


def lavdf_file(spec: ClipSpec) -> str:
    return spec.name  # the name is the path, as LAV-DF's `file` gives it


def merged(spans: Iterable[Span]) -> list[list[float]]:
    """Spans that overlap or touch joined into one: LAV-DF lists each fake period once."""
    periods: list[list[float]] = []
    for start, end in sorted(spans):
        if periods and start <= periods[-1][1]:
            periods[-1][1] = max(periods[-1][1], end)
        else:
            periods.append([start, end])
    return periods


def lavdf_entry(spec: ClipSpec, changed: dict[str, list[Span]]) -> dict:
    """One clip as LAV-DF's metadata lists a video, from what the generator did to it."""
    periods = merged(span for spans in changed.values() for span in spans)
    modified = {MODALITY[kind] for kind in spec.kinds}
    return {
        "file": spec.name,
        "n_fakes": len(periods),
        "fake_periods": periods,
        "duration": spec.frames / FPS,
        "original": None,  # a fake is filmed from the packaged media, not from another clip
        "modify_video": VIDEO in modified,
        "modify_audio": AUDIO in modified,
        "split": LAVDF_SPLITS[spec.split],
        "video_frames": spec.frames,
        "audio_channels": spec.channels,
        # samples of the sound track at its own rate, as the mp4 states its length
        "audio_frames": spec.frames * spec.audio_rate // FPS,
    }


def write_lavdf_metadata(out: Path, specs: list[ClipSpec], changes: Changes) -> None:
    write_json_atomic(out / METADATA, [lavdf_entry(spec, changes[spec.name]) for spec in specs])


LAYOUTS = {
    "ffdv": SampleLayout(SPLIT_DIRS, as_planned, ffdv_file, write_ffdv_lists),
    "lav-df": SampleLayout(LAVDF_SPLITS, lavdf_names, lavdf_file, write_lavdf_metadata),
}
