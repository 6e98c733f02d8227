"""avcache-predict: P(fake) for a list of cached videos (submission CSV) or for raw videos.

    avcache-predict --run RUN --list DATA/prediction.txt.csv --out submission.csv
    avcache-predict --run RUN --list DATA/metadata.json --layout lav-df --select split=test
    avcache-predict --run RUN --video clip.mp4
    avcache-predict --run RUN --video new_videos/ more/*.mp4 --out scores.csv
    avcache-predict --run RUN --list DATA/metadata.json --layout lav-df --select split=test \
        --segments segments.json
    avcache-predict --run RUN --video clip.mp4 --segments segments.json

--list: every selected entry of the list gets a row, in the list's order, scored from the
cache. Videos the cache does not hold (they failed preprocessing) get 0.5, and a
warning names them. --video: each file (a folder's videos, a glob's matches) preprocessed
as the run's cache was made, the model built once; a file that cannot be read is named on
stderr and left out, the others scored. --segments: also where each video is fake (its
proposals from its track frames' scores), as the AV-Deepfake1M or LAV-DF evaluation reads
them.

Exit status: 0 done; 1 some video could not be read (each named on stderr; the others are
written); 2 a mistake in the command, the list, the run folder or the cache (one line).
"""

from __future__ import annotations

import argparse
import csv
import glob
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from avcache.cache import schema
from avcache.cache.remote import location
from avcache.common.arguments import share
from avcache.common.atomic import atomic_path, write_json_atomic
from avcache.common.labels import LabelFileError
from avcache.common.untrusted import printable
from avcache.train.lists import DEFAULT_LAYOUT, add_list_options, list_names, list_spec
from avcache.train.runs import RunFolder

if TYPE_CHECKING:  # the reader and the preprocessor load where they are used
    from avcache.cache.reader import Cache
    from avcache.preprocess.config import PreprocessConfig

log = logging.getLogger("avcache.predict")
FALLBACK = 0.5  # P(fake) for a listed video without cached features: says "no idea"
# What a folder given to --video is searched for (any case); a file named itself is taken
# whatever its suffix.
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".flv", ".wmv", ".mpg",
                  ".mpeg", ".ts", ".3gp")  # fmt: skip
GLOB_CHARACTERS = "*?["
UNREADABLE = 1  # exit status: some video could not be read, the others were scored


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


def predict_list(run: RunFolder, names: list[str], list_path: Path, out: Path,
                 split: str | None, max_fallback: float,
                 segments: SegmentsOut | None = None) -> int:  # fmt: skip
    """Score the listed videos from the cache (the run's or --cache) and write the
    submission, and with `segments` their fake segments; refused before predicting when too
    many would get FALLBACK."""
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
    if segments is not None:
        found: dict[str, list] = {}
        for cached_split in splits_to_predict(cache, names, split):
            localised = trainer.localise_split(cached_split)
            for name, proposals in zip(localised.names, localised.proposals, strict=True):
                found.setdefault(name, proposals)
        write_segments(segments, {name: found.get(name, []) for name in names})
    return 0


def written(proposal, unit: float) -> list[float]:
    """[confidence, start, end] as JSON numbers, the times in `unit`s of a second."""
    confidence, start, end = (float(value) for value in proposal)
    return [round(confidence, 6), round(start * unit, 6), round(end * unit, 6)]


# --segments-format -> how a proposal's start and end are written: AV-Deepfake1M's
# evaluation reads seconds; LAV-DF's divides them by 25 (its frames at 25 fps).
SEGMENT_UNITS = {"av-deepfake1m": 1.0, "lav-df": 25.0}


@dataclass(frozen=True)
class SegmentsOut:
    path: Path
    format: str  # a key of SEGMENT_UNITS


def write_segments(out: SegmentsOut, proposals: dict[str, object]) -> None:
    """The localisation JSON both benchmarks' evaluations read: each video's name -> its
    proposals [[confidence, start, end], ...], most confident first (a video without cached
    tracks: none)."""
    unit = SEGMENT_UNITS[out.format]
    listing = {name: [written(row, unit) for row in rows] for name, rows in proposals.items()}
    out.path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out.path, listing)
    print(f"wrote the fake segments of {len(listing)} videos to {out.path} ({out.format})")


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
            f"cached features in {cache.location} ({failed} failed preprocessing, the rest were "
            f"never cached), over --max-fallback {max_fallback:g}: is it the list the cache was "
            f"made from (the preprocessing config's splits.*.labels)? e.g. {shown}{more}"
        )
    log.warning("%d listed videos have no cached features and get %.1f: %s%s", len(missing),
                FALLBACK, shown, more)  # fmt: skip


class UnreadableVideo(ValueError):
    """A raw video that could not be preprocessed: recorded, and the others scored."""


class VideoScorer:
    """A run's model, built once, scoring raw files each preprocessed in-process exactly as
    the run's cache was made (decoded by the user's `ffmpeg`, never by one the run folder
    names), and batched as the loader batches its cached twin (train/batches.py)."""

    def __init__(self, run: RunFolder, ffmpeg: str | None = None) -> None:
        self.config = run.preprocess_config(ffmpeg)  # refused before any model is built
        self.trainer = run.trainer(best=True, check_shards=False)
        self.trainer.model.eval()
        # Where the run decoded its cache's JPEG faces, a raw video's are decoded too:
        # nvJPEG's pixels and libjpeg-turbo's differ by a grey level or two.
        trainer = self.trainer
        self.jpeg_faces = self.config.faces.codec == "jpeg" and \
            trainer.decodes_faces_here(trainer.config.data.train_split)  # fmt: skip

        # --segments: each video's proposals from its track frames' scores, by name.
        self.segments: dict[str, object] | None = None

    def __call__(self, video: Path, name: str) -> float:
        sample = preprocessed(video, self.config, name)
        if self.segments is not None:
            self.segments[name] = self.localised(sample)
        return self.score(sample)

    def localised(self, sample: schema.Sample):
        """The proposals of a raw video preprocessed with this run's `config`, as its cached
        twin's would be made (Trainer.clips_localised)."""
        from avcache.train.batches import raw_batch
        from avcache.train.engine import LOCATING

        fields = (*self.trainer.fields, *LOCATING)
        batch = raw_batch(sample, fields, self.config, self.jpeg_faces)
        layout = self.trainer.cache.tracks
        return self.trainer.clips_localised(batch, layout)[0][1]

    def score(self, sample: schema.Sample) -> float:
        """P(fake) of a raw video preprocessed with this run's `config`."""
        from avcache.train.batches import raw_batch

        batch = raw_batch(sample, self.trainer.fields, self.config, self.jpeg_faces)
        return float(self.trainer.scores(batch)[0])  # as the run's own predictions were made


def preprocessed(video: Path, config: PreprocessConfig, name: str) -> schema.Sample:
    """One raw file through the preprocessor, under the name the output gives it (its track
    windows are drawn from it); UnreadableVideo naming it where it fails."""
    from avcache.preprocess.worker import VideoFailed, process_video_file  # the preprocessing half

    try:
        return process_video_file(video, config, name)
    except VideoFailed as failed:
        raise UnreadableVideo(f"{video}: cannot be read ({failed.stage}: {failed.reason})") \
            from None  # fmt: skip


def videos_named(values: list[str]) -> list[tuple[Path, str]]:
    """(file, name in the output) of every video the --video values name, in order: a file
    as given, a folder's videos named by their path from it, a glob's matches as matched.
    Two files of one name would make the CSV ambiguous: refused."""
    videos: dict[str, Path] = {}
    for value in values:
        for path, name in videos_of(value):
            if videos.setdefault(name, path) != path:
                raise ValueError(f"--video: two videos are named {name} ({videos[name]} and "
                                 f"{path}); give one of their folders at a time")  # fmt: skip
    return [(path, name) for name, path in videos.items()]


def videos_of(value: str) -> list[tuple[Path, str]]:
    """The videos one --video value names; a value naming none is refused."""
    path = Path(value)
    if path.is_dir():
        return folder_videos(path, value)
    if path.exists():
        return [(path, value)]  # whatever its suffix: the user named it
    if not any(character in value for character in GLOB_CHARACTERS):
        raise FileNotFoundError(f"--video {value}: no such file or folder")
    matches = sorted(glob.glob(value, recursive=True))
    if not matches:
        raise FileNotFoundError(f"--video {value}: the pattern matches no file")
    found = []
    for match in map(Path, matches):
        found += folder_videos(match, str(match)) if match.is_dir() else [(match, str(match))]
    return found


def folder_videos(folder: Path, value: str) -> list[tuple[Path, str]]:
    """The videos at any depth below `folder` (by suffix), sorted by their path from it, which
    names them: a data root's videos are named as its label files name them. Links to
    folders are not followed (a loop would never end)."""
    found = []
    for parent, _, files in os.walk(folder):
        for file in files:
            if Path(file).suffix.lower() in VIDEO_SUFFIXES:
                path = Path(parent) / file
                found.append((path, path.relative_to(folder).as_posix()))
    if not found:
        raise FileNotFoundError(f"--video {value}: a folder without videos (searched for "
                                f"{', '.join(VIDEO_SUFFIXES)} at any depth)")  # fmt: skip
    return sorted(found, key=lambda video: video[1])


def score_videos(videos: list[tuple[Path, str]], score: Callable[[Path, str], float], program: str,
                 echo: bool) -> tuple[list[tuple[str, float]], int]:  # fmt: skip
    """(name, P(fake)) of every video that could be read, in order, and how many could not:
    each of those is named on stderr as it fails, and the rest are scored. With `echo`, each
    score is printed as it comes. One progress bar (on a terminal) for several videos."""
    from tqdm import tqdm

    rows, failed = [], 0
    bar = tqdm(videos, desc="videos", unit="video", disable=True if len(videos) < 2 else None)
    for path, name in bar:
        try:
            value = score(path, name)
        except UnreadableVideo as error:
            failed += 1
            tqdm.write(f"{program}: {printable(error)}; not scored", file=sys.stderr)
            continue
        rows.append((name, value))
        if echo:
            tqdm.write(f"{path}: P(fake) = {value:.4f}", file=sys.stdout)
    return rows, failed


def scores_written(rows: list[tuple[str, float]], failed: int, out: Path | None,
                   program: str) -> int:  # fmt: skip
    """Write the scores to `out` (a CSV as a submission is, so that avcache-score reads it)
    where one is named; the exit status: UNREADABLE where a video could not be read."""
    if out is not None:
        write_submission(out, rows)
        print(f"wrote {len(rows)} rows to {out}")
    if failed:
        total = len(rows) + failed
        print(f"{program}: {failed} of {total} videos could not be read (named above) and have "
              "no score", file=sys.stderr)  # fmt: skip
        return UNREADABLE
    return 0


def predict_videos(run: RunFolder, values: list[str], out: Path | None,
                   ffmpeg: str | None, segments: SegmentsOut | None = None) -> int:  # fmt: skip
    """--video: every named video scored by one model, printed or written to `out`, and with
    `segments` the fake segments of each video that could be read."""
    videos = videos_named(values)  # refused before the model is built
    scorer = VideoScorer(run, ffmpeg)
    if segments is not None:
        scorer.segments = {}
    rows, failed = score_videos(videos, scorer, "avcache-predict", echo=out is None)
    if segments is not None:
        write_segments(segments, scorer.segments)
    return scores_written(rows, failed, out, "avcache-predict")


def checked_out(out: Path | None) -> Path | None:
    if out is not None and out.is_dir():
        raise ValueError(f"--out {out}: is a folder; name the CSV to write")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="avcache-predict",
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", type=Path, required=True, help="run folder made by avcache-train")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--list", type=Path, help="list to predict, e.g. prediction.txt.csv, or "
                        "another layout's label file (--layout)")  # fmt: skip
    target.add_argument("--video", nargs="+", metavar="VIDEO", help="raw video files, folders "
                        f"(their {', '.join(VIDEO_SUFFIXES[:4])}, ... files at any depth) or "
                        "glob patterns: print each P(fake), or write them to --out")  # fmt: skip
    parser.add_argument("--out", type=Path, help="--list: the submission CSV (default "
                        "RUN/submission.csv); --video: a CSV of video_name,y_pred, each name "
                        "as given or its path from the folder given (default: print)")  # fmt: skip
    add_list_options(parser, "--list")
    parser.add_argument("--split", help="look for the listed videos only in this cached split "
                        "(default: wherever the cache holds them)")  # fmt: skip
    parser.add_argument("--max-fallback", type=share, default=0.01, metavar="SHARE",
                        help=f"largest share of the list that may get the fallback {FALLBACK} "
                        "(videos without cached features) before the run is refused "
                        "(default 0.01)")  # fmt: skip
    parser.add_argument(
        "--cache", type=location, help="cache folder or s3:// URL (default: the run's)"
    )
    parser.add_argument("--segments", type=Path, metavar="JSON", help="also write "
                        "where each video is fake, {video: [[confidence, start, end], ...]}, "
                        "from its track frames' scores (model.kind=locate; a sync, lips or "
                        "speech model scores each window alone)")  # fmt: skip
    parser.add_argument("--segments-format", choices=SEGMENT_UNITS, default="av-deepfake1m",
                        help="av-deepfake1m (default): start and end in seconds, as its "
                        "evaluation reads them; lav-df: in frames at 25 fps, as LAV-DF's "
                        "evaluate.py reads them")  # fmt: skip
    parser.add_argument("--ffmpeg", metavar="BINARY", help="--video: the ffmpeg to decode it "
                        "with, auto (this installation's) or a path (default: auto; one that "
                        "the run folder records is never run)")  # fmt: skip
    args = parser.parse_args(argv)
    refuse_list_options(parser, args)
    return args


def refuse_list_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--layout, --select and --data describe a list: with --video they would be ignored."""
    if args.video and (args.layout != DEFAULT_LAYOUT or args.select or args.data):
        parser.error("--layout, --select and --data describe the --list; --video reads none")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        spec = list_spec(args)  # a wrong --layout or --select: refused before anything is read
        run = RunFolder(args.run, cache=args.cache)
        segments = SegmentsOut(checked_out(args.segments), args.segments_format) \
            if args.segments else None  # fmt: skip
        if args.video:
            return predict_videos(run, args.video, checked_out(args.out), args.ffmpeg,
                                  segments)  # fmt: skip
        out = checked_out(args.out or args.run / "submission.csv")
        names = list_names(args.list, spec)  # refused before the model is built
        return predict_list(run, names, args.list, out, args.split, args.max_fallback,
                            segments)  # fmt: skip
    except (FileNotFoundError, LabelFileError, ValueError) as error:
        print(f"avcache-predict: error: {printable(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
