"""Rendering a clip (a moving camera, a jaw that follows the voice, the face edits),
encoding it with ffmpeg, the FFDV lists around the clips and the manifest.

`talking_face_clip` films one real talking face from explicit parameters, outside any
sample (the tests make their real-face media with it); `film`, the part that it shares
with every clip of a sample, is the generator's own path from frames to an mp4.
"""

from __future__ import annotations

import json
import tempfile
import wave
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from avcache.common.atomic import atomic_path, write_json_atomic
from avcache.sample.manipulations import (
    DESYNC,
    FACE_MANIPULATIONS,
    MAX_JAW_DROP,
    MOUTH_MANIPULATIONS,
    PARTIAL_MOUTH,
    SOUND_EDITS,
    FaceEdit,
    desync_lag,
    loudness,
    normalise,
    open_mouth,
    real_speech,
    speech_from,
)
from avcache.sample.plan import (
    DEFAULT_LAYOUT,
    FACE_FRACTION,
    FORMAT_VERSION,
    HEADER,
    LABEL_FILES,
    LIP_SYNC_VERSION,
    MANIFEST,
    PARTIAL_VERSION,
    PREDICTION_FILE,
    SPLIT_DIRS,
    X264_PRESET,
    ClipSpec,
)
from avcache.sample.sources import (
    CARPHONE_FPS,
    FPS,
    WORK_RATE,
    Portrait,
    SampleError,
    Sources,
    load_portrait,
    load_portraits,
    run_tool,
)

Span = tuple[float, float]  # seconds from the start of a clip

# --------------------------------------------------------------------------- video


def source_indices(rng: np.random.Generator, portrait: Portrait, frames: int) -> np.ndarray:
    """Which source frame each output frame shows: a random stretch, sometimes played backwards."""
    if len(portrait.frames) == 1:
        return np.zeros(frames, int)
    times = np.arange(frames) / FPS
    span = len(portrait.frames) / CARPHONE_FPS - times[-1] - 1 / CARPHONE_FPS
    index = np.round((rng.uniform(0, max(span, 0)) + times) * CARPHONE_FPS).astype(int)
    index = np.clip(index, 0, len(portrait.frames) - 1)
    return index[::-1].copy() if rng.random() < 0.5 else index


def camera(
    rng: np.random.Generator,
    portrait: Portrait,
    index: np.ndarray,
    spec: ClipSpec,
    face_fraction: tuple[float, float] = FACE_FRACTION,
):
    """Per-frame 2x3 maps from output to source pixels: a slowly zooming, drifting, tilted view
    in which the face box is a share of the frame width drawn from `face_fraction`."""
    boxes = portrait.boxes[index]
    face_w = float(np.mean(boxes[:, 2] - boxes[:, 0]))
    src_h, src_w = portrait.frames.shape[1:3]
    scale = face_w / (rng.uniform(*face_fraction) * spec.width)  # source px per output px
    scale = min(scale, 0.98 * src_w / spec.width, 0.98 * src_h / spec.height)
    centre = np.array(
        [(boxes[:, 0] + boxes[:, 2]).mean() / 2, (boxes[:, 1] + boxes[:, 3]).mean() / 2]
    )
    centre += rng.uniform(-0.08, 0.08, size=2) * scale * np.array([spec.width, spec.height])
    half = scale * np.array([spec.width, spec.height]) / 2
    centre = np.clip(centre, half, np.array([src_w, src_h]) - half)
    steps = np.arange(spec.frames)
    zoom = 1 + rng.uniform(0, 0.06) * np.sin(
        2 * np.pi * steps / rng.uniform(40, 120) + rng.uniform(0, 6.3)
    )
    drift = np.outer(steps / spec.frames - 0.5, rng.uniform(-0.04, 0.04, size=2) * half * 2)
    angle = np.radians(
        rng.uniform(-3, 3) + rng.uniform(0, 1.5) * np.sin(steps / rng.uniform(8, 20))
    )
    flip = -1.0 if rng.random() < 0.5 else 1.0
    maps = []
    for k in range(spec.frames):
        cos, sin = np.cos(angle[k]) * scale / zoom[k], np.sin(angle[k]) * scale / zoom[k]
        linear = np.array([[cos * flip, -sin], [sin * flip, cos]])
        offset = centre + drift[k] - linear @ (spec.width / 2, spec.height / 2)
        maps.append(np.hstack([linear, offset[:, None]]))
    return maps


def colour_jitter(rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """A fixed per-clip hue, saturation, contrast and brightness change, as one HSV lookup table.

    cv2.LUT releases the GIL; numpy fancy indexing here held it and serialised the pool.
    """
    levels = np.arange(256, dtype=np.float32)
    hue = (levels + rng.integers(-8, 9)) % 180  # OpenCV's 8-bit hue runs 0..179
    sat = levels * rng.uniform(0.75, 1.25)
    val = (levels - 128) * rng.uniform(0.85, 1.15) + 128 + rng.uniform(-20, 20)
    table = np.clip(np.stack([hue, sat, val], axis=1), 0, 255).astype(np.uint8)[:, None, :]

    def apply(frame: np.ndarray) -> np.ndarray:
        hsv = cv2.LUT(cv2.cvtColor(frame, cv2.COLOR_RGB2HSV), table)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

    return apply


def render_video(
    spec: ClipSpec,
    portrait: Portrait,
    jaw: np.ndarray,
    edits: list[FaceEdit],
    rng: np.random.Generator,
    face_fraction: tuple[float, float] = FACE_FRACTION,
) -> np.ndarray:
    """The clip's frames: recolour, talk (stills), manipulate the face, film with the camera."""
    index = source_indices(rng, portrait, spec.frames)
    maps = camera(rng, portrait, index, spec, face_fraction)
    recolour = colour_jitter(rng)
    # Recolouring the few source frames a clip uses is cheaper than recolouring every output.
    sources = {i: recolour(portrait.frames[i]) for i in np.unique(index).tolist()}
    out = np.empty((spec.frames, spec.height, spec.width, 3), np.uint8)
    for k in range(spec.frames):
        image, box = sources[int(index[k])], portrait.boxes[index[k]]
        if portrait.mouth is not None or edits:
            image = image.copy()
        if portrait.mouth is not None:
            open_mouth(image, portrait.mouth, jaw[k] * MAX_JAW_DROP * portrait.mouth[2])
        for edit in edits:
            edit(image, box)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        cv2.warpAffine(
            image,
            maps[k],
            (spec.width, spec.height),
            dst=out[k],
            flags=flags,
            borderMode=cv2.BORDER_REPLICATE,
        )
    return out


# --------------------------------------------------------------------------- encoding


def write_wav(path: Path, audio: np.ndarray) -> None:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(WORK_RATE)
        handle.writeframes(pcm.tobytes())


def encode(spec: ClipSpec, frames: np.ndarray, wav: Path | None, target: Path) -> None:
    """H.264 yuv420p + AAC in mp4, single-threaded and bit-exact so the bytes repeat."""
    with atomic_path(target) as partial:  # a clip is either complete or absent
        run_tool(ffmpeg_command(spec, wav, partial), "encoding", stdin=frames.tobytes())


def ffmpeg_command(spec: ClipSpec, wav: Path | None, out: Path) -> list[str]:
    """The encoder's arguments; without a wav the clip has no audio track at all."""
    audio_in, audio_map = ([], []) if wav is None else (["-i", str(wav)], ["-map", "1:a:0"])
    audio = ["-an"] if wav is None else [
        "-c:a", "aac", "-aac_coder", "fast", "-b:a", "64k",
        "-ar", str(spec.audio_rate), "-ac", str(spec.channels),
    ]  # fmt: skip
    return [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{spec.width}x{spec.height}",
        "-r", str(FPS), "-i", "pipe:0", *audio_in,
        "-map", "0:v:0", *audio_map, "-map_metadata", "-1",
        "-c:v", "libx264", "-preset", X264_PRESET, "-crf", str(spec.crf),
        "-pix_fmt", "yuv420p", "-threads", "1",
        *audio,
        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
        "-f", "mp4", str(out),
    ]  # fmt: skip


def film(
    spec: ClipSpec,
    portrait: Portrait,
    spoken: np.ndarray,
    audio: np.ndarray | None,
    edits: list[FaceEdit],
    rng: np.random.Generator,
    target: Path,
    scratch: Path,
    face_fraction: tuple[float, float] = FACE_FRACTION,
) -> None:
    """Film `portrait` saying `spoken` (a still face's jaw follows its loudness) and encode it
    to `target` with `audio` (WORK_RATE mono) as its sound track; None: no track."""
    jaw = loudness(spoken, spec.frames)
    frames = render_video(spec, portrait, jaw, edits, rng, face_fraction)
    # a LAV-DF name holds its folder (train/000001.mp4); the scratch folder has none
    wav = None if audio is None else scratch / f"{spec.name.replace('/', '_')}.wav"
    if wav is not None:
        write_wav(wav, audio)
    encode(spec, frames, wav, target)
    if wav is not None:
        wav.unlink()


def render_clip(
    spec: ClipSpec,
    portraits: dict[str, Portrait],
    speech: Sequence[Sequence[Path]],
    target: Path,
    scratch: Path,
) -> dict[str, list[Span]]:
    """Render one clip; any failure is re-raised as a SampleError that names the clip."""
    try:
        return build_clip(spec, portraits, speech, target, scratch)
    except Exception as error:  # re-raised, not swallowed: the message gains the clip's name
        raise SampleError(f"clip {spec.split}/{spec.name}: {error}") from error


def build_clip(
    spec: ClipSpec,
    portraits: dict[str, Portrait],
    speech: Sequence[Sequence[Path]],
    target: Path,
    scratch: Path,
) -> dict[str, list[Span]]:
    """Draw, manipulate and encode one clip to `target`; all randomness comes from spec.seed.
    Returns the spans of the clip that each of its manipulations changed."""
    rng = np.random.default_rng(spec.seed)
    said, audio, measured = edited_tracks(spec, speech, rng)
    edits = [
        FACE_MANIPULATIONS[k](rng, portraits, spec.source)
        for k in spec.kinds
        if k in FACE_MANIPULATIONS
    ]
    film(spec, portraits[spec.source], said, audio, edits, rng, target, scratch)
    # A face edit is drawn into every frame, a lip-sync drives the jaw from the first frame to
    # the last and a desync moves the whole heard track: the clip, whole. The voice edits
    # and the partial mouth edits are measured.
    whole = [(0.0, spec.frames / FPS)]
    return {kind: measured.get(kind, whole) for kind in spec.kinds}


def clip_tracks(
    spec: ClipSpec, speech: Sequence[Sequence[Path]], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """What the face says (drives a still face's jaw) and what is heard, at WORK_RATE: the
    same real speech, until a manipulation edits what is heard or re-drives the mouth.

    A desync plays another stretch of the same continuous speech than the face says, the
    lag apart: moving one track against the other instead would leave a gap of the lag's
    length at one end, a silence that gives the fake away without any lip reading."""
    said, audio, _ = edited_tracks(spec, speech, rng)
    return said, audio


def edited_tracks(
    spec: ClipSpec, speech: Sequence[Sequence[Path]], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict[str, list[Span]]]:
    """clip_tracks, and the spans that each voice edit changed in the heard track and each
    partial mouth edit in the track that drives the mouth, measured sample by sample (a
    tts_splice replaces about a second, a word_tts a few words, not the clip)."""
    samples = spec.frames * WORK_RATE // FPS
    lag = desync_lag(rng) if DESYNC in spec.kinds else 0
    recording = real_speech(rng, speech, samples + abs(lag))
    said_from, heard_from = max(lag, 0), max(-lag, 0)
    spoken = recording[said_from : said_from + samples]
    said, audio = spoken, recording[heard_from : heard_from + samples]
    spans = {}
    for kind in spec.kinds:
        if kind in SOUND_EDITS:
            edited = SOUND_EDITS[kind](audio, rng)
            spans[kind] = changed_spans(audio, edited, kind)
            audio = edited
        if kind in MOUTH_MANIPULATIONS:
            said = MOUTH_MANIPULATIONS[kind](spoken, audio, rng, speech)
            if kind in PARTIAL_MOUTH:
                spans[kind] = changed_spans(spoken, said, kind)
    return said, audio, spans


# Unchanged stretches shorter than this inside an edit are part of it (a sample of the new
# voice may equal the old by chance); replaced words stand further apart (WORD_GAP_SECONDS).
SPAN_JOIN_SECONDS = 0.1


def changed_spans(before: np.ndarray, after: np.ndarray, kind: str) -> list[Span]:
    """Seconds from the start to the end of each stretch of samples that differ; a
    manipulation that changed nothing would label a real clip fake, so it stops the sample."""
    changed = np.flatnonzero(before != after)
    if not len(changed):
        raise SampleError(f"{kind} left the sound track as it was")
    breaks = np.flatnonzero(np.diff(changed) > SPAN_JOIN_SECONDS * WORK_RATE)
    starts = changed[np.r_[0, breaks + 1]]
    ends = changed[np.r_[breaks, len(changed) - 1]] + 1
    return [(int(a) / WORK_RATE, int(b) / WORK_RATE) for a, b in zip(starts, ends, strict=True)]


# --------------------------------------------------------------------------- one clip

# The face's share of the width in a single clip: 53 px at the 96 px that tests use, so
# that every detector finds it at its 40 px minimum face size.
TALKING_FACE_FRACTION = 0.55


def talking_face_clip(
    target: Path,
    *,
    seconds: float,
    width: int,
    height: int,
    speech: Path,
    speech_start: float = 0.0,
    audio_seconds: float | None = None,
    audio_rate: int = WORK_RATE,
    channels: int = 1,
    with_audio: bool = True,
    source: str = "astronaut",
    face_fraction: float = TALKING_FACE_FRACTION,
    crf: int = 23,
    seed: int = 0,
) -> Path:
    """One real talking face, outside any sample: the portrait `source` filmed for `seconds`
    by the generator's camera, saying the real recording `speech` from `speech_start` (s) on.

    The sound track is that speech at `audio_rate` Hz with `channels` channels, cut to
    `audio_seconds` when given (a track shorter than the video; the face goes on talking),
    or absent when `with_audio` is false. The face box spans `face_fraction` of the width
    (give or take 6% as the camera zooms). The same arguments give the same bytes.
    """
    rng = np.random.default_rng(seed)
    frames = max(1, round(seconds * FPS))
    name = Path(target).name
    spec = ClipSpec("train", name, 0, source, (), width, height, frames, audio_rate, channels,
                    crf, seed)  # fmt: skip
    video = frames * WORK_RATE // FPS
    track = video if audio_seconds is None else max(1, round(audio_seconds * WORK_RATE))
    spoken = normalise(speech_from(speech, speech_start, max(video, track)), rng)
    audio = spoken[:track] if with_audio else None
    with tempfile.TemporaryDirectory(prefix="avcache-face-") as scratch:
        film(spec, load_portrait(source), spoken[:video], audio, [], rng, Path(target),
             Path(scratch), (face_fraction, face_fraction))  # fmt: skip
    return Path(target)


# --------------------------------------------------------------------------- layout


def write_lists(out: Path, specs: list[ClipSpec]) -> None:
    """The label files, the test list with empty targets, and the hidden test answers."""
    for split, filename in LABEL_FILES.items():
        rows = [f"{s.name},{s.label}" for s in specs if s.split == split]
        (out / filename).write_text("\n".join([HEADER, *rows]) + "\n")
    rows = [f"{s.name}," for s in specs if s.split == "test"]
    (out / PREDICTION_FILE).write_text("\n".join([HEADER, *rows]) + "\n")


def identity(
    seed: int,
    counts: dict[str, int],
    lip_sync: float = 0.0,
    layout: str = DEFAULT_LAYOUT,
    partial: float = 0.0,
) -> dict:
    """What makes two samples the same: the format, the seed, the counts, the lip-sync and
    partial shares and the layout (not --jobs). The shares and the layout are recorded only
    when not the default, so that a sample made without them keeps the manifest, and the
    bytes, it always had."""
    made = {"format": FORMAT_VERSION, "seed": seed, "counts": counts}
    if lip_sync:
        made |= {"lip_sync": lip_sync, "lip_sync_version": LIP_SYNC_VERSION}
    if partial:
        made |= {"partial": partial, "partial_version": PARTIAL_VERSION}
    if layout != DEFAULT_LAYOUT:
        made |= {"layout": layout}
    return made


# The keys of a manifest that make its identity: these always, each group where its first
# key is there.
IDENTITY_KEYS = ("format", "seed", "counts")
OPTIONAL_IDENTITY = {
    "lip_sync": ("lip_sync", "lip_sync_version"),
    "layout": ("layout",),
    "partial": ("partial", "partial_version"),
}


def existing_identity(out: Path) -> dict | None:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    keys = [*IDENTITY_KEYS]
    for trigger, group in OPTIONAL_IDENTITY.items():
        keys += group if trigger in manifest else ()
    return {key: manifest.get(key) for key in keys}


def write_manifest(
    out: Path,
    seed: int,
    counts: dict[str, int],
    specs: list[ClipSpec],
    sources: Sources,
    lip_sync: float = 0.0,
    layout: str = DEFAULT_LAYOUT,
    partial: float = 0.0,
) -> None:
    """The commit point, written last; also records what a reader of the sample may ask."""
    manifest = {
        **identity(seed, counts, lip_sync, layout, partial),
        "speakers": len(sources.speech),  # 1 without codec2-examples: fewer real voices
        "clips": [asdict(spec) for spec in specs],
    }
    write_json_atomic(out / MANIFEST, manifest)


def ffdv_file(spec: ClipSpec) -> str:
    """Where FFDV keeps a clip, relative to the data root: its split's folder, its name."""
    return f"{SPLIT_DIRS[spec.split]}/{spec.name}"


def render_all(
    specs: list[ClipSpec],
    sources: Sources,
    out: Path,
    jobs: int,
    file_of: Callable[[ClipSpec], str] = ffdv_file,
    folders: Iterable[str] = tuple(SPLIT_DIRS.values()),
) -> dict[str, dict[str, list[Span]]]:
    """Render every clip to out/file_of(clip) on a thread pool (ffmpeg and OpenCV release the
    GIL); stop at a failure. Returns, by clip name, the spans each manipulation changed."""
    portraits = load_portraits(sources)
    for folder in folders:
        (out / folder).mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="avcache-sample-") as scratch,
        ThreadPoolExecutor(max_workers=jobs) as pool,
        tqdm(total=len(specs), desc="sample clips", unit="clip") as bar,
    ):
        futures = {
            s.name: pool.submit(
                render_clip, s, portraits, sources.speech, out / file_of(s), Path(scratch)
            )
            for s in specs
        }
        for future in futures.values():
            future.add_done_callback(lambda _: bar.update())
        done, pending = wait(futures.values(), return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in done:
            future.result()  # re-raises the first failure, naming the clip
    return {name: future.result() for name, future in futures.items()}
