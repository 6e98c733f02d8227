"""inspect on a cache with aligned tracks (format v3): each window drawn as its spectrogram
and waveform above its mouth strip, on one time axis in seconds from the video's start.

The tracks are written with a known pattern: frame k of a window is bright exactly where
the window's audio is loud (white noise over that frame's 640 samples) and dark where it
is silent, so a rendered PNG can be read back column by column: the waveform is tall
exactly over the bright frames, whatever drawing did to them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg

from avcache.cache import open_cache, schema
from avcache.cache.index import ShardRecord, build_index
from avcache.cache.writer import ShardWriter
from avcache.common.atomic import write_json_atomic
from avcache.common.config import to_dict
from avcache.inspection.cli import main
from avcache.inspection.gallery import GAP, SPEC_H, THUMB_SIZE, WAVE_H, track_thumbnail
from avcache.inspection.sheets import (
    NO_FACE_RGB,
    detail_track_boxes,
    panel_track_box,
    sample_figure,
    sheet_layout,
    window_notes,
)
from avcache.preprocess.config import PreprocessConfig
from tests.toy import write_toy_cache, write_track_cache

FRAMES, SIZE = 2, 32  # face frames and size
T, S, FPS, RATE, W = 16, 32, 25.0, 16000, 2
PER_FRAME = RATE // int(FPS)  # 640 audio samples per track frame
LAYOUT = schema.TrackLayout(W, T, S, FPS, RATE, T * PER_FRAME)
BRIGHT, DARK, LOUD = 230, 20, 20000
# name -> per window: (start in s, loud/bright frames); the third sample also has frames
# where the mouth was not located, repeated frames and audio that ends early
PATTERNS = {
    "a.mp4": [(1.0, {3, 4, 5, 10}), (2.0, {0, 7, 8, 15})],
    "b.mp4": [(0.5, {1, 2, 12, 13, 14}), (3.2, {6})],
    "c.mp4": [(0.0, {4, 5, 6}), (1.4, {9})],
}
LOST = {"c.mp4": (2, 9)}  # window 0 frames whose mouth was not located
C_FRAMES_REAL, C_AUDIO_REAL = 12, 0.75  # c.mp4 window 0


def patterned_tracks(name: str, rng: np.random.Generator) -> schema.Tracks:
    lips = np.full((W, T, S, S), DARK, np.uint8)
    audio = np.zeros((W, T * PER_FRAME), np.int16)
    start = np.zeros(W)
    for w, (seconds, loud) in enumerate(PATTERNS[name]):
        start[w] = seconds
        for k in loud:
            lips[w, k] = BRIGHT
            noise = rng.uniform(-LOUD, LOUD, PER_FRAME)
            audio[w, k * PER_FRAME : (k + 1) * PER_FRAME] = noise.astype(np.int16)
    found = np.ones((W, T), bool)
    found[0, list(LOST.get(name, ()))] = False
    frames_real, audio_real = np.full(W, T, np.int16), np.ones(W, np.float32)
    if name == "c.mp4":
        frames_real[0], audio_real[0] = C_FRAMES_REAL, C_AUDIO_REAL
    return schema.Tracks(lips=lips, lips_found=found, start=start, frames_real=frames_real,
                         audio=audio, audio_real=audio_real)  # fmt: skip


def write_patterned_cache(root: Path) -> None:
    rng = np.random.default_rng(0)
    (root / "shards").mkdir(parents=True)
    rel = "shards/val-00000.h5"
    with ShardWriter(
        root / rel, schema.ShardLayout(frames=FRAMES, face_size=SIZE, tracks=LAYOUT), split="val"
    ) as writer:
        for number, name in enumerate(PATTERNS):
            sample = schema.Sample(name, number % 2, rng.integers(0, 255, (256, 256), np.uint8),
                                   np.full((FRAMES, SIZE, SIZE, 3), 90, np.uint8), True,
                                   np.ones(FRAMES, bool), np.zeros((FRAMES, 4), np.float32),
                                   np.float32(4.0))  # fmt: skip
            sample.tracks = patterned_tracks(name, rng)
            writer.append(sample)
        record = ShardRecord(rel, "val", *writer.close())
    config = to_dict(PreprocessConfig())
    config["faces"].update(frames=FRAMES, size=SIZE, detector="haar", codec="raw")
    config["tracks"].update(windows=W, frames=T, size=S)
    write_json_atomic(root / schema.INDEX_FILE, build_index(config, "patterned", [record]))


@pytest.fixture(scope="module")
def patterned(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tracks") / "cache"
    write_patterned_cache(root)
    return root


def load_png(path: Path) -> np.ndarray:
    return (mpimg.imread(path)[..., :3] * 255).round().astype(np.uint8)


def bright_columns(strip: np.ndarray) -> np.ndarray:
    """Columns of a mouth strip whose middle rows are bright (a bright frame)."""
    middle = strip[strip.shape[0] // 4 : -strip.shape[0] // 4].astype(int).mean(axis=(0, 2))
    return np.flatnonzero(middle > 190)  # not a faded dark frame (138) nor a red border


def loud_columns(wave: np.ndarray) -> np.ndarray:
    """Columns of a waveform where the blue trace covers more than half the height."""
    pixels = wave[2:-2].astype(int)
    trace = (pixels[..., 2] - pixels[..., 0] > 40).sum(axis=0)
    return np.flatnonzero(trace > 0.5 * len(pixels))


def crop(pixels: np.ndarray, box: tuple[int, int, int, int], inset: int = 0) -> np.ndarray:
    x, y, w, h = box
    return pixels[y + inset : y + h - inset, x + inset : x + w - inset]


def frames_of(columns: np.ndarray, cell: int) -> set[int]:
    """Frames most of whose columns are in `columns`."""
    counts = np.bincount(columns // cell, minlength=T)
    return {k for k in range(T) if counts[k] > 0.8 * cell}


def assert_aligned(pixels: np.ndarray, box, loud: set[int]) -> tuple[int, int]:
    """The waveform is tall exactly over the bright frames, and both over the loud frames
    of the pattern; returns the largest column offset between the two, at either edge."""
    strip = bright_columns(crop(pixels, box.strip)[:, 1:-1])
    wave = loud_columns(crop(pixels, box.wave)[:, 1:-1])
    assert frames_of(strip + 1, box.cell) == loud, "the strip's bright frames"
    assert frames_of(wave + 1, box.cell) == loud, "the waveform's loud frames"
    edges = [np.flatnonzero(np.diff(np.isin(np.arange(box.width), c + 1))) for c in (strip, wave)]
    assert len(edges[0]) == len(edges[1])
    offsets = np.abs(edges[0] - edges[1])
    assert offsets.max() < box.cell, "within a frame's width"
    return int(offsets.max()), box.cell


def test_one_video_puts_loud_audio_over_bright_frames(patterned, tmp_path, capsys):
    out = tmp_path / "a.png"
    assert main([str(patterned), "sheet", "--video", "a.mp4", "-o", str(out)]) == 0
    assert "a.mp4 from val" in capsys.readouterr().out
    pixels = load_png(out)
    sample = open_cache(patterned).sample("a.mp4")
    boxes = detail_track_boxes(sample, LAYOUT)
    assert len(boxes) == W and boxes[0].cell == 66  # (1152 - 70 - 16) // 16 px per frame
    assert pixels.shape == (boxes[-1].y + boxes[-1].height + 8, 1152, 3)
    for box, (_, loud) in zip(boxes, PATTERNS["a.mp4"], strict=True):
        offset, cell = assert_aligned(pixels, box, loud)
        assert offset <= 2, f"edges {offset} px apart at {cell} px per frame"
        spec = crop(pixels, box.spec, 2).astype(int).mean(axis=(0, 2))
        centres = [k * box.cell + box.cell // 2 - 2 for k in range(T)]
        quiet = [spec[c] for k, c in enumerate(centres) if k not in loud]
        assert min(spec[c] for k, c in enumerate(centres) if k in loud) > max(quiet) + 40


def test_time_axis_is_seconds_from_the_video_start(patterned):
    """Frame k of a window starting at t0 spans [t0 + k / fps, t0 + (k + 1) / fps): its
    first pixel column, in all three axes of the window."""
    sample = open_cache(patterned).sample("a.mp4")
    fig = sample_figure(sample, {}, {}, LAYOUT)
    fig.canvas.draw()
    height = fig.get_size_inches()[1] * 100
    for box, (start, _) in zip(detail_track_boxes(sample, LAYOUT), PATTERNS["a.mp4"], strict=True):
        tops = (box.spec[1], box.wave[1], box.strip[1])
        axes = [ax for ax in fig.axes
                if round(ax.bbox.x0) == box.x and round(height - ax.bbox.y1) in tops]  # fmt: skip
        assert len(axes) == 3
        for ax in axes:
            seconds = start + np.arange(T + 1) / FPS
            x = ax.transData.transform(np.stack([seconds, np.zeros(T + 1)], axis=1))[:, 0]
            np.testing.assert_allclose(x, box.x + np.arange(T + 1) * box.cell, atol=0.01)


def test_sheet_panels_show_their_first_window_aligned(patterned, tmp_path):
    out = tmp_path / "sheet.png"
    assert main([str(patterned), "sheet", "-o", str(out)]) == 0
    pixels = load_png(out)
    columns, rows, width, height = sheet_layout(3, FRAMES, LAYOUT)
    # panels as wide as without tracks (46 + 150 + 8 + 2 * 114 + 8), 23 px per frame, and
    # taller by a note line, spectrogram, waveform, strip and time axis (16+44+2+36+2+23+30)
    assert (columns, rows, width, height) == (3, 1, 16 + 3 * 440, 36 + 166 + 153 + 8)
    assert pixels.shape == (height, width, 3)
    for number, name in enumerate(PATTERNS):
        box = panel_track_box(8 + number * 440, 36, FRAMES, LAYOUT)
        assert box.cell == 23
        offset, _ = assert_aligned(pixels, box, PATTERNS[name][0][1])
        assert offset <= 2


def test_frames_without_a_mouth_are_marked_and_gaps_said(patterned, tmp_path):
    sample = open_cache(patterned).sample("c.mp4")
    assert window_notes(sample.tracks, LAYOUT, 0) == [
        "window 1 of 2: 0.00-0.64 s, 16 frames at 25 fps",
        "mouth not located on 2 (red)",
        "4 frames repeated (faded)",
        "audio 75% real (grey: none)",
    ]
    assert window_notes(sample.tracks, LAYOUT, 0, short=True) == [
        "window 1/2: 0.00-0.64 s",
        "no mouth: 2",
        "4 repeated",
        "audio 75%",
    ]
    assert window_notes(sample.tracks, LAYOUT, 1) == [
        "window 2 of 2: 1.40-2.04 s, 16 frames at 25 fps"
    ]
    out = tmp_path / "c.png"
    assert main([str(patterned), "sheet", "--video", "c.mp4", "-o", str(out)]) == 0
    pixels = load_png(out)
    box = detail_track_boxes(sample, LAYOUT)[0]
    strip = crop(pixels, box.strip)
    red = (np.abs(strip.astype(int) - NO_FACE_RGB) <= 12).all(axis=-1)
    per_frame = [int(red[:, k * box.cell : (k + 1) * box.cell].sum()) for k in range(T)]
    border = box.cell**2 - (box.cell - 6) ** 2
    # the 3 px red frame, less the rows the axes' top and bottom spines cover
    assert all(per_frame[k] > 0.6 * border for k in LOST["c.mp4"]), per_frame
    assert sum(per_frame[k] for k in range(T) if k not in LOST["c.mp4"]) == 0
    # repeated frames (12..15) fade: dark ones are mid grey, not dark
    faded = strip[box.cell // 2, 12 * box.cell + box.cell // 2 :].astype(int).mean()
    assert 120 < faded < 150
    wave = crop(pixels, box.wave, 2)
    grey = (np.abs(wave.astype(int) - 215) <= 3).all(axis=-1).mean(axis=0) > 0.5
    assert abs(np.flatnonzero(grey).min() - 0.75 * box.width) <= 2, "grey from 75% of the audio"


def test_gallery_thumbnails_and_cards(patterned, tmp_path, capsys):
    out = tmp_path / "gallery"
    assert main([str(patterned), "gallery", "-o", str(out)]) == 0
    assert "val 3 samples" in capsys.readouterr().out
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count("mouth 32/32") == 2 and "mouth 30/32" in page
    assert "4 frames repeated" in page and "audio 75% real" in page
    assert "window at 1.00 s" in page and "window at 0.50 s" in page
    for number, name in enumerate(PATTERNS):
        thumb = load_png(out / f"thumbs/00000-{number:06d}.png")
        cell = (THUMB_SIZE + 2 * (THUMB_SIZE + GAP)) // T  # as wide as mel and faces: 24
        top = THUMB_SIZE + GAP + SPEC_H + GAP
        wave, strip = thumb[top : top + WAVE_H], thumb[top + WAVE_H + GAP :][:cell]
        assert cell == 24 and strip.shape[1] >= T * cell
        loud = PATTERNS[name][0][1]
        expected = np.concatenate([np.arange(k * cell, (k + 1) * cell) for k in sorted(loud)])
        np.testing.assert_array_equal(loud_columns(wave[:, : T * cell]), expected)
        np.testing.assert_array_equal(bright_columns(strip[:, : T * cell]), expected)


def test_track_thumbnail_marks_lost_frames():
    rng = np.random.default_rng(1)
    tracks = patterned_tracks("c.mp4", rng)
    lut = np.stack([np.arange(256)] * 3, axis=1).astype(np.uint8)
    image = track_thumbnail(tracks, LAYOUT, lut, 16 * 10)
    strip = image[SPEC_H + GAP + WAVE_H + GAP :][:10]
    assert tuple(strip[5, 2 * 10]) == NO_FACE_RGB and tuple(strip[5, 9 * 10 + 1]) == NO_FACE_RGB
    assert tuple(strip[5, 3 * 10]) == (DARK,) * 3


def test_toy_track_cache_runs_every_view(tmp_path):
    root = tmp_path / "toy"
    write_track_cache(root, {"train": 4, "val": 2})
    assert main([str(root), "sheet", "--split", "val", "-o", str(tmp_path / "s.png")]) == 0
    assert main([str(root), "sheet", "--video", "train001.mp4", "-o", str(tmp_path / "v.png")]) == 0
    assert main([str(root), "gallery", "-o", str(tmp_path / "g")]) == 0
    width, height = sheet_layout(2, 2, open_cache(root).tracks)[2:]
    assert load_png(tmp_path / "s.png").shape == (height, width, 3)
    assert len(list((tmp_path / "g/thumbs").iterdir())) == 6


def test_cache_without_tracks_keeps_its_sheet(tmp_path):
    root = tmp_path / "plain"
    write_toy_cache(root, {"val": 3})
    assert open_cache(root).tracks is None
    assert main([str(root), "sheet", "-o", str(tmp_path / "s.png")]) == 0
    # 3 panels of 16 + 3 * (46 + 150 + 8 + 2 * 114 + 8) px; 36 + 22 + 110 + 34 + 8 px, as before
    assert load_png(tmp_path / "s.png").shape == (210, 1336, 3)
    assert sheet_layout(3, 2) == sheet_layout(3, 2, None) == (3, 1, 1336, 210)
