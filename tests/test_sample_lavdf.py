"""avcache-sample --layout lav-df: LAV-DF's folders and metadata.json around the very clips
of the FFDV layout, labels that say what the generator did, and the preprocessing config
that reads it."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from avcache.cache import open_cache
from avcache.preprocess.run import main as preprocess_main
from avcache.sample import cli, layouts, manipulations, plan, render
from avcache.sample import sources as media_sources

TINY = {"train": 6, "val": 4, "test": 4}  # seed 0: real clips and every modality, and a
# train fake whose only change is a spliced synthetic voice (a partial fake period)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "datasets.md"

# LAV-DF's keys, in its order (metadata.min.json, the file its own loader reads).
LAVDF_KEYS = ["file", "n_fakes", "fake_periods", "duration", "original", "modify_video",
              "modify_audio", "split", "video_frames", "audio_channels",
              "audio_frames"]  # fmt: skip
# What each manipulation changes, spelled out here rather than taken from the code under test.
CHANGES_PICTURE = {"face_paste", "face_blur", "face_warp", "lip_sync", "word_lips"}
CHANGES_SOUND = {"tts_voice", "tts_splice", "av_desync", "word_tts"}


def args(out: Path, *extra: str) -> list[str]:
    counts = [f"--{split}={count}" for split, count in TINY.items()]
    return [str(out), *counts, "--jobs=2", *extra]


@pytest.fixture(scope="module")
def ffdv(tmp_path_factory, sources) -> Path:
    out = tmp_path_factory.mktemp("ffdv") / "data"
    assert cli.main(args(out)) == 0
    return out


@pytest.fixture(scope="module")
def lavdf(tmp_path_factory, sources) -> Path:
    out = tmp_path_factory.mktemp("lavdf") / "data"
    assert cli.main(args(out, "--layout=lav-df")) == 0
    return out


def manifest(root: Path) -> dict:
    return json.loads((root / plan.MANIFEST).read_text())


def metadata(root: Path) -> list[dict]:
    return json.loads((root / "metadata.json").read_text())


def kinds_by_file(root: Path) -> dict[str, list[str]]:
    return {clip["name"]: clip["kinds"] for clip in manifest(root)["clips"]}


def probe(path: Path) -> dict:
    command = ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)]
    return json.loads(subprocess.run(command, capture_output=True, check=True).stdout)


# --------------------------------------------------------------------------- layout


def test_lavdf_folders_and_metadata(lavdf):
    entries = metadata(lavdf)
    top = ["dev", "metadata.json", "sample_manifest.json", "test", "train"]
    assert sorted(p.name for p in lavdf.iterdir()) == top  # none of FFDV's folders or lists
    assert [list(entry) for entry in entries] == [LAVDF_KEYS] * sum(TINY.values())
    folders = ["train"] * TINY["train"] + ["dev"] * TINY["val"] + ["test"] * TINY["test"]
    numbered = [f"{folder}/{i:06d}.mp4" for i, folder in enumerate(folders)]
    assert [entry["file"] for entry in entries] == numbered  # one number each, across splits
    assert [entry["split"] for entry in entries] == folders
    on_disk = sorted(str(p.relative_to(lavdf)) for p in lavdf.rglob("*.mp4"))
    assert on_disk == sorted(numbered)  # every listed clip exists, and nothing else
    for split in ("train", "dev", "test"):  # the test split is labelled, half fake
        fakes = [e["n_fakes"] > 0 for e in entries if e["split"] == split]
        assert sum(fakes) == len(fakes) // 2


def test_the_same_clips_as_the_ffdv_layout(ffdv, lavdf):
    ffdv_clips, lavdf_clips = manifest(ffdv)["clips"], manifest(lavdf)["clips"]
    assert len(ffdv_clips) == len(lavdf_clips) == sum(TINY.values())
    for ours, theirs in zip(lavdf_clips, ffdv_clips, strict=True):
        assert {**ours, "name": None} == {**theirs, "name": None}  # only the name differs
        ffdv_file = ffdv / plan.SPLIT_DIRS[theirs["split"]] / theirs["name"]
        assert (lavdf / ours["name"]).read_bytes() == ffdv_file.read_bytes()
    assert manifest(lavdf)["layout"] == "lav-df" and "layout" not in manifest(ffdv)


def test_frames_and_audio_frames_are_the_files(lavdf):
    for entry in metadata(lavdf):
        streams = {s["codec_type"]: s for s in probe(lavdf / entry["file"])["streams"]}
        assert int(streams["video"]["nb_frames"]) == entry["video_frames"]
        assert entry["duration"] == entry["video_frames"] / 25
        # the track's length as the mp4 states it (a decoder adds AAC's padding)
        assert int(streams["audio"]["duration_ts"]) == entry["audio_frames"]
        assert streams["audio"]["channels"] == entry["audio_channels"]


# --------------------------------------------------------------------------- labels


def test_every_manipulation_has_its_modality():
    known = {*manipulations.FACE_MANIPULATIONS, *manipulations.MOUTH_MANIPULATIONS,
             *manipulations.SOUND_EDITS, manipulations.DESYNC}  # fmt: skip
    assert known == CHANGES_PICTURE | CHANGES_SOUND  # a new kind must be placed here too
    # a desync never comes alone, so the clips below cannot tell where it is placed
    expected = {**dict.fromkeys(CHANGES_PICTURE, "video"), **dict.fromkeys(CHANGES_SOUND, "audio")}
    assert expected == layouts.MODALITY


def test_modified_modalities_are_what_the_generator_changed(lavdf):
    kinds = kinds_by_file(lavdf)
    seen = set()
    for entry in metadata(lavdf):
        made = set(kinds[entry["file"]])
        assert entry["modify_video"] == bool(made & CHANGES_PICTURE), entry["file"]
        assert entry["modify_audio"] == bool(made & CHANGES_SOUND), entry["file"]
        assert entry["original"] is None
        seen.add((entry["modify_video"], entry["modify_audio"]))
    assert seen == {(False, False), (True, False), (False, True), (True, True)}


def test_fake_periods_are_the_whole_clip_or_the_spliced_voice(lavdf):
    kinds = kinds_by_file(lavdf)
    partial = 0
    for entry in metadata(lavdf):
        made, periods = kinds[entry["file"]], entry["fake_periods"]
        assert entry["n_fakes"] == len(periods) == (1 if made else 0)
        if made == ["tts_splice"]:  # a second or so of the speech, inside the clip
            ((start, end),) = periods
            assert start > 0 and end < entry["duration"] and 0.8 <= end - start <= 1.5
            partial += 1
        elif made:
            assert periods == [[0.0, entry["duration"]]], entry["file"]
    assert partial == 1


def decoded(path: Path) -> np.ndarray:
    command = ["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "1",
               "-ar", "16000", "-"]  # fmt: skip
    pcm = subprocess.run(command, capture_output=True, check=True).stdout
    return np.frombuffer(pcm, "<i2") / 32768.0


def test_a_splice_period_is_where_the_sound_differs(lavdf, sources):
    """The clip filmed again from its own seed without the splice sounds the same but for
    the stretch metadata.json gives (AAC leaves a faint trace after it)."""
    clip = next(c for c in manifest(lavdf)["clips"] if c["kinds"] == ["tts_splice"])
    ((start, end),) = next(e for e in metadata(lavdf) if e["file"] == clip["name"])["fake_periods"]
    plain_spec = plan.ClipSpec(**{**clip, "kinds": ()})
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "plain.mp4"
        render.build_clip(plain_spec, media_sources.load_portraits(sources), sources.speech,
                          target, Path(scratch))  # fmt: skip
        plain = decoded(target)
    spliced = decoded(lavdf / clip["name"])
    assert len(plain) == len(spliced)
    window = 160  # 10 ms
    usable = len(plain) // window * window
    diff = (plain - spliced)[:usable].reshape(-1, window)
    level = np.sqrt((diff**2).mean(axis=1))
    time = np.arange(len(level)) * window / 16000
    near = (time >= start - 0.05) & (time < end + 0.05)
    assert level[time < start - 0.05].max() < 1e-3  # nothing changed before it
    assert (level[near] ** 2).sum() > 99 * (level[~near] ** 2).sum()
    assert level[(time >= start) & (time < start + 0.1)].max() > 1e-3  # it starts changed
    assert level[(time >= end - 0.1) & (time < end)].max() > 1e-3  # and ends changed


# --------------------------------------------------------------------------- partial fakes

PARTIAL = {"train": 8, "val": 2, "test": 2}


@pytest.fixture(scope="module")
def partial(tmp_path_factory, sources) -> Path:
    out = tmp_path_factory.mktemp("partial") / "data"
    counts = [f"--{split}={count}" for split, count in PARTIAL.items()]
    assert cli.main([str(out), *counts, "--jobs=2", "--layout=lav-df", "--partial=1"]) == 0
    return out


def test_partial_fakes_replace_one_to_three_words(partial):
    """Every fake of --partial 1 has one to three fake periods of a word's length, apart
    from each other and from the clip's ends; the sound is changed in each, the picture
    where the lips were re-driven; every clip, real or fake, is 4 to 6 s long."""
    kinds = kinds_by_file(partial)
    entries = metadata(partial)
    assert {tuple(kinds[e["file"]]) for e in entries if e["n_fakes"]} <= {
        ("word_tts",), ("word_tts", "word_lips")}  # fmt: skip
    assert sum(e["n_fakes"] > 0 for e in entries) == sum(n // 2 for n in PARTIAL.values())
    for entry in entries:
        assert 4.0 <= entry["duration"] <= 6.0
        periods = entry["fake_periods"]
        if not entry["n_fakes"]:
            assert periods == [] and not entry["modify_audio"] and not entry["modify_video"]
            continue
        assert 1 <= len(periods) == entry["n_fakes"] <= 3
        assert entry["modify_audio"]
        assert entry["modify_video"] == ("word_lips" in kinds[entry["file"]])
        assert periods[0][0] >= 0.3 - 1e-3 and periods[-1][1] <= entry["duration"] - 0.3 + 1e-3
        for start, end in periods:
            assert 0.25 - 1e-3 <= end - start <= 0.5 + 1e-3
        for before, after in itertools.pairwise(periods):
            assert after[0] - before[1] >= 0.2 - 1e-3


def video_frames(path: Path) -> np.ndarray:
    command = ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "gray",
               "-"]  # fmt: skip
    width, height = (probe(path)["streams"][0][key] for key in ("width", "height"))
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width).astype(np.float32)


def test_re_driven_lips_move_only_over_the_replaced_words(partial, sources):
    """The same clip filmed with the words replaced, once with its lips re-driven and once
    not: the sound is the same, and the pictures differ only over the fake periods (give or
    take the jaw's smoothing, a frame)."""
    clip = next(c for c in manifest(partial)["clips"] if c["kinds"] == ["word_tts", "word_lips"])
    entry = next(e for e in metadata(partial) if e["file"] == clip["name"])
    heard_only = plan.ClipSpec(**{**clip, "kinds": ("word_tts",)})
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "heard_only.mp4"
        spans = render.build_clip(heard_only, media_sources.load_portraits(sources),
                                  sources.speech, target, Path(scratch))  # fmt: skip
        assert [list(span) for span in spans["word_tts"]] == entry["fake_periods"]
        np.testing.assert_array_equal(decoded(target), decoded(partial / clip["name"]))
        change = np.abs(video_frames(target) - video_frames(partial / clip["name"]))
    per_frame = change.reshape(len(change), -1).max(axis=1)
    times = (np.arange(len(per_frame)) + 0.5) / 25
    near = np.zeros(len(times), bool)
    for start, end in entry["fake_periods"]:
        near |= (times > start - 0.1) & (times < end + 0.1)
    assert per_frame[near].max() > 20  # the mouth says the new words
    # Elsewhere the frames are the same picture (the encoder's drift aside).
    assert change[~near].mean() < 0.5


# --------------------------------------------------------------------------- preprocessing


def help_config() -> str:
    return textwrap.dedent(cli.LAVDF_CONFIG)


def test_help_names_the_layout_and_its_config(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "--layout {ffdv,lav-df}" in out and "metadata.json" in out
    assert cli.LAVDF_CONFIG in out
    docs = DOCS.read_text()
    for line in help_config().splitlines()[1:]:  # the docs give the same splits
        assert line.strip() in docs


MODALITIES = {(False, False): "real", (True, False): "video", (False, True): "audio",
              (True, True): "audio+video"}  # fmt: skip


def test_preprocess_reads_it_with_the_config_of_the_help(lavdf, tmp_path):
    config = tmp_path / "lav-df.yaml"
    config.write_text(help_config())
    out = tmp_path / "cache"
    code = preprocess_main(["--config", str(config), "--data", str(lavdf), "--out", str(out),
                            "--jobs", "1", "--quiet", "faces.frames=2",
                            "faces.size=64"])  # fmt: skip
    assert code == 0
    cache = open_cache(out)
    window = cache.config["tracks"]["frames"] / cache.config["tracks"]["fps"]  # seconds
    entries = metadata(lavdf)
    for split, theirs in {"train": "train", "val": "dev", "test": "test"}.items():
        listed = [e for e in entries if e["split"] == theirs]
        samples = list(cache.iter_samples(split))
        assert [s.video_name for s in samples] == [e["file"] for e in listed]
        assert [int(s.label) for s in samples] == [int(e["n_fakes"] > 0) for e in listed]
        assert cache.fake_kinds(split) == [
            MODALITIES[e["modify_video"], e["modify_audio"]] for e in listed
        ]
        segments = cache.fake_segments(split)
        assert [s.tolist() for s in segments] == [e["fake_periods"] for e in listed]
        assert cache.source_of(split) == "lav-df"
        for sample, periods in zip(samples, segments, strict=True):
            for start in sample.tracks.start:  # a fake's window holds its fake
                assert not len(periods) or max(holds(start, window, p) for p in periods) >= 0
    assert any(p[0] > 0 for e in entries for p in e["fake_periods"]), "a partial fake"


def test_the_windows_of_partial_fakes_hold_their_fake_words(lavdf, tmp_path):
    """LAV-DF's fakes replace a few words: every fake here says a third of a second of its
    clip is fake, somewhere in it, and its track window must hold that third (a window
    drawn from the name alone misses most of them)."""
    data = tmp_path / "data"
    shutil.copytree(lavdf, data)
    entries = metadata(data)
    for number, entry in enumerate(entries):
        if entry["n_fakes"]:
            start = (number * 0.37) % (entry["duration"] - 0.4)
            entry["fake_periods"] = [[round(start, 3), round(start + 0.33, 3)]]
    (data / "metadata.json").write_text(json.dumps(entries))
    config = tmp_path / "lav-df.yaml"
    config.write_text(help_config())
    out = tmp_path / "cache"
    assert preprocess_main(["--config", str(config), "--data", str(data), "--out", str(out),
                            "--jobs", "1", "--quiet", "faces.frames=0"]) == 0  # fmt: skip
    cache = open_cache(out)
    window = cache.config["tracks"]["frames"] / cache.config["tracks"]["fps"]
    checked = 0
    for split in cache.splits:
        for sample, periods in zip(cache.iter_samples(split), cache.fake_segments(split),
                                   strict=True):  # fmt: skip
            for start in sample.tracks.start:
                assert not len(periods) or holds(start, window, periods[0]) >= 0, sample.video_name
                checked += len(periods)
    assert checked >= 5


def holds(start: float, length: float, period) -> float:
    """How much more of the period the window [start, start + length) holds than half a
    window (or the whole period, where shorter): 0 or more where it holds enough."""
    inside = min(start + length, period[1]) - max(start, period[0])
    return inside - min(period[1] - period[0], length / 2) + 1e-6


# --------------------------------------------------------------------------- reruns


def test_a_rerun_does_nothing_and_layouts_do_not_mix(lavdf, ffdv, capsys, monkeypatch):
    monkeypatch.setattr(cli, "render_all", lambda *a, **k: pytest.fail("rendered again"))
    before = {p: p.stat().st_mtime_ns for p in lavdf.rglob("*")}
    assert cli.main(args(lavdf, "--layout=lav-df")) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in lavdf.rglob("*")} == before
    assert cli.main(args(lavdf)) == 2  # the same seed and counts, FFDV's layout
    assert cli.main(args(ffdv, "--layout=lav-df")) == 2
    assert "layout lav-df; choose another folder" in capsys.readouterr().err
