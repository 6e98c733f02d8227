"""Where is it fake: the localisation model against the window classifier, on held-out
partial fakes.

    python -m avcache.evaluation.localisation --out DIR [--seeds 0,1] [--epochs 8] [--jobs 2]

1. `avcache-sample --partial 1 --layout lav-df`: every fake a real clip with one to three
   words replaced by a synthetic voice, the lips re-driven by them or not; the fake words'
   periods in metadata.json (the test split's included);
2. one cache of tracks tiling each clip, read as LAV-DF's layout (configs/localise.yaml);
3. each recipe trained on the train split for each seed, for a fixed number of epochs;
4. each run's last weights localise the test split (clips no run has seen): AP@IoU, AR@N
   and the challenge's score (train/segments.py), and the video AUC.

Recipes: `locate` scores every frame (train/locate.py); `window classifier` is the sync
model trained on the same windows, each window scored alone and its score given to its
frames (Model.step_logits), the segments made from frame scores the same way for both.
Writes DIR/localisation.json (every run's figures) and DIR/table.md (mean ± half the range
over the seeds); a run already scored is kept, so the table can be made in parts.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from avcache.evaluation.sweep import REPO, run_folder

SAMPLE = {"train": 300, "val": 60, "test": 100}
# The shipped localisation config (configs/localise.yaml: tracks tiling each clip, 2 s
# windows of 25 frames at 12.5 fps, 40 px mouths), with the 3 windows that cover the
# sample's clips of 4 to 6 s.
LOCALISATION_CACHE = ["tracks.windows=3"]
RECIPES = {"locate": ["model.kind=locate"], "window classifier": ["model.kind=sync"]}
COMMON = ["data.batch_size=16", "data.workers=0", "run.threads=1"]
SCORED = "test.json"  # in a run folder: its figures on the test split
REPORTED = ("ap@0.5", "ap@0.75", "ar@50", "ar@10", "score", "auc")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for data, runs, table")
    parser.add_argument("--seeds", default="0,1", help="training seeds (default 0,1)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once")
    parser.add_argument("--recipes", default=",".join(RECIPES),
                        help="which of: " + ", ".join(RECIPES))  # fmt: skip
    args = parser.parse_args(argv)
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    args.recipes = args.recipes.split(",")
    unknown = [name for name in args.recipes if name not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe {unknown[0]!r} (known: {', '.join(RECIPES)})")
    return args


def run_step(command: list[str], what: str) -> None:
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed: {done.stderr[-2000:]}")


def build_cache(out: Path) -> Path:
    """The sample and its tiled cache in OUT (each kept when already made alike)."""
    counts = [f"--{split}={count}" for split, count in SAMPLE.items()]
    run_step([sys.executable, "-m", "avcache.sample", str(out / "data"), *counts,
              "--partial=1", "--layout=lav-df"], "the sample")  # fmt: skip
    run_step([sys.executable, "-m", "avcache.preprocess.run", "--config", "localise",
              "--data", str(out / "data"), "--out", str(out / "cache"), "--quiet",
              *LOCALISATION_CACHE], "preprocessing")  # fmt: skip
    return out / "cache"


def train_and_score(cache: Path, recipe: str, seed: int, epochs: int, run: Path) -> dict:
    """One run's figures on the test split: trained and scored in processes of their own
    (kept when already scored), its checkpoints dropped after (~90 MB each)."""
    scored = run / SCORED
    if scored.exists():
        return json.loads(scored.read_text())
    if not (run / "last.pt").exists() and run.exists():  # cut short before its first epoch
        shutil.rmtree(run)
    command = [sys.executable, "-m", "avcache.train.run", "--cache", str(cache), "--out",
               str(run), *RECIPES[recipe], *COMMON, f"run.seed={seed}",
               f"run.epochs={epochs}"]  # fmt: skip
    if (run / "last.pt").exists():  # cut short: carried on where it stopped
        command = [sys.executable, "-m", "avcache.train.run", "--resume", str(run)]
    run_step(command, f"training {recipe} (seed {seed})")
    run_step([sys.executable, "-m", "avcache.evaluation.localisation", "score", str(run)],
             f"scoring {run}")  # fmt: skip
    for checkpoint in run.glob("*.pt"):
        checkpoint.unlink()
    return json.loads(scored.read_text())


def score_run(run: Path) -> dict:
    """RUN's last weights on its cache's test split: localisation metrics and video AUC."""
    from avcache.train.metrics import detection_metrics
    from avcache.train.runs import RunFolder
    from avcache.train.segments import Video, localisation_metrics

    trainer = RunFolder(run).trainer()
    localised = trainer.localise_split("test")
    truths = trainer.cache.fake_segments("test")
    videos = [Video.of(found, truth)
              for found, truth in zip(localised.proposals, truths, strict=True)]  # fmt: skip
    figures = localisation_metrics(videos)
    figures["auc"] = detection_metrics(localised.labels, localised.scores)["auc"]
    figures["videos"] = len(videos)
    figures["segments"] = sum(len(video.truths) for video in videos)
    return figures


def table(results: dict) -> str:
    """Markdown: recipe x metric, mean (± half the range) over the seeds."""
    lines = ["| recipe | " + " | ".join(REPORTED) + " |", "|---" * (len(REPORTED) + 1) + "|"]
    for recipe, by_seed in results.items():
        cells = []
        for metric in REPORTED:
            values = [run[metric] for run in by_seed.values() if math.isfinite(run[metric])]
            if not values:
                cells.append("—")
                continue
            half = (max(values) - min(values)) / 2
            cells.append(f"{statistics.fmean(values):.3f} ± {half:.3f}")
        lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["score"]:  # one run, in a process of its own (train_and_score)
        run = Path(argv[1])
        (run / SCORED).write_text(json.dumps(score_run(run), indent=1))
        return 0
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = build_cache(args.out)
    results: dict[str, dict[str, dict]] = {recipe: {} for recipe in args.recipes}
    writing = threading.Lock()

    def one(task: tuple[str, int]) -> None:
        recipe, seed = task
        run = run_folder(args.out / "runs", recipe, seed)
        figures = train_and_score(cache, recipe, seed, args.epochs, run)
        with writing:
            results[recipe][f"seed {seed}"] = figures
            write_results(args, results)

    tasks = [(recipe, seed) for recipe in args.recipes for seed in args.seeds]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(one, tasks))
    print(table(results))
    return 0


def write_results(args, results: dict) -> None:
    (args.out / "table.md").write_text(table(results) + "\n")
    (args.out / "localisation.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "sample": SAMPLE,
         "cache": ["--config localise", *LOCALISATION_CACHE], "results": results},
        indent=1))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
