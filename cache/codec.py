"""Face crops stored as JPEG (cache format v2, `faces.codec: jpeg`).

A shard's encoded faces lie in one flat uint8 dataset, sample after sample and
crop after crop (FFCV's data region, not HDF5 variable-length objects), with
`faces_ends` [N, K], the end of each crop's bytes in it. The bytes of samples
[a, b) are therefore one contiguous range: a block of a batch is one h5py read,
as with raw crops. Each sample's bytes carry an xxh3-64 checksum (`faces_xxh3`),
checked before they are decoded; xxh3 also sees swapped or cancelling changes,
which the word sum used for raw arrays does not. simplejpeg (libjpeg-turbo)
encodes with 4:2:0 chroma and decodes straight into the batch's arrays; it was
the fastest CPU decoder measured (benchmarks/faces_bench.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import simplejpeg
import xxhash

CODECS = ("raw", "jpeg")


def encode_crops(faces: np.ndarray, quality: int) -> list[bytes]:
    """The K crops [K, S, S, 3] of one sample as JPEG bytes."""
    return [
        simplejpeg.encode_jpeg(np.ascontiguousarray(crop), quality, "RGB", "420") for crop in faces
    ]


def encode_grey_crops(crops: np.ndarray, quality: int) -> list[bytes]:
    """Grey crops [n, S, S] as JPEG bytes (one channel: a third of the bytes of RGB)."""
    return [simplejpeg.encode_jpeg(np.ascontiguousarray(crop[..., None]), quality, "GRAY")
            for crop in crops]  # fmt: skip


def decode_grey_block(data: np.ndarray, ends: np.ndarray, before: int, out: np.ndarray,
                      crops: Sequence[int] | None = None) -> None:  # fmt: skip
    """Decode the grey crops of a block of samples into `out` [n, C, S, S]: of each sample's
    crops (`ends` [n, K]), those numbered `crops` (default all: C = K), the others left
    undecoded. A crop whose header does not say S x S raises ValueError."""
    _decode(data, crop_ranges(ends, before, crops), out[..., None], "GRAY")


def round_trip_grey(crops: np.ndarray, quality: int) -> np.ndarray:
    """Grey crops [..., S, S] as a cache with tracks gives them back (to score a raw video
    as trained)."""
    flat = np.ascontiguousarray(crops).reshape(1, -1, *crops.shape[-2:])
    out = np.empty_like(flat)
    encoded = encode_grey_crops(flat[0], quality)
    ends = np.cumsum([len(part) for part in encoded])[None]
    decode_grey_block(np.frombuffer(b"".join(encoded), np.uint8), ends, 0, out)
    return out.reshape(crops.shape)


def round_trip(faces: np.ndarray, quality: int) -> np.ndarray:
    """The crops as a jpeg cache would give them back (to score a raw video as trained)."""
    out = np.empty_like(faces)
    for k, encoded in enumerate(encode_crops(faces, quality)):
        simplejpeg.decode_jpeg(encoded, "RGB", buffer=out[k])
    return out


def xxh3(data: np.ndarray | bytes) -> int:
    return xxhash.xxh3_64_intdigest(data)


def sample_ranges(ends: np.ndarray, before: int) -> np.ndarray:
    """[n + 1] byte offsets where each of n samples starts (then where the last ends),
    relative to the first, from their crops' ends [n, K] and the end of the sample before
    them (`before`, 0 for the first of the shard)."""
    stops = ends[:, -1].astype(np.int64) if ends.shape[1] else np.full(len(ends), before)
    return np.concatenate([[before], stops]) - before


def checksum_mismatches(data: np.ndarray, ranges: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """Positions (0-based in the block) whose bytes differ from their stored xxh3."""
    found = np.array([xxh3(data[ranges[i] : ranges[i + 1]]) for i in range(len(sums))],
                     dtype=np.uint64)  # fmt: skip
    return np.flatnonzero(found != sums)


def crop_ranges(ends: np.ndarray, before: int,
                crops: Sequence[int] | None = None) -> list[tuple[int, int]]:  # fmt: skip
    """(start, stop) of every crop of a block, in order, relative to its first byte; with
    `crops`, of each sample only the crops of those numbers."""
    starts = np.concatenate([[before], ends.reshape(-1)[:-1]]) - before
    every = list(zip(starts.tolist(), (ends.reshape(-1) - before).tolist(), strict=True))
    if crops is None:
        return every
    count = ends.shape[1]
    return [every[i * count + c] for i in range(len(ends)) for c in crops]


def check_sizes(data: np.ndarray, ends: np.ndarray, before: int, size: int,
                crops: Sequence[int] | None = None) -> None:  # fmt: skip
    """Raise ValueError unless every crop's header (of each sample, those numbered `crops`)
    says size x size: a crop of another size would not fill its slot (read from the header
    alone, microseconds a crop)."""
    check_ranges(data, crop_ranges(ends, before, crops), size)


def check_ranges(data: np.ndarray, ranges: list[tuple[int, int]], size: int) -> None:
    """check_sizes for the crops at `ranges` of `data`."""
    for start, stop in ranges:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data[start:stop])
        if (height, width) != (size, size):
            raise ValueError(f"a {width}x{height} crop where {size}x{size} is stored")


def decode_block(data: np.ndarray, ends: np.ndarray, before: int, out: np.ndarray,
                 crops: Sequence[int] | None = None) -> None:  # fmt: skip
    """Decode the crops of a block of samples into `out` [n, C, S, S, 3] (of each sample's
    crops, those numbered `crops`; default all); a crop whose header does not say S x S RGB
    raises ValueError."""
    _decode(data, crop_ranges(ends, before, crops), out, "RGB")


def _decode(data: np.ndarray, ranges: list[tuple[int, int]], out: np.ndarray,
            colour: str) -> None:  # fmt: skip
    """Every crop at `ranges` into its slot of `out` [n, C, S, S, channels], in order, once
    every header says S x S."""
    check_ranges(data, ranges, out.shape[2])
    slots = (out[i, c] for i in range(out.shape[0]) for c in range(out.shape[1]))  # views
    for slot, (start, stop) in zip(slots, ranges, strict=True):
        simplejpeg.decode_jpeg(data[start:stop], colour, buffer=slot)
