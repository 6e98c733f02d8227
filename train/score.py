"""avcache-score: score a submission CSV against a label file, as the competition does.

avcache-score submission.csv labels.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if __name__ == "__main__" and not __package__:  # `python train/score.py`: import as a package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from cache.labels import LabelFileError, read_rows
from cache.untrusted import printable
from train.metrics import detection_metrics


def read_column(path: Path, header: str) -> dict[str, str]:
    """name -> second column of a CSV with a header whose second name is `header`."""
    rows = read_rows(path, header=("video_name", header))
    return {cells[0].strip(): cells[1].strip() for _, cells in rows if len(cells) > 1}


def score(submission: Path, labels: Path) -> dict[str, float]:
    predicted = read_column(submission, "y_pred")
    truth = read_column(labels, "target")
    missing = sorted(set(truth) - set(predicted))
    if missing:
        raise LabelFileError(f"{submission}: no prediction for {len(missing)} labelled videos, "
                             f"e.g. {', '.join(missing[:3])}")  # fmt: skip
    names = list(truth)
    y_true = np.array([int(truth[name]) for name in names])
    y_score = np.array([float(predicted[name]) for name in names])
    return detection_metrics(y_true, y_score)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="avcache-score", description=__doc__.splitlines()[0])
    parser.add_argument("submission", type=Path, help="CSV with video_name,y_pred")
    parser.add_argument("labels", type=Path, help="CSV with video_name,target (1 fake, 0 real)")
    args = parser.parse_args(argv)
    try:
        metrics = score(args.submission, args.labels)
    except (LabelFileError, ValueError) as error:
        print(f"avcache-score: error: {printable(error)}", file=sys.stderr)
        return 2
    print(", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
