"""Replicas of the published layouts of audio-visual deepfake data sets, for the tests: the
label files as each data set publishes them, and a real short clip for every video listed.

Each writer lays one data set out in its own folder of a data root and returns what a cache
of it must hold (`Listed`) and the config of its splits (`splits:` entries of the
preprocessing config, paths relative to the data root).
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.media import ffmpeg

FAKE, REAL = 1, 0


@dataclass(frozen=True)
class Listed:
    """One video a replica lists, as the cache must hold it."""

    split: str  # the cache's split
    name: str  # its video_name
    label: int
    kind: str | None
    segments: tuple[tuple[float, float], ...] | None


def clip(path: Path, seconds: float = 1.0) -> Path:
    """A real short video: a test pattern with a tone (H.264 + AAC in MP4)."""
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=s=64x48:r=25:d={seconds}",
           "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=16000:d={seconds}",
           "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
           "-c:a", "aac", str(path))  # fmt: skip
    return path


def place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


# FakeAVCeleb v1.2's meta_data.csv: the header names nine columns and ends with a comma; each
# row holds the file name under `path` and its folder (from the release's top folder) after it.
FAKEAVCELEB_HEADER = "source,target1,target2,method,category,type,race,gender,path,"
FAKEAVCELEB_ROWS = [  # (source, target1, target2, method, category, type, file)
    ("id00076", "-", "-", "real", "A", "RealVideo-RealAudio", "00109.mp4"),
    ("id00076", "-", "-", "rtvc", "B", "RealVideo-FakeAudio", "00109_fake.mp4"),
    ("id00076", "id00166", "-", "faceswap", "C", "FakeVideo-RealAudio", "00109_10_faceswap.mp4"),
    ("id00076", "id00166", "5", "fsgan-wav2lip", "D", "FakeVideo-FakeAudio", "00109_5_lip.mp4"),
]


def fakeavceleb_rows(rows=FAKEAVCELEB_ROWS) -> list[str]:
    """meta_data.csv lines of the published shape."""
    return [FAKEAVCELEB_HEADER] + [
        f"{src},{t1},{t2},{method},{cat},{kind},African,men,{file},"
        f"FakeAVCeleb/{kind}/African/men/{src}"
        for src, t1, t2, method, cat, kind, file in rows
    ]


def fakeavceleb(root: Path, source: Path) -> tuple[list[Listed], dict]:
    folder = root / "fakeavceleb"
    folder.mkdir()
    (folder / "meta_data.csv").write_text("\n".join(fakeavceleb_rows()) + "\n")
    listed = []
    for src, _, _, method, _, kind, file in FAKEAVCELEB_ROWS:
        name = f"{kind}/African/men/{src}/{file}"
        place(source, folder / name)
        label = REAL if kind == "RealVideo-RealAudio" else FAKE
        listed.append(Listed("favc", name, label, kind if method == "real" else f"{kind}/{method}",
                             None))  # fmt: skip
    config = {"favc": {"layout": "fakeavceleb", "labels": "fakeavceleb/meta_data.csv",
                       "videos": ["fakeavceleb"]}}  # fmt: skip
    return listed, config


# LAV-DF's metadata.json: one list for every split, files under train/, dev/, test/.
LAVDF_ENTRIES = [  # (file, split, fake periods, modify_video, modify_audio)
    ("train/000000.mp4", "train", [], False, False),
    ("train/000001.mp4", "train", [[0.2, 0.5]], True, False),
    ("train/000002.mp4", "train", [[0.1, 0.3], [0.6, 0.9]], True, True),
    ("dev/000003.mp4", "dev", [[0.4, 0.8]], False, True),
    ("dev/000004.mp4", "dev", [], False, False),
    ("test/000005.mp4", "test", [[0.0, 0.25]], True, True),
]
LAVDF_KINDS = {(False, False): "real", (True, False): "video", (False, True): "audio",
               (True, True): "audio+video"}  # fmt: skip


def lavdf_entry(file: str, split: str, periods: list, video: bool, audio: bool) -> dict:
    return {"file": file, "n_fakes": len(periods), "fake_periods": periods, "duration": 1.0,
            "original": None if not periods else "train/000000.mp4", "modify_video": video,
            "modify_audio": audio, "split": split, "video_frames": 25, "audio_channels": 1,
            "audio_frames": 16000}  # fmt: skip


def lavdf(root: Path, source: Path) -> tuple[list[Listed], dict]:
    folder = root / "lavdf"
    folder.mkdir()
    entries = [lavdf_entry(*entry) for entry in LAVDF_ENTRIES]
    (folder / "metadata.json").write_text(json.dumps(entries))
    listed = []
    for file, split, periods, video, audio in LAVDF_ENTRIES:
        place(source, folder / file)
        if split in ("train", "dev"):
            kind, label = LAVDF_KINDS[video, audio], FAKE if periods else REAL
            listed.append(Listed(f"lavdf_{split}", file, label, kind, tuple(map(tuple, periods))))
    config = {
        f"lavdf_{split}": {"layout": "lav-df", "labels": "lavdf/metadata.json",
                           "videos": ["lavdf"], "select": {"split": [split]}}
        for split in ("train", "dev")
    }  # fmt: skip
    return listed, config


# AV-Deepfake1M: <split>_metadata.json per split, files relative to the split's folder.
AV1M_ENTRIES = {  # split -> (file, fake segments, modify_type)
    "train": [
        ("lrs3/id01/00001/real.mp4", [], "real"),
        ("lrs3/id01/00001/fake_video_fake_audio.mp4", [[0.3, 0.6]], "both_modified"),
        ("lrs3/id02/00007/fake_video_real_audio.mp4", [[0.1, 0.2], [0.5, 0.7]], "visual_modified"),
    ],
    "val": [
        ("lrs3/id03/00002/real.mp4", [], "real"),
        ("lrs3/id03/00002/real_video_fake_audio.mp4", [[0.0, 0.4]], "audio_modified"),
    ],
}
AV1M_KINDS = {"real": "real", "visual_modified": "video", "audio_modified": "audio",
              "both_modified": "audio+video"}  # fmt: skip


def av1m_entry(file: str, segments: list, modify_type: str, split: str) -> dict:
    return {"file": file, "original": None if not segments else file.rsplit("/", 1)[0],
            "split": split, "fake_segments": segments, "visual_fake_segments": segments,
            "audio_fake_segments": [], "modify_type": modify_type, "audio_model": "vits",
            "video_frames": 25, "audio_frames": 16000}  # fmt: skip


def av1m(root: Path, source: Path) -> tuple[list[Listed], dict]:
    folder = root / "av1m"
    folder.mkdir()
    listed, config = [], {}
    for split, entries in AV1M_ENTRIES.items():
        metadata = [av1m_entry(*entry, split) for entry in entries]
        (folder / f"{split}_metadata.json").write_text(json.dumps(metadata, indent=1))
        for file, segments, modify_type in entries:
            place(source, folder / split / file)
            listed.append(Listed(f"av1m_{split}", file, FAKE if segments else REAL,
                                 AV1M_KINDS[modify_type], tuple(map(tuple, segments))))  # fmt: skip
        config[f"av1m_{split}"] = {"layout": "av-deepfake1m",
                                   "labels": f"av1m/{split}_metadata.json",
                                   "videos": [f"av1m/{split}"]}  # fmt: skip
    return listed, config


# DFDC: dfdc_train_part_N/metadata.json, the videos beside it.
DFDC_PARTS = {
    0: {"aaqaifqrwn.mp4": ("FAKE", "vpmyeepbep.mp4"), "vpmyeepbep.mp4": ("REAL", None)},
    10: {"bbhtdfuqxq.mp4": ("FAKE", "wynotylpnm.mp4"), "wynotylpnm.mp4": ("REAL", None)},
}


def dfdc_metadata(entries: dict) -> dict:
    metadata = {}
    for name, (label, original) in entries.items():
        metadata[name] = {"label": label, "split": "train"}
        if original:
            metadata[name]["original"] = original
    return metadata


def dfdc(root: Path, source: Path) -> tuple[list[Listed], dict]:
    listed = []
    for part, entries in DFDC_PARTS.items():
        folder = root / "dfdc" / f"dfdc_train_part_{part}"
        folder.mkdir(parents=True)
        (folder / "metadata.json").write_text(json.dumps(dfdc_metadata(entries)))
        for name, (label, _) in entries.items():
            place(source, folder / name)
            name_from_root = f"dfdc/dfdc_train_part_{part}/{name}"
            value = FAKE if label == "FAKE" else REAL
            listed.append(Listed("dfdc", name_from_root, value, label.lower(), None))
    config = {"dfdc": {"layout": "dfdc", "labels": "dfdc/dfdc_train_part_*/metadata.json",
                       "videos": ["."]}}  # fmt: skip
    return listed, config


# A plain CSV: path,label with optional kind and split columns.
CSV_ROWS = [  # (path, label, kind, split)
    ("clips/a.mp4", "fake", "lipsync", "train"),
    ("clips/b.mp4", "0", "real", "train"),
    ("clips/c.mp4", "1", "faceswap", "test"),
]


def plain_csv(root: Path, source: Path) -> tuple[list[Listed], dict]:
    folder = root / "plain"
    folder.mkdir()
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "kind", "split"])
        writer.writerows(CSV_ROWS)
    listed = []
    for path, label, kind, split in CSV_ROWS:
        place(source, folder / path)
        if split == "train":
            listed.append(Listed("csv", path, FAKE if label in ("1", "fake") else REAL, kind, None))
    config = {"csv": {"layout": "csv", "labels": "plain/labels.csv", "videos": ["plain"],
                      "select": {"split": ["train"]}}}  # fmt: skip
    return listed, config


REPLICAS = {"fakeavceleb": fakeavceleb, "lav-df": lavdf, "av-deepfake1m": av1m, "dfdc": dfdc,
            "csv": plain_csv}  # fmt: skip


def write_replicas(root: Path) -> tuple[list[Listed], dict]:
    """Every replica in one data root: what the cache must hold, and the splits' config."""
    source = clip(root / "clip.mp4")
    listed, splits = [], {}
    for write in REPLICAS.values():
        more, config = write(root, source)
        listed += more
        splits |= config
    return listed, splits
