"""A static gallery of a cache: thumbnails, filters, and the model's most confident mistakes.

`DIR/index.html` opens straight from disk (no server): one file with inline CSS
and JS that links only, and relatively, to PNG thumbnails under `DIR/thumbs/`.
Each thumbnail is the sample's mel image (low frequencies at the bottom, the
sheets' colour map) beside its K face crops, a red frame where no face was
found; with aligned tracks (v3), the first window under them: its spectrogram,
waveform and mouth frames over the same pixel columns (frame k in columns
[k, k + 1) x cell), then a time axis in seconds from the video's start.
Where the data set records them (LAV-DF, AV-Deepfake1M, FakeAVCeleb, ...), a
card says the kind of fake and the fake segments in seconds, a band above the
mel marks the segments over its columns, and the page filters by kind.
Video names come from label files and may hold quotes, `<>&` or any
Unicode: every one is HTML-escaped, and none is used as a file name.

Scale: the small columns (names, labels, flags) are read once per shard; the
mel and faces of the samples shown are read in blocks per shard. A per-split
cap (default 200) keeps the page light on a cache of 100k videos.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from avcache.cache import schema
from avcache.cache.reader import Cache
from avcache.common.labels import LabelFileError, read_json, read_rows
from avcache.common.untrusted import shown
from avcache.inspection.sheets import (
    BAND_H,
    BAND_RGB,
    COLORMAP,
    DRAWN_WINDOWS,
    SEGMENTS_SHOWN,
    face_tile,
    label_name,
    mel_axes_of,
    mel_seconds,
    segment_spans,
    segments_text,
    spectrogram,
    strip_image,
    wave_image,
    window_span,
)

THUMBS_DIR = "thumbs"
THUMB_SIZE = 128  # mel thumbnail side in pixels (half the mel); faces tile the same height
GAP = 2
DEFAULT_LIMIT = 200
# A track window under the thumbnail: heights in pixels, at least this many px per frame.
SPEC_H, WAVE_H, TICKS_H, MIN_CELL = 40, 32, 16, 8
AXIS_RGB = (90, 90, 90)


@dataclass(frozen=True)
class TrackFacts:
    """What a card says of a sample's aligned windows (v3), from the small columns."""

    start: float  # the first window's start, seconds from the video's start
    mouth_found: int  # frames of all windows where the mouth was located
    frames: int  # frames of all windows
    repeated: int  # frames repeating the clip's last one (the clip was short)
    audio_real: float  # the smallest share of real audio over the windows

    def tags(self) -> list[str]:
        tags = [f"mouth {self.mouth_found}/{self.frames}", f"window at {self.start:.2f} s"]
        if self.repeated:
            tags.append(f'<span class="tag warn">{self.repeated} frames repeated</span>')
        if self.audio_real < 1:
            tags.append(f'<span class="tag warn">audio {100 * self.audio_real:.0f}% real</span>')
        return tags


@dataclass
class Entry:
    """One cached sample as the gallery lists it (no pixels)."""

    shard: int
    position: int
    split: str
    name: str
    label: int
    has_audio: bool
    faces_found: int
    frames: int
    duration: float
    truth: int | None = None  # from a label file, else the cached label when known
    p_fake: float | None = None
    found: np.ndarray | None = None  # float [M, 3] predicted segments (confidence, start, end)
    tracks: TrackFacts | None = None
    kind: str | None = None  # the data set's kind of fake, where it records kinds
    segments: np.ndarray | None = None  # float64 [k, 2] fake segments, seconds

    @property
    def pick(self) -> tuple[int, int]:
        return self.shard, self.position

    @property
    def thumb(self) -> str:
        """Relative path of the thumbnail: from positions, never from the video name."""
        return f"{THUMBS_DIR}/{self.shard:05d}-{self.position:06d}.png"

    @property
    def mistake(self) -> float | None:
        """How confidently wrong the prediction is (|p - truth| when on the wrong side of
        0.5), None when right or unknown."""
        if self.p_fake is None or self.truth is None:
            return None
        wrong = (self.p_fake >= 0.5) != (self.truth == schema.LABEL_FAKE)
        return abs(self.p_fake - self.truth) if wrong else None


def catalog(cache: Cache, splits: list[str] | None = None) -> list[Entry]:
    """Every sample's small columns, read once per shard (no mel, no faces)."""
    entries: list[Entry] = []
    for number, entry in enumerate(cache.shards):
        if splits and entry.split not in splits:
            continue
        with entry.open() as shard:
            names, labels = shard.read(schema.VIDEO_NAME), shard.read(schema.LABEL)
            audio, found = shard.read(schema.HAS_AUDIO), shard.read(schema.FACE_FOUND)
            duration = shard.read(schema.DURATION)
            tracks = _track_facts(shard) if shard.tracks else [None] * len(names)
            kinds = shard.read_fake_kinds() if shard.has_fake_kinds else [None] * len(names)
            segments = (shard.read_fake_segments() if shard.has_fake_segments
                        else [None] * len(names))  # fmt: skip
        known = {schema.LABEL_FAKE, schema.LABEL_REAL}
        entries.extend(
            Entry(
                number,
                i,
                entry.split,
                str(names[i]),
                int(labels[i]),
                bool(audio[i]),
                int(found[i].sum()),
                found.shape[1],
                float(duration[i]),
                truth=int(labels[i]) if int(labels[i]) in known else None,
                tracks=tracks[i],
                kind=kinds[i],
                segments=segments[i],
            )
            for i in range(len(names))
        )
    return entries


def _track_facts(shard) -> list[TrackFacts]:
    """Each sample's TrackFacts, from the tracks' small columns (no crops, no audio)."""
    found, start = shard.read(schema.LIPS_FOUND), shard.read(schema.TRACK_START)
    real, audio = shard.read(schema.TRACK_FRAMES_REAL), shard.read(schema.TRACK_AUDIO_REAL)
    frames = found.shape[2]
    return [
        TrackFacts(
            float(start[i, 0]),
            int(found[i].sum()),
            int(found[i].size),
            int((frames - real[i].astype(int)).sum()),
            float(audio[i].min()),
        )
        for i in range(len(found))
    ]


def read_predictions(path: Path) -> dict[str, float]:
    """video_name -> P(fake) from a `video_name,y_pred` CSV (what avcache-predict writes)."""
    scores = {}
    for line, cells in read_rows(path, header=("video_name", "y_pred"), what="predictions"):
        try:
            score = float(cells[1])
        except (IndexError, ValueError):
            score = math.nan
        if not 0.0 <= score <= 1.0:  # NaN too: it would sort anywhere among the mistakes
            raise LabelFileError(f"{path}:{line}: expected video_name,P(fake) in [0, 1]: "
                                 f"{shown(cells)}")  # fmt: skip
        scores[cells[0].strip()] = score
    return scores


# Predicted segments drawn on a thumbnail: the most confident ones, at least this sure.
FOUND_SHOWN, FOUND_LEAST = 3, 0.5
FOUND_RGB = (31, 119, 180)


def read_found(path: Path) -> dict[str, np.ndarray]:
    """video_name -> its proposals [M, 3] (confidence, start, end seconds) from the JSON
    avcache-predict --segments writes (its default, AV-Deepfake1M's format); anything else
    is refused naming the file and the video."""
    listing = read_json(path, "segments")
    if not isinstance(listing, dict):
        raise LabelFileError(f"{path}: expected {{video: [[confidence, start, end], ...]}}")
    found = {}
    for name, rows in listing.items():
        array = proposal_rows(rows)
        if array is None:
            raise LabelFileError(f"{path}: {shown(name)}: expected a list of [confidence, "
                                 "start, end] with start <= end (seconds)")  # fmt: skip
        found[str(name)] = array
    return found


def proposal_rows(rows: object) -> np.ndarray | None:
    """[M, 3] of a JSON list of [confidence, start, end] numbers, finite, start <= end; None
    where it is not one."""

    def number(value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    if not isinstance(rows, list) or not all(isinstance(row, list) and len(row) == 3 and
                                             all(map(number, row)) for row in rows):  # fmt: skip
        return None
    array = np.array(rows, np.float64).reshape(-1, 3)
    if not np.isfinite(array).all() or (array[:, 1] > array[:, 2]).any():
        return None
    return array


def found_band(found: np.ndarray, extent: tuple[float, float], width: int) -> np.ndarray:
    """RGB uint8 [BAND_H, width]: the most confident predicted segments (FOUND_SHOWN, each at
    least FOUND_LEAST sure), the surer the darker, over the columns of a mel thumbnail."""
    band = np.full((BAND_H[True], width, 3), 255, np.uint8)
    left, right = extent
    sure = found[found[:, 0] >= FOUND_LEAST]
    for confidence, start, stop in sure[np.argsort(-sure[:, 0], kind="stable")][:FOUND_SHOWN]:
        edges = (np.clip([start, stop], left, right) - left) / (right - left) * width
        first, last = edges.round()
        weight = min(max(float(confidence), 0.0), 1.0)
        colour = np.round(255 - weight * (255 - np.array(FOUND_RGB))).astype(np.uint8)
        band[:, int(first) : max(int(last), int(first) + 1)] = colour
    return band


SCORE_RGB = (214, 39, 40)  # a frame sure to be fake; white: sure to be real


def score_band(times: np.ndarray, scores: np.ndarray, frame: float,
               extent: tuple[float, float], width: int) -> np.ndarray:  # fmt: skip
    """RGB uint8 [BAND_H, width]: each column the P(fake) of the track frame whose period
    (`frame` seconds around its instant in `times`) holds the column's instant, white to
    SCORE_RGB; white where no frame does."""
    band = np.full((BAND_H[True], width, 3), 255, np.uint8)
    left, right = extent
    instants = left + (np.arange(width) + 0.5) * (right - left) / width
    if not len(times):
        return band
    nearest = np.clip(np.searchsorted(times, instants), 1, len(times) - 1)
    nearest -= (instants - times[nearest - 1]) < (times[nearest] - instants)
    covered = np.abs(times[nearest] - instants) <= frame / 2 + 1e-9
    weight = np.clip(scores[nearest], 0.0, 1.0)[:, None]
    colours = np.round(255 - weight * (255 - np.array(SCORE_RGB))).astype(np.uint8)
    band[:, covered] = colours[covered]
    return band


def read_truth(paths: list[Path]) -> dict[str, int]:
    """video_name -> target (1 fake, 0 real) from label files such as val_label.txt."""
    truth = {}
    for path in paths:
        for line, cells in read_rows(path, what="label file"):
            target = cells[1].strip() if len(cells) > 1 else ""
            if target not in ("0", "1"):
                raise LabelFileError(f"{path}:{line}: expected video_name,target (0 or 1)")
            truth[cells[0].strip()] = int(target)
    return truth


def attach_predictions(
    entries: list[Entry], predictions: dict[str, float], truth: dict[str, int]
) -> None:
    """Give entries their P(fake) and, where a label file knows it, their true label."""
    for entry in entries:
        entry.p_fake = predictions.get(entry.name)
        entry.truth = truth.get(entry.name, entry.truth)


def worst_mistakes(entries: list[Entry]) -> list[Entry]:
    """Wrong predictions at the 0.5 threshold, the most confident first (ties by name);
    a video cached in two splits is listed once."""
    wrong: dict[str, Entry] = {}
    for entry in entries:
        if entry.mistake is not None:
            wrong.setdefault(entry.name, entry)
    return sorted(wrong.values(), key=lambda entry: (-entry.mistake, entry.name))


@dataclass
class Selection:
    """What the page shows: the first `limit` samples of each split, the worst mistakes."""

    samples: list[Entry]
    mistakes: list[Entry]
    notes: list[str] = field(default_factory=list)


def select(entries: list[Entry], limit: int) -> Selection:
    """Cap each split at `limit` samples (0: no cap) and the mistakes at `limit`; say so."""
    shown, notes, splits = [], [], list(dict.fromkeys(entry.split for entry in entries))
    for split in splits:
        of_split = [entry for entry in entries if entry.split == split]
        kept = of_split[:limit] if limit else of_split
        shown.extend(kept)
        if len(kept) < len(of_split):
            notes.append(
                f"{split}: showing the first {len(kept)} of {len(of_split)} (--limit {limit})"
            )
    mistakes = worst_mistakes(entries)
    if limit and len(mistakes) > limit:
        notes.append(f"mistakes: showing the {limit} most confident of {len(mistakes)}")
        mistakes = mistakes[:limit]
    return Selection(shown, mistakes, notes)


def colour_lut() -> np.ndarray:
    """uint8 [256, 3] RGB table of the sheets' colour map."""
    from matplotlib import colormaps

    return (colormaps[COLORMAP](np.arange(256))[:, :3] * 255).round().astype(np.uint8)


def thumbnail(sample: schema.Sample, lut: np.ndarray, size: int = THUMB_SIZE) -> np.ndarray:
    """RGB uint8: the mel (low frequencies at the bottom) beside a grid of the K faces."""
    mel = cv2.resize(lut[sample.mel[::-1]], (size, size), interpolation=cv2.INTER_AREA)
    frames = sample.faces.shape[0]
    if frames == 0:
        return mel
    rows = 1 if frames <= 2 else 2
    columns, tile = math.ceil(frames / rows), (size - GAP * (rows - 1)) // rows
    out = np.full((size, size + columns * (tile + GAP), 3), 255, np.uint8)
    out[:, :size] = mel
    for k in range(frames):
        row, column = divmod(k, columns)
        y, x = row * (tile + GAP), size + GAP + column * (tile + GAP)
        out[y : y + tile, x : x + tile] = face_tile(sample.faces[k], sample.face_found[k], tile)
    return out


def segment_band(spans: list[tuple[float, float]], extent: tuple[float, float],
                 width: int) -> np.ndarray:  # fmt: skip
    """RGB uint8 [BAND_H, width]: the fake segments (seconds) over the columns of a mel
    thumbnail `width` px wide whose edges are the seconds `extent`, white elsewhere."""
    band = np.full((BAND_H[True], width, 3), 255, np.uint8)
    left, right = extent
    for start, stop in spans:
        first, last = ((np.array([start, stop]) - left) / (right - left) * width).round()
        band[:, int(first) : max(int(last), int(first) + 1)] = BAND_RGB
    return band


def track_thumbnail(
    tracks: schema.Tracks, layout: schema.TrackLayout, lut: np.ndarray, width: int
) -> np.ndarray:
    """RGB uint8: the first window's spectrogram (low frequencies at the bottom), waveform
    and mouth strip over the same columns, `cell` = width // T (at least MIN_CELL) px per
    frame, then ticks at the frame edges labelled with the window's ends in seconds."""
    frames = tracks.lips.shape[1]
    cell = max(MIN_CELL, width // frames)
    columns = cell * frames
    spec = spectrogram(tracks.audio[0], layout.audio_rate, columns)
    spec = lut[cv2.resize(spec, (columns, SPEC_H), interpolation=cv2.INTER_AREA)[::-1]]
    wave = wave_image(tracks.audio[0], float(tracks.audio_real[0]), columns, WAVE_H)
    white = np.full((GAP, columns, 3), 255, np.uint8)
    strip = strip_image(tracks, 0, cell)
    return np.concatenate([spec, white, wave, white, strip, time_ticks(tracks, layout, cell)])


def time_ticks(tracks: schema.Tracks, layout: schema.TrackLayout, cell: int) -> np.ndarray:
    """RGB uint8 [TICKS_H, T * cell]: a tick at every frame edge, the window's first and last
    second (from the video's start) written at its ends."""
    frames = tracks.lips.shape[1]
    image = np.full((TICKS_H, cell * frames, 3), 255, np.uint8)
    image[0, :] = AXIS_RGB
    image[:4, [min(k * cell, cell * frames - 1) for k in range(frames + 1)]] = AXIS_RGB
    start, stop = window_span(tracks, layout, 0)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.33
    right = f"{stop:.2f} s"
    right_x = cell * frames - cv2.getTextSize(right, font, scale, 1)[0][0] - 1
    for text, x in ((f"{start:.2f} s", 1), (right, right_x)):
        cv2.putText(image, text, (x, TICKS_H - 3), font, scale, AXIS_RGB, 1, cv2.LINE_AA)
    return image


def _stack(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """`top` above `bottom`, GAP px apart, left-aligned on white."""
    width = max(top.shape[1], bottom.shape[1])
    out = np.full((top.shape[0] + GAP + bottom.shape[0], width, 3), 255, np.uint8)
    out[: top.shape[0], : top.shape[1]] = top
    out[top.shape[0] + GAP :, : bottom.shape[1]] = bottom
    return out


def write_thumbnails(cache: Cache, entries: list[Entry], out: Path,
                     scorer=None) -> dict[str, tuple[int, int]]:  # fmt: skip
    """One PNG per entry under out/thumbs/, read block-wise per shard; path -> (width, height).
    With `scorer` (inspection/frames.py FrameScorer), a band of its frame scores over the
    mel."""
    (out / THUMBS_DIR).mkdir(parents=True, exist_ok=True)
    lut, sizes, layout, axes = colour_lut(), {}, cache.tracks, mel_axes_of(cache.index)
    wanted = {entry.pick: entry for entry in entries}
    for pick, sample in tqdm(
        cache.samples_at(list(wanted), windows=DRAWN_WINDOWS),
        total=len(wanted),
        desc="thumbnails",
        unit="sample",
        leave=False,
    ):
        image = thumbnail(sample, lut)
        seconds = mel_seconds(sample, cache.index)
        if scorer is not None and sample.tracks is not None and axes is not None and seconds:
            times, scores = scorer.held(sample)
            band = score_band(times, scores, 1 / layout.fps, axes.time_extent(seconds),
                              THUMB_SIZE)  # fmt: skip
            image = _stack(band, image)
        found = wanted[pick].found
        if found is not None and axes is not None and seconds:
            image = _stack(found_band(found, axes.time_extent(seconds), THUMB_SIZE), image)
        if sample.fake_segments is not None and axes is not None and seconds:
            spans = segment_spans(sample.fake_segments, seconds)
            band = segment_band(spans, axes.time_extent(seconds), THUMB_SIZE)
            image = _stack(band, image)
        if layout is not None and sample.tracks is not None:
            image = _stack(image, track_thumbnail(sample.tracks, layout, lut, image.shape[1]))
        path = wanted[pick].thumb
        if not cv2.imwrite(str(out / path), np.ascontiguousarray(image[..., ::-1])):
            raise OSError(f"{out / path}: cannot write the thumbnail")
        sizes[path] = (image.shape[1], image.shape[0])
    return sizes


def write_gallery(
    cache: Cache,
    out: Path,
    *,
    limit: int = DEFAULT_LIMIT,
    splits: list[str] | None = None,
    predictions: Path | None = None,
    labels: Sequence[Path] = (),
    segments: Path | None = None,
    scorer=None,
) -> Selection:
    """Thumbnails and index.html under `out`; returns what was shown and what was capped.
    With `segments` (avcache-predict --segments' JSON), each thumbnail shows the predicted
    segments under the true ones; with `scorer` (a run's FrameScorer), each frame's P(fake)
    under those."""
    entries, scores = catalog(cache, splits), {}
    if predictions is not None:
        scores = read_predictions(predictions)
        attach_predictions(entries, scores, read_truth(list(labels)))
    if segments is not None:
        found = read_found(segments)
        for entry in entries:
            entry.found = found.get(entry.name)
    selection = select(entries, limit)
    unmatched = len(set(scores) - {entry.name for entry in entries})
    if unmatched:
        selection.notes.append(f"{unmatched} predicted videos are not in the samples listed")
    sizes = write_thumbnails(cache, selection.samples + selection.mistakes, Path(out), scorer)
    judged = None
    if predictions is not None:
        sources = [Path(path).name for path in labels] + ["the cached labels"]
        judged = f"{Path(predictions).name} judged against {' and '.join(sources)}"
    page = render_page(cache, selection, sizes, len(entries), judged)
    (Path(out) / "index.html").write_text(page, encoding="utf-8")
    return selection


def card(entry: Entry, size: tuple[int, int], rank: int | None = None) -> str:
    """One sample's figure; every name is escaped, data-* attributes drive the filters."""
    name = html.escape(entry.name, quote=True)
    label = label_name(entry.label if entry.truth is None else entry.truth)
    tags = [f'<span class="tag {label}">{label}</span>', html.escape(entry.split)]
    if not entry.has_audio:
        tags.append('<span class="tag noaudio">no audio</span>')
    tags.append(f"faces {entry.faces_found}/{entry.frames}")
    tags.append(f"{entry.duration:.1f} s")
    if entry.kind and entry.kind != label:  # LAV-DF's "real" for a real says nothing more
        tags.append(f'<span class="kind">{html.escape(entry.kind)}</span>')
    if entry.segments is not None and len(entry.segments):
        text = segments_text(entry.segments, SEGMENTS_SHOWN[False])
        tags.append(f'<span class="segments">{html.escape(text)}</span>')
    if entry.tracks is not None:
        tags.extend(entry.tracks.tags())
    if entry.p_fake is not None:
        tags.append(f'<span class="p">P(fake) {entry.p_fake:.3f}</span>')
    if entry.found is not None and len(entry.found):
        confidence, start, stop = entry.found[np.argmax(entry.found[:, 0])]
        tags.append(f'<span class="found">found {start:.2f}–{stop:.2f} s '
                    f"({confidence:.2f})</span>")  # fmt: skip
    if rank is not None:
        tags.insert(0, f'<span class="rank">#{rank}</span>')
    width, height = size
    kind = "" if entry.kind is None else f' data-kind="{html.escape(entry.kind, quote=True)}"'
    return (
        f'<figure class="card" style="width:{width}px" '
        f'data-split="{html.escape(entry.split, quote=True)}" '
        f'data-label="{label}" data-audio="{"yes" if entry.has_audio else "no"}"{kind}>'
        f'<img src="{entry.thumb}" width="{width}" height="{height}" alt="{name}">'
        f'<figcaption><div class="name" title="{name}">{name}</div>'
        f'<div class="tags">{" · ".join(tags)}</div></figcaption></figure>'
    )


def _options(values: list[str]) -> str:
    return "".join(
        f'<option value="{html.escape(v, quote=True)}">{html.escape(v)}</option>' for v in values
    )


def _kind_filter(selection: Selection) -> str:
    """A filter by kind of fake where the data set records kinds ("" for FFDV)."""
    kinds = sorted({e.kind for e in selection.samples + selection.mistakes if e.kind is not None})
    if not kinds:
        return ""
    return (' <label>kind <select id="f-kind"><option value="">all</option>'
            f"{_options(kinds)}</select></label>")  # fmt: skip


def render_page(
    cache: Cache,
    selection: Selection,
    sizes: dict[str, tuple[int, int]],
    total: int,
    judged: str | None,
) -> str:
    """The whole page: header, filters, mistakes (when predictions were given), samples."""
    splits = list(dict.fromkeys(entry.split for entry in selection.samples))
    shown = len(selection.samples)
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in selection.notes)
    filters = (
        f'<label>split <select id="f-split"><option value="">all</option>{_options(splits)}'
        '</select></label> <label>label <select id="f-label"><option value="">all</option>'
        f"{_options(['fake', 'real', 'unknown'])}</select></label> <label>audio "
        '<select id="f-audio"><option value="">any</option><option value="yes">with audio'
        '</option><option value="no">without audio</option></select></label>'
    ) + _kind_filter(selection)
    body = [
        f"<header><h1>avcache gallery <code>{html.escape(cache.location)}</code></h1>",
        f"<p>{shown} of {total} samples, config {html.escape(cache.config_hash)}</p>",
        f"<ul class='notes'>{notes}</ul>" if notes else "",
        f'<form id="filters">{filters}</form></header>',
    ]
    if judged is not None:
        cards = "".join(
            card(entry, sizes[entry.thumb], rank)
            for rank, entry in enumerate(selection.mistakes, 1)
        )
        body.append(
            f'<section id="mistakes"><h2>Most confident mistakes <span class="count"></span>'
            f"</h2><p>{html.escape(judged)}: wrong at the 0.5 threshold, the most confident "
            f'first</p><div class="grid">{cards}</div></section>'
        )
    cards = "".join(card(entry, sizes[entry.thumb]) for entry in selection.samples)
    body.append(
        '<section id="samples"><h2>Samples <span class="count"></span></h2>'
        f'<div class="grid">{cards}</div></section>'
    )
    title = html.escape(f"avcache gallery: {cache.name}")
    return PAGE.format(title=title, style=STYLE, body="\n".join(body), script=SCRIPT)


PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{title}</title><style>{style}</style></head>
<body>
{body}
<script>{script}</script>
</body>
</html>
"""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 16px 24px; background: #f4f4f6; }
header { position: sticky; top: 0; background: #f4f4f6; padding: 8px 0; z-index: 1; }
h1 { font-size: 18px; margin: 4px 0; } h2 { font-size: 16px; margin: 16px 0 6px; }
.notes { color: #8a5a00; margin: 2px 0; }
#filters label { margin-right: 12px; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; }
.card { margin: 0; padding: 6px; background: #fff; border-radius: 6px;
        box-shadow: 0 1px 2px #0002; }
.card img { display: block; image-rendering: pixelated; }
.name { font: 11px monospace; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.tags { font-size: 11px; color: #555; }
.tag { font-weight: bold; } .fake { color: #c0392b; } .real { color: #1e8449; }
.unknown { color: #777; } .noaudio, .warn { color: #8a5a00; } .rank { font-weight: bold; }
.p, .rank { color: #222; white-space: nowrap; }
.kind { font-weight: bold; color: #222; } .segments { color: #0072b2; }
[hidden] { display: none !important; }
"""

# Filters: the form's <select>s (kind only where the data set records kinds), also settable from
# the URL, e.g. index.html#split=val&label=fake&kind=audio.
SCRIPT = """
const controls = Object.fromEntries(Array.from(
  document.querySelectorAll("#filters select"), (select) => [select.id.slice(2), select.id]));
for (const [key, value] of new URLSearchParams(location.hash.slice(1))) {
  const select = document.getElementById(controls[key] || "");
  if (select) select.value = value;
}
function apply() {
  const want = Object.fromEntries(
    Object.entries(controls).map(([key, id]) => [key, document.getElementById(id).value]));
  for (const section of document.querySelectorAll("section")) {
    let shown = 0;
    for (const card of section.querySelectorAll(".card")) {
      const keep = Object.entries(want).every(
        ([key, value]) => !value || card.dataset[key] === value);
      card.hidden = !keep;
      shown += keep;
    }
    section.querySelector(".count").textContent = `(${shown})`;
  }
}
for (const id of Object.values(controls)) {
  document.getElementById(id).addEventListener("change", apply);
}
apply();
"""
