"""Label files and path safety: names never reach outside the data root."""

from __future__ import annotations

import pytest

from avcache.preprocess.config import SplitConfig
from avcache.preprocess.dataset import LabelFileError, ShardPlan, Video, plan_shards, read_split
from tests.media import write_labels

TRAIN = SplitConfig("train_label.txt", ["trainset"])


@pytest.fixture
def root(tmp_path):
    data = tmp_path / "data"
    (data / "trainset").mkdir(parents=True)
    for name in ["a.mp4", "b.mp4", "c d.mp4"]:
        (data / "trainset" / name).write_bytes(b"x")
    return data


@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("crlf", [False, True])
def test_labels_with_bom_and_crlf(root, bom, crlf):
    write_labels(root / "train_label.txt", [("a.mp4", 1), ("c d.mp4", 0)], bom=bom, crlf=crlf)
    videos = read_split(root, "train", TRAIN)
    assert [(v.name, v.label) for v in videos] == [("a.mp4", 1), ("c d.mp4", 0)]
    assert videos[0].path == (root / "trainset" / "a.mp4").resolve()


def test_missing_file_is_kept_for_the_failure_record(root):
    write_labels(root / "train_label.txt", [("a.mp4", 1), ("gone.mp4", 0)])
    videos = read_split(root, "train", TRAIN)
    assert videos[1] == Video("train", "gone.mp4", 0, None)


def test_test_list_targets_are_unknown(root):
    write_labels(root / "p.csv", [("a.mp4", ""), ("b.mp4", "")])
    videos = read_split(root, "test", SplitConfig("p.csv", ["trainset"], has_targets=False))
    assert [v.label for v in videos] == [-1, -1]


def test_every_escaping_row_is_listed(root, tmp_path):
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"secret")
    (root / "trainset" / "link.mp4").symlink_to(outside)
    rows = [
        ("a.mp4", 1),
        ("../../secret.mp4", 0),
        (str(outside), 1),
        ("link.mp4", 0),
        ("sub/../../x.mp4", 1),
    ]
    write_labels(root / "train_label.txt", rows)
    with pytest.raises(LabelFileError) as error:
        read_split(root, "train", TRAIN)
    message = str(error.value)
    assert "4 bad row(s)" in message
    for line, reason in [(3, "'..'"), (4, "absolute path"), (5, "outside the data root"),
                         (6, "'..'")]:  # fmt: skip
        assert f"train_label.txt:{line}:" in message and reason in message


def test_symlinked_folder_out_of_root_is_refused(root, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.mp4").write_bytes(b"x")
    (root / "valset").symlink_to(elsewhere)
    write_labels(root / "val_label.txt", [("a.mp4", 1)])
    with pytest.raises(LabelFileError, match="outside the data root"):
        read_split(root, "val", SplitConfig("val_label.txt", ["valset"]))


def test_duplicates_and_bad_targets_are_listed(root):
    write_labels(root / "train_label.txt", [("a.mp4", 1), ("a.mp4", 0), ("b.mp4", 2)])
    with pytest.raises(LabelFileError) as error:
        read_split(root, "train", TRAIN)
    assert "duplicate of line 2" in str(error.value)
    assert "target '2' is not 0 or 1" in str(error.value)


def test_missing_header_is_refused(root):
    (root / "train_label.txt").write_text("a.mp4,1\n")
    with pytest.raises(LabelFileError, match="header"):
        read_split(root, "train", TRAIN)


@pytest.mark.parametrize("count,size,shards", [(0, 4, 0), (1, 4, 1), (8, 4, 2), (9, 4, 3)])
def test_exact_shard_counts(count, size, shards):
    videos = [Video("train", f"{i}.mp4", 0, None) for i in range(count)]
    plans = plan_shards(videos, size)
    assert len(plans) == shards
    assert [v for plan in plans for v in plan.videos] == videos
    assert all(len(plan.videos) == size for plan in plans[:-1])


def test_plan_hash_follows_the_work():
    a = ShardPlan("train", 0, (Video("train", "a.mp4", 0, None),))
    b = ShardPlan("train", 0, (Video("train", "a.mp4", 1, None),))
    assert a.plan_hash() == ShardPlan("train", 0, a.videos).plan_hash()
    assert a.plan_hash() != b.plan_hash()


def test_unresolvable_names_are_rows_not_crashes(root):
    (root / "trainset" / "loop.mp4").symlink_to("loop.mp4")
    write_labels(root / "train_label.txt", [("a.mp4", 1), ("loop.mp4", 0), ("x" * 300, 1)])
    with pytest.raises(LabelFileError) as error:
        read_split(root, "train", TRAIN)
    message = str(error.value)
    assert "2 bad row(s)" in message
    assert "train_label.txt:3: 'loop.mp4': cannot be resolved (Symlink loop" in message
    assert "train_label.txt:4:" in message and "cannot be resolved (File name too long)" in message


def test_two_names_for_one_file_are_duplicates(root):
    (root / "trainset" / "alias.mp4").symlink_to("a.mp4")
    rows = [("a.mp4", 1), ("./a.mp4", 0), ("alias.mp4", 0), ("b.mp4", 0)]
    write_labels(root / "train_label.txt", rows)
    with pytest.raises(LabelFileError) as error:
        read_split(root, "train", TRAIN)
    message = str(error.value)
    assert "2 bad row(s)" in message
    assert "train_label.txt:3: './a.mp4': same file as line 2" in message
    assert "train_label.txt:4: 'alias.mp4': same file as line 2" in message


@pytest.mark.parametrize("target", ["2", "x", "", "nan", "-1", "1.0", "true"])
def test_bad_targets_name_their_row(root, target):
    write_labels(root / "train_label.txt", [("a.mp4", 1), ("b.mp4", target)])
    with pytest.raises(LabelFileError, match=f"train_label.txt:3: 'b.mp4': target '{target}'"):
        read_split(root, "train", TRAIN)


def test_missing_rows_are_reported_with_their_line(root, caplog):
    write_labels(root / "train_label.txt", [("a.mp4", 1), ("gone.mp4", 0), ("b.mp4", 0)])
    assert [v.path is None for v in read_split(root, "train", TRAIN)] == [False, True, False]
    assert "1 listed video(s) not found in trainset/" in caplog.text
    assert "train_label.txt:3: 'gone.mp4'" in caplog.text
