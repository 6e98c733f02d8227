"""How long each console script takes to answer --help and a mistake, against a 1 s target.

    python -m benchmarks.cli_bench [--repeats 5] [--scripts avcache-train ...] [--tiny]

Every command runs as a user runs it: the installed console script (beside this Python) in
a fresh process, timed from its start to its exit. For each script, `--help` and one
mistake that needs no model (a typo in a key, a folder that is no cache or run, a missing
file), which must be refused with exit status 2: a user waits that long to learn of the
typo. The first of the repeats is the coldest (files not yet in the page cache); the
table gives the median and the max over all of them, and the median as a share of the
target. The machine is noisy: the load average before and after is printed with it.
`--tiny` runs each command once: a check that the benchmark works, not a measurement.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import load_average, machine, parse_with_tiny

TARGET_S = 1.0
BIN = Path(sys.executable).parent
TINY = {"repeats": 1}
HEAVY = "import torch, timm, torchvision"
# Script -> (the mistake, in words; its arguments): {empty} is a folder that holds nothing
# (no cache, no run), {nowhere} one that does not exist.
MISTAKES: dict[str, tuple[str, list[str]]] = {
    "avcache-preprocess": ("a typo in a key", ["--data", "{empty}", "--out", "{nowhere}",
                                               "faces.frmaes=3"]),
    "avcache-sample": ("a typo in a choice", ["--layout", "lavdf", "{nowhere}"]),
    "avcache-train": ("a typo in a key", ["--cache", "{empty}", "--out", "{nowhere}",
                                          "modle.kind=av"]),
    "avcache-predict": ("a folder that is no run", ["--run", "{empty}", "--list", "list.csv"]),
    "avcache-score": ("a missing submission", ["{nowhere}/submission.csv", "labels.csv"]),
    "avcache-fuse": ("a folder that is no run", ["fit", "{empty}", "{empty}", "--out",
                                                 "{nowhere}/fused.json"]),
    "avcache-inspect": ("a folder that is no cache", ["{empty}"]),
}  # fmt: skip


def command_seconds(command: list[str], code: int, cwd: Path) -> float:
    """Wall seconds of `command` in a fresh process; it must exit with `code` (a mistake
    that was not refused, or a crash, would time something else)."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != code:
        raise RuntimeError(f"{' '.join(command)}: exit {done.returncode}, not {code}: "
                           f"{done.stderr.strip()[-500:]}")  # fmt: skip
    return seconds


def timed_rows(scripts: list[str], repeats: int, root: Path) -> list[dict]:
    """One row per script and command: the median and max of `repeats` fresh runs."""
    places = {"empty": root / "empty", "nowhere": root / "nowhere"}
    places["empty"].mkdir()
    rows = []
    for script in scripts:
        what, args = MISTAKES[script]
        args = [arg.format(**places) for arg in args]
        for label, arguments, code in (("--help", ["--help"], 0), (what, args, 2)):
            times = [command_seconds([str(BIN / script), *arguments], code, root)
                     for _ in range(repeats)]  # fmt: skip
            rows.append(timing(script, label, times))
    # What a command that builds a model pays before its first line, for comparison.
    times = [command_seconds([sys.executable, "-c", HEAVY], 0, root) for _ in range(repeats)]
    return [*rows, timing("(python)", HEAVY, times)]


def timing(script: str, command: str, times: list[float]) -> dict:
    return {"script": script, "command": command, "median_s": statistics.median(times),
            "max_s": max(times)}  # fmt: skip


def print_table(rows: list[dict]) -> None:
    print(f"| script | command | median s | max s | median / {TARGET_S:g} s target |")
    print("|---|---|---|---|---|")
    for row in rows:
        share = row["median_s"] / TARGET_S
        print(f"| {row['script']} | {row['command']} | {row['median_s']:.2f} | "
              f"{row['max_s']:.2f} | {share:.2f} |")  # fmt: skip
    over = [f"{row['script']} {row['command']}" for row in rows
            if row["script"] in MISTAKES and row["median_s"] > TARGET_S]  # fmt: skip
    print(f"over the target: {', '.join(over) or 'none'}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh runs of each command")
    parser.add_argument("--scripts", nargs="+", choices=list(MISTAKES), default=list(MISTAKES),
                        metavar="SCRIPT", help="the scripts to time (default: all)")  # fmt: skip
    return parse_with_tiny(parser, argv, TINY)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    about = machine()
    before = load_average()
    with tempfile.TemporaryDirectory() as temporary:
        rows = timed_rows(args.scripts, args.repeats, Path(temporary))
    print(f"machine: {about['cpu_model']}, {about['cores']} cores, Python {about['python']}, "
          f"torch {about['packages']['torch']}; load average {before} before, "
          f"{load_average()} after; each command run {args.repeats} times, afresh")  # fmt: skip
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
