"""avcache: an offline feature cache and training service for audio-video deepfake detection.

The packages live in the repository's top-level folders and are installed under this name
(setup.cfg maps them), so that nothing collides with a user's own `cache` or `train`:
avcache.preprocess (preprocess/), avcache.cache (cache/), avcache.train (train/).
"""
