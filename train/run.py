"""avcache-train: train a detector on a cache, validating, checkpointing and plotting each epoch.

avcache-train --config configs/train.yaml --cache CACHE --out RUN [key=value ...]
avcache-train --out RUN data.caches=[A:3,B:1] [key=value ...]   # several caches, mixed by weight
avcache-train --resume RUN            # continue from RUN/last.pt to the configured epochs
torchrun --nproc_per_node N train/run.py ...   # the same, data-parallel over N processes

torch, timm and torchvision take seconds to import, so they are imported inside the
functions that build or run a model, after the config, the run folder and the cache have
been checked: --help and a mistake that needs no model are answered in a fraction of that.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from avcache.cache import open_cache
from avcache.cache.reader import Cache, CacheFormatError
from avcache.cache.remote import is_remote, location
from avcache.common.atomic import PARTIAL_SUFFIX, atomic_path
from avcache.common.config import ConfigError, key_listing, load_config, parse_override, yaml_text
from avcache.common.lock import FolderBusyError, FolderLock
from avcache.common.untrusted import printable
from avcache.train.config import (
    MODEL_INPUTS,
    MODEL_KINDS,
    TrainConfig,
    check_cache_fits,
    remote_settings,
    validate,
)
from avcache.train.interrupt import Interrupts
from avcache.train.ranks import Ranks, quiet_other_ranks, ranks_from_env
from avcache.train.runs import BEST, CONFIG, LAST, RunFolder

if TYPE_CHECKING:
    from avcache.train.engine import Trainer
    from avcache.train.mix import Source

log = logging.getLogger("avcache.train")
CURVES = "curves.png"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="avcache-train",
        description="Train a deepfake detector (timm ResNet18 branches; model.kind: "
        f"{', '.join(MODEL_KINDS)}) on a cache.",
        epilog="Overrides: any config key as key.sub=value, before or after the options.\n"
        "The keys and their defaults (train.yaml in configs/, installed as avcache/configs/,\n"
        "says what each does; --print-config > train.yaml writes them to a file to edit):\n"
        + key_listing(TrainConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML config file, or a shipped config by "
                        "name: train, train_baseline (default: train's values)")  # fmt: skip
    parser.add_argument("--cache", type=location, help="cache folder made by avcache-preprocess "
                        "(or data.caches=[DIR:WEIGHT,...]: several, mixed by weight)")  # fmt: skip
    parser.add_argument("--out", type=Path, help="run folder to create")
    parser.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in RUN "
                        f"(overrides: only {', '.join(RESUMABLE)})")  # fmt: skip
    parser.add_argument("--pretrained", help="imagenet (timm's weights via the Hugging Face "
                        "cache) or local ResNet18 weights (.safetensors/.pth); "
                        "same as model.pretrained=PATH")  # fmt: skip
    parser.add_argument("--init", metavar="CHECKPOINT", help="start from the weights of an "
                        "avcache checkpoint (RUN/last.pt) with a new schedule; same as "
                        "model.init=CHECKPOINT")  # fmt: skip
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit")  # fmt: skip
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)  # key=value may follow any option
    for flag, key in (("pretrained", "model.pretrained"), ("init", "model.init")):
        if getattr(args, flag):
            args.overrides.append(f"{key}={getattr(args, flag)}")
    if not (args.resume or args.print_config or args.out):
        parser.error("give --cache (or data.caches) and --out for a new run, or --resume RUN")
    return args


# What a resume may change: how it runs, never what it computes.
RESUMABLE = (
    "data.workers",
    "data.prefetch",
    "data.decode",
    "run.threads",
    "run.device",
    "run.compile",
    "run.checkpoint_every",
    "data.remote_cache",
    "data.remote_cache_limit",
    "data.remote_endpoint",
)


def resume_config(run: RunFolder, overrides: list[str]) -> TrainConfig:
    """The run's own config, with the overrides a resume can honour; any other is refused."""
    for override in overrides:
        key, value = parse_override(override)
        if key == "run.epochs" and value != run.config.run.epochs:
            raise ConfigError(more_epochs_message(run, override))
        if key == "run.epochs":
            continue
        if key not in RESUMABLE:
            raise ConfigError(
                f"override {override}: a resumed run keeps its config ({run.path / CONFIG}); "
                f"only {', '.join(RESUMABLE)} may change. To train with other settings, start "
                f"a new run: avcache-train --config {run.path / CONFIG} --cache "
                f"{run.cache_path} --out NEW {override}"
            )
    config = load_config(TrainConfig, run.path / CONFIG, overrides)
    validate(config, str(run.path / CONFIG))
    return config


def more_epochs_message(run: RunFolder, override: str) -> str:
    planned, schedule = run.config.run.epochs, run.config.optim.schedule
    return (
        f"override {override}: {run.path} was planned for {planned} epochs and its "
        f"{schedule} schedule is fixed by that; a resume cannot stretch it. To train on from "
        f"its weights with a new schedule, start a new run: avcache-train --config "
        f"{run.path / CONFIG} --cache {run.cache_path} --out {run.path}-more "
        f"--init {run.path / LAST} run.epochs=N"
    )


def new_run_config(args: argparse.Namespace) -> TrainConfig:
    """The config of a new run; data.caches' folders made absolute, so that the run's own
    config finds them from anywhere when it resumes."""
    config = load_config(TrainConfig, args.config, args.overrides)
    validate(config, str(args.config or "config"))
    for source in config.data.caches:
        if not is_remote(source.path):
            source.path = str(Path(source.path).resolve())
    return config


def first_cache(args: argparse.Namespace, config: TrainConfig) -> Cache:
    """The cache --cache names, or the first of data.caches (the one the run folder records,
    as avcache-predict's cache): exactly one of the two is given."""
    if args.cache and config.data.caches:
        raise ConfigError("give --cache DIR or data.caches, not both (data.caches=[DIR:WEIGHT,"
                          "...] lists every cache, the first included)")  # fmt: skip
    if not args.cache and not config.data.caches:
        raise ConfigError("give --cache DIR (or data.caches=[DIR:WEIGHT,...]) for a new run")
    return open_cache(args.cache or config.data.caches[0].path,
                      remote=remote_settings(config.data))  # fmt: skip


def check_sources_fit(config: TrainConfig, sources: list[Source]) -> None:
    """Every cache holds what the config trains on, a mix's caches agree on what the model
    reads from them, and no validated sample is trained on, in any cache (train/mix.py)."""
    from avcache.train.mix import check_held_out, check_sources_agree

    for source in sources:
        check_cache_fits(config, source.cache)
    check_sources_agree(sources, MODEL_INPUTS[config.model.kind], config.model.kind)
    check_held_out(sources, config.data.train_split, config.data.val_split)


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a folder; name a new run folder")
    if (out / LAST).exists() or (out / CONFIG).exists():
        raise ValueError(f"{out} already holds a run: use --resume {out} or another --out")


def start_run(args: argparse.Namespace) -> tuple[Trainer, FolderLock]:
    """A new run (rank 0 writes its folder) or the run in --resume, from its last.pt; every
    check that can be made is made before the first model is built, and the model (from the
    weights model.pretrained and model.init name, checked as they load) before the run
    folder is written: a refused run leaves --out as it was, for the corrected command."""
    config, cache, out = run_inputs(args)
    return built_run(args, config, cache, out)


def run_inputs(args: argparse.Namespace) -> tuple[TrainConfig, Cache, Path]:
    """The run's config, its (first) cache and its folder, checked without torch: a typo in
    a key, a cache or run folder that is not one, a cache that lacks what the config trains
    on, and a resume on its cache re-made with another config are refused at once."""
    if args.resume:
        run = RunFolder(args.resume)
        config = run.restoring(resume_config(run, args.overrides), run.path / LAST)
        cache, out = run.cache(), run.path
        run.check_inputs(cache, resuming=True)
    else:
        check_out(args.out)
        config, out = new_run_config(args), args.out
        cache = first_cache(args, config)
    check_cache_fits(config, cache)
    return config, cache, out


def built_run(args: argparse.Namespace, config: TrainConfig, cache: Cache,
              out: Path) -> tuple[Trainer, FolderLock]:  # fmt: skip
    """A Trainer from run_inputs' checked inputs: the caches checked against each other,
    the device chosen, the model built, the folder locked (and written for a new run), the
    checkpoint loaded for a resume."""
    from avcache.train import distributed
    from avcache.train.decode import check_decoding
    from avcache.train.engine import Trainer, start_device
    from avcache.train.mix import open_sources

    sources = open_sources(config, cache)
    check_sources_fit(config, sources)
    ranks, device = start_device(config.run.device)
    for source in sources:  # what the model will read, named before it is built
        check_decoding(config.data.decode, MODEL_INPUTS[config.model.kind], source.cache,
                       (config.data.train_split, config.data.val_split), device)  # fmt: skip
    trainer = Trainer(config, cache, out, device, sources)
    lock = lock_run(out, ranks)
    if not args.resume and ranks.main:
        RunFolder.create(out, config, cache)
        if config.model.pretrained is None and config.model.init is None:
            log.warning("no pretrained weights given (--pretrained imagenet or PATH): training "
                        "from scratch")  # fmt: skip
    distributed.barrier()
    if args.resume and (out / LAST).is_file():
        trainer.load(out / LAST)
        log.info("resuming %s at epoch %d, after %d of its batches", out,
                 trainer.progress.epoch + 1, trainer.progress.batches_done)  # fmt: skip
    elif args.resume:
        log.warning("%s holds no checkpoint yet (it stopped before its first): training "
                    "starts again at epoch 1", out)  # fmt: skip
    return trainer, lock


def lock_run(out: Path, ranks: Ranks) -> FolderLock:
    """Rank 0 locks the run folder for the whole run; every rank learns if it could not
    (a run still writing there: another avcache-train, or ranks of a killed torchrun)."""
    import torch

    from avcache.train import distributed

    lock = FolderLock(out, "another avcache-train is using this run folder (a run, or ranks "
                      "of a killed torchrun still finishing); wait for it to end")  # fmt: skip
    error = None
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire()
        except FolderBusyError as busy:
            error = busy
    if distributed.sum_across([float(error is None)], torch.device("cpu"))[0] < 1:
        raise error or FolderBusyError(f"{out}: rank 0 could not lock the run folder")
    return lock


def finish_run(trainer: Trainer) -> None:
    """Plots, and the best epoch's validation figures (every rank predicts, rank 0 writes)."""
    from avcache.train.engine import joined
    from avcache.train.mix import trained

    history = trainer.progress.history
    trainer.load(trainer.out / BEST, weights_only_model=True)
    split = trainer.config.data.val_split
    labels, scores = joined([(source, *trainer.predict_split(split, source.cache)[1:])
                             for source in trained(trainer.sources)])  # fmt: skip
    if not trainer.ranks.main:
        return
    write_curves(history, trainer.out)
    best = max(history, key=lambda row: row["val_auc"] if math.isfinite(row["val_auc"]) else -1)
    plots = plotting()
    if plots and len(set(labels.tolist())) == 2:
        plots.plot_roc(labels, scores, best["val_auc"], trainer.out / "roc.png")
    print(f"best epoch {best['epoch']}: validation AUC {best['val_auc']:.4f}, "
          f"AP {best['val_ap']:.4f}, EER {best['val_eer']:.4f}; run in {trainer.out}")  # fmt: skip


def write_curves(history: list[dict], out: Path) -> None:
    """RUN/curves.png, redrawn after every epoch (a run stopped early keeps its curves)."""
    plots = plotting()
    if plots:
        with atomic_path(out / CURVES) as partial:
            plots.plot_curves(history, partial)


class EpochLogs:
    """What rank 0 writes after each epoch's checkpoint: RUN/curves.png and, where
    run.tensorboard and the package allow, the TensorBoard log (train/board.py). It holds no
    trainer: a closure over one would be a reference cycle (see main)."""

    def __init__(self, trainer: Trainer) -> None:
        from avcache.train.board import open_board

        self.out = trainer.out
        wanted = trainer.config.run.tensorboard and trainer.ranks.main
        self.board = open_board(self.out, wanted, trainer.progress.epoch, plotting())

    def __call__(self, history: list[dict], labels, scores) -> None:
        write_curves(history, self.out)
        if self.board:
            self.board.epoch(history[-1], labels, scores)

    def close(self) -> None:
        if self.board:
            self.board.close()


@functools.cache
def plotting():
    """train/plots.py, imported where a plot is drawn; None, said once, where matplotlib is
    missing (a GPU box's own image may lack it): the run trains and records its metrics."""
    try:
        from avcache.train import plots
    except ImportError as error:
        log.warning("no plots (curves.png, roc.png): %s; metrics.jsonl holds the figures "
                    "(pip install matplotlib)", error)  # fmt: skip
        return None
    return plots


def without_worker_traceback(error: Exception) -> str:
    """The message of an error raised in a DataLoader worker, which torch re-raises with
    the worker's whole traceback in front of it."""
    text = str(error)
    if "Original Traceback" not in text:
        return text
    return text.rsplit(f"{type(error).__name__}: ", 1)[-1].strip()


def print_config(args: argparse.Namespace) -> int:
    if args.resume:
        config = resume_config(RunFolder(args.resume), args.overrides)
    else:
        config = new_run_config(args)
    print(yaml_text(config), end="")
    return 0


# Mistakes answered in one line with exit status 2; anything else is a bug and shows its trace.
USER_ERRORS = (ConfigError, CacheFormatError, FileNotFoundError, FolderBusyError, ValueError)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ranks = ranks_from_env()
    logging.basicConfig(level=logging.INFO if ranks.main else logging.WARNING, format="%(message)s")
    quiet_other_ranks(ranks)
    lock = logs = None
    with Interrupts(deferred=not ranks.distributed) as interrupts:
        try:
            if args.print_config:
                return print_config(args)
            trainer, lock = start_run(args)
            trainer.between_batches = interrupts.check
            # Not a closure over `trainer`: that would be a reference cycle, and a trainer
            # left for the interpreter's exit would tear its DDP process group down after
            # destroy_process_group, where gloo's threads abort the process.
            trainer.after_epoch = logs = EpochLogs(trainer)
            interrupts.check()
            trainer.fit()
            finish_run(trainer)
        except KeyboardInterrupt:
            return interrupted(args.resume or args.out, lock)
        except Exception as error:
            if interrupts.requested:  # e.g. a DataLoader worker that Ctrl-C stopped first
                return interrupted(args.resume or args.out, lock)
            if not isinstance(error, USER_ERRORS):
                raise
            print(f"avcache-train: error: {printable(without_worker_traceback(error))}",
                  file=sys.stderr)  # fmt: skip
            return 2
        finally:
            if logs is not None:
                logs.close()
            if lock is not None:
                lock.release()
            if ranks.distributed:  # only torchrun's ranks join a process group
                from avcache.train import distributed

                distributed.stop()
    return 0


def interrupted(out: Path, lock: FolderLock | None) -> int:
    """Ctrl-C: this run's own unfinished writes removed, one line, exit status 130."""
    if lock is not None:  # the run's own partial files, nobody else's
        for partial in Path(out).glob(f"*{PARTIAL_SUFFIX}"):
            partial.unlink(missing_ok=True)
    if (Path(out) / LAST).is_file():
        print(f"avcache-train: interrupted; checkpoints in {out} are whole (written under a "
              f"temporary name, then renamed): continue with avcache-train --resume {out}",
              file=sys.stderr)  # fmt: skip
    else:
        print(f"avcache-train: interrupted before the first checkpoint: {out} holds nothing "
              f"to continue from; avcache-train --resume {out} starts it again at epoch 1",
              file=sys.stderr)  # fmt: skip
    return 130


if __name__ == "__main__":
    sys.exit(main())
