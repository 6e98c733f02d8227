"""Files a user names or a data set lists, built the way an attacker or an unlucky user would:
symlinks out of the data root or the cache to a file whose first line is a secret, FIFOs
nobody writes, devices, folders, JSON nested 100,000 deep, numbers no float holds, CSV fields
over the csv module's limit, bytes that are not UTF-8. Each goes through the real command and
is refused at once in one line naming the file and the reason (exit 2), and nothing outside
the data root or the cache is read (the bait's access time stays put)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from avcache.cache import schema
from avcache.cache.index import ShardRecord, read_receipt, write_receipt
from avcache.cache.reader import open_cache
from avcache.common.config import dump_yaml
from avcache.inspection.cli import main as inspect_main
from avcache.preprocess.config import SplitConfig
from avcache.preprocess.dataset import read_split
from avcache.preprocess.run import main as preprocess_main
from avcache.train.config import TrainConfig
from avcache.train.fuse import main as fuse_main
from avcache.train.predict import main as predict_main
from avcache.train.run import main as train_main
from avcache.train.score import main as score_main
from tests.layouts import lavdf_entry
from tests.test_mistakes import one_line_error
from tests.test_untrusted import never_read
from tests.toy import REPO, small_config, write_toy_cache

SECRET = "root:x:0:0:SECRET-7f3a9c:/root:/bin/bash"
DEEP = "[" * 100_000 + "]" * 100_000  # far past the parser's recursion limit
LONG_FIELD = "a" * 200_000  # over the csv module's 131,072-character field limit
NOT_UTF8 = b"video_name,target\na.mp4,1\n\xff\xfeb.mp4,0\n"  # line 3


@pytest.fixture
def bait(tmp_path) -> Path:
    """A file outside every root whose first line is a secret (an /etc/passwd)."""
    folder = tmp_path / "outside"
    folder.mkdir()
    path = folder / "passwd"
    path.write_text(f"{SECRET}\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    return path


def promptly(command: Callable[[list[str]], int], argv: list[str], *fifos: Path) -> int:
    """command(argv) in a thread, which must end within a generous time: a reader that opened
    a FIFO would block forever. On a hang the FIFOs get a writer (so the reader sees their
    end) and the test fails."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(code=command(argv)), daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():
        for fifo in fifos:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
        pytest.fail(f"{argv}: still running after 60 s (blocked on a FIFO?)")
    return result["code"]


def refused(capsys, program: str, code: int, *fragments: str) -> str:
    """The one-line refusal, exit 2, holding every fragment and never the secret."""
    assert code == 2
    error = one_line_error(capsys, program)
    for fragment in fragments:
        assert fragment in error, error
    assert "SECRET" not in error
    return error


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


# ---------------------------------------------------------------- a data set's label files


def preprocess(root: Path, splits: dict) -> list[str]:
    """avcache-preprocess's arguments for a data root with these splits only."""
    config = root.parent / "preprocess.yaml"
    config.write_text(yaml.safe_dump({"splits": splits}))
    return ["--config", str(config), "--data", str(root), "--out", str(root.parent / "cache"),
            "--quiet", "--jobs", "1", "faces.frames=0"]  # fmt: skip


# (layout, label file as configured, the file (or folder) that is a symlink out of the root)
LINKED = [
    ("ffdv", "train_label.txt", "train_label.txt"),
    ("fakeavceleb", "favc/meta_data.csv", "favc/meta_data.csv"),
    ("lav-df", "lavdf/metadata.json", "lavdf/metadata.json"),
    ("dfdc", "dfdc/dfdc_train_part_*/metadata.json", "dfdc/dfdc_train_part_1"),
]


@pytest.mark.parametrize(("layout", "labels", "link"), LINKED)
def test_a_label_file_linked_out_of_the_data_root_is_never_read(tmp_path, bait, capsys, layout,
                                                                labels, link):  # fmt: skip
    root = tmp_path / "data"
    link_path = root / link
    link_path.parent.mkdir(parents=True)
    if link.endswith("part_1"):  # the folder is the link: its metadata.json lies outside
        (bait.parent / "metadata.json").symlink_to(bait)
        link_path.symlink_to(bait.parent, target_is_directory=True)
        listed = bait.parent / "metadata.json"
    else:
        link_path.symlink_to(bait)
        listed = link_path
    argv = preprocess(root, {"train": {"layout": layout, "labels": labels, "videos": ["."]}})
    with never_read(bait):
        code = promptly(preprocess_main, argv)
    shown = str(link_path / "metadata.json") if link.endswith("part_1") else str(listed)
    refused(capsys, "avcache-preprocess", code, f"{shown}: the label file leads outside")


def test_a_label_file_linked_inside_the_root_or_a_root_reached_by_a_link_is_read(tmp_path):
    """Only a way out is refused: a link within the root, or the user's own link to it."""
    root = tmp_path / "data"
    (root / "lists").mkdir(parents=True)
    (root / "lists" / "real.csv").write_text("path,label\na.mp4,1\n")
    (root / "labels.csv").symlink_to(Path("lists") / "real.csv")
    (tmp_path / "link").symlink_to(root, target_is_directory=True)
    for data in (root, tmp_path / "link"):
        videos = read_split(data, "train", SplitConfig("labels.csv", ["."], layout="csv"))
        assert [(video.name, video.label) for video in videos] == [("a.mp4", 1)]


@pytest.mark.parametrize(("layout", "labels"), [("ffdv", "train_label.txt"),
                                                ("lav-df", "metadata.json"),
                                                ("dfdc", "part_*/metadata.json")])  # fmt: skip
def test_a_label_file_that_is_a_fifo_is_refused_at_once(tmp_path, capsys, layout, labels):
    root = tmp_path / "data"
    path = fifo(root / labels.replace("*", "0"))
    argv = preprocess(root, {"train": {"layout": layout, "labels": labels, "videos": ["."]}})
    code = promptly(preprocess_main, argv, path)
    refused(capsys, "avcache-preprocess", code, f"{path}: the label file is not a regular file")


def test_a_label_file_that_is_a_folder_is_refused(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "train_label.txt").mkdir(parents=True)
    code = preprocess_main(preprocess(root, {"train": {"labels": "train_label.txt",
                                                       "videos": ["."]}}))  # fmt: skip
    refused(capsys, "avcache-preprocess", code, "train_label.txt: the label file is not a")


@pytest.mark.parametrize(("layout", "text", "reason"), [
    ("lav-df", DEEP, "metadata.json: the label file nests too deeply"),
    ("dfdc", '{"a.mp4": ' * 100_000 + "1" + "}" * 100_000, "nests too deeply"),  # pairs hook
    ("lav-df", json.dumps([lavdf_entry("a.mp4", "train", [[0.1, 0.5]], True, False)]).replace(
        "0.5", "1e400"), "not valid JSON (the number 1e400 overflows a float)"),
    ("lav-df", json.dumps([lavdf_entry("a.mp4", "train", [[0.1, 10**400]], True, False)]),
     "metadata.json: entry 0: 'a.mp4': fake_periods holds [0.1, 1000"),
])  # fmt: skip
def test_label_json_a_parser_or_a_float_cannot_hold_is_one_line(tmp_path, capsys, layout, text,
                                                                reason):  # fmt: skip
    root = tmp_path / "data"
    root.mkdir()
    (root / "metadata.json").write_text(text)
    argv = preprocess(root, {"train": {"layout": layout, "labels": "metadata.json",
                                       "videos": ["."]}})  # fmt: skip
    refused(capsys, "avcache-preprocess", preprocess_main(argv), reason)


@pytest.mark.parametrize(("layout", "header"), [("ffdv", "video_name,target"),
                                                ("csv", "path,label")])  # fmt: skip
def test_a_label_csv_field_over_the_limit_or_not_utf8_names_its_line(tmp_path, capsys, layout,
                                                                    header):  # fmt: skip
    root = tmp_path / "data"
    root.mkdir()
    labels = root / "labels.csv"
    argv = preprocess(root, {"train": {"layout": layout, "labels": "labels.csv", "videos": ["."]}})
    labels.write_text(f"{header}\na.mp4,1\n{LONG_FIELD}.mp4,0\n")
    refused(capsys, "avcache-preprocess", preprocess_main(argv),
            f"{labels}:3: cannot be read as CSV (field larger than field limit")  # fmt: skip
    labels.write_bytes(NOT_UTF8.replace(b"video_name,target", header.encode()))
    refused(capsys, "avcache-preprocess", preprocess_main(argv),
            f"{labels}:3: not UTF-8 text (invalid start byte)")  # fmt: skip


# ---------------------------------------------------------------- a cache's index


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy") / "cache"
    write_toy_cache(root, {"train": 8, "val": 8})
    return root


@pytest.mark.parametrize("target", ["another cache's index", "passwd"])
def test_an_index_linked_out_of_the_cache_is_never_read(toy, tmp_path, bait, capsys, target):
    """The index is a sound one (a cache that trains) or any file: neither is read."""
    cache = tmp_path / "cache"
    write_toy_cache(cache, {"train": 8, "val": 8})
    outside = toy / schema.INDEX_FILE if target != "passwd" else bait
    index = cache / schema.INDEX_FILE
    index.unlink()
    index.symlink_to(outside)
    expected = f"{index}: the cache index leads outside {cache}"
    with never_read(outside):
        refused(capsys, "avcache-inspect", inspect_main([str(cache)]), expected)
        code = train_main(["--cache", str(cache), "--out", str(tmp_path / "run"),
                           *small_config()])  # fmt: skip
        refused(capsys, "avcache-train", code, expected)


def test_a_receipt_linked_out_of_the_cache_is_never_read(tmp_path):
    """A resumed run would take the linked receipt's word for a shard: it is redone instead."""
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    record = ShardRecord("shards/train-00000.h5", "train", 1, "0" * 64)
    for root in (cache, outside):
        (root / "shards").mkdir(parents=True)
        (root / record.path).write_bytes(b"shard")
    write_receipt(outside, record)
    receipt = cache / "shards" / f"train-00000{schema.RECEIPT_SUFFIX}"
    receipt.symlink_to(outside / "shards" / receipt.name)
    assert read_receipt(outside, record.path) == record  # a sound receipt where it lies
    with never_read(outside / "shards" / receipt.name):
        assert read_receipt(cache, record.path) is None


def test_a_cache_reached_through_a_link_opens(toy, tmp_path):
    (tmp_path / "link").symlink_to(toy, target_is_directory=True)
    assert open_cache(tmp_path / "link").splits == open_cache(toy).splits


# ---------------------------------------------------------------- files named on the command line


# A device here is /dev/null, refused by its type like any other: were it read, it would give
# another message (an empty list), and the test would fail without harm. /dev/zero, which a
# reader would fill memory with, is tried once below, in a process with bounded memory.
NOT_FILES = {
    "fifo": lambda tmp: fifo(tmp / "named.csv"),
    "device": lambda tmp: Path("/dev/null"),
    "folder": lambda tmp: (tmp / "folder.csv").mkdir() or tmp / "folder.csv",
}


def bounded_memory() -> None:
    """A reader of /dev/zero fails here within seconds instead of filling the machine."""
    resource.setrlimit(resource.RLIMIT_DATA, (4 * 2**30, 4 * 2**30))


def test_dev_zero_as_a_list_is_refused_unread(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("video_name,target\na.mp4,1\n")
    done = subprocess.run([sys.executable, "-m", "avcache.train.score", "/dev/zero", str(labels)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          preexec_fn=bounded_memory,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done
    expected = ("avcache-score: error: /dev/zero: the submission is not a regular file (a FIFO, "
                "device or folder would never be read to its end); avcache reads only regular "
                "files")  # fmt: skip
    assert done.stderr.splitlines()[-1] == expected, done


@pytest.mark.parametrize("kind", NOT_FILES)
def test_score_refuses_a_list_that_is_not_a_file_before_opening_it(tmp_path, capsys, kind):
    path = NOT_FILES[kind](tmp_path)
    submission, labels = tmp_path / "submission.csv", tmp_path / "labels.txt"
    submission.write_text("video_name,y_pred\na.mp4,0.9\n")
    labels.write_text("video_name,target\na.mp4,1\n")
    code = promptly(score_main, [str(path), str(labels)], path)
    refused(capsys, "avcache-score", code, f"{path}: the submission is not a regular file")
    code = promptly(score_main, [str(submission), str(path)], path)
    refused(capsys, "avcache-score", code, f"{path}: the label file is not a regular file")


def test_score_names_the_line_of_an_overlong_field_or_non_utf8_bytes(tmp_path, capsys):
    submission, labels = tmp_path / "submission.csv", tmp_path / "labels.txt"
    submission.write_text(f"video_name,y_pred\n{LONG_FIELD}.mp4,0.5\n")
    labels.write_bytes(NOT_UTF8)
    refused(capsys, "avcache-score", score_main([str(submission), str(labels)]),
            f"{submission}:2: cannot be read as CSV (field larger than field limit")  # fmt: skip
    submission.write_text("video_name,y_pred\na.mp4,0.5\n")
    refused(capsys, "avcache-score", score_main([str(submission), str(labels)]),
            f"{labels}:3: not UTF-8 text")  # fmt: skip


@pytest.fixture
def run_folder(toy, tmp_path) -> Path:
    """A run folder's records, without a checkpoint: the list is refused before any model."""
    run = tmp_path / "run"
    run.mkdir()
    dump_yaml(TrainConfig(), run / "config.yaml")
    (run / "cache.json").write_text(json.dumps({"path": str(toy)}))
    return run


@pytest.mark.parametrize("kind", [*NOT_FILES, "long field"])
def test_predict_refuses_a_list_that_is_no_list(run_folder, tmp_path, capsys, kind):
    if kind == "long field":
        path = tmp_path / "list.csv"
        path.write_text(f"video_name,target\n{LONG_FIELD}.mp4,\n")
        expected = f"{path}:2: cannot be read as CSV"
    else:
        path = NOT_FILES[kind](tmp_path)
        expected = f"{path}: the list to predict is not a regular file"
    argv = ["--run", str(run_folder), "--list", str(path), "--out", str(tmp_path / "s.csv")]
    refused(capsys, "avcache-predict", promptly(predict_main, argv, path), expected)


@pytest.mark.parametrize("record", ["config.yaml", "cache.json"])
def test_a_run_folders_record_linked_out_of_it_is_refused_unread(run_folder, bait, tmp_path,
                                                                 capsys, record):  # fmt: skip
    """A run folder travels: its config and cache record are read only inside it."""
    (run_folder / record).unlink()
    (run_folder / record).symlink_to(bait)
    listing = tmp_path / "list.csv"
    listing.write_text("video_name,target\na.mp4,\n")
    argv = ["--run", str(run_folder), "--list", str(listing), "--out", str(tmp_path / "s.csv")]
    with never_read(bait):
        code = predict_main(argv)
    refused(capsys, "avcache-predict", code, str(run_folder / record), "outside")


def fusion_file(tmp_path: Path, runs: list | None = None, weights: object = (1.0,),
                bias: object = 0.0) -> Path:  # fmt: skip
    run = tmp_path / "expert"
    run.mkdir(exist_ok=True)
    path = tmp_path / "fused.json"
    runs = [str(run)] if runs is None else runs
    path.write_text(json.dumps({"runs": runs, "weights": list(weights), "bias": bias}))
    return path


@pytest.mark.parametrize(("change", "reason"), [
    ({"runs": [1]}, "'runs' holds 1, not the name of a run folder"),
    ({"runs": [["a"]]}, "'runs' holds ['a'], not the name of a run folder"),
    ({"runs": []}, "'runs' is [], not a list of run folders"),
    ({"weights": ("NaN",)}, "found 'NaN'"),
    ({"weights": (10**400,)}, "'weights' and 'bias' must be finite numbers"),
    ({"weights": (1.0, 2.0)}, "not one number per run (1)"),
    ({"bias": True}, "must be finite numbers of at most 1e+06 in size, found True"),
    ({"bias": -1e300}, "found -1e+300"),
])  # fmt: skip
def test_fuse_refuses_a_fusion_whose_fields_are_not_what_fit_writes(tmp_path, capsys, change,
                                                                   reason):  # fmt: skip
    listing = tmp_path / "list.csv"
    listing.write_text("video_name,target\na.mp4,\n")
    argv = ["predict", str(fusion_file(tmp_path, **change)), "--list", str(listing), "--out",
            str(tmp_path / "s.csv")]  # fmt: skip
    refused(capsys, "avcache-fuse", fuse_main(argv), reason, "not a fusion written by")


@pytest.mark.parametrize(("text", "reason"), [
    ('{"runs": ["r"], "weights": [1e400], "bias": 0}', "the number 1e400 overflows a float"),
    ('{"runs": ["r"], "weights": [NaN], "bias": 0}', "NaN is not a JSON number"),
    ('{"runs": ["r"], "weights": [1], "bias": -Infinity}', "-Infinity is not a JSON number"),
    (DEEP, "the fusion nests too deeply"),
])  # fmt: skip
def test_fuse_refuses_json_that_would_give_nan_or_crash(tmp_path, capsys, text, reason):
    path = tmp_path / "fused.json"
    path.write_text(text)
    argv = ["predict", str(path), "--list", str(tmp_path / "l.csv"), "--out",
            str(tmp_path / "s.csv")]  # fmt: skip
    refused(capsys, "avcache-fuse", fuse_main(argv), f"{path}: ", reason)
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize("kind", [*NOT_FILES, "long field"])
def test_fuse_refuses_a_fusion_or_a_list_that_is_no_file(tmp_path, capsys, kind):
    fusion, out = fusion_file(tmp_path), str(tmp_path / "s.csv")
    if kind == "long field":
        listing = tmp_path / "list.csv"
        listing.write_text(f"video_name,target\n{LONG_FIELD}.mp4,\n")
        code = fuse_main(["predict", str(fusion), "--list", str(listing), "--out", out])
        refused(capsys, "avcache-fuse", code, f"{listing}:2: cannot be read as CSV")
        return
    path = NOT_FILES[kind](tmp_path)
    code = promptly(fuse_main, ["predict", str(path), "--list", str(fusion), "--out", out], path)
    refused(capsys, "avcache-fuse", code, f"{path}: the fusion is not a regular file")
    code = promptly(fuse_main, ["predict", str(fusion), "--list", str(path), "--out", out], path)
    refused(capsys, "avcache-fuse", code, f"{path}: the list to predict is not a regular file")


@pytest.mark.parametrize("kind", [*NOT_FILES, "long field", "not utf-8"])
def test_gallery_refuses_predictions_that_are_no_list(toy, tmp_path, capsys, kind):
    if kind in NOT_FILES:
        path = NOT_FILES[kind](tmp_path)
        expected = f"{path}: the predictions is not a regular file"
    else:
        path = tmp_path / "predictions.csv"
        if kind == "long field":
            path.write_text(f"video_name,y_pred\n{LONG_FIELD}.mp4,0.5\n")
        else:
            path.write_bytes(NOT_UTF8.replace(b"target", b"y_pred"))
        expected = f"{path}:{2 if kind == 'long field' else 3}: "
    argv = [str(toy), "gallery", "-o", str(tmp_path / "g"), "--predictions", str(path)]
    refused(capsys, "avcache-inspect", promptly(inspect_main, argv, path), expected)


NOT_MANIFESTS = {  # kind: (text, reason)
    "deep": (DEEP, "the sample manifest nests too deeply"),
    "clips not objects": ('{"clips": [["a.mp4"]]}', "not a sample manifest: expected"),
    "nested kinds": ('{"clips": [{"name": "a", "kinds": [[["x"]]]}]}', "not a sample manifest"),
}


@pytest.mark.parametrize("kind", [*NOT_FILES, *NOT_MANIFESTS])
def test_audit_refuses_a_manifest_that_is_none(toy, tmp_path, capsys, kind):
    if kind in NOT_FILES:
        path = NOT_FILES[kind](tmp_path)
        reason = "the sample manifest is not a regular file"
    else:
        path = tmp_path / "manifest.json"
        text, reason = NOT_MANIFESTS[kind]
        path.write_text(text)
    argv = [str(toy), "audit", "--manifest", str(path), "--brief", "--bootstrap", "10"]
    refused(capsys, "avcache-inspect", promptly(inspect_main, argv, path), f"{path}: {reason}")
