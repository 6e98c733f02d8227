"""The published layouts of other data sets: replicas cached end to end, and every wrong one
refused naming its file and row."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from avcache.cache import open_cache, schema
from avcache.cache.reader import CacheFormatError, ShardReader
from avcache.cache.verify import verify_cache
from avcache.cache.writer import ShardWriter
from avcache.common.config import config_hash, load_config, to_dict
from avcache.preprocess.config import PreprocessConfig, SplitConfig
from avcache.preprocess.dataset import LabelFileError, read_split
from avcache.preprocess.run import main as preprocess_main
from tests import layouts
from tests.layouts import FAKE, REAL

SHIPPED = Path(__file__).resolve().parents[1] / "configs" / "preprocess.yaml"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory) -> tuple[Path, list[layouts.Listed], Path]:
    """Every replica in one data root, and a config that caches each of its splits."""
    root = tmp_path_factory.mktemp("replicas")
    listed, splits = layouts.write_replicas(root)
    config = root.parent / f"{root.name}.yaml"
    config.write_text(yaml.safe_dump({"splits": splits}))
    return root, listed, config


@pytest.fixture(scope="module")
def cache(replicas, tmp_path_factory):
    root, _, config = replicas
    out = tmp_path_factory.mktemp("cache") / "cache"
    code = preprocess_main(["--config", str(config), "--data", str(root), "--out", str(out),
                            "--quiet", "--jobs", "1", "--strict", "faces.frames=0",
                            "shards.size=2"])  # fmt: skip
    assert code == 0
    return open_cache(out)


def test_every_replica_reads_back_as_written(replicas, cache):
    _, listed, _ = replicas
    assert verify_cache(cache) == []
    assert set(cache.splits) == {entry.split for entry in listed}
    found = {(sample.video_name, split): sample
             for split in cache.splits for sample in cache.iter_samples(split)}  # fmt: skip
    assert len(found) == len(listed) and cache.failures() == []
    for entry in listed:
        sample = found[entry.name, entry.split]
        assert (sample.label, sample.fake_kind) == (entry.label, entry.kind), entry
        if entry.segments is None:
            assert sample.fake_segments is None
        else:
            assert sample.fake_segments.dtype == np.float64
            assert sample.fake_segments.tolist() == [list(pair) for pair in entry.segments]


def test_per_split_kinds_and_sources(replicas, cache):
    _, listed, _ = replicas
    for split in cache.splits:
        expected = [entry for entry in listed if entry.split == split]
        names = [sample.video_name for sample in cache.iter_samples(split)]
        assert names == [entry.name for entry in expected]  # label-file order
        assert cache.fake_kinds(split) == [entry.kind for entry in expected]
        segments = cache.fake_segments(split)
        if expected[0].segments is None:
            assert segments is None
        else:
            assert [s.tolist() for s in segments] == [[list(p) for p in e.segments]
                                                       for e in expected]  # fmt: skip
    assert cache.source_of("lavdf_dev") == "lav-df" and cache.source_of("dfdc") == "dfdc"
    assert sorted(cache.source_name.split("+")) == sorted(layouts.REPLICAS)
    assert cache.fake_kinds("lavdf_train") == ["real", "video", "audio+video"]


def hash_without_layouts(config: PreprocessConfig) -> str:
    """The config hash as it was computed before splits had a layout and a selection, and
    before limits.max_missing, tracks.locate_every and tracks.placement."""
    plain = dataclasses.asdict(config)
    for split in plain["splits"].values():
        del split["layout"], split["select"]
    del plain["limits"]["max_missing"], plain["tracks"]["locate_every"]
    del plain["tracks"]["placement"]
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_ffdv_default_keeps_its_hash_and_records_no_layout():
    """Caches made before layouts existed keep their config's hash (that of the default
    then, before it cached tracks, among them)."""
    config = load_config(PreprocessConfig, None, ["tracks.windows=0"])
    assert config_hash(config) == hash_without_layouts(config)
    assert "layout" not in to_dict(config)["splits"]["train"]
    chosen = load_config(PreprocessConfig, SHIPPED, ["splits.train.layout=csv"])
    assert to_dict(chosen)["splits"]["train"]["layout"] == "csv"
    assert config_hash(chosen) != config_hash(load_config(PreprocessConfig, SHIPPED))


def test_an_ffdv_cache_has_no_kinds_and_says_ffdv(tmp_path):
    (tmp_path / "trainset").mkdir()
    layouts.clip(tmp_path / "trainset" / "a.mp4")
    (tmp_path / "train_label.txt").write_text("video_name,target\na.mp4,1\n")
    out = tmp_path / "cache"
    assert preprocess_main(["--data", str(tmp_path), "--out", str(out), "--quiet", "--jobs", "1",
                            "faces.frames=0", "audit.facts=false"]) == 0  # fmt: skip
    cache = open_cache(out)
    sample = next(cache.iter_samples("train"))
    assert (sample.fake_kind, sample.fake_segments) == (None, None)
    assert cache.fake_kinds("train") is None and cache.fake_segments("train") is None
    assert cache.source_name == "ffdv" and cache.config_hash in str(cache.shards[0].path)


def test_fakeavceleb_variants_of_the_header(tmp_path):
    """A `filename` column beside a `path` folder, and pandas' unnamed index column."""
    rows = ["Unnamed: 0,source,target1,target2,method,category,type,race,gender,filename,path",
            "0,id1,-,-,real,A,RealVideo-RealAudio,Asian,women,a.mp4,"
            "FakeAVCeleb/RealVideo-RealAudio/Asian/women/id1",
            "1,id1,id2,-,wav2lip,B,FakeVideo-FakeAudio,Asian,women,b.mp4,"
            "FakeVideo-FakeAudio/Asian/women/id1"]  # fmt: skip
    (tmp_path / "meta_data.csv").write_text("\n".join(rows) + "\n")
    config = SplitConfig("meta_data.csv", ["."], layout="fakeavceleb",
                         select={"race": ["Asian"]})  # fmt: skip
    videos = read_split(tmp_path, "all", config)
    assert [(v.name, v.label, v.kind) for v in videos] == [
        ("RealVideo-RealAudio/Asian/women/id1/a.mp4", REAL, "RealVideo-RealAudio"),
        ("FakeVideo-FakeAudio/Asian/women/id1/b.mp4", FAKE, "FakeVideo-FakeAudio/wav2lip"),
    ]


def lavdf_text(**changes) -> str:
    entries = [layouts.lavdf_entry(*entry) for entry in layouts.LAVDF_ENTRIES[:3]]
    entries[1].update(changes)
    return json.dumps([{k: v for k, v in e.items() if v != "DROP"} for e in entries])


def av1m_text(**changes) -> str:
    entries = [layouts.av1m_entry(*entry, "train") for entry in layouts.AV1M_ENTRIES["train"]]
    entries[1].update(changes)
    return json.dumps([{k: v for k, v in e.items() if v != "DROP"} for e in entries])


def dfdc_text(name: str = "b.mp4", label: object = "FAKE", again: bool = False) -> str:
    lines = ['"a.mp4": {"label": "REAL", "split": "train"}',
             f'"{name}": {json.dumps({"label": label, "split": "train"})}']  # fmt: skip
    return "{" + ", ".join(lines + lines[:1] * again) + "}"


def favc_text(
    *,
    file: str = "00109_fake.mp4",
    kind: str = "RealVideo-FakeAudio",
    drop_type: bool = False,
    again: bool = False,
) -> str:
    """Two rows; `again`: the first row once more with another type and method in the same
    folder (one file said to be two kinds of video)."""
    rows = list(layouts.FAKEAVCELEB_ROWS[:1])
    rows.append(("id00076", "-", "-", "rtvc", "B", kind, file))
    lines = layouts.fakeavceleb_rows(rows)
    if again:
        lines.append(
            lines[1].replace(",real,A,RealVideo-RealAudio,", ",rtvc,B,RealVideo-FakeAudio,")
        )
    if drop_type:
        lines[0] = lines[0].replace(",type,", ",kind,")
    return "\n".join(lines) + "\n"


def csv_text(path: str = "b.mp4", label: str = "1", header: str = "path,label,kind") -> str:
    return f"{header}\na.mp4,0,real\n{path},{label},lipsync\n"


# (layout, label file, text, what the refusal says)
REFUSED = [
    ("fakeavceleb", "meta_data.csv", favc_text(drop_type=True), "lacks the column(s) type"),
    (
        "fakeavceleb",
        "meta_data.csv",
        favc_text(kind="RealVideo-OddAudio"),
        ":3: 'RealVideo-OddAudio/African/men/id00076/00109_fake.mp4': type 'RealVideo-OddAudio'",
    ),
    ("fakeavceleb", "meta_data.csv", favc_text(file="../../x.mp4"), ":3: "),
    (
        "fakeavceleb",
        "meta_data.csv",
        favc_text(again=True),
        ":4: 'RealVideo-RealAudio/African/men/id00076/00109.mp4': duplicate of line 2",
    ),
    ("lav-df", "metadata.json", lavdf_text(fake_periods="DROP"), "missing key 'fake_periods'"),
    ("lav-df", "metadata.json", lavdf_text(fake_periods=[[0.5, 0.2]]), "not [start, end]"),
    ("lav-df", "metadata.json", lavdf_text(modify_video=False), "modified modality is real"),
    ("lav-df", "metadata.json", lavdf_text(file="../x.mp4"), "entry 1: '../x.mp4': '..'"),
    ("lav-df", "metadata.json", lavdf_text(file="/etc/x.mp4"), "entry 1: '/etc/x.mp4': absolute"),
    ("lav-df", "metadata.json", lavdf_text(file="train/000000.mp4"), "duplicate of entry 0"),
    ("av-deepfake1m", "m.json", av1m_text(fake_segments="DROP"), "missing key 'fake_segments'"),
    ("av-deepfake1m", "m.json", av1m_text(modify_type="half"), "modify_type 'half' is not"),
    ("av-deepfake1m", "m.json", av1m_text(file="../x.mp4"), "entry 1: '../x.mp4': '..'"),
    (
        "av-deepfake1m",
        "m.json",
        av1m_text(file=layouts.AV1M_ENTRIES["train"][0][0]),
        "duplicate of entry 0",
    ),
    ("dfdc", "metadata.json", dfdc_text(label="MAYBE"), "label 'MAYBE' is not FAKE or REAL"),
    ("dfdc", "metadata.json", dfdc_text(name="../b.mp4"), "entry 1: '../b.mp4': '..'"),
    ("dfdc", "metadata.json", dfdc_text(name="/b.mp4"), "entry 1: '/b.mp4': absolute"),
    ("dfdc", "metadata.json", dfdc_text(again=True), "entry 2: 'a.mp4': duplicate of entry 0"),
    ("csv", "l.csv", csv_text(header="file,label,kind"), "lacks the column(s) path"),
    ("csv", "l.csv", csv_text(label="maybe"), ":3: 'b.mp4': label 'maybe' is not 0, 1"),
    ("csv", "l.csv", csv_text(path="../b.mp4"), ":3: '../b.mp4': '..'"),
    ("csv", "l.csv", csv_text(path="/tmp/b.mp4"), ":3: '/tmp/b.mp4': absolute"),
    ("csv", "l.csv", csv_text(path="a.mp4"), ":3: 'a.mp4': duplicate of line 2"),
]


@pytest.mark.parametrize(("layout", "labels", "text", "reason"), REFUSED)
def test_a_wrong_label_file_is_refused_naming_it(tmp_path, layout, labels, text, reason):
    (tmp_path / labels).write_text(text)
    with pytest.raises(LabelFileError) as error:
        read_split(tmp_path, "train", SplitConfig(labels, ["."], layout=layout))
    message = str(error.value)
    assert str(tmp_path / labels) in message and reason in message


def test_fakeavceleb_rows_repeated_exactly_are_read_once_with_one_warning(tmp_path, caplog):
    """Public code drops repeated rows of the released meta_data.csv: a repeat that says
    the same of the same file is left out, once, with the count and the first repeat."""
    lines = favc_text().splitlines()
    (tmp_path / "meta_data.csv").write_text("\n".join([*lines, lines[1], lines[2], lines[1]]))
    config = SplitConfig("meta_data.csv", ["."], layout="fakeavceleb")
    with caplog.at_level("WARNING"):
        videos = read_split(tmp_path, "all", config)
    assert [video.name for video in videos] == [
        "RealVideo-RealAudio/African/men/id00076/00109.mp4",
        "RealVideo-FakeAudio/African/men/id00076/00109_fake.mp4",
    ]
    assert [video.label for video in videos] == [REAL, FAKE]
    repeats = [record.getMessage() for record in caplog.records
               if record.name == "avcache.preprocess.layouts"]  # fmt: skip
    assert repeats == [f"{tmp_path / 'meta_data.csv'}: 3 row(s) that repeat an earlier row "
                       "exactly were left out (the first: line 4, a repeat of line 2)"]  # fmt: skip


def test_a_refusal_of_bad_rows_is_one_line(tmp_path, capsys):
    """Its rows are separated by `; `: printed as one line, a newline would show as `\\n`."""
    (tmp_path / "meta_data.csv").write_text(favc_text(again=True, kind="RealVideo-OddAudio"))
    code = preprocess_main(["--data", str(tmp_path), "--out", str(tmp_path / "c"),
                            "splits={all: {labels: meta_data.csv, videos: [.], "
                            "layout: fakeavceleb}}"])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "\\n" not in error
    assert "2 bad row(s), nothing was cached: " in error
    assert ":3: 'RealVideo-OddAudio/African/men/id00076/00109_fake.mp4': type" in error
    assert "; " + str(tmp_path / "meta_data.csv") + ":4: " in error


def test_a_refusal_lists_the_first_bad_rows_and_counts_the_rest(tmp_path):
    rows = "".join(f"v{i}.mp4,maybe\n" for i in range(25))
    (tmp_path / "l.csv").write_text("path,label\n" + rows)
    with pytest.raises(LabelFileError) as error:
        read_split(tmp_path, "train", SplitConfig("l.csv", ["."], layout="csv"))
    message = str(error.value)
    assert "25 bad row(s)" in message and message.endswith("; and 5 more")
    assert ":21: 'v19.mp4'" in message and "'v20.mp4'" not in message


@pytest.mark.parametrize("text", [favc_text(file="../../x.mp4")])
def test_fakeavceleb_folder_and_file_are_checked_apart(tmp_path, text):
    (tmp_path / "meta_data.csv").write_text(text.replace("FakeAVCeleb/RealVideo-FakeAudio",
                                                         "/elsewhere", 1))  # fmt: skip
    with pytest.raises(LabelFileError, match=r"absolute path|'\.\.'"):
        read_split(tmp_path, "all", SplitConfig("meta_data.csv", ["."], layout="fakeavceleb"))


def test_a_symlink_out_of_the_root_and_two_names_for_one_file(tmp_path):
    outside = tmp_path.parent / f"{tmp_path.name}-secret.mp4"
    outside.write_bytes(b"x")
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "link.mp4").symlink_to(outside)
    (tmp_path / "l.csv").write_text("path,label\na.mp4,1\n./a.mp4,1\nlink.mp4,0\n")
    with pytest.raises(LabelFileError) as error:
        read_split(tmp_path, "train", SplitConfig("l.csv", ["."], layout="csv"))
    assert "2 bad row(s)" in str(error.value)
    assert ":3: './a.mp4': same file as line 2" in str(error.value)
    assert ":4: 'link.mp4': resolves outside the data root" in str(error.value)


def test_a_missing_label_file_or_select_field_is_refused(tmp_path):
    with pytest.raises(LabelFileError, match=r"metadata\.json: cannot read"):
        read_split(tmp_path, "train", SplitConfig("metadata.json", ["."], layout="lav-df"))
    with pytest.raises(LabelFileError, match="no label file matches"):
        read_split(tmp_path, "train", SplitConfig("p_*/metadata.json", ["."], layout="dfdc"))
    (tmp_path / "metadata.json").write_text(lavdf_text())
    with pytest.raises(LabelFileError, match="select names 'subset', a field no entry has"):
        read_split(tmp_path, "t", SplitConfig("metadata.json", ["."], layout="lav-df",
                                              select={"subset": ["train"]}))  # fmt: skip


def test_missing_videos_are_failures_not_refusals(tmp_path):
    (tmp_path / "metadata.json").write_text(lavdf_text())
    videos = read_split(tmp_path, "t", SplitConfig("metadata.json", ["."], layout="lav-df"))
    assert [v.path for v in videos] == [None, None, None]
    assert [v.kind for v in videos] == ["real", "video", "audio+video"]


@pytest.mark.parametrize("override", ["splits.train.layout=celebdf",
                                      "splits.train.layout=lav-df"])  # fmt: skip
def test_an_unknown_layout_or_a_test_list_without_labels_is_refused(tmp_path, override, capsys):
    extra = ["splits.train.has_targets=false"] if override.endswith("lav-df") else []
    code = preprocess_main(["--config", str(SHIPPED), "--data", str(tmp_path), "--out",
                            str(tmp_path / "c"), override, *extra])  # fmt: skip
    assert code == 2
    assert "splits.train: layout" in capsys.readouterr().err


def write_labelled_shard(path: Path, segments: list[np.ndarray]) -> None:
    writer = ShardWriter(
        path,
        schema.ShardLayout(frames=0, face_size=8, fake_kinds=True, fake_segments=True),
        split="train",
    )
    with writer:
        for i, pairs in enumerate(segments):
            writer.append(schema.Sample(f"v{i}.mp4", 1, np.zeros((256, 256), np.uint8),
                                        np.zeros((0, 8, 8, 3), np.uint8), True,
                                        np.zeros(0, bool), np.zeros((0, 4), np.float32), 1.0,
                                        fake_kind="audio", fake_segments=pairs))  # fmt: skip
        writer.close()


def test_segments_round_trip_and_forged_ones_are_refused(tmp_path):
    path = tmp_path / "s.h5"
    pairs = [np.array([[0.0, 0.5]]), np.zeros((0, 2)), np.array([[0.1, 0.2], [0.3, 0.9]])]
    write_labelled_shard(path, pairs)
    with ShardReader(path) as shard:
        assert [p.tolist() for p in shard.read_fake_segments()] == [p.tolist() for p in pairs]
        assert [p.tolist() for p in shard.read_fake_segments(1, 3)] == [[], pairs[2].tolist()]
        assert shard.read_fake_kinds() == ["audio"] * 3
    with h5py.File(path, "r+") as handle:  # one sample claims more segments than exist
        handle[schema.FAKE_SEGMENTS_ENDS][0] = 2
    with pytest.raises(CacheFormatError, match="does not cut 'fake_segments'"):
        ShardReader(path)


def test_a_forged_segment_with_a_matching_sha256_is_refused(tmp_path):
    path = tmp_path / "s.h5"
    write_labelled_shard(path, [np.array([[0.0, 0.5]]), np.array([[0.2, 0.4]])])
    with h5py.File(path, "r+") as handle:
        handle[schema.FAKE_SEGMENTS][1] = [0.4, np.inf]
        fields = schema.ShardLayout(0, 8, fake_kinds=True, fake_segments=True).meta_datasets()
        columns = {name: handle[name].asstr()[()] if name in (schema.VIDEO_NAME, schema.FAKE_KIND)
                   else handle[name][()] for name in fields}  # fmt: skip
        handle.attrs[schema.ATTR_META_SHA256] = schema.meta_sha256(columns, fields)
    with pytest.raises(CacheFormatError, match=r"sample 1 \('v1.mp4'\) has fake segment"):
        ShardReader(path)


@pytest.mark.parametrize("pairs", [np.array([[0.5, 0.2]]), np.array([[-1.0, 0.2]]),
                                   np.zeros((schema.MAX_FAKE_SEGMENTS + 1, 2)), None])  # fmt: skip
def test_the_writer_refuses_segments_no_reader_would_accept(tmp_path, pairs):
    with pytest.raises(ValueError, match="fake segments"):
        write_labelled_shard(tmp_path / "s.h5", [pairs])
