"""The whole on-disk schema of the cache format: names, bounds, file names, and the table
of a shard's columns (COLUMNS).

Writer, reader, index and verifier import these; no dataset name is spelled anywhere else.
Each column of the table is one entry: its name, its storage encoding (cache/encodings.py)
with its shape and dtype, the Sample field that holds its value, whether it is always there
or in an optional part (since which format version), whether its shard's metadata sha256
covers it, and the check its values pass when a shard is opened. A shard's layout
(ShardLayout) says which parts it holds and their sizes; its columns are the table's entries
of those parts. The checksum datasets are required: a shard without them is refused, so
nothing is read unchecked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np

from avcache.cache.codec import CODECS
from avcache.cache.encodings import (
    Array,
    Dataset,
    Encoding,
    GreyJpegRegion,
    JpegRegion,
    Ragged,
    Strings,
)
from avcache.cache.encodings import sum64 as sum64  # the per-row checksum: part of the format
from avcache.common.untrusted import REBUILD, CacheFormatError, integer, printable

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
# Samples a writer buffers before one block write; a mel chunk holds as many (1 MiB).
WRITE_BLOCK = 16
# The largest faces a cache holds (faces.size, faces.frames): the preprocessor refuses more,
# and readers refuse a shard or index declaring more before allocating anything for it (a
# forged size would make every reader allocate terabytes). At both limits one sample's
# crops take 64 x 1024 x 1024 x 3 bytes = 192 MiB.
MAX_FACE_SIZE = 1024
MAX_FRAMES = 64

LABEL_FAKE, LABEL_REAL, LABEL_UNKNOWN = 1, 0, -1

# The core datasets, every shard's since v1 (the first five are the public contract).
VIDEO_NAME = "video_name"
LABEL = "label"
MEL = "mel"
FACES = "faces"
HAS_AUDIO = "has_audio"
# Extras: which frames found a face, where (x0, y0, x1, y1 in source pixels), clip facts.
FACE_FOUND = "face_found"
FACE_BOX = "face_box"
DURATION = "duration"

# Per-sample checksums (encodings.sum64): the writer computes them, every read of the big
# arrays checks them. They are not Sample fields.
MEL_SUM = "mel_sum64"
FACES_SUM = "faces_sum64"
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
# Not stored: float32 [W, T], whether each track frame's instant is fake, derived by readers
# from the label and the fake segments (cache/timeline.py); what a localisation learns from.
FRAME_FAKE = "frame_fake"
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


# The core's small per-sample columns (names, labels, flags, boxes, durations): a shard's
# attribute ATTR_META_SHA256 holds their sha256 (with the other parts' small columns, those
# of the table marked meta), checked whenever a shard is opened. They are a few bytes per
# sample, so reading them all at every open costs next to nothing.
META_FIELDS = (VIDEO_NAME, LABEL, HAS_AUDIO, FACE_FOUND, FACE_BOX, DURATION)


def meta_sha256(columns: dict[str, np.ndarray], fields: tuple[str, ...] = META_FIELDS) -> str:
    """sha256 of a shard's small columns, `fields` in order (ShardLayout.meta_datasets): the
    bytes of each, text columns (object arrays) as a JSON list of str."""
    digest = hashlib.sha256()
    for name in fields:
        column = columns[name]
        if column.dtype.kind in "OSU":
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


# TrackLayout field -> (least, most): what the preprocessor writes (the bounds above).
TRACK_BOUNDS = {
    "frames": (1, MAX_TRACK_FRAMES),
    "size": (MIN_TRACK_SIZE, MAX_TRACK_SIZE),
    "fps": TRACK_FPS,
    "audio_rate": TRACK_AUDIO_RATES,
    "audio_samples": (1, MAX_TRACK_AUDIO),
}


def bounded_tracks(windows: int, values: dict[str, object], at: str) -> TrackLayout:
    """A track layout from untrusted `values` (by TrackLayout field; `at` + field names one
    in a refusal), each within what the preprocessor writes, and a window's audio exactly
    its frames' time at the audio rate, as the writer computes it (what it is when `values`
    has no audio_samples: a config says none)."""
    fps = values.get("fps")
    least, most = TRACK_BOUNDS["fps"]
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not least <= fps <= most:
        raise CacheFormatError(f"{at}fps is {printable(repr(fps))}: expected a frame rate "
                               f"from {least:g} to {most:g}: {REBUILD}")  # fmt: skip
    frames, size, rate = (integer(values.get(field), f"{at}{field}", *TRACK_BOUNDS[field])
                          for field in ("frames", "size", "audio_rate"))  # fmt: skip
    expected = window_audio_samples(frames, fps, rate)
    samples = integer(values.get("audio_samples", expected), f"{at}audio_samples",
                      *TRACK_BOUNDS["audio_samples"])  # fmt: skip
    if samples != expected:
        raise CacheFormatError(
            f"{at}audio_samples is {samples}: {frames} frames at {fps:g} fps are {expected} "
            f"samples at {rate} Hz, the only window avcache writes: {REBUILD}"
        )
    return TrackLayout(windows, frames, size, float(fps), rate, samples)


@dataclass
class Tracks:
    """One video's aligned windows (preprocess/tracks.py): W windows of T frames."""

    lips: np.ndarray  # uint8 [W, T, S, S] grey mouth crops
    lips_found: np.ndarray  # bool [W, T]
    start: np.ndarray  # float64 [W]: seconds from the video's first timestamp
    frames_real: np.ndarray  # int16 [W]
    audio: np.ndarray  # int16 [W, L]: the same instants, mono
    audio_real: np.ndarray  # float32 [W]


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

    def fields(self) -> dict[str, object]:
        """The core fields by dataset name, in schema order."""
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


def sample_value(sample: Sample, field: str) -> object:
    """The value a Sample holds at `field` ("mel", "tracks.audio", "facts.fact_fps"); None
    where the sample lacks it."""
    value: object = sample
    for key in field.split("."):
        value = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
        if value is None:
            return None
    return value


def _plain(values: dict[str, object]) -> dict[str, object]:
    return {key: v.item() if isinstance(v, np.generic) else v for key, v in values.items()}


# How a Sample holds the columns of a group ("tracks.audio": Tracks.audio).
GROUPS: dict[str, Callable[[dict[str, object]], object]] = {
    "tracks": lambda values: Tracks(**values),
    "facts": _plain,  # a dict of Python numbers and strings
}


def sample_of(values: dict[str, object], columns: list[Column]) -> Sample:
    """The Sample of one video's column values (by column name)."""
    fields: dict[str, object] = {}
    groups: dict[str, dict[str, object]] = {}
    for column in columns:
        group, _, key = column.field.rpartition(".")
        (groups.setdefault(group, {}) if group else fields)[key] = values[column.name]
    return Sample(**fields, **{group: GROUPS[group](held) for group, held in groups.items()})


@dataclass(frozen=True)
class Part:
    """Columns that a shard holds all together or not at all (CORE: every shard's)."""

    name: str  # what refusals call it
    since: int  # the format version that introduced it
    absent: str = ""  # why a shard lacks it, in words
    windowed: bool = False  # its columns are read window by window (Sample.tracks)


CORE = Part("core", 1)
RAW_FACES = Part("raw faces", 1, "stores its faces as JPEG")
JPEG_FACES = Part("JPEG faces", 2, "stores its faces raw")
TRACKS = Part("tracks", 3, "made with tracks.windows=0", windowed=True)
FACTS = Part("facts", 3, "made with audit.facts=false")
KINDS = Part("fake kinds", 3, "its layout has none")
SEGMENTS = Part("fake segments", 3, "its layout has none")

# A check of a column's values when its shard is opened: (its values, every small column by
# dataset name, the shard's layout) -> (a flag per bad value, the value each shows).
Check = Callable[[np.ndarray, dict[str, np.ndarray], "ShardLayout"], tuple[np.ndarray, np.ndarray]]


def _labels(labels: np.ndarray, *_) -> tuple[np.ndarray, np.ndarray]:
    return ~np.isin(labels, (LABEL_FAKE, LABEL_REAL, LABEL_UNKNOWN)), labels


def _seconds(durations: np.ndarray, *_) -> tuple[np.ndarray, np.ndarray]:
    return ~(np.isfinite(durations) & (durations >= 0)), durations


def _window_starts(starts: np.ndarray, table: dict[str, np.ndarray],
                   layout: ShardLayout) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Seconds inside the video (the writer draws them so that a window fits, with half a
    track frame of slack for the float32 duration), or, for windows tiling the clip from its
    start (tracks.placement: tile), where the tiling puts them past its end."""
    track = layout.tracks
    tiled = (track.windows - 1) * track.frames / track.fps
    latest = np.maximum(table[DURATION].astype(np.float64), tiled)[:, None] + 0.5 / track.fps
    return ~(np.isfinite(starts) & (starts >= 0) & (starts <= latest)), starts


def _real_frames(frames: np.ndarray, _, layout: ShardLayout) -> tuple[np.ndarray, np.ndarray]:
    return (frames < 0) | (frames > layout.tracks.frames), frames


def _share(shares: np.ndarray, *_) -> tuple[np.ndarray, np.ndarray]:
    return ~((shares >= 0) & (shares <= 1)), shares


def _not_infinite(values: np.ndarray, *_) -> tuple[np.ndarray, np.ndarray]:
    return np.isinf(values), values


def _kind_length(kinds: np.ndarray, *_) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(kind) for kind in kinds], np.int64)
    return lengths > MAX_FAKE_KIND_CHARS, lengths


def segments_sound(pairs: np.ndarray) -> np.ndarray:
    """Per [start, end] pair: finite seconds, 0 <= start <= end."""
    return np.isfinite(pairs).all(axis=1) & (pairs[:, 0] >= 0) & (pairs[:, 0] <= pairs[:, 1])


def _segments(pairs: np.ndarray, *_) -> tuple[np.ndarray, np.ndarray]:
    return ~segments_sound(pairs), pairs


@dataclass(frozen=True)
class Column:
    """One column: its name, how it is stored (an encoding whose sizes may be named after
    ShardLayout.dims), where a Sample holds its value (`field`, default its name), the part
    that holds it, whether the metadata sha256 covers it, the check its values pass when a
    shard is opened (`refusal` names a bad value, {} the value), and the format version
    that added it (`added`, default its part's: shards of an older version lack it)."""

    name: str
    encoding: Encoding
    field: str = ""
    part: Part = CORE
    meta: bool = False
    check: Check | None = None
    refusal: str = ""
    added: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoding", replace(self.encoding, name=self.name))
        object.__setattr__(self, "field", self.field or self.name)

    @property
    def since(self) -> int:
        return self.added or self.part.since

    def sized(self, dims: dict[str, int]) -> Column:
        """The column of one shard: its encoding sized, with state of its own."""
        return replace(self, encoding=self.encoding.sized(dims))


def _track(name: str, field: str, encoding: Encoding, **more) -> Column:
    return Column(name, encoding, f"tracks.{field}", TRACKS, **more)


FACES_SHAPE = ("frames", "face_size", "face_size", 3)  # sizes named after ShardLayout.dims
WINDOWS = ("windows", "track_frames")

# Every column a shard may hold, in the order the writer writes them (one block of samples
# column after column) and the reader checks their values. Adding a column is one entry
# here (and the Sample field it fills).
COLUMNS: tuple[Column, ...] = (
    Column(VIDEO_NAME, Strings(what="video names"), meta=True),
    Column(LABEL, Array(dtype="i1"), meta=True, check=_labels,
           refusal="label {}: a label is 1 (fake), 0 (real) or -1 (unknown)"),
    Column(MEL, Array(dtype="u1", shape=(MEL_SIZE, MEL_SIZE), sums=MEL_SUM,
                            chunk_rows=WRITE_BLOCK)),
    Column(FACES, Array(dtype="u1", shape=FACES_SHAPE, sums=FACES_SUM, chunk_rows=1),
           part=RAW_FACES),
    Column(FACES, JpegRegion(data=FACES_JPEG, ends=FACES_ENDS, sums=FACES_XXH3,
                             crops=("frames",), side="face_size", quality="quality"),
           part=JPEG_FACES),
    Column(HAS_AUDIO, Array(dtype="?"), meta=True),
    Column(FACE_FOUND, Array(dtype="?", shape=("frames",)), meta=True),
    Column(FACE_BOX, Array(dtype="<f4", shape=("frames", 4)), meta=True),
    Column(DURATION, Array(dtype="<f4"), meta=True, check=_seconds,
           refusal="duration {}: not a length in seconds"),
    _track(LIPS_FOUND, "lips_found", Array(dtype="?", shape=WINDOWS), meta=True),
    _track(TRACK_START, "start", Array(dtype="<f8", shape=("windows",)), meta=True,
           check=_window_starts,
           refusal="track start {}: not seconds within the video's duration or its tiling"),
    _track(TRACK_FRAMES_REAL, "frames_real", Array(dtype="<i2", shape=("windows",)), meta=True,
           check=_real_frames, refusal="real track frames {}"),
    _track(TRACK_AUDIO, "audio", Array(dtype="<i2", shape=("windows", "audio_samples"),
                                       sums=TRACK_AUDIO_SUM)),
    _track(TRACK_AUDIO_REAL, "audio_real", Array(dtype="<f4", shape=("windows",)), meta=True,
           check=_share, refusal="real track audio {}: not a share"),
    _track(LIPS, "lips", GreyJpegRegion(data=LIPS_JPEG, ends=LIPS_ENDS, sums=LIPS_XXH3,
                                        crops=WINDOWS, side="track_size",
                                        quality="tracks_quality")),
    *(Column(name, Array(dtype="<f8"), f"facts.{name}", FACTS, meta=True,
             check=_not_infinite, refusal=f"{name} {{}}: not a number or NaN")
      for name in FACT_NUMBERS),
    *(Column(name, Strings(what="facts"), f"facts.{name}", FACTS, meta=True)
      for name in FACT_STRINGS),
    Column(FAKE_KIND, Strings(max_chars=MAX_FAKE_KIND_CHARS, what="fake kinds"), part=KINDS,
           meta=True, check=_kind_length, refusal="a fake kind of {} characters"),
    Column(FAKE_SEGMENTS, Ragged(ends=FAKE_SEGMENTS_ENDS, shape=(2,),
                                 max_rows=MAX_FAKE_SEGMENTS, sound=segments_sound,
                                 what="fake segments", unit="pairs",
                                 expected="[start, end] pairs of seconds, 0 <= start <= end"),
           part=SEGMENTS, meta=True, check=_segments,
           refusal="fake segment {}: not [start, end] seconds"),
)  # fmt: skip

# The order a writer creates a shard's datasets in, and a reader checks them: it fixes where
# HDF5 places each, so one input gives byte-identical shards from one release to the next.
# Rows before regions; a dataset not listed here goes after those listed, in table order.
FILE_ORDER = (
    VIDEO_NAME, LABEL, MEL, FACES, FACES_ENDS, HAS_AUDIO, FACE_FOUND, FACE_BOX, DURATION,
    MEL_SUM, FACES_SUM, FACES_XXH3, LIPS_ENDS, LIPS_XXH3, LIPS_FOUND, TRACK_START,
    TRACK_FRAMES_REAL, TRACK_AUDIO, TRACK_AUDIO_SUM, TRACK_AUDIO_REAL, *FACT_FIELDS,
    FAKE_KIND, FAKE_SEGMENTS_ENDS, FACES_JPEG, LIPS_JPEG, FAKE_SEGMENTS,
)  # fmt: skip


@dataclass(frozen=True)
class ShardLayout:
    """What a shard holds: its faces (frames, size and codec), its optional parts and their
    sizes. The writer takes one; the reader builds one from a shard's attributes and checks
    the shard against its columns (the table's entries of the parts it holds, sized)."""

    frames: int
    face_size: int
    codec: str = "raw"  # faces.codec
    quality: int | None = 90  # of JPEG faces (a writer's; None where read from a shard)
    tracks: TrackLayout | None = None  # None (or 0 windows): no tracks
    tracks_quality: int | None = 90  # of the mouth crops (as `quality`)
    facts: bool = False  # audit.facts
    fake_kinds: bool = False  # the data set's kinds of fake, where its layout has them
    fake_segments: bool = False  # and its fake segments

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ValueError(f"faces codec {self.codec!r} unknown (known: {', '.join(CODECS)})")
        if self.tracks is not None and not self.tracks.windows:
            object.__setattr__(self, "tracks", None)

    def parts(self) -> set[Part]:
        held = {TRACKS: self.tracks is not None, FACTS: self.facts, KINDS: self.fake_kinds,
                SEGMENTS: self.fake_segments}  # fmt: skip
        faces = JPEG_FACES if self.codec == "jpeg" else RAW_FACES
        return {CORE, faces} | {part for part, holds in held.items() if holds}

    def dims(self) -> dict[str, int]:
        """The sizes (and JPEG qualities) the table's encodings are sized with."""
        dims = {"frames": self.frames, "face_size": self.face_size, "quality": self.quality}
        if self.tracks:
            dims |= {"windows": self.tracks.windows, "track_frames": self.tracks.frames,
                     "track_size": self.tracks.size, "audio_samples": self.tracks.audio_samples,
                     "tracks_quality": self.tracks_quality}  # fmt: skip
        return dims

    def columns(self, version: int | None = None) -> list[Column]:
        """This layout's columns in a shard of `version` (default: this one's), in table
        order, each with an encoding of its own."""
        parts, dims, version = self.parts(), self.dims(), version or VERSION
        return [column.sized(dims) for column in COLUMNS
                if column.part in parts and column.since <= version]  # fmt: skip

    def datasets(self) -> list[Dataset]:
        """Every dataset of a shard of this layout, in file order."""
        return file_order(self.columns())

    def meta_datasets(self) -> tuple[str, ...]:
        """The datasets its metadata sha256 covers, in its order."""
        return meta_datasets(self.columns())

    def attrs(self) -> dict[str, object]:
        """The shard attributes that say this layout, in the order a writer stores them."""
        attrs: dict[str, object] = {ATTR_FRAMES: self.frames, ATTR_FACE_SIZE: self.face_size,
                                    ATTR_FACES_CODEC: self.codec}  # fmt: skip
        if self.codec == "jpeg":
            attrs[ATTR_FACES_QUALITY] = self.quality
        if self.tracks:
            attrs |= self.tracks.attrs() | {ATTR_LIPS_QUALITY: self.tracks_quality}
        flags = {ATTR_FACTS: self.facts, ATTR_FAKE_KIND: self.fake_kinds,
                 ATTR_FAKE_SEGMENTS: self.fake_segments}  # fmt: skip
        return attrs | {name: 1 for name, held in flags.items() if held}


def file_order(columns: Iterable[Column]) -> list[Dataset]:
    """The columns' datasets in the order a shard holds them (FILE_ORDER)."""
    datasets = [dataset for column in columns for dataset in column.encoding.datasets()]
    listed = {name: number for number, name in enumerate(FILE_ORDER)}
    return sorted(datasets, key=lambda d: (not d.per_sample, listed.get(d.name, len(listed))))


def meta_datasets(columns: list[Column]) -> tuple[str, ...]:
    """The datasets the metadata sha256 covers, in its order."""
    return tuple(dataset.name for column in columns if column.meta
                 for dataset in column.encoding.datasets())  # fmt: skip


def absent(name: str) -> str | None:
    """Why a shard without the column `name` lacks it (None: no column has that name)."""
    parts = [column.part for column in COLUMNS if column.name == name]
    return f"holds no {parts[0].name} ({parts[0].absent})" if parts else None
