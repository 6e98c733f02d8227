"""The leave-one-manipulation-out protocol runs end to end at a tiny size."""

from __future__ import annotations

import json

from avcache.cache import open_cache
from benchmarks.generalisation import main as generalisation_main


def test_the_protocol_holds_each_kind_out_of_training_and_tables_it(tmp_path):
    out = tmp_path / "protocol"
    args = ["--out", str(out), "--train", "12", "--val", "10", "--epochs", "1", "--seeds", "0"]
    assert generalisation_main([*args, "--recipes", "audio"]) == 0
    manifest = json.loads((out / "data" / "sample_manifest.json").read_text())
    kinds = {clip["name"]: set(clip["kinds"]) for clip in manifest["clips"]}
    results = json.loads((out / "generalisation.json").read_text())["results"]["audio"]
    assert results and set(results) <= set().union(*kinds.values())
    for held_out in results:
        fold = open_cache(out / "folds" / held_out)
        train = [s.video_name for s in fold.iter_samples("train")]
        val = [s.video_name for s in fold.iter_samples("val")]
        assert train and not any(held_out in kinds[name] for name in train)
        assert all(held_out in kinds[name] or not kinds[name] for name in val)
    table = (out / "table.md").read_text()
    assert table.startswith("| recipe |") and "| audio |" in table
