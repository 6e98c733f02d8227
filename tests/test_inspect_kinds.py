"""The kinds of fake and the fake segments of a LAV-DF-layout cache in the audit, the contact
sheets and the gallery; an FFDV cache (no kinds) looks as before.

The cache is preprocessed from a LAV-DF replica (tests/layouts.py) of 15 real clips: the
`audio` fakes last 1.5 s and every other clip 1 s, so the clip's duration gives away that
kind alone and says nothing of the `video` fakes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib import image as mpimg

from avcache.cache import open_cache, schema
from avcache.inspection import audit, sheets
from avcache.inspection.cli import main as inspect_main
from avcache.inspection.cli import sample_meta
from avcache.inspection.gallery import THUMB_SIZE
from avcache.preprocess.run import main as preprocess_main
from tests import layouts
from tests.toy import write_toy_cache

# (file, split, fake periods, modify_video, modify_audio): 3 reals, 3 video and 3 audio
# fakes to train on, 2 of each in dev; the last dev fake's period runs past its clip's end.
ENTRIES = [
    *[(f"train/r{i}.mp4", "train", [], False, False) for i in range(3)],
    *[(f"train/v{i}.mp4", "train", [[0.2, 0.6]], True, False) for i in range(3)],
    *[(f"train/a{i}.mp4", "train", [[0.5, 1.0]], False, True) for i in range(3)],
    *[(f"dev/r{i}.mp4", "dev", [], False, False) for i in range(2)],
    ("dev/v0.mp4", "dev", [[0.1, 0.3], [0.6, 0.8]], True, False),
    ("dev/v1.mp4", "dev", [[0.2, 0.6]], True, False),
    ("dev/a0.mp4", "dev", [[0.4, 0.9]], False, True),
    ("dev/a1.mp4", "dev", [[1.2, 2.5]], False, True),
]
SECONDS = {"a": 1.5}  # by the file name's first letter; 1 s otherwise


def write_lavdf(root: Path) -> dict:
    """The replica's metadata.json and clips under root/lavdf; the config of its two splits."""
    folder = root / "lavdf"
    folder.mkdir(parents=True)
    clips = {s: layouts.clip(root / f"clip{s}.mp4", s) for s in {1.0, *SECONDS.values()}}
    entries = []
    for file, split, periods, video, audio in ENTRIES:
        seconds = SECONDS.get(Path(file).name[0], 1.0)
        layouts.place(clips[seconds], folder / file)
        entries.append(layouts.lavdf_entry(file, split, periods, video, audio) | {
            "duration": seconds})  # fmt: skip
    (folder / "metadata.json").write_text(json.dumps(entries))
    return {name: {"layout": "lav-df", "labels": "lavdf/metadata.json", "videos": ["lavdf"],
                   "select": {"split": [split]}}
            for name, split in (("train", "train"), ("val", "dev"))}  # fmt: skip


@pytest.fixture(scope="module")
def lavdf(tmp_path_factory) -> Path:
    """The replica cached: 9 train and 6 val clips, no faces or tracks, 4 samples a shard."""
    root = tmp_path_factory.mktemp("lavdf")
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({"splits": write_lavdf(root / "data")}))
    out = root / "cache"
    code = preprocess_main(["--config", str(config), "--data", str(root / "data"), "--out",
                            str(out), "--quiet", "--jobs", "1", "--strict", "faces.frames=0",
                            "tracks.windows=0", "shards.size=4"])  # fmt: skip
    assert code == 0
    return out


def test_the_replica_holds_its_kinds_and_segments(lavdf):
    cache = open_cache(lavdf)
    assert cache.fake_kinds("val") == ["real", "real", "video", "video", "audio", "audio"]
    assert cache.fake_segments("val")[5].tolist() == [[1.2, 2.5]]
    durations = {s.video_name: float(s.duration) for s in cache.iter_samples("val")}
    assert durations["dev/a1.mp4"] == pytest.approx(1.5, abs=0.05)
    assert np.isclose(durations["dev/v1.mp4"], 1.0, atol=0.05)


# ---------------------------------------------------------------- the audit


def audit_report(cache: Path, tmp_path: Path, *extra: str) -> tuple[list[str], list[dict]]:
    """avcache-inspect CACHE audit: its printed lines and its JSON results."""
    report = tmp_path / "audit.json"
    assert inspect_main([str(cache), "audit", "--bootstrap", "50", "--json", str(report),
                         *extra]) == 0  # fmt: skip
    return json.loads(report.read_text())["results"]


def result(results: list[dict], cue: str, kind: str, split: str = "val") -> dict:
    return next(r for r in results if (r["cue"], r["kind"], r["split"]) == (cue, kind, split))


def test_the_audit_scores_each_kind_the_cache_records(lavdf, tmp_path, capsys):
    results = audit_report(lavdf, tmp_path)
    out = capsys.readouterr().out.splitlines()
    assert "kinds of fake (from the cache's labels): audio 5, video 5" in out
    assert {r["kind"] for r in results} == {"all", "audio", "video"}, "a real is no kind"
    audio, video = result(results, "duration", "audio"), result(results, "duration", "video")
    assert (audio["auc"], audio["reals"], audio["fakes"]) == (1.0, 2, 2)
    assert (video["auc"], video["reals"], video["fakes"]) == (0.5, 2, 2)
    assert result(results, "duration", "all")["auc"] == 0.75  # diluted by the video fakes
    row = next(line for line in out if line.startswith("duration "))
    assert row.endswith("audio 1.000"), row  # its strongest kind on val
    assert any(line.startswith("WARNING: shortcut: duration alone separates fakes of kind "
                               "audio from reals") for line in out)  # fmt: skip


def test_a_manifest_names_the_kinds_of_its_videos_and_the_cache_the_rest(lavdf, tmp_path,
                                                                        capsys):  # fmt: skip
    manifest = tmp_path / "manifest.json"
    clips = [
        {"name": "dev/a0.mp4", "kinds": ["voice"]},
        {"name": "dev/a1.mp4", "kinds": ["voice", "late"]},
    ]
    manifest.write_text(json.dumps({"clips": clips}))
    results = audit_report(lavdf, tmp_path, "--manifest", str(manifest))
    assert ("kinds of fake (from manifest.json for the 2 videos it names, the cache's labels "
            "for 8 more): audio 3, late 1, video 5") in capsys.readouterr().out  # fmt: skip
    assert result(results, "duration", "voice")["auc"] == 1.0
    assert [r for r in results if r["kind"] == "audio" and r["split"] == "val"] == []
    assert result(results, "duration", "audio", "train")["fakes"] == 3


def test_an_ffdv_cache_has_no_kinds_without_a_manifest(tmp_path, capsys):
    write_toy_cache(tmp_path / "toy", {"train": 24, "val": 24})
    results = audit_report(tmp_path / "toy", tmp_path)
    assert "kinds of fake" not in capsys.readouterr().out
    assert {r["kind"] for r in results} == {"all"}


def test_a_kind_every_fake_has_is_not_scored_again():
    """DFDC's only kind is "fake": its group would repeat 'all' and count every warning
    twice. A second kind makes each one a group."""
    table = audit.CueTable(names=["a", "b", "c", "d"], splits=["val"] * 4, labels=[0, 1, 1, 0],
                           kinds=[(), ("fake",), ("fake",), ()])  # fmt: skip
    assert list(audit.groups(table, None)) == ["all"]
    table.kinds[2] = ("other",)
    assert list(audit.groups(table, None)) == ["all", "fake", "other"]
    assert audit.groups(table, None)["fake"].tolist() == [True, True, False, True]


# ---------------------------------------------------------------- sheets and the gallery


def load_png(path: Path) -> np.ndarray:
    """uint8 RGB pixels of a PNG."""
    return (mpimg.imread(path)[..., :3] * 255).round().astype(np.uint8)


def band_columns(pixels: np.ndarray, rows: slice) -> np.ndarray:
    """Pixel columns where the band's colour fills all of `rows`."""
    near = (np.abs(pixels[rows].astype(int) - sheets.BAND_RGB) <= 12).all(axis=-1)
    return np.flatnonzero(near.all(axis=0))


def expected_columns(cache, sample, left: int, width: int) -> set[int]:
    """The columns of a mel `width` px wide at `left` whose centres lie inside a fake period
    of the metadata (ENTRIES), up to the clip's end: the mel shows no more."""
    periods = next(entry[2] for entry in ENTRIES if entry[0] == sample.video_name)
    duration = float(sample.duration)
    start, stop = sheets.mel_axes_of(cache.index).time_extent(duration)
    centres = start + (np.arange(width) + 0.5) / width * (stop - start)
    inside = np.zeros(width, bool)
    for a, b in periods:
        inside |= (centres >= a) & (centres <= min(b, duration))
    return set((left + np.flatnonzero(inside)).tolist())


def assert_band(found: np.ndarray, expected: set[int]) -> None:
    """The band covers the segment's columns, give or take the pixel at either end."""
    assert expected, "a segment the mel shows"
    assert set(found.tolist()) <= {c + d for c in expected for d in (-1, 0, 1)}, found
    assert len(set(found.tolist()) & expected) >= len(expected) - 2, (found, expected)


def texts(figure) -> list[str]:
    return [text.get_text() for text in figure.texts]


def test_the_sheet_writes_each_kind_and_segment_and_bands_the_segments(lavdf, tmp_path):
    cache = open_cache(lavdf)
    out = tmp_path / "sheet.png"
    assert inspect_main([str(lavdf), "sheet", "--split", "val", "-o", str(out)]) == 0
    samples = list(cache.iter_samples("val"))
    # one row of 6 panels 212 px wide (no faces), a caption line under each name
    assert sheets.sheet_layout(6, 0, None, captions=True) == (6, 1, 16 + 6 * 212, 36 + 35 + 144 + 8)
    pixels = load_png(out)
    assert pixels.shape == (36 + 35 + 144 + 8, 16 + 6 * 212, 3)
    top = sheets.TITLE_H + sheets.HEADER_H + sheets.CAPTION_H  # the mel's first row
    rows = slice(top - sheets.BAND_GAP - sheets.BAND_H[True] + 1, top - sheets.BAND_GAP - 1)
    for number, sample in enumerate(samples):
        left = sheets.PAD + number * 212 + sheets.MEL_LEFT
        found = band_columns(pixels[:, left - 4 : left + sheets.MEL_W + 4], rows) + left - 4
        if sample.label == 0:
            assert found.size == 0, sample.video_name
        else:
            assert_band(found, expected_columns(cache, sample, left, sheets.MEL_W))
    assert band_columns(pixels, slice(top, top + sheets.MEL_H)).size == 0, "not over the mel"
    written = texts(sheets.contact_sheet(samples, cache.index, "val"))
    assert "video · fake 0.10–0.30, 0.60–0.80 s" in written
    assert "audio · fake 1.20–2.50 s" in written, "the whole segment, though the band stops"
    assert not any(text.startswith("real") and "·" in text for text in written)


def test_one_video_says_its_kind_and_segments_and_bands_them(lavdf, tmp_path, capsys):
    cache = open_cache(lavdf)
    out = tmp_path / "one.png"
    assert inspect_main([str(lavdf), "sheet", "--video", "dev/a0.mp4", "-o", str(out)]) == 0
    entry, position = cache.locate("dev/a0.mp4")
    sample = cache.sample("dev/a0.mp4")
    meta = sample_meta(cache, sample, entry.path, position, entry.split)
    assert (meta["fake kind"], meta["segments"]) == ("audio", "fake 0.40–0.90 s")
    real = cache.sample("dev/r0.mp4")
    assert sample_meta(cache, real, entry.path, 0, "val")["segments"] == "none"
    pixels = load_png(out)
    top, left = sheets.TITLE_H, sheets.DETAIL_LEFT
    rows = slice(top - sheets.BAND_GAP - sheets.BAND_H[False] + 1, top - sheets.BAND_GAP - 1)
    found = band_columns(pixels[:, : left + sheets.DETAIL_MEL + 4], rows)
    assert_band(found, expected_columns(cache, sample, left, sheets.DETAIL_MEL))


def test_the_gallery_says_each_kind_and_segment_and_filters_by_kind(lavdf, tmp_path):
    out = tmp_path / "gallery"
    assert inspect_main([str(lavdf), "gallery", "-o", str(out)]) == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert ('<select id="f-kind"><option value="">all</option><option value="audio">audio'
            '</option><option value="real">real</option><option value="video">video'
            "</option></select>") in page  # fmt: skip
    cards = page.split('<figure class="card"')[1:]
    a1 = next(card for card in cards if 'alt="dev/a1.mp4"' in card)
    assert 'data-kind="audio"' in a1 and '<span class="kind">audio</span>' in a1
    assert '<span class="segments">fake 1.20–2.50 s</span>' in a1
    r0 = next(card for card in cards if 'alt="dev/r0.mp4"' in card)
    assert 'data-kind="real"' in r0 and 'class="kind"' not in r0 and "segments" not in r0
    cache = open_cache(lavdf)
    entry, position = cache.locate("dev/a0.mp4")
    thumb = load_png(out / f"thumbs/{cache.shards.index(entry):05d}-{position:06d}.png")
    height = sheets.BAND_H[True]
    assert thumb.shape[0] == height + 2 + THUMB_SIZE, "a band above the mel"
    found = band_columns(thumb, slice(0, height))
    assert_band(found, expected_columns(cache, cache.sample("dev/a0.mp4"), 0, THUMB_SIZE))


def test_an_ffdv_cache_looks_as_before(tmp_path):
    write_toy_cache(tmp_path / "toy", {"val": 3})
    sheet, gallery = tmp_path / "sheet.png", tmp_path / "gallery"
    assert inspect_main([str(tmp_path / "toy"), "sheet", "-o", str(sheet)]) == 0
    assert inspect_main([str(tmp_path / "toy"), "gallery", "-o", str(gallery)]) == 0
    pixels = load_png(sheet)
    assert pixels.shape == (210, 1336, 3), "no caption line"
    assert band_columns(pixels, slice(0, None)).size == 0
    cache = open_cache(tmp_path / "toy")
    samples = list(cache.iter_samples("val"))
    written = texts(sheets.contact_sheet(samples, cache.index, "val"))
    assert not any("fake " in text or "·" in text for text in written), written
    page = (gallery / "index.html").read_text(encoding="utf-8")
    assert "f-kind" not in page and "data-kind" not in page and 'class="segments"' not in page
    assert load_png(gallery / "thumbs/00000-000000.png").shape[0] == THUMB_SIZE


def test_the_mel_spans_the_decoded_seconds_and_no_seconds_once_trimmed():
    sample = schema.Sample("a.mp4", 1, np.zeros((256, 256), np.uint8),
                           np.zeros((0, 8, 8, 3), np.uint8), True, np.zeros(0, bool),
                           np.zeros((0, 4), np.float32), 900.0,
                           fake_segments=np.array([[590.0, 700.0], [650.0, 660.0]]))  # fmt: skip
    capped = {"config": {"audio": {"max_seconds": 600.0}}}
    assert sheets.mel_seconds(sample, capped) == 600.0
    assert sheets.segment_spans(sample.fake_segments, 600.0) == [(590.0, 600.0)]
    trimmed = {"config": {"audio": {"max_seconds": 600.0, "trim_silence_db": 40.0}}}
    assert sheets.mel_seconds(sample, trimmed) is None
    assert sheets.mel_seconds(sample, {"config": {"audio": {"max_seconds": "x"}}}) == 900.0
    assert sheets.segments_text(sample.fake_segments, 1) == "fake 590.00–700.00 s +1 more"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium (make setup has it)")
def test_the_browser_filters_the_gallery_by_kind(lavdf, tmp_path):
    out = tmp_path / "gallery"
    assert inspect_main([str(lavdf), "gallery", "-o", str(out)]) == 0
    url = (out / "index.html").as_uri() + "#kind=audio&split=val"
    run = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    cards = run.stdout.split('<figure class="card"')[1:]
    shown = [re.search(r'alt="([^"]+)"', card)[1] for card in cards
             if not re.match(r'[^>]*\shidden', card)]  # fmt: skip
    assert len(cards) == 15 and shown == ["dev/a0.mp4", "dev/a1.mp4"]
