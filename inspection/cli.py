"""avcache-inspect: look at a cache, and at what a model gets wrong on it.

avcache-inspect CACHE                  per split: samples, labels, failures, audio, faces, bytes
avcache-inspect CACHE verify           recompute every shard's sha256, check schema and counts
avcache-inspect CACHE sheet -o S.png   contact sheet: mel images (labelled axes) beside the faces
avcache-inspect CACHE sheet --video N  one sample in detail: full-size mel, all faces, metadata
avcache-inspect CACHE gallery -o DIR   static HTML page (opens from disk): thumbnails, mistakes
avcache-inspect CACHE audit            shortcut audit: the AUC of each trivial cue (durations,
                                       silence, streams, codecs, faces found) on the labels
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avcache.cache import schema
from avcache.cache.reader import Cache, CacheFormatError, open_cache
from avcache.cache.remote import RemoteCacheFull, RemoteSettingsError, location
from avcache.cache.verify import verify_cache
from avcache.common.arguments import non_negative
from avcache.common.labels import LabelFileError
from avcache.common.untrusted import printable

LABELS = {"fake": schema.LABEL_FAKE, "real": schema.LABEL_REAL, "unknown": schema.LABEL_UNKNOWN}
# Datasets counted as each modality's bytes on disk; the rest (names, labels, flags) is "other".
MODALITIES = {"mel": (schema.MEL,), "faces": (schema.FACES, schema.FACE_FOUND, schema.FACE_BOX)}


class UsageError(ValueError):
    """A request that cannot be met as asked (exit status 2), e.g. an unknown video name."""


@dataclass
class SplitStats:
    """What `avcache-inspect CACHE` reports for one split."""

    shards: int = 0
    samples: int = 0
    labels: Counter[int] = field(default_factory=Counter)
    no_audio: int = 0
    frames: int = 0
    faces_found: int = 0
    bytes: Counter[str] = field(default_factory=Counter)  # mel, faces, other, file


def split_stats(cache: Cache, split: str) -> SplitStats:
    """Counts and sizes of one split, from its small columns and dataset storage sizes."""
    stats = SplitStats()
    for entry in cache.shards_of(split):
        with entry.open() as shard:
            stats.shards += 1
            stats.samples += len(shard)
            stats.labels.update(shard.read(schema.LABEL).tolist())
            stats.no_audio += int((~shard.read(schema.HAS_AUDIO)).sum())
            found = shard.read(schema.FACE_FOUND)
            stats.frames += found.size
            stats.faces_found += int(found.sum())
            file_size = entry.path.stat().st_size
            for modality, names in MODALITIES.items():
                stats.bytes[modality] += sum(shard.storage_bytes(name) for name in names)
            stats.bytes["file"] += file_size
    stats.bytes["other"] = stats.bytes["file"] - stats.bytes["mel"] - stats.bytes["faces"]
    return stats


def _size(count: int) -> str:
    """Bytes for people: 1.5 MiB, 12.0 KiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


SUMMARY_HEADER = (
    f"{'split':<10}{'samples':>8}{'shards':>7}{'real':>7}{'fake':>7}{'unknown':>8}"
    f"{'no audio':>9}{'faces found':>12}{'mel':>11}{'faces':>11}{'other':>11}{'on disk':>11}"
)


def _split_row(split: str, stats: SplitStats) -> str:
    share = f"{100 * stats.faces_found / stats.frames:.1f}%" if stats.frames else "-"
    labels, sizes = stats.labels, stats.bytes
    return (
        f"{split:<10}{stats.samples:>8}{stats.shards:>7}{labels[schema.LABEL_REAL]:>7}"
        f"{labels[schema.LABEL_FAKE]:>7}{labels[schema.LABEL_UNKNOWN]:>8}{stats.no_audio:>9}"
        f"{share:>12}{_size(sizes['mel']):>11}{_size(sizes['faces']):>11}"
        f"{_size(sizes['other']):>11}{_size(sizes['file']):>11}"
    )


def failure_lines(cache: Cache) -> list[str]:
    """Failures per split and stage, with their most common reasons."""
    failures = cache.failures()
    if not failures:
        return ["failures: none"]
    lines = [f"failures: {len(failures)}"]
    for split in dict.fromkeys(failure.split for failure in failures):
        stages = Counter(failure.stage for failure in failures if failure.split == split)
        for stage, count in stages.most_common():
            reasons = Counter(
                _shorten(failure.error.strip().splitlines()[-1] if failure.error.strip() else "?")
                for failure in failures
                if failure.split == split and failure.stage == stage
            )
            top = "; ".join(f"{reason} (x{n})" for reason, n in reasons.most_common(3))
            more = f"; {len(reasons) - 3} other reasons" if len(reasons) > 3 else ""
            lines.append(f"  {split} {stage}: {count}: {top}{more}")
    return lines


def _shorten(text: str, limit: int = 70) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def config_lines(config: dict) -> list[str]:
    """The resolved preprocessing config as dotted key=value pairs (the override syntax)."""
    lines = [f"config ({schema.CONFIG_FILE} in the cache):"]
    for section, values in config.items():
        pairs = " ".join(f"{key}={_yaml(value)}" for key, value in _flatten(values))
        text = f"{section}: {pairs}" if isinstance(values, dict) else f"{section}={_yaml(values)}"
        lines.extend(textwrap.wrap(text, 98, initial_indent="  ", subsequent_indent="    "))
    return lines


def _yaml(value: object) -> str:
    """A value as an override would spell it (JSON is YAML): [a, b] lists, true, 1.3."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _flatten(values: object, prefix: str = "") -> list[tuple[str, object]]:
    if not isinstance(values, dict):
        return [(prefix, values)]
    pairs = []
    for key, value in values.items():
        pairs.extend(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return pairs


def summary_lines(cache: Cache) -> list[str]:
    """The summary: one table row per split, then failures and the config."""
    lines = [f"cache {cache.location} (format v{schema.VERSION}, config {cache.config_hash})"]
    lines.append(SUMMARY_HEADER)
    lines.extend(_split_row(split, split_stats(cache, split)) for split in cache.splits)
    return lines + failure_lines(cache) + config_lines(cache.config)


def run_summary(cache: Cache, args: argparse.Namespace) -> int:
    print("\n".join(printable(line) for line in summary_lines(cache)))
    return 0


def run_verify(cache: Cache, args: argparse.Namespace) -> int:
    index, digest = cache.index_path, cache.index_sha256
    if args.sha256 is not None and digest != args.sha256.lower():
        print(f"NOT TRUSTED {index}: sha256 {digest} is not the {args.sha256} you were given: "
              "this is not that cache (its shards are not checked)", file=sys.stderr)  # fmt: skip
        return 1
    problems = verify_cache(cache)
    for problem in problems:
        print(printable(f"DAMAGED {problem}"), file=sys.stderr)
    print(f"verified {len(cache.shards)} shards: {len(problems)} damaged")
    print(f"{index.name} sha256 {digest}" + (" (as given: every shard is the one it names)"
                                             if args.sha256 and not problems else ""))  # fmt: skip
    return 1 if problems else 0


def pick_samples(
    cache: Cache, split: str, label: str, audio: str, count: int, seed: int | None
) -> list[tuple[int, int]]:
    """(shard number, position) of `count` samples of a split matching the filters: the first
    ones in cache order, or a random draw with `seed`. Reads only the small columns."""
    from avcache.inspection.gallery import catalog

    entries = [
        entry
        for entry in catalog(cache, [split])
        if (label == "any" or entry.label == LABELS[label])
        and (audio == "any" or entry.has_audio == (audio == "yes"))
    ]
    if seed is not None and len(entries) > count:
        chosen = np.random.default_rng(seed).choice(len(entries), count, replace=False)
        entries = [entries[i] for i in sorted(chosen)]
    return [entry.pick for entry in entries[:count]]


def run_sheet(cache: Cache, args: argparse.Namespace) -> int:
    if args.video is not None:
        return draw_one(cache, args)
    from avcache.inspection import sheets

    split = args.split or cache.splits[0]
    if split not in cache.splits:
        raise UsageError(
            f"no split {split!r} in {cache.location} (splits: {', '.join(cache.splits)})"
        )
    if args.n == 0:
        raise UsageError("-n 0: a sheet needs at least one sample")
    picks = pick_samples(cache, split, args.label, args.audio, args.n, args.seed)
    if not picks:
        raise UsageError(
            f"split {split!r} has no samples with label {args.label}, audio {args.audio}"
        )
    samples = dict(cache.samples_at(picks, windows=sheets.DRAWN_WINDOWS))
    title = f"{cache.location} · split {split} · label {args.label} · {len(picks)} samples"
    chosen = [samples[pick] for pick in picks]
    figure = sheets.contact_sheet(chosen, cache.index, title, cache.tracks)
    path = sheets.save(figure, args.output, args.palette)
    print(f"sheet: {path} ({len(picks)} samples of {split})")
    return 0


def draw_one(cache: Cache, args: argparse.Namespace) -> int:
    """`sheet --video NAME`: one sample in detail."""
    from avcache.inspection import sheets

    try:
        entry, position = cache.locate(args.video, args.split)
    except KeyError as error:
        close = difflib.get_close_matches(args.video, cache.names(), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UsageError(f"{error.args[0]}{hint}") from None
    with entry.open() as shard:
        sample = shard.sample(position)
    meta = sample_meta(cache, sample, entry.path, position, entry.split)
    scores = None if args.run is None else frame_scores(args.run, cache, sample)
    figure = sheets.sample_figure(sample, cache.index, meta, cache.tracks, scores)
    path = sheets.save(figure, args.output, args.palette)
    print(f"sheet: {path} ({args.video} from {entry.split})")
    return 0


def frame_scores(run: Path, cache: Cache, sample: schema.Sample):
    """The run's P(fake) of each of the sample's track frames [W * T] (inspection/frames.py)."""
    if sample.tracks is None:
        raise UsageError(f"--run: {cache.location} holds no tracks: no frame to score")
    scorer = scorer_of(run, cache)
    try:
        return scorer(sample)
    except ValueError as error:  # a model that scores whole videos only
        raise UsageError(f"--run {run}: {error}") from None


def scorer_of(run: Path, cache: Cache):
    """The run's FrameScorer on `cache`; a run that cannot score it is a usage error."""
    from avcache.inspection.frames import FrameScorer

    try:
        return FrameScorer(run, cache)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(f"--run {run}: {error}") from None


def sample_meta(cache: Cache, sample: schema.Sample, path: Path, position: int, split: str) -> dict:
    """What the detail view prints beside the mel."""
    from avcache.inspection.sheets import label_name

    found = [bool(flag) for flag in sample.face_found]
    boxes = [" ".join(f"{v:.0f}" for v in box) for box in sample.face_box]
    meta = {
        "split": split,
        "label": f"{label_name(sample.label)} ({int(sample.label)})",
        **_fake_meta(sample),
        "has audio": "yes" if sample.has_audio else "no (mel is all zeros)",
        "duration": f"{float(sample.duration):.2f} s",
        "faces found": f"{sum(found)} of {len(found)} frames",
        **_mel_mode_meta(cache.index),
        **_tracks_meta(cache.tracks, sample.tracks),
        "shard": str(path.relative_to(cache.root.resolve())),
        "position": str(position),
        "config": cache.config_hash,
    }
    meta.update({f"box {k}": box if found[k] else "(no face)" for k, box in enumerate(boxes)})
    return meta


def _fake_meta(sample: schema.Sample) -> dict[str, str]:
    """The data set's kind of fake and fake segments, where the cache records them."""
    from avcache.inspection.sheets import SEGMENTS_SHOWN, segments_text

    meta = {} if sample.fake_kind is None else {"fake kind": sample.fake_kind or "-"}
    if sample.fake_segments is not None:
        meta["segments"] = segments_text(sample.fake_segments, SEGMENTS_SHOWN[False]) or "none"
    return meta


def _mel_mode_meta(index: dict) -> dict[str, str]:
    """The mel mode and how its axes were labelled."""
    from avcache.inspection.sheets import mel_axes_of, trimmed_db

    mode, axes = str(index.get("config", {}).get("audio", {}).get("mode", "?")), mel_axes_of(index)
    if axes is None:
        return {"mel mode": f"{mode} (unknown here: axes in pixels)"}
    trim = trimmed_db(index)
    trimmed = {"mel time": f"silence trimmed (audio.trim_silence_db={trim:g}): columns, "
               "not seconds"} if trim else {}  # fmt: skip
    return {
        "mel mode": mode,
        "mel bins": f"{axes.n_mels}, Slaney mel scale over 0-{axes.rate // 2} Hz",
        "mel frames": f"hop {axes.hop} at {axes.rate} Hz, resized to 256",
        **trimmed,
    }


def _tracks_meta(layout: schema.TrackLayout | None, tracks: schema.Tracks | None) -> dict:
    """The aligned windows' shape and what could not be aligned (none without tracks)."""
    if layout is None or tracks is None:
        return {}
    windows, frames = tracks.lips.shape[:2]
    return {
        "tracks": f"{windows} x {frames} frames at {layout.fps:g} fps, {layout.size} px mouth",
        "track audio": f"mono int16 at {layout.audio_rate} Hz, "
        f"{100 * float(tracks.audio_real.min()):.0f}% real at least",
        "mouth found": f"{int(tracks.lips_found.sum())} of {tracks.lips_found.size} frames",
        "repeated": f"{int((frames - tracks.frames_real.astype(int)).sum())} frames "
        "(past the clip's end)",
    }


def run_gallery(cache: Cache, args: argparse.Namespace) -> int:
    from avcache.inspection.gallery import write_gallery

    if args.labels and args.predictions is None:
        raise UsageError("--labels needs --predictions (the labels judge the predictions)")
    unknown = sorted(set(args.split or []) - set(cache.splits))
    if unknown:
        raise UsageError(f"no split {', '.join(unknown)} in {cache.location}")
    selection = write_gallery(
        cache,
        args.output,
        limit=args.limit,
        splits=args.split,
        predictions=args.predictions,
        labels=args.labels or [],
        segments=args.segments,
        scorer=None if args.run is None else scorer_of(args.run, cache),
    )
    counts = Counter(entry.split for entry in selection.samples)
    print(
        f"gallery: {args.output / 'index.html'}: "
        f"{', '.join(f'{split} {n}' for split, n in counts.items())} samples"
        + (f", {len(selection.mistakes)} mistakes" if args.predictions else "")
    )
    for note in selection.notes:
        print(f"  {note}")
    return 0


def run_audit(cache: Cache, args: argparse.Namespace) -> int:
    """Each cue alone and all together against the labels; warnings, JSON, a plot."""
    from avcache.inspection import audit

    try:
        kinds = audit.load_kinds(args.manifest) if args.manifest else None
    except ValueError as error:
        raise UsageError(str(error)) from None
    table = audit.read_cues(cache, mel=not args.no_mel)
    results = audit.audit(table, kinds, rounds=args.bootstrap, seed=args.seed)
    kinds_line = audit.kinds_line(table, kinds, args.manifest.name if args.manifest else "")
    lines = [] if args.brief else [kinds_line] * bool(kinds_line) + audit.report_lines(
        results, args.threshold)  # fmt: skip
    report = {"cache": cache.location, "config_hash": cache.config_hash,
              "threshold": args.threshold, "bootstrap": args.bootstrap, "kinds": kinds_line,
              "results": [result.as_dict() for result in results]}  # fmt: skip
    if args.predictions is not None:
        model = model_question(table, results, args.predictions)
        report["model"] = model
        lines += [] if args.brief else [model["line"]]
    if args.output is not None:
        lines.append(f"plot: {audit.plot(results, args.output, args.threshold)}")
    if args.json is not None:
        from avcache.common.atomic import write_json_atomic

        write_json_atomic(args.json, report)
        lines.append(f"json: {args.json}")
    lines.append(audit.summary_line(results, args.threshold))
    print("\n".join(printable(line) for line in lines))
    return 0


def model_question(table, results, predictions: Path) -> dict:
    """A model's AUC on the judged split, and on pairs matched on the strongest cue."""
    from avcache.inspection import audit
    from avcache.inspection.gallery import read_predictions

    split = audit.judged_split(results)
    scores = read_predictions(predictions)
    rows = [i for i, name in enumerate(table.names) if table.splits[i] == split
            and table.labels[i] >= 0 and name in scores]  # fmt: skip
    if not rows:
        raise UsageError(f"{predictions}: no prediction for a labelled video of split {split}")
    best = audit.strongest(results, split)
    labels = np.array([table.labels[i] for i in rows])
    predicted = np.array([scores[table.names[i]] for i in rows])
    plain = audit.auc(labels, predicted)
    line = f"model ({predictions.name}, {split}): AUC {plain:.3f}"
    cue, matched = (best.cue if best else None), None
    if best:
        matched = audit.stratified_auc(labels, predicted, table.array(cue)[rows])
        line += f"; on videos matched on {cue} (pairs within its quintiles) {matched:.3f}"
    else:
        line += f"; no cue is measurable on {split} to match on"
    return {"split": split, "cue": cue, "auc": plain, "matched_auc": matched, "line": line}


COMMANDS = {
    "summary": run_summary,
    "verify": run_verify,
    "sheet": run_sheet,
    "gallery": run_gallery,
    "audit": run_audit,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    doc = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(
        prog="avcache-inspect",
        description=doc[0],
        epilog=doc[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("cache", type=location, help="cache folder (holding index.json), or "
                        "a cache on object storage: s3://bucket/prefix (its shards are "
                        "downloaded into AVCACHE_REMOTE_CACHE, default ~/.cache/avcache/remote, "
                        "up to AVCACHE_REMOTE_CACHE_LIMIT, default 64G)")  # fmt: skip
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("summary", help="per-split counts, sizes, failures, config (default)")
    verify = commands.add_parser("verify", help="recompute sha256s, check schema and counts")
    verify.add_argument(
        "--sha256",
        metavar="HASH",
        type=_sha256,
        help="the sha256 of index.json as published by whoever made the cache: verify "
        "then also proves the cache is that one (the checksums alone detect damage, not a "
        "forger who rewrites them)",
    )
    _add_sheet_args(commands.add_parser("sheet", help="PNG contact sheet, or one --video"))
    _add_gallery_args(commands.add_parser("gallery", help="static HTML gallery"))
    _add_audit_args(commands.add_parser("audit", help="does a trivial cue give the labels away?"))
    args = parser.parse_args(argv)
    args.command = args.command or "summary"
    return args


def _sha256(text: str) -> str:
    if not re.fullmatch("[0-9a-fA-F]{64}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a sha256 (64 hex digits)")
    return text


def _add_sheet_args(sheet: argparse.ArgumentParser) -> None:
    sheet.add_argument("--split", help="split to draw from (default: the first)")
    sheet.add_argument("--label", choices=[*LABELS, "any"], default="any")
    sheet.add_argument(
        "--audio",
        choices=["yes", "no", "any"],
        default="any",
        help="only samples with (yes) or without (no) an audio stream",
    )
    sheet.add_argument(
        "-n", type=non_negative, default=16, help="samples on the sheet (default 16)"
    )
    sheet.add_argument("--seed", type=int, help="draw at random with this seed (default: first)")
    sheet.add_argument("--video", metavar="NAME", help="draw this one sample in detail")
    sheet.add_argument("--run", type=Path, metavar="RUN", help="--video: under each track "
                       "window, the P(fake) of each of its frames by RUN's model (locate, or a "
                       "sync, lips or speech model window by window)")  # fmt: skip
    sheet.add_argument("-o", "--output", type=Path, default=Path("sheet.png"), help="PNG path")
    sheet.add_argument("--palette", action="store_true", help="256 colours: ~3x smaller file")


def _add_gallery_args(gallery: argparse.ArgumentParser) -> None:
    gallery.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    gallery.add_argument("--split", action="append", help="only this split (repeatable)")
    gallery.add_argument(
        "-n",
        "--limit",
        type=non_negative,
        default=200,
        help="samples per split, and mistakes, shown (default 200; 0: all)",
    )
    gallery.add_argument("--predictions", type=Path, help="video_name,y_pred CSV to judge")
    gallery.add_argument("--segments", type=Path, metavar="JSON", help="predicted segments "
                         "(avcache-predict --segments, seconds): the surest three under the "
                         "true ones, darker the surer")  # fmt: skip
    gallery.add_argument("--run", type=Path, metavar="RUN", help="each shown sample's track "
                         "frames scored by RUN's model (locate; sync, lips or speech window "
                         "by window): a band over its mel, the surer fake the redder")  # fmt: skip
    gallery.add_argument(
        "--labels",
        type=Path,
        action="append",
        help="video_name,target file(s) for the predictions (default: the "
        "cached labels); repeatable",
    )


def _add_audit_args(audit: argparse.ArgumentParser) -> None:
    audit.add_argument(
        "--manifest",
        type=Path,
        help="sample_manifest.json (avcache-sample): the AUC per fake kind too (a cache "
        "of LAV-DF, AV-Deepfake1M, FakeAVCeleb, DFDC or a csv with kinds has its own; "
        "the manifest's win for the videos it names)",
    )
    audit.add_argument(
        "--threshold",
        type=float,
        default=0.7,
        help="warn about a cue whose AUC reaches this (default 0.7)",
    )
    audit.add_argument(
        "--bootstrap",
        type=non_negative,
        default=500,
        help="resamples for the 95%% intervals (default 500)",
    )
    audit.add_argument("--seed", type=int, default=0, help="seed of the resampling and folds")
    audit.add_argument(
        "--predictions",
        type=Path,
        help="video_name,y_pred CSV: the model's AUC, and on videos matched on the strongest cue",
    )
    audit.add_argument(
        "--no-mel",
        action="store_true",
        help="skip the mel images' quiet columns (reads only small columns)",
    )
    audit.add_argument("--json", type=Path, help="write every result as JSON here")
    audit.add_argument("-o", "--output", type=Path, help="PNG plot of the AUCs")
    audit.add_argument("--brief", action="store_true", help="print only the summary line")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        # verify checks each shard itself, to list every problem rather than stop at one
        cache = open_cache(args.cache, check_shards=args.command != "verify")
        status = COMMANDS[args.command](cache, args)
    except (FileNotFoundError, CacheFormatError, LabelFileError, UsageError, RemoteCacheFull,
            RemoteSettingsError) as error:  # fmt: skip
        print(f"avcache-inspect: error: {printable(error)}", file=sys.stderr)
        return 2
    except OSError as error:  # an output that cannot be written
        print(f"avcache-inspect: error: {printable(error)}", file=sys.stderr)
        return 1
    if args.command in ("sheet", "gallery"):
        print(f"  in {time.perf_counter() - started:.2f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
