"""A run folder: its config, the cache it was trained on, and its checkpoints.

Run folders travel between people like caches, so what they record is believed only for
what it computes (the model, the schedule, how the cache was made), never for which
program to run or which file to read: those keys (LOCAL in the configs) come from the
user's command line or installation (common/config.py local_values).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING

from avcache.cache import open_cache, schema
from avcache.cache.reader import Cache
from avcache.cache.remote import location
from avcache.common.atomic import write_json_atomic
from avcache.common.config import ConfigError, dump_yaml, from_dict, load_config, local_values
from avcache.common.untrusted import load_json, mapping, text
from avcache.train.config import MODEL_INPUTS, TrainConfig, remote_settings, validate

if TYPE_CHECKING:
    from avcache.train.engine import Trainer

CONFIG, CACHE = "config.yaml", "cache.json"
LAST, BEST, METRICS = "last.pt", "best.pt", "metrics.jsonl"
# The preprocessing keys that make what each dataset a model reads (MODEL_INPUTS) holds
# (its shape, dtype and recipe): a cache that differs from the run's in one of them feeds
# the model inputs it was not trained on. The rest (shards.size, splits and their labels,
# audit, limits, how faces are found) leave the inputs' form as trained.
TRACK_LAYOUT = ("tracks.windows", "tracks.frames", "tracks.size", "tracks.fps",
                "tracks.audio_rate")  # fmt: skip
INPUT_KEYS: dict[str, tuple[str, ...]] = {
    schema.MEL: ("audio.mode", "audio.trim_silence_db"),
    schema.FACES: ("faces.frames", "faces.size", "faces.codec"),
    schema.LIPS: TRACK_LAYOUT,
    schema.TRACK_AUDIO: TRACK_LAYOUT,
}
# A model restored from a checkpoint needs none of the files that started its run.
WEIGHTS_IN_CHECKPOINT = {"model.pretrained": None, "model.init": None}


class RunFolder:
    """Reads (and, for a new run, writes) what a run needs besides its checkpoints."""

    def __init__(self, path: Path, cache: Path | None = None) -> None:
        self.path = Path(path)
        if not (self.path / CONFIG).is_file():
            raise FileNotFoundError(
                f"{self.path}: not a run folder (no {CONFIG}); see avcache-train"
            )
        # Checked as avcache-train checks a config before a run: a value it would refuse (a
        # batch of 0, a mel of 100,000 px) is refused here too, not met inside a model.
        # Its files are read only where they lie inside it: a link out of the folder is
        # refused unread (the folder itself may be reached through a link).
        self.config = load_config(TrainConfig, self.path / CONFIG, root=self.path)
        validate(self.config, str(self.path / CONFIG))
        where = self.path / CACHE
        recorded = mapping(load_json(where, "run's cache record", root=self.path), str(where))
        self.cache_path = location(str(cache or text(recorded.get("path"), f"{where}: 'path'")))
        self.cache_config = mapping(recorded.get("config", {}), f"{where}: 'config'")
        self.cache_hash = recorded.get("config_hash")

    @staticmethod
    def create(path: Path, config: TrainConfig, cache: Cache) -> RunFolder:
        path.mkdir(parents=True, exist_ok=True)
        dump_yaml(config, path / CONFIG)
        record = {"path": cache.recorded_location, "config_hash": cache.config_hash,
                  "config": cache.config}  # fmt: skip
        write_json_atomic(path / CACHE, record)
        return RunFolder(path)

    def cache(self, check_shards: bool = True) -> Cache:
        return open_cache(self.cache_path, check_shards, remote_settings(self.config.data))

    def trainer(self, best: bool = False, check_shards: bool = True) -> Trainer:
        """A Trainer restored from best.pt (weights only, to predict) or last.pt (everything);
        one that reads no shard (scoring a raw video) need not open them all first. A
        predicting Trainer reads one cache, the run's or --cache's: the other caches of its
        data.caches served training and validation only and are not opened."""
        # torch and timm take seconds to import: a run folder is read and checked without them
        from avcache.train.engine import Trainer
        from avcache.train.mix import Source

        checkpoint = self.path / (BEST if best else LAST)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{checkpoint}: no checkpoint yet; train first")
        config = self.restoring(self.config, checkpoint)
        cache = self.cache(check_shards)
        if best:
            self.check_inputs(cache)
        sources = [Source(cache.name, 1.0, cache)] if best else None
        trainer = Trainer(config, cache, self.path, sources=sources)
        trainer.load(checkpoint, weights_only_model=best)
        return trainer

    def check_inputs(self, cache: Cache, resuming: bool = False) -> None:
        """Refuse to predict on `cache`, or to resume on it (the run's own cache re-made in
        its folder), where its config differs from the one the run was trained on in a key
        the model's inputs are made by (INPUT_KEYS): the model would be fed inputs of another
        form without a word. An equal config hash is the same config; a run that recorded no
        config (an old run folder) is not checked."""
        if cache.config_hash == self.cache_hash or not self.cache_config:
            return
        where = str(self.path / CACHE)
        trained = preprocess_values(self.cache_config, where)
        found = preprocess_values(cache.config, str(cache.index_path))
        keys = dict.fromkeys(key for field in MODEL_INPUTS[self.config.model.kind]
                             for key in INPUT_KEYS[field])  # fmt: skip
        differing = [key for key in keys if found(key) != trained(key)]
        if differing:
            key, values = differing[0], " ".join(f"{key}={trained(key)}" for key in differing)
            fix = self.resume_fix(cache, values) if resuming else (
                "preprocess the videos as the run's cache was: avcache-preprocess --config "
                f"CONFIG --data DATA --out NEW {values}")  # fmt: skip
            raise ConfigError(
                f"{cache.location}: made with {key}={found(key)}, but {self.path} was trained on "
                f"{key}={trained(key)} (model.kind={self.config.model.kind} reads it): {fix}"
            )

    def resume_fix(self, cache: Cache, values: str) -> str:
        """What to do about a run whose cache was re-made with another config in its folder."""
        return (
            f"a resumed run goes on reading {cache.location}, so re-make it as it was "
            f"(avcache-preprocess --config CONFIG --data DATA --out {cache.location} {values}), "
            f"or train a new run on it: avcache-train --config {self.path / CONFIG} --cache "
            f"{cache.location} --out NEW"
        )

    def restoring(self, config: TrainConfig, checkpoint: Path) -> TrainConfig:
        """This run's `config` for a model restored from `checkpoint`: the weights files that
        started the run are not read again. Without the checkpoint (a run stopped before its
        first), a resume would start from them: refused, unless the run names none."""
        given = WEIGHTS_IN_CHECKPOINT if checkpoint.is_file() else {}
        fix = (f"{self.path} holds no checkpoint yet, so a resume would start from that file; "
               f"start a new run instead, naming the weights yourself: avcache-train --config "
               f"{self.path / CONFIG} --cache {self.cache_path} --out NEW")  # fmt: skip
        return local_values(config, str(self.path / CONFIG), given, fix)

    def preprocess_config(self, ffmpeg: str | None = None):
        """The preprocessing config the cache was made with (to score raw videos alike), with
        the user's `ffmpeg` (their --ffmpeg; None: the recorded one only if it is `auto`)."""
        from avcache.preprocess.pipeline import validate

        where = str(self.path / CACHE)
        recorded = resolved(self.cache_config, where)
        try:
            validate(recorded)  # sizes within the preprocessor's limits, before any allocation
        except ValueError as error:
            raise ConfigError(f"{where}: {error}") from None
        given = {} if ffmpeg is None else {"audio.ffmpeg": ffmpeg}
        fix = ("pass --ffmpeg auto to decode with this installation's ffmpeg, or --ffmpeg PATH "
               "to name one you trust")  # fmt: skip
        return local_values(recorded, where, given, fix)


def resolved(config: dict, where: str):
    """A cache's recorded preprocessing config as a PreprocessConfig, every key it omits at
    its default."""
    from avcache.preprocess.config import PreprocessConfig

    config = {**config}
    # A cache made before faces.codec existed (format v1) stored raw crops.
    faces = mapping(config.get("faces", {}), f"{where}: config.faces")
    config["faces"] = {"codec": "raw", **faces}
    # One that does not say tracks.locate_every located the mouth on every frame: made before
    # the key existed, at 1 or without tracks (where it is left out, config.omitted_where).
    tracks = mapping(config.get("tracks", {}), f"{where}: config.tracks")
    config["tracks"] = {"locate_every": 1, **tracks}
    return from_dict(PreprocessConfig, config, where=where)


def preprocess_values(config: dict, where: str) -> Callable[[str], object]:
    """A lookup of a cache's recorded config by dotted key (faces.size)."""
    values = resolved(config, where)
    return lambda key: attrgetter(key)(values)
