"""Config files, overrides and their refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from avcache.common.config import (
    ConfigError,
    config_hash,
    load_config,
    shipped_configs,
    to_dict,
)
from avcache.preprocess.config import PreprocessConfig
from avcache.preprocess.run import OVERRIDE_EXAMPLE
from avcache.preprocess.run import main as preprocess_main
from avcache.train.config import TrainConfig

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "preprocess.yaml"
BASELINE = "train_baseline.yaml"


def test_shipped_yaml_equals_the_defaults():
    assert to_dict(load_config(PreprocessConfig, CONFIG)) == to_dict(PreprocessConfig())
    # Every key, also those the resolved config leaves out at their defaults or where unused.
    assert load_config(PreprocessConfig, CONFIG) == PreprocessConfig()


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


def test_an_override_without_a_file_updates_the_defaults_entry():
    """The built-in defaults hold splits.test: an override of one of its keys keeps the rest."""
    config = load_config(PreprocessConfig, None, ["splits.test.videos=[valset]"])
    test, default = config.splits["test"], PreprocessConfig().splits["test"]
    assert (test.labels, test.has_targets, test.videos) == (default.labels, False, ["valset"])
    assert list(config.splits) == ["train", "val", "test"]


def test_an_override_updates_the_defaults_entry_a_file_leaves_out(tmp_path):
    path = tmp_path / "faces.yaml"
    path.write_text("faces:\n  frames: 2\n")
    config = load_config(PreprocessConfig, path, ["splits.test.videos=[valset]", "faces.size=64"])
    assert config.splits["test"].labels == "prediction.txt.csv"
    assert config.splits["test"].videos == ["valset"]
    assert (config.faces.frames, config.faces.size) == (2, 64)


def test_a_files_splits_are_its_own_and_a_new_one_is_given_whole(tmp_path):
    """A file's splits replace the defaults' (the file says which there are): an override
    updates one of them; a split it does not hold must be given with its labels."""
    path = tmp_path / "lavdf.yaml"
    path.write_text("splits:\n  dev:\n    labels: metadata.json\n    videos: [.]\n"
                    "    layout: lav-df\n    select: {split: [dev]}\n")  # fmt: skip
    config = load_config(PreprocessConfig, path, ["splits.dev.select.split=[test]"])
    assert list(config.splits) == ["dev"]
    dev = config.splits["dev"]
    assert (dev.layout, dev.select) == ("lav-df", {"split": ["test"]})
    refusal = (r"override splits.test.videos=\[x\]: splits.test: labels must be given; .* "
               r"splits.test=\{labels: ..., videos: ...\}")  # fmt: skip
    with pytest.raises(ConfigError, match=refusal):
        load_config(PreprocessConfig, path, ["splits.test.videos=[x]"])
    whole = "splits.test={labels: t.csv, videos: [x], has_targets: false}"
    assert load_config(PreprocessConfig, path, [whole]).splits["test"].videos == ["x"]


def test_an_override_of_a_whole_section_still_takes_its_defaults():
    config = load_config(PreprocessConfig, None, ["faces={frames: 3}"])
    assert (config.faces.frames, config.faces.size) == (3, PreprocessConfig().faces.size)


def test_overrides_resolve_as_the_file_they_update_would():
    """Filling in the defaults changes nothing an override does not name: same hash."""
    assert config_hash(load_config(PreprocessConfig, None, ["faces.frames=8"])) == config_hash(
        PreprocessConfig()
    )
    assert config_hash(load_config(TrainConfig, None, ["run.epochs=8"])) == config_hash(
        TrainConfig()
    )


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1" + "0" * 400])
def test_a_float_key_refuses_what_is_no_finite_number(value):
    """NaN passes every range check (each comparison is false), so it is refused here."""
    with pytest.raises(ConfigError, match=r"faces\.margin: expected a finite number"):
        load_config(PreprocessConfig, None, [f"faces.margin={value}"])


def test_a_shipped_config_is_named_without_a_path(tmp_path, monkeypatch):
    """A pip user has no configs/ folder: `--config train_baseline` reads the shipped file,
    also where the current folder holds a folder of that name (a clone's train/)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train").mkdir()
    shipped = load_config(TrainConfig, "train_baseline")
    assert to_dict(shipped) == to_dict(load_config(TrainConfig, CONFIG.parent / BASELINE))
    assert to_dict(load_config(TrainConfig, Path("train"))) == to_dict(TrainConfig())
    assert shipped_configs() == ["localise", "preprocess", "train", "train_baseline"]


def test_a_file_of_that_name_comes_before_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("preprocess").write_text("faces:\n  frames: 3\n")
    assert load_config(PreprocessConfig, "preprocess").faces.frames == 3


def test_a_missing_config_names_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^configs/train.yaml: no such config file; .*"
                       r"\(localise, preprocess, train, train_baseline\)"):  # fmt: skip
        load_config(TrainConfig, "configs/train.yaml")


def test_the_help_example_runs_as_printed(capsys):
    with pytest.raises(SystemExit):
        preprocess_main(["--help"])
    assert " ".join(OVERRIDE_EXAMPLE) in capsys.readouterr().out
    assert preprocess_main(["--print-config", *OVERRIDE_EXAMPLE]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["faces"]["frames"], printed["shards"]["size"]) == (4, 64)
    assert printed["splits"]["test"] == {"labels": "prediction.txt.csv", "videos": ["valset"],
                                         "has_targets": False}  # fmt: skip


def test_the_help_names_the_layouts_and_select(capsys):
    with pytest.raises(SystemExit):
        preprocess_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("ffdv", "fakeavceleb", "lav-df", "av-deepfake1m", "dfdc", "csv"):
        assert name in text
    assert "layout" in text and "select: {field: [values]}" in text
    assert "docs/datasets.md" in text and "FFDV-layout" not in text


@pytest.mark.parametrize(("override", "expected"), [
    ("tracks.fps=0", "tracks: expected tracks.fps 1 to 120"),
    ("faces.margin=.nan", "faces.margin: expected a finite number"),
    ("faces.framez=3", "unknown key 'framez'; did you mean 'frames'?"),
    ("splits.new.labels=a.csv", "splits.new: videos must be given"),
    ("limits.max_missing=2", "limits.max_missing must be a share from 0 to 1"),
])  # fmt: skip
def test_print_config_refuses_a_bad_override_in_one_line(capsys, override, expected):
    assert preprocess_main(["--print-config", override]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("avcache-preprocess: error: ") and expected in captured.err
    assert captured.err.count("\n") == 1
