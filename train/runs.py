"""A run folder: its config, the cache it was trained on, and its checkpoints."""

from __future__ import annotations

from pathlib import Path

from avcache.cache import open_cache
from avcache.cache.atomic import write_json_atomic
from avcache.cache.config import dump_yaml, from_dict, load_config
from avcache.cache.reader import Cache
from avcache.cache.untrusted import load_json, mapping, text
from avcache.train.config import TrainConfig
from avcache.train.engine import BEST, LAST, Trainer

CONFIG, CACHE = "config.yaml", "cache.json"


class RunFolder:
    """Reads (and, for a new run, writes) what a run needs besides its checkpoints."""

    def __init__(self, path: Path, cache: Path | None = None) -> None:
        self.path = Path(path)
        if not (self.path / CONFIG).is_file():
            raise FileNotFoundError(
                f"{self.path}: not a run folder (no {CONFIG}); see avcache-train"
            )
        self.config = load_config(TrainConfig, self.path / CONFIG)
        where = self.path / CACHE
        recorded = mapping(load_json(where, "run's cache record"), str(where))
        self.cache_path = Path(cache or text(recorded.get("path"), f"{where}: 'path'"))
        self.cache_config = mapping(recorded.get("config", {}), f"{where}: 'config'")

    @staticmethod
    def create(path: Path, config: TrainConfig, cache: Cache) -> RunFolder:
        path.mkdir(parents=True, exist_ok=True)
        dump_yaml(config, path / CONFIG)
        record = {"path": str(cache.root.resolve()), "config_hash": cache.config_hash,
                  "config": cache.config}  # fmt: skip
        write_json_atomic(path / CACHE, record)
        return RunFolder(path)

    def cache(self, check_shards: bool = True) -> Cache:
        return open_cache(self.cache_path, check_shards)

    def trainer(self, best: bool = False, check_shards: bool = True) -> Trainer:
        """A Trainer restored from best.pt (weights only) or last.pt (everything); one that
        reads no shard (scoring a raw video) need not open them all first."""
        trainer = Trainer(self.config, self.cache(check_shards), self.path)
        checkpoint = self.path / (BEST if best else LAST)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{checkpoint}: no checkpoint yet; train first")
        trainer.load(checkpoint, weights_only_model=best)
        return trainer

    def preprocess_config(self):
        """The preprocessing config the cache was made with (to score raw videos alike)."""
        from avcache.preprocess.config import PreprocessConfig

        config = {**self.cache_config}
        # A cache made before faces.codec existed (format v1) stored raw crops.
        config["faces"] = {"codec": "raw", **config.get("faces", {})}
        return from_dict(PreprocessConfig, config, where=f"{self.path / CACHE}")
