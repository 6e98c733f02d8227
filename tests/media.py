"""Small real media for the tests, made from the sample generator's sources
(avcache/sample/sources.py: media that ships offline).

Faces: the sample generator's renderer (avcache.sample.render.talking_face_clip) films
scikit-image's astronaut (a real face) with its moving camera; the jaw follows the speech.
Speech: codec2's 16 kHz recording of real speech (Debian codec2-examples) or
the asterisk prompts (asterisk-core-sounds-en-wav).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from avcache.sample.render import talking_face_clip
from avcache.sample.sources import ASTERISK_DIR, ASTRONAUT, CODEC2_DIR, package_file

SPEECH_16K = CODEC2_DIR / "raw/speech_orig_16k.wav"


def astronaut_png() -> Path:
    return package_file(*ASTRONAUT)


def speech_wav() -> Path:
    """A real speech recording: codec2's 16 kHz file, else an asterisk prompt."""
    if SPEECH_16K.is_file():
        return SPEECH_16K
    prompts = sorted(ASTERISK_DIR.glob("*.wav"))
    if not prompts:
        raise FileNotFoundError("no real speech: apt-get install asterisk-core-sounds-en-wav")
    return max(prompts[:50], key=lambda p: p.stat().st_size)


def ffmpeg(*args: str) -> None:
    result = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], capture_output=True, text=True
    )
    if result.returncode:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {result.stderr[-500:]}")


def talking_face(
    path: Path,
    seconds: float = 2.0,
    *,
    size: int = 128,
    sample_rate: int = 16000,
    channels: int = 1,
    speech_start: float = 0.0,
    audio_seconds: float | None = None,
) -> Path:
    """A real face with real speech; audio may be shorter than the video (audio_seconds)."""
    return talking_face_clip(path, seconds=seconds, width=size, height=size, speech=speech_wav(),
                             speech_start=speech_start, audio_seconds=audio_seconds,
                             audio_rate=sample_rate, channels=channels)  # fmt: skip


def face_without_audio(path: Path, seconds: float = 1.0, size: int = 128) -> Path:
    """The same talking face with no audio track at all."""
    return talking_face_clip(path, seconds=seconds, width=size, height=size, speech=speech_wav(),
                             with_audio=False)  # fmt: skip


def silent_clip(path: Path, seconds: float = 1.0, size: int = 96) -> Path:
    """A test pattern (no face) with an all-zero audio track."""
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=s={size}x{size}:d={seconds}",
           "-f", "lavfi", "-i", "anullsrc=r=44100:cl=stereo", "-t", str(seconds),
           "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(path))  # fmt: skip
    return path


def broken_files(folder: Path, good: Path) -> dict[str, Path]:
    """Files that are not playable videos: empty, truncated, random bytes, text."""
    data = good.read_bytes()
    files = {
        "zero.mp4": b"",
        "truncated.mp4": data[: len(data) // 3],
        "random.mp4": bytes((i * 7919 + 13) % 251 for i in range(20000)),
        "text.mp4": b"this is not a video\n" * 100,
    }
    for name, payload in files.items():
        (folder / name).write_bytes(payload)
    return {name: folder / name for name in files}


def write_labels(path: Path, rows: list[tuple[str, object]], *, bom: bool = False,
                 crlf: bool = False) -> Path:  # fmt: skip
    newline = "\r\n" if crlf else "\n"
    text = newline.join(["video_name,target", *(f"{name},{target}" for name, target in rows)])
    path.write_text(("\ufeff" if bom else "") + text + newline, encoding="utf-8")
    return path
