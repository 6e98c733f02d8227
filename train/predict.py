"""avcache-predict: P(fake) for a competition list (submission CSV) or for one raw video.

    avcache-predict --run RUN --list DATA/prediction.txt.csv --out submission.csv
    avcache-predict --run RUN --video clip.mp4

Every row of the list gets a row, in the list's order. Videos the cache does
not hold (they failed preprocessing) get FALLBACK, and a warning names them.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from avcache.cache import schema
from avcache.cache.atomic import atomic_path
from avcache.cache.codec import encode_crops, round_trip, round_trip_grey
from avcache.cache.labels import LabelFileError, read_names
from avcache.cache.reader import Cache
from avcache.cache.untrusted import printable
from avcache.train.decode import decode_crops
from avcache.train.engine import Trainer
from avcache.train.runs import RunFolder

log = logging.getLogger("avcache.predict")
FALLBACK = 0.5  # P(fake) for a listed video without cached features: says "no idea"


def submission_rows(names: list[str], scores: dict[str, float]) -> tuple[list, list[str]]:
    """(rows, missing names): one row per listed name, in order."""
    missing = [name for name in names if name not in scores]
    rows = [(name, scores.get(name, FALLBACK)) for name in names]
    return rows, missing


def write_submission(path: Path, rows: list[tuple[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial, open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_name", "y_pred"])
        writer.writerows((name, f"{score:.6f}") for name, score in rows)


def splits_to_predict(cache: Cache, names: list[str], only: str | None) -> list[str]:
    """The cached splits holding the listed videos, the one holding most of them first."""
    holding = Counter(split for name in set(names) for split in cache.splits_holding(name))
    if only is not None:
        return [only] if holding[only] else []
    return [split for split, _ in holding.most_common()]


def predict_list(run: RunFolder, list_path: Path, out: Path, split: str | None,
                 max_fallback: float) -> int:  # fmt: skip
    names = read_names(list_path, "list to predict")  # refused before the model is built
    trainer = run.trainer(best=True)
    cache = trainer.cache
    missing = [name for name in names if split not in cache.splits_holding(name)] if split \
        else [name for name in names if not cache.splits_holding(name)]  # fmt: skip
    if missing:  # before predicting: a list the cache does not hold is refused at once
        report_fallbacks(cache, list_path, names, missing, max_fallback)
    scores: dict[str, float] = {}
    for cached_split in splits_to_predict(cache, names, split):
        predicted, _, values = trainer.predict_split(cached_split)
        for name, value in zip(predicted, values.tolist(), strict=True):
            scores.setdefault(name, value)
    rows, _ = submission_rows(names, scores)
    write_submission(out, rows)
    print(f"wrote {len(rows)} rows to {out} ({len(missing)} with the fallback {FALLBACK})")
    return 0


def report_fallbacks(cache: Cache, list_path: Path, names: list[str], missing: list[str],
                     max_fallback: float) -> None:  # fmt: skip
    """Warn about listed videos that get FALLBACK, or refuse when too many would: a
    submission made of fallbacks is worthless."""
    reasons = {f.video_name: f"{f.stage}: {f.error}" for f in cache.failures()}
    shown = printable(
        "; ".join(f"{name} ({reasons.get(name, 'not in the cache')})" for name in missing[:10])
    )
    more = " ..." if len(missing) > 10 else ""
    share = len(missing) / len(names)
    if share > max_fallback:
        failed = sum(name in reasons for name in missing)
        raise ValueError(
            f"{list_path}: {len(missing)} of {len(names)} listed videos ({share:.1%}) have no "
            f"cached features in {cache.root} ({failed} failed preprocessing, the rest were "
            f"never cached), over --max-fallback {max_fallback:g}: is it the list the cache was "
            f"made from (the preprocessing config's splits.*.labels)? e.g. {shown}{more}"
        )
    log.warning("%d listed videos have no cached features and get %.1f: %s%s", len(missing),
                FALLBACK, shown, more)  # fmt: skip


@torch.no_grad()
def predict_video(run: RunFolder, video: Path, ffmpeg: str | None = None) -> float:
    """Preprocess one raw file in-process exactly as the cache was made (decoded by the user's
    `ffmpeg`, never by one the run folder names), then score it."""
    from avcache.preprocess.worker import VideoFailed, process_video_file  # the preprocessing half

    config = run.preprocess_config(ffmpeg)  # refused before any model is built
    trainer = run.trainer(best=True, check_shards=False)
    try:
        sample = process_video_file(video, config)
    except VideoFailed as failed:
        raise ValueError(f"{video}: cannot be read ({failed.stage}: {failed.reason})") from None
    faces = torch.from_numpy(sample.faces)
    if config.faces.codec == "jpeg" and sample.faces.size:  # as the cache holds them
        faces = decoded_as_trained(trainer, sample.faces, config.faces.quality)
    batch = {
        schema.MEL: torch.from_numpy(sample.mel[None]).to(trainer.device),
        schema.FACES: faces[None].to(trainer.device),
        schema.LABEL: torch.zeros(1, device=trainer.device),
        **tracks_batch(sample, config.tracks.quality, trainer.device),
    }
    trainer.model.eval()
    inputs, _ = trainer.model_inputs(batch, generator=None)
    with trainer.autocast():  # as the run's own predictions were made (bf16 on CUDA)
        return float(torch.sigmoid(trainer.evaluate_forward(inputs).float())[0])


def decoded_as_trained(trainer: Trainer, faces: np.ndarray, quality: int) -> torch.Tensor:
    """A raw video's crops JPEG-coded as the cache holds them, then decoded where its run
    decoded the cache's: nvJPEG's pixels and libjpeg-turbo's differ by a grey level or two."""
    if trainer.decodes_faces_here(trainer.config.data.train_split):
        return decode_crops(encode_crops(faces, quality), trainer.device)
    return torch.from_numpy(round_trip(faces, quality))


def tracks_batch(sample: schema.Sample, quality: int, device: torch.device) -> dict:
    """A raw video's aligned windows as the cache holds them (its mouth crops through JPEG),
    for the models that read them; nothing where the cache has no tracks."""
    if sample.tracks is None:
        return {}
    lips = round_trip_grey(sample.tracks.lips, quality)
    return {schema.LIPS: torch.from_numpy(lips[None]).to(device),
            schema.TRACK_AUDIO: torch.from_numpy(sample.tracks.audio[None]).to(device)}  # fmt: skip


def share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="avcache-predict", description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="run folder made by avcache-train")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--list", type=Path, help="list to predict, e.g. prediction.txt.csv")
    target.add_argument("--video", type=Path, help="one raw video file: print its P(fake)")
    parser.add_argument("--out", type=Path, help="submission CSV (default RUN/submission.csv)")
    parser.add_argument("--split", help="look for the listed videos only in this cached split "
                        "(default: wherever the cache holds them)")  # fmt: skip
    parser.add_argument("--max-fallback", type=share, default=0.01, metavar="SHARE",
                        help=f"largest share of the list that may get the fallback {FALLBACK} "
                        "(videos without cached features) before the run is refused "
                        "(default 0.01)")  # fmt: skip
    parser.add_argument("--cache", type=Path, help="cache folder (default: the run's)")
    parser.add_argument("--ffmpeg", metavar="BINARY", help="--video: the ffmpeg to decode it "
                        "with, auto (this installation's) or a path (default: auto; one that "
                        "the run folder records is never run)")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run = RunFolder(args.run, cache=args.cache)
        if args.video:
            print(f"{args.video}: P(fake) = {predict_video(run, args.video, args.ffmpeg):.4f}")
            return 0
        out = args.out or args.run / "submission.csv"
        if out.is_dir():
            raise ValueError(f"--out {out}: is a folder; name the submission CSV to write")
        return predict_list(run, args.list, out, args.split, args.max_fallback)
    except (FileNotFoundError, LabelFileError, ValueError) as error:
        print(f"avcache-predict: error: {printable(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
