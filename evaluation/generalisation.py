"""Leave-one-manipulation-out: how detectors hold up on a kind of fake they never saw.

    python -m evaluation.generalisation --out DIR [--train 300 --val 800] [--seeds 0,1]
        [--epochs 4] [--mel-size 64] [--frames 2] [--jobs 2] [--recipes audio,faces,av,...]
        [--kinds face_paste,...] [--lip-sync SHARE] [--tracks] [--preprocess KEY=VALUE ...]

DeepfakeBench's cross-manipulation protocol on the sample generator, which records each
fake clip's manipulations (sample_manifest.json):
1. a sample data set is rendered and cached once (mel, 4 faces of 64 px, as `make demo`;
   `--lip-sync SHARE` makes that share of its fakes lip-sync fakes, kind lip_sync);
2. for each manipulation kind H, a fold cache is written: its train split holds the train
   reals and the train fakes that do not use H, its val split the val reals and the val
   fakes that do use H; the held-out fakes are never trained on;
3. each recipe is trained on each fold for each seed, for a fixed number of epochs (mel
   resized to --mel-size, --frames of the 4 faces: small enough for a CPU); the figure is
   the val AUC of the last epoch, so nothing is chosen on the held-out fakes.
With `--tracks`, the recipes that read the aligned tracks (lips, speech, sync, all) run too:
the sample is cached with one window a video of mouth frames and the same instants' audio
beside its mel and faces (DIR/cache-tracks, TRACKS_CACHE), and every recipe trains on folds
of that cache (DIR/folds-tracks); without it, on DIR/cache (no tracks). `--preprocess`
adds preprocessing overrides to the cache (to compare, say, tracks.locate_every=4 with the
default: each value in a DIR of its own).
Runs go `--jobs` at a time, each a training process of one thread (small batches use one
core better than two threads do). The table (recipe x held-out kind, mean and spread over
seeds) goes to DIR/table.md and DIR/generalisation.json, rewritten as runs finish.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path

from avcache.cache import open_cache, schema
from avcache.cache.index import ShardRecord, build_index
from avcache.cache.writer import ShardWriter
from avcache.common.arguments import share
from avcache.common.atomic import write_json_atomic
from avcache.common.config import load_config
from avcache.train.config import TRACK_KINDS, TrainConfig
from avcache.train.engine import METRICS
from evaluation.sweep import REPO, run_folder, run_training, sweep, table

# Recipe -> (config file, overrides). Every run also gets COMMON. A recipe whose model.kind
# reads the aligned tracks (TRACK_KINDS, needs_tracks) needs --tracks.
RECIPES: dict[str, tuple[str, list[str]]] = {
    "audio (baseline recipe)": ("configs/train_baseline.yaml", []),
    "audio": ("configs/train.yaml", ["model.kind=audio"]),
    "faces": ("configs/train.yaml", ["model.kind=faces"]),
    "av": ("configs/train.yaml", ["model.kind=av"]),
    "av + modality dropout": ("configs/train.yaml", ["model.kind=av",
                                                     "model.modality_dropout=0.5"]),
    "av + branch heads": ("configs/train.yaml", ["model.kind=av", "model.aux_weight=0.5"]),
    "av + mismatch": ("configs/train.yaml", ["model.kind=av", "augment.av_mismatch=0.25"]),
    "av + either-sense fusion": ("configs/train.yaml", ["model.kind=av", "model.fusion=or"]),
    "av + all three": ("configs/train.yaml", ["model.kind=av", "model.modality_dropout=0.5",
                                              "model.aux_weight=0.5",
                                              "augment.av_mismatch=0.25"]),
    "lips": ("configs/train.yaml", ["model.kind=lips"]),
    "speech": ("configs/train.yaml", ["model.kind=speech"]),
    "sync": ("configs/train.yaml", ["model.kind=sync"]),
    # A quarter of each batch hears other speech than its lips say (another clip's, or its
    # own shifted), labelled fake: the sync negatives the sample's own fakes rarely give.
    "sync + av_mismatch": ("configs/train.yaml", ["model.kind=sync",
                                                  "augment.av_mismatch=0.25"]),
    # Every view in one model (the mel, the faces, lips against speech, either-sense).
    "all": ("configs/train.yaml", ["model.kind=all"]),
    "all + branch heads + mismatch": ("configs/train.yaml", ["model.kind=all",
                                                             "model.aux_weight=0.5",
                                                             "augment.av_mismatch=0.25"]),
    # What avcache-train trains as shipped.
    "default": ("configs/train.yaml", []),
}  # fmt: skip
COMMON = ["data.batch_size=16", "data.workers=0", "run.threads=1"]
# The cache without --tracks (as `make demo` made it before tracks were cached by default:
# faces at 64 px, stored raw, no tracks).
FACES = ["faces.frames=4", "faces.size=64", "faces.codec=raw"]
CACHE = [*FACES, "tracks.windows=0"]
# With --tracks, the one cache every recipe trains on: the same mel and faces, and one window
# a video of 25 mouth frames (1 s at 25 fps, room for the sync model's offsets of -5..5
# frames) and that second's 16 kHz audio. Mouth crops of 48 px instead of LipForensics' 88:
# a lips or sync model runs a ResNet18 on each of the 25 frames of a clip, about 3x cheaper
# at 48 px on a CPU (2.5x measured), as the mel is resized to 64 px for the same reason; the
# mouth's opening, what the sample's lip-sync fakes change, is still many pixels tall.
TRACKS_CACHE = [*FACES, "tracks.windows=1", "tracks.frames=25", "tracks.size=48"]
# Folds folder -> the cache (in DIR) its folds are written from, and that cache's overrides.
CACHES = {"folds": ("cache", CACHE), "folds-tracks": ("cache-tracks", TRACKS_CACHE)}
# The --preprocess overrides DIR's caches were made with (a list, as given).
PREPROCESS_RECORD = "preprocess-overrides.json"


@functools.cache
def resolved(recipe: str) -> TrainConfig:
    """The training config the recipe's config file and overrides make."""
    config, overrides = RECIPES[recipe]
    return load_config(TrainConfig, REPO / config, overrides)


def needs_tracks(recipe: str) -> bool:
    """The recipe's model reads the aligned tracks (lips, speech, sync, all)."""
    return resolved(recipe).model.kind in TRACK_KINDS


def twin(recipe: str) -> str:
    """The first recipe that trains exactly what `recipe` trains: `default` is, by design, one
    of the others, and its runs are that recipe's runs rather than hours spent again."""
    return next(name for name in RECIPES if resolved(name) == resolved(recipe))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for data, runs, table")
    parser.add_argument("--train", type=int, default=300, help="train clips (half fake)")
    parser.add_argument("--val", type=int, default=800, help="val clips (half fake): the held-out"
                        " fakes of each kind are a share of these")  # fmt: skip
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--lip-sync", type=share, default=0.0, metavar="SHARE",
                        help="share of the sample's fakes made lip-sync fakes (kind lip_sync), "
                        "passed to avcache-sample (default 0: the sample as always; another "
                        "share is another sample: give it an --out of its own)")  # fmt: skip
    parser.add_argument("--tracks", action="store_true", help="also cache the sample with "
                        "aligned tracks (DIR/cache-tracks) and allow the recipes that read "
                        "them: " + ", ".join(r for r in RECIPES if needs_tracks(r)))  # fmt: skip
    parser.add_argument("--preprocess", action="append", default=[], metavar="KEY=VALUE",
                        help="a preprocessing override for the cache(s), after the protocol's "
                        "own (repeatable; other overrides are another cache: give them an "
                        "--out of their own)")  # fmt: skip
    parser.add_argument("--seeds", default="0,1", help="training seeds")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time")
    parser.add_argument("--mel-size", type=int, default=64, help="mel images resized to this")
    parser.add_argument("--frames", type=int, default=2, help="face frames a model sees (of 4)")
    parser.add_argument("--recipes", help="which of: " + ", ".join(RECIPES) + " (default: all; "
                        "those that read tracks only with --tracks)")  # fmt: skip
    parser.add_argument("--kinds", help="held-out kinds (default: every kind in the sample)")
    args = parser.parse_args(argv)
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    if args.recipes is None:
        args.recipes = [name for name in RECIPES if args.tracks or not needs_tracks(name)]
    else:
        args.recipes = [name.strip() for name in args.recipes.split(",")]
    unknown = [name for name in args.recipes if name not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe {unknown[0]!r} (known: {', '.join(RECIPES)})")
    tracked = [name for name in args.recipes if needs_tracks(name)]
    if tracked and not args.tracks:
        parser.error(f"recipe {tracked[0]!r} reads the aligned tracks: add --tracks (the "
                     "sample is then cached a second time, with them)")  # fmt: skip
    return args


def sample_command(args) -> list[str]:
    """avcache-sample's command line; without --lip-sync, the one it always was."""
    lip_sync = ["--lip-sync", str(args.lip_sync)] if args.lip_sync else []
    return [sys.executable, "-m", "avcache.sample", str(args.out / "data"), "--seed",
            str(args.data_seed), "--train", str(args.train), "--val", str(args.val),
            "--test", "0", *lip_sync]  # fmt: skip


def folds_of(tracks: bool) -> str:
    """The folder (in DIR) of the folds every recipe trains on; CACHES names their cache.
    With --tracks, that of the cache with tracks: one cache, the same pixels for all."""
    return "folds-tracks" if tracks else "folds"


def preprocess_commands(args) -> dict[str, tuple[Path, list[str]]]:
    """Folds folder -> the cache its folds come from and the preprocessing that makes it,
    for the folds the recipes train on."""
    wanted = {folds_of(args.tracks)}
    commands = {}
    for folds, (name, overrides) in CACHES.items():
        if folds in wanted:
            cache = args.out / name
            commands[folds] = (cache, [sys.executable, "-m", "avcache.preprocess.run", "--data",
                                       str(args.out / "data"), "--out", str(cache), "--quiet",
                                       *overrides, *args.preprocess])  # fmt: skip
    return commands


def check_preprocess_overrides(args) -> None:
    """Refuse a DIR whose caches and runs were made with other --preprocess overrides: its
    finished runs would be taken for runs on this cache. A DIR from before the option holds
    caches made without overrides."""
    record = args.out / PREPROCESS_RECORD
    made = record.exists() or any((args.out / name).exists() for name, _ in CACHES.values())
    before = json.loads(record.read_text()) if record.exists() else []
    if made and before != args.preprocess:
        raise SystemExit(
            f"error: {args.out} was made with --preprocess {before or 'none'}, "
            f"not {args.preprocess or 'none'}: give these another --out"
        )
    write_json_atomic(record, args.preprocess)


def build_sample(args) -> tuple[dict[str, Path], dict[str, tuple[str, ...]]]:
    """The cached sample (folds folder -> the cache its folds come from) and each clip's
    manipulations (empty for a real clip)."""
    data = args.out / "data"
    check_preprocess_overrides(args)
    if subprocess.run(sample_command(args), cwd=REPO).returncode != 0:
        raise SystemExit(
            f"error: avcache-sample failed on {data} (see above); a sample made with other "
            "--train/--val/--data-seed/--lip-sync needs another --out"
        )
    caches = {}
    for folds, (cache, command) in preprocess_commands(args).items():
        if not (cache / schema.INDEX_FILE).exists():
            subprocess.run(command, check=True, cwd=REPO)
        caches[folds] = cache
    manifest = json.loads((data / "sample_manifest.json").read_text())
    return caches, {clip["name"]: tuple(clip["kinds"]) for clip in manifest["clips"]}


def write_fold(cache_root: Path, kinds: dict[str, tuple[str, ...]], held_out: str,
               out: Path) -> dict[str, int]:  # fmt: skip
    """A cache whose train split never holds `held_out` fakes and whose val split holds only
    them (beside the val reals). Returns the fold's counts. A cache's tracks are copied too
    (their mouth crops re-encoded at its JPEG quality: a second pass, ~55 dB, reals and
    fakes alike)."""
    if (out / schema.INDEX_FILE).exists():
        return json.loads((out / "counts.json").read_text())
    cache = open_cache(cache_root)
    keep = {
        "train": lambda name: held_out not in kinds[name],
        "val": lambda name: not kinds[name] or held_out in kinds[name],
    }
    tracks = {"tracks": cache.tracks, "tracks_quality": cache.config["tracks"]["quality"]} \
        if cache.tracks else {}  # fmt: skip
    (out / "shards").mkdir(parents=True)
    records, counts = [], {}
    for split, wanted in keep.items():
        rel = f"shards/{split}.h5"
        size = cache.config["faces"]["size"]
        layout = schema.ShardLayout(frames=cache.frames, face_size=size, **tracks)
        with ShardWriter(out / rel, layout, split=split) as writer:
            for sample in cache.iter_samples(split):
                if wanted(sample.video_name):
                    writer.append(sample)
            records.append(ShardRecord(rel, split, *writer.close()))
        counts[split] = records[-1].num_samples
    write_json_atomic(out / schema.INDEX_FILE, build_index(cache.config, "fold", records))
    (out / "counts.json").write_text(json.dumps(counts))
    return counts


def train_command(fold: Path, recipe: str, seed: int, args, run: Path) -> list[str]:
    config, overrides = RECIPES[recipe]
    return [sys.executable, "-m", "avcache.train.run", "--config", str(REPO / config),
            "--cache", str(fold), "--out", str(run), *overrides, *COMMON, f"run.seed={seed}",
            f"run.epochs={args.epochs}", f"model.mel_size={args.mel_size}",
            f"model.frames={args.frames}"]  # fmt: skip


def train_once(fold: Path, recipe: str, seed: int, args, run: Path) -> float:
    """The last epoch's validation (held-out) AUC of one run (kept when already there),
    trained in a process of its own."""
    metrics = run / METRICS
    if not metrics.exists() or len(metrics.read_text().splitlines()) < args.epochs:
        run_training(train_command(fold, recipe, seed, args, run), run, f"{recipe} on {fold}")
    return json.loads(metrics.read_text().splitlines()[-1])["val_auc"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    caches, clip_kinds = build_sample(args)
    present = sorted({kind for kinds in clip_kinds.values() for kind in kinds})
    held_out = args.kinds.split(",") if args.kinds else present
    folds = {name: {kind: write_fold(cache, clip_kinds, kind, args.out / name / kind)
                    for kind in held_out} for name, cache in caches.items()}  # fmt: skip

    busy = defaultdict(threading.Lock)  # a run folder trained by one thread at a time

    def train(kind: str, recipe: str, seed: int) -> float:
        run = run_folder(args.out / "runs" / kind, twin(recipe), seed)
        with busy[run]:
            return train_once(args.out / folds_of(args.tracks) / kind, recipe, seed, args, run)

    results = sweep(held_out, args.recipes, args.seeds, args.jobs, train,
                    lambda results: write_results(args, folds, results, held_out))  # fmt: skip
    print(table(results, held_out))
    return 0


def write_results(args, folds: dict, results: dict, held_out: list[str]) -> None:
    """table.md, and generalisation.json: each run's AUC by recipe, held-out kind and seed,
    with the folds' counts (track_folds: those of the track recipes' folds)."""
    (args.out / "table.md").write_text(table(results, held_out) + "\n")
    tracked = {"track_folds": folds["folds-tracks"]} if "folds-tracks" in folds else {}
    (args.out / "generalisation.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "folds": folds.get("folds", {}),
         **tracked, "results": results}, indent=1))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
