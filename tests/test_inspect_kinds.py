"""The kinds of fake and the fake segments of a LAV-DF-layout cache in the audit, the contact
sheets and the gallery; an FFDV cache (no kinds) looks as before.

The cache is preprocessed from a LAV-DF replica (tests/layouts.py) of 15 real clips: the
`audio` fakes last 1.5 s and every other clip 1 s, so the clip's duration gives away that
kind alone and says nothing of the `video` fakes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from avcache.cache import audit, open_cache
from avcache.cache.inspection import main as inspect_main
from avcache.preprocess.run import main as preprocess_main
from tests import layouts
from tests.toy import write_toy_cache

# (file, split, fake periods, modify_video, modify_audio): 3 reals, 3 video and 3 audio
# fakes to train on, 2 of each in dev; the last dev fake's period runs past its clip's end.
ENTRIES = [
    *[(f"train/r{i}.mp4", "train", [], False, False) for i in range(3)],
    *[(f"train/v{i}.mp4", "train", [[0.2, 0.6]], True, False) for i in range(3)],
    *[(f"train/a{i}.mp4", "train", [[0.5, 1.0]], False, True) for i in range(3)],
    *[(f"dev/r{i}.mp4", "dev", [], False, False) for i in range(2)],
    ("dev/v0.mp4", "dev", [[0.1, 0.3], [0.6, 0.8]], True, False),
    ("dev/v1.mp4", "dev", [[0.2, 0.6]], True, False),
    ("dev/a0.mp4", "dev", [[0.4, 0.9]], False, True),
    ("dev/a1.mp4", "dev", [[1.2, 2.5]], False, True),
]
SECONDS = {"a": 1.5}  # by the file name's first letter; 1 s otherwise


def write_lavdf(root: Path) -> dict:
    """The replica's metadata.json and clips under root/lavdf; the config of its two splits."""
    folder = root / "lavdf"
    folder.mkdir(parents=True)
    clips = {s: layouts.clip(root / f"clip{s}.mp4", s) for s in {1.0, *SECONDS.values()}}
    entries = []
    for file, split, periods, video, audio in ENTRIES:
        seconds = SECONDS.get(Path(file).name[0], 1.0)
        layouts.place(clips[seconds], folder / file)
        entries.append(layouts.lavdf_entry(file, split, periods, video, audio) | {
            "duration": seconds})  # fmt: skip
    (folder / "metadata.json").write_text(json.dumps(entries))
    return {name: {"layout": "lav-df", "labels": "lavdf/metadata.json", "videos": ["lavdf"],
                   "select": {"split": [split]}}
            for name, split in (("train", "train"), ("val", "dev"))}  # fmt: skip


@pytest.fixture(scope="module")
def lavdf(tmp_path_factory) -> Path:
    """The replica cached: 9 train and 6 val clips, no faces, 2 samples a shard."""
    root = tmp_path_factory.mktemp("lavdf")
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({"splits": write_lavdf(root / "data")}))
    out = root / "cache"
    code = preprocess_main(["--config", str(config), "--data", str(root / "data"), "--out",
                            str(out), "--quiet", "--jobs", "1", "--strict", "faces.frames=0",
                            "shards.size=4"])  # fmt: skip
    assert code == 0
    return out


def test_the_replica_holds_its_kinds_and_segments(lavdf):
    cache = open_cache(lavdf)
    assert cache.fake_kinds("val") == ["real", "real", "video", "video", "audio", "audio"]
    assert cache.fake_segments("val")[5].tolist() == [[1.2, 2.5]]
    durations = {s.video_name: float(s.duration) for s in cache.iter_samples("val")}
    assert durations["dev/a1.mp4"] == pytest.approx(1.5, abs=0.05)
    assert np.isclose(durations["dev/v1.mp4"], 1.0, atol=0.05)


# ---------------------------------------------------------------- the audit


def audit_report(cache: Path, tmp_path: Path, *extra: str) -> tuple[list[str], list[dict]]:
    """avcache-inspect CACHE audit: its printed lines and its JSON results."""
    report = tmp_path / "audit.json"
    assert inspect_main([str(cache), "audit", "--bootstrap", "50", "--json", str(report),
                         *extra]) == 0  # fmt: skip
    return json.loads(report.read_text())["results"]


def result(results: list[dict], cue: str, kind: str, split: str = "val") -> dict:
    return next(r for r in results if (r["cue"], r["kind"], r["split"]) == (cue, kind, split))


def test_the_audit_scores_each_kind_the_cache_records(lavdf, tmp_path, capsys):
    results = audit_report(lavdf, tmp_path)
    out = capsys.readouterr().out.splitlines()
    assert "kinds of fake (from the cache's labels): audio 5, video 5" in out
    assert {r["kind"] for r in results} == {"all", "audio", "video"}, "a real is no kind"
    audio, video = result(results, "duration", "audio"), result(results, "duration", "video")
    assert (audio["auc"], audio["reals"], audio["fakes"]) == (1.0, 2, 2)
    assert (video["auc"], video["reals"], video["fakes"]) == (0.5, 2, 2)
    assert result(results, "duration", "all")["auc"] == 0.75  # diluted by the video fakes
    row = next(line for line in out if line.startswith("duration "))
    assert row.endswith("audio 1.000"), row  # its strongest kind on val
    assert any(line.startswith("WARNING: shortcut: duration alone separates fakes of kind "
                               "audio from reals") for line in out)  # fmt: skip


def test_a_manifest_names_the_kinds_of_its_videos_and_the_cache_the_rest(lavdf, tmp_path,
                                                                        capsys):  # fmt: skip
    manifest = tmp_path / "manifest.json"
    clips = [
        {"name": "dev/a0.mp4", "kinds": ["voice"]},
        {"name": "dev/a1.mp4", "kinds": ["voice", "late"]},
    ]
    manifest.write_text(json.dumps({"clips": clips}))
    results = audit_report(lavdf, tmp_path, "--manifest", str(manifest))
    assert ("kinds of fake (from manifest.json for the 2 videos it names, the cache's labels "
            "for 8 more): audio 3, late 1, video 5") in capsys.readouterr().out  # fmt: skip
    assert result(results, "duration", "voice")["auc"] == 1.0
    assert [r for r in results if r["kind"] == "audio" and r["split"] == "val"] == []
    assert result(results, "duration", "audio", "train")["fakes"] == 3


def test_an_ffdv_cache_has_no_kinds_without_a_manifest(tmp_path, capsys):
    write_toy_cache(tmp_path / "toy", {"train": 24, "val": 24})
    results = audit_report(tmp_path / "toy", tmp_path)
    assert "kinds of fake" not in capsys.readouterr().out
    assert {r["kind"] for r in results} == {"all"}


def test_a_kind_every_fake_has_is_not_scored_again():
    """DFDC's only kind is "fake": its group would repeat 'all' and count every warning
    twice. A second kind makes each one a group."""
    table = audit.CueTable(names=["a", "b", "c", "d"], splits=["val"] * 4, labels=[0, 1, 1, 0],
                           kinds=[(), ("fake",), ("fake",), ()])  # fmt: skip
    assert list(audit.groups(table, None)) == ["all"]
    table.kinds[2] = ("other",)
    assert list(audit.groups(table, None)) == ["all", "fake", "other"]
    assert audit.groups(table, None)["fake"].tolist() == [True, True, False, True]
