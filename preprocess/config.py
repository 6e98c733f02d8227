"""The preprocessing config: every key, its default and what it does.

configs/preprocess.yaml mirrors these defaults (a test keeps them equal). The
whole resolved config is hashed: a changed value writes a new cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from avcache.common.config import LOCAL, SINCE_ADDED, omitted_where


@dataclass
class SplitConfig:
    """One split of the cache: which label file, in which data set's layout, and which of
    its entries (docs/datasets.md)."""

    labels: str  # label file, relative to the data root (a glob for dfdc's parts)
    videos: list[str]  # folders (relative to the data root) searched in order for each name
    has_targets: bool = True  # false for a test list: targets are unknown and stored as -1
    # The label file's layout: ffdv (`video_name,target`), fakeavceleb, lav-df, av-deepfake1m,
    # dfdc or csv (preprocess/layouts.py). Left out of the hash at its default.
    layout: str = field(default="ffdv", metadata=SINCE_ADDED)
    # Only the entries whose field holds one of the values, e.g. {split: [dev]}; {}: all.
    select: dict[str, list[str]] = field(default_factory=dict, metadata=SINCE_ADDED)


def _ffdv_splits() -> dict[str, SplitConfig]:
    return {
        "train": SplitConfig("train_label.txt", ["trainset"]),
        "val": SplitConfig("val_label.txt", ["valset"]),
        "test": SplitConfig("prediction.txt.csv", ["testset", "valset"], has_targets=False),
    }


@dataclass
class AudioConfig:
    mode: str = "baseline"  # mel recipe: baseline (the public recipe) or padded (see audio.py)
    # The decoder: auto (imageio-ffmpeg's static build, else PATH), or a path. LOCAL: a program
    # to run, so never taken from a cache's or a run folder's record of its config.
    ffmpeg: str = field(default="auto", metadata=LOCAL)
    max_seconds: float = 600.0  # audio read per video at most: bounds memory on very long files
    # Leading and trailing audio more than this many dB below the clip's loudest 10 ms is cut
    # before the mel image (0: off). A shortcut in some data sets: fakes that start silent.
    trim_silence_db: float = 0.0


@dataclass
class FacesConfig:
    frames: int = 8  # K frames sampled evenly across the clip; 0 caches mel only
    size: int = 224  # face crops are size x size RGB
    margin: float = 1.3  # crop side = margin x the larger side of the detected box
    detector: str = "auto"  # auto (mediapipe, else mtcnn, else haar), or one of faces.DETECTORS
    detect_size: int = 320  # frames are downscaled to this longest side for detection
    min_face_size: int = 40  # smallest face side looked for, in detection pixels (speed)
    codec: str = "jpeg"  # how crops are stored: jpeg (~12x smaller) or raw (uint8 arrays)
    quality: int = 90  # jpeg quality, 1-100 (90: ~41 dB PSNR on face crops)


def _every_frame_or_no_tracks(tracks: TracksConfig) -> bool:
    return tracks.locate_every == 1 or not tracks.windows


def _placed_by_name(tracks: TracksConfig) -> bool:
    return tracks.placement == "name"


@dataclass
class TracksConfig:
    """Time-aligned windows of mouth frames and speech (preprocess/tracks.py)."""

    # W windows per video, placed from its name (0: no tracks). One by default: the sync
    # model's lip-sync figures were measured on one, and one costs the default's CPU about
    # 1.2x (a second about doubles the mouth tracking again: docs/performance.md).
    windows: int = 1
    # Where the windows lie: name (drawn from the video's name, over its fake segments where
    # its layout gives them) or tile (one after another from the clip's start, so W windows
    # cover W x frames / fps seconds of every clip: what a model that says where a video is
    # fake reads; windows past a clip's end hold nothing and say so). Left out of the hash at
    # name (what caches made before it did).
    placement: str = field(default="name", metadata=omitted_where(_placed_by_name))
    frames: int = 25  # T contiguous frames per window, taken at `fps`
    fps: float = 25.0  # the track's frame rate: frame k is the source frame shown at k / fps
    size: int = 88  # mouth crops are size x size grey (LipForensics' 88 px)
    locator: str = "auto"  # how the mouth is found: auto, or one of preprocess/lips.py LOCATORS
    # The mouth locator looks at every k-th frame of a window (and its last); the frames
    # between get the mouth interpolated. 4 cuts mouth_track's CPU per 25-frame window by
    # 2.3-2.6x (78-98 ms to 31-40) and moves the stabilised mouth centre from the
    # every-frame track by a median 1.4 px, 95th percentile 4.4 px, on a filmed talking head
    # at 480 px (3: 1.0 and 3.1 px; python -m benchmarks.mouth_bench, docs/performance.md);
    # the sync model on held-out lip-sync and desync fakes at 4 against 3: `make eval-sync`'s
    # protocol, docs/generalisation.md. 1: every frame. Left out of the hash at 1 (what
    # caches made before it did) and without tracks.
    locate_every: int = field(default=4, metadata=omitted_where(_every_frame_or_no_tracks))
    frame_size: int = 480  # frames are decoded at this longest side to find and crop the mouth
    audio_rate: int = 16000  # the windows' audio: mono int16 at this rate, the frames' instants
    quality: int = 90  # JPEG quality of the mouth crops


@dataclass
class AuditConfig:
    """Per-video facts for `avcache-inspect CACHE audit` (preprocess/facts.py)."""

    facts: bool = True  # record them: about a millisecond a video, from what is decoded anyway
    # A 10 ms frame of audio is silent this many dB below the clip's loudest frame (and always
    # below -60 dBFS): what the leading and trailing silence facts measure.
    silence_db: float = 40.0


@dataclass
class LimitsConfig:
    seconds_per_video: float = 120.0  # wall-clock limit per video, then a timeout failure; 0: off
    # The run stops before any video is read when more than this share of a split's listed
    # files is missing (and more than one): a wrong data root or folder, not lost files.
    # Below it, each missing file is a `resolve` failure. 1: never stop.
    max_missing: float = field(default=0.05, metadata=SINCE_ADDED)

    def __post_init__(self) -> None:
        if not 0 <= self.max_missing <= 1:
            raise ValueError(
                f"limits.max_missing must be a share from 0 to 1, got {self.max_missing}"
            )
        if self.seconds_per_video < 0:
            raise ValueError(
                "limits.seconds_per_video must be >= 0 (0 = no limit), "
                f"got {self.seconds_per_video}"
            )


@dataclass
class ShardConfig:
    size: int = 256  # videos per shard (one joblib task each)


@dataclass
class PreprocessConfig:
    splits: dict[str, SplitConfig] = field(default_factory=_ffdv_splits)  # FFDV layout
    audio: AudioConfig = field(default_factory=AudioConfig)
    faces: FacesConfig = field(default_factory=FacesConfig)
    tracks: TracksConfig = field(default_factory=TracksConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
