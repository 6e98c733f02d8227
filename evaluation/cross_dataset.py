"""Leave-one-data-set-out: how detectors trained on some data sets do on one they never saw.

    python -m evaluation.cross_dataset --out DIR --caches a=CACHE,b=CACHE[,c=CACHE]
        [--mix equal|size] [--recipes audio,av] [--seeds 0,1] [--epochs 4]
        [--mel-size 64] [--frames 2] [--jobs 2]
    python -m evaluation.cross_dataset --out DIR --samples 0,1,2 [--train 120 --val 120]
        [--preprocess key=value ...]    # caches made here from the sample generator

For each held-out cache H, each recipe and each seed, one training run mixes the other
caches' train splits (data.caches; `--mix equal`: the same weight each, `--mix size`:
weighted by their train sizes, so that every sample is seen once an epoch) and lists H with
weight 0: validated every epoch, never trained on. The figure is H's val AUC of the last
epoch (val_auc/H in the run's metrics.jsonl), so nothing is chosen on H. Runs go `--jobs` at
a time, each a training process of one thread, and keep only their metrics. The table
(recipe x held-out data set, mean and half the range over seeds) goes to DIR/table.md and
DIR/cross_dataset.json, rewritten as runs finish.

`--samples` makes one cache per seed of the sample generator (DIR/data-S, DIR/cache-S,
named sampleS), so that the protocol runs on a fresh machine; those caches share their
speakers and manipulations, so they test the protocol's plumbing, not a shift between data
sets: the figures mean something on caches of different published data sets.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from avcache.cache import open_cache, schema
from avcache.train.engine import METRICS
from evaluation.generalisation import CACHE, COMMON, RECIPES
from evaluation.sweep import REPO, run_folder, run_training, sweep, table

MIXES = ("equal", "size")


def parse_caches(text: str) -> dict[str, Path]:
    """`a=DIR,b=DIR` -> {name: folder}; names are unique, at least two caches."""
    caches: dict[str, Path] = {}
    for item in text.split(","):
        name, sep, folder = item.partition("=")
        if not sep or not name.strip() or not folder.strip() or "/" in name:
            raise argparse.ArgumentTypeError(f"{item!r} is not NAME=CACHE_FOLDER")
        if name.strip() in caches:
            raise argparse.ArgumentTypeError(f"{name.strip()!r} is named twice")
        caches[name.strip()] = Path(folder.strip())
    return caches


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for runs and table")
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--caches", type=parse_caches, help="NAME=CACHE,... (two or more)")
    given.add_argument("--samples", help="sample generator seeds, one cache each: 0,1,2")
    parser.add_argument("--train", type=int, default=120, help="--samples: train clips each")
    parser.add_argument("--val", type=int, default=120, help="--samples: val clips each")
    parser.add_argument("--preprocess", nargs="*", default=CACHE, metavar="KEY=VALUE",
                        help="--samples: preprocessing overrides (default: "
                        f"{' '.join(CACHE)}, as make eval)")  # fmt: skip
    parser.add_argument(
        "--mix",
        choices=MIXES,
        default="equal",
        help="weights of the trained caches: equal, or by train size",
    )
    parser.add_argument("--recipes", default="audio,av", help="which of: " + ", ".join(RECIPES))
    parser.add_argument("--seeds", default="0,1", help="training seeds")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time")
    parser.add_argument("--mel-size", type=int, default=64, help="mel images resized to this")
    parser.add_argument("--frames", type=int, default=2, help="face frames a model sees")
    args = parser.parse_args(argv)
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    args.recipes = [name.strip() for name in args.recipes.split(",")]
    unknown = [name for name in args.recipes if name not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe {unknown[0]!r} (known: {', '.join(RECIPES)})")
    if args.caches is not None and len(args.caches) < 2:
        parser.error("--caches: give two or more, one to hold out and one to train on")
    if args.samples is not None and len(args.samples.split(",")) < 2:
        parser.error("--samples: give two or more seeds")
    return args


def sample_caches(args) -> dict[str, Path]:
    """One cache per sample seed (made once: a finished sample and cache are kept)."""
    caches = {}
    for seed in args.samples.split(","):
        data, cache = args.out / f"data-{seed}", args.out / f"cache-{seed}"
        sample = [sys.executable, "-m", "avcache.sample", str(data), "--seed", seed, "--train",
                  str(args.train), "--val", str(args.val), "--test", "0"]  # fmt: skip
        subprocess.run(sample, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        if not (cache / schema.INDEX_FILE).exists():
            subprocess.run([sys.executable, "-m", "avcache.preprocess.run", "--data", str(data),
                            "--out", str(cache), "--quiet", *args.preprocess],
                           check=True, cwd=REPO)  # fmt: skip
        caches[f"sample{seed}"] = cache
    return caches


def cache_sizes(caches: dict[str, Path]) -> dict[str, dict[str, int]]:
    return {name: {split: open_cache(folder).num_samples(split) for split in ("train", "val")}
            for name, folder in caches.items()}  # fmt: skip


def mix_listing(caches: dict[str, Path], held_out: str, weights: dict[str, int]) -> str:
    """The data.caches override of one run: the others by `weights`, `held_out` at weight 0
    (JSON, which YAML reads, so that no folder's name needs quoting)."""
    entries = [{"path": str(Path(folder).resolve()), "name": name,
                "weight": 0 if name == held_out else weights[name]}
               for name, folder in caches.items()]  # fmt: skip
    return "data.caches=" + json.dumps(entries)


def mix_weights(sizes: dict[str, dict[str, int]], mix: str) -> dict[str, int]:
    """equal: 1 each; size: each cache's train size (every sample once an epoch)."""
    return {name: sizes[name]["train"] if mix == "size" else 1 for name in sizes}


def train_command(caches: dict[str, Path], held_out: str, recipe: str, seed: int, args,
                  run: Path) -> list[str]:  # fmt: skip
    config, overrides = RECIPES[recipe]
    listing = mix_listing(caches, held_out, mix_weights(args.sizes, args.mix))
    return [sys.executable, "-m", "avcache.train.run", "--config", str(REPO / config),
            "--out", str(run), listing, *overrides, *COMMON,
            f"run.seed={seed}", f"run.epochs={args.epochs}", f"model.mel_size={args.mel_size}",
            f"model.frames={args.frames}"]  # fmt: skip


def held_out_auc(run: Path, held_out: str, epochs: int) -> float | None:
    """The held-out cache's val AUC of the run's last epoch, once the run has finished."""
    metrics = run / METRICS
    rows = metrics.read_text().splitlines() if metrics.exists() else []
    return json.loads(rows[-1])[f"val_auc/{held_out}"] if len(rows) >= epochs else None


def train_once(caches: dict[str, Path], held_out: str, recipe: str, seed: int, args,
               run: Path) -> float:  # fmt: skip
    """One run in a process of its own (kept when already finished), its checkpoints dropped."""
    auc = held_out_auc(run, held_out, args.epochs)
    if auc is not None:
        return auc
    command = train_command(caches, held_out, recipe, seed, args, run)
    run_training(command, run, f"{recipe} without {held_out}")
    return held_out_auc(run, held_out, args.epochs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    caches = args.caches if args.caches is not None else sample_caches(args)
    args.sizes = cache_sizes(caches)

    def train(held_out: str, recipe: str, seed: int) -> float:
        run = run_folder(args.out / "runs" / f"without-{held_out}", recipe, seed)
        return train_once(caches, held_out, recipe, seed, args, run)

    results = sweep(list(caches), args.recipes, args.seeds, args.jobs, train,
                    lambda results: write_results(args, caches, results))  # fmt: skip
    print(table(results, list(caches)))
    return 0


def write_results(args, caches: dict[str, Path], results: dict) -> None:
    """table.md, and cross_dataset.json: each run's held-out AUC by recipe, held-out cache and
    seed, with the caches and their sizes."""
    (args.out / "table.md").write_text(table(results, list(caches)) + "\n")
    settings = {k: str(v) for k, v in vars(args).items() if k != "sizes"}
    (args.out / "cross_dataset.json").write_text(json.dumps(
        {"args": settings, "mix": args.mix, "weights": mix_weights(args.sizes, args.mix),
         "caches": {name: str(folder) for name, folder in caches.items()},
         "sizes": args.sizes, "results": results}, indent=1))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
