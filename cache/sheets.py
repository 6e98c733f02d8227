"""Contact sheets and one-sample figures of cached mel images and faces.

Drawn on `matplotlib.figure.Figure` with the Agg canvas, never pyplot's global
state: nothing needs a display, no global registry keeps figures alive, and a
notebook can show the returned figure. The layout is in pixels, so a sheet's
size is known before it is drawn.

The mel axes are labelled honestly: a cached mel image is the preprocessor's
mel spectrogram (Slaney mel bins over 0..rate/2, one column per STFT frame of
the whole clip) resized to 256 x 256, so rows map to hertz through the mel
scale and columns to seconds through the clip's duration.
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

# Sheet geometry in pixels: a panel per sample (header line, mel with its axes, K faces).
PAD, TITLE_H, HEADER_H = 8, 36, 22
MEL_W, MEL_H, MEL_LEFT, MEL_BOTTOM = 150, 110, 46, 34
FACE_GAP = 4
PANEL_CELLS = 12  # columns of panels: about this many mel/face cells side by side


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


def label_name(label: int) -> str:
    return LABEL_NAMES.get(int(label), str(int(label)))


def draw_mel(ax: Axes, sample: schema.Sample, axes: MelAxes | None, *, small: bool) -> object:
    """The mel image with time (s) and frequency (Hz) axes; pixels when the mode is unknown."""
    size, pad = schema.MEL_SIZE, 1 if small else 4
    extent = [-0.5, size - 0.5, -0.5, size - 0.5]
    ax.set_xlabel("column", labelpad=pad)
    ax.set_ylabel("row (unknown mel mode)" if axes is None else "Hz (mel)", labelpad=pad)
    if axes is not None and float(sample.duration) > 0:  # no duration: no time axis
        extent[:2] = axes.time_extent(float(sample.duration))
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
    ax.tick_params(labelsize=7 if small else 9, length=2 if small else 4, pad=1 if small else 3)
    ax.xaxis.label.set_size(7 if small else 10)
    ax.yaxis.label.set_size(7 if small else 10)
    return image


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


def sheet_layout(count: int, frames: int) -> tuple[int, int, int, int]:
    """(columns, rows, width, height in pixels) of a contact sheet of `count` samples."""
    columns = max(1, min(count, PANEL_CELLS // (frames + 2)))
    rows = max(1, math.ceil(count / columns))
    width = 2 * PAD + columns * _panel_width(frames)
    height = TITLE_H + rows * (HEADER_H + MEL_H + MEL_BOTTOM) + PAD
    return columns, rows, width, height


def _panel_width(frames: int) -> int:
    return MEL_LEFT + MEL_W + PAD + frames * (MEL_H + FACE_GAP) + PAD


def contact_sheet(samples: Sequence[schema.Sample], index: dict, title: str) -> Figure:
    """A grid of samples: name and label, mel with labelled axes, then its K faces."""
    frames = samples[0].faces.shape[0] if samples else 0
    columns, _, width, height = sheet_layout(len(samples), frames)
    fig = _new_figure(width, height)
    _text(fig, PAD, 10, title, fontsize=13)
    axes = mel_axes_of(index)
    for number, sample in enumerate(samples):
        row, column = divmod(number, columns)
        x = PAD + column * _panel_width(frames)
        y = TITLE_H + row * (HEADER_H + MEL_H + MEL_BOTTOM)
        _draw_panel(fig, sample, axes, x, y)
    return fig


def _draw_panel(fig: Figure, sample: schema.Sample, axes: MelAxes | None, x: int, y: int) -> None:
    frames = sample.faces.shape[0]
    right = x + _panel_width(frames) - PAD
    name = _shorten(str(sample.video_name), max(12, (_panel_width(frames) - PAD) // 7))
    _text(fig, x + 4, y + 4, name, fontsize=8, family="monospace")
    tags = label_name(sample.label) + ("" if sample.has_audio else " · no audio")
    colour = LABEL_COLOURS.get(int(sample.label), "dimgray")
    _text(fig, right, y + 4, tags, fontsize=8, ha="right", weight="bold", color=colour)
    draw_mel(_add_axes(fig, x + MEL_LEFT, y + HEADER_H, MEL_W, MEL_H), sample, axes, small=True)
    for k in range(frames):
        face_x = x + MEL_LEFT + MEL_W + PAD + k * (MEL_H + FACE_GAP)
        place_face(fig, sample.faces[k], bool(sample.face_found[k]), face_x, y + HEADER_H, MEL_H)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# One-sample figure: the mel at 2 px per mel pixel, a colour bar, metadata, all K faces.
DETAIL_MEL, DETAIL_LEFT, DETAIL_META_W = 512, 70, 480


def sample_figure(sample: schema.Sample, index: dict, meta: dict[str, str]) -> Figure:
    """One sample in detail: full-size mel with a colour map, all faces, its metadata."""
    frames = sample.faces.shape[0]
    width = DETAIL_LEFT + DETAIL_MEL + 90 + DETAIL_META_W
    tile = min(max(sample.faces.shape[1], 128), (width - 2 * PAD) // max(frames, 1) - 8)
    fig = _new_figure(width, TITLE_H + DETAIL_MEL + 60 + (tile + 40 if frames else 0))
    _text(fig, PAD, 10, str(sample.video_name), fontsize=13, family="monospace")
    mel_ax = _add_axes(fig, DETAIL_LEFT, TITLE_H, DETAIL_MEL, DETAIL_MEL)
    image = draw_mel(mel_ax, sample, mel_axes_of(index), small=False)
    bar_ax = _add_axes(fig, DETAIL_LEFT + DETAIL_MEL + 12, TITLE_H, 14, DETAIL_MEL)
    fig.colorbar(image, cax=bar_ax).set_label("grey level (dB re clip max, min-max scaled)")
    lines = "\n".join(f"{key:<11} {value}" for key, value in meta.items())
    _text(fig, width - DETAIL_META_W + 20, TITLE_H + 4, lines, family="monospace", linespacing=1.5)
    face_y = TITLE_H + DETAIL_MEL + 60 + 22
    for k in range(frames):
        found, x = bool(sample.face_found[k]), PAD + k * (tile + 8)
        place_face(fig, sample.faces[k], found, x, face_y, tile)
        caption = f"frame {k}" + ("" if found else ": no face")
        _text(fig, x + tile / 2, face_y - 4, caption, ha="center", va="bottom",
              color="black" if found else NO_FACE_TEXT)  # fmt: skip
    return fig


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
