"""Config files, overrides and their refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from avcache.cache.config import ConfigError, config_hash, load_config, to_dict
from avcache.preprocess.config import PreprocessConfig
from avcache.train.config import TrainConfig

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "preprocess.yaml"


def test_shipped_yaml_equals_the_defaults():
    assert to_dict(load_config(PreprocessConfig, CONFIG)) == to_dict(PreprocessConfig())


def test_dotted_overrides_are_typed():
    config = load_config(
        PreprocessConfig,
        CONFIG,
        ["faces.frames=4", "faces.margin=2", "splits.test.videos=[valset]"],
    )
    assert config.faces.frames == 4
    assert config.faces.margin == 2.0 and isinstance(config.faces.margin, float)
    assert config.splits["test"].videos == ["valset"]


def test_unknown_key_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown key 'frame'; did you mean 'frames'"):
        load_config(PreprocessConfig, CONFIG, ["faces.frame=4"])


def test_unknown_key_in_a_file_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("audio:\n  mode: baseline\n  sr: 16000\n")
    with pytest.raises(ConfigError, match="unknown key 'sr'"):
        load_config(PreprocessConfig, path)


@pytest.mark.parametrize("override", ["faces.frames=many", "faces.frames=true", "shards=3", "x"])
def test_bad_values_are_refused(override):
    with pytest.raises(ConfigError):
        load_config(PreprocessConfig, None, [override])


def test_hash_changes_with_any_value():
    base = config_hash(load_config(PreprocessConfig, None))
    assert base == config_hash(PreprocessConfig())
    assert base != config_hash(load_config(PreprocessConfig, None, ["faces.size=112"]))


def test_shipped_train_yaml_equals_the_defaults():
    path = CONFIG.parent / "train.yaml"
    assert to_dict(load_config(TrainConfig, path)) == to_dict(TrainConfig())


def test_baseline_recipe_config():
    config = load_config(TrainConfig, CONFIG.parent / "train_baseline.yaml")
    assert (config.model.kind, config.optim.name, config.optim.lr) == ("audio", "adam", 0.003)
    assert (config.optim.schedule, config.optim.step_size, config.optim.gamma) == ("step", 4, 0.85)
    assert config.data.batch_size == 40 and config.augment.vflip == 0.5
