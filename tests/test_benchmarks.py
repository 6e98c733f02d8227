"""Every benchmark runs end to end at its `--tiny` size, so that none stops working unseen:
it exits 0, prints its ratios and writes its figures, each one a finite number. Speeds are
never asserted (on a shared machine they are noise); what a run must produce is.
The detector benchmark's run is in test_detector_bench.py; gpu_check, generalisation and
cross_dataset have tests of their own."""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
import shutil

import cv2
import pytest
import torch

from avcache.cache import open_cache
from avcache.preprocess.faces import resolve_detector
from benchmarks import (
    cli_bench,
    faces_bench,
    loader_bench,
    preprocess_bench,
    remote_bench,
    scaling_bench,
)

NUMBER = r"(-?[0-9][0-9,]*\.?[0-9]*(?:e[+-]?[0-9]+)?)"


@pytest.fixture(autouse=True)
def threads_kept():
    """The benchmarks pin torch and OpenCV to one thread, as in a worker; later tests get
    back what they had."""
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    yield
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv2_threads)


def printed(pattern: str, text: str) -> list[float]:
    """The numbers that `pattern` (with NUMBER groups) captures in the printed report."""
    found = [float(v.replace(",", "")) for m in re.finditer(pattern, text) for v in m.groups()]
    assert found, f"no line matches {pattern!r}"
    return found


def all_finite(value: object) -> bool:
    """Every number in a JSON tree is finite (None stands for a figure not measured)."""
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(all_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def test_tiny_keeps_the_options_given():
    args = loader_bench.parse_args(["--tiny", "--samples", "32"])
    assert args.samples == 32 and args.shards == loader_bench.TINY["shards"]
    assert loader_bench.parse_args([]).samples == 8192


def test_loader_bench_writes_caches_the_reader_accepts_and_reports_every_ratio(tmp_path, capsys):
    assert loader_bench.main(["--tiny", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / loader_bench.RESULTS_FILE).read_text())
    # The indexes it writes are ones the hardened reader opens (a string config was refused).
    mel_cache, av_cache = (
        open_cache(tmp_path / "data" / name) for name in ("mel-cache", "av-cache")
    )
    assert mel_cache.config["faces"]["frames"] == 0
    assert av_cache.config["faces"]["frames"] == loader_bench.TINY["faces_frames"]
    assert results["data"]["mel_cache"]["samples"] == loader_bench.TINY["samples"]
    assert all_finite(results)
    mel, av = results["ratios"]["ours block 16"], results["ratios"]["ours av block 16"]
    for phase in ("warm", "cold"):
        for other in ("(c) ceiling", "(a) baseline", "(b) naive"):
            assert mel[f"ours / {other}, {phase}"]["paired_median"] > 0
        assert av[f"ours / (c) ceiling, {phase}"]["paired_median"] > 0
    assert len(results["ratios"]) == 2
    assert len(results["targets"]) == len(loader_bench.TARGETS)
    assert results["shard_open"]["shards"] == 2 and results["shard_open"]["ms_per_shard"] > 0
    assert set(results["sum64"]) == {"mel mel", "av mel", "av faces"}
    assert [row["workers"] for row in results["training"]] == [0, 2]
    assert len(printed(rf"ours block 16: ours / \(c\) ceiling, warm +{NUMBER} +{NUMBER}", out)) == 2
    assert printed(rf"open_cache: {NUMBER} ms per shard of 256 mel-only samples", out)[0] > 0


@pytest.mark.skipif(
    installed("moviepy") != preprocess_bench.MOVIEPY_PIN,
    reason="the published baseline's moviepy is not installed (the test never installs it)",
)
def test_preprocess_bench_compares_the_recipes_and_times_every_phase(tmp_path, capsys, monkeypatch):
    # What the benchmark sets for moviepy, set here so that it is undone after the test.
    monkeypatch.setenv("FFMPEG_BINARY", shutil.which("ffmpeg") or "ffmpeg")
    assert preprocess_bench.main(["--tiny", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / preprocess_bench.RESULTS_FILE).read_text())
    assert all_finite(results)
    clips = preprocess_bench.TINY["clips"]
    assert results["clips"]["count"] == clips and len(results["mel"]["per_clip"]) == clips
    runs = [(row["how"], row["jobs"]) for row in results["pipeline"]]
    assert runs == [("api", 1), ("api", 2), ("cli", 1), ("cli", 2)]
    assert all(row["cached"] == clips and row["failed"] == 0 for row in results["pipeline"])
    assert results["ratios"]["mad_max"] < 1.0  # parity with the published recipe
    facts = results["facts"]
    assert facts["clips"] == clips and facts["cpu_s_per_video_with"] > 0
    assert facts["detector"] == resolve_detector("auto")
    assert set(results["phase_seconds"]) == {"setup", "mel", "facts", "views", "api", "cli"}
    (size,) = results["views"]["sizes"].values()  # --tiny: the clips as generated alone
    assert size["cpu_s_per_video"]["default"] > 0 and size["cpu_s_per_video"]["before"] > 0
    assert size["dense_seconds_per_video"] > 0 and "dense_cpu_s_per_second" in size
    assert len(printed(rf"{NUMBER} ms added a second of video", out)) == 1
    # the default caches tracks: its steps include the windows', which the other has not
    steps = size["steps_s"]
    assert {"decode_frames", "video_tracks", "read_audio", "track_rate_audio"} <= set(
        steps["default"]
    )
    assert "face_frames" in steps["before"] and "video_tracks" not in steps["before"]
    assert len(printed(rf"default's steps, ms a video, .*decode_frames {NUMBER}", out)) == 1
    for key in (
        "mel_in_process_wall",
        "cli_mel_jobs2_vs_jobs1_wall",
        "api_mel_jobs2_vs_jobs1_wall",
    ):
        assert printed(rf"  {key} +{NUMBER}", out)[0] > 0
    assert len(printed(rf"the facts cost {NUMBER} ms a video", out)) == 1


def test_faces_bench_reports_every_codec_decoder_and_loader(tmp_path, capsys):
    assert faces_bench.main(["--tiny", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "faces_bench.json").read_text())
    assert all_finite(results)
    assert results["crops"] == faces_bench.TINY["videos"] * faces_bench.FRAMES
    assert set(results["codecs"]) == {
        "raw",
        "zlib-6",
        *(f"jpeg q{q}" for q in faces_bench.QUALITIES),
    }
    assert len(results["decoders"]) == 4
    loaders = {f"{codec} {what} {phase}" for codec in ("raw", "jpeg")
               for what in ("loader", "disk read") for phase in ("warm", "cold")}  # fmt: skip
    assert set(results["loader"]) == loaders | {
        "jpeg undecoded loader warm",
        "jpeg undecoded loader cold",
    }
    assert results["bytes_per_sample"]["jpeg"] < results["bytes_per_sample"]["raw"]
    ratios = printed(rf"(?:raw|jpeg): loader cold / disk-read ceiling cold = {NUMBER}", out)
    assert len(ratios) == 2 and all(r > 0 for r in ratios)


def test_scaling_bench_names_the_detector_it_runs_and_prints_its_ratios(tmp_path, capsys):
    assert scaling_bench.main(["--tiny", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    total = scaling_bench.TINY["videos"] + scaling_bench.TINY["val"] + scaling_bench.TEST_VIDEOS
    detector = resolve_detector("auto")  # what the default config runs here
    assert f"preprocess {total} videos (mel + 4 {detector} faces of 64 px)" in out
    assert "all four caches byte-identical: yes" in out
    jobs = printed(rf"(?:loky|dask): 2 jobs / 1 job = {NUMBER}x", out)
    ranks = printed(rf"2 ranks / 1 rank = {NUMBER}x", out)
    assert len(jobs) == 2 and len(ranks) == 1
    assert all(math.isfinite(r) and r > 0 for r in jobs + ranks)


def test_cli_bench_times_help_and_a_refused_mistake_of_every_console_script(capsys):
    assert cli_bench.main(["--tiny"]) == 0
    out = capsys.readouterr().out
    for script, (mistake, _) in cli_bench.MISTAKES.items():
        for command in ("--help", mistake):
            median, most, share = printed(rf"\| {script} \| {command} \| {NUMBER} \| "
                                          rf"{NUMBER} \| {NUMBER} \|", out)  # fmt: skip
            assert 0 < median <= most
            assert share == pytest.approx(median / cli_bench.TARGET_S, abs=0.01)
    assert printed(rf"\| \(python\) \| {cli_bench.HEAVY} \| {NUMBER} \|", out)[0] > 0
    assert "over the target: " in out


def test_remote_bench_times_every_loader_against_the_local_one_at_every_step(tmp_path, capsys):
    assert remote_bench.main(["--tiny", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "remote_bench.json").read_text())
    assert list(results["passes"]) == ["step 0 ms", "step 5 ms"]
    for rows in results["passes"].values():
        assert list(rows) == list(remote_bench.LOADERS)
        assert all(row["samples_per_s"] > 0 for row in rows.values())
        assert rows["local"]["to_local"] == 1.0
    assert "s3 cold, fetched ahead" in out and "x local" in out
