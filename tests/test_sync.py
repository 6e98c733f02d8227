"""The models that read the aligned tracks (lips, speech, sync, and all: every view): they
train and resume from a cache with tracks, their sync negatives are what they say, the sync
score's offsets point where the audio lags, and every view's verdict counts in `all`'s."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from avcache.cache import open_cache, schema
from avcache.train.augment import MISMATCHED, mismatch_speech, prepare
from avcache.train.config import ModelConfig
from avcache.train.engine import LAST, METRICS
from avcache.train.models import (
    SyncDetector,
    build_model,
    contrastive_loss,
    cross_similarity,
    either_fake,
    moving_part,
    offset_similarity,
    overlap,
)
from avcache.train.run import main as train_main
from tests.test_mistakes import one_line_error
from tests.toy import (
    TRACK_FRAMES,
    assert_resumes_exactly,
    small_config,
    write_toy_cache,
    write_track_cache,
)

TRACKS = {"data.batch_size": 8, "data.block_size": 4, "run.threads": 2}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracks")
    write_track_cache(root, {"train": 24, "val": 8})
    return root


@pytest.mark.parametrize("kind", ["lips", "speech", "sync", "all"])
def test_every_track_model_trains_and_validates(cache, tmp_path, kind):
    run = tmp_path / "run"
    options = {**TRACKS, "model.kind": kind, "run.epochs": 1, "augment.av_mismatch": 0.25}
    assert train_main(["--cache", str(cache), "--out", str(run), *small_config(**options)]) == 0
    row = json.loads((run / METRICS).read_text().splitlines()[-1])
    assert math.isfinite(row["train_loss"]) and 0 <= row["val_auc"] <= 1
    state = torch.load(run / LAST, weights_only=True)
    assert all(torch.isfinite(value).all() for value in state["model"].values())


@pytest.mark.parametrize("kind", ["sync", "all"])
def test_a_killed_track_run_resumes_to_where_an_uninterrupted_run_ends(cache, tmp_path, kind):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    options = {**TRACKS, "model.kind": kind, "augment.av_mismatch": 0.25, "model.aux_weight": 0.5}
    args = [*small_config(**options), "--cache", str(cache)]
    assert train_main([*args, "--out", str(straight)]) == 0
    assert_resumes_exactly(args, straight, killed)


def test_a_track_model_on_a_cache_without_tracks_is_refused_in_one_line(tmp_path, capsys):
    write_toy_cache(tmp_path / "cache", {"train": 8, "val": 8})
    args = ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
            *small_config(**{"model.kind": "sync"})]  # fmt: skip
    assert train_main(args) == 2
    error = one_line_error(capsys, "avcache-train")
    assert "model.kind=sync reads aligned lips and speech" in error
    assert "preprocess again with tracks.windows=1" in error
    assert not (tmp_path / "run").exists()


def test_the_offset_similarity_peaks_at_the_lag_of_the_audio():
    torch.manual_seed(0)
    steps, lag = 20, 3
    lips = torch.nn.functional.normalize(torch.randn(1, steps, 16), dim=-1)
    speech = torch.roll(lips, lag, dims=1)  # speech at t + lag says what the lips say at t
    similarity = offset_similarity(lips, speech, offsets=5)  # [1, 11, T]
    assert similarity.shape == (1, 11, steps)
    assert int(similarity.mean(dim=2).argmax()) == 5 + lag
    assert torch.allclose(offset_similarity(lips, lips, 5)[0, 5], torch.ones(steps))


def test_sync_negatives_hear_another_clip_or_their_own_speech_late(cache):
    samples = list(open_cache(cache).iter_samples("train"))[:8]
    audio = torch.from_numpy(np.stack([s.tracks.audio for s in samples])).float()
    labels = torch.zeros(8)
    inputs, mixed = mismatch_speech({schema.TRACK_AUDIO: audio}, labels, 0.5,
                                    torch.Generator().manual_seed(3))  # fmt: skip
    heard = inputs[schema.TRACK_AUDIO]
    changed = [i for i in range(8) if not torch.equal(heard[i], audio[i])]
    assert mixed.tolist().count(1.0) == 4 and sorted(changed) == np.flatnonzero(mixed).tolist()
    own = {tuple(audio[i].flatten()[:50].tolist()): i for i in range(8)}
    kinds = {"swapped": 0, "shifted": 0}
    for i in changed:
        donor = own.get(tuple(heard[i].flatten()[:50].tolist()))
        if donor is not None:
            assert donor != i and torch.equal(heard[i], audio[donor])
            kinds["swapped"] += 1
            continue
        lags = [d for d in range(1, audio.shape[-1]) if torch.equal(
            heard[i], torch.roll(audio[i], d, dims=-1))]  # fmt: skip
        assert len(lags) == 1 and audio.shape[-1] // 5 <= min(lags[0], audio.shape[-1] - lags[0])
        kinds["shifted"] += 1
    assert kinds == {"swapped": 2, "shifted": 2}


def test_the_sync_loss_wants_each_real_clip_nearest_its_own_speech():
    model = SyncDetector(None, TRACK_FRAMES, sync_weight=1.0)
    labels = torch.tensor([0.0, 0.0, 0.0, 1.0])
    logits = torch.zeros(4)
    across = 5.0 * torch.eye(4)  # lips of row i against the speech of clip j: each its own
    matched = model.loss(logits, across, labels)
    across[:3, :3] = 5.0 * torch.eye(3).roll(1, dims=1)  # the reals now match another's
    crossed = model.loss(logits, across, labels)
    assert crossed > matched + 4
    across[3] = torch.tensor([9.0, 9.0, 9.0, -9.0])  # the fake's row: no lesson
    across[:3, 3] = 9.0  # nor its speech, which may be a real clip's, swapped in
    assert model.loss(logits, across, labels) == crossed


def test_embeddings_that_only_know_where_a_frame_sits_learn_nothing():
    """Both trunks can tell a window's edge frames (their convolutions pad there): lips and
    speech embeddings that say only that match at offset 0 in every clip. Among clips
    they match every other clip's speech as well, so the loss stays at chance."""
    model = SyncDetector(None, TRACK_FRAMES, sync_weight=1.0)
    position = torch.nn.functional.normalize(torch.randn(1, TRACK_FRAMES, 8), dim=-1)
    embeddings = position.expand(4, -1, -1)
    across = cross_similarity(embeddings, embeddings, batch=4)
    contrastive = contrastive_loss(model.temperature.detach() * across, torch.zeros(4))
    assert contrastive == pytest.approx(math.log(4), rel=1e-4)


def test_the_offset_profile_is_flat_when_lips_and_speech_agree_everywhere():
    """Offsets cover fewer frames the farther they lag: a mean over the frames both
    cover keeps a constant agreement from peaking at offset 0 for covering the most."""
    steps, offsets = 20, 5
    same = torch.nn.functional.normalize(torch.ones(1, steps, 4), dim=-1)
    similarity = offset_similarity(same, same, offsets)
    profile = similarity.sum(dim=2) / overlap(similarity)
    assert torch.allclose(profile, torch.ones(1, 2 * offsets + 1))


def test_the_moving_part_drops_what_stays_put():
    torch.manual_seed(0)
    motion = torch.randn(2, 12, 6)
    face = torch.randn(2, 1, 6) * 50  # an identity, the same on every frame, far larger
    assert torch.allclose(moving_part(motion + face), moving_part(motion), atol=1e-5)


def test_track_kinds_need_the_frames_per_window():
    with pytest.raises(ValueError, match="reads the cache's aligned tracks"):
        build_model(ModelConfig(kind="lips"))


def sync_features(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Trunk features [B * W, T, C] as a talking head gives them: what stays put (a face, a
    voice) far larger than how each step moves."""
    generator = torch.Generator().manual_seed(seed)
    steps = (4, TRACK_FRAMES, 512)
    still = 8 * torch.randn(4, 1, 512, generator=generator)
    return (still + torch.randn(steps, generator=generator),
            still.roll(1, 0) + torch.randn(steps, generator=generator))  # fmt: skip


@pytest.mark.parametrize("training", [False, True])
def test_the_sync_evidence_is_computed_in_fp32_under_bf16_autocast(training):
    """bf16 rounds the moving part and the offsets' similarities by about as much as they
    differ (0.007 against a spread of 0.13 on random weights): under autocast (CUDA's bf16,
    shown here with the CPU's) the evidence must equal fp32's."""
    torch.manual_seed(0)
    model = SyncDetector(None, TRACK_FRAMES).train(training)
    lips, speech = sync_features(seed=1)
    with torch.no_grad():
        exact = torch.cat([part.flatten() for part in model.compare(lips, speech, batch=4)])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, across = model.compare(lips, speech, batch=4)
            # the same steps left to autocast
            rounded = torch.cat([part.flatten() for part in model._evidence(lips, speech, 4)])
    assert logits.dtype == across.dtype == torch.float32
    torch.testing.assert_close(torch.cat([logits, across.flatten()]), exact, rtol=1e-5, atol=1e-5)
    assert (rounded.float() - exact).abs().max() > 1e-3  # what the check would catch


def test_the_sync_model_learns_lip_sync_on_the_toy_tracks(tmp_path):
    """The toy cache's fakes are lip-sync fakes alone: the same kind of mouth and of sound,
    the speech's loudness following another mouth's motion. Only lips compared with speech
    over time tell them apart, so a sync model that learns must score them; with its speech
    reversed in time (a planted bug) it scored 0.45 where this one scores 0.91."""
    write_track_cache(tmp_path / "cache", {"train": 64, "val": 32})
    run = tmp_path / "run"
    options = {**TRACKS, "model.kind": "sync", "run.epochs": 4, "augment.av_mismatch": 0.25}
    assert train_main(["--cache", str(tmp_path / "cache"), "--out", str(run),
                       *small_config(**options)]) == 0  # fmt: skip
    history = [json.loads(line) for line in (run / METRICS).read_text().splitlines()]
    assert max(row["val_auc"] for row in history) > 0.75, history


def every_view_inputs(batch: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    from tests.test_train import every_field

    model = build_model(ModelConfig(kind="all"), track_frames=5)
    return prepare(every_field(batch), model.fields, mel_size=64)


def test_every_view_is_fake_when_any_view_finds_it_fake():
    """all's P(fake) is either_fake of the mel's, the faces' and the sync's own verdicts:
    never below any of them, near 1 when one view is sure, near 0 only when all are."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="all"), track_frames=5).eval()
    inputs = every_view_inputs()
    heads = [head[-1] for head in model.senses.head.values()] + [model.sync.head]
    with torch.no_grad():
        logits, _ = model(inputs)
        sync = model.sync.evidence(inputs)[0]
        own = torch.cat([model.senses.verdicts(inputs), sync[:, None]], dim=1)
        torch.testing.assert_close(logits, either_fake(own))
        assert (torch.sigmoid(logits)[:, None] >= torch.sigmoid(own) - 1e-6).all()
        for view, head in enumerate(heads):
            head.bias += 50.0  # this view alone is sure it is fake
            assert (torch.sigmoid(model(inputs)[0]) > 0.99).all(), view
            head.bias -= 50.0
        for head in heads:
            head.bias -= 50.0
        assert (torch.sigmoid(model(inputs)[0]) < 0.01).all(), "every view sure it is real"


def test_mismatched_speech_trains_only_the_views_that_can_tell():
    """all's loss: the sync model's on sync's verdict, the fused verdict's and aux_weight x
    each sense's own; a sample whose speech was swapped (labelled fake) is left out of the
    senses' terms: they hear and see a real video."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="all", aux_weight=0.5), track_frames=5).eval()
    inputs = every_view_inputs()
    labels = torch.tensor([0.0, 0.0, 1.0, 0.0])
    mismatched = torch.tensor([False, False, True, False])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    with torch.no_grad():
        logits, plain = model(inputs, labels)
        _, masked = model({**inputs, MISMATCHED: mismatched}, labels)
        senses = model.senses.verdicts(inputs)
        sync, across = model.sync.evidence(inputs)
    synced = bce(sync, labels) + contrastive_loss(across, labels)
    views = sum(bce(column, labels) for column in senses.unbind(1))
    torch.testing.assert_close(plain, synced + bce(logits, labels) + 0.5 * views)
    kept = ~mismatched
    seen = sum(bce(column[kept], labels[kept]) for column in senses.unbind(1))
    torch.testing.assert_close(masked, synced + bce(logits[kept], labels[kept]) + 0.5 * seen)


def test_sync_in_every_view_learns_and_starts_as_the_sync_model():
    """The lips against the speech get exactly the sync model's gradients (the fused verdict
    trains only the senses), from exactly the sync model's initial weights of the seed."""
    torch.manual_seed(3)
    alone = build_model(ModelConfig(kind="sync"), track_frames=5)
    torch.manual_seed(3)
    model = build_model(ModelConfig(kind="all", aux_weight=0.5), track_frames=5)
    for (name, mine), theirs in zip(model.sync.state_dict().items(),
                                    alone.state_dict().values(), strict=True):  # fmt: skip
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0, msg=name)
    inputs, labels = every_view_inputs(), torch.tensor([0.0, 1.0, 0.0, 1.0])
    model.eval()  # running statistics, not the 4 samples': the same in both models
    alone.eval()
    model(inputs, labels)[1].backward()
    alone(inputs, labels)[1].backward()
    for (name, mine), theirs in zip(model.sync.named_parameters(), alone.parameters(),
                                    strict=True):  # fmt: skip
        torch.testing.assert_close(mine.grad, theirs.grad, msg=name)
    heads = [head[-1] for head in model.senses.head.values()]  # the senses learn
    assert all(head.weight.grad.abs().sum() > 0 for head in heads)


def test_the_mismatches_a_model_learns_from_are_the_ones_its_views_can_see():
    assert build_model(ModelConfig(kind="av")).mismatches == (schema.FACES,)
    assert build_model(ModelConfig(kind="sync"), 5).mismatches == (schema.TRACK_AUDIO,)
    # all: another video's faces beside a mel is a fake no single view of it can see
    assert build_model(ModelConfig(kind="all"), 5).mismatches == (schema.TRACK_AUDIO,)
    assert build_model(ModelConfig(kind="audio")).mismatches == ()
