"""The leave-one-manipulation-out protocol runs end to end at a tiny size."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import yaml

from avcache.cache import open_cache
from evaluation.generalisation import (
    PREPROCESS_RECORD,
    RECIPES,
    check_preprocess_overrides,
    folds_of,
    needs_tracks,
    parse_args,
    preprocess_commands,
    sample_command,
    table,
    train_command,
    twin,
)
from evaluation.generalisation import main as generalisation_main

TRACK_RECIPES = ["lips", "speech", "sync", "sync + av_mismatch", "all",
                 "all + branch heads + mismatch", "default"]  # fmt: skip
REPO = Path(__file__).resolve().parents[1]


def table_rows(lines: list[str]) -> dict[str, str]:
    """A markdown table's rows below its header and rule, by recipe: the cells after the
    recipe's name, which the README may set in bold or follow with a note in brackets."""
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        name, cells = line.split(" | ", 1)
        rows[re.sub(r"\*\*| \(.*\)", "", name.lstrip("| "))] = cells
    return rows


def default_row(lines: list[str]) -> str:
    """The recipe of the one row of the table at the top of `lines` marked (default)."""
    rows = table_rows(lines)
    marked = [line for line in lines[2 : 2 + len(rows)] if "(default)" in line]
    assert len(marked) == 1, "the shipped config's recipe is marked (default)"
    return next(iter(table_rows([*lines[:2], marked[0]])))


@pytest.mark.parametrize("document, measured", [
    ("README.md", "generalisation-views.json"),
    ("docs/generalisation.md", "generalisation-views.json"),
    ("docs/generalisation.md", "generalisation.json"),
    ("docs/generalisation.md", "generalisation-sync.json"),
])  # fmt: skip
def test_the_published_tables_are_the_measured_runs(document, measured):
    """Every figure of the protocol tables comes from the per-seed values kept in docs/
    (mean, half the range, mean and worst over kinds), nothing typed by hand. The shipped
    config's runs (`default`) are shown as the recipe it equals, the row marked (default)."""
    record = json.loads((REPO / "docs" / measured).read_text())
    given = record["args"]["kinds"]
    kinds = given.split(",") if given != "None" else sorted(
        {kind for by_kind in record["results"].values() for kind in by_kind})  # fmt: skip
    expected_lines = table(record["results"], kinds).splitlines()
    lines = (REPO / document).read_text().splitlines()
    shown_lines = lines[lines.index(expected_lines[0]) :]
    expected, shown = table_rows(expected_lines), table_rows(shown_lines)
    if "default" in expected:
        assert expected.pop("default") == shown[default_row(shown_lines)]
    assert shown == expected


# The table of docs/generalisation.md that chose tracks.locate_every: `sync` on make
# eval-sync's protocol, one row a k, each from a run of its own kept in docs/.
LOCATE_EVERY_HEADER = "| tracks.locate_every | lip_sync | av_desync | mean | worst |"


@pytest.mark.parametrize("every", [3, 4])
def test_the_locate_every_table_is_the_measured_runs(every):
    record = json.loads((REPO / "docs" / f"generalisation-sync-k{every}.json").read_text())
    assert record["args"]["preprocess"] == str([f"tracks.locate_every={every}"])
    kinds = record["args"]["kinds"].split(",")
    expected = table_rows(table(record["results"], kinds).splitlines())
    lines = (REPO / "docs" / "generalisation.md").read_text().splitlines()
    shown = table_rows(lines[lines.index(LOCATE_EVERY_HEADER) :])
    assert kinds == ["lip_sync", "av_desync"] and list(expected) == ["sync"]
    assert shown[str(every)] == expected["sync"]


def test_the_protocol_holds_each_kind_out_of_training_and_tables_it(tmp_path):
    out = tmp_path / "protocol"
    args = ["--out", str(out), "--train", "12", "--val", "10", "--epochs", "1", "--seeds", "0"]
    assert generalisation_main([*args, "--recipes", "audio"]) == 0
    manifest = json.loads((out / "data" / "sample_manifest.json").read_text())
    kinds = {clip["name"]: set(clip["kinds"]) for clip in manifest["clips"]}
    results = json.loads((out / "generalisation.json").read_text())["results"]["audio"]
    assert results and set(results) <= set().union(*kinds.values())
    for held_out in results:
        fold = open_cache(out / "folds" / held_out)
        train = [s.video_name for s in fold.iter_samples("train")]
        val = [s.video_name for s in fold.iter_samples("val")]
        assert train and not any(held_out in kinds[name] for name in train)
        assert all(held_out in kinds[name] or not kinds[name] for name in val)
    table = (out / "table.md").read_text()
    assert table.startswith("| recipe |") and "| audio |" in table


def test_the_track_recipes_are_listed_and_asked_for_with_tracks(tmp_path, capsys):
    assert set(TRACK_RECIPES) <= set(RECIPES)
    assert [name for name in RECIPES if needs_tracks(name)] == TRACK_RECIPES
    assert twin("default") == "all", "the shipped train.yaml trains every view"
    assert (folds_of(tracks=True), folds_of(tracks=False)) == ("folds-tracks", "folds")
    out = ["--out", str(tmp_path)]
    assert parse_args(out).recipes == [n for n in RECIPES if n not in TRACK_RECIPES]
    assert parse_args([*out, "--tracks"]).recipes == list(RECIPES)
    with pytest.raises(SystemExit) as refused:
        parse_args([*out, "--recipes", "audio,sync"])
    assert refused.value.code == 2 and "'sync' reads the aligned tracks: add --tracks" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        parse_args([*out, "--lip-sync", "1.5"])


def test_default_reuses_the_runs_of_the_recipe_that_trains_the_same(tmp_path, monkeypatch):
    """`default` is the shipped config: where another recipe trains exactly that, its runs are
    the default's, and only one thread trains a run folder at a time."""
    shipped = [name for name in RECIPES if name != "default" and twin(name) == twin("default")]
    assert shipped, "the shipped train.yaml is one of the protocol's recipes"
    assert twin("default") == shipped[0] != "default"
    assert twin("audio") == "audio" and twin("sync") == "sync"
    trained = []

    def train_once(fold, recipe, seed, args, run):
        trained.append((recipe, run.name, run.parent.name))
        return 0.5

    monkeypatch.setattr("evaluation.generalisation.train_once", train_once)
    monkeypatch.setattr("evaluation.generalisation.build_sample",
                        lambda args: ({}, {"a": ("face_blur",)}))  # fmt: skip
    generalisation_main(["--out", str(tmp_path), "--tracks", "--seeds", "0",
                         "--recipes", f"{shipped[0]},default,audio"])  # fmt: skip
    folders = {recipe: folder for recipe, _, folder in trained}
    assert folders["default"] == folders[shipped[0]] != folders["audio"]


def test_without_the_new_options_every_command_is_the_one_it_was(tmp_path):
    """The eval folders built before the track recipes stay valid: same sample, same cache
    (tracks.windows=0 now says what the default said then), same training commands."""
    args = parse_args(["--out", str(tmp_path), "--recipes", "audio,av"])
    data, cache = str(tmp_path / "data"), str(tmp_path / "cache")
    assert sample_command(args) == [sys.executable, "-m", "avcache.sample", data, "--seed", "0",
                                    "--train", "300", "--val", "800", "--test", "0"]  # fmt: skip
    assert preprocess_commands(args) == {"folds": (tmp_path / "cache", [
        sys.executable, "-m", "avcache.preprocess.run", "--data", data, "--out", cache,
        "--quiet", "faces.frames=4", "faces.size=64", "faces.codec=raw",
        "tracks.windows=0"])}  # fmt: skip
    command = train_command(tmp_path / "folds" / "face_blur", "av", 1, args, tmp_path / "run")
    assert command[:4] == [sys.executable, "-m", "avcache.train.run", "--config"]
    assert command[4].endswith("configs/train.yaml") and command[5:] == [
        "--cache", str(tmp_path / "folds" / "face_blur"), "--out", str(tmp_path / "run"),
        "model.kind=av", "data.batch_size=16", "data.workers=0", "run.threads=1", "run.seed=1",
        "run.epochs=4", "model.mel_size=64", "model.frames=2",
    ]  # fmt: skip


def test_with_tracks_every_recipe_trains_on_one_cache_of_every_view(tmp_path):
    args = parse_args(["--out", str(tmp_path), "--lip-sync", "0.25", "--tracks",
                       "--recipes", "audio,sync + av_mismatch,all"])  # fmt: skip
    assert sample_command(args)[-2:] == ["--lip-sync", "0.25"]
    caches = preprocess_commands(args)
    assert set(caches) == {"folds-tracks"}
    tracked = caches["folds-tracks"][1]
    assert caches["folds-tracks"][0] == tmp_path / "cache-tracks"
    assert {"tracks.windows=1", "faces.frames=4"} <= set(tracked)
    assert tracked[tracked.index("--out") + 1].endswith("cache-tracks")
    command = train_command(tmp_path / "f", "sync + av_mismatch", 0, args, tmp_path / "r")
    assert {"model.kind=sync", "augment.av_mismatch=0.25"} <= set(command)
    only_tracks = parse_args(["--out", str(tmp_path), "--tracks", "--recipes", "speech"])
    assert set(preprocess_commands(only_tracks)) == {"folds-tracks"}


def test_preprocess_overrides_reach_the_cache_and_bind_its_folder(tmp_path):
    """--preprocess goes after the protocol's own overrides (so it wins), and a folder made
    with other overrides, or with none, is refused before anything is reused from it."""
    every_4th = ["--out", str(tmp_path), "--tracks", "--recipes", "sync",
                 "--preprocess", "tracks.locate_every=4"]  # fmt: skip
    args = parse_args(every_4th)
    tracked = preprocess_commands(args)["folds-tracks"][1]
    assert tracked[-1] == "tracks.locate_every=4" and "tracks.windows=1" in tracked
    check_preprocess_overrides(args)
    assert json.loads((tmp_path / PREPROCESS_RECORD).read_text()) == ["tracks.locate_every=4"]
    check_preprocess_overrides(args)  # the same overrides again: the folder is reused
    with pytest.raises(SystemExit, match=r"made with --preprocess \['tracks.locate_every=4'\]"):
        check_preprocess_overrides(parse_args(every_4th[:-2]))

    before_the_option = tmp_path / "old"
    (before_the_option / "cache-tracks").mkdir(parents=True)
    with pytest.raises(SystemExit, match="made with --preprocess none, not"):
        check_preprocess_overrides(parse_args(["--out", str(before_the_option),
                                               *every_4th[2:]]))  # fmt: skip
    check_preprocess_overrides(parse_args(["--out", str(before_the_option), "--tracks"]))


def test_a_track_recipe_holds_lip_sync_out_and_scores_it(tmp_path):
    """sync on a tiny sample with lip-sync fakes: the sample has them, the track cache holds
    one window a video, the fold keeps its tracks, and the held-out AUC is a number."""
    out = tmp_path / "protocol"
    assert generalisation_main(["--out", str(out), "--train", "8", "--val", "6", "--lip-sync",
                                "0.5", "--tracks", "--recipes", "sync", "--kinds", "lip_sync",
                                "--epochs", "1", "--seeds", "0"]) == 0  # fmt: skip
    manifest = json.loads((out / "data" / "sample_manifest.json").read_text())
    assert manifest["lip_sync"] == 0.5
    kinds = {clip["name"]: set(clip["kinds"]) for clip in manifest["clips"]}
    assert not (out / "cache").exists()  # no recipe without tracks: no cache without them
    cache = open_cache(out / "cache-tracks")
    assert cache.tracks.windows == 1 and cache.tracks.frames == 25 and cache.frames == 4
    fold_path = out / "folds-tracks" / "lip_sync"
    fold = open_cache(fold_path)
    assert fold.tracks == cache.tracks
    val = list(fold.iter_samples("val"))
    assert {s.label for s in val} == {0, 1}
    assert all(kinds[s.video_name] <= {"lip_sync"} for s in val)
    assert all(s.tracks.lips.shape == (1, 25, 48, 48) for s in val)
    train = [s.video_name for s in fold.iter_samples("train")]
    assert train and not any("lip_sync" in kinds[name] for name in train)
    written = json.loads((out / "generalisation.json").read_text())
    assert written["track_folds"]["lip_sync"] == {"train": len(train), "val": len(val)}
    auc = written["results"]["sync"]["lip_sync"]["seed 0"]
    assert math.isfinite(auc) and 0 <= auc <= 1
    run = out / "runs" / "lip_sync" / "sync" / "seed0"
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["kind"] == "sync"
    assert json.loads((run / "cache.json").read_text())["path"] == str(fold_path)
    assert (out / "table.md").read_text().splitlines()[2].startswith(f"| sync | {auc:.2f} |")


def test_the_localisation_table_is_the_measured_runs():
    """The published localisation table (docs/localisation.md) is evaluation.localisation's
    table of the per-seed figures kept in docs/localisation.json, nothing typed by hand."""
    from evaluation.localisation import table as localisation_table

    record = json.loads((REPO / "docs" / "localisation.json").read_text())
    expected = localisation_table(record["results"]).splitlines()
    lines = (REPO / "docs" / "localisation.md").read_text().splitlines()
    start = lines.index(expected[0])
    assert lines[start : start + len(expected)] == expected
    assert set(record["results"]) == {"locate", "window classifier"}
    assert all(set(runs) == {"seed 0", "seed 1"} for runs in record["results"].values())
