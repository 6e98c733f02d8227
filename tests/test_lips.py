"""Mouth tracks on real faces: the astronaut (whose mouth the sample renderer knows and can
open), the carphone talking head, and a filmed talking face; noise where there is no face.

MediaPipe runs for real; where MTCNN (a second, independent model) is installed, the face
mesh's mouth is checked against its mouth corners.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import cv2
import numpy as np
import pytest

from avcache.cache import open_cache
from avcache.common.config import config_hash, load_config, to_dict
from avcache.preprocess.config import FacesConfig, PreprocessConfig, TracksConfig
from avcache.preprocess.faces import _stderr_silenced, detect_faces
from avcache.preprocess.lips import (
    LOCATORS,
    MARGIN,
    _face_mesh,
    _mesh_mouth,
    available,
    fallbacks,
    fill_between,
    forget_face,
    locate_facemesh,
    locate_mouths,
    located_frames,
    mouth_crop,
    mouth_track,
    resolve_locator,
    stabilise,
)
from avcache.preprocess.pipeline import validate_tracks
from avcache.preprocess.run import main as preprocess_main
from avcache.sample.manipulations import MAX_JAW_DROP, open_mouth
from avcache.sample.sources import (
    ASTRONAUT,
    ASTRONAUT_BOX,
    ASTRONAUT_MOUTH,
    CARPHONE,
    astronaut_portrait,
    carphone_portrait,
    decode_video,
    package_file,
)
from avcache.train.runs import resolved
from tests.media import talking_face

pytest.importorskip("mediapipe")
HAS_MTCNN = importlib.util.find_spec("facenet_pytorch") is not None
FINDERS = [name for name in LOCATORS if name != "centre" and (HAS_MTCNN or name != "mtcnn")]
DARK = 85  # grey level below which a crop pixel counts as the open mouth's gap
# How far (px of a 480 px frame) the default tracks.locate_every may move a stabilised mouth
# centre from the every-frame track on the carphone's first second: at most 2.8 px there at
# k = 4 (2.1 at 3), and a 95th percentile of 4.4 px over all of its windows (3.1 at 3;
# python -m benchmarks.mouth_bench).
LOCATED_EVERY_KTH_PX = 4.0


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return astronaut_portrait(package_file(*ASTRONAUT)).frames[0]


@pytest.fixture(scope="module")
def carphone() -> list[np.ndarray]:
    """The carphone talking head's first second (25 frames): a real face that talks, turns
    and moves."""
    return list(carphone_portrait(package_file(*CARPHONE)).frames[:25])


def centres(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, :2] + boxes[:, 2:]) / 2


def noisy(frame: np.ndarray, count: int, seed: int = 0) -> list[np.ndarray]:
    """A still camera: the same frame with fresh sensor noise each time."""
    rng = np.random.default_rng(seed)
    return [np.clip(frame + rng.normal(0, 2, frame.shape), 0, 255).astype(np.uint8)
            for _ in range(count)]  # fmt: skip


def noise_frame(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("locator", FINDERS)
def test_the_mouth_of_a_real_face_is_where_the_renderer_put_it(locator, astronaut):
    track = mouth_track(noisy(astronaut, 4), 88, locator)
    x0, y0, x1, y1 = ASTRONAUT_BOX
    mx, my, width = ASTRONAUT_MOUTH
    assert track.locator == locator and track.found.all()
    for cx, cy in centres(track.boxes):
        assert x0 < cx < x1 and (y0 + y1) / 2 < cy < y1  # the face box's lower half
        assert abs(cx - mx) < 0.15 * width and abs(cy - my) < 0.25 * width
    side = track.boxes[0, 2] - track.boxes[0, 0]
    assert 0.7 * width < side / MARGIN < 1.3 * width


def test_a_real_talking_head_gets_steady_crops_that_follow_its_mouth(carphone):
    track = mouth_track(carphone, 88)
    raw = np.array(locate_mouths(carphone, "facemesh"))
    assert track.locator == "facemesh" and track.found.all()
    width, smoothed = np.median(raw[:, 2]), centres(track.boxes)
    # It follows the moving mouth, and jitters less than the landmarks do frame by frame.
    assert np.abs(smoothed - raw[:, :2]).max() < 0.1 * width
    jitter = np.abs(np.diff(raw[:, :2], 2, axis=0)).mean()
    assert np.abs(np.diff(smoothed, 2, axis=0)).mean() < 0.5 * jitter
    boxes = carphone_portrait(package_file(*CARPHONE)).boxes[:25]  # MTCNN's, measured once
    height = boxes[:, 3] - boxes[:, 1]
    assert ((smoothed[:, 1] > boxes[:, 1] + height / 2) & (smoothed[:, 1] < boxes[:, 3])).all()
    assert ((smoothed[:, 0] > boxes[:, 0]) & (smoothed[:, 0] < boxes[:, 2])).all()


@pytest.mark.skipif(not HAS_MTCNN, reason="facenet-pytorch is not installed")
def test_the_face_mesh_and_mtcnn_agree_on_a_real_mouth(carphone):
    window = carphone[::3]
    mesh = np.array(locate_mouths(window, "facemesh"))
    mtcnn = np.array(locate_mouths(window, "mtcnn"))
    width = np.median(mesh[:, 2])
    assert np.abs(mesh[:, :2] - mtcnn[:, :2]).max() < 0.2 * width
    assert 0.8 < np.median(mtcnn[:, 2]) / width < 1.25


def test_a_filmed_talking_face_keeps_its_mouth_in_the_lower_half_of_its_face_box(tmp_path):
    frames = list(decode_video(talking_face(tmp_path / "face.mp4", seconds=1.0, size=192)))
    track = mouth_track(frames, 88)
    assert track.crops.shape == (25, 88, 88) and track.found.all()
    faces = detect_faces(frames, "mediapipe", FacesConfig())
    for (cx, cy), face in zip(centres(track.boxes), faces, strict=True):
        x0, y0, x1, y1 = face
        assert x0 < cx < x1 and (y0 + y1) / 2 < cy < y1


def test_a_still_face_gives_still_crops(astronaut):
    track = mouth_track(noisy(astronaut, 16), 88)
    spread = centres(track.boxes).max(axis=0) - centres(track.boxes).min(axis=0)
    assert (spread < 0.25).all()  # pixels of the 512 px frame
    sides = track.boxes[:, 2] - track.boxes[:, 0]
    assert np.allclose(sides, sides[0], atol=1e-3)  # one side for the window, float32's
    assert np.allclose(track.boxes[:, 3] - track.boxes[:, 1], sides, atol=1e-3)
    median = np.median(track.crops, axis=0)
    # What is left is the sensor noise: the same frame twice differs by about 1 grey level.
    assert np.abs(track.crops - median).mean(axis=(1, 2)).max() < 1.5


def test_the_dark_gap_of_the_crops_follows_a_jaw_that_opens_and_closes(astronaut):
    # Three syllables' worth of jaw, growing louder (pixels of the 512 px frame).
    jaw = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(24) / 8) * np.linspace(0.4, 1, 24)
    openings = np.clip(jaw, 0, 1) * MAX_JAW_DROP * ASTRONAUT_MOUTH[2]
    frames = []
    for opening in openings:
        frame = astronaut.copy()
        open_mouth(frame, ASTRONAUT_MOUTH, float(opening))
        frames.append(frame)
    track = mouth_track(frames, 88)
    assert track.found.all()
    gap = (track.crops < DARK).sum(axis=(1, 2))
    assert np.corrcoef(gap, openings)[0, 1] > 0.8
    assert gap[openings.argmax()] > 5 * max(gap[openings.argmin()], 1)


def test_a_frame_without_a_face_takes_its_neighbours_centre(astronaut):
    frames = noisy(astronaut, 9)
    frames[4] = noise_frame(astronaut.shape)
    track = mouth_track(frames, 64)
    assert track.crops.shape == (9, 64, 64) and track.crops.dtype == np.uint8
    assert track.found.tolist() == [True] * 4 + [False] + [True] * 4
    middle = centres(track.boxes)
    assert np.abs(middle[4] - (middle[3] + middle[5]) / 2).max() < 0.25
    assert np.abs(middle[4] - ASTRONAUT_MOUTH[:2]).max() < 0.25 * ASTRONAUT_MOUTH[2]


def test_a_window_without_any_face_falls_back_to_the_frame_centre():
    frames = [noise_frame((240, 320, 3), seed) for seed in range(5)]
    track = mouth_track(frames, 88)
    assert track.locator == "centre" and not track.found.any()
    assert track.crops.shape == (5, 88, 88) and track.crops.dtype == np.uint8
    assert (track.boxes == np.float32([100, 60, 220, 180])).all()  # half the shorter side
    grey = cv2.cvtColor(frames[0][60:180, 100:220], cv2.COLOR_RGB2GRAY)
    resized = cv2.resize(grey, (88, 88), interpolation=cv2.INTER_AREA)
    assert np.abs(track.crops[0].astype(int) - resized).mean() < 3


@pytest.mark.parametrize("locator", list(LOCATORS))
def test_every_locator_gives_the_same_shapes(locator, astronaut):
    if locator == "mtcnn" and not HAS_MTCNN:
        pytest.skip("facenet-pytorch is not installed")
    track = mouth_track([astronaut] * 3, 32, locator)
    assert track.locator == locator
    assert track.crops.shape == (3, 32, 32) and track.crops.dtype == np.uint8
    assert track.found.shape == (3,) and track.found.dtype == bool
    assert track.boxes.shape == (3, 4) and track.boxes.dtype == np.float32
    assert track.found.all() == (locator != "centre")


def test_one_frame_is_a_window(astronaut):
    track = mouth_track([astronaut], 88)
    assert track.crops.shape == (1, 88, 88) and track.found.tolist() == [True]
    assert np.abs(centres(track.boxes)[0] - ASTRONAUT_MOUTH[:2]).max() < 0.25 * 43


def test_large_frames_are_searched_downscaled_and_cropped_at_full_resolution(carphone):
    small = mouth_track(carphone[:10], 88)
    large = [cv2.resize(f, (704, 576), interpolation=cv2.INTER_CUBIC) for f in carphone[:10]]
    track = mouth_track(large, 88)  # found on a 480 x 393 copy, cut from the 704 x 576 frame
    width = small.boxes[0, 2] - small.boxes[0, 0]
    assert np.abs(track.boxes / 4 - small.boxes).max() < 0.1 * width
    # The same picture: the 704 px frames are the 176 px ones, four times as large.
    assert np.abs(track.crops.astype(int) - small.crops).mean() < 8


def test_outside_the_frame_the_crop_is_black(astronaut):
    box = np.float32([-40, 100, 40, 180])  # the left half lies outside the frame
    crop = mouth_crop(astronaut, box, 80)
    assert (crop[:, :39] == 0).all() and (crop[:, 41:] > 0).mean() > 0.99
    inside = cv2.cvtColor(astronaut[100:180, 0:40], cv2.COLOR_RGB2GRAY)
    assert np.abs(crop[:, 41:].astype(int) - inside[:, 1:]).mean() < 2


def test_auto_and_the_fallback_order():
    assert resolve_locator("auto") == "facemesh"
    assert fallbacks("facebox") == ["facebox", "centre"]
    # MTCNN (torch in every worker, 165-280 ms a frame) only where it is the locator asked for
    assert fallbacks("facemesh") == ["facemesh", "facebox", "centre"]
    if available("mtcnn"):
        assert fallbacks("mtcnn") == ["mtcnn", "facebox", "centre"]


def test_a_faceless_window_does_not_load_torch(tmp_path):
    """The face mesh finds nothing on a test pattern; its fallbacks must not bring MTCNN's
    torch into the worker (0.7 GB each)."""
    script = (
        "import sys, numpy as np\n"
        "from avcache.preprocess.lips import mouth_track\n"
        "frames = [np.full((96, 128, 3), 60 + 5 * k, np.uint8) for k in range(6)]\n"
        "track = mouth_track(frames, 32)\n"
        "print(track.locator, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)  # fmt: skip
    assert done.stdout.split() == ["centre", "False"]


@pytest.mark.parametrize("name", ["haar", "FaceMesh", ""])
def test_unknown_locators_are_refused_with_the_known_ones(name, astronaut):
    known = "auto, facemesh, mtcnn, facebox, centre"
    with pytest.raises(ValueError, match=f"unknown mouth locator {name!r} \\(known: {known}\\)"):
        resolve_locator(name)
    with pytest.raises(ValueError, match="unknown mouth locator"):
        mouth_track([astronaut], 88, name)


def test_frames_of_different_sizes_are_refused(astronaut):
    with pytest.raises(ValueError, match="of one size"):
        mouth_track([astronaut, astronaut[:256]], 88)


def test_the_face_mesh_writes_nothing_to_stderr():
    """Its C++ graph logs on start-up and on every restart, past Python's logging."""
    code = (
        "from avcache.preprocess.lips import mouth_track\n"
        "from avcache.sample.sources import ASTRONAUT, astronaut_portrait, package_file\n"
        "face = astronaut_portrait(package_file(*ASTRONAUT)).frames[0]\n"
        "for window in ([face] * 3, [face[:, :400]] * 3):\n"
        "    assert mouth_track(window, 88, 'facemesh').found.all()\n"
        "print('tracked')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "tracked\n" and done.stderr == ""


# --------------------------------------------------------------------------- locate_every


@pytest.fixture(scope="module")
def carphone_480(carphone) -> list[np.ndarray]:
    """The carphone's first second in the pixels of a track's 480 px frames."""
    return [cv2.resize(f, (480, 392), interpolation=cv2.INTER_CUBIC) for f in carphone]


def test_locating_every_frame_is_the_track_as_it_was(carphone):
    """locate_every=1 (mouth_track's default): the locator on every frame, then stabilised."""
    track = mouth_track(carphone, 88, locate_every=1)
    mouths = locate_mouths(carphone, "facemesh")
    boxes = stabilise(mouths, carphone[0].shape[:2], MARGIN)
    assert track.boxes.tobytes() == boxes.tobytes()
    assert track.found.tolist() == [mouth is not None for mouth in mouths]
    crops = [mouth_crop(frame, box, 88) for frame, box in zip(carphone, boxes, strict=True)]
    assert track.crops.tobytes() == np.stack(crops).tobytes()
    assert mouth_track(carphone, 88).boxes.tobytes() == boxes.tobytes()


def test_the_default_locate_every_stays_close_to_the_full_rate_track(carphone_480):
    every = TracksConfig().locate_every
    full = mouth_track(carphone_480, 88)
    track = mouth_track(carphone_480, 88, locate_every=every)
    assert every > 1 and track.locator == full.locator == "facemesh"
    assert track.crops.shape == full.crops.shape and track.boxes.shape == full.boxes.shape
    assert track.found.all()
    apart = np.hypot(*(centres(track.boxes) - centres(full.boxes)).T)
    assert apart.max() < LOCATED_EVERY_KTH_PX
    # Whole pixels, each side a difference of float32 corners near 300 px (so rounded).
    sides = np.round(track.boxes[:, 2] - track.boxes[:, 0])
    assert np.abs(sides - np.round(full.boxes[0, 2] - full.boxes[0, 0])).max() <= 2


def test_the_locator_looks_at_every_kth_frame_and_the_last():
    assert located_frames(25, 1) == list(range(25))
    assert located_frames(25, 3) == [0, 3, 6, 9, 12, 15, 18, 21, 24]
    assert located_frames(25, 5) == [0, 5, 10, 15, 20, 24]
    assert located_frames(5, 25) == [0, 4] and located_frames(1, 3) == [0]


def test_frames_between_are_interpolated_and_found_only_between_found_frames():
    looked = [0, 3, 6, 9]
    seen = [(0.0, 30.0, 10.0), (3.0, 36.0, 13.0), None, None]
    mouths, found = fill_between(looked, seen, 10)
    assert mouths[1] == pytest.approx((1.0, 32.0, 11.0))
    assert mouths[2] == pytest.approx((2.0, 34.0, 12.0))
    assert mouths[4] == mouths[5] == (3.0, 36.0, 13.0)  # the side that found one
    assert mouths[6:] == [None] * 4
    assert found.tolist() == [True, True, True, True] + [False] * 6


def test_a_frame_between_a_found_and_a_not_found_frame_is_not_found(astronaut):
    frames = noisy(astronaut, 7)
    frames[3] = noise_frame(astronaut.shape)  # located, and no face on it
    track = mouth_track(frames, 64, "facemesh", locate_every=3)
    assert track.found.tolist() == [True, False, False, False, False, False, True]
    # The frames next to it still take the mouth found on their other side.
    assert np.abs(centres(track.boxes) - ASTRONAUT_MOUTH[:2]).max() < 0.25 * ASTRONAUT_MOUTH[2]
    full = mouth_track(frames, 64, "facemesh")
    assert full.found.tolist() == [True, True, True, False, True, True, True]


def test_validation_refuses_locate_every_below_one_and_takes_any_track_length(astronaut):
    with pytest.raises(ValueError, match=r"tracks\.locate_every 1 to"):
        validate_tracks(TracksConfig(windows=1, frames=25, locate_every=0))
    for fits in (1, 25, 26):  # past the track's frames: its first and last alone
        validate_tracks(TracksConfig(windows=1, frames=25, locate_every=fits))
    validate_tracks(TracksConfig(windows=1, frames=2))  # the default k (3) on a short track
    with pytest.raises(ValueError, match="locate_every must be >= 1"):
        mouth_track([astronaut], 88, locate_every=0)
    track = mouth_track([astronaut] * 4, 88, "facemesh", locate_every=26)
    assert track.found.all(), "the first and last located, those between interpolated"


def test_locate_every_is_hashed_only_where_it_changes_what_a_cache_holds():
    """At 1 (what every cache made before the key did) and without tracks it is left out, so
    those caches keep their hash; a recorded config without it was located on every frame."""
    before = {"windows", "frames", "fps", "size", "locator", "frame_size", "audio_rate", "quality"}
    every_frame = load_config(PreprocessConfig, None, ["tracks.windows=1", "tracks.locate_every=1"])
    assert set(to_dict(every_frame)["tracks"]) == before
    no_tracks = load_config(PreprocessConfig, None, ["tracks.windows=0"])
    assert set(to_dict(no_tracks)["tracks"]) == before
    default = PreprocessConfig()
    assert to_dict(default)["tracks"]["locate_every"] == TracksConfig().locate_every
    assert config_hash(default) != config_hash(every_frame)
    assert resolved(to_dict(every_frame), "index.json").tracks.locate_every == 1
    assert resolved(to_dict(default), "index.json") == default


def test_the_preprocessor_locates_the_mouth_as_tracks_locate_every_says(tmp_path):
    root = tmp_path / "data"
    (root / "trainset").mkdir(parents=True)
    talking_face(root / "trainset" / "talk.mp4", seconds=1.2, size=192)
    (root / "train_label.txt").write_text("video_name,target\ntalk.mp4,0\n")
    lips = {}
    for every in (1, 25):  # every frame, or the window's first and last alone
        out = tmp_path / f"every-{every}"
        assert preprocess_main(["--data", str(root), "--out", str(out), "--quiet", "--jobs", "1",
                                "faces.frames=0", "audit.facts=false", "tracks.windows=1",
                                f"tracks.locate_every={every}"]) == 0  # fmt: skip
        lips[every] = next(open_cache(out).iter_samples("train")).tracks.lips
    assert lips[1].shape == lips[25].shape == (1, 25, 88, 88)
    difference = np.abs(lips[1].astype(int) - lips[25]).mean(axis=(2, 3))[0]
    assert (difference > 0).any() and difference.mean() < 10  # the same mouth, placed otherwise


def test_a_window_after_another_face_is_located_as_after_a_restarted_mesh(carphone, astronaut):
    """The black frame that makes the mesh forget the previous window's face gives the
    landmarks a restarted graph gives, bit for bit, at a fraction of the restart's cost."""
    still = noisy(cv2.resize(astronaut, carphone[0].shape[1::-1]), 6)
    mesh = _face_mesh()
    locate_facemesh(carphone[:6])  # a face followed: the next window must not start from it
    forgotten = locate_facemesh(still)
    with _stderr_silenced():
        mesh.reset()
    restarted = [_mesh_mouth(mesh, frame) for frame in still]
    assert all(mouth is not None for mouth in forgotten)
    assert forgotten == restarted
    locate_facemesh(carphone[:6])
    followed = [_mesh_mouth(mesh, frame) for frame in still]  # not forgotten: tracked on
    assert followed != restarted, "the check can fail: a followed face lands elsewhere"
    forget_face(mesh, still[0].shape)
    assert _mesh_mouth(mesh, np.zeros_like(still[0])) is None
