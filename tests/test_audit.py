"""The shortcut audit on small caches with a planted cue (fakes with 0.3 s more leading
silence; fakes with another frame rate) and without one."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from avcache.cache import open_cache, schema
from avcache.cache.index import ShardRecord, build_index
from avcache.cache.writer import ShardWriter
from avcache.common.atomic import write_json_atomic
from avcache.inspection import audit
from avcache.inspection.cli import main as inspect_main
from avcache.preprocess.run import main as preprocess_main
from tests.media import ffmpeg, write_labels
from tests.toy import FRAMES, SIZE, index_config, toy_sample

KINDS = ("voice", "face")


def facts(rng: np.random.Generator, fake: bool, plant: str) -> dict[str, float | str]:
    """Facts drawn alike for reals and fakes, but for the planted cue."""
    values = {name: float(rng.uniform(1, 100)) for name in schema.FACT_NUMBERS}
    values |= {"fact_lead_silence": float(rng.uniform(0, 0.2)), "fact_fps": 25.0,
               "fact_width": 320.0, "fact_height": 240.0, "fact_video_codec": "h264",
               "fact_audio_codec": str(rng.choice(["aac", "mp3"]))}  # fmt: skip
    if fake and plant == "silence":
        values["fact_lead_silence"] += 0.3
    if fake and plant == "fps":
        values["fact_fps"] = 30.0
    return values


def write_cache(root, plant: str, splits=(("train", 160), ("val", 160)), seed=0,
                change=None) -> dict:  # fmt: skip
    """A cache with facts; returns the manifest's kinds (odd videos are fakes, of two kinds:
    only the `voice` fakes carry the planted cue when plant ends in '-voice'). `change(sample,
    split, i)` alters each sample before it is written."""
    rng = np.random.default_rng(seed)
    records, kinds = [], {}
    (root / "shards").mkdir(parents=True)
    for split, count in splits:
        rel = f"shards/{split}-00000.h5"
        with ShardWriter(
            root / rel, schema.ShardLayout(frames=FRAMES, face_size=SIZE, facts=True), split=split
        ) as writer:
            for i in range(count):
                fake, name = bool(i % 2), f"{split}{i:03d}.mp4"
                kind = KINDS[(i // 2) % 2] if fake else None
                kinds[name] = [kind] if kind else []
                planted = plant.removesuffix("-voice")
                carries = fake and (kind == "voice" or not plant.endswith("-voice"))
                sample = toy_sample(name, False, rng)  # mel and faces say nothing
                sample.label = int(fake)
                sample.facts = facts(rng, carries, planted)
                sample.duration = np.float32(rng.uniform(3, 8))
                if carries and planted == "mel":
                    sample.mel[:, :20] = 0  # a silent start, as the model sees it
                if change is not None:
                    change(sample, split, i)
                writer.append(sample)
            records.append(ShardRecord(rel, split, *writer.close()))
    config = index_config(frames=FRAMES, size=SIZE, detector="haar", codec="raw")
    write_json_atomic(root / schema.INDEX_FILE, build_index(config, "toy-audit", records))
    return kinds


def results_of(root, kinds=None) -> list[audit.Result]:
    return audit.audit(audit.read_cues(open_cache(root)), kinds, rounds=200)


def find(results, cue, split="val", kind="all") -> audit.Result:
    return next(r for r in results if (r.cue, r.split, r.kind) == (cue, split, kind))


PLANTED = [("silence", "fact_lead_silence"), ("fps", "fact_fps"), ("mel", "mel_lead_quiet")]


@pytest.mark.parametrize("plant, cue", PLANTED)
def test_a_planted_cue_is_named_with_auc_near_one(tmp_path, plant, cue):
    write_cache(tmp_path, plant)
    results = results_of(tmp_path)
    found = find(results, cue)
    assert found.auc > 0.97 and found.low > 0.9, found
    assert found.direction == "fakes higher"
    assert audit.warnings_of(results)[0].cue == cue
    assert find(results, audit.ALL_CUES).auc > 0.95
    line = audit.summary_line(results)
    assert f"strongest cue {cue}" in line and "WARNING: 1 cue(s)" in line, line
    others = [r for r in results if r.split == "val" and r.cue not in (cue, audit.ALL_CUES)]
    assert max(audit.strength(r) for r in others) < 0.7


def test_without_a_cue_every_auc_is_near_one_half(tmp_path):
    write_cache(tmp_path, "none", splits=(("train", 200), ("val", 400)))
    results = results_of(tmp_path)
    val = [r for r in results if r.split == "val"]
    assert max(audit.strength(r) for r in val) < 0.65, [(r.cue, r.auc) for r in val]
    assert abs(np.mean([r.auc for r in val]) - 0.5) < 0.03
    assert find(results, audit.ALL_CUES).low < 0.5 < find(results, audit.ALL_CUES).high
    assert not audit.warnings_of(results)
    assert "no single cue reaches AUC 0.7" in audit.summary_line(results)


def test_a_cue_of_one_fake_kind_is_found_in_that_kind(tmp_path):
    kinds = write_cache(tmp_path, "silence-voice")
    results = results_of(tmp_path, kinds)
    assert find(results, "fact_lead_silence", kind="voice").auc > 0.97
    assert find(results, "fact_lead_silence", kind="face").auc < 0.7
    assert 0.6 < find(results, "fact_lead_silence").auc < 0.85  # diluted by the other kind
    warned = [(r.cue, r.kind) for r in audit.warnings_of(results)]
    assert ("fact_lead_silence", "voice") in warned and ("fact_lead_silence", "face") not in warned


def test_the_summary_line_counts_warnings_on_all_fakes_apart_from_one_kinds():
    def result(cue, kind, auc):
        return audit.Result(
            cue, "val", kind, auc, auc - 0.1, auc + 0.1, 30, 30 if kind == "all" else 5
        )

    quiet = [result("duration", "all", 0.55), result(audit.ALL_CUES, "all", 0.6)]
    one_kind = [*quiet, result("duration", "voice", 0.9), result("fact_fps", "face", 0.2)]
    assert audit.summary_line(quiet).endswith("; no single cue reaches AUC 0.7")
    assert audit.summary_line(one_kind).endswith(
        "no single cue reaches AUC 0.7 on all fakes; WARNING: 2 do on one fake kind (read their"
        " intervals)"
    )
    both = [*one_kind, result("fact_lead_silence", "all", 0.8)]
    assert audit.summary_line(both).endswith(
        "WARNING: 1 cue(s) alone reach AUC 0.7 (and 2 per fake kind)"
    )


def test_the_bootstrap_interval_holds_scikit_learns_auc():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 100)
    scores = rng.normal(labels * 0.8, 1).round(1)  # ties too
    low, high = audit.bootstrap_interval(labels, scores, 1000, seed=0)
    value = roc_auc_score(labels, scores)
    assert low < value < high and 0.1 < high - low < 0.2
    # with every pick once, the ranks' AUC is scikit-learn's (ties averaged)
    ranks = audit.rankdata(scores)
    n1 = labels.sum()
    assert (ranks[labels == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * 100) == pytest.approx(value)


def test_a_model_matched_on_the_cue_shows_what_it_learned_besides():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 300)
    other = rng.random(600) < 0.1
    fps = np.where(labels.astype(bool) ^ other, 30.0, 25.0)  # most fakes at 30 fps
    cue_only = fps + rng.normal(0, 0.01, 600)  # a model that read nothing but the frame rate
    assert audit.auc(labels, cue_only) > 0.85
    assert abs(audit.stratified_auc(labels, cue_only, fps) - 0.5) < 0.1
    honest = labels + rng.normal(0, 0.5, 600)  # one that sees the manipulation itself
    assert audit.stratified_auc(labels, honest, fps) > 0.8


def test_mel_quiet_columns():
    mel = np.full((3, 256, 256), 200, np.uint8)
    mel[0, :, :64] = 0
    mel[1, :, 192:] = 0
    mel[2] = 0
    lead, trail = audit.mel_quiet(mel)
    assert lead.tolist() == [0.25, 0.0, 1.0] and trail.tolist() == [0.0, 0.25, 1.0]


def test_the_command_writes_json_a_plot_and_the_summary_line(tmp_path, capsys):
    cache = tmp_path / "cache"
    kinds = write_cache(cache, "fps", splits=(("train", 60), ("val", 60)))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"clips": [{"name": n, "kinds": k} for n, k in kinds.items()]}))
    predictions = tmp_path / "predictions.csv"
    predictions.write_text("video_name,y_pred\n" + "".join(
        f"val{i:03d}.mp4,{0.9 if i % 2 else 0.1}\n" for i in range(60)))  # fmt: skip
    args = [
        str(cache),
        "audit",
        "--manifest",
        str(manifest),
        "--json",
        str(tmp_path / "a.json"),
        "-o",
        str(tmp_path / "a.png"),
        "--bootstrap",
        "100",
        "--predictions",
        str(predictions),
    ]
    assert inspect_main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("audit (val): strongest cue fact_fps AUC 1.000")
    assert any(line.startswith("WARNING: shortcut: fact_fps alone separates fakes") for line in out)
    assert any(line.startswith("model (predictions.csv, val): AUC 1.000") for line in out)
    report = json.loads((tmp_path / "a.json").read_text())
    assert {r["kind"] for r in report["results"]} == {"all", "voice", "face"}
    assert report["model"]["cue"] == "fact_fps"
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert inspect_main([str(cache), "audit", "--brief", "--bootstrap", "50"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_a_cache_without_facts_is_audited_on_what_it_holds(tmp_path, capsys):
    from tests.toy import write_toy_cache

    write_toy_cache(tmp_path / "toy", {"train": 24, "val": 24})
    assert inspect_main([str(tmp_path / "toy"), "audit", "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "face_share" in out and "duration" in out and "fact_fps" not in out


# ---------------------------------------------------------------- cues that cannot be measured


def test_no_audio_or_face_in_training_is_said_to_be_not_measurable(tmp_path, capsys):
    """Cached by avcache-preprocess: training clips without an audio stream and with no face
    (a grey picture), validation clips with audio. The audio facts and face boxes are unknown
    for every training video: reported as not measurable and why, not fitted; on 12 training
    videos the classifier makes no split, and says it could not learn instead of 0.500."""
    data = tmp_path / "data"
    rows = {"train": [], "val": []}
    for split, audio in (("train", False), ("val", True)):
        folder = data / f"{split}set"
        folder.mkdir(parents=True)
        for i in range(4):
            first = folder / f"{split}{i}.mp4"
            inputs = ["-f", "lavfi", "-i", f"color=c=gray:s=64x48:r=25:d={1 + i / 8}"]
            if audio:
                inputs += ["-f", "lavfi", "-i", f"sine=frequency={200 * (i + 1)}:d={1 + i / 8}"]
            ffmpeg(*inputs, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-shortest", str(first))
            for copy in range(3 if split == "train" else 2):
                name = f"{split}{i}-{copy}.mp4"
                os.link(first, folder / name)
                rows[split].append((name, len(rows[split]) % 2))
            first.unlink()
        write_labels(data / f"{split}_label.txt", rows[split])
    cache = tmp_path / "cache"
    options = ["--quiet", "--jobs", "1", "faces.detector=haar", "faces.frames=2", "faces.size=32"]
    assert preprocess_main(["--data", str(data), "--out", str(cache), *options]) == 0
    capsys.readouterr()
    report = tmp_path / "audit.json"
    assert inspect_main([str(cache), "audit", "--bootstrap", "50", "--json", str(report),
                         "-o", str(tmp_path / "audit.png")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "Traceback" not in out
    for cue in ("fact_lead_silence", "fact_sample_rate", "fact_audio_bit_rate"):
        assert (f"note: {cue} (train, val): not measurable: unknown for every training video "
                "(no audio stream)") in out, out  # fmt: skip
    assert ("note: face_size (train, val): not measurable: unknown for every training video "
            "(no face found on any frame)") in out  # fmt: skip
    summary = out.splitlines()[-1]
    assert summary.startswith("audit (val): strongest cue "), summary
    assert "; all cues together could not learn: fitted on the 12 training videos it predicts " \
        "one value for every video" in summary  # fmt: skip
    results = json.loads(report.read_text())["results"]
    silence = [r for r in results if r["cue"] == "fact_lead_silence"]
    assert silence and all(r["auc"] is None and "no audio stream" in r["note"] for r in silence)
    together = [r for r in results if r["cue"] == audit.ALL_CUES]
    assert together and all(r["auc"] is None and "could not learn" in r["note"] for r in together)


def no_audio_for_training_fakes(sample, split, i):
    """A training fake without an audio stream: its audio facts unknown."""
    if split == "train" and sample.label:
        sample.has_audio = False
        sample.facts |= dict.fromkeys(audit.AUDIO_FACTS, float("nan"))
        sample.facts["fact_audio_codec"] = ""


def test_a_cue_unknown_for_every_training_fake_is_scored_by_being_known(tmp_path, capsys):
    """Its values cannot be compared, but that fakes lack it is a shortcut: it warns, noted."""
    write_cache(tmp_path / "cache", "none", change=no_audio_for_training_fakes)
    assert inspect_main([str(tmp_path / "cache"), "audit", "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert (
        "note: fact_lead_silence (train, val): unknown for every training fake (no audio "
        "stream): its values cannot be compared, it is scored by whether it is known"
    ) in out
    results = results_of(tmp_path / "cache")
    lead = find(results, "fact_lead_silence", split="train")
    assert lead.auc == 1.0 and lead.direction == "fakes lack it"
    assert find(results, "has_audio", split="train").auc == 1.0  # as has_audio says
    assert find(results, "fact_lead_silence").auc == pytest.approx(0.5, abs=0.15)  # val has audio


@pytest.mark.parametrize("fakes", ["own strings", "vp9"])
def test_a_codec_string_of_its_own_per_video_is_grouped_as_other(tmp_path, capsys, fakes):
    """300 distinct codec strings (the classifier takes 255 categories): a value held by
    fewer than 5 training videos is "other". Unique strings alone say nothing (not 1.0 on
    training, where each would give its video's label back); fakes all in vp9 are found."""

    def codec(sample, split, i):
        own = f"lavc{i}-{split}"
        sample.facts["fact_video_codec"] = "vp9" if fakes == "vp9" and sample.label else own

    cache = tmp_path / "cache"
    write_cache(cache, "none", splits=(("train", 300), ("val", 100)), change=codec)
    assert inspect_main([str(cache), "audit", "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    results = results_of(cache)
    if fakes == "vp9":
        assert find(results, "fact_video_codec").auc == 1.0
        assert "WARNING: shortcut: fact_video_codec alone separates fakes" in out
        assert find(results, audit.ALL_CUES).auc > 0.95
    else:
        assert find(results, "fact_video_codec", split="train").auc == 0.5
        assert find(results, "fact_video_codec").auc == 0.5
        assert audit.measured(find(results, audit.ALL_CUES))
        assert "fact_video_codec" not in out.splitlines()[-1]


@pytest.mark.parametrize("train, expected", [
    (30, "all cues together could not learn: fitted on the 30 training videos it predicts one "
         "value for every video (each leaf takes 20)"),
    (8, "all cues together could not learn: 4 real and 4 fake training videos, fewer than 5 of "
        "each"),
])  # fmt: skip
def test_a_classifier_that_cannot_learn_says_so(tmp_path, capsys, train, expected):
    """On a small training split its scores do not vary: no 0.500 [0.50, 0.50] is printed as
    if it were a finding; a cue planted in the frame rate is still named."""
    write_cache(tmp_path / "cache", "fps", splits=(("train", train), ("val", 60)))
    assert inspect_main([str(tmp_path / "cache"), "audit", "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    summary = out.splitlines()[-1]
    assert summary.startswith("audit (val): strongest cue fact_fps AUC 1.000"), summary
    assert f"; {expected}; WARNING: 1 cue(s)" in summary, summary
    row = next(line for line in out.splitlines() if line.startswith(audit.ALL_CUES))
    assert row.count("not measurable") == 2 and "0.500" not in row, row
    assert any(line.startswith(f"note: {audit.ALL_CUES} (") and "could not learn" in line
               for line in out.splitlines())  # fmt: skip
