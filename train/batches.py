"""One batch format for every way a sample reaches a model: the loader's workers reading a
cache's shards (train/loader.py) and avcache-predict --video (or avcache-fuse --video)
preprocessing a raw file in-process. Both make their batches with `batch_of`, and the
trainer takes either through the same steps (decode, to the device, prepare, score): a
raw video is scored as its cached twin would be.

A batch holds, for each cache dataset the model reads, a tensor [B, ...] of what the cache
gives back (uint8 pixels and mel, int16 audio: normalised where the model runs,
train/augment.py), the labels, and, where the training device decodes the faces
(train/decode.py), their JPEG bytes in place of `faces`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from avcache.cache import schema
from avcache.cache.codec import encode_crops, round_trip, round_trip_grey

if TYPE_CHECKING:
    from avcache.preprocess.config import PreprocessConfig

# Faces left as JPEG for the training device to decode (train/decode.py): the crops' bytes,
# one flat uint8 tensor; each crop's end in it [B, K]; where they were read.
JPEG_BYTES, JPEG_ENDS, JPEG_FROM = "faces_jpeg", "faces_jpeg_ends", "faces_jpeg_from"


@dataclass(frozen=True)
class JpegFaces:
    """A batch's face crops still JPEG-coded: every crop's bytes joined, each crop's end in
    them [B, K], and where they came from (named if they do not decode)."""

    data: np.ndarray
    ends: np.ndarray
    where: list[str]


def batch_of(columns: dict[str, np.ndarray | list[str]],
             faces: JpegFaces | None = None) -> dict[str, torch.Tensor | list[str]]:  # fmt: skip
    """A batch from its columns, each a dataset's values of the batch's samples ([B, ...]
    arrays, or lists of names), sharing their memory; with `faces`, the crops left coded."""
    batch = {name: value if isinstance(value, list) else torch.from_numpy(value)
             for name, value in columns.items()}  # fmt: skip
    if faces is not None:
        batch |= {JPEG_BYTES: torch.from_numpy(faces.data),
                  JPEG_ENDS: torch.from_numpy(faces.ends), JPEG_FROM: faces.where}  # fmt: skip
    return batch


def raw_batch(sample: schema.Sample, fields: tuple[str, ...], config: PreprocessConfig,
              jpeg_faces: bool) -> dict[str, torch.Tensor | list[str]]:  # fmt: skip
    """A raw video's preprocessed `sample` as a batch of one, as the loader reads its cached
    twin from a cache made with `config`: of the datasets in `fields`, what the cache codes
    as JPEG coded and decoded again as the workers decode it, or, with `jpeg_faces` (where
    the run's device decodes the faces), the faces left coded for it."""
    columns: dict[str, np.ndarray | list[str]] = {schema.LABEL: np.array([sample.label], np.int8)}
    coded = jpeg_faces and schema.FACES in fields and sample.faces.size > 0
    for field in fields:
        if not (coded and field == schema.FACES):
            columns[field] = AS_CACHED[field](sample, config)[None]
    return batch_of(columns, jpeg_of(sample, config) if coded else None)


def jpeg_of(sample: schema.Sample, config: PreprocessConfig) -> JpegFaces:
    """A raw video's face crops JPEG-coded as its cache codes them, left coded."""
    crops = encode_crops(sample.faces, config.faces.quality)
    ends = np.cumsum([len(crop) for crop in crops], dtype=np.int64).reshape(1, -1)
    # A writable copy: bytes give a read-only array, which torch.from_numpy warns about.
    data = np.frombuffer(b"".join(crops), dtype=np.uint8).copy()
    return JpegFaces(data, ends, [f"{sample.video_name} (preprocessed here)"])


def cached_faces(sample: schema.Sample, config: PreprocessConfig) -> np.ndarray:
    """The crops as a cache made with `config` gives them back: through JPEG where it codes
    them (nothing to code where no face was cached)."""
    if config.faces.codec == "jpeg" and sample.faces.size:
        return round_trip(sample.faces, config.faces.quality)
    return sample.faces


# Dataset -> a sample's values of it as a reader gives them: a sample read from a cache is
# already decoded as the loader decodes it.
SAMPLE_VALUES = {
    schema.MEL: lambda sample: sample.mel,
    schema.FACES: lambda sample: sample.faces,
    schema.LIPS: lambda sample: sample.tracks.lips,
    schema.TRACK_AUDIO: lambda sample: sample.tracks.audio,
    schema.TRACK_FRAMES_REAL: lambda sample: sample.tracks.frames_real,
    schema.TRACK_START: lambda sample: sample.tracks.start,
}
# Dataset -> a raw sample's values of it as its cache gives them back to the loader: what
# the cache codes as JPEG through the codec and back, the rest as they are.
AS_CACHED = {
    **{
        field: lambda sample, config, value=value: value(sample)
        for field, value in SAMPLE_VALUES.items()
    },
    schema.FACES: cached_faces,
    schema.LIPS: lambda sample, config: round_trip_grey(sample.tracks.lips, config.tracks.quality),
}


def cached_batch(
    sample: schema.Sample, fields: tuple[str, ...]
) -> dict[str, torch.Tensor | list[str]]:
    """A cached `sample` (read from its shard) as a batch of one, as the loader would give
    it: its values of `fields`, its label and name."""
    columns: dict[str, np.ndarray | list[str]] = {
        schema.LABEL: np.array([sample.label], np.int8),
        schema.VIDEO_NAME: [sample.video_name],
    }
    for field in fields:
        columns[field] = np.ascontiguousarray(SAMPLE_VALUES[field](sample))[None]
    return batch_of(columns)
