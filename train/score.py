"""avcache-score: score a submission CSV against a label file, as the competition does.

    avcache-score submission.csv labels.txt
    avcache-score submission.csv DATA/metadata.json --layout lav-df --select split=test

The label file is FFDV's `video_name,target` by default, or any layout the preprocessor
reads (docs/datasets.md), its videos named as the cache names them. Where the layout gives
kinds of fake (LAV-DF's modified modality, FakeAVCeleb's type), a second line gives the AUC
of each kind's fakes against all the reals.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from avcache.common.labels import LabelFileError, read_rows
from avcache.common.untrusted import printable
from avcache.train.lists import ListSpec, add_list_options, list_spec, read_entries

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


def truth_of(labels: Path, spec: ListSpec) -> tuple[dict[str, float], dict[str, str] | None]:
    """(name -> target, name -> kind of fake, None where the layout gives no kinds)."""
    if spec.ffdv:
        return read_column(labels, "target", target, "0 (real) or 1 (fake)", "label file"), None
    entries = read_entries(labels, spec, labelled=True)
    truth = {entry.name: float(entry.label) for entry in entries}
    has_kinds = any(entry.kind is not None for entry in entries)
    return truth, {entry.name: entry.kind or "-" for entry in entries} if has_kinds else None


def score(submission: Path, labels: Path, spec: ListSpec | None = None
          ) -> tuple[dict[str, float], str | None]:  # fmt: skip
    """(the competition's metrics, the line of AUC per kind of fake where the layout gives
    kinds, else None)."""
    predicted = read_column(submission, "y_pred", probability, "a probability in [0, 1]",
                            "submission")  # fmt: skip
    truth, kinds = truth_of(labels, spec or ListSpec())
    missing = [name for name in truth if name not in predicted]
    if missing:
        raise LabelFileError(f"{submission}: no prediction for {len(missing)} labelled videos, "
                             f"e.g. {', '.join(sorted(missing)[:3])}")  # fmt: skip
    # scikit-learn takes most of a second to import: only once the files have been read
    from avcache.train.metrics import detection_metrics

    names = list(truth)
    y_true = np.array([int(truth[name]) for name in names])
    y_score = np.array([predicted[name] for name in names])
    by_kind = None if kinds is None else kinds_line(y_true, y_score, [kinds[n] for n in names])
    return detection_metrics(y_true, y_score), by_kind


def kinds_line(y_true, y_score, kinds: list[str]) -> str | None:
    """`auc by kind of fake, against all 3 reals: audio 0.7500 (2 fakes), ...`: each kind's
    fakes against every real, as training reports it per kind."""
    from avcache.train.metrics import auc_by_kind

    aucs = auc_by_kind(y_true, y_score, kinds)
    if not aucs:  # no fake among the scored videos
        return None
    fakes = Counter(kind for kind, y in zip(kinds, y_true.tolist(), strict=True) if y == 1)
    shown = ", ".join(f"{kind} {auc:.4f} ({counted(fakes[kind], 'fake')})"
                      for kind, auc in aucs.items())  # fmt: skip
    return f"auc by kind of fake, against all {counted(int((y_true == 0).sum()), 'real')}: {shown}"


def counted(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="avcache-score",
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("submission", type=Path, help="CSV with video_name,y_pred")
    parser.add_argument("labels", type=Path, help="label file: CSV with video_name,target (1 "
                        "fake, 0 real), or another layout's (--layout)")  # fmt: skip
    add_list_options(parser, "LABELS")
    args = parser.parse_args(argv)
    try:
        metrics, by_kind = score(args.submission, args.labels, list_spec(args))
    except (LabelFileError, ValueError) as error:
        print(f"avcache-score: error: {printable(error)}", file=sys.stderr)
        return 2
    print(", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
    if by_kind:
        print(by_kind)
    return 0


if __name__ == "__main__":
    sys.exit(main())
