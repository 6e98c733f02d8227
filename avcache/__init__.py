"""avcache: an offline feature cache and training service for audio-video deepfake detection.

The packages live in the repository's top-level folders and are installed under this name
(setup.cfg maps them), so that nothing collides with a user's own `cache` or `train`:
avcache.preprocess (preprocess/), avcache.cache (cache/: the shard format), avcache.common
(common/: configs, untrusted input, atomic writes, locks, labels), avcache.inspection
(inspection/: avcache-inspect), avcache.train (train/), avcache.sample (sample/).

Run from a source checkout without installing (a GPU box with its own torch, where
`python -m benchmarks.gpu_check` and `pytest tests/test_cuda.py` run from the repository's
root), the subpackages are found in those folders too.
"""

from pathlib import Path as _Path

_SOURCE_ROOT = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "cache").is_dir() and (_SOURCE_ROOT / "setup.cfg").is_file():
    __path__.append(str(_SOURCE_ROOT))
