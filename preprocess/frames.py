"""One video decode for a video's face frames and its track windows.

Where tracks are cached, the faces' K frames and the windows' T frames come from one ffmpeg
pass over the track's timeline (preprocess/tracks.py: frame n is the source frame shown at
n / tracks.fps, time 0 being the file's first timestamp), so a video is decoded once, not
once by OpenCV for the faces and again by ffmpeg for the windows. The face frames are
those at faces.py's times (the centres of K equal slices of the clip), taken on that
timeline. ffmpeg's select filter keeps only the wanted frames, which leave it in YUV 4:2:0
(half the bytes of RGB, and OpenCV converts them several times faster than ffmpeg's
swscale); each is read as it comes, so memory holds the K face frames at full size and the
windows' frames at tracks.frame_size, never the whole output.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avcache.preprocess.config import TracksConfig
from avcache.preprocess.faces import frame_times
from avcache.preprocess.media import (
    NO_DEADLINE,
    Deadline,
    FfmpegStream,
    MediaError,
    MediaInfo,
    allowed_input,
    ffmpeg_reason,
)
from avcache.preprocess.tracks import Windows


@dataclass
class DecodedFrames:
    """A video's face frames and its windows' frames, from one decode."""

    faces: list[np.ndarray]  # RGB as shown (even sides), one per face time (past the end: the last)
    windows: np.ndarray  # uint8 [W, T, h, w, 3]: RGB at tracks.frame_size
    windows_real: np.ndarray  # int16 [W]: frames of each window the clip has (others repeat)


def face_numbers(duration: float, count: int, available: int, fps: float) -> list[int]:
    """The track-timeline frames nearest faces.py's times (inside the clip's frames)."""
    return [min(int(seconds * fps), available - 1) for seconds in frame_times(duration, count)]


def decode_frames(path: Path, binary: str, info: MediaInfo, face_count: int, windows: Windows,
                  config: TracksConfig, deadline: Deadline = NO_DEADLINE,
                  ) -> DecodedFrames:  # fmt: skip
    """The face frames and the windows' frames of `path` (frames past the clip's end repeat
    its last decoded frame; the windows' are counted out of windows_real)."""
    if not info.has_video:
        raise MediaError("no video stream (audio only): no frames to cache; "
                         "faces.frames=0 and tracks.windows=0 cache such files")  # fmt: skip
    size = even_size(info)
    small = _track_size(*size, config.frame_size)
    faces_at = face_numbers(info.duration, face_count, windows.available, config.fps)
    windows_at = [range(int(s), int(s) + config.frames) for s in windows.starts]
    in_windows = set().union(*windows_at)
    faces_rgb: dict[int, np.ndarray] = {}
    windows_rgb: dict[int, np.ndarray] = {}
    last = None
    wanted = sorted(in_windows.union(faces_at))
    for number, yuv in numbered_frames(path, binary, info, wanted, config.fps, deadline):
        if number in faces_at:
            faces_rgb[number] = cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_I420)
        if number in in_windows:
            windows_rgb[number] = shrunk_rgb(yuv, size, small)
        last = yuv
    # Frames past the clip's end (its duration promised more than it holds) repeat its last.
    if any(number not in faces_rgb for number in faces_at):
        last_rgb = cv2.cvtColor(last, cv2.COLOR_YUV2RGB_I420)
        faces_rgb = {number: faces_rgb.get(number, last_rgb) for number in faces_at}
    missing = shrunk_rgb(last, size, small) if len(windows_rgb) < len(in_windows) else None
    frames, real = into_windows(windows_rgb, windows_at, missing)
    return DecodedFrames([faces_rgb[n] for n in faces_at], frames, real)


def into_windows(decoded: dict[int, np.ndarray], windows_at: list[range],
                 missing: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The windows' frames [W, T, h, w, 3] from the frames by number (`missing`, the clip's
    last, where it has none), and how many of each window the clip has [W]."""
    shape = next(iter(decoded.values()), missing).shape
    out = np.empty((len(windows_at), len(windows_at[0]), *shape), np.uint8)
    real = np.zeros(len(windows_at), np.int16)
    for w, window in enumerate(windows_at):
        for k, number in enumerate(window):
            frame = decoded.get(number)
            real[w] += frame is not None
            out[w, k] = missing if frame is None else frame
    return out, real


def even_size(info: MediaInfo) -> tuple[int, int]:
    """The size of the frames as shown (turned by a display matrix), even sides (4:2:0)."""
    width, height = info.display_size()
    if not width or not height:
        raise MediaError("the video stream's size is unknown: no frames to take")
    return max(2, width // 2 * 2), max(2, height // 2 * 2)


def _track_size(width: int, height: int, longest: int) -> tuple[int, int]:
    """(w, h) of the windows' frames: the source scaled to `longest` at most, even sides."""
    scale = min(1.0, longest / max(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def shrunk_rgb(yuv: np.ndarray, size: tuple[int, int], small: tuple[int, int]) -> np.ndarray:
    """An I420 frame of `size` as RGB at `small`: each plane shrunk first, so the colour
    conversion runs on the small frame (at 720p, 0.3 ms a frame instead of 1.6)."""
    (width, height), (small_width, small_height) = size, small
    if size == small:
        return cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_I420)
    flat = yuv.reshape(-1)
    luma = flat[: width * height].reshape(height, width)
    chroma = flat[width * height :].reshape(2, height // 2, width // 2)
    half = (small_width // 2, small_height // 2)
    planes = [_shrink(luma, small).reshape(-1)]
    planes += [_shrink(plane, half).reshape(-1) for plane in chroma]
    joined = np.concatenate(planes).reshape(small_height * 3 // 2, small_width)
    return cv2.cvtColor(joined, cv2.COLOR_YUV2RGB_I420)


def _shrink(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`plane` at `size`: halved by pixel averaging while still twice as large (OpenCV's
    fast path for whole factors), then bilinear to the exact size (a general INTER_AREA
    costs ~16x as much)."""
    while plane.shape[1] >= 2 * size[0] and plane.shape[0] >= 2 * size[1]:
        half = (plane.shape[1] // 2, plane.shape[0] // 2)
        plane = cv2.resize(plane, half, interpolation=cv2.INTER_AREA)
    if (plane.shape[1], plane.shape[0]) == size:
        return plane
    return cv2.resize(plane, size, interpolation=cv2.INTER_LINEAR)


def numbered_frames(path: Path, binary: str, info: MediaInfo, numbers: list[int], fps: float,
                    deadline: Deadline = NO_DEADLINE,
                    ) -> Iterator[tuple[int, np.ndarray]]:  # fmt: skip
    """(number, I420 frame [h * 3/2, w]) of the frames `numbers` (sorted, distinct) of the
    timeline at `fps`, at their shown size (even sides), as ffmpeg gives them; fewer where
    the clip ends first (at least one, else MediaError)."""
    size, shown = even_size(info), info.display_size()
    width, height = size
    frame_bytes = width * height * 3 // 2
    stream = (
        # One decoding thread: a worker has one core (worker.one_thread_per_worker), and
        # frame threads would only add their hand-overs to its CPU time.
        allowed_input(path, (numbers[-1] + 1) / fps, threads=1)
        .video.filter("fps", fps=fps, start_time=0)
        .filter("select", _select(numbers))
    )
    if size != shown:  # odd sides: to even ones (a scale costs ~1.5 ms a 720p frame)
        stream = stream.filter("scale", width, height)
    # A stream whose size changes keeps its first frame's (ffmpeg's -autoscale, the default).
    command = (
        stream.output("pipe:", format="rawvideo", pix_fmt="yuv420p", fps_mode="passthrough")
        .global_args("-nostdin", "-hide_banner")
        .compile(cmd=binary)
    )
    count = 0
    with FfmpegStream(command, deadline) as output:
        for number in numbers:
            data = output.read(frame_bytes)
            if len(data) < frame_bytes:
                break
            deadline.check("faces")
            count += 1
            yield number, np.frombuffer(data, np.uint8).reshape(height * 3 // 2, width)
        while output.read(1 << 16):  # nothing else is selected; never leave ffmpeg blocked
            pass
        returncode, messages = output.finish()
    if not count:
        reason = ffmpeg_reason(messages) if returncode else "the stream holds no frame"
        raise MediaError(f"no video frame could be decoded: {reason}")


def _select(numbers: list[int]) -> str:
    """A select expression for `numbers`, runs of consecutive ones as one between()."""
    runs, start, previous = [], numbers[0], numbers[0]
    for number in numbers[1:]:
        if number != previous + 1:
            runs.append((start, previous))
            start = number
        previous = number
    runs.append((start, previous))
    return "+".join(f"between(n,{first},{last})" for first, last in runs)
