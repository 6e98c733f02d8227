"""avcache-train: train a detector on a cache, validating, checkpointing and plotting each epoch.

avcache-train --config configs/train.yaml --cache CACHE --out RUN [key=value ...]
avcache-train --resume RUN            # continue from RUN/last.pt to the configured epochs
torchrun --nproc_per_node N train/run.py ...   # the same, data-parallel over N processes
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python train/run.py`: import as a package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from cache import open_cache
from cache.config import ConfigError, load_config
from cache.reader import CacheFormatError
from cache.untrusted import printable
from train import distributed
from train.config import TrainConfig
from train.engine import BEST, LAST, Trainer, select_device
from train.plots import plot_curves, plot_roc
from train.runs import RunFolder

log = logging.getLogger("avcache.train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="avcache-train",
        description="Train a deepfake detector (timm ResNet18: audio, faces or av) on a cache.",
        epilog="Overrides: any config key as key.sub=value, e.g. model.kind=audio run.epochs=4.",
    )
    parser.add_argument("--config", type=Path, help="YAML config (default: configs/train.yaml's "
                        "values, built in)")  # fmt: skip
    parser.add_argument("--cache", type=Path, help="cache folder made by avcache-preprocess")
    parser.add_argument("--out", type=Path, help="run folder to create")
    parser.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in RUN")
    parser.add_argument("--pretrained", help="local ResNet18 weights (.safetensors/.pth); "
                        "same as model.pretrained=PATH")  # fmt: skip
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)  # key=value may follow any option
    if args.pretrained:
        args.overrides.append(f"model.pretrained={args.pretrained}")
    if not args.resume and not (args.cache and args.out):
        parser.error("give --cache and --out for a new run, or --resume RUN")
    return args


def start_run(args: argparse.Namespace) -> Trainer:
    """A new run (rank 0 writes its folder) or the run in --resume, from its last.pt."""
    if args.resume:
        run = RunFolder(args.resume, overrides=args.overrides)
        trainer = Trainer(run.config, run.cache(), run.path)
        if (run.path / LAST).is_file():
            trainer.load(run.path / LAST)
            log.info("resuming %s at epoch %d, after %d of its batches", run.path,
                     trainer.progress.epoch + 1, trainer.progress.batches_done)  # fmt: skip
        return trainer
    if (args.out / LAST).exists():
        raise ValueError(
            f"{args.out} already holds a run: use --resume {args.out} or another --out"
        )
    config = load_config(TrainConfig, args.config, args.overrides)
    cache = open_cache(args.cache)
    ranks = distributed.ranks_from_env()
    distributed.start(ranks, select_device(config.run.device, ranks.local_rank))
    if ranks.main:
        RunFolder.create(args.out, config, cache)
        if config.model.pretrained is None:
            log.warning("no pretrained weights given (--pretrained PATH): training from scratch")
    distributed.barrier()
    run = RunFolder(args.out)
    return Trainer(run.config, cache, run.path)


def finish_run(trainer: Trainer) -> None:
    """Plots, and the best epoch's validation figures (every rank predicts, rank 0 writes)."""
    history = trainer.progress.history
    trainer.load(trainer.out / BEST, weights_only_model=True)
    _, labels, scores = trainer.predict_split(trainer.config.data.val_split)
    if not trainer.ranks.main:
        return
    plot_curves(history, trainer.out / "curves.png")
    best = max(history, key=lambda row: row["val_auc"] if math.isfinite(row["val_auc"]) else -1)
    if len(set(labels.tolist())) == 2:
        plot_roc(labels, scores, best["val_auc"], trainer.out / "roc.png")
    print(f"best epoch {best['epoch']}: validation AUC {best['val_auc']:.4f}, "
          f"AP {best['val_ap']:.4f}, EER {best['val_eer']:.4f}; run in {trainer.out}")  # fmt: skip


def without_worker_traceback(error: Exception) -> str:
    """The message of an error raised in a DataLoader worker, which torch re-raises with
    the worker's whole traceback in front of it."""
    text = str(error)
    if "Original Traceback" not in text:
        return text
    return text.rsplit(f"{type(error).__name__}: ", 1)[-1].strip()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    main_rank = distributed.ranks_from_env().main
    logging.basicConfig(level=logging.INFO if main_rank else logging.WARNING, format="%(message)s")
    try:
        trainer = start_run(args)
        trainer.fit()
        finish_run(trainer)
    except (ConfigError, CacheFormatError, FileNotFoundError, ValueError) as error:
        message = printable(without_worker_traceback(error))
        print(f"avcache-train: error: {message}", file=sys.stderr)
        return 2
    finally:
        distributed.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
