"""avcache-score: score a submission CSV against a label file, as the competition does.

avcache-score submission.csv labels.txt
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from avcache.cache.labels import LabelFileError, read_rows
from avcache.cache.untrusted import printable
from avcache.train.metrics import detection_metrics

ERRORS_LISTED = 10  # bad rows named in one message


def read_column(path: Path, header: str, parse: Callable[[str], float | None],
                expected: str, what: str) -> dict[str, float]:  # fmt: skip
    """name -> parsed second column of a CSV with a header whose second name is `header`.
    Every bad row (a value `parse` refuses, a name given twice) is named as file:line."""
    values: dict[str, float] = {}
    first_line: dict[str, int] = {}
    problems = []
    for line, cells in read_rows(path, header=("video_name", header), what=what):
        name, raw = cells[0].strip(), cells[1].strip() if len(cells) > 1 else ""
        value = parse(raw)
        if name in first_line:
            problems.append(f"{path}:{line}: {name}: listed again (first on line "
                            f"{first_line[name]}); each video once")  # fmt: skip
        elif value is None:
            problems.append(f"{path}:{line}: {name}: {header} {raw!r} is not {expected}")
        else:
            values[name], first_line[name] = value, line
    if problems:
        more = len(problems) - ERRORS_LISTED
        raise LabelFileError("; ".join(problems[:ERRORS_LISTED])
                             + (f"; and {more} more" if more > 0 else ""))  # fmt: skip
    return values


def probability(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None  # NaN fails both comparisons


def target(text: str) -> float | None:
    return {"0": 0.0, "1": 1.0}.get(text)


def score(submission: Path, labels: Path) -> dict[str, float]:
    predicted = read_column(submission, "y_pred", probability, "a probability in [0, 1]",
                            "submission")  # fmt: skip
    truth = read_column(labels, "target", target, "0 (real) or 1 (fake)", "label file")
    missing = sorted(set(truth) - set(predicted))
    if missing:
        raise LabelFileError(f"{submission}: no prediction for {len(missing)} labelled videos, "
                             f"e.g. {', '.join(missing[:3])}")  # fmt: skip
    names = list(truth)
    y_true = np.array([int(truth[name]) for name in names])
    y_score = np.array([predicted[name] for name in names])
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
