"""Mouth tracks: a window of T consecutive frames becomes T stabilised grey mouth crops.

The mouth is located per frame by a locator from a registry, in fallback order: MediaPipe's
face mesh (its lip landmarks, tracked across the window in video mode), MTCNN's five points
(its mouth corners; only where facenet-pytorch is installed), the face box of
faces.py's detectors (the mouth sits at a fixed place in it), and the frame centre. A window
on which a locator finds nothing goes to the next one. The crop is then stabilised over the
window: one side for all T frames (from the median mouth width) and a smoothed centre, so a
still face gives still crops and a talking one does not jitter. Landmarks are found on a
copy downscaled to DETECT_SIZE; the crop is cut from the full-resolution frame. The locator
may look at every k-th frame only (`locate_every`, tracks.locate_every): the mouths of the
frames between are interpolated, and the stabilisation runs on all T frames as before.

Cost per frame, measured on this 2-core machine while others used it (load 2.5-4; four
runs, each the median of 5 rounds; 25-frame windows of a filmed talking face; 88 px crops):
face mesh 6-9 ms at 480 x 480 and 8-12 ms at 1280 x 720 (downscaled to 480 x 270 first),
of which its landmarks take 6-7 ms; the face-box fallback (BlazeFace) 3.5-6 ms; the MTCNN
fallback 165-280 ms at 480 px; the frame centre alone (crop, resize, grey) 0.4-2 ms. A
25-frame window at 480 px costs 78-98 ms of CPU with the face mesh on every frame, 36-45 ms
on every third and 31-40 on every fourth, the default (python -m benchmarks.mouth_bench,
which also measures how far that moves the mouth).
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from avcache.preprocess.faces import (
    DETECTORS,
    MIN_FACE_PROBABILITY,
    _mtcnn,
    _stderr_silenced,
    resolve_detector,
    square_crop,
)

DETECT_SIZE = 480  # frames are downscaled to this longest side to find the mouth
# Smallest face the box detectors look for, as a share of the detection frame's longest
# side (60 px at 480, like faces.py's 40 px at 320): a talking head is no smaller, and
# MTCNN's cost is mostly the image pyramid that a smaller face would deepen.
MIN_FACE_SHARE = 1 / 8
# Crop side = MARGIN x the median mouth width: the lips, the skin around the corners, and a
# jaw dropped by a third of the mouth width still fit (the centre lies a little below the
# lip line, so the lower lip has the crop's lower half).
MARGIN = 1.6
SMOOTH_FRAMES = 5  # median filter over this many frames, then a 3-frame moving average
CENTRE_SHARE = 0.5  # without any mouth: the centre square of half the shorter side

# Face mesh landmarks (of 468): mouth corners, top of the upper lip, bottom of the lower lip.
LIP_CORNERS = (61, 291)
LIP_OUTER = (0, 17)

# Where the mouth sits in faces.py's boxes (MTCNN's framing, whichever detector made them):
# medians over 111 real faces (carphone, astronaut, LFW) against the face mesh's lips.
BOX_MOUTH_X, BOX_MOUTH_Y, BOX_MOUTH_WIDTH = 0.5, 0.745, 0.37

# A locator takes RGB frames and returns per frame the mouth (centre x, centre y, width) in
# that frame's pixels, or None where it finds none.
Mouth = tuple[float, float, float]
Locator = Callable[[list[np.ndarray]], list[Mouth | None]]


@dataclass
class MouthTrack:
    crops: np.ndarray  # uint8 [T, S, S] greyscale mouth crops
    # bool [T]: the locator found the mouth on that frame, or on the located frames on both
    # sides of one it did not look at (fill_between)
    found: np.ndarray
    boxes: np.ndarray  # float32 [T, 4]: the crop square (x0, y0, x1, y1), source pixels
    locator: str  # which locator produced it


# --------------------------------------------------------------------------- locators


@functools.cache
def _face_mesh():
    from mediapipe.python.solutions.face_mesh import FaceMesh  # optional dependency

    # Start-up logs come from the graph's own threads until the first frame is through.
    with _stderr_silenced():
        mesh = FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=False)
        mesh.process(np.zeros((64, 64, 3), np.uint8))
    return mesh


def locate_facemesh(frames: list[np.ndarray]) -> list[Mouth | None]:
    """The face mesh's lips, tracked from frame to frame (video mode: the face is detected
    once, then followed from the previous landmarks, which is cheaper and steadier)."""
    mesh = _face_mesh()
    with _stderr_silenced():  # the graph logs until its first face is through
        forget_face(mesh, frames[0].shape)
        first = _mesh_mouth(mesh, frames[0])
    return [first, *(_mesh_mouth(mesh, frame) for frame in frames[1:])]


def forget_face(mesh, shape: tuple[int, ...]) -> None:
    """A window starts untracked: a face followed in the previous window is not this one's.
    A black frame loses it (no face there), so the window's first frame is detected afresh:
    the same landmarks as after mesh.reset(), which restarts the graph and costs 5-10 ms more
    a window (its first frame then sets everything up again)."""
    if _mesh_mouth(mesh, np.zeros(shape, np.uint8)) is not None:  # never seen: restart then
        mesh.reset()


def _mesh_mouth(mesh, frame: np.ndarray) -> Mouth | None:
    result = mesh.process(np.ascontiguousarray(frame))
    if not result.multi_face_landmarks:
        return None
    marks = result.multi_face_landmarks[0].landmark
    height, width = frame.shape[:2]
    points = np.array(
        [(marks[i].x * width, marks[i].y * height) for i in (*LIP_CORNERS, *LIP_OUTER)]
    )
    centre = points.mean(axis=0)
    return float(centre[0]), float(centre[1]), float(np.linalg.norm(points[0] - points[1]))


def locate_mtcnn(frames: list[np.ndarray]) -> list[Mouth | None]:
    """MTCNN's mouth corners on the largest likely face, the window's frames in one batch."""
    smallest = _min_face_size(frames[0])
    if min(frames[0].shape[:2]) < smallest:  # MTCNN's image pyramid would be empty
        return [None] * len(frames)
    boxes, probs, points = _mtcnn(smallest, "cpu").detect(np.stack(frames), landmarks=True)
    return [_mtcnn_mouth(*found) for found in zip(boxes, probs, points, strict=True)]


def _min_face_size(frame: np.ndarray) -> int:
    return max(20, round(MIN_FACE_SHARE * max(frame.shape[:2])))


def _mtcnn_mouth(boxes, probs, points) -> Mouth | None:
    if boxes is None:
        return None
    # Object arrays under numpy 2: make them numbers.
    boxes, probs = np.asarray(boxes, np.float32), np.asarray(probs, np.float32)
    points = np.asarray(points, np.float32)
    likely = probs >= MIN_FACE_PROBABILITY
    if not likely.any():
        return None
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    left, right = points[np.flatnonzero(likely)[np.argmax(areas[likely])], 3:5]
    centre = (left + right) / 2
    return float(centre[0]), float(centre[1]), float(np.linalg.norm(right - left))


def locate_facebox(frames: list[np.ndarray]) -> list[Mouth | None]:
    """The lower middle of the face box of faces.py's preferred detector."""
    boxes = DETECTORS[resolve_detector("auto")](frames, _min_face_size(frames[0]))
    return [None if box is None else _box_mouth(box) for box in boxes]


def _box_mouth(box: tuple[float, float, float, float]) -> Mouth:
    x0, y0, x1, y1 = box
    return (x0 + BOX_MOUTH_X * (x1 - x0), y0 + BOX_MOUTH_Y * (y1 - y0),
            BOX_MOUTH_WIDTH * (x1 - x0))  # fmt: skip


def locate_centre(frames: list[np.ndarray]) -> list[Mouth | None]:
    """Finds nothing: the track takes the centre square of the frame (found stays False)."""
    return [None] * len(frames)


# In fallback order; the package each needs (None: always there).
LOCATORS: dict[str, Locator] = {
    "facemesh": locate_facemesh,
    "mtcnn": locate_mtcnn,
    "facebox": locate_facebox,
    "centre": locate_centre,
}
PACKAGES = {"facemesh": "mediapipe", "mtcnn": "facenet_pytorch", "facebox": None, "centre": None}


def available(name: str) -> bool:
    package = PACKAGES[name]
    return package is None or importlib.util.find_spec(package) is not None


def resolve_locator(name: str) -> str:
    """`auto` means the first available locator of LOCATORS; an unknown name, or one whose
    package is not installed, is refused here."""
    if name == "auto":
        return next(locator for locator in LOCATORS if available(locator))
    if name not in LOCATORS:
        raise ValueError(f"unknown mouth locator {name!r} (known: auto, {', '.join(LOCATORS)})")
    if not available(name):
        raise ValueError(
            f"mouth locator {name!r} needs the Python package {PACKAGES[name]!r}, which is not "
            f"installed; use auto or one of {', '.join(n for n in LOCATORS if available(n))}"
        )
    return name


def fallbacks(name: str) -> list[str]:
    """The locators tried for a window, from `name` on, in registry order; MTCNN only where
    it is the one asked for (or the first installed): as the face mesh's fallback it would
    import torch into every worker (~0.7 GB) and take 165-280 ms a frame, for a window on
    which the mesh found no face at all (BlazeFace's box comes next, then the centre)."""
    order = list(LOCATORS)
    return [locator for locator in order[order.index(name) :]
            if available(locator) and (locator != "mtcnn" or locator == name)]  # fmt: skip


def locate_mouths(
    frames: list[np.ndarray], locator: str, detect_size: int = DETECT_SIZE
) -> list[Mouth | None]:
    """Per frame the mouth in full-resolution pixels, found on a downscaled copy."""
    small, scales = zip(*(downscale(frame, detect_size) for frame in frames), strict=True)
    mouths = LOCATORS[locator](list(small))
    return [
        None if mouth is None else tuple(v / scale for v in mouth)
        for mouth, scale in zip(mouths, scales, strict=True)
    ]


def downscale(frame: np.ndarray, longest: int) -> tuple[np.ndarray, float]:
    """The frame at `longest` pixels on its longer side (never enlarged), and the scale.

    INTER_AREA by a whole factor (a fast box filter), then INTER_LINEAR for what is left
    (under 2x, so nothing aliases): at 1280 x 720 to 480 x 270 about 7x faster than
    INTER_AREA in one step (1.3 ms against 8.7), with the face mesh's
    mouth within 0.6 px of where one-step INTER_AREA puts it (on a 357 px wide mouth).
    """
    height, width = frame.shape[:2]
    scale = min(1.0, longest / max(height, width))
    if scale == 1.0:
        return frame, 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    step = int(1 / scale)
    if step > 1:
        frame = cv2.resize(frame, (width // step, height // step), interpolation=cv2.INTER_AREA)
    return cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR), scale


# --------------------------------------------------------------------------- the track


def stabilise(mouths: list[Mouth | None], shape: tuple[int, int], margin: float) -> np.ndarray:
    """One crop square per frame (float32 [T, 4]).

    The side is the window's: margin x the median mouth width. Centres of frames without a
    mouth are interpolated from their neighbours (held at the window's ends); then all are
    smoothed; a mouth fill_between interpolated counts as one. Without any mouth: the centre
    square of CENTRE_SHARE of the shorter side.
    """
    known = np.array([mouth is not None for mouth in mouths])
    height, width = shape
    if not known.any():
        centres = np.tile((width / 2, height / 2), (len(mouths), 1))
        side = CENTRE_SHARE * min(height, width)
    else:
        seen = np.array([mouth for mouth in mouths if mouth is not None], np.float64)
        times = np.arange(len(mouths))
        centres = np.stack(
            [np.interp(times, times[known], seen[:, axis]) for axis in (0, 1)], axis=1
        )
        centres = smooth(centres, SMOOTH_FRAMES)
        side = margin * float(np.median(seen[:, 2]))
    half = max(round(side), 1) / 2  # whole pixels: every crop has the same scale
    return np.hstack([centres - half, centres + half]).astype(np.float32)


def smooth(values: np.ndarray, width: int) -> np.ndarray:
    """A centred median filter (landmark outliers go) then a 3-frame moving average (what
    jitter is left goes), along axis 0. Windows are cut short at the ends rather than padded
    with the end value: the first frame's landmarks (found by detection, the rest by
    tracking) are the likeliest outlier, and padding would give them three votes of five."""
    median = _sliding(values, width, np.nanmedian)
    return _sliding(median, 3, np.nanmean)


def _sliding(values: np.ndarray, width: int, reduce: Callable) -> np.ndarray:
    half = width // 2
    padded = np.pad(values, ((half, half), (0, 0)), constant_values=np.nan)
    return reduce(np.lib.stride_tricks.sliding_window_view(padded, width, axis=0), axis=-1)


def _check_frames(frames: list[np.ndarray], size: int, margin: float, every: int) -> None:
    if not frames:
        raise ValueError("mouth_track needs at least one frame")
    shape = frames[0].shape
    if len(shape) != 3 or shape[2] != 3 or any(f.shape != shape for f in frames):
        raise ValueError(f"frames must be RGB [H, W, 3] of one size (first is {shape})")
    if any(f.dtype != np.uint8 for f in frames):
        raise ValueError("frames must be uint8")
    if size < 1 or margin <= 0:
        raise ValueError(f"size must be >= 1 and margin > 0 (got {size}, {margin})")
    if every < 1:
        raise ValueError(f"locate_every must be >= 1 (got {every})")


def mouth_track(
    frames: list[np.ndarray],
    size: int,
    locator: str = "auto",
    *,
    margin: float = MARGIN,
    detect_size: int = DETECT_SIZE,
    locate_every: int = 1,
) -> MouthTrack:
    """Stabilised size x size grey mouth crops of a window of consecutive RGB frames.

    The locator (`auto`: the first available) is tried first; a window on which it finds no
    mouth at all goes down the fallback order, ending at the frame centre. It looks at every
    `locate_every`-th frame (0, k, 2k, ...) and the last; the frames between take the mouth
    interpolated from the located frames on either side (see fill_between: such a frame is
    `found` only where both of those were).
    """
    _check_frames(frames, size, margin, locate_every)
    name, mouths, found = track_mouths(frames, locator, detect_size, locate_every)
    boxes = stabilise(mouths, frames[0].shape[:2], margin)
    crops = np.stack(
        [mouth_crop(frame, box, size) for frame, box in zip(frames, boxes, strict=True)]
    )
    return MouthTrack(crops=crops, found=found, boxes=boxes, locator=name)


def track_mouths(frames: list[np.ndarray], locator: str, detect_size: int = DETECT_SIZE,
                 every: int = 1) -> tuple[str, list[Mouth | None], np.ndarray]:  # fmt: skip
    """(the locator used, per frame the mouth before stabilisation, per frame found), the
    locator looking at the frames located_frames names and down the fallback order."""
    looked = located_frames(len(frames), every)
    for name in fallbacks(resolve_locator(locator)):
        seen = locate_mouths([frames[i] for i in looked], name, detect_size)
        if any(mouth is not None for mouth in seen):
            break
    return (name, *fill_between(looked, seen, len(frames)))


def located_frames(count: int, every: int) -> list[int]:
    """The frames the locator looks at: 0, every, 2 x every, ... and always the last (the
    frames after the last multiple would otherwise have no located frame on their right)."""
    return sorted({*range(0, count, every), count - 1})


def fill_between(looked: list[int], seen: list[Mouth | None],
                 count: int) -> tuple[list[Mouth | None], np.ndarray]:  # fmt: skip
    """Every frame's mouth and found, from the mouths `seen` on the frames `looked` (sorted,
    the first and last among them).

    A frame between two located ones takes their mouths interpolated linearly (centre and
    width), or the one side's mouth where the other found none, or None where neither did.
    It counts as found only where both sides were found: a mouth copied from one side is an
    estimate on a frame nobody looked at, and `found` tells a model what was seen.
    """
    mouths: list[Mouth | None] = [None] * count
    found = np.zeros(count, bool)
    for (left, before), (right, after) in itertools.pairwise(zip(looked, seen, strict=True)):
        for frame in range(left + 1, right):
            mouths[frame] = _between(before, after, (frame - left) / (right - left))
            found[frame] = before is not None and after is not None
    for frame, mouth in zip(looked, seen, strict=True):
        mouths[frame], found[frame] = mouth, mouth is not None
    return mouths, found


def _between(before: Mouth | None, after: Mouth | None, share: float) -> Mouth | None:
    if before is None or after is None:
        return after if before is None else before
    return tuple(a + share * (b - a) for a, b in zip(before, after, strict=True))


def mouth_crop(frame: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """The square `box` (whole-pixel side, fractional corner) as a size x size grey crop.

    faces.square_crop cuts the square at the nearest whole pixel (black outside the frame)
    and resizes it with INTER_AREA; the fraction left over is then shifted back on the small
    crop. Without that shift, a centre that wanders by a tenth of a pixel across a rounding
    boundary would move the whole crop by a pixel: a still face would not give still crops.
    """
    x0, y0, x1, _ = (float(v) for v in box)
    side = round(x1 - x0)
    left, top = round(x0), round(y0)
    whole = square_crop(frame, (left, top, left + side, top + side), 1.0, size)
    grey = cv2.cvtColor(whole, cv2.COLOR_RGB2GRAY)
    scale = size / side
    shift = np.float32([[1, 0, (x0 - left) * scale], [0, 1, (y0 - top) * scale]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # crop pixel u shows u + shift
    return cv2.warpAffine(grey, shift, (size, size), flags=flags, borderMode=cv2.BORDER_REPLICATE)
