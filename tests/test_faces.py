"""Face detectors on real faces: the carphone talking head, the astronaut and LFW faces.

Their reference boxes (avcache.sample.sources) were measured once with MTCNN, so agreement
with them is agreement with MTCNN's framing.
"""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from avcache.cache import open_cache
from avcache.preprocess.config import FacesConfig, PreprocessConfig
from avcache.preprocess.faces import detect_faces, resolve_detector
from avcache.preprocess.pipeline import Preprocessor
from avcache.preprocess.run import main
from avcache.sample.sources import (
    ASTRONAUT,
    CARPHONE,
    LFW,
    astronaut_portrait,
    carphone_portrait,
    lfw_portrait,
    package_file,
)
from tests.media import talking_face, write_labels

pytest.importorskip("mediapipe")
MEDIAPIPE = ("mediapipe", "mediapipe-full")


def iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    overlap = width * height
    return overlap / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap)


@pytest.fixture(scope="module")
def real_faces() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """12 carphone frames across the clip (the head turns), the astronaut, 12 LFW faces;
    with the MTCNN box of each."""
    carphone = carphone_portrait(package_file(*CARPHONE))
    picks = np.linspace(0, len(carphone.frames) - 1, 12).astype(int)
    portraits = [carphone.at(i) for i in picks]
    portraits.append(astronaut_portrait(package_file(*ASTRONAUT)).at(0))
    lfw = np.load(package_file(*LFW))
    portraits += [lfw_portrait(i, lfw[i]).at(0) for i in range(0, 96, 8)]
    frames, boxes = zip(*portraits, strict=True)
    return list(frames), list(boxes)


@pytest.mark.parametrize("detector", MEDIAPIPE)
def test_mediapipe_finds_real_faces_framed_as_mtcnn_frames_them(detector, real_faces):
    frames, reference = real_faces
    config = FacesConfig()
    found = [detect_faces([frame], detector, config)[0] for frame in frames]
    short_range = detector == "mediapipe"
    assert sum(box is not None for box in found) >= (len(frames) if short_range else 20)
    overlaps = [iou(box, ref) for box, ref in zip(found, reference, strict=True) if box]
    assert min(overlaps) > 0.5 and np.median(overlaps) > 0.7


@pytest.mark.parametrize("detector", MEDIAPIPE)
def test_mediapipe_finds_no_face_where_there_is_none(detector):
    pattern = np.zeros((240, 320, 3), np.uint8)
    cv2.rectangle(pattern, (40, 40), (280, 200), (0, 180, 255), -1)
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert detect_faces([pattern, noise], detector, FacesConfig()) == [None, None]


def test_mediapipe_drops_faces_smaller_than_min_face_size(real_faces):
    astronaut = real_faces[0][12]  # the face is ~90 px of 512: ~60 px once at detect_size
    assert detect_faces([astronaut], "mediapipe", FacesConfig(min_face_size=40))[0] is not None
    assert detect_faces([astronaut], "mediapipe", FacesConfig(min_face_size=120)) == [None]


def test_mediapipe_writes_nothing_to_stderr():
    """Its C++ graph logs on start-up, past Python's logging: a worker must stay quiet."""
    code = (
        "import numpy as np\n"
        "from avcache.preprocess.faces import DETECTORS\n"
        "DETECTORS['mediapipe']([np.zeros((64, 64, 3), np.uint8)] * 2, 20)\n"
        "print('detected')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "detected\n" and done.stderr == ""


def test_auto_means_mediapipe_and_the_cache_records_it(tmp_path):
    assert resolve_detector("auto") == "mediapipe"
    data = tmp_path / "data"
    (data / "trainset").mkdir(parents=True)
    talking_face(data / "trainset" / "a.mp4", seconds=1.0, size=320)
    write_labels(data / "train_label.txt", [("a.mp4", 0)])
    out = tmp_path / "cache"
    assert main(["--data", str(data), "--out", str(out), "--jobs", "1", "--quiet",
                 "faces.frames=2", "faces.size=32"]) == 0  # fmt: skip
    cache = open_cache(out)
    assert cache.config["faces"]["detector"] == "mediapipe"
    assert all(sample.face_found.all() for sample in cache.iter_samples())


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here")
def test_a_gpu_detector_without_a_gpu_is_refused_before_any_work(tmp_path):
    data = tmp_path / "data"
    (data / "trainset").mkdir(parents=True)
    write_labels(data / "train_label.txt", [("a.mp4", 0)])
    with pytest.raises(ValueError, match=r"faces\.detector=mtcnn-cuda needs a CUDA GPU"):
        Preprocessor(PreprocessConfig(faces=FacesConfig(detector="mtcnn-cuda")), data,
                     tmp_path / "cache")  # fmt: skip
    assert not (tmp_path / "cache").exists()
