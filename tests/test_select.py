"""A split that would come out empty or mostly missing is refused before any video is read:
a `select` value no entry holds, and a data root lacking most listed files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from avcache.cache import open_cache
from avcache.preprocess.config import SplitConfig
from avcache.preprocess.dataset import LabelFileError, read_split
from avcache.preprocess.run import main as preprocess_main
from tests import layouts
from tests.media import write_labels


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return layouts.clip(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=0.4)


def lavdf_root(root: Path) -> Path:
    """A data root holding LAV-DF's metadata.json of the replica's entries, and no file."""
    entries = [layouts.lavdf_entry(*entry) for entry in layouts.LAVDF_ENTRIES]
    root.mkdir(parents=True, exist_ok=True)
    (root / "metadata.json").write_text(json.dumps(entries))
    return root


def lavdf_config(path: Path, **select: list[str]) -> Path:
    splits = {
        split: {"layout": "lav-df", "labels": "metadata.json", "videos": ["."],
                "select": {"split": values}}
        for split, values in select.items()
    }  # fmt: skip
    path.write_text(yaml.safe_dump({"splits": splits}))
    return path


def run(data: Path, out: Path, *extra: str) -> int:
    return preprocess_main(["--data", str(data), "--out", str(out), "--quiet", "--jobs", "1",
                            "faces.frames=0", *extra])  # fmt: skip


def test_a_select_value_no_entry_holds_is_refused_naming_those_present(tmp_path, capsys):
    root = lavdf_root(tmp_path / "data")
    config = lavdf_config(tmp_path / "c.yaml", train=["train"], val=["val"])
    out = tmp_path / "cache"
    assert run(root, out, "--config", str(config)) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error
    assert f"splits.val.select: split=val matches no entry of {root / 'metadata.json'}; " \
        "its split values are: train, dev, test" in error  # fmt: skip
    assert not out.exists()


def test_only_the_values_no_entry_holds_are_named(tmp_path):
    root = lavdf_root(tmp_path)
    config = SplitConfig("metadata.json", ["."], layout="lav-df",
                         select={"split": ["dev", "valid", "tst"]})  # fmt: skip
    with pytest.raises(LabelFileError, match=r"^splits\.v\.select: split=valid,tst matches"):
        read_split(root, "v", config)


def test_values_that_together_choose_no_entry_are_refused(tmp_path):
    root = lavdf_root(tmp_path)
    config = SplitConfig("metadata.json", ["."], layout="lav-df",
                         select={"split": ["test"], "modify_video": ["false"]})  # fmt: skip
    with pytest.raises(LabelFileError, match="split=test, modify_video=false together match no"):
        read_split(root, "t", config)


def test_a_data_root_missing_most_files_is_refused_with_the_count(tmp_path, capsys, source):
    root = tmp_path / "data"
    (root / "trainset").mkdir(parents=True)
    layouts.place(source, root / "trainset" / "v000.mp4")
    write_labels(root / "train_label.txt", [(f"v{i:03d}.mp4", i % 2) for i in range(40)])
    out = tmp_path / "cache"
    assert run(root, out) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(
        f"avcache-preprocess: error: split train: 39 of 40 listed videos (97.5%) are not found "
        f"in trainset/ under {root.resolve()} (train_label.txt:3: 'v001.mp4', "
    )
    assert "more than limits.max_missing=0.05" in error and "raise limits.max_missing" in error
    assert not out.exists()
    videos = read_split(root, "train", SplitConfig("train_label.txt", ["trainset"]), 1.0)
    assert sum(video.path is None for video in videos) == 39  # 1: never refused


@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_max_missing_is_a_share(tmp_path, capsys, value):
    assert run(tmp_path, tmp_path / "cache", f"limits.max_missing={value}") == 2
    assert "limits.max_missing must be a share from 0 to 1" in capsys.readouterr().err


def test_one_missing_file_of_a_split_is_a_failure_and_the_rest_is_cached(tmp_path, source):
    root = lavdf_root(tmp_path / "data")
    for name in ("train/000000.mp4", "train/000002.mp4"):  # train/000001.mp4 is missing
        layouts.place(source, root / name)
    config = lavdf_config(tmp_path / "c.yaml", train=["train"])
    out = tmp_path / "cache"
    assert run(root, out, "--config", str(config)) == 0
    cache = open_cache(out)
    assert [s.video_name for s in cache.iter_samples()] == ["train/000000.mp4", "train/000002.mp4"]
    assert [(f.video_name, f.stage) for f in cache.failures()] == [("train/000001.mp4", "resolve")]


def test_missing_files_under_a_raised_threshold_are_failures(tmp_path, source):
    root = tmp_path / "data"
    for name in ("a.mp4", "b.mp4"):
        layouts.place(source, root / "trainset" / name)
    write_labels(root / "train_label.txt", [("a.mp4", 0), ("b.mp4", 1), ("c.mp4", 0),
                                            ("d.mp4", 1)])  # fmt: skip
    out = tmp_path / "cache"
    assert run(root, out, "limits.max_missing=0.5") == 0  # 2 of 4 missing: not more than half
    cache = open_cache(out)
    assert [s.video_name for s in cache.iter_samples()] == ["a.mp4", "b.mp4"]
    assert sorted(f.video_name for f in cache.failures()) == ["c.mp4", "d.mp4"]
