"""What makes a clip fake (registries by name: voices, desync, face edits, lip sync), and
the real speech and room noise a clip starts from."""

from __future__ import annotations

import io
import wave
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from itertools import count
from pathlib import Path

import cv2
import numpy as np
import soxr

from avcache.sample.sources import FPS, WORK_RATE, Portrait, SampleError, choose_source, run_tool

NOISE_DB = (-62.0, -48.0)  # room-noise floor, so silence is never digital zero

SPEECH_GAIN_DB = (-14.0, -2.0)  # peak level of the voice

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


PAUSE_SECONDS = (0.05, 0.35)  # between one recording, or synthetic phrase, and the next


def string_together(
    recordings: Iterator[np.ndarray], rng: np.random.Generator, samples: int
) -> np.ndarray:
    """`samples` of recordings played one after another with short pauses, cut in at a
    random point of the first. A clip that began where a recording begins would open with
    that recording's silence before its first word more often than a synthetic voice does,
    and leading silence alone would tell the two apart."""
    pieces, total = [], 0
    while total < samples:
        recording = next(recordings)
        if not pieces:
            start = int(rng.integers(len(recording)))
        else:  # a long recording is entered anywhere that still fills what is left
            start = int(rng.integers(max(1, len(recording) - (samples - total))))
        piece = recording[start : start + samples - total]
        pause = np.zeros(int(rng.uniform(*PAUSE_SECONDS) * WORK_RATE), np.float32)
        pieces += [piece, pause]
        total += len(piece) + len(pause)
    return np.concatenate(pieces)[:samples]


def real_speech(
    rng: np.random.Generator, speech: Sequence[Sequence[Path]], samples: int
) -> np.ndarray:
    """One speaker's recordings strung together with short pauses until the clip is full."""
    # Half the clips speak with the Asterisk voice, half with one of the codec2 speakers:
    # with one voice only, "this voice is real" would be all a detector needs to learn.
    other = len(speech) > 1 and rng.random() < 0.5
    pool = speech[int(rng.integers(1, len(speech))) if other else 0]
    recordings = (load_speech(pool[rng.integers(len(pool))]) for _ in count())
    return normalise(string_together(recordings, rng, samples), rng)


def speech_from(path: Path, start: float, samples: int) -> np.ndarray:
    """`samples` of one recording from `start` seconds on (not normalised), starting it over
    after a short pause when it ends first."""
    pause = np.zeros(WORK_RATE // 5, np.float32)
    recording = np.concatenate([load_speech(path), pause])
    begin = round(start * WORK_RATE) % len(recording)
    repeats = -(-(begin + samples) // len(recording))
    return np.tile(recording, repeats)[begin : begin + samples]


def room_noise(rng: np.random.Generator, samples: int) -> np.ndarray:
    """A faint noise floor: digital silence would give synthetic or shifted audio away."""
    return (rng.standard_normal(samples) * 10 ** (rng.uniform(*NOISE_DB) / 20)).astype(np.float32)


def normalise(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random peak level plus a noise floor, like different microphones."""
    peak = float(np.abs(audio).max()) or 1.0
    gain = 10 ** (rng.uniform(*SPEECH_GAIN_DB) / 20) / peak
    return (audio * gain + room_noise(rng, len(audio))).astype(np.float32)


def espeak(text: str, voice: str, pitch: int, speed: int) -> np.ndarray:
    """espeak-ng reading `text`, as float32 at WORK_RATE."""
    wav = run_tool(
        ["espeak-ng", "--stdout", "-v", voice, "-p", str(pitch), "-s", str(speed), text],
        f"espeak-ng voice {voice}",
    )
    with wave.open(io.BytesIO(wav), "rb") as handle:
        data = np.frombuffer(handle.readframes(handle.getnframes()), "<i2") / 32768.0
        rate = handle.getframerate()
    return soxr.resample(data.astype(np.float32), rate, WORK_RATE)


PHRASE_WORDS = (4, 9)  # words a synthetic phrase reads: 1.5 to 3.5 s, like a real prompt


def synthetic_phrases(rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless phrases of random words in one random espeak-ng voice, pitch and speed."""
    voice = f"{rng.choice(ESPEAK_VOICES)}+{rng.choice(ESPEAK_VARIANTS)}"
    pitch, speed = int(rng.integers(20, 81)), int(rng.integers(130, 201))
    telephone = rng.random() < 0.5  # half go through a telephone band, like the Asterisk prompts
    words = SCRIPT.split()
    while True:
        text = " ".join(rng.choice(words, size=int(rng.integers(*PHRASE_WORDS))))
        audio = espeak(text, voice, pitch, speed)
        if telephone:
            audio = soxr.resample(soxr.resample(audio, WORK_RATE, 8000), 8000, WORK_RATE)
        yield audio


def synthetic_voice(rng: np.random.Generator, samples: int) -> np.ndarray:
    """Exactly `samples` of a synthetic voice, phrase after phrase with the pauses between
    real recordings: a synthetic track is built the way a real one is, so that only the
    voice differs (its silences once gave it away)."""
    return normalise(string_together(synthetic_phrases(rng), rng, samples), rng)


def tts_voice(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The whole track becomes a synthetic voice: the classic voice-clone fake."""
    return synthetic_voice(rng, len(audio))


def tts_splice(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """0.8 to 1.5 s in the middle of real speech replaced by a synthetic voice: a partial fake."""
    length = min(len(audio) // 2, int(rng.uniform(0.8, 1.5) * WORK_RATE))
    start = int(rng.integers(len(audio) // 4, len(audio) - length + 1))
    out = audio.copy()
    out[start : start + length] = synthetic_voice(rng, length)
    return out


# LAV-DF's partial fakes: a few words of a real clip's speech replaced by a synthetic voice
# saying others, the lips re-driven to say them too (its "audio+video" fakes) or left as
# they were (its "audio" fakes, whose lips now say what is not heard). Only those stretches
# are fake: the rest of the clip is the real recording, sample for sample.
WORD_TTS = "word_tts"
WORD_LIPS = "word_lips"
WORD_SECONDS = (0.25, 0.5)  # one spoken word
WORDS = (1, 3)  # words replaced in a clip, least and most
WORD_GAP_SECONDS = 0.2  # real speech left between two replaced words, at least
WORD_EDGE_SECONDS = 0.3  # and before the first and after the last
WORD_FADE = WORK_RATE // 200  # 5 ms cross-fades: no click marks a seam


def word_spans(rng: np.random.Generator, samples: int) -> list[tuple[int, int]]:
    """One to three word-long [start, end) sample ranges, sorted, apart from each other and
    from the clip's ends (fewer where a short clip has no room for more)."""
    gap, edge = int(WORD_GAP_SECONDS * WORK_RATE), int(WORD_EDGE_SECONDS * WORK_RATE)
    lengths = [int(rng.uniform(*WORD_SECONDS) * WORK_RATE)
               for _ in range(int(rng.integers(WORDS[0], WORDS[1] + 1)))]  # fmt: skip
    while len(lengths) > 1 and sum(lengths) + gap * (len(lengths) - 1) > samples - 2 * edge:
        lengths.pop()
    slack = max(samples - 2 * edge - sum(lengths) - gap * (len(lengths) - 1), 0)
    # Where the slack goes: before the first word, between words, after the last.
    shares = rng.dirichlet(np.ones(len(lengths) + 1)) * slack
    spans, position = [], edge
    for length, before in zip(lengths, shares[:-1], strict=True):
        start = position + int(before)
        spans.append((start, start + length))
        position = start + length + gap
    return spans


def synthetic_word(rng: np.random.Generator, samples: int) -> np.ndarray:
    """`samples` of a synthetic voice from its first sound on (a replaced word is heard as
    a word, not as the pause before one), at a unit peak."""
    phrase = next(synthetic_phrases(rng))
    sounding = np.flatnonzero(np.abs(phrase) > 0.05 * (np.abs(phrase).max() or 1.0))
    start = int(sounding[0]) if len(sounding) else 0
    piece = np.resize(phrase[start:], samples)  # repeated in the rare phrase too short
    return piece / (np.abs(piece).max() or 1.0)


def word_tts(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One to three words of the speech replaced by a synthetic voice at the speech's level
    (cross-faded in and out, over the room noise), the rest untouched."""
    out = audio.copy()
    level = float(np.abs(audio).max()) or 1.0
    fade = np.linspace(0.0, 1.0, WORD_FADE, dtype=np.float32)
    for start, end in word_spans(rng, len(audio)):
        word = synthetic_word(rng, end - start) * level * rng.uniform(0.6, 0.9)
        weight = np.ones(end - start, np.float32)
        weight[:WORD_FADE], weight[-WORD_FADE:] = fade, fade[::-1]
        mixed = weight * (word + room_noise(rng, end - start)) + (1 - weight) * audio[start:end]
        out[start:end] = mixed.astype(np.float32)
    return out


DESYNC = "av_desync"
DESYNC_SECONDS = (0.3, 0.8)  # how far the audio moves against the picture, either way


def desync_lag(rng: np.random.Generator) -> int:
    """Samples by which what is heard runs behind (+) or ahead of (-) what the face says."""
    return int(rng.uniform(*DESYNC_SECONDS) * WORK_RATE) * int(rng.choice((-1, 1)))


AudioEdit = Callable[[np.ndarray, np.random.Generator], np.ndarray]
# The voice edits a fake recipe draws from (sample/plan.py); the partial fakes' own
# (--partial) stay out of it, so that the recipes draw what they always drew.
VOICE_MANIPULATIONS: dict[str, AudioEdit] = {"tts_voice": tts_voice, "tts_splice": tts_splice}
SOUND_EDITS: dict[str, AudioEdit] = {**VOICE_MANIPULATIONS, WORD_TTS: word_tts}
AUDIO_KINDS = (*VOICE_MANIPULATIONS, DESYNC)  # the desync is made where the tracks are drawn


def loudness(audio: np.ndarray, frames: int) -> np.ndarray:
    """Per-video-frame loudness in [0, 1]: drives the jaw of still faces."""
    hop = WORK_RATE // FPS
    rms = np.sqrt(np.mean(audio[: frames * hop].reshape(frames, hop) ** 2, axis=1))
    rms = np.convolve(rms, np.ones(3) / 3, mode="same")  # jaws do not jump between frames
    scale = np.percentile(rms, 95)
    return np.clip(rms / scale, 0, 1) if scale > 0 else np.zeros(frames)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two envelopes; 0 when either is flat (nothing to follow)."""
    if np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


# --------------------------------------------------------------------------- mouth edits

LIP_SYNC = "lip_sync"
# Two unrelated speech tracks of 2 to 3 s often move together by chance (their loudness
# correlates above 0.2 about a third of the time): such a driver would make a fake whose
# lips match what is heard, a fake with no evidence. Drivers are drawn until one does not.
MAX_LIP_SYNC_CORRELATION = 0.2
LIP_SYNC_TRIES = 20


def lip_sync(
    spoken: np.ndarray, rng: np.random.Generator, speech: Sequence[Sequence[Path]]
) -> np.ndarray:
    """Other real speech to drive the mouth, as a lip-sync fake re-drives a real face for a
    track it never said: face and voice are both real, only their mismatch gives it away."""
    frames = len(spoken) // (WORK_RATE // FPS)
    heard = loudness(spoken, frames)
    best, best_match = spoken, np.inf
    for _ in range(LIP_SYNC_TRIES):
        driver = real_speech(rng, speech, len(spoken))
        match = correlation(loudness(driver, frames), heard)
        if match < best_match:
            best, best_match = driver, match
        if match <= MAX_LIP_SYNC_CORRELATION:
            break
    return best


def word_lips(spoken: np.ndarray, heard: np.ndarray, rng: np.random.Generator,
              speech: Sequence[Sequence[Path]]) -> np.ndarray:  # fmt: skip
    """The mouth re-driven by what is heard: where a voice edit replaced words, the lips say
    the new words (LAV-DF's audio+video fakes); elsewhere what is heard is what was said."""
    return heard


# A mouth edit returns the track the mouth is driven by, given what the face said and the
# track that is heard (after the voice edits).
MouthEdit = Callable[
    [np.ndarray, np.ndarray, np.random.Generator, Sequence[Sequence[Path]]], np.ndarray
]
MOUTH_MANIPULATIONS: dict[str, MouthEdit] = {
    LIP_SYNC: lambda spoken, heard, rng, speech: lip_sync(spoken, rng, speech),
    WORD_LIPS: word_lips,
}
# The mouth edits that change only a part of the clip: their spans are measured where the
# driving track differs (a lip-sync re-drives the whole clip).
PARTIAL_MOUTH = (WORD_LIPS,)


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
