"""avcache-preprocess: a data set's folder of videos and label files -> a verified HDF5 cache.

    avcache-preprocess [--config FILE_OR_NAME] --data DATA --out CACHE [key=value ...]

One joblib task per shard of videos. Finished shards survive a crash: running
the same command again redoes only the missing ones, and index.json, written
last, lists only finished shards.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections import Counter
from pathlib import Path

from avcache.cache import schema
from avcache.cache.remote import Publisher, Remote, RemoteError, RemoteSettings, is_remote, location
from avcache.common.config import ConfigError, key_listing, load_config, yaml_text
from avcache.common.lock import FolderBusyError
from avcache.common.untrusted import printable
from avcache.preprocess.config import PreprocessConfig
from avcache.preprocess.dataset import LabelFileError
from avcache.preprocess.layouts import LAYOUTS
from avcache.preprocess.pipeline import BACKENDS, Preprocessor, RunSummary, validate

# A write refused for lack of room: a full disk, a file-size limit (ulimit -f), a quota.
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


# The overrides --help shows as an example (a test runs them as printed).
OVERRIDE_EXAMPLE = ("faces.frames=4", "shards.size=64", "splits.test.videos=[valset]")

LAYOUTS_HELP = (
    "Data sets: FFDV's folders and label files by default. For another data set, each split\n"
    "of splits: names its label file (labels), its video folders (videos) and its layout,\n"
    f"one of {', '.join(LAYOUTS)};\n"
    "select: {field: [values]} keeps only the entries whose field holds one of the values\n"
    "(LAV-DF's dev split: select: {split: [dev]}). Write them in a config file\n"
    "(--print-config > preprocess.yaml, then edit its splits), or override an entry:\n"
    "splits.val.select.split=[dev]; a split the config does not hold is given whole.\n"
    "docs/datasets.md has every layout's files and fields."
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="avcache-preprocess",
        description=(
            "Cache mel images and face frames of a data set's videos (FFDV's folders and label\n"
            "files by default, or another data set's layout) as HDF5 shards. Re-running the\n"
            "same command resumes: finished shards are kept."
        ),
        epilog=(
            LAYOUTS_HELP + "\n\n"
            "Overrides: any config key as key.sub=value, before or after the options, e.g.\n"
            f"{' '.join(OVERRIDE_EXAMPLE)}. A changed config writes a new\n"
            "set of shards. The keys and their defaults (preprocess.yaml in configs/, installed\n"
            "as avcache/configs/, says what each does; --print-config > preprocess.yaml writes\n"
            "them to a file to edit):\n" + key_listing(PreprocessConfig)
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML config, or the name of one shipped with the package: preprocess, or "
        "localise (LAV-DF's layout, tracks tiling each clip: where it is fake) "
        "(default: the built-in defaults, the same as the shipped preprocess.yaml)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        help="data root holding the label files and video folders (required)",
    )
    parser.add_argument(
        "--out",
        type=location,
        help="cache folder to write (required), or a URL on object storage (s3://bucket/prefix: "
        "shards are written under AVCACHE_REMOTE_CACHE first, each uploaded when finished, "
        "index.json last; docs/scaling.md)",
    )
    parser.add_argument(
        "--jobs", type=int, default=-1, help="worker processes (default -1: all cores)"
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="loky",
        help="loky: worker processes on this machine (default); dask: tasks on a "
        "dask.distributed cluster, a local one of --jobs processes unless --scheduler is given",
    )
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="a running Dask scheduler, e.g. tcp://10.0.0.5:8786 (implies --backend dask); "
        "its workers must see --data and --out at the same paths",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit non-zero if any video failed (default: only if none was cached)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)  # key=value may follow any option
    if not args.print_config and not (args.data and args.out):
        parser.error("--data and --out are required")
    return args


def print_summary(summary: RunSummary, out: str) -> None:
    failed = summary.failures
    rate = summary.processed / summary.seconds if summary.seconds > 0 else 0.0
    print(
        f"cached {summary.cached} videos, {len(failed)} failed, in {summary.seconds:.1f} s "
        f"({summary.processed} processed this run at {rate:.2f} videos/s, "
        f"{summary.reused} reused from finished shards) -> {out}"
    )
    if failed:
        stages = ", ".join(f"{stage}: {n}" for stage, n in Counter(f.stage for f in failed).items())
        print(f"failures by stage: {stages}; details in {out}/{schema.FAILURES_FILE}")
        for failure in failed[:5]:
            line = f"  {failure.split}/{failure.video_name}: {failure.stage}: {failure.error}"
            print(printable(line))


def disk_full_message(error: OSError, out: Path) -> str:
    return (
        f"avcache-preprocess: error: cannot write {error.filename or out}: "
        f"{error.strerror or error}. Shards finished before it, their receipts and the last "
        f"committed index are untouched (`avcache-inspect {out} verify` checks them). Free "
        f"space on the disk that holds {out} (or raise the file-size limit, `ulimit -f`) and run "
        "the same command again: finished shards are kept, the rest is redone."
    )


def destination(out: Path | str) -> tuple[Path, Publisher | None]:
    """The folder the shards are written to, and for a URL what uploads them from it."""
    if is_remote(out):
        publisher = Publisher(Remote(out), RemoteSettings.from_env().root)
        return publisher.stage, publisher
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a folder; name the cache folder")
    return out, None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = args.out
    try:
        config = load_config(PreprocessConfig, args.config, args.overrides)
        if args.print_config:
            validate(config)
            print(yaml_text(config), end="")
            return 0
        folder, publisher = destination(args.out)
        backend = "dask" if args.scheduler else args.backend
        preprocessor = Preprocessor(config, args.data, folder, args.jobs, backend, args.scheduler,
                                    publisher)  # fmt: skip
        summary = preprocessor.run(progress=not args.quiet)
    except (ConfigError, LabelFileError, FolderBusyError, ValueError, FileNotFoundError,
            RemoteError) as error:  # fmt: skip
        print(f"avcache-preprocess: error: {printable(error)}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise
        print(disk_full_message(error, folder), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"avcache-preprocess: interrupted; finished shards in {args.out} are kept and "
              "unfinished ones removed: run the same command again to go on",
              file=sys.stderr)  # fmt: skip
        return 130
    print_summary(summary, preprocessor.destination)
    return 1 if summary.cached == 0 or (args.strict and summary.failures) else 0


if __name__ == "__main__":
    sys.exit(main())
