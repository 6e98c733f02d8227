"""What a run is given, built as an unlucky user or an attacker would build it: caches that
hold the same samples (copies, splits swapped, one video in two layouts), a run folder whose
config was edited or is a YAML alias bomb, a checkpoint that does not fit. Each is refused
through the real entry points in one line (exit 2) naming the files and the reason, and
leaves nothing behind; the look-alikes that are not the same samples train as they should."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from avcache.cache import schema
from avcache.cache.index import ShardRecord, build_index
from avcache.cache.writer import ShardWriter, sha256_of
from avcache.common.atomic import write_json_atomic
from avcache.common.config import config_hash
from avcache.train.predict import main as predict_main
from avcache.train.run import main as train_main
from avcache.train.runs import BEST, LAST, METRICS
from tests.media import talking_face
from tests.toy import (
    FRAMES,
    SIZE,
    TRACK_LAYOUT,
    index_config,
    small_config,
    toy_sample,
    toy_tracks,
)

# Tiny runs: the mel alone at 32 px, batches of 4, one epoch.
RUN = {"model.kind": "audio", "model.mel_size": 32, "data.batch_size": 4,
       "data.block_size": 2, "run.threads": 1, "run.epochs": 1}  # fmt: skip
PER_SHARD = 12


def samples(prefix: str, count: int, seed: int) -> list[schema.Sample]:
    """tests/toy.py's separable samples, named PREFIX000.mp4 on."""
    rng = np.random.default_rng(seed)
    return [toy_sample(f"{prefix}{i:03d}.mp4", bool(i % 2), rng) for i in range(count)]


def write_cache(root: Path, splits: dict[str, list[schema.Sample]],
                tracks: tuple[str, ...] = (), mel_mode: str = "baseline") -> Path:  # fmt: skip
    """A cache of the given samples in shards of 12, as avcache-preprocess writes one; the
    splits in `tracks` hold aligned tracks (format v3), the others none; its config says
    the mel images were made by `mel_mode` (audio.mode)."""
    (root / "shards").mkdir(parents=True)
    records = []
    for split, rows in splits.items():
        for number, start in enumerate(range(0, len(rows), PER_SHARD)):
            rel = f"shards/{split}-{number:05d}.h5"
            layout = TRACK_LAYOUT if split in tracks else None
            with ShardWriter(
                root / rel,
                schema.ShardLayout(frames=FRAMES, face_size=SIZE, tracks=layout),
                split=split,
            ) as writer:
                for i, sample in enumerate(rows[start : start + PER_SHARD]):
                    if layout:
                        rng = np.random.default_rng(start + i)
                        sample = dataclasses.replace(sample, tracks=toy_tracks(bool(i % 2), rng))
                    writer.append(sample)
                records.append(ShardRecord(rel, split, *writer.close()))
    write_index(root, records, tracks=bool(tracks), mel_mode=mel_mode)
    return root


def write_index(root: Path, records: list[ShardRecord], tracks: bool = False,
                mel_mode: str = "baseline") -> None:  # fmt: skip
    """index.json with the config and its hash, as avcache-preprocess records them."""
    held = {"windows": 1, "frames": TRACK_LAYOUT.frames, "size": TRACK_LAYOUT.size}
    config = index_config(held if tracks else None, frames=FRAMES, size=SIZE, detector="haar",
                          codec="raw")  # fmt: skip
    config["audio"]["mode"] = mel_mode
    index = build_index(config, config_hash(config), records)
    write_json_atomic(root / schema.INDEX_FILE, index)


def copied_cache(root: Path, shards: list[tuple[Path, str]]) -> Path:
    """A cache made of copies of other caches' shard files (shutil), each listed in the split
    given and saying so in its attributes, with an index.json written by hand."""
    (root / "shards").mkdir(parents=True)
    records, numbers = [], {}
    for source, split in shards:
        numbers[split] = numbers.get(split, -1) + 1
        rel = f"shards/{split}-{numbers[split]:05d}.h5"
        shutil.copyfile(source, root / rel)
        with h5py.File(root / rel, "r+") as shard:
            shard.attrs[schema.ATTR_SPLIT] = split
            count = len(shard[schema.VIDEO_NAME])
        records.append(ShardRecord(rel, split, count, sha256_of(root / rel)))
    write_index(root, records)
    return root


@pytest.fixture(scope="module")
def a(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("a") / "a"
    return write_cache(root, {"train": samples("a-train", 24, 1), "val": samples("a-val", 12, 2)})


def one_line_error(capsys, program: str) -> str:
    error = capsys.readouterr().err
    assert error.startswith(f"{program}: error: "), error
    assert error.count("\n") == 1 and "Traceback" not in error, error
    return error


def train(out: Path, *args: str, **overrides) -> int:
    return train_main(["--out", str(out), *args, *small_config(**{**RUN, **overrides})])


SAME = "the same sample (its video name, mel image and duration)"


# ---------------------------------------------------------------- one sample, two places


def test_a_copy_of_a_cache_with_its_splits_swapped_is_refused(a, tmp_path, capsys):
    shards = [(a / "shards/val-00000.h5", "train"), (a / "shards/train-00000.h5", "val"),
              (a / "shards/train-00001.h5", "val")]  # fmt: skip
    swapped = copied_cache(tmp_path / "swapped", shards)
    out = tmp_path / "run"
    assert train(out, f"data.caches=[{a}:1,{swapped}:1]") == 2
    error = one_line_error(capsys, "avcache-train")
    assert (
        f"{a}/shards/val-00000.h5 (cache a, split val) holds 'a-val000.mp4', which the run "
        f"trains on in {swapped}/shards/train-00000.h5 (cache swapped, split train)"
    ) in error
    assert SAME in error and "36 of the 36 validation samples are trained on" in error
    assert not out.exists(), "nothing is written for a refused run"


def test_a_held_out_cache_validating_on_a_trained_shard_is_refused(a, tmp_path, capsys):
    own = write_cache(tmp_path / "own", {"train": samples("h-train", 12, 3)})
    shards = [(own / "shards/train-00000.h5", "train"), (a / "shards/train-00001.h5", "val")]
    held_out = copied_cache(tmp_path / "held-out", shards)
    out = tmp_path / "run"
    assert train(out, f"data.caches=[{a}:1,{held_out}:0]") == 2
    error = one_line_error(capsys, "avcache-train")
    assert (f"{held_out}/shards/val-00000.h5 (cache held-out, split val) holds "
            f"'a-train012.mp4', which the run trains on in {a}/shards/train-00001.h5 "
            "(cache a, split train)") in error  # fmt: skip
    assert SAME in error and "12 of the 24 validation samples" in error
    assert not out.exists()


def test_one_video_in_two_layouts_in_two_caches_is_refused(tmp_path, capsys):
    """A cache with tracks and one of the same videos without, its val split some of the
    first's train videos, held out at weight 0: no shard of one is a copy of the other's
    (the tracks' columns are in one's metadata digest), so only their identity tells."""
    videos = samples("v", 24, 4)
    tracks = write_cache(tmp_path / "tracks", {"train": videos, "val": samples("t", 12, 5)},
                         tracks=("train", "val"))  # fmt: skip
    plain = write_cache(tmp_path / "plain", {"train": samples("p", 12, 6), "val": videos[12:]})
    out = tmp_path / "run"
    assert train(out, f"data.caches=[{tracks}:1,{plain}:0]") == 2
    error = one_line_error(capsys, "avcache-train")
    assert (
        f"{plain}/shards/val-00000.h5 (cache plain, split val) holds 'v012.mp4', which "
        f"the run trains on in {tracks}/shards/train-00001.h5 (cache tracks, split train)"
    ) in error
    assert SAME in error and "12 of the 24 validation samples" in error
    assert not out.exists()


def test_a_val_shard_holding_some_of_its_caches_train_videos_is_refused(tmp_path, capsys):
    """Within one cache, a val shard of other rows than any train shard (videos 6-17, from
    two of them): no shard digest matches, the identities do."""
    videos = samples("v", 24, 4)
    cache = write_cache(tmp_path / "one", {"train": videos, "val": videos[6:18]})
    out = tmp_path / "run"
    assert train(out, "--cache", str(cache)) == 2
    error = one_line_error(capsys, "avcache-train")
    assert (
        f"{cache}/shards/val-00000.h5 (cache one, split val) holds 'v006.mp4', which "
        f"the run trains on in {cache}/shards/train-00000.h5 (cache one, split train)"
    ) in error
    assert SAME in error and "12 of the 12 validation samples" in error
    assert not out.exists()


def test_other_videos_of_the_same_names_train(tmp_path):
    """Two data sets naming their videos alike (v000.mp4 in both): one's train names are the
    other's val names, their content differs, and the mix trains and validates on both."""
    first = write_cache(tmp_path / "first", {"train": samples("v", 24, 5),
                                             "val": samples("w", 12, 6)})  # fmt: skip
    second = write_cache(tmp_path / "second", {"train": samples("w", 12, 7),
                                               "val": samples("v", 12, 8)})  # fmt: skip
    out = tmp_path / "run"
    assert train(out, f"data.caches=[{first}:1,{second}:1]") == 0
    assert (out / BEST).is_file()


# ---------------------------------------------------------------- a run folder, reused


@pytest.fixture(scope="module")
def mixed_run(a, tmp_path_factory) -> tuple[Path, Path]:
    """(a finished 1-epoch run on a mix of `a` and a held-out cache, the held-out cache)."""
    root = tmp_path_factory.mktemp("mixed")
    held_out = write_cache(root / "held", {"train": samples("h-train", 12, 9),
                                           "val": samples("h-val", 12, 10)})  # fmt: skip
    run = root / "run"
    assert train(run, f"data.caches=[{a}:1,{held_out}:0]") == 0
    return run, held_out


def test_prediction_opens_the_cache_it_reads_and_no_other_cache_of_the_mix(
    mixed_run, a, tmp_path, capsys
):  # fmt: skip
    """With the held-out cache gone (its index moved away), --list, --list --cache and
    --video still work: they read one cache, or none."""
    run, held_out = mixed_run
    listing = tmp_path / "list.csv"
    listing.write_text("video_name,target\n" + "".join(f"a-val{i:03d}.mp4,\n" for i in range(12)))
    clip = talking_face(tmp_path / "clip.mp4", seconds=1.2)
    index = held_out / schema.INDEX_FILE
    index.rename(tmp_path / "away.json")
    try:
        out = tmp_path / "submission.csv"
        for extra in ([], ["--cache", str(a)]):
            assert predict_main(["--run", str(run), "--list", str(listing), "--out", str(out),
                                 *extra]) == 0, capsys.readouterr().err  # fmt: skip
            assert len(out.read_text().splitlines()) == 13
        assert predict_main(["--run", str(run), "--video", str(clip)]) == 0
        assert "P(fake) = " in capsys.readouterr().out
    finally:
        (tmp_path / "away.json").rename(index)


def test_a_refused_init_leaves_out_as_it_was(mixed_run, a, tmp_path, capsys):
    """An audio checkpoint given to a faces model is refused; --out (here an empty folder
    made beforehand) is left as it was, and the corrected command runs."""
    run, _ = mixed_run
    out = tmp_path / "run"
    out.mkdir()
    assert train(out, "--cache", str(a), "--init", str(run / LAST), **{"model.kind": "faces"}) == 2
    error = one_line_error(capsys, "avcache-train")
    assert str(run / LAST) in error
    assert list(out.iterdir()) == [], "a refused run writes nothing in --out"
    assert train(out, "--cache", str(a), "--init", str(run / LAST)) == 0
    assert (out / BEST).is_file()


def test_a_resume_on_its_cache_remade_with_another_config_is_refused(tmp_path, capsys):
    """The run's cache re-made in its folder with another mel recipe (a new config hash): a
    resume would train the model on inputs of another form. Re-made as it was, it resumes."""
    videos = {"train": samples("r-train", 24, 11), "val": samples("r-val", 12, 12)}
    cache = write_cache(tmp_path / "cache", videos)
    run = tmp_path / "run"
    assert train(run, "--cache", str(cache)) == 0
    metrics = (run / METRICS).read_text()
    capsys.readouterr()
    shutil.rmtree(cache)
    write_cache(cache, videos, mel_mode="padded")
    assert train_main(["--resume", str(run)]) == 2
    error = one_line_error(capsys, "avcache-train")
    assert (f"{cache}: made with audio.mode=padded, but {run} was trained on "
            "audio.mode=baseline (model.kind=audio reads it)") in error  # fmt: skip
    assert f"--out {cache} audio.mode=baseline" in error and f"--cache {cache} --out NEW" in error
    assert (run / METRICS).read_text() == metrics, "a refused resume leaves the run as it was"
    shutil.rmtree(cache)
    write_cache(cache, videos)
    assert train_main(["--resume", str(run)]) == 0, capsys.readouterr().err


def edited_run(run: Path, tmp_path: Path, text: str | None = None, **keys) -> Path:
    """A copy of `run` whose config.yaml has `keys` (section.key=value) set, or is `text`."""
    copy = tmp_path / "edited"
    shutil.copytree(run, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    for key, value in keys.items():
        section, name = key.split("__")
        config[section][name] = value
    (copy / "config.yaml").write_text(text if text is not None else yaml.safe_dump(config))
    return copy


@pytest.mark.parametrize("key,value,expected", [
    ("data__batch_size", 0, "data.batch_size=0: must be at least 1"),
    ("model__mel_size", 100_000, "model.mel_size=100000: must be between 32 and 1024"),
])  # fmt: skip
def test_predict_refuses_a_run_config_that_training_refuses(mixed_run, tmp_path, capsys, key,
                                                            value, expected):  # fmt: skip
    copy = edited_run(mixed_run[0], tmp_path, **{key: value})
    listing = tmp_path / "list.csv"
    listing.write_text("video_name,target\na-val000.mp4,\n")
    assert predict_main(["--run", str(copy), "--list", str(listing)]) == 2
    assert f"{copy}/config.yaml: {expected}" in one_line_error(capsys, "avcache-predict")
    assert not (copy / "submission.csv").exists()


def alias_bomb(levels: int = 8) -> str:
    """A few hundred bytes that hold 8**8 (16.7 million) strings once their aliases are
    walked, as checking a config (or printing a refused value) walks them."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 8)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nmodel:\n  kind: *l{levels - 1}\n"


def test_a_yaml_alias_bomb_is_refused_where_configs_are_read(mixed_run, tmp_path, capsys):
    bomb = alias_bomb()
    assert len(bomb) < 4096
    copy = edited_run(mixed_run[0], tmp_path, text=bomb)
    assert predict_main(["--run", str(copy), "--video", str(tmp_path / "any.mp4")]) == 2
    error = one_line_error(capsys, "avcache-predict")
    assert f"{copy}/config.yaml: line 2: a YAML alias (*name)" in error
    config = tmp_path / "bomb.yaml"
    config.write_text(bomb)
    assert train_main(["--config", str(config), "--cache", str(mixed_run[1]), "--out",
                       str(tmp_path / "run")]) == 2  # fmt: skip
    assert f"{config}: line 2: a YAML alias" in one_line_error(capsys, "avcache-train")
    override = "model.kind=[&x [a, b], *x]"
    assert train_main(["--cache", str(mixed_run[1]), "--out", str(tmp_path / "run"),
                       override]) == 2  # fmt: skip
    error = one_line_error(capsys, "avcache-train")
    assert f"override {override!r}: line 1: a YAML alias" in error
    assert not (tmp_path / "run").exists()
