"""What a sample is, whichever cache and layout holds it: one identity across caches.

A sample's identity is its video name, the sum64 of its mel image (schema.MEL_SUM) and its
duration. The mel image is computed from the audio alone, identically whatever the faces or
tracks settings, and the duration is the container's; so one video cached twice, with or
without tracks, with 2 or 8 faces, raw or JPEG, has one identity in both, while two data
sets' different videos that share a name ("000001.mp4") differ in their sound and keep
theirs apart. All three are small columns every shard stores and the reader checks when it
opens the shard (names and durations under its metadata sha256): no pixel is read.

What it does not see: the same video cached with other audio settings (audio.mode,
audio.trim_silence_db, audio.max_seconds below its length) has another mel image, so
another identity. Two different videos of one name, both without sound (an all-zero mel)
and of the same length to float32 precision, share one.
"""

from __future__ import annotations

from avcache.cache import schema
from avcache.cache.reader import ShardEntry

Identity = tuple[str, int, float]  # (video name, mel sum64, duration in seconds)


def shard_identities(entry: ShardEntry) -> list[Identity]:
    """The identity of every sample of a shard, in its order: the shard opened and checked
    as any reader opens it, then three columns read (8 + 4 bytes and a name a sample)."""
    with entry.open() as shard:
        names = shard.video_names
        sums = shard.read(schema.MEL_SUM).tolist()
        durations = shard.read(schema.DURATION).tolist()
    return list(zip(names, sums, durations, strict=True))
