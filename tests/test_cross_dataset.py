"""The leave-one-data-set-out protocol runs end to end at a tiny size."""

from __future__ import annotations

import json
import math

import yaml

from evaluation.cross_dataset import main as cross_dataset_main
from evaluation.cross_dataset import mix_listing, parse_args


def test_each_cache_is_held_out_in_turn_and_tabled(tmp_path):
    out = tmp_path / "protocol"
    args = ["--out", str(out), "--samples", "3,4", "--train", "12", "--val", "12",
            "--preprocess", "faces.frames=0", "--recipes", "audio", "--epochs", "1",
            "--mel-size", "32", "--seeds", "0,1"]  # fmt: skip
    assert cross_dataset_main(args) == 0
    report = json.loads((out / "cross_dataset.json").read_text())
    assert set(report["caches"]) == {"sample3", "sample4"}
    assert report["sizes"] == {name: {"train": 12, "val": 12} for name in report["caches"]}
    results = report["results"]["audio"]
    assert set(results) == {"sample3", "sample4"}
    for by_seed in results.values():
        assert set(by_seed) == {"seed 0", "seed 1"}
        assert all(math.isfinite(auc) and 0 <= auc <= 1 for auc in by_seed.values())
    for held_out in results:  # trained on the other cache, validated on both
        run = out / "runs" / f"without-{held_out}" / "audio" / "seed0"
        row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        assert row[f"val_auc/{held_out}"] == results[held_out]["seed 0"]
        listed = yaml.safe_load((run / "config.yaml").read_text())["data"]["caches"]
        assert {entry["name"]: entry["weight"] for entry in listed} == {
            name: 0.0 if name == held_out else 1.0 for name in results}  # fmt: skip
    table = (out / "table.md").read_text().splitlines()
    assert table[0] == "| recipe | sample3 | sample4 | mean | worst |"
    assert table[2].startswith("| audio | ") and table[2].count("±") <= 2


def test_the_held_out_cache_is_validated_and_never_trained_on(tmp_path):
    caches = {"a": tmp_path / "a", "b": tmp_path / "b", "c": tmp_path / "c"}
    listing = json.loads(mix_listing(caches, "b", {"a": 30, "b": 20, "c": 10}).split("=", 1)[1])
    assert [(e["name"], e["weight"]) for e in listing] == [("a", 30), ("b", 0), ("c", 10)]
    assert parse_args(["--out", "x", "--caches", f"a={caches['a']},b={caches['b']}"]).caches == {
        "a": caches["a"], "b": caches["b"]}  # fmt: skip
