"""The whole on-disk schema of cache format v1: names, dtypes, shapes, file names.

Writer, reader, index and verifier import these constants; no dataset name is
spelled anywhere else. The five core datasets are public and fixed for v1;
the extras may grow. The checksum datasets (`CHECKSUMS`) are required: a shard
without them is refused, so nothing is read unchecked.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import h5py
import numpy as np

FORMAT = "avcache"
# The versioning rule: a new required dataset, or a changed meaning of one, is a new version;
# optional extras and attributes are not. v2 added JPEG-coded faces (`faces.codec: jpeg`:
# FACES_JPEG, FACES_ENDS, FACES_XXH3 instead of FACES and FACES_SUM); a raw v2 shard is a
# v1 shard with the codec attribute. Readers read every version listed here.
# v3 added optional time-aligned tracks (TRACK_*, LIPS_*; preprocess/tracks.py).
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)

INDEX_FILE = "index.json"
CONFIG_FILE = "config.yaml"
FAILURES_FILE = "failures.jsonl"
SHARDS_DIR = "shards"
SHARD_SUFFIX = ".h5"
RECEIPT_SUFFIX = ".json"


MEL_SIZE = 256  # mel images are MEL_SIZE x MEL_SIZE, row 0 = lowest mel bin
# The largest faces a cache holds (faces.size, faces.frames): the preprocessor refuses more,
# and readers refuse a shard or index declaring more before allocating anything for it (a
# forged size would make every reader allocate terabytes). At both limits one sample's
# crops take 64 x 1024 x 1024 x 3 bytes = 192 MiB.
MAX_FACE_SIZE = 1024
MAX_FRAMES = 64

LABEL_FAKE, LABEL_REAL, LABEL_UNKNOWN = 1, 0, -1

# Core datasets of v1 (public, fixed): name -> (dtype, per-sample shape or None when it
# depends on the faces config).
VIDEO_NAME = "video_name"
LABEL = "label"
MEL = "mel"
FACES = "faces"
HAS_AUDIO = "has_audio"
# Extras: which frames found a face, where (x0, y0, x1, y1 in source pixels), clip facts.
FACE_FOUND = "face_found"
FACE_BOX = "face_box"
DURATION = "duration"

# Per-sample checksums (see sum64): the writer computes them, every read of the big arrays
# checks them. They are not Sample fields.
MEL_SUM = "mel_sum64"
FACES_SUM = "faces_sum64"
CHECKSUMS = {MEL: MEL_SUM, FACES: FACES_SUM}  # checked dataset -> its sums dataset
# v2, faces.codec jpeg (cache/codec.py): every crop's JPEG bytes in one flat uint8 dataset,
# the end of each crop's bytes in it [N, K], and each sample's xxh3-64 of its bytes [N].
FACES_JPEG = "faces_jpeg"
FACES_ENDS = "faces_ends"
FACES_XXH3 = "faces_xxh3"

# v3, tracks.windows > 0: W windows of T frames a sample. The mouth crops (grey S x S) are
# JPEG in one flat data region like the faces, with each crop's end [N, W * T] and each
# sample's xxh3; the audio of the same instants is int16 [N, W, L] with its sum64.
LIPS_JPEG = "lips_jpeg"
LIPS_ENDS = "lips_ends"
LIPS_XXH3 = "lips_xxh3"
LIPS = "lips"  # what readers call the decoded crops: uint8 [W, T, S, S]
LIPS_FOUND = "lips_found"  # bool [N, W, T]: the mouth was located on that frame
TRACK_START = "track_start"  # float64 [N, W]: the window's first frame, seconds into the video
TRACK_FRAMES_REAL = "track_frames_real"  # int16 [N, W]: frames the clip had (others repeat)
TRACK_AUDIO = "track_audio"  # int16 [N, W, L]: mono audio of the window's instants
TRACK_AUDIO_SUM = "track_audio_sum64"
TRACK_AUDIO_REAL = "track_audio_real"  # float32 [N, W]: share of L from the audio stream
TRACK_META_FIELDS = (LIPS_FOUND, TRACK_START, TRACK_FRAMES_REAL, TRACK_AUDIO_REAL)
# The track's raw array and its sums (optional, as the tracks are).
TRACK_CHECKSUMS = {TRACK_AUDIO: TRACK_AUDIO_SUM}
# Bounds a reader checks before allocating (a forged attribute could declare anything).
MAX_TRACK_WINDOWS = 16
MAX_TRACK_FRAMES = 250
MAX_TRACK_SIZE = 256
MAX_TRACK_AUDIO = 48000 * 10  # samples of one window
# What the preprocessor writes (preprocess/pipeline.py validate_tracks), and so all that a
# reader accepts: a crop under 8 px, a rate outside these, or a window's audio of another
# length than its frames' time at the audio rate (window_audio_samples) was never written.
# An fps of 5e-324 would make a window last forever; 100 audio samples against 25 frames
# would make the speech and the lips disagree on what a window is.
MIN_TRACK_SIZE = 8
TRACK_FPS = (1.0, 120.0)  # least, most
TRACK_AUDIO_RATES = (8000, 48000)  # least, most

STRING_DTYPE = h5py.string_dtype("utf-8")
SUM_DTYPE = np.dtype("<u8")

# Optional per-video facts (audit.facts): cheap measurements of the source file that have
# nothing to do with a manipulation (durations, silence, loudness, stream parameters, codecs,
# size), for `avcache-inspect CACHE audit` to ask whether one of them alone gives the labels
# away. Numbers are float64 (NaN: unknown, e.g. the audio facts of a clip without audio); the
# codecs are strings ("" without that stream). Absent from shards made with audit.facts=false.
FACT_NUMBERS = {
    "fact_video_seconds": "video stream duration, s (frame count / frame rate)",
    "fact_audio_seconds": "decoded audio duration, s (at most audio.max_seconds)",
    "fact_lead_silence": "silence before the first sound, s",
    "fact_trail_silence": "silence after the last sound, s",
    "fact_loudness_db": "RMS level of the audio (channels mixed), dBFS",
    "fact_sample_rate": "audio sample rate, Hz",
    "fact_channels": "audio channels",
    "fact_fps": "video frame rate",
    "fact_width": "video width, px",
    "fact_height": "video height, px",
    "fact_bit_rate": "container bit rate, kb/s",
    "fact_video_bit_rate": "video stream bit rate, kb/s",
    "fact_audio_bit_rate": "audio stream bit rate, kb/s",
    "fact_file_bytes": "file size, bytes",
}
FACT_STRINGS = {
    "fact_video_codec": "video codec (ffmpeg's name)",
    "fact_audio_codec": "audio codec (ffmpeg's name)",
}
FACT_FIELDS = (*FACT_NUMBERS, *FACT_STRINGS)
ATTR_FACTS = "facts"  # 1: the shard holds the FACT_FIELDS datasets

# Optional labels of the data sets that publish them (preprocess/layouts.py): each sample's
# kind of fake (LAV-DF's "audio+video", FakeAVCeleb's type and method, ...) and the fake
# time segments, [start, end] seconds. Segments vary in number, so they are one flat region
# [M, 2] cut by each sample's end in it (like the JPEG crops). Absent from the shards of a
# layout without them (FFDV).
FAKE_KIND = "fake_kind"  # UTF-8 string [N]
FAKE_SEGMENTS = "fake_segments"  # float64 [M, 2]: every sample's segments, sample after sample
FAKE_SEGMENTS_ENDS = "fake_segments_ends"  # uint64 [N]: where each sample's segments end
ATTR_FAKE_KIND = "fake_kind"  # 1: the shard holds FAKE_KIND
ATTR_FAKE_SEGMENTS = "fake_segments"  # 1: the shard holds FAKE_SEGMENTS and their ends
# Bounds a reader checks (and the preprocessor keeps): a forged shard could hold anything.
MAX_FAKE_SEGMENTS = 256  # segments of one sample (published sets have a handful)
MAX_FAKE_KIND_CHARS = 128


def dataset_specs(
    frames: int, face_size: int, codec: str = "raw"
) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Per-sample dtype and shape of every dataset of N rows for a faces config (the flat
    FACES_JPEG of a jpeg shard has no rows)."""
    faces = {
        "raw": {FACES: (np.dtype(np.uint8), (frames, face_size, face_size, 3))},
        "jpeg": {FACES_ENDS: (np.dtype("<u8"), (frames,))},
    }[codec]
    sums = {"raw": {FACES_SUM: (SUM_DTYPE, ())}, "jpeg": {FACES_XXH3: (SUM_DTYPE, ())}}[codec]
    return {
        VIDEO_NAME: (STRING_DTYPE, ()),
        LABEL: (np.dtype(np.int8), ()),
        MEL: (np.dtype(np.uint8), (MEL_SIZE, MEL_SIZE)),
        **faces,
        HAS_AUDIO: (np.dtype(np.bool_), ()),
        FACE_FOUND: (np.dtype(np.bool_), (frames,)),
        FACE_BOX: (np.dtype(np.float32), (frames, 4)),
        DURATION: (np.dtype(np.float32), ()),
        MEL_SUM: (SUM_DTYPE, ()),
        **sums,
    }


def track_specs(windows: int, frames: int,
                audio_samples: int) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:  # fmt: skip
    """Per-sample dtype and shape of the track datasets (none without windows)."""
    if not windows:
        return {}
    return {
        LIPS_ENDS: (np.dtype("<u8"), (windows * frames,)),
        LIPS_XXH3: (SUM_DTYPE, ()),
        LIPS_FOUND: (np.dtype(np.bool_), (windows, frames)),
        TRACK_START: (np.dtype("<f8"), (windows,)),
        TRACK_FRAMES_REAL: (np.dtype("<i2"), (windows,)),
        TRACK_AUDIO: (np.dtype("<i2"), (windows, audio_samples)),
        TRACK_AUDIO_SUM: (SUM_DTYPE, ()),
        TRACK_AUDIO_REAL: (np.dtype("<f4"), (windows,)),
    }


def fact_specs(enabled: bool) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Per-sample dtype and shape of the fact datasets (none when facts are off)."""
    if not enabled:
        return {}
    numbers = {name: (np.dtype("<f8"), ()) for name in FACT_NUMBERS}
    return numbers | {name: (STRING_DTYPE, ()) for name in FACT_STRINGS}


def label_specs(kinds: bool, segments: bool) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Per-sample dtype and shape of the optional label datasets of N rows (the flat
    FAKE_SEGMENTS region has no rows)."""
    specs = {FAKE_KIND: (STRING_DTYPE, ())} if kinds else {}
    return specs | ({FAKE_SEGMENTS_ENDS: (np.dtype("<u8"), ())} if segments else {})


def label_fields(kinds: bool, segments: bool) -> tuple[str, ...]:
    """The optional label datasets a shard's metadata sha256 covers, in its order."""
    return (FAKE_KIND,) * kinds + (FAKE_SEGMENTS_ENDS, FAKE_SEGMENTS) * segments


def sum64(rows: np.ndarray) -> np.ndarray:
    """Per row (first axis): the sum modulo 2**64 of the row's bytes read as little-endian
    uint64 words, a row whose size is not a multiple of 8 padded with zero bytes.

    Any change inside one 8-byte word changes the sum (one flipped byte always does), and
    random damage goes unseen with probability 2**-64. Two changes that cancel, or words
    swapped with each other, do not: it guards against storage damage, not an attacker
    (the index's sha256 and `avcache-inspect CACHE verify` cover whole files). It costs one pass
    over the bytes at memory speed (~0.03 ms per MiB in cache, ~0.08 ms from RAM), so every
    batch can afford it.
    """
    rows = np.ascontiguousarray(rows)
    count = rows.shape[0]
    row_bytes = rows.nbytes // count if count else 0
    flat = rows.reshape(-1).view(np.uint8).reshape(count, row_bytes)
    whole = row_bytes - row_bytes % 8
    # numpy integer arithmetic wraps around: that is the modulo.
    sums = flat[:, :whole].view(SUM_DTYPE).sum(axis=1, dtype=np.uint64)
    if whole < row_bytes:  # the tail's 1-7 bytes, zero-padded into one more word
        tail = np.zeros((count, 8), np.uint8)
        tail[:, : row_bytes - whole] = flat[:, whole:]
        sums += tail.view(SUM_DTYPE)[:, 0]
    return sums


# The small per-sample columns (names, labels, flags, boxes, durations): a shard's
# attribute ATTR_META_SHA256 holds their sha256, checked whenever a shard is opened. They
# are a few bytes per sample, so reading them all at every open costs next to nothing.
META_FIELDS = (VIDEO_NAME, LABEL, HAS_AUDIO, FACE_FOUND, FACE_BOX, DURATION)


def meta_sha256(columns: dict[str, object], fields: tuple[str, ...] = META_FIELDS) -> str:
    """sha256 of the META_FIELDS columns of a shard (names as a JSON list of str), then of
    the track's small columns, the facts and the fake kinds and segments where the shard has
    them."""
    digest = hashlib.sha256()
    for name in fields:
        column = columns[name]
        if name in (VIDEO_NAME, FAKE_KIND) or name in FACT_STRINGS:
            names = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in column]
            digest.update(json.dumps(names).encode("utf-8"))
        else:
            digest.update(np.ascontiguousarray(column).tobytes())
    return digest.hexdigest()


# Shard-level attributes.
ATTR_FORMAT = "format"
ATTR_VERSION = "version"
ATTR_SPLIT = "split"
ATTR_CONFIG_HASH = "config_hash"
ATTR_PLAN_HASH = "plan_hash"
ATTR_FRAMES = "frames"
ATTR_FACE_SIZE = "face_size"
ATTR_META_SHA256 = "meta_sha256"
ATTR_FACES_CODEC = "faces_codec"  # v2: raw or jpeg (a v1 shard is raw)
ATTR_FACES_QUALITY = "faces_quality"  # v2 jpeg: the encoder's quality
# v3 tracks (absent or 0 windows: none)
ATTR_TRACK_WINDOWS = "track_windows"
ATTR_TRACK_FRAMES = "track_frames"
ATTR_TRACK_FPS = "track_fps"
ATTR_TRACK_SIZE = "track_size"
ATTR_TRACK_AUDIO_RATE = "track_audio_rate"
ATTR_TRACK_AUDIO_SAMPLES = "track_audio_samples"
ATTR_LIPS_QUALITY = "lips_quality"


def window_audio_samples(frames: int, fps: float, audio_rate: int) -> int:
    """Audio samples of one window: T frames' worth at the audio rate (what the writer
    stores, and the only length a reader accepts)."""
    return round(frames * audio_rate / fps)


@dataclass(frozen=True)
class TrackLayout:
    """The shape of a shard's tracks (its ATTR_TRACK_* attributes)."""

    windows: int
    frames: int
    size: int  # mouth crops are size x size grey
    fps: float
    audio_rate: int
    audio_samples: int  # L: audio samples of one window

    def attrs(self) -> dict[str, object]:
        return {ATTR_TRACK_WINDOWS: self.windows, ATTR_TRACK_FRAMES: self.frames,
                ATTR_TRACK_SIZE: self.size, ATTR_TRACK_FPS: self.fps,
                ATTR_TRACK_AUDIO_RATE: self.audio_rate,
                ATTR_TRACK_AUDIO_SAMPLES: self.audio_samples}  # fmt: skip

    def lips_shape(self) -> tuple[int, int, int, int]:
        return (self.windows, self.frames, self.size, self.size)


@dataclass
class Tracks:
    """One video's aligned windows (preprocess/tracks.py): W windows of T frames."""

    lips: np.ndarray  # uint8 [W, T, S, S] grey mouth crops
    lips_found: np.ndarray  # bool [W, T]
    start: np.ndarray  # float64 [W]: seconds from the video's first timestamp
    frames_real: np.ndarray  # int16 [W]
    audio: np.ndarray  # int16 [W, L]: the same instants, mono
    audio_real: np.ndarray  # float32 [W]

    def columns(self) -> dict[str, np.ndarray]:
        """The per-sample track datasets (but the crops' bytes), in schema names."""
        return {LIPS_FOUND: self.lips_found, TRACK_START: self.start,
                TRACK_FRAMES_REAL: self.frames_real, TRACK_AUDIO: self.audio,
                TRACK_AUDIO_REAL: self.audio_real}  # fmt: skip


@dataclass
class Sample:
    """One cached video: the five core fields plus the extras (not the checksums, which
    the writer computes from `mel` and `faces`)."""

    video_name: str
    label: int
    mel: np.ndarray  # uint8 [256, 256]
    faces: np.ndarray  # uint8 [K, S, S, 3], RGB
    has_audio: bool
    face_found: np.ndarray  # bool [K]
    face_box: np.ndarray  # float32 [K, 4]
    duration: float
    tracks: Tracks | None = None  # v3, where the cache holds tracks
    # FACT_FIELDS name -> value (float, or str for codecs), where the cache holds facts
    facts: dict[str, float | str] | None = None
    fake_kind: str | None = None  # the data set's kind of fake, where its layout has kinds
    # float64 [k, 2]: the fake segments, [start, end] seconds, where its layout has them
    fake_segments: np.ndarray | None = None

    @staticmethod
    def stored_fields() -> list[str]:
        """The fields stored as datasets of their own (all but the optional ones)."""
        optional = ("tracks", "facts", "fake_kind", "fake_segments")
        return [name for name in Sample.__dataclass_fields__ if name not in optional]

    def fields(self) -> dict[str, object]:
        """Dataset name -> value, in schema order."""
        return {
            VIDEO_NAME: self.video_name,
            LABEL: self.label,
            MEL: self.mel,
            FACES: self.faces,
            HAS_AUDIO: self.has_audio,
            FACE_FOUND: self.face_found,
            FACE_BOX: self.face_box,
            DURATION: self.duration,
        }
