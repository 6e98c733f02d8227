"""The on-disk cache format shared by the preprocessor and the trainer."""

from cache.reader import Cache, ShardReader, open_cache
from cache.schema import FORMAT, VERSION, Sample
from cache.writer import ShardWriter

__all__ = ["FORMAT", "VERSION", "Cache", "Sample", "ShardReader", "ShardWriter", "open_cache"]
