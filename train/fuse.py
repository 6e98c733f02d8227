"""avcache-fuse: experts trained separately, their calibrated scores combined late.

    avcache-fuse fit RUN [RUN ...] --out fused.json [--split val]
    avcache-fuse predict fused.json --list DATA/prediction.txt.csv --out submission.csv
    avcache-fuse predict fused.json --list DATA/metadata.json --layout lav-df \
        --select split=test --out submission.csv
    avcache-fuse predict fused.json --video clip.mp4
    avcache-fuse predict fused.json --video new_videos/ --out scores.csv

Each run is an expert that keeps its own evidence (a mel model that hears a synthetic
voice, a sync model that sees lips part from speech); one model trained on everything at
once lets the easiest cue drown the others. `fit` scores a cached split with every expert
and fits a logistic regression on their logits (stacking: each expert's score calibrated
and weighed in one step, a handful of parameters); `predict` scores a list (or raw
videos) with every expert and combines them with those weights. The runs may read
different caches (a mel cache and a tracks cache of the same videos): samples are matched
by video name. Fit on a split the experts did not train on (`val`, the default), and for a
held-out protocol on one without the held-out kind.

--list and --video read what avcache-predict's do (any layout; files, folders and globs),
with the same exit status: 1 where some video could not be read (each named on stderr, the
others scored), 2 for a mistake in the command or its files.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from avcache.cache.remote import location
from avcache.common.atomic import write_json_atomic
from avcache.common.labels import LabelFileError
from avcache.common.untrusted import finite_number, load_json, mapping, printable, shown
from avcache.train.lists import add_list_options, list_names, list_spec
from avcache.train.predict import (
    FALLBACK,
    VideoScorer,
    checked_out,
    preprocessed,
    refuse_list_options,
    report_fallbacks,
    score_videos,
    scores_written,
    share,
    splits_to_predict,
    submission_rows,
    videos_named,
    write_submission,
)
from avcache.train.runs import RunFolder

log = logging.getLogger("avcache.fuse")
EPS = 1e-6  # scores are clipped into (EPS, 1 - EPS) before their logit


def logit(scores: np.ndarray) -> np.ndarray:
    scores = np.clip(np.asarray(scores, np.float64), EPS, 1 - EPS)
    return np.log(scores / (1 - scores))


def expert_scores(run: RunFolder, split: str) -> dict[str, tuple[float, float]]:
    """video name -> (label, P(fake)) of every cached sample of `split`, by one expert."""
    trainer = run.trainer(best=True)
    names, labels, scores = trainer.predict_split(split)
    return {name: (float(label), float(score))
            for name, label, score in zip(names, labels, scores, strict=True)}  # fmt: skip


def matched(per_run: list[dict[str, tuple[float, float]]]) -> tuple[list[str], np.ndarray,
                                                                     np.ndarray]:  # fmt: skip
    """(names every expert scored, labels [n], logits [n, experts])."""
    names = sorted(set.intersection(*(set(scores) for scores in per_run)))
    if not names:
        raise ValueError("the runs share no scored video: were they trained on caches of "
                         "the same videos?")  # fmt: skip
    labels = np.array([per_run[0][name][0] for name in names])
    logits = np.stack([logit([scores[name][1] for name in names]) for scores in per_run], 1)
    return names, labels, logits


def fit(runs: list[Path], split: str) -> dict:
    """The fusion's weights, fitted on `split`, with each expert's AUC and the fused one."""
    folders = [RunFolder(run) for run in runs]  # each checked before any model is built
    # scikit-learn takes most of a second to import: not for --help, nor for a refusal
    from sklearn.linear_model import LogisticRegression

    from avcache.train.metrics import detection_metrics

    per_run = [expert_scores(folder, split) for folder in folders]
    names, labels, logits = matched(per_run)
    if len(set(labels.tolist())) != 2:
        raise ValueError(f"split {split!r} must hold real and fake videos with their targets "
                         "to fit the fusion on")  # fmt: skip
    model = LogisticRegression(C=10.0).fit(logits, labels)
    aucs = {"fused": detection_metrics(labels, model.predict_proba(logits)[:, 1])["auc"]}
    for i, run in enumerate(runs):
        aucs[str(run)] = detection_metrics(labels, logits[:, i])["auc"]  # AUC: any monotone
    return {
        "runs": [str(Path(run).resolve()) for run in runs],
        "weights": model.coef_[0].tolist(),
        "bias": float(model.intercept_[0]),
        "split": split,
        "samples": len(names),
        "auc": aucs,
    }


def combine(fusion: dict, logits: np.ndarray) -> np.ndarray:
    """P(fake) [n] from the experts' logits [n, experts]."""
    value = logits @ np.asarray(fusion["weights"], np.float64) + fusion["bias"]
    return 1 / (1 + np.exp(-value))


MAX_WEIGHT = 1e6  # a fitted weight or bias is a few units (C=10 keeps them small)


def read_fusion(path: Path) -> dict:
    """A fit's JSON, each value checked before use (the user's own file, but it may come
    from elsewhere): runs are names of run folders, one weight per run and the bias finite
    numbers of a sane size, so the fused P(fake) is always a number."""
    fusion = mapping(load_json(path, "fusion"), str(path))
    problem = fusion_problem(fusion)
    if problem:
        raise ValueError(f"{path}: {problem}; not a fusion written by avcache-fuse fit (runs, "
                         "weights, bias)")  # fmt: skip
    return fusion


def fusion_problem(fusion: dict) -> str | None:
    """What is wrong with a fusion's runs, weights and bias, if anything."""
    runs, weights, bias = fusion.get("runs"), fusion.get("weights"), fusion.get("bias")
    if not isinstance(runs, list) or not runs:
        return f"'runs' is {shown(runs)}, not a list of run folders"
    for run in runs:
        if not isinstance(run, str) or not run or "\0" in run:
            return f"'runs' holds {shown(run)}, not the name of a run folder"
    if not isinstance(weights, list) or len(weights) != len(runs):
        return f"'weights' is {shown(weights)}, not one number per run ({len(runs)})"
    for value in [*weights, bias]:
        if finite_number(value, MAX_WEIGHT) is None:
            return (f"'weights' and 'bias' must be finite numbers of at most {MAX_WEIGHT:g} in "
                    f"size, found {shown(value)}")  # fmt: skip
    return None


def predict(fusion: dict, list_path: Path, names: list[str], out: Path, cache: Path | str | None,
            max_fallback: float) -> int:  # fmt: skip
    """Score the listed videos with every expert (each on its own cache, or all on `cache`)
    and write the fused submission; refused before any scoring when too many would get
    FALLBACK."""
    experts = [RunFolder(Path(run), cache=cache) for run in fusion["runs"]]
    check_fallbacks(experts, list_path, names, max_fallback)
    per_run = [list_scores(expert, names) for expert in experts]
    scored = [name for name in names if all(name in scores for scores in per_run)]
    logits = np.stack([logit([scores[n] for n in scored]) for scores in per_run], 1) \
        if scored else np.empty((0, len(per_run)))  # fmt: skip
    values = dict(zip(scored, combine(fusion, logits).tolist(), strict=True))
    rows, missing = submission_rows(names, values)
    write_submission(out, rows)
    print(f"wrote {len(rows)} rows to {out} ({len(missing)} with the fallback {FALLBACK})")
    return 0


def check_fallbacks(experts: list[RunFolder], list_path: Path, names: list[str],
                    max_fallback: float) -> None:  # fmt: skip
    """Refuse, as avcache-predict does, a list of which more than `max_fallback` has no
    cached features in an expert's cache, or in one of them (a video that one expert cannot
    score gets FALLBACK); warn about the rest."""
    without: set[str] = set()
    for expert in experts:
        cache = expert.cache()
        missing = [name for name in names if not cache.splits_holding(name)]
        if missing:
            report_fallbacks(cache, list_path, names, missing, max_fallback)
        without.update(missing)
    if len(without) / max(len(names), 1) > max_fallback:
        raise ValueError(
            f"{list_path}: {len(without)} of {len(names)} listed videos "
            f"({len(without) / len(names):.1%}) lack cached features in one expert's cache or "
            f"another, over --max-fallback {max_fallback:g}: do the experts' caches hold the "
            "same videos?"
        )


def list_scores(run: RunFolder, names: list[str]) -> dict[str, float]:
    """P(fake) of the listed videos the run's cache (or --cache) holds, by that expert."""
    trainer = run.trainer(best=True)
    scores, wanted = {}, set(names)
    for split in splits_to_predict(trainer.cache, names, None):
        predicted, _, values = trainer.predict_split(split)
        for name, value in zip(predicted, values.tolist(), strict=True):
            if name in wanted:
                scores.setdefault(name, value)
    return scores


def predict_videos(fusion: dict, values: list[str], out: Path | None, cache: Path | str | None,
                   ffmpeg: str | None) -> int:  # fmt: skip
    """The fused P(fake) of raw files: each expert scores each file preprocessed as its
    cache was made (avcache-predict --video), and the fusion combines their scores."""
    experts = [RunFolder(Path(run), cache=cache) for run in fusion["runs"]]
    videos = videos_named(values)  # refused before any model is built
    scorers = [VideoScorer(expert, ffmpeg) for expert in experts]
    rows, failed = score_videos(videos, fused_scorer(fusion, scorers), "avcache-fuse",
                                echo=out is None)  # fmt: skip
    return scores_written(rows, failed, out, "avcache-fuse")


def fused_scorer(fusion: dict, scorers: list[VideoScorer]):
    """video -> fused P(fake). Experts whose caches were made alike share one preprocessing
    of the video (it costs more than their models do)."""

    def score(video: Path, name: str) -> float:
        samples: list = []  # (config, sample) for each config met so far
        values = []
        for scorer in scorers:
            sample = next((s for config, s in samples if config == scorer.config), None)
            if sample is None:
                sample = preprocessed(video, scorer.config, name)
                samples.append((scorer.config, sample))
            values.append(scorer.score(sample))
        return float(combine(fusion, logit(np.array([values])))[0])

    return score


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="avcache-fuse",
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fitting = commands.add_parser("fit", help="fit the fusion of RUNs on a cached split")
    fitting.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run folders")
    fitting.add_argument("--out", type=Path, required=True, help="the fusion's JSON")
    fitting.add_argument("--split", default="val", help="cached split to fit on (default val)")
    scoring = commands.add_parser("predict", help="score a list or raw videos with a fitted "
                                  "fusion")  # fmt: skip
    scoring.add_argument("fusion", type=Path, help="JSON written by avcache-fuse fit")
    target = scoring.add_mutually_exclusive_group(required=True)
    target.add_argument("--list", type=Path, help="list to predict, e.g. prediction.txt.csv, "
                        "or another layout's label file (--layout)")  # fmt: skip
    target.add_argument("--video", nargs="+", metavar="VIDEO", help="raw video files, folders "
                        "or glob patterns, as avcache-predict --video reads them: print each "
                        "fused P(fake), or write them to --out")  # fmt: skip
    scoring.add_argument("--out", type=Path, help="--list: the submission CSV (needed); "
                         "--video: a CSV of video_name,y_pred (default: print)")  # fmt: skip
    add_list_options(scoring, "--list")
    scoring.add_argument("--cache", type=location, help="cache folder or s3:// URL every "
                         "expert scores (default: each expert's own)")  # fmt: skip
    scoring.add_argument("--max-fallback", type=share, default=0.01, metavar="SHARE",
                         help=f"largest share of the list that may get the fallback {FALLBACK} "
                         "(videos without cached features) before the run is refused "
                         "(default 0.01)")  # fmt: skip
    scoring.add_argument("--ffmpeg", metavar="BINARY", help="--video: the ffmpeg to decode it "
                         "with, auto (this installation's) or a path (default: auto; one that "
                         "a run folder records is never run)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.command == "predict" and args.list and args.out is None:
        scoring.error("--list needs --out, the submission CSV to write")
    if args.command == "predict":
        refuse_list_options(scoring, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "fit":
            fusion = fit(args.runs, args.split)
            write_json_atomic(args.out, fusion)
            aucs = ", ".join(f"{Path(k).name if k != 'fused' else k} {v:.4f}"
                             for k, v in fusion["auc"].items())  # fmt: skip
            print(f"fusion of {len(args.runs)} experts on {fusion['samples']} {args.split} "
                  f"samples -> {args.out}; AUC {aucs}")  # fmt: skip
            return 0
        spec = list_spec(args)  # a wrong --layout or --select: refused before anything is read
        fusion = read_fusion(args.fusion)
        if args.video:
            return predict_videos(fusion, args.video, checked_out(args.out), args.cache,
                                  args.ffmpeg)  # fmt: skip
        out = checked_out(args.out)
        names = list_names(args.list, spec)  # refused before any expert is read
        return predict(fusion, args.list, names, out, args.cache, args.max_fallback)
    except (FileNotFoundError, LabelFileError, ValueError) as error:
        print(f"avcache-fuse: error: {printable(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
