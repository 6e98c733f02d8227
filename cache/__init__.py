"""The on-disk cache format shared by the preprocessor and the trainer.

In a notebook: `open_cache(path).sample(name)` is one video's Sample, its mel and
faces numpy arrays; `avcache-inspect` (inspection/cli.py) draws sheets and a gallery.
"""

from avcache.cache.reader import Cache, ShardReader, open_cache
from avcache.cache.schema import FORMAT, VERSION, Sample
from avcache.cache.writer import ShardWriter

__all__ = ["FORMAT", "VERSION", "Cache", "Sample", "ShardReader", "ShardWriter", "open_cache"]
