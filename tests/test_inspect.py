"""inspect: summary, verify, sheets, gallery and the notebook API, on a small hand-made cache.

The cache is written directly with ShardWriter (no media, no ffmpeg): 4 shards over
three splits, with known labels, missing audio, frames without a face and failures.
Faces are flat colours by label (fake green, real blue, unknown grey) so that a
rendered sheet can be checked for what it shows. The screenshot tests render the
sheet and the gallery in headless Chromium (Debian's `chromium`, installed by
`make setup`) and look at the pixels.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import h5py
import numpy as np
import pytest
from matplotlib import image as mpimg

from avcache.cache import open_cache, schema
from avcache.cache.index import Failure, ShardRecord, build_index, write_failures
from avcache.cache.reader import ShardReader
from avcache.cache.writer import ShardWriter
from avcache.common.atomic import write_json_atomic
from avcache.inspection.cli import main
from avcache.inspection.gallery import THUMB_SIZE, thumbnail
from avcache.inspection.sheets import LEGACY_AXES, mel_axes_of, sheet_layout

FRAMES, SIZE = 2, 16
WEIRD = 'a "quoted" <b>&amp; vidéo 視頻.mp4'  # names come from label files: anything goes
COLOURS = {1: (0, 200, 0), 0: (0, 0, 200), -1: (128, 128, 128)}
T, F = True, False
# split -> shards -> (name, label, has_audio, face_found per frame)
LAYOUT = {
    "train": [
        [("train-0.mp4", 1, T, (T, T)), ("train-1.mp4", 0, T, (T, F)),
         ("train-2.mp4", 1, F, (T, T)), ("train-3.mp4", 0, T, (F, F)),
         ("train-4.mp4", 1, T, (F, T))],
        [("train-5.mp4", 0, T, (T, T)), ("train-6.mp4", 0, T, (T, T)),
         ("train-7.mp4", 1, T, (T, T))],
    ],
    "val": [[(WEIRD, 1, T, (T, T)), ("val-1.mp4", 0, F, (T, T)), ("val-2.mp4", 1, T, (T, T)),
             ("val-3.mp4", 0, T, (T, T))]],
    "test": [[("test-0.mp4", -1, T, (T, F)), ("test-1.mp4", -1, T, (T, F))]],
}  # fmt: skip
FAILURES = [
    Failure("train", "broken-0.mp4", "decode", "ffmpeg: moov atom not found"),
    Failure("train", "broken-1.mp4", "decode", "ffmpeg: moov atom not found"),
    Failure("val", "gone.mp4", "resolve", "missing file"),
]
CONFIG = {"audio": {"mode": "baseline"}, "faces": {"frames": FRAMES, "size": SIZE}}


def make_sample(number: int, name: str, label: int, audio: bool, found) -> schema.Sample:
    rng = np.random.default_rng(number)
    ramp = np.linspace(0, 200, 256, dtype=np.float32)[:, None]  # brighter towards high rows
    mel = np.clip(ramp + rng.normal(0, 20, (256, 256)), 0, 255).astype(np.uint8)
    return schema.Sample(
        video_name=name,
        label=label,
        mel=mel if audio else np.zeros((256, 256), np.uint8),
        faces=np.full((FRAMES, SIZE, SIZE, 3), COLOURS[label], np.uint8),
        has_audio=audio,
        face_found=np.array(found),
        face_box=rng.random((FRAMES, 4), dtype=np.float32) * 100,
        duration=np.float32(2.0 + number / 10),
    )


def write_small_cache(root: Path) -> dict[str, schema.Sample]:
    """The LAYOUT above as a finished cache; returns the samples by name."""
    samples, records, number = {}, [], 0
    for split, shards in LAYOUT.items():
        for shard_number, rows in enumerate(shards):
            rel = f"shards/{split}-{shard_number:05d}.h5"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            with ShardWriter(
                root / rel, schema.ShardLayout(frames=FRAMES, face_size=SIZE), split=split
            ) as writer:
                for row in rows:
                    samples[row[0]] = make_sample(number, *row)
                    writer.append(samples[row[0]])
                    number += 1
                count, digest = writer.close()
            failed = [f for f in FAILURES if f.split == split] if shard_number == 0 else []
            records.append(ShardRecord(rel, split, count, digest, failures=failed))
    write_failures(root / schema.FAILURES_FILE, records)
    write_json_atomic(root / schema.INDEX_FILE, build_index(CONFIG, "cafe0123", records))
    return samples


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, dict[str, schema.Sample]]:
    root = tmp_path_factory.mktemp("cache")
    return root, write_small_cache(root)


def load_png(path: Path) -> np.ndarray:
    """uint8 RGB pixels of a PNG."""
    pixels = mpimg.imread(path)
    return (pixels[..., :3] * 255).round().astype(np.uint8)


def near(pixels: np.ndarray, colour, tolerance: int = 12) -> int:
    """How many pixels are within `tolerance` of `colour` in every channel."""
    return int((np.abs(pixels.astype(int) - colour) <= tolerance).all(axis=-1).sum())


# summary


def test_summary_counts(small, capsys):
    root, _ = small
    assert main([str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines if line.partition(" ")[0] in LAYOUT}
    # split, samples, shards, real, fake, unknown, no audio, share of frames with a face
    assert rows["train"].split()[:8] == ["train", "8", "2", "4", "4", "0", "1", "75.0%"]
    assert rows["val"].split()[:8] == ["val", "4", "1", "2", "2", "0", "1", "100.0%"]
    assert rows["test"].split()[:8] == ["test", "2", "1", "0", "0", "2", "0", "50.0%"]
    # mel chunks hold 16 samples of 64 KiB: one chunk per shard, whatever its count
    assert rows["train"].split()[8:10] == ["2.0", "MiB"]
    on_disk = sum(path.stat().st_size for path in (root / "shards").glob("train-*.h5"))
    assert rows["train"].endswith(f"{on_disk / 2**20:.1f} MiB")
    assert "failures: 3" in lines
    assert "  train decode: 2: ffmpeg: moov atom not found (x2)" in lines
    assert "  val resolve: 1: missing file (x1)" in lines
    assert "  audio: mode=baseline" in lines
    assert "  faces: frames=2 size=16" in lines


def test_summary_bytes_per_modality_add_up(small):
    from avcache.inspection.cli import split_stats

    root, _ = small
    stats = split_stats(open_cache(root), "val")
    assert stats.bytes["mel"] == 16 * 256 * 256  # one 16-sample chunk
    assert stats.bytes["faces"] >= 4 * FRAMES * SIZE * SIZE * 3
    assert stats.bytes["mel"] + stats.bytes["faces"] + stats.bytes["other"] == stats.bytes["file"]
    assert stats.bytes["file"] == (root / "shards/val-00000.h5").stat().st_size


def test_module_entry_point_and_missing_cache(small, tmp_path):
    root, _ = small
    run = subprocess.run([sys.executable, "-m", "avcache.inspection.cli",
                          str(root)], capture_output=True,
                         text=True, cwd=Path(__file__).parents[1])  # fmt: skip
    assert run.returncode == 0 and "train" in run.stdout
    assert main([str(tmp_path / "nowhere")]) == 2


# verify


def test_verify_good_then_one_flipped_byte_inside_mel_data(small, tmp_path, capsys):
    root = tmp_path / "cache"
    shutil.copytree(small[0], root)
    assert main([str(root), "verify"]) == 0
    assert "verified 4 shards: 0 damaged" in capsys.readouterr().out
    damaged = root / "shards" / "train-00001.h5"
    with h5py.File(damaged, "r") as handle:
        before = handle[schema.MEL][1]
        offset = handle[schema.MEL].id.get_chunk_info(0).byte_offset
    data = bytearray(damaged.read_bytes())
    data[offset + 256 * 256 + 1000] ^= 0x10  # sample 1, row 3, inside the dataset's data
    damaged.write_bytes(bytes(data))
    with h5py.File(damaged, "r") as handle:
        assert (handle[schema.MEL][1] != before).sum() == 1, "the flip landed in the mel data"
    assert main([str(root), "verify"]) == 1
    captured = capsys.readouterr()
    assert "verified 4 shards: 1 damaged" in captured.out
    assert f"DAMAGED {damaged.resolve()}: sha256" in captured.err


# sheets


def test_sheet_size_and_content(small, tmp_path, capsys):
    root, _ = small
    out = tmp_path / "sheet.png"
    assert main([str(root), "sheet", "--split", "train", "--label", "fake", "-n", "3",
                 "-o", str(out)]) == 0  # fmt: skip
    assert "3 samples of train" in capsys.readouterr().out
    pixels = load_png(out)
    # 3 panels side by side: 16 + 3 * (46 + 150 + 8 + 2 * 114 + 8) px; 36 + 22 + 110 + 34 + 8 px
    assert pixels.shape == (210, 1336, 3)
    assert sheet_layout(3, FRAMES)[2:] == (1336, 210)
    assert pixels.std() > 30 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500
    face_area = 110 * 110
    assert near(pixels, COLOURS[1]) > 0.8 * 6 * face_area, "six green (fake) faces"
    assert near(pixels, COLOURS[0]) == 0, "no blue (real) face on a fake-only sheet"
    assert near(pixels, (231, 76, 60), 20) > 4 * 110, "red frames where no face was found"


def test_sheet_random_draw_is_seeded(small, tmp_path):
    root, _ = small
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for out in (a, b):
        assert main([str(root), "sheet", "--split", "train", "-n", "4", "--seed", "3",
                     "-o", str(out)]) == 0  # fmt: skip
    np.testing.assert_array_equal(load_png(a), load_png(b))


def test_palette_sheet_is_smaller_and_the_same_size(small, tmp_path):
    root, _ = small
    full, small_png = tmp_path / "full.png", tmp_path / "palette.png"
    args = [str(root), "sheet", "--split", "val", "--audio", "yes", "-o"]
    assert main([*args, str(full)]) == 0 and main([*args, str(small_png), "--palette"]) == 0
    a, b = load_png(full), load_png(small_png)
    assert a.shape == b.shape == (210, 1336, 3), "3 samples with audio: one row of 3"
    assert (
        len(np.unique(b.reshape(-1, 3), axis=0)) <= 256 < len(np.unique(a.reshape(-1, 3), axis=0))
    )
    assert small_png.stat().st_size < full.stat().st_size
    assert np.abs(a.astype(int) - b).mean() < 8


def test_mel_only_cache(tmp_path, capsys):
    """A cache preprocessed without faces (K = 0) is summarised, drawn and browsed too."""
    root = tmp_path / "cache"
    (root / "shards").mkdir(parents=True)
    with ShardWriter(
        root / "shards/a.h5", schema.ShardLayout(frames=0, face_size=SIZE), split="train"
    ) as writer:
        for number in range(3):
            sample = make_sample(number, f"m{number}.mp4", number % 2, True, (T, T))
            sample.faces, sample.face_found = sample.faces[:0], sample.face_found[:0]
            sample.face_box = sample.face_box[:0]
            writer.append(sample)
        count, digest = writer.close()
    records = [ShardRecord("shards/a.h5", "train", count, digest)]
    config = {**CONFIG, "faces": {"frames": 0, "size": SIZE}}
    write_json_atomic(root / schema.INDEX_FILE, build_index(config, "c", records))
    assert main([str(root)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("train"))
    assert row.split()[:8] == ["train", "3", "1", "2", "1", "0", "0", "-"]
    assert main([str(root), "sheet", "-o", str(tmp_path / "s.png")]) == 0
    assert load_png(tmp_path / "s.png").shape == (210, 16 + 3 * 212, 3)
    assert main([str(root), "gallery", "-o", str(tmp_path / "g")]) == 0
    thumb = load_png(tmp_path / "g/thumbs/00000-000000.png")
    assert thumb.shape == (THUMB_SIZE, THUMB_SIZE, 3)


def test_sheet_of_one_video(small, tmp_path, capsys):
    root, _ = small
    out = tmp_path / "one.png"
    assert main([str(root), "sheet", "--video", WEIRD, "-o", str(out)]) == 0
    assert f"{WEIRD} from val" in capsys.readouterr().out
    pixels = load_png(out)
    assert pixels.shape[1] == 70 + 512 + 90 + 480
    assert near(pixels, COLOURS[1]) >= 2 * 128 * 128 * 0.9, "both faces at 128 px"
    mel_box = pixels[36 + 5 : 36 + 507, 70 + 5 : 70 + 507]
    assert len(np.unique(mel_box.reshape(-1, 3), axis=0)) > 100, "a colour-mapped mel"


def test_unknown_video_and_bad_usage_exit_2(small, tmp_path, capsys):
    root, _ = small
    assert main([str(root), "sheet", "--video", "train-9.mp4", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "'train-9.mp4' is not in the cache" in err and "did you mean" in err
    assert not (tmp_path / "x.png").exists()
    assert main([str(root), "sheet", "--split", "nope"]) == 2
    assert "no split 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([str(root), "sheet", "--label", "maybe"])
    assert exit_info.value.code == 2
    assert main([str(root), "gallery", "-o", str(tmp_path / "g"), "--labels", "x.txt"]) == 2


def test_mel_axes_match_the_preprocessor():
    """The axis labels follow the settings the preprocessor records in the index: a 1 kHz
    tone from 1 s to 2 s of a 3 s clip lands on the row labelled 1 kHz and between the
    columns labelled 1 s and 2 s."""
    import librosa

    from avcache.preprocess.audio import LIBROSA_RATE, N_MELS, baseline_image, mel_settings

    axes = mel_axes_of({"mel": mel_settings("baseline")})
    assert (axes.rate, axes.n_mels) == (LIBROSA_RATE, N_MELS)
    assert axes == LEGACY_AXES["baseline"]  # what caches without the record were made with
    centres = librosa.mel_frequencies(N_MELS + 2, fmin=0, fmax=LIBROSA_RATE / 2)[1:-1]
    np.testing.assert_allclose(axes.row_of_hz(centres), (np.arange(N_MELS) + 0.5) * 2 - 0.5)
    t = np.arange(3 * LIBROSA_RATE) / LIBROSA_RATE
    tone = np.where((t >= 1) & (t < 2), np.sin(2 * np.pi * 1000 * t), 0).astype(np.float32)
    image = baseline_image(tone + 1e-4 * np.random.default_rng(0).normal(size=t.size))
    assert abs(int(image.mean(axis=1).argmax()) - axes.row_of_hz(1000.0)) <= 2
    start, stop = axes.time_extent(3.0)
    seconds = start + (np.arange(256) + 0.5) * (stop - start) / 256
    loud = seconds[image.max(axis=0) > 200]
    assert abs(loud.min() - 1.0) < 0.1 and abs(loud.max() - 2.0) < 0.1


def test_mel_axes_come_from_the_index_and_nonsense_gives_pixels():
    settings = {"sample_rate": 16000, "n_mels": 80, "hop_length": 160}
    axes = mel_axes_of({"mel": settings})
    assert (axes.rate, axes.n_mels, axes.hop) == (16000, 80, 160)
    assert mel_axes_of({"config": {"audio": {"mode": "padded"}}}) == LEGACY_AXES["padded"]
    for forged in ({"n_mels": 0}, {"hop_length": 1.5}, {"sample_rate": True}, {"n_mels": "x"}):
        assert mel_axes_of({"mel": {**settings, **forged}}) is None
    assert mel_axes_of({"mel": ["not", "a", "record"]}) is None


# gallery


class Links(HTMLParser):
    """Every src/href, and the cards (name, section) in page order."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.cards: list[tuple[str, str, dict]] = []
        self.section = ""
        self.card: dict = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[key] for key in ("src", "href") if attrs.get(key)]
        if tag == "section":
            self.section = attrs["id"]
        if tag == "figure":
            self.card = attrs
        if tag == "div" and attrs.get("class") == "name":
            self.cards.append((self.section, attrs["title"], self.card))


def write_predictions(tmp_path: Path) -> tuple[Path, Path]:
    predictions = tmp_path / "submission.csv"
    rows = [(WEIRD, 0.1), ("val-1.mp4", 0.95), ("val-2.mp4", 0.7), ("val-3.mp4", 0.5),
            ("test-0.mp4", 0.8), ("test-1.mp4", 0.99), ("train-0.mp4", 0.45)]  # fmt: skip
    with open(predictions, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("video_name", "y_pred"), *rows])
    labels = tmp_path / "test_label.txt"
    labels.write_text("video_name,target\ntest-0.mp4,0\n")
    return predictions, labels


def test_gallery_links_samples_and_mistakes_order(small, tmp_path, capsys):
    root, samples = small
    out = tmp_path / "gallery"
    predictions, labels = write_predictions(tmp_path)
    assert main([str(root), "gallery", "-o", str(out), "--predictions", str(predictions),
                 "--labels", str(labels)]) == 0  # fmt: skip
    assert "train 8, val 4, test 2 samples, 5 mistakes" in capsys.readouterr().out
    page = Links()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    assert page.links and all(not Path(link).is_absolute() and ":" not in link
                              for link in page.links)  # fmt: skip
    assert all((out / link).is_file() for link in page.links)
    shown = [name for section, name, _ in page.cards if section == "samples"]
    assert shown == list(samples)  # every sample once, in cache order; the odd name escaped
    mistakes = [name for section, name, _ in page.cards if section == "mistakes"]
    # |p - truth| on the wrong side of 0.5: val-1 0.95, WEIRD 0.9, test-0 0.8 (its truth from
    # the label file), train-0 0.55, val-3 0.5 (0.5 counts as fake); test-1 has no truth
    assert mistakes == ["val-1.mp4", WEIRD, "test-0.mp4", "train-0.mp4", "val-3.mp4"]
    cards = {name: attrs for section, name, attrs in page.cards if section == "samples"}
    assert cards["val-1.mp4"]["data-audio"] == "no" and cards["test-0.mp4"]["data-label"] == "real"
    assert cards["test-1.mp4"]["data-label"] == "unknown" and cards[WEIRD]["data-split"] == "val"


def test_gallery_cap_says_what_it_capped(small, tmp_path, capsys):
    root, _ = small
    out = tmp_path / "gallery"
    assert main([str(root), "gallery", "-o", str(out), "-n", "3", "--split", "train"]) == 0
    printed = capsys.readouterr().out
    assert "  train: showing the first 3 of 8 (--limit 3)" in printed.splitlines()
    page = Links()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    assert [name for _, name, _ in page.cards] == ["train-0.mp4", "train-1.mp4", "train-2.mp4"]
    assert sorted(p.name for p in (out / "thumbs").iterdir()) == [
        "00000-000000.png", "00000-000001.png", "00000-000002.png"]  # fmt: skip


def test_gallery_refuses_bad_predictions_and_notes_strangers(small, tmp_path, capsys):
    root, _ = small
    gallery = ["gallery", "-o", str(tmp_path / "g"), "--predictions"]
    bad = tmp_path / "bad.csv"
    bad.write_text("video_name,y_pred\nval-1.mp4,0.2\nval-2.mp4,1.7\n")
    assert main([str(root), *gallery, str(bad)]) == 2
    assert f"{bad}:3: expected video_name,P(fake) in [0, 1]" in capsys.readouterr().err
    good = tmp_path / "good.csv"
    good.write_text("video_name,y_pred\nval-1.mp4,0.9\nval-3.mp4,0.8\nelsewhere.mp4,0.5\n")
    assert main([str(root), *gallery, str(good), "-n", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "  mistakes: showing the 1 most confident of 2" in printed
    assert "  1 predicted videos are not in the samples listed" in printed


def test_thumbnail_shows_mel_and_faces(small):
    _, samples = small
    lut = np.stack([np.arange(256)] * 3, axis=1).astype(np.uint8)  # grey: pixels = mel values
    image = thumbnail(samples["train-1.mp4"], lut)
    size = THUMB_SIZE  # two frames: one row of two tiles as tall as the mel, 2 px apart
    assert image.shape == (size, size + 2 * (size + 2), 3)
    assert image[:10, :size].mean() > image[-10:, :size].mean() + 100, "high bins at the top"
    assert tuple(image[size // 2, size + 2 + size // 2]) == COLOURS[0], "frame 0: a real face"
    second = size + 2 + size + 2
    assert tuple(image[size // 2, second + size // 2]) == COLOURS[0]
    assert tuple(image[size // 2, second + 1]) == (231, 76, 60), "frame 1: red, no face found"
    assert tuple(image[size // 2, size + 2 + 1]) == COLOURS[0], "frame 0: no frame"


# notebook API


def test_notebook_api_returns_what_was_written(small, monkeypatch):
    root, samples = small
    cache = open_cache(root)
    for name in (WEIRD, "train-6.mp4", "test-1.mp4"):
        sample = cache.sample(name)
        np.testing.assert_array_equal(sample.mel, samples[name].mel)
        np.testing.assert_array_equal(sample.faces, samples[name].faces)
        assert sample.mel.dtype == np.uint8 and sample.faces.shape == (FRAMES, SIZE, SIZE, 3)
        assert int(sample.label) == samples[name].label
    assert cache.locate("train-6.mp4")[1] == 1
    with pytest.raises(KeyError, match="split 'val'"):
        cache.sample("train-6.mp4", split="val")

    def no_rescan(self):
        raise AssertionError("the name columns were read again")

    monkeypatch.setattr(ShardReader, "video_names", property(no_rescan))
    np.testing.assert_array_equal(cache.find("train-7.mp4").mel, samples["train-7.mp4"].mel)
    assert cache.names() == list(samples)


def test_block_reads_equal_sample_reads(small):
    root, samples = small
    cache = open_cache(root)
    picks = [(3, 1), (0, 4), (0, 0), (2, 3), (0, 2)]
    read = dict(cache.samples_at(picks, block=2))
    assert list(read) == sorted(picks)
    for (number, position), sample in read.items():
        expected = samples[LAYOUT_NAMES[number][position]]
        for name, value in sample.fields().items():
            np.testing.assert_array_equal(value, expected.fields()[name], err_msg=name)


LAYOUT_NAMES = [[row[0] for row in shard] for shards in LAYOUT.values() for shard in shards]


# headless Chromium: render and look at the pixels

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary (apt-get install chromium; make setup does)"
)


def chromium(tmp_path: Path, *args: str) -> str:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def screenshot(tmp_path: Path, url: str, name: str, size=(1280, 900)) -> np.ndarray:
    out = tmp_path / name
    chromium(tmp_path, f"--screenshot={out}", f"--window-size={size[0]},{size[1]}", url)
    return load_png(out)


@needs_chromium
def test_chromium_renders_the_sheet(small, tmp_path):
    root, _ = small
    sheet = tmp_path / "sheet.png"
    assert main([str(root), "sheet", "--split", "val", "-o", str(sheet)]) == 0
    pixels = screenshot(tmp_path, sheet.as_uri(), "shot.png", (1400, 400))
    assert pixels.shape == (400, 1400, 3)
    assert near(pixels, COLOURS[1]) > 0.8 * 4 * 110 * 110, "the fake faces (2 samples x 2)"
    assert near(pixels, COLOURS[0]) > 0.8 * 4 * 110 * 110, "the real faces"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500


@needs_chromium
def test_chromium_renders_the_gallery_and_its_filters(small, tmp_path):
    root, _ = small
    out = tmp_path / "gallery"
    predictions, labels = write_predictions(tmp_path)
    assert main([str(root), "gallery", "-o", str(out), "--predictions", str(predictions),
                 "--labels", str(labels)]) == 0  # fmt: skip
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><html><body></body></html>")
    empty = screenshot(tmp_path, blank.as_uri(), "blank.png")
    shot = screenshot(tmp_path, (out / "index.html").as_uri(), "gallery.png")
    assert shot.shape == empty.shape == (900, 1280, 3)
    assert (np.abs(shot.astype(int) - empty).sum(axis=-1) > 30).mean() > 0.2
    assert near(shot, COLOURS[1]) > 1000 and near(shot, COLOURS[0]) > 1000, "thumbnails drawn"
    # the filters run in the browser: the DOM after its script, filtered from the URL
    dom = Links()
    dom.feed(
        chromium(tmp_path, "--dump-dom", (out / "index.html").as_uri() + "#split=val&label=fake")
    )
    visible = [(section, name) for section, name, attrs in dom.cards if "hidden" not in attrs]
    assert visible == [("mistakes", WEIRD), ("samples", WEIRD), ("samples", "val-2.mp4")]
