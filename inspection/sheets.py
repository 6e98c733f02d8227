"""Contact sheets and one-sample figures of cached mel images and faces.

Drawn on `matplotlib.figure.Figure` with the Agg canvas, never pyplot's global
state: nothing needs a display, no global registry keeps figures alive, and a
notebook can show the returned figure. The layout is in pixels, so a sheet's
size is known before it is drawn.

The mel axes are labelled honestly: a cached mel image is the preprocessor's
mel spectrogram (Slaney mel bins over 0..rate/2, one column per STFT frame of
the whole clip) resized to 256 x 256, so rows map to hertz through the mel
scale and columns to seconds through the clip's duration (at most audio.max_seconds, what was
decoded; in pixels where silence was trimmed before the image).

Where the cache's data set records them (LAV-DF, AV-Deepfake1M, FakeAVCeleb, ...), each
sample's kind of fake is written under its name and its fake segments in seconds, and the
segments are a band over the mel image's time axis.

A cache with aligned tracks (format v3) also gets, per window, its spectrogram and
waveform above the strip of its mouth frames, on one time axis in seconds from the
video's start: frame k of a window starting at t0 spans [t0 + k / fps, t0 + (k + 1) / fps)
and audio sample n is the instant t0 + n / rate, so a mouth that opens sits under the
loud part of the speech.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from avcache.cache import schema

DPI = 100
COLORMAP = "magma"
LABEL_NAMES = {
    schema.LABEL_FAKE: "fake",
    schema.LABEL_REAL: "real",
    schema.LABEL_UNKNOWN: "unknown",
}
LABEL_COLOURS = {schema.LABEL_FAKE: "#c0392b", schema.LABEL_REAL: "#1e8449"}
NO_FACE_RGB, NO_FACE_TEXT, NO_FACE_BORDER = (231, 76, 60), "#c0392b", 3
HZ_TICKS = (100, 500, 1000, 2000, 4000, 8000)  # the small sheets drop 100: too close to 500
# Fake segments: a band just above the mel's time axis (not over the image: it hides nothing),
# in a colour the mel's colour map never takes; heights in pixels (sheet panel, one sample).
BAND_COLOUR, BAND_RGB, BAND_GAP = "#00b4ff", (0, 180, 255), 2
BAND_H = {True: 5, False: 8}
SEGMENTS_SHOWN = {True: 2, False: 8}  # segments written out; the rest are counted

# Sheet geometry in pixels: a panel per sample (header line, mel with its axes, K faces).
PAD, TITLE_H, HEADER_H = 8, 36, 22
CAPTION_H = 13  # a line under the name for the kind and segments, where a cache has them
MEL_W, MEL_H, MEL_LEFT, MEL_BOTTOM = 150, 110, 46, 34
FACE_GAP = 4
PANEL_CELLS = 12  # columns of panels: about this many mel/face cells side by side

# Track windows (v3): a note line, the spectrogram, the waveform, the mouth strip (one cell
# per frame, square), then the time axis; heights in pixels (sheet panel, one-sample figure).
TRACK_NOTE_H, TRACK_GAP, TRACK_AXIS_H = 16, 2, 30
PANEL_TRACK_HEIGHTS = (44, 36)  # spectrogram, waveform
DETAIL_TRACK_HEIGHTS = (140, 90)
DETAIL_SCORES_H = 70  # the frames' P(fake) under a window's strip (sheet --video --run)
FAKE_SHADE = {"color": "#d62728", "alpha": 0.18, "lw": 0}  # a true fake segment
TRACK_MIN_CELL = 12  # a panel widens so that a frame gets at least this many pixels
# The windows a sheet panel and a gallery thumbnail draw: only these are decoded (one of up
# to 16 windows of 250 frames of 256 px: 16 MiB a sample instead of 250 MiB).
DRAWN_WINDOWS = range(1)
DETAIL_MAX_CELL = 96
SPEC_FFT_SECONDS = 0.032  # STFT frame: 512 samples at 16 kHz
SPEC_TOP_DB = 80.0  # the spectrogram shows this many dB below the window's peak
WAVE_COLOUR, NO_AUDIO_COLOUR = "#1f4e79", "#d7d7d7"
WAVE_RGB, NO_AUDIO_RGB, WAVE_AXIS_RGB = (31, 78, 121), (215, 215, 215), (150, 150, 150)


def hz_to_mel(hz: float | np.ndarray) -> np.ndarray:
    """librosa's default (Slaney) mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log, linear)


@dataclass(frozen=True)
class MelAxes:
    """How a mel mode's pixels map to seconds and hertz (see preprocess/audio.py)."""

    rate: int  # sample rate of the waveform the mel was computed from
    n_mels: int  # mel bins before the resize to 256 rows, Slaney scale over 0..rate/2
    hop: int  # STFT hop in samples; librosa centres frame i at i * hop / rate

    def time_extent(self, duration: float) -> tuple[float, float]:
        """Seconds at the image's left and right edges. The clip's 1 + samples // hop frames
        are resized to 256 columns with pixel centres aligned, so the edges lie half a frame
        outside the first and last frame centres."""
        frames = 1 + int(max(duration, 0.0) * self.rate) // self.hop
        step = self.hop / self.rate
        return -step / 2, (frames - 0.5) * step

    def row_of_hz(self, hz: float | np.ndarray) -> np.ndarray:
        """Image row (row 0 = lowest bin) whose centre shows frequency `hz`."""
        mel_step = hz_to_mel(self.rate / 2) / (self.n_mels + 1)  # bin i peaks at (i+1) steps
        mel_bin = hz_to_mel(hz) / mel_step - 1
        # cv2.resize (linear) aligns pixel centres: bin b lands on row (b + 0.5) * scale - 0.5
        return (mel_bin + 0.5) * schema.MEL_SIZE / self.n_mels - 0.5


# Caches written before the index recorded its mel settings: the settings of their modes.
LEGACY_AXES: dict[str, MelAxes] = {
    "baseline": MelAxes(rate=22050, n_mels=128, hop=512),
    "padded": MelAxes(rate=22050, n_mels=128, hop=512),
}
MEL_KEYS = {"rate": "sample_rate", "n_mels": "n_mels", "hop": "hop_length"}


def mel_axes_of(index: dict) -> MelAxes | None:
    """The axes of a cache's mel images, from the settings its index records (`mel`), or
    None (axes in pixels) where they are absent, unknown or out of range."""
    recorded = index.get("mel")
    if recorded is None:
        config = index.get("config", {})
        return LEGACY_AXES.get(str(config.get("audio", {}).get("mode", "baseline")))
    if not isinstance(recorded, dict):
        return None
    values = {field: recorded.get(key) for field, key in MEL_KEYS.items()}
    if not all(type(v) is int and 0 < v <= 10**6 for v in values.values()):
        return None  # an index from elsewhere: its words are not trusted with the axes
    return MelAxes(**values)


def mel_seconds(sample: schema.Sample, index: dict) -> float | None:
    """Seconds of the video the mel image spans from its start: the clip's duration, at most
    audio.max_seconds (what the preprocessor decoded); None where its columns are no seconds
    of the video: no duration, or silence cut before the image (audio.trim_silence_db)."""
    duration, most = float(sample.duration), _audio_setting(index, "max_seconds")
    if trimmed_db(index) or duration <= 0:
        return None
    return min(duration, most) if most > 0 else duration


def trimmed_db(index: dict) -> float:
    """audio.trim_silence_db of the cache's config (0: the mel image was not trimmed)."""
    return max(_audio_setting(index, "trim_silence_db"), 0.0)


def _audio_setting(index: dict, key: str) -> float:
    """A number of the config's audio section, 0 where absent or not a finite number (an
    index from elsewhere)."""
    audio = index.get("config", {}).get("audio", {})
    value = audio.get(key) if isinstance(audio, dict) else None
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if number and math.isfinite(value) else 0.0


def label_name(label: int) -> str:
    return LABEL_NAMES.get(int(label), str(int(label)))


def segments_text(segments: np.ndarray | None, most: int | None = None) -> str:
    """The segments in words: fake 1.20–2.05 s, or fake 0.10–0.30, 0.60–0.90 s (past `most`
    of them, "+3 more"); empty where there are none."""
    if segments is None or not len(segments):
        return ""
    shown = segments if most is None else segments[:most]
    spans = ", ".join(f"{start:.2f}–{stop:.2f}" for start, stop in shown.tolist())
    more = f" +{len(segments) - len(shown)} more" if len(segments) > len(shown) else ""
    return f"fake {spans} s{more}"


def kind_text(sample: schema.Sample) -> str:
    """The data set's kind of fake, where it says more than the label ("" for LAV-DF's
    "real" on a real video, DFDC's "fake" on a fake, or a cache without kinds)."""
    kind = sample.fake_kind or ""
    return "" if kind == label_name(sample.label) else kind


def caption(sample: schema.Sample, most: int | None = None) -> str:
    """The kind of fake and the fake segments in one line ("" where the cache has neither)."""
    parts = (kind_text(sample), segments_text(sample.fake_segments, most))
    return " · ".join(part for part in parts if part)


def has_captions(samples: Sequence[schema.Sample]) -> bool:
    """Whether the samples come from a data set that records kinds or segments (not FFDV)."""
    return any(s.fake_kind is not None or s.fake_segments is not None for s in samples)


def segment_spans(segments: np.ndarray | None, seconds: float | None) -> list[tuple[float, float]]:
    """The fake segments as far as the mel image shows them: cut to [0, seconds]."""
    if segments is None or seconds is None:
        return []
    cut = np.clip(np.asarray(segments, np.float64).reshape(-1, 2), 0.0, seconds)
    return [(start, stop) for start, stop in cut.tolist() if stop > start]


def draw_mel(ax: Axes, sample: schema.Sample, axes: MelAxes | None, *, small: bool,
             seconds: float | None = None) -> object:  # fmt: skip
    """The mel image with time (s) and frequency (Hz) axes, its first `seconds` of the video
    across its columns (see mel_seconds), and the fake segments as a band above it; pixels
    when the mode is unknown."""
    size, pad = schema.MEL_SIZE, 1 if small else 4
    extent = [-0.5, size - 0.5, -0.5, size - 0.5]
    ax.set_xlabel("column", labelpad=pad)
    ax.set_ylabel("row (unknown mel mode)" if axes is None else "Hz (mel)", labelpad=pad)
    if axes is not None and seconds:  # no duration, or trimmed: no time axis
        extent[:2] = axes.time_extent(seconds)
        ax.set_xlabel("time (s)", labelpad=pad)
    if axes is not None:
        ticks = HZ_TICKS[1:] if small else HZ_TICKS
        rows = axes.row_of_hz(np.array(ticks))
        keep = (rows >= -0.5) & (rows <= size - 0.5)
        ax.set_yticks(rows[keep], [_hz_text(hz) for hz, k in zip(ticks, keep, strict=True) if k])
    image = ax.imshow(
        sample.mel,
        origin="lower",
        extent=extent,
        aspect="auto",
        cmap=COLORMAP,
        vmin=0,
        vmax=255,
        interpolation="nearest",
    )
    if axes is not None and seconds:
        draw_band(ax, segment_spans(sample.fake_segments, seconds), small=small)
        ax.set_xlim(*extent[:2])
    ax.tick_params(labelsize=7 if small else 9, length=2 if small else 4, pad=1 if small else 3)
    ax.xaxis.label.set_size(7 if small else 10)
    ax.yaxis.label.set_size(7 if small else 10)
    return image


def draw_band(ax: Axes, spans: list[tuple[float, float]], *, small: bool) -> None:
    """Each span (seconds) as a band just above the axes, over the same time axis."""
    height = ax.bbox.height  # pixels: the band's size is fixed, whatever the mel's
    bottom = 1 + BAND_GAP / height
    for start, stop in spans:
        ax.axvspan(start, stop, bottom, bottom + BAND_H[small] / height, color=BAND_COLOUR,
                   linewidth=0, clip_on=False)  # fmt: skip


def _hz_text(hz: float) -> str:
    return f"{hz / 1000:g}k" if hz >= 1000 else f"{hz:g}"


def face_tile(face: np.ndarray, found: bool, size: int) -> np.ndarray:
    """A face crop resized to `size` px; a red frame marks a frame where no face was found
    (the preprocessor's centre crop)."""
    interpolation = cv2.INTER_AREA if face.shape[0] > size else cv2.INTER_LINEAR
    tile = cv2.resize(face, (size, size), interpolation=interpolation)
    if not found:
        border = np.ones((size, size), bool)
        border[NO_FACE_BORDER:-NO_FACE_BORDER, NO_FACE_BORDER:-NO_FACE_BORDER] = False
        tile[border] = NO_FACE_RGB
    return tile


def place_face(fig: Figure, face: np.ndarray, found: bool, x: int, y: int, size: int) -> None:
    """A face tile pasted at pixel (x, y from the top left): no axes (an axes costs ~25 ms
    to build; a sheet of 16 samples with 8 frames would spend seconds on them)."""
    height = round(fig.get_size_inches()[1] * DPI)
    fig.figimage(face_tile(face, found, size), xo=x, yo=height - y - size, origin="upper")


def _add_axes(fig: Figure, x: float, y: float, w: float, h: float) -> Axes:
    """Axes at pixel position (x, y from the top-left corner) and pixel size."""
    width, height = fig.get_size_inches() * DPI
    return fig.add_axes((x / width, 1 - (y + h) / height, w / width, h / height))


def _new_figure(width: int, height: int) -> Figure:
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def sheet_layout(
    count: int, frames: int, tracks: schema.TrackLayout | None = None, captions: bool = False
) -> tuple[int, int, int, int]:
    """(columns, rows, width, height in pixels) of a contact sheet of `count` samples; with
    `tracks`, each panel also shows its first window under the mel and faces; with
    `captions`, a line for the kind of fake and the segments under each name."""
    columns = max(1, min(count, PANEL_CELLS // (frames + 2)))
    rows = max(1, math.ceil(count / columns))
    width = 2 * PAD + columns * _panel_width(frames, tracks)
    height = TITLE_H + rows * _panel_height(frames, tracks, captions) + PAD
    return columns, rows, width, height


def _head(captions: bool) -> int:
    """Pixels above a panel's mel: the name line, and the caption line where there is one."""
    return HEADER_H + CAPTION_H * captions


def _panel_width(frames: int, tracks: schema.TrackLayout | None = None) -> int:
    width = MEL_LEFT + MEL_W + PAD + frames * (MEL_H + FACE_GAP) + PAD
    if tracks is None:
        return width
    return max(width, MEL_LEFT + tracks.frames * TRACK_MIN_CELL + 2 * PAD)


def _panel_height(frames: int, tracks: schema.TrackLayout | None = None,
                  captions: bool = False) -> int:  # fmt: skip
    height = _head(captions) + MEL_H + MEL_BOTTOM
    return height if tracks is None else height + panel_track_box(0, 0, frames, tracks).height


def panel_track_box(x: int, y: int, frames: int, tracks: schema.TrackLayout,
                    captions: bool = False) -> TrackBox:  # fmt: skip
    """Where a panel at (x, y) draws its first window: under the mel, as wide as it fits."""
    cell = (_panel_width(frames, tracks) - MEL_LEFT - 2 * PAD) // tracks.frames
    return TrackBox(x + MEL_LEFT, y + _head(captions) + MEL_H + MEL_BOTTOM, cell, tracks.frames,
                    *PANEL_TRACK_HEIGHTS)  # fmt: skip


def contact_sheet(
    samples: Sequence[schema.Sample],
    index: dict,
    title: str,
    tracks: schema.TrackLayout | None = None,
) -> Figure:
    """A grid of samples: name and label (with the kind of fake and the fake segments where
    the data set records them), mel with labelled axes, then its K faces; with the cache's
    `tracks` layout, each sample's first window under them."""
    frames = samples[0].faces.shape[0] if samples else 0
    captions = has_captions(samples)
    columns, _, width, height = sheet_layout(len(samples), frames, tracks, captions)
    fig = _new_figure(width, height)
    _text(fig, PAD, 10, title, fontsize=13)
    for number, sample in enumerate(samples):
        row, column = divmod(number, columns)
        x = PAD + column * _panel_width(frames, tracks)
        y = TITLE_H + row * _panel_height(frames, tracks, captions)
        _draw_panel(fig, sample, index, (x, y), tracks, captions)
    return fig


def _draw_panel(
    fig: Figure,
    sample: schema.Sample,
    index: dict,
    at: tuple[int, int],
    tracks: schema.TrackLayout | None = None,
    captions: bool = False,
) -> None:
    (x, y), frames, top = at, sample.faces.shape[0], at[1] + _head(captions)
    width = _panel_width(frames, tracks)
    name = _shorten(str(sample.video_name), max(12, (width - PAD) // 7))
    _text(fig, x + 4, y + 4, name, fontsize=8, family="monospace")
    tags = label_name(sample.label) + ("" if sample.has_audio else " · no audio")
    colour = LABEL_COLOURS.get(int(sample.label), "dimgray")
    _text(fig, x + width - PAD, y + 4, tags, fontsize=8, ha="right", weight="bold", color=colour)
    if captions:  # 7 pt: about 5 px a character
        line = _shorten(caption(sample, SEGMENTS_SHOWN[True]), (width - PAD) // 5)
        _text(fig, x + 4, y + HEADER_H - 4, line, fontsize=7, color=colour)
    draw_mel(_add_axes(fig, x + MEL_LEFT, top, MEL_W, MEL_H), sample, mel_axes_of(index),
             small=True, seconds=mel_seconds(sample, index))  # fmt: skip
    for k in range(frames):
        face_x = x + MEL_LEFT + MEL_W + PAD + k * (MEL_H + FACE_GAP)
        place_face(fig, sample.faces[k], bool(sample.face_found[k]), face_x, top, MEL_H)
    if tracks is not None and sample.tracks is not None:
        box = panel_track_box(x, y, frames, tracks, captions)
        draw_window(fig, sample.tracks, tracks, 0, box, small=True)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# One-sample figure: the mel at 2 px per mel pixel, a colour bar, metadata, all K faces.
DETAIL_MEL, DETAIL_LEFT, DETAIL_META_W = 512, 70, 480
DETAIL_W = DETAIL_LEFT + DETAIL_MEL + 90 + DETAIL_META_W


def sample_figure(
    sample: schema.Sample,
    index: dict,
    meta: dict[str, str],
    tracks: schema.TrackLayout | None = None,
    frame_scores: np.ndarray | None = None,
) -> Figure:
    """One sample in detail: full-size mel with a colour map, all faces, its metadata; with
    the cache's `tracks` layout, every window of the sample under them, its fake segments
    (where the cache knows them) shaded, and with `frame_scores` [W * T] (a run's P(fake)
    of each track frame) a row of them under each window's strip."""
    frames, tile = sample.faces.shape[0], _detail_tile(sample)
    boxes = detail_track_boxes(sample, tracks, scored=frame_scores is not None)
    height = boxes[-1].y + boxes[-1].height + PAD if boxes else _detail_faces_bottom(sample)
    fig = _new_figure(DETAIL_W, height)
    _text(fig, PAD, 10, str(sample.video_name), fontsize=13, family="monospace")
    mel_ax = _add_axes(fig, DETAIL_LEFT, TITLE_H, DETAIL_MEL, DETAIL_MEL)
    image = draw_mel(mel_ax, sample, mel_axes_of(index), small=False,
                     seconds=mel_seconds(sample, index))  # fmt: skip
    bar_ax = _add_axes(fig, DETAIL_LEFT + DETAIL_MEL + 12, TITLE_H, 14, DETAIL_MEL)
    fig.colorbar(image, cax=bar_ax).set_label("grey level (dB re clip max, min-max scaled)")
    lines = "\n".join(f"{key:<11} {value}" for key, value in meta.items())
    _text(fig, DETAIL_W - DETAIL_META_W + 20, TITLE_H + 4, lines, family="monospace",
          linespacing=1.5)  # fmt: skip
    face_y = TITLE_H + DETAIL_MEL + 60 + 22
    for k in range(frames):
        found, x = bool(sample.face_found[k]), PAD + k * (tile + 8)
        place_face(fig, sample.faces[k], found, x, face_y, tile)
        caption = f"frame {k}" + ("" if found else ": no face")
        _text(fig, x + tile / 2, face_y - 4, caption, ha="center", va="bottom",
              color="black" if found else NO_FACE_TEXT)  # fmt: skip
    segments = sample.fake_segments if sample.fake_segments is not None else np.zeros((0, 2))
    for window, box in enumerate(boxes):
        scores = None if frame_scores is None else \
            frame_scores[window * tracks.frames : (window + 1) * tracks.frames]  # fmt: skip
        draw_window(fig, sample.tracks, tracks, window, box, small=False, segments=segments,
                    scores=scores)  # fmt: skip
    return fig


def _detail_tile(sample: schema.Sample) -> int:
    frames = sample.faces.shape[0]
    return min(max(sample.faces.shape[1], 128), (DETAIL_W - 2 * PAD) // max(frames, 1) - 8)


def _detail_faces_bottom(sample: schema.Sample) -> int:
    """The height of the one-sample figure without tracks: mel, then a row of faces."""
    frames = sample.faces.shape[0]
    return TITLE_H + DETAIL_MEL + 60 + (_detail_tile(sample) + 40 if frames else 0)


def detail_track_boxes(sample: schema.Sample, tracks: schema.TrackLayout | None,
                       scored: bool = False) -> list[TrackBox]:  # fmt: skip
    """Where `sample_figure` draws each of the sample's windows (none without tracks): one
    under the other, below the faces, up to DETAIL_MAX_CELL px per frame; `scored`, with a
    row of the frames' P(fake) under each."""
    if tracks is None or sample.tracks is None:
        return []
    cell = min(DETAIL_MAX_CELL, (DETAIL_W - DETAIL_LEFT - 2 * PAD) // tracks.frames)
    boxes, y = [], _detail_faces_bottom(sample)
    for _ in range(sample.tracks.lips.shape[0]):
        boxes.append(TrackBox(DETAIL_LEFT, y, cell, tracks.frames, *DETAIL_TRACK_HEIGHTS,
                              scores_h=DETAIL_SCORES_H if scored else 0))  # fmt: skip
        y += boxes[-1].height + PAD
    return boxes


# Track windows: spectrogram and waveform of a window's audio above its mouth frames.


@dataclass(frozen=True)
class TrackBox:
    """Where one window is drawn, in pixels from the figure's top left: a note line, then
    spectrogram, waveform and mouth strip over the same columns, `cell` px per frame."""

    x: int
    y: int
    cell: int
    frames: int
    spec_h: int
    wave_h: int
    scores_h: int = 0  # a row of each frame's P(fake) under the strip (0: none)

    @property
    def width(self) -> int:
        return self.cell * self.frames

    @property
    def spec(self) -> tuple[int, int, int, int]:
        return self.x, self.y + TRACK_NOTE_H, self.width, self.spec_h

    @property
    def wave(self) -> tuple[int, int, int, int]:
        return self.x, self.y + TRACK_NOTE_H + self.spec_h + TRACK_GAP, self.width, self.wave_h

    @property
    def strip(self) -> tuple[int, int, int, int]:
        x, y, width, height = self.wave
        return x, y + height + TRACK_GAP, width, self.cell

    @property
    def scores(self) -> tuple[int, int, int, int]:
        x, y, width, height = self.strip
        return x, y + height + TRACK_GAP, width, self.scores_h

    @property
    def height(self) -> int:
        scores = self.scores_h + TRACK_GAP if self.scores_h else 0
        return (TRACK_NOTE_H + self.spec_h + self.wave_h + 2 * TRACK_GAP + self.cell + scores
                + TRACK_AXIS_H)  # fmt: skip


def spectrogram(audio: np.ndarray, rate: int, columns: int) -> np.ndarray:
    """uint8 [rate-dependent bins, columns], row 0 = 0 Hz, linear to rate / 2: power in dB
    re the window's peak over the top SPEC_TOP_DB, scaled to 0..255. One Hann-windowed FFT
    is centred on each column's instant ((j + 0.5) / columns of the window, zeros beyond
    its ends), so the image spans exactly the window's time, column for column."""
    n_fft = 1 << max(4, round(math.log2(SPEC_FFT_SECONDS * rate)))
    signal = np.pad(audio.astype(np.float32), n_fft // 2)
    centres = ((np.arange(columns) + 0.5) * len(audio) / columns).astype(np.int64)
    frames = signal[centres[:, None] + np.arange(n_fft)]  # padded: the frame around c starts at c
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2
    ref = max(float(power.max()), 1e-12)
    db = 10 * np.log10(np.maximum(power, ref * 10 ** (-SPEC_TOP_DB / 10)) / ref)
    return ((db / SPEC_TOP_DB + 1) * 255).round().astype(np.uint8).T


def envelope(audio: np.ndarray, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest sample of each of `columns` equal spans of the window."""
    values = audio.astype(np.int32)
    edges = (np.arange(columns) * len(values)) // columns
    return np.minimum.reduceat(values, edges), np.maximum.reduceat(values, edges)


def wave_image(audio: np.ndarray, real: float, columns: int, height: int) -> np.ndarray:
    """RGB uint8 [height, columns]: each column spans its share of the stored samples from
    their lowest to their highest (scaled to the window's peak); grey where no audio was
    read (the tail after the share `real`)."""
    low, high = envelope(audio, columns)
    peak, middle = max(int(np.abs(audio.astype(np.int32)).max()), 1), (height - 1) / 2
    top = np.round(middle - high / peak * middle)
    bottom = np.round(middle - low / peak * middle)
    image = np.full((height, columns, 3), 255, np.uint8)
    image[:, round(real * columns) :] = NO_AUDIO_RGB
    image[height // 2] = WAVE_AXIS_RGB
    rows = np.arange(height)[:, None]
    image[(rows >= top) & (rows <= bottom)] = WAVE_RGB
    return image


def strip_image(tracks: schema.Tracks, window: int, cell: int) -> np.ndarray:
    """RGB uint8 [cell, T * cell]: frame k of the window in columns [k * cell, (k + 1) * cell),
    a red frame where the mouth was not located (as faces without a face), faded where the
    frame repeats the clip's last one (frames_real < T)."""
    lips, found = tracks.lips[window], tracks.lips_found[window]
    real = int(tracks.frames_real[window])
    tiles = []
    for k in range(lips.shape[0]):
        tile = face_tile(np.repeat(lips[k][..., None], 3, axis=2), bool(found[k]), cell)
        tiles.append(tile // 2 + 128 if k >= real else tile)
    return np.concatenate(tiles, axis=1)


def window_span(tracks: schema.Tracks, layout: schema.TrackLayout, window: int) -> tuple:
    """(first, last) second of a window from the video's start: T frames of 1 / fps."""
    start = float(tracks.start[window])
    return start, start + tracks.lips.shape[1] / layout.fps


# What a window's note line says, in full (one-sample figure) and short (sheet panels).
NOTE_WORDS = {
    False: ("window {w} of {n}: {start:.2f}-{stop:.2f} s, {frames} frames at {fps:g} fps",
            "mouth not located on {lost} (red)", "{repeated} frames repeated (faded)",
            "audio {audio:.0f}% real (grey: none)"),
    True: ("window {w}/{n}: {start:.2f}-{stop:.2f} s", "no mouth: {lost}",
           "{repeated} repeated", "audio {audio:.0f}%"),
}  # fmt: skip


def window_notes(
    tracks: schema.Tracks, layout: schema.TrackLayout, window: int, short: bool = False
) -> list[str]:
    """What a window's drawing says in words: where it lies, and what could not be aligned
    (frames without a located mouth, repeated frames, missing audio)."""
    start, stop = window_span(tracks, layout, window)
    frames, real = tracks.lips.shape[1], int(tracks.frames_real[window])
    values = dict(w=window + 1, n=layout.windows, start=start, stop=stop, frames=frames,
                  fps=layout.fps, lost=int((~tracks.lips_found[window]).sum()),
                  repeated=frames - real, audio=100 * float(tracks.audio_real[window]))  # fmt: skip
    where, lost, repeated, audio = NOTE_WORDS[short]
    shown = [(lost, values["lost"] > 0), (repeated, real < frames), (audio, values["audio"] < 100)]
    return [where.format(**values)] + [text.format(**values) for text, on in shown if on]


def draw_window(
    fig: Figure,
    tracks: schema.Tracks,
    layout: schema.TrackLayout,
    window: int,
    box: TrackBox,
    *,
    small: bool,
    segments: np.ndarray | None = None,
    scores: np.ndarray | None = None,
) -> None:
    """One window at `box`: spectrogram, waveform and mouth strip on one time axis, the
    true fake `segments` [k, 2] (seconds) shaded on each, and a row of the frames' P(fake)
    `scores` [T] under the strip where the box has room for it."""
    span, notes = window_span(tracks, layout, window), window_notes(tracks, layout, window, small)
    colour = "black" if len(notes) == 1 else NO_FACE_TEXT
    _text(fig, box.x, box.y + 2, " · ".join(notes), fontsize=7 if small else 9, color=colour)
    audio, size = tracks.audio[window], 6 if small else 8
    draw = _spec_wave_pixels if small else _spec_wave_axes
    drawn = draw(fig, audio, float(tracks.audio_real[window]), layout, span, box)
    strip_ax = _add_axes(fig, *box.strip)
    strip_ax.imshow(strip_image(tracks, window, box.cell), extent=(*span, 0, 1), aspect="auto",
                    interpolation="nearest")  # fmt: skip
    strip_ax.set_yticks([])
    strip_ax.set_xticks(span[0] + np.arange(tracks.lips.shape[1] + 1) / layout.fps, minor=True)
    strip_ax.set_xlim(*span)
    strip_ax.tick_params(labelsize=size, length=2 if small else 4, pad=1)
    bottom = strip_ax
    if scores is not None and box.scores_h:
        strip_ax.tick_params(labelbottom=False)
        bottom = _add_axes(fig, *box.scores)
        # Frames past the clip's end are not scored (repeats, or none): left blank.
        draw_frame_scores(bottom, scores[: int(tracks.frames_real[window])], span[0], layout.fps)
        bottom.set_xlim(*span)
        bottom.tick_params(labelsize=size, length=4, pad=1)
    bottom.set_xlabel("time (s) from the video's start", fontsize=size + 1, labelpad=1)
    if segments is not None:
        for ax in {*drawn, strip_ax, bottom}:
            shade_segments(ax, segments, span)


def draw_frame_scores(ax, scores: np.ndarray, start: float, fps: float) -> None:
    """Each frame's P(fake) as a step over its frame period (the window's first
    len(scores) frames), 0.5 dashed."""
    edges = start + np.arange(len(scores) + 1) / fps
    ax.stairs(scores, edges, color="black", lw=1.2)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylim(0, 1)
    ax.set_yticks([0, 0.5, 1])
    ax.set_ylabel("P(fake)", fontsize=8, labelpad=1)


def shade_segments(ax, segments: np.ndarray, span: tuple[float, float]) -> None:
    """The true fake segments that reach into the window's `span`, shaded."""
    for start, end in segments:
        if end > span[0] and start < span[1]:
            ax.axvspan(max(start, span[0]), min(end, span[1]), **FAKE_SHADE)


def _spec_wave_axes(fig: Figure, audio: np.ndarray, real: float, layout: schema.TrackLayout,
                    span: tuple[float, float], box: TrackBox) -> list:  # fmt: skip
    """The one-sample figure's spectrogram and waveform: axes with hertz and sample values,
    their time axis the strip's (the same limits over the same pixel columns); the axes."""
    spec_ax = _add_axes(fig, *box.spec)
    spec_ax.imshow(spectrogram(audio, layout.audio_rate, box.width), origin="lower",
                   extent=(*span, 0, layout.audio_rate / 2), aspect="auto", cmap=COLORMAP,
                   vmin=0, vmax=255, interpolation="nearest")  # fmt: skip
    top = layout.audio_rate / 2  # no tick at 0 Hz: it would meet the waveform's top label
    spec_ax.set_yticks([top / 2, top], [_hz_text(top / 2), _hz_text(top)])
    spec_ax.set_ylabel("Hz", labelpad=1)
    wave_ax = _add_axes(fig, *box.wave)
    _draw_wave(wave_ax, audio, real, layout.audio_rate, span[0])
    for ax in (spec_ax, wave_ax):
        ax.set_xlim(*span)
        ax.tick_params(labelsize=8, length=4, pad=1, labelbottom=False)
    return [spec_ax, wave_ax]


def _spec_wave_pixels(fig: Figure, audio: np.ndarray, real: float, layout: schema.TrackLayout,
                      span: tuple[float, float], box: TrackBox) -> list:  # fmt: skip
    """A sheet panel's spectrogram and waveform as pixels over the strip's columns (two more
    axes per panel would triple a sheet's drawing time), their scales written at the left;
    no axes."""
    from matplotlib import colormaps

    spec = spectrogram(audio, layout.audio_rate, box.width)
    spec = cv2.resize(spec, (box.width, box.spec_h), interpolation=cv2.INTER_AREA)[::-1]
    _place(fig, (colormaps[COLORMAP](spec)[..., :3] * 255).round().astype(np.uint8), *box.spec[:2])
    _place(fig, wave_image(audio, real, box.width, box.wave_h), *box.wave[:2])
    peak = int(np.abs(audio.astype(np.int32)).max())
    top_hz = _hz_text(layout.audio_rate / 2)
    labels = ((box.spec, top_hz, "0 Hz"), (box.wave, str(peak), str(-peak)))
    for (x, y, _, height), top, bottom in labels:
        _text(fig, x - 3, y, top, fontsize=6, ha="right")
        _text(fig, x - 3, y + height, bottom, fontsize=6, ha="right", va="bottom")
    return []


def _place(fig: Figure, image: np.ndarray, x: int, y: int) -> None:
    """An RGB image pasted at pixel (x, y from the top left), no axes (see place_face)."""
    height = round(fig.get_size_inches()[1] * DPI)
    fig.figimage(image, xo=x, yo=height - y - image.shape[0], origin="upper")


def _draw_wave(ax: Axes, audio: np.ndarray, real: float, rate: int, start: float) -> None:
    """The stored int16 samples, sample n at start + n / rate; grey where no audio was read
    (the tail after the share `real`: audio that ends early is zero-padded)."""
    peak = max(int(np.abs(audio.astype(np.int32)).max()), 1)
    ax.plot(start + np.arange(len(audio)) / rate, audio, color=WAVE_COLOUR, linewidth=0.6)
    if real < 1:
        ax.axvspan(start + real * len(audio) / rate, start + len(audio) / rate,
                   color=NO_AUDIO_COLOUR, zorder=0)  # fmt: skip
    ax.set_ylim(-1.05 * peak, 1.05 * peak)
    ax.set_yticks([-peak, 0, peak], [str(-peak), "0", str(peak)])


def _text(fig: Figure, x: float, y: float, text: str, **style) -> None:
    """Text at pixel (x, y from the top left), never parsed as mathtext: names hold `$`."""
    width, height = fig.get_size_inches() * DPI
    style = {"fontsize": 9, "va": "top", **style}
    fig.text(x / width, 1 - y / height, text, parse_math=False, **style)


def save(fig: Figure, path: Path, palette: bool = False) -> Path:
    """Write a figure as PNG at its own pixel size (no tight bounding box: sizes stay known);
    `palette` quantises to 256 colours, about 3x smaller, for pictures kept in a repository."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # a name in a script the fonts lack draws boxes, once
        warnings.filterwarnings("ignore", r"Glyph \d+ .* missing from font", UserWarning)
        fig.savefig(buffer, dpi=DPI, format="png")
    if palette:
        from PIL import Image  # matplotlib's own dependency

        image = Image.open(buffer).convert("RGB").quantize(256)
        buffer = io.BytesIO()
        image.save(buffer, format="png", optimize=True)
    path.write_bytes(buffer.getvalue())
    return path
