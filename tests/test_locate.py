"""Where in a clip it is fake: each track frame's target from the fake segments, the
proposals made from frame scores, the localisation model's frames in time order, and the
window readers' labels from what their windows hold."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from avcache.cache import open_cache, schema
from avcache.cache.timeline import frame_fake, frame_times
from avcache.inspection.cli import frame_scores
from avcache.inspection.cli import main as inspect_main
from avcache.inspection.gallery import SCORE_RGB, score_band
from avcache.inspection.sheets import BAND_H
from avcache.preprocess.run import main as preprocess_main
from avcache.sample.cli import LAVDF_CONFIG
from avcache.sample.cli import main as sample_main
from avcache.train.augment import MISMATCHED
from avcache.train.config import ModelConfig, TrainConfig
from avcache.train.engine import METRICS
from avcache.train.loader import ShardStream
from avcache.train.loading import loader_plan, split_shards
from avcache.train.locate import Locator, frame_targets
from avcache.train.models import bce, build_model, contrastive_loss, frames_held, windows_label
from avcache.train.predict import main as predict_main
from avcache.train.run import main as train_main
from avcache.train.runs import RunFolder
from avcache.train.segments import Video, localisation_metrics, proposals
from tests.toy import assert_resumes_exactly, small_config

# --------------------------------------------------------------------------- frame targets


def test_a_frame_is_fake_where_its_instant_lies_in_a_fake_segment():
    """Two windows of 4 frames at 10 fps starting at 0 s and 1 s: frame t of a window stands
    for start + (t + 0.5) / 10 s, i.e. 0.05, 0.15, 0.25, 0.35 and 1.05, ..., 1.35."""
    starts, segments = np.array([0.0, 1.0]), np.array([[0.1, 0.3], [1.3, 2.0]])
    np.testing.assert_allclose(frame_times(starts, 4, 10.0)[1], [1.05, 1.15, 1.25, 1.35])
    fake = frame_fake(starts, 4, 10.0, schema.LABEL_FAKE, segments)
    np.testing.assert_array_equal(fake, [[0, 1, 1, 0], [0, 0, 0, 1]])
    assert fake.dtype == np.float32


def test_a_fake_without_segments_is_fake_everywhere_and_a_real_clip_nowhere():
    starts = np.array([0.0, 2.0])
    assert (frame_fake(starts, 3, 25.0, schema.LABEL_FAKE, None) == 1).all()
    assert (frame_fake(starts, 3, 25.0, schema.LABEL_FAKE, np.zeros((0, 2))) == 1).all()
    assert (frame_fake(starts, 3, 25.0, schema.LABEL_REAL, np.array([[0.0, 9.0]])) == 0).all()
    assert (frame_fake(starts, 3, 25.0, schema.LABEL_UNKNOWN, None) == -1).all()


# --------------------------------------------------------------------------- proposals


def test_a_run_of_confident_frames_is_the_first_proposal():
    """Frames of 0.04 s at 25 fps, confident from frame 10 to 19: the best proposal is that
    run's span (0.38 to 0.78 s), and it scores AP@0.95 = 1 against the true segment."""
    times = (np.arange(50) + 0.5) / 25
    scores = np.full(50, 0.02)
    scores[10:20] = 0.95
    found = proposals(scores, times, 1 / 25)
    np.testing.assert_allclose(found[0], [0.95, 0.4, 0.8])
    assert (np.diff(found[:, 0]) <= 0).all()  # ranked by confidence
    truths = [[0.4, 0.8]]
    metrics = localisation_metrics([Video.of(found, truths), Video.of(found[:0], [])])
    assert metrics["ar@5"] == 1.0


def test_frames_apart_in_time_are_never_one_segment():
    """Two windows far apart on the clip's timeline, both confident: two proposals, not one
    spanning the gap between them."""
    times = np.concatenate([(np.arange(5) + 0.5) / 25, 3.0 + (np.arange(5) + 0.5) / 25])
    found = proposals(np.full(10, 0.9), times, 1 / 25)
    spans = sorted(map(tuple, found[:, 1:].round(6).tolist()))
    assert spans == [(0.0, 0.2), (3.0, 3.2)]


def test_near_duplicates_are_suppressed():
    """A plateau with a slightly weaker shoulder: at thresholds under and over the shoulder
    the runs overlap by far more than NMS allows, so one of them stays."""
    times = (np.arange(40) + 0.5) / 25
    scores = np.zeros(40)
    scores[10:30] = 0.9
    scores[29] = 0.75  # a run one frame shorter above 0.8: IoU 0.95 with the whole run
    found = proposals(scores, times, 1 / 25)
    assert len(found) == 1


# --------------------------------------------------------------------------- the model

WINDOWS, FRAMES, SIZE, RATE = 4, 25, 16, 16000


def locate_inputs(batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        schema.LIPS: torch.randn(batch, WINDOWS, FRAMES, 1, SIZE, SIZE, generator=generator),
        schema.TRACK_AUDIO: torch.randn(batch, WINDOWS, RATE, generator=generator) * 0.1,
        schema.TRACK_FRAMES_REAL: torch.full((batch, WINDOWS), FRAMES, dtype=torch.int16),
    }


@pytest.fixture(scope="module")
def locator() -> Locator:
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="locate"), FRAMES)
    assert isinstance(model, Locator)
    return model.eval()


def test_each_frame_is_scored_in_time_order(locator):
    """The frames' scores run window after window: another sound in window 2 changes the
    scores of window 2's frames and of those its temporal reach touches (14 frames either
    side), never those of window 0 nor of the first ten of window 1."""
    inputs = locate_inputs()
    with torch.no_grad():
        before = locator.step_logits(inputs)
        inputs[schema.TRACK_AUDIO][:, 2] = torch.randn(2, RATE) * 0.1
        after = locator.step_logits(inputs)
    assert before.shape == (2, WINDOWS * FRAMES)
    changed = (before - after).abs().amax(dim=0) > 1e-5
    assert changed[2 * FRAMES : 3 * FRAMES].all()
    assert not changed[: 2 * FRAMES - 15].any()


def test_a_video_is_as_fake_as_its_most_confident_held_frame(locator):
    inputs = locate_inputs()
    inputs[schema.TRACK_FRAMES_REAL][1, 3] = 0  # past the second clip's end
    with torch.no_grad():
        logits, _ = locator(inputs)
        steps = locator.step_logits(inputs)
    held = frames_held(inputs[schema.TRACK_FRAMES_REAL], FRAMES).flatten(1)
    assert not held[1, 3 * FRAMES :].any() and held[0].all()
    expected = [steps[i][held[i]].max() for i in range(2)]
    torch.testing.assert_close(logits, torch.stack(expected))


def test_the_loss_reads_each_frames_target_and_only_the_held_frames(locator):
    """The frames' loss is over their targets, not the video's label: a fake whose first
    window alone holds its fake frames gets another loss than one fake at every frame, and
    a frame past the clip's end counts for nothing."""
    inputs, labels = locate_inputs(), torch.tensor([0.0, 1.0])
    fake = torch.zeros(2, WINDOWS, FRAMES)
    fake[1, 0] = 1.0
    locator.train()
    torch.manual_seed(1)
    partial = locator({**inputs, schema.FRAME_FAKE: fake}, labels)[1]
    torch.manual_seed(1)
    whole = locator(inputs, labels)[1]  # no frame targets: the label at every frame
    assert not torch.isclose(partial, whole)
    shortened = {**inputs, schema.FRAME_FAKE: fake.clone()}
    shortened[schema.TRACK_FRAMES_REAL] = inputs[schema.TRACK_FRAMES_REAL].clone()
    shortened[schema.TRACK_FRAMES_REAL][1, 3] = 0
    flipped = {**shortened, schema.FRAME_FAKE: fake.clone()}
    flipped[schema.FRAME_FAKE][1, 3] = 1.0  # a target on frames the clip does not have
    torch.manual_seed(1)
    kept = locator(shortened, labels)[1]
    torch.manual_seed(1)
    ignored = locator(flipped, labels)[1]
    locator.eval()
    torch.testing.assert_close(kept, ignored)


def test_every_frame_of_a_mismatched_sample_is_fake():
    inputs = locate_inputs()
    inputs[schema.FRAME_FAKE] = torch.zeros(2, WINDOWS, FRAMES)
    inputs[MISMATCHED] = torch.tensor([False, True])
    targets = frame_targets(inputs, torch.tensor([0.0, 1.0]))
    assert (targets[0] == 0).all() and (targets[1] == 1).all()


# --------------------------------------------------------------------------- window labels


def test_a_window_reader_learns_a_fake_whose_windows_miss_its_fake_as_real():
    """A sync model sees a clip only through its windows: a fake whose windows hold no fake
    frame is, to it, real, and it trains as on a real clip; a window holding one fake frame
    makes it fake; augmentation's mismatches stay fake."""
    fake = torch.zeros(3, 2, 5)
    fake[1, 1, 4] = 1.0
    labels = torch.tensor([1.0, 1.0, 0.0])
    held = windows_label({schema.FRAME_FAKE: fake}, labels)
    torch.testing.assert_close(held, torch.tensor([0.0, 1.0, 0.0]))
    mismatched = torch.tensor([False, False, True])
    held = windows_label({schema.FRAME_FAKE: fake, MISMATCHED: mismatched},
                         torch.tensor([1.0, 1.0, 1.0]))  # fmt: skip
    torch.testing.assert_close(held, torch.tensor([0.0, 1.0, 1.0]))
    torch.manual_seed(0)
    sync = build_model(ModelConfig(kind="sync"), FRAMES).train()
    inputs = {key: value for key, value in locate_inputs(3).items()
              if key in sync.fields}  # fmt: skip
    torch.manual_seed(2)
    missed = sync({**inputs, schema.FRAME_FAKE: torch.zeros(3, WINDOWS, FRAMES)},
                  torch.tensor([1.0, 0.0, 1.0]))[1]  # fmt: skip
    torch.manual_seed(2)
    logits, across = sync.evidence(inputs)
    as_real = bce(logits, torch.zeros(3)) + contrastive_loss(across, torch.zeros(3))
    torch.testing.assert_close(missed, as_real)


def test_a_window_classifier_gives_each_frame_its_windows_score():
    """The baseline's localisation: a sync model scores each window alone (a clip of one
    window), and each frame of a window gets that window's score."""
    torch.manual_seed(0)
    sync = build_model(ModelConfig(kind="sync"), FRAMES).eval()
    inputs = {key: value for key, value in locate_inputs().items() if key in sync.fields}
    with torch.no_grad():
        steps = sync.step_logits(inputs, FRAMES)
        alone = sync({key: value[:, 2:3] for key, value in inputs.items()})[0]
    assert steps.shape == (2, WINDOWS * FRAMES)
    torch.testing.assert_close(steps[:, 2 * FRAMES : 3 * FRAMES], alone[:, None].expand(2, FRAMES))
    every_view = build_model(ModelConfig(kind="all"), FRAMES)
    with pytest.raises(ValueError, match="scores whole videos"):
        every_view.step_logits(inputs, FRAMES)


# --------------------------------------------------------------------------- on real clips

PARTIAL_SAMPLE = {"train": 8, "val": 4, "test": 4}
# Tracks tiling the sample's 4-6 s clips cheaply: 3 windows of 10 frames at 5 fps, 16 px.
TILED = ["faces.frames=0", "tracks.placement=tile", "tracks.windows=3", "tracks.frames=10",
         "tracks.fps=5", "tracks.size=16"]  # fmt: skip
LOCATE = {"model.kind": "locate", "data.batch_size": 4, "data.block_size": 2, "run.epochs": 2,
          "augment.av_mismatch": 0.25}  # fmt: skip


@pytest.fixture(scope="module")
def partial(tmp_path_factory, sources) -> Path:
    """A LAV-DF-layout sample of partial fakes (a few words each), its tracks tiling each
    clip: the cache's folder, beside the data's."""
    root = tmp_path_factory.mktemp("partial")
    counts = [f"--{split}={count}" for split, count in PARTIAL_SAMPLE.items()]
    data = root / "data"
    assert sample_main([str(data), *counts, "--jobs=2", "--partial=1", "--layout=lav-df"]) == 0
    config = root / "lav-df.yaml"
    config.write_text(textwrap.dedent(LAVDF_CONFIG))
    out = root / "cache"
    assert preprocess_main(["--config", str(config), "--data", str(data), "--out", str(out),
                            "--jobs", "1", "--quiet", *TILED]) == 0  # fmt: skip
    return out


def test_the_loader_gives_each_frame_its_target_from_the_metadata(partial):
    """The frames' targets a run reads are the metadata's fake periods placed on the tiles:
    a partial fake has real and fake frames both."""
    cache = open_cache(partial)
    periods = {e["file"]: e["fake_periods"] for e in json.loads(
        (partial.parent / "data" / "metadata.json").read_text())}  # fmt: skip
    stream = ShardStream(
        split_shards(cache, "train"),
        (schema.FRAME_FAKE, schema.VIDEO_NAME, schema.TRACK_START, schema.LABEL),
        loader_plan(TrainConfig(), False),
    )
    mixed = 0
    for batch in stream:
        for i, name in enumerate(batch[schema.VIDEO_NAME]):
            truth = np.array(periods[name]).reshape(-1, 2)
            expected = frame_fake(batch[schema.TRACK_START][i].numpy(), 10, 5.0,
                                  int(batch[schema.LABEL][i]), truth)  # fmt: skip
            np.testing.assert_array_equal(batch[schema.FRAME_FAKE][i].numpy(), expected)
            mixed += bool(expected.min() == 0 and expected.max() == 1)
    assert mixed >= 2


def test_locate_trains_with_localisation_metrics_and_resumes_exactly(partial, tmp_path):
    """Every epoch's metrics hold the benchmarks' figures on the val split; a run killed
    after its first epoch resumes to the weights of one never stopped."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = [*small_config(**LOCATE), "--cache", str(partial)]
    assert train_main([*args, "--out", str(straight)]) == 0
    rows = [json.loads(line) for line in (straight / METRICS).read_text().splitlines()]
    for row in rows:
        for key in ("val_ap@0.5", "val_ap@0.95", "val_ar@50", "val_ar@5", "val_score"):
            assert 0 <= row[key] <= 1, key
        assert 0 <= row["val_auc"] <= 1
    assert_resumes_exactly(args, straight, killed)


@pytest.fixture(scope="module")
def located(partial, tmp_path_factory) -> Path:
    """A locate run of one epoch on the partial fakes."""
    run = tmp_path_factory.mktemp("located") / "run"
    assert train_main([*small_config(**{**LOCATE, "run.epochs": 1}), "--cache", str(partial),
                       "--out", str(run)]) == 0  # fmt: skip
    return run


def test_predict_writes_each_listed_videos_segments_in_both_formats(partial, located, tmp_path):
    """avcache-predict --segments: every listed video, its proposals ranked, inside the clip,
    the same as the run's own localisation of the split; LAV-DF's format in frames at 25
    fps; the raw files (--video) get the proposals of their cached twins."""
    run = located
    metadata = partial.parent / "data" / "metadata.json"
    listed = [e for e in json.loads(metadata.read_text()) if e["split"] == "test"]
    written = {}
    for form in ("av-deepfake1m", "lav-df"):
        out = tmp_path / f"{form}.json"
        assert predict_main(["--run", str(run), "--list", str(metadata), "--layout", "lav-df",
                             "--select", "split=test", "--out", str(tmp_path / "s.csv"),
                             "--segments", str(out), "--segments-format", form]) == 0  # fmt: skip
        written[form] = json.loads(out.read_text())
    seconds = written["av-deepfake1m"]
    assert list(seconds) == [e["file"] for e in listed]
    localised = RunFolder(run).trainer(best=True).localise_split("test")
    for entry, name in zip(listed, localised.names, strict=True):
        assert entry["file"] == name
    for entry, found in zip(listed, localised.proposals, strict=True):
        rows = np.array(seconds[entry["file"]]).reshape(-1, 3)
        np.testing.assert_allclose(rows, found, atol=1e-6)
        assert (np.diff(rows[:, 0]) <= 0).all() and (rows[:, 1] < rows[:, 2]).all()
        assert (rows[:, 1] >= 0).all() and (rows[:, 2] <= entry["duration"] + 0.2 + 1e-6).all()
        frames = np.array(written["lav-df"][entry["file"]]).reshape(-1, 3)
        np.testing.assert_allclose(frames[:, 1:], rows[:, 1:] * 25, atol=1e-4)
    # The raw files, preprocessed in-process: the segments of their cached twins.
    data = partial.parent / "data"
    raw = tmp_path / "raw.json"
    files = [str(data / entry["file"]) for entry in listed]
    assert predict_main(["--run", str(run), "--video", *files, "--out", str(tmp_path / "raw.csv"),
                         "--segments", str(raw)]) == 0  # fmt: skip
    from_files = json.loads(raw.read_text())
    for entry in listed:
        twin = np.array(seconds[entry["file"]]).reshape(-1, 3)
        found = np.array(from_files[str(data / entry["file"])]).reshape(-1, 3)
        np.testing.assert_allclose(found, twin, atol=1e-4)


def test_the_sheet_of_a_partial_fake_draws_its_frames_scores(partial, located, tmp_path,
                                                              capsys):  # fmt: skip
    """sheet --video --run: a window's frames' P(fake) under its strip, from the run, the
    true segments shaded; the scores drawn are the run's for that sample."""
    run = located
    cache = open_cache(partial)
    name = next(s.video_name for s in cache.iter_samples("test") if s.label == 1)
    out = tmp_path / "sheet.png"
    assert inspect_main([str(partial), "sheet", "--video", name, "--run", str(run), "-o",
                         str(out)]) == 0  # fmt: skip
    assert out.stat().st_size > 0 and "sheet:" in capsys.readouterr().out
    sample = next(s for s in cache.iter_samples("test") if s.video_name == name)
    scores = frame_scores(run, cache, sample)
    localised = RunFolder(run).trainer(best=True).localise_split("test")
    held = np.arange(10) < sample.tracks.frames_real[:, None]
    expected = localised.scores[localised.names.index(name)]
    assert scores.shape == (30,) and np.isclose(scores[held.reshape(-1)].max(), expected)
    assert inspect_main([str(partial), "sheet", "--video", name, "--run", str(tmp_path / "no"),
                         "-o", str(out)]) == 2  # fmt: skip
    assert "--run" in capsys.readouterr().err


def test_the_gallery_shows_predicted_segments_over_the_true_ones(partial, located, tmp_path,
                                                                  capsys):  # fmt: skip
    metadata = partial.parent / "data" / "metadata.json"
    found = tmp_path / "found.json"
    assert predict_main(["--run", str(located), "--list", str(metadata), "--layout", "lav-df",
                         "--select", "split=test", "--out", str(tmp_path / "s.csv"),
                         "--segments", str(found)]) == 0  # fmt: skip
    plain, shown = tmp_path / "plain", tmp_path / "shown"
    assert inspect_main([str(partial), "gallery", "-o", str(plain), "--split", "test"]) == 0
    assert inspect_main([str(partial), "gallery", "-o", str(shown), "--split", "test",
                         "--segments", str(found)]) == 0  # fmt: skip
    page = (shown / "index.html").read_text()
    surest = {name: max(rows, key=lambda row: row[0])
              for name, rows in json.loads(found.read_text()).items() if rows}  # fmt: skip
    for name, (confidence, start, stop) in surest.items():
        assert f"found {start:.2f}–{stop:.2f} s ({confidence:.2f})" in page, name
    assert "found " not in (plain / "index.html").read_text()
    thumbs = sorted((shown / "thumbs").iterdir())
    taller = [cv2.imread(str(t)).shape[0] - cv2.imread(str(plain / "thumbs" / t.name)).shape[0]
              for t in thumbs]  # fmt: skip
    assert set(taller) == {BAND_H[True] + 2}  # one band more over every mel
    scored = tmp_path / "scored"
    assert inspect_main([str(partial), "gallery", "-o", str(scored), "--split", "test",
                         "--segments", str(found), "--run", str(located)]) == 0  # fmt: skip
    taller = [cv2.imread(str(t)).shape[0] - cv2.imread(str(shown / "thumbs" / t.name)).shape[0]
              for t in sorted((scored / "thumbs").iterdir())]  # fmt: skip
    assert set(taller) == {BAND_H[True] + 2}  # and the frames' scores under them
    assert inspect_main([str(partial), "gallery", "-o", str(tmp_path / "no"), "--run",
                         str(tmp_path / "nothing")]) == 2  # fmt: skip
    assert "--run" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"test/000012.mp4": [[0.9, 2.0, 1.0]]}))
    assert inspect_main([str(partial), "gallery", "-o", str(tmp_path / "no"), "--segments",
                         str(broken)]) == 2  # fmt: skip
    assert "broken.json" in capsys.readouterr().err


def test_a_score_band_colours_each_column_by_the_frame_that_holds_it():
    """Frames of 0.08 s at 0.04, 0.12, ..., 0.36 s (the clip ends at 0.4 s) on a band from
    0 to 0.8 s, 80 columns: each column of the first 40 takes its frame's colour, the rest
    (no frame there) stay white."""
    times = np.arange(5) * 0.08 + 0.04
    scores = np.array([0.0, 0.0, 1.0, 0.5, 0.0])
    band = score_band(times, scores, 0.08, (0.0, 0.8), 80)
    row = band[0].astype(int)
    assert (row[:16] == 255).all() and (row[40:] == 255).all()
    np.testing.assert_array_equal(row[16:24], [list(SCORE_RGB)] * 8)
    assert (row[24:32] < 255).any() and (row[24:32] > row[16:24]).all()
