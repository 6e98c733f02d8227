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
from pathlib import Path

import torch

if __name__ == "__main__" and not __package__:  # `python train/predict.py`: import as a package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from cache import schema
from cache.labels import LabelFileError, read_names
from cache.untrusted import printable
from train.augment import prepare
from train.runs import RunFolder

log = logging.getLogger("avcache.predict")
FALLBACK = 0.5  # P(fake) for a listed video without cached features: says "no idea"


def submission_rows(names: list[str], scores: dict[str, float]) -> tuple[list, list[str]]:
    """(rows, missing names): one row per listed name, in order."""
    missing = [name for name in names if name not in scores]
    rows = [(name, scores.get(name, FALLBACK)) for name in names]
    return rows, missing


def write_submission(path: Path, rows: list[tuple[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_name", "y_pred"])
        writer.writerows((name, f"{score:.6f}") for name, score in rows)


def predict_list(run: RunFolder, list_path: Path, out: Path, split: str) -> int:
    trainer = run.trainer(best=True)
    names, _, scores = trainer.predict_split(split)
    rows, missing = submission_rows(
        read_names(list_path), dict(zip(names, scores.tolist(), strict=True))
    )
    if missing:
        reasons = {f.video_name: f"{f.stage}: {f.error}" for f in trainer.cache.failures()}
        shown = printable(
            "; ".join(f"{name} ({reasons.get(name, 'not in the cache')})" for name in missing[:10])
        )
        log.warning("%d listed videos have no cached features and get %.1f: %s%s", len(missing),
                    FALLBACK, shown, " ..." if len(missing) > 10 else "")  # fmt: skip
    write_submission(out, rows)
    print(f"wrote {len(rows)} rows to {out} ({len(missing)} with the fallback {FALLBACK})")
    return 0


@torch.no_grad()
def predict_video(run: RunFolder, video: Path) -> float:
    """Preprocess one raw file in-process exactly as the cache was made, then score it."""
    from preprocess.worker import VideoFailed, process_video_file  # the preprocessing half

    trainer = run.trainer(best=True, check_shards=False)
    try:
        sample = process_video_file(video, run.preprocess_config())
    except VideoFailed as failed:
        raise ValueError(f"{video}: cannot be read ({failed.stage}: {failed.reason})") from None
    batch = {
        schema.MEL: torch.from_numpy(sample.mel[None]).to(trainer.device),
        schema.FACES: torch.from_numpy(sample.faces[None]).to(trainer.device),
    }
    trainer.model.eval()
    model = trainer.config.model
    inputs = prepare(batch, trainer.fields, None, None, model.frames, model.mel_size)
    return float(torch.sigmoid(trainer.evaluate_forward(inputs).float())[0])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="avcache-predict", description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="run folder made by avcache-train")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--list", type=Path, help="list to predict, e.g. prediction.txt.csv")
    target.add_argument("--video", type=Path, help="one raw video file: print its P(fake)")
    parser.add_argument("--out", type=Path, help="submission CSV (default RUN/submission.csv)")
    parser.add_argument("--split", default="test", help="cached split holding the listed videos")
    parser.add_argument("--cache", type=Path, help="cache folder (default: the run's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run = RunFolder(args.run, cache=args.cache)
        if args.video:
            print(f"{args.video}: P(fake) = {predict_video(run, args.video):.4f}")
            return 0
        return predict_list(run, args.list, args.out or args.run / "submission.csv", args.split)
    except (FileNotFoundError, LabelFileError, ValueError) as error:
        print(f"avcache-predict: error: {printable(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
