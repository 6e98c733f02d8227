"""avcache-predict on a cache made with another preprocessing config: refused in one line
where the model's inputs would differ from those it was trained on, accepted where only
what they are not made by differs (shards, splits, labels, the mel for a faces model)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from avcache.cache import schema
from avcache.common.atomic import write_json_atomic
from avcache.train.predict import main as predict_main
from avcache.train.run import main as train_main
from avcache.train.score import main as score_main
from tests import toy
from tests.layouts import lavdf_entry
from tests.toy import small_config, write_toy_cache, write_track_cache

SPLITS = {"train": 24, "val": 8}
ONE_EPOCH = {"run.epochs": 1}


def rehashed(root: Path, **changes: object) -> Path:
    """The cache with `changes` (section__key=value) in its index's config, and the hash of
    that config, as a cache preprocessed with it records."""
    index = json.loads((root / schema.INDEX_FILE).read_text())
    for key, value in changes.items():
        section, name = key.split("__")
        index["config"][section][name] = value
    text = json.dumps(index["config"], sort_keys=True).encode()
    index["config_hash"] = hashlib.sha256(text).hexdigest()[:16]
    write_json_atomic(root / schema.INDEX_FILE, index)
    return root


def trained(cache: Path, run: Path, **options: object) -> Path:
    assert train_main(["--cache", str(cache), "--out", str(run),
                       *small_config(**{**ONE_EPOCH, **options})]) == 0  # fmt: skip
    return run


def listing(path: Path, split: str, count: int) -> Path:
    path.write_text("video_name,target\n" + "".join(f"{split}{i:03d}.mp4,\n" for i in range(count)))
    return path


def predict(run: Path, cache: Path | None, names: Path, out: Path) -> int:
    extra = [] if cache is None else ["--cache", str(cache)]
    return predict_main(["--run", str(run), "--list", str(names), "--out", str(out), *extra])


def refusal(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def av_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("av")
    write_toy_cache(root / "cache", SPLITS)
    rehashed(root / "cache")
    return trained(root / "cache", root / "run", **{"model.kind": "av"})


@pytest.fixture(scope="module")
def sync_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sync")
    write_track_cache(root / "cache", SPLITS)
    rehashed(root / "cache")
    return trained(root / "cache", root / "run", **{"model.kind": "sync"})


@pytest.mark.parametrize("key,value", [("FRAMES", 3), ("SIZE", 24)])
def test_faces_of_another_form_are_refused(av_run, tmp_path, monkeypatch, capsys, key, value):
    trained_value = getattr(toy, key)
    monkeypatch.setattr(toy, key, value)
    other = tmp_path / "other"
    write_toy_cache(other, {"test": 8})
    rehashed(other)
    names = listing(tmp_path / "list.csv", "test", 8)
    assert predict(av_run, other, names, tmp_path / "out.csv") == 2
    err = refusal(capsys)
    name = f"faces.{key.lower()}"
    assert f"made with {name}={value}," in err and f"trained on {name}={trained_value} " in err
    assert "model.kind=av" in err and f"--out NEW {name}={trained_value}" in err
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("changes,expected", [
    ({"audio__mode": "padded"}, "audio.mode=padded"),
    ({"faces__codec": "jpeg"}, "faces.codec=jpeg"),
])  # fmt: skip
def test_a_mel_or_codec_of_another_recipe_is_refused(av_run, tmp_path, capsys, changes,
                                                    expected):  # fmt: skip
    other = tmp_path / "other"
    write_toy_cache(other, {"test": 8})
    rehashed(other, **changes)
    assert predict(av_run, other, listing(tmp_path / "l.csv", "test", 8), tmp_path / "o.csv") == 2
    assert f"made with {expected}," in refusal(capsys)


def test_other_shards_splits_and_labels_are_accepted(av_run, tmp_path, capsys):
    """New test videos preprocessed alike: other shard size, splits and label files."""
    other = tmp_path / "other"
    write_toy_cache(other, {"test": 8, "extra": 4})
    index = json.loads((other / schema.INDEX_FILE).read_text())
    index["config"]["splits"] = {
        "test": {"labels": "new_list.csv", "videos": ["new"], "has_targets": False},
        "extra": {"labels": "more.txt", "videos": ["more"]},
    }
    write_json_atomic(other / schema.INDEX_FILE, index)
    rehashed(other, shards__size=7, audit__facts=False, limits__seconds_per_video=5.0)
    out = tmp_path / "out.csv"
    assert predict(av_run, other, listing(tmp_path / "list.csv", "test", 8), out) == 0, \
        capsys.readouterr().err  # fmt: skip
    assert len(out.read_text().splitlines()) == 9


def test_a_faces_model_does_not_read_the_mel(tmp_path, capsys):
    write_toy_cache(tmp_path / "cache", SPLITS)
    run = trained(rehashed(tmp_path / "cache"), tmp_path / "run", **{"model.kind": "faces"})
    other = tmp_path / "other"
    write_toy_cache(other, {"test": 8})
    rehashed(other, audio__mode="padded")
    out = tmp_path / "out.csv"
    assert predict(run, other, listing(tmp_path / "l.csv", "test", 8), out) == 0, \
        capsys.readouterr().err  # fmt: skip
    assert len(out.read_text().splitlines()) == 9


def test_the_runs_cache_remade_in_place_is_refused(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    write_toy_cache(cache, SPLITS)
    run = trained(rehashed(cache), tmp_path / "run", **{"model.kind": "faces"})
    names = listing(tmp_path / "list.csv", "val", 8)
    assert predict(run, None, names, tmp_path / "before.csv") == 0
    shutil.rmtree(cache)
    monkeypatch.setattr(toy, "SIZE", 24)
    write_toy_cache(cache, SPLITS)
    rehashed(cache)
    assert predict(run, None, names, tmp_path / "after.csv") == 2
    err = refusal(capsys)
    assert "made with faces.size=24," in err and "trained on faces.size=32 " in err
    assert not (tmp_path / "after.csv").exists()


@pytest.mark.parametrize("key,value,layout", [
    ("frames", 12, dict(frames=12, audio_samples=round(12 * toy.TRACK_RATE / toy.TRACK_FPS))),
    ("size", 24, dict(size=24)),
])  # fmt: skip
def test_tracks_of_another_layout_are_refused(sync_run, tmp_path, monkeypatch, capsys, key,
                                              value, layout):  # fmt: skip
    trained_value = getattr(toy, f"TRACK_{key.upper()}")
    monkeypatch.setattr(toy, f"TRACK_{key.upper()}", value)
    monkeypatch.setattr(toy, "TRACK_LAYOUT", dataclasses.replace(toy.TRACK_LAYOUT, **layout))
    other = tmp_path / "other"
    write_track_cache(other, {"test": 8})
    rehashed(other)
    assert predict(sync_run, other, listing(tmp_path / "l.csv", "test", 8),
                   tmp_path / "o.csv") == 2  # fmt: skip
    err = refusal(capsys)
    assert f"made with tracks.{key}={value}," in err
    assert f"trained on tracks.{key}={trained_value} (model.kind=sync" in err


def lavdf_metadata(path: Path, splits: dict[str, tuple[str, int]]) -> Path:
    """A LAV-DF metadata.json of the toy cache's videos: each cached split under its LAV-DF
    split name, fakes (odd i, as toy.py makes them) alternately of the video and the audio."""
    entries = []
    for cached, (split, count) in splits.items():
        for i in range(count):
            video, audio = bool(i % 2) and i % 4 == 1, bool(i % 2) and i % 4 == 3
            periods = [[0.1, 0.5]] if i % 2 else []
            entries.append(lavdf_entry(f"{cached}{i:03d}.mp4", split, periods, video, audio))
    path.write_text(json.dumps(entries))
    return path


def test_a_lavdf_list_is_predicted_as_its_ffdv_twin_and_scored_from_itself(av_run, tmp_path,
                                                                           capsys):  # fmt: skip
    """--list metadata.json --layout lav-df --select split=dev: a row for each dev entry, in
    its order, scored as the same names in FFDV's list; the submission is then scored from the
    same file. A split LAV-DF does not have is refused, in one line, before any model."""
    metadata = lavdf_metadata(tmp_path / "metadata.json", {"train": ("train", 24),
                                                           "val": ("dev", 8)})  # fmt: skip
    lavdf, ffdv = tmp_path / "lavdf.csv", tmp_path / "ffdv.csv"
    argv = ["--run", str(av_run), "--list", str(metadata), "--layout", "lav-df"]
    assert predict_main([*argv, "--select", "split=dev", "--out", str(lavdf)]) == 0
    assert predict(av_run, None, listing(tmp_path / "list.csv", "val", 8), ffdv) == 0
    rows = lavdf.read_text().splitlines()
    assert rows == ffdv.read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == [f"val{i:03d}.mp4" for i in range(8)]
    capsys.readouterr()
    assert score_main([str(lavdf), str(metadata), "--layout", "lav-df", "--select",
                       "split=dev"]) == 0  # fmt: skip
    assert "auc by kind of fake, against all 4 reals: video " in capsys.readouterr().out
    assert predict_main([*argv, "--select", "split=val", "--out", str(tmp_path / "x.csv")]) == 2
    assert refusal(capsys) == (
        f"avcache-predict: error: --select: split=val matches no entry of {metadata}; its "
        "split values are: train, dev\n"
    )
    assert not (tmp_path / "x.csv").exists()
