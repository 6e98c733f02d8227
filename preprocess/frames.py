"""One video decode for a video's face frames and its track windows.

Where tracks are cached, the faces' K frames and the windows' T frames come from one pass
over the track's timeline (preprocess/tracks.py: frame n is the source frame shown at
n / tracks.fps, time 0 being the file's first timestamp), so a video is decoded once, not
once by OpenCV for the faces and again for the windows. The face frames are those at
faces.py's times (the centres of K equal slices of the clip), taken on that timeline.
ffmpeg's fps and select filters keep only the wanted frames, which leave them in YUV 4:2:0
(half the bytes of RGB, and OpenCV converts them several times faster than swscale); each
is taken as it comes, so memory holds the K face frames at full size and the windows'
frames at tracks.frame_size, never the whole clip. The pass runs in this process through
PyAV (libav's decoders and these filters), or in an ffmpeg process where PyAV cannot
(numbered_frames): the same frames, bit for bit, on every file the tests compare.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from avcache.preprocess.config import TracksConfig
from avcache.preprocess.faces import frame_times
from avcache.preprocess.media import (
    FORMAT_WHITELIST,
    NO_DEADLINE,
    Deadline,
    FfmpegStream,
    MediaError,
    MediaInfo,
    allowed_input,
    as_ffmpeg_url,
    ffmpeg_reason,
)
from avcache.preprocess.tracks import Windows


@dataclass
class DecodedFrames:
    """A video's face frames and its windows' frames, from one decode."""

    faces: list[np.ndarray]  # RGB as shown (even sides), one per face time (past the end: the last)
    windows: np.ndarray  # uint8 [W, T, h, w, 3]: RGB at tracks.frame_size
    windows_real: np.ndarray  # int16 [W]: frames of each window the clip has (others repeat)
    audio_lead: float = 0.0  # seconds the audio starts after the timeline's 0 (audio_lead)


def face_numbers(duration: float, count: int, available: int, fps: float) -> list[int]:
    """The track-timeline frames nearest faces.py's times (inside the clip's frames)."""
    return [min(int(seconds * fps), available - 1) for seconds in frame_times(duration, count)]


def frame_numbers(duration: float, face_count: int, windows: Windows,
                  config: TracksConfig) -> tuple[list[int], list[range]]:  # fmt: skip
    """The track-timeline numbers of the face frames and of each window's frames."""
    faces_at = face_numbers(duration, face_count, windows.available, config.fps)
    return faces_at, [range(int(s), int(s) + config.frames) for s in windows.starts]


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
    faces_at, windows_at = frame_numbers(info.duration, face_count, windows, config)
    in_windows = set().union(*windows_at)
    faces_rgb: dict[int, np.ndarray] = {}
    windows_rgb: dict[int, np.ndarray] = {}
    last = None
    wanted = sorted(in_windows.union(faces_at))
    with opened(path, deadline) as container:
        lead = 0.0 if container is None else audio_lead(container)
        for number, yuv in numbered_frames(container, path, binary, info, wanted, config.fps,
                                           deadline):  # fmt: skip
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
    return DecodedFrames([faces_rgb[n] for n in faces_at], frames, real, lead)


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


def numbered_frames(container, path: Path, binary: str, info: MediaInfo, numbers: list[int],
                    fps: float, deadline: Deadline = NO_DEADLINE,
                    ) -> Iterator[tuple[int, np.ndarray]]:  # fmt: skip
    """(number, I420 frame [h * 3/2, w]) of the frames `numbers` (sorted, distinct) of the
    timeline at `fps`, at their shown size (even sides); fewer where the clip ends first (at
    least one, else MediaError).

    Decoded in this process by PyAV from `container` (opened; None where PyAV could not)
    through the filters ffmpeg's command line applies (its turn to the shown orientation,
    fps, select, the scale to even sides), so the frames are ffmpeg's own, without an ffmpeg
    process's start and pipe: about half the pass's CPU on a short small clip. A file PyAV
    cannot open or read to the end, whose frames carry no timestamps (a raw H.264 stream),
    or turned by other than quarter turns, goes, from the first frame not yet given, to an
    ffmpeg process (decode_by_ffmpeg), which reports what it could not read.
    """
    given = 0
    try:
        if container is not None:
            for item in decode_in_process(container, info, numbers, fps, deadline):
                given += 1
                yield item
        if given:
            return
    except (av.FFmpegError, NotInProcess):
        deadline.check("faces")  # a read PyAV's timeout interrupted: the video's time is up
    yield from decode_by_ffmpeg(path, binary, info, numbers[given:], fps, deadline, given > 0)


class NotInProcess(Exception):
    """A file whose frames ffmpeg's command line gives in a way not reproduced in process."""


# ffmpeg's autorotation for a display matrix turning the picture by these degrees
# (media.MediaInfo.rotation, counter-clockwise, as its log says): the filters it inserts.
UPRIGHT = {0: (), 90: (("transpose", "cclock"),), 180: (("hflip", None), ("vflip", None)),
           270: (("transpose", "clock"),)}  # fmt: skip


@contextlib.contextmanager
def opened(path: Path, deadline: Deadline = NO_DEADLINE) -> Iterator:
    """PyAV's container of `path`, opened only as ffmpeg may open it (the allowed formats,
    a plain file); None where PyAV cannot open it."""
    options = {"format_whitelist": FORMAT_WHITELIST, "protocol_whitelist": "file"}
    try:
        container = av.open(as_ffmpeg_url(path), options=options, timeout=deadline.remaining())
    except av.FFmpegError:
        deadline.check("faces")  # an open PyAV's timeout interrupted: the video's time is up
        container = None
    with contextlib.nullcontext() if container is None else container:
        yield container


def decode_in_process(container, info: MediaInfo, numbers: list[int], fps: float,
                      deadline: Deadline) -> Iterator[tuple[int, np.ndarray]]:  # fmt: skip
    """numbered_frames' frames, decoded by PyAV in this process (none where no frame has a
    timestamp). A stream whose size changes keeps its timeline, each frame scaled to the
    size shown (ffmpeg's command line restarts its filters at the change instead, and its
    fps filter then repeats one frame for the rest of the clip)."""
    turn = round(info.rotation / 90) * 90
    if abs(info.rotation - turn) > 1:  # ffmpeg would rotate by an arbitrary angle
        raise NotInProcess(f"rotation {info.rotation}")
    stream = container.streams.best("video")
    if stream is None:
        raise NotInProcess("no video stream")
    stream.codec_context.thread_count = 1  # one core a worker, as in decode_by_ffmpeg
    start = timeline_start(container, stream)
    filters = [*UPRIGHT[turn % 360], ("fps", f"fps={fps}:start_time={start:.6f}"),
               ("select", _select(numbers)), ("scale", "{}:{}".format(*even_size(info))),
               ("format", "yuv420p")]  # fmt: skip
    selected = _filtered(_decoded(container, stream, deadline), stream.time_base, filters)
    # numbers first: once they are given, no frame past them is decoded
    for number, frame in zip(numbers, selected, strict=False):
        yield number, frame.to_ndarray()


TS_DISCONT = 0x0200  # libavformat's AVFMT_TS_DISCONT: a format whose timestamps may jump


def timeline_start(container, stream) -> float:
    """Seconds where ffmpeg's command line puts time 0 when it decodes `stream` alone: the
    file's first timestamp; in a format whose timestamps may jump (MPEG-TS), the first of
    the streams it decodes, if later (its start-time correction over the enabled streams)."""
    start = container.start_time or 0  # in av.time_base units (microseconds)
    if container.format.flags & TS_DISCONT and stream.start_time is not None:
        start = max(start, round(stream.start_time * stream.time_base * av.time_base))
    return start / av.time_base


def audio_lead(container) -> float:
    """Seconds the audio stream ffmpeg's command line picks (the most channels, the first
    of those) starts after time 0 of its timeline when it decodes that stream alone (as
    for the mel: the file's first timestamp, or in MPEG-TS its own start); 0 without one.
    The windows' audio is the mel's PCM shifted by this (tracks.on_timeline), as ffmpeg's
    aresample=first_pts=0 would place it."""
    streams = list(container.streams.audio)
    if not streams:
        return 0.0
    audio = max(streams, key=lambda stream: stream.codec_context.channels)
    if audio.start_time is None:
        return 0.0
    return float(audio.start_time * audio.time_base) - timeline_start(container, audio)


def _decoded(container, stream, deadline: Deadline) -> Iterator:
    """The stream's frames, then None (its end: the fps filter gives what it still holds)."""
    for frame in container.decode(stream):
        deadline.check("faces")
        yield frame
    yield None


def _filtered(frames: Iterator, time_base, filters: list[tuple[str, str | None]]) -> Iterator:
    """What `filters` make of `frames` (None: their end), the graph built for the first
    frame's size and pixel format (a codec may say them only once it has decoded one)."""
    graph = None
    for frame in frames:
        if graph is None:
            if frame is None:
                return
            graph = _filter_graph(frame, time_base, filters)
        graph.push(frame)
        while True:
            try:
                yield graph.pull()
            except (av.BlockingIOError, av.EOFError):
                break


def _filter_graph(first, time_base, filters: list[tuple[str, str | None]]):
    """A buffer source taking frames like `first`, `filters` in order, a sink."""
    graph = av.filter.Graph()
    chain = [graph.add_buffer(width=first.width, height=first.height, format=first.format,
                              time_base=time_base)]  # fmt: skip
    chain += [graph.add(name, arguments) for name, arguments in filters]
    chain.append(graph.add("buffersink"))
    for before, after in itertools.pairwise(chain):
        before.link_to(after)
    graph.configure()
    return graph


def decode_by_ffmpeg(path: Path, binary: str, info: MediaInfo, numbers: list[int], fps: float,
                     deadline: Deadline, some_given: bool = False,
                     ) -> Iterator[tuple[int, np.ndarray]]:  # fmt: skip
    """numbered_frames' frames from an ffmpeg process, its stdout read as it comes (none is
    an error unless `some_given`: the frames before these were decoded)."""
    if not numbers:
        return
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
    if not count and not some_given:
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
