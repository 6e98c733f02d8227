"""Lip-sync fakes (avcache-sample --lip-sync): a real face and its real speech, the mouth moved
by other real speech. Measured on the decoded clips: the mouth follows a track that is not
the one heard, while every other clip stays byte for byte what the seed made without them."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from avcache.sample import cli, manipulations, plan, render
from avcache.sample import sources as media_sources

COUNTS = {"train": 6, "val": 0, "test": 0}
SHARE = 0.75  # with seed 0, two of the three train fakes (one of them first drawn on carphone)


def args(out: Path, *extra: str) -> list[str]:
    counts = [f"--{split}={count}" for split, count in COUNTS.items()]
    return [str(out), *counts, "--jobs=2", *extra]


@pytest.fixture(scope="module")
def plain(tmp_path_factory, sources) -> Path:
    out = tmp_path_factory.mktemp("plain") / "data"
    assert cli.main(args(out)) == 0
    return out


@pytest.fixture(scope="module")
def lip_synced(tmp_path_factory, sources) -> tuple[Path, dict[str, list[np.ndarray]]]:
    """The same sample with --lip-sync, and each clip's camera (output-to-source maps), kept
    so that the test can look at the mouth where the renderer put it."""
    out = tmp_path_factory.mktemp("lip") / "data"
    maps: dict[str, list[np.ndarray]] = {}
    camera = render.camera

    def recording_camera(rng, portrait, index, spec, *rest):
        maps[spec.name] = camera(rng, portrait, index, spec, *rest)
        return maps[spec.name]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(render, "camera", recording_camera)
        assert cli.main(args(out, f"--lip-sync={SHARE}")) == 0
    return out, maps


def manifest(root: Path) -> dict:
    return json.loads((root / plan.MANIFEST).read_text())


def spec_of(clip: dict) -> plan.ClipSpec:
    return plan.ClipSpec(**{**clip, "kinds": tuple(clip["kinds"])})


def clip_path(root: Path, clip: dict) -> Path:
    return root / plan.SPLIT_DIRS[clip["split"]] / clip["name"]


def decode(path: Path, *options: str) -> bytes:
    command = ["ffmpeg", "-v", "error", "-i", str(path), *options, "-"]
    return subprocess.run(command, capture_output=True, check=True).stdout


def heard_loudness(path: Path, frames: int) -> np.ndarray:
    """The loudness envelope of the clip's decoded sound track."""
    pcm = decode(path, "-f", "s16le", "-ac", "1", "-ar", str(media_sources.WORK_RATE))
    return manipulations.loudness((np.frombuffer(pcm, "<i2") / 32768.0).astype(np.float32), frames)


def mouth_opening(path: Path, clip: dict, portrait, maps: list[np.ndarray]) -> np.ndarray:
    """Per decoded frame, how dark the gap under the mouth line is: each frame is warped back
    into the portrait's own pixels with its camera map, where the mouth does not move."""
    raw = decode(path, "-f", "rawvideo", "-pix_fmt", "rgb24")
    video = np.frombuffer(raw, np.uint8).reshape(-1, clip["height"], clip["width"], 3)
    cx, cy, width = portrait.mouth
    height, full_width = portrait.frames.shape[1:3]
    x1, x2 = int(cx - 0.3 * width), int(cx + 0.3 * width)
    y1, y2 = int(cy) + 1, int(cy + manipulations.MAX_JAW_DROP * width)
    grey = [
        cv2.cvtColor(cv2.warpAffine(frame, view, (full_width, height)), cv2.COLOR_RGB2GRAY)
        for frame, view in zip(video, maps, strict=True)
    ]
    return -np.array([g[y1:y2, x1:x2].mean() for g in grey])


# --------------------------------------------------------------------------- the plan


def lip_sync_names(specs: list[plan.ClipSpec]) -> set[str]:
    return {s.name for s in specs if manipulations.LIP_SYNC in s.kinds}


def test_off_is_the_plan_as_it_always_was():
    counts = {"train": 300, "val": 100, "test": 50}
    assert plan.plan_sample(3, counts, 0.0) == plan.plan_sample(3, counts)


def test_lip_sync_replaces_only_the_chosen_fakes():
    counts = {"train": 4000, "val": 0, "test": 0}
    default, chosen = plan.plan_sample(0, counts), plan.plan_sample(0, counts, 0.3)
    fakes = sum(s.label for s in default)
    assert 0.27 < len(lip_sync_names(chosen)) / fakes < 0.33
    for before, after in zip(default, chosen, strict=True):
        # No clip keeps a face filmed talking: its lips move over speech they do not say.
        assert after.source not in media_sources.SELF_TALKING
        if after.kinds == before.kinds:  # not chosen: every field as drawn without the option,
            assert after == replace(before, source=after.source)  # but a talking face's
            assert (after.source == before.source) == (
                before.source not in media_sources.SELF_TALKING
            )
            continue
        assert before.label == 1 and after.kinds == (manipulations.LIP_SYNC,)  # alone
        # A face filmed talking keeps its own lips: those are redrawn among the still faces.
        assert after.source not in media_sources.SELF_TALKING
        if before.source not in media_sources.SELF_TALKING:
            assert after.source == before.source
        assert after == replace(before, source=after.source, kinds=after.kinds)
    # A clip chosen at one share is chosen at every larger share; all fakes at 1, none at 0.
    assert lip_sync_names(plan.plan_sample(0, counts, 0.1)) < lip_sync_names(chosen)
    assert lip_sync_names(plan.plan_sample(0, counts, 1.0)) == {s.name for s in default if s.label}


def test_the_driver_never_moves_like_the_heard_speech(sources):
    for seed in range(30):
        rng = np.random.default_rng(seed)
        frames = int(rng.integers(*plan.CLIP_FRAMES))
        samples = frames * media_sources.WORK_RATE // media_sources.FPS
        spoken = manipulations.real_speech(rng, sources.speech, samples)
        driver = manipulations.lip_sync(spoken, rng, sources.speech)
        assert len(driver) == len(spoken) and not np.array_equal(driver, spoken)
        match = manipulations.correlation(
            manipulations.loudness(driver, frames), manipulations.loudness(spoken, frames)
        )
        assert match <= manipulations.MAX_LIP_SYNC_CORRELATION


# --------------------------------------------------------------------------- the sample


def test_the_manifest_names_exactly_the_chosen_clips(lip_synced, plain):
    out, _ = lip_synced
    written = manifest(out)
    assert written["lip_sync"] == SHARE and "lip_sync" not in manifest(plain)
    expected = plan.plan_sample(0, COUNTS, SHARE)
    assert [spec_of(clip) for clip in written["clips"]] == expected
    # Chosen by the rule, from a generator of each clip's own, among the fakes only.
    rule = {
        s.name
        for s in plan.plan_sample(0, COUNTS)
        if s.label and np.random.default_rng([s.seed, plan.LIP_SYNC_STREAM]).random() < SHARE
    }
    names = {c["name"] for c in written["clips"] if c["kinds"] == [manipulations.LIP_SYNC]}
    assert names == rule == lip_sync_names(expected)
    assert names == {plan.clip_name(0, "train", i) for i in (4, 5)}


def test_every_other_clip_keeps_its_bytes(lip_synced, plain):
    out, _ = lip_synced
    for name in (*plan.LABEL_FILES.values(), plan.PREDICTION_FILE):
        assert (out / name).read_bytes() == (plain / name).read_bytes()  # same names, labels
    for clip in manifest(out)["clips"]:
        same = clip_path(out, clip).read_bytes() == clip_path(plain, clip).read_bytes()
        redrawn = sources_of(plain)[clip["name"]] != clip["source"]  # was the talking head
        assert same == (clip["kinds"] != [manipulations.LIP_SYNC] and not redrawn), clip["name"]


def sources_of(root: Path) -> dict[str, str]:
    return {clip["name"]: clip["source"] for clip in manifest(root)["clips"]}


def test_no_clip_shows_the_talking_head(lip_synced, plain):
    out, _ = lip_synced
    assert media_sources.SELF_TALKING[0] in sources_of(plain).values()  # seed 0 draws it
    assert not set(media_sources.SELF_TALKING) & set(sources_of(out).values())


def correlations(root: Path, clip: dict, portrait, maps, speech) -> tuple[float, float]:
    """How the decoded mouth opening correlates with the decoded sound track, and with the
    loudness of the track that drove the mouth."""
    spec, rng = spec_of(clip), np.random.default_rng(clip["seed"])
    said, audio = render.clip_tracks(spec, speech, rng)
    own = manipulations.real_speech(np.random.default_rng(clip["seed"]), speech, len(audio))
    assert np.array_equal(audio, own)  # what is heard is the clip's own real speech, untouched
    path = clip_path(root, clip)
    opening = mouth_opening(path, clip, portrait, maps[clip["name"]])
    heard = heard_loudness(path, spec.frames)
    assert manipulations.correlation(heard, manipulations.loudness(audio, spec.frames)) > 0.95
    driver = manipulations.loudness(said, spec.frames)
    return manipulations.correlation(opening, heard), manipulations.correlation(opening, driver)


def test_the_mouth_follows_speech_that_is_not_heard(lip_synced, sources):
    out, maps = lip_synced
    portraits = media_sources.load_portraits(sources)
    measured: dict[str, list[tuple[float, float]]] = {"real": [], "lip_sync": []}
    for clip in manifest(out)["clips"]:
        portrait = portraits[clip["source"]]
        if portrait.mouth is not None and clip["kinds"] in ([], [manipulations.LIP_SYNC]):
            kind = "lip_sync" if clip["kinds"] else "real"
            measured[kind].append(correlations(out, clip, portrait, maps, sources.speech))
    assert len(measured["real"]) >= 2 and len(measured["lip_sync"]) == 2
    for with_heard, driven in measured["real"]:
        assert with_heard > 0.9 and driven > 0.9  # a real mouth moves with its own voice
    for with_heard, driven in measured["lip_sync"]:
        assert with_heard < 0.3 and driven > 0.9  # ... a lip-synced one with another's


# --------------------------------------------------------------------------- command line


def test_help_documents_the_option(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--lip-sync SHARE" in text and "lip_sync" in text and "default 0" in text


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "some"])
def test_a_share_outside_0_to_1_is_refused(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as stop:
        cli.main(args(tmp_path / "data", f"--lip-sync={value}"))
    assert stop.value.code == 2 and "--lip-sync" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_a_rerun_knows_the_share(lip_synced, capsys):
    out, _ = lip_synced
    assert cli.main(args(out, f"--lip-sync={SHARE}")) == 0
    assert "same arguments" in capsys.readouterr().out
    for other in ([], ["--lip-sync=0.5"]):  # another sample: refused, not mistaken for it
        assert cli.main(args(out, *other)) == 2
        assert "not a finished sample" in capsys.readouterr().err
