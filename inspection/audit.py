"""The shortcut audit: does a trivial cue, one that has nothing to do with a manipulation,
separate real from fake videos in this cache?

Every cue is a number per video: the facts the preprocessor recorded (audit.facts: durations,
silence, loudness, stream parameters, codecs, file size), what every cache holds (container
duration, audio present, share of frames with a face, face box size and position) and what
the model sees of the silence (the mel image's quiet leading and trailing columns). Each cue
alone is turned into a rule on the training split (its direction, or for a codec the fake
rate of each value) and scored on every split by ROC AUC with a bootstrap interval; a small
gradient-boosted classifier on all cues together is cross-validated within the training split
and scored on the others. The same per kind of fake (its fakes against all reals), the kinds
from the cache where its data set records them (LAV-DF, AV-Deepfake1M, FakeAVCeleb, a csv's
kind column) or from a sample manifest, which names each fake's kinds. AUC 0.5: the cue says
nothing; near 1: it gives the labels away.

What cannot be measured says so instead of printing an AUC: a number unknown for every
training video (clips without audio, no face found) or every video of a split; a classifier
that could not learn (too few training videos of a class, or fits that make no split and
predict one value for all). A codec value held by fewer than MIN_CATEGORY training videos
counts as "other", and a number unknown for every training video of one class is scored by
whether it is known.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from avcache.cache import schema
from avcache.cache.reader import Cache

THRESHOLD = 0.7  # a cue whose AUC reaches this on a labelled split is warned about
BOOTSTRAP = 500  # resamples for the 95% intervals
MEL_QUIET = 32  # a mel column whose mean grey level is below this is silence (0..255)
ALL_CUES = "all cues (classifier)"
TRAIN = "train"
MIN_CATEGORY = 5  # training videos a string value needs to be a category of its own
MAX_CATEGORIES = 254  # kept values of a string cue; the classifier takes 255 with "other"
MIN_PER_CLASS = 5  # real and fake training videos the classifier needs (one a fold)
NOT_MEASURABLE = "not measurable"
AUDIO_FACTS = ("fact_audio_seconds", "fact_lead_silence", "fact_trail_silence",
               "fact_loudness_db", "fact_sample_rate", "fact_channels",
               "fact_audio_bit_rate")  # fmt: skip
# Why a cue is unknown (NaN) for a video, said where that leaves it not measurable.
UNKNOWN_WHEN = {
    **dict.fromkeys(AUDIO_FACTS, "no audio stream"),
    **dict.fromkeys(("face_size", "face_x", "face_y"), "no face found on any frame"),
    "face_share": "no face frames cached",
}


@dataclass
class CueTable:
    """One row per cached video: its split, label, fake kinds and every cue's value."""

    names: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    kinds: list[tuple[str, ...]] = field(default_factory=list)  # a fake's kind, from the cache
    columns: dict[str, list] = field(default_factory=dict)
    categorical: set[str] = field(default_factory=set)  # string cues (codecs)

    def array(self, name: str) -> np.ndarray:
        """A cue as float64 (a string cue as the code of its value, sorted; NaN: unknown)."""
        values = self.columns[name]
        if name not in self.categorical:
            return np.asarray(values, np.float64)
        codes = {value: i for i, value in enumerate(sorted(set(values)))}
        return np.array([codes[value] for value in values], np.float64)

    def encoded(self, name: str, train: np.ndarray) -> np.ndarray:
        """A cue as the rules and the classifier take it: a number as it is (NaN: unknown), a
        string as its category among the `train` rows (`category_codes`)."""
        if name not in self.categorical:
            return self.array(name)
        return category_codes(self.columns[name], train)


def category_codes(values: list, train: np.ndarray) -> np.ndarray:
    """A string cue as codes 0..k-1 for its k most frequent values among the `train` rows
    (each held by MIN_CATEGORY of them at least, MAX_CATEGORIES at most), and k, "other", for
    every rarer or unseen value: a codec string of its own per video would otherwise give each
    training video its own label back, and the classifier takes 255 categories at most."""
    counts = Counter(value for value, fitted in zip(values, train, strict=True) if fitted)
    frequent = sorted((-n, value) for value, n in counts.items() if n >= MIN_CATEGORY)
    codes = {value: code for code, (_, value) in enumerate(frequent[:MAX_CATEGORIES])}
    other = len(codes)
    return np.array([codes.get(value, other) for value in values], np.float64)


def mel_quiet(mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Share of the mel image's columns that are silent before its first loud column and
    after its last, per sample of a block [n, 256, 256] (1.0 for a silent image)."""
    loud = mel.mean(axis=1, dtype=np.float32) >= MEL_QUIET  # [n, columns]
    width = loud.shape[1]
    any_loud = loud.any(axis=1)
    first = np.where(any_loud, loud.argmax(axis=1), width)
    last = np.where(any_loud, width - loud[:, ::-1].argmax(axis=1), width)
    return first / width, np.where(any_loud, (width - last) / width, 1.0)


def face_cues(found: np.ndarray, boxes: np.ndarray, width: np.ndarray,
              height: np.ndarray) -> dict[str, np.ndarray]:  # fmt: skip
    """Share of frames with a face, and the found boxes' median side and centre, relative to
    the frame where its size is known (else in pixels); NaN without any face."""
    boxes = np.where(found[..., None], boxes, np.nan)
    side = np.maximum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1])
    centre_x, centre_y = (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2
    width, height = np.where(width > 0, width, 1.0), np.where(height > 0, height, 1.0)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows (no face): NaN
        return {
            "face_share": found.mean(axis=1) if found.shape[1] else np.full(len(found), np.nan),
            "face_size": np.nanmedian(side, axis=1) / height,
            "face_x": np.nanmedian(centre_x, axis=1) / width,
            "face_y": np.nanmedian(centre_y, axis=1) / height,
        }


def read_cues(cache: Cache, mel: bool = True) -> CueTable:
    """Every cue of every cached video, read shard by shard (the small columns, the facts,
    and with `mel` each mel image's quiet columns)."""
    table = CueTable()
    for entry in cache.shards:
        with entry.open() as shard:
            if not len(shard):
                continue
            cues = _shard_cues(shard, mel)
            table.names += shard.video_names
            table.splits += [entry.split] * len(shard)
            labels = shard.read(schema.LABEL).astype(int).tolist()
            table.labels += labels
            table.kinds += cached_kinds(shard, labels)
            for name, values in cues.items():
                table.columns.setdefault(name, []).extend(np.asarray(values).tolist())
    table.categorical = {name for name in table.columns if name in schema.FACT_STRINGS}
    width = len(table.names)
    table.columns = {
        name: values for name, values in table.columns.items() if len(values) == width
    }  # fmt: skip  (a cue only some shards hold)
    return table


def cached_kinds(shard, labels: list[int]) -> list[tuple[str, ...]]:
    """Each fake's kind as the shard records it (its data set's labels), none for a real
    video (LAV-DF calls reals "real": not a kind of fake) or where the shard holds no kinds."""
    if not shard.has_fake_kinds:
        return [()] * len(labels)
    return [(kind,) if label == schema.LABEL_FAKE and kind else ()
            for kind, label in zip(shard.read_fake_kinds(), labels, strict=True)]  # fmt: skip


def _shard_cues(shard, mel: bool) -> dict[str, np.ndarray]:
    count = len(shard)
    facts = shard.read_facts() if shard.has_facts else {}
    nan = np.full(count, np.nan)
    cues: dict[str, np.ndarray] = {
        "duration": shard.read(schema.DURATION).astype(np.float64),
        "has_audio": shard.read(schema.HAS_AUDIO).astype(np.float64),
    }
    if shard.frames:
        cues |= face_cues(shard.read(schema.FACE_FOUND), shard.read(schema.FACE_BOX),
                          facts.get("fact_width", nan), facts.get("fact_height", nan))  # fmt: skip
    if mel:
        lead, trail = zip(*(mel_quiet(shard.read(schema.MEL, start, start + 256))
                            for start in range(0, count, 256)), strict=True)  # fmt: skip
        cues |= {"mel_lead_quiet": np.concatenate(lead), "mel_trail_quiet": np.concatenate(trail)}
    return cues | facts


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of scores against 0/1 labels (scikit-learn's); NaN with one class only."""
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def bootstrap_interval(labels: np.ndarray, scores: np.ndarray, rounds: int,
                       seed: int) -> tuple[float, float]:  # fmt: skip
    """95% percentile interval of the AUC over `rounds` resamples of the videos (with
    replacement), all at once: the AUC from average ranks (what roc_auc_score computes)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(labels), (rounds, len(labels)))
    y, s = labels[picks], scores[picks]
    ranks = rankdata(s, axis=1)
    positives = y.sum(axis=1)
    negatives = len(labels) - positives
    keep = (positives > 0) & (negatives > 0)
    ranked = (ranks * y).sum(axis=1) - positives * (positives + 1) / 2
    values = ranked[keep] / (positives[keep] * negatives[keep])
    if not values.size:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def rule_scores(values: np.ndarray, labels: np.ndarray, train: np.ndarray, categorical: bool,
                why: str = "") -> tuple[np.ndarray | None, str, str]:  # fmt: skip
    """A cue made a score by a rule fitted on the `train` rows, the rule in words and a note:
    a number keeps or flips its direction (fakes higher or lower), unknown values ranked below
    all others; a category (`category_codes`) scores the fake rate of its value among the
    training rows (none there: their overall rate). A number unknown for every training video
    of one class is scored by whether it is known, and so noted: its values cannot be
    compared; unknown for all of them (`why`: what leaves it unknown), it gives no score."""
    if categorical:
        rate = labels[train].mean() if train.any() else 0.5
        table = {value: labels[train & (values == value)].mean()
                 for value in np.unique(values[train])}  # fmt: skip
        return np.array([table.get(value, rate) for value in values]), "fake rate by value", ""
    known = np.isfinite(values)
    if not known[train].any():
        return None, "", f"{NOT_MEASURABLE}: unknown for every training video ({why})"
    present = [name for name, label in (("real", 0), ("fake", 1)) if (labels[train] == label).any()]
    lacking = [name for name in present if not known[train & (labels == (name == "fake"))].any()]
    if len(present) == 2 and lacking:  # fakes (or reals) without it score higher
        scores = np.where(known, 0.0, 1.0) if lacking[0] == "fake" else np.where(known, 1.0, 0.0)
        note = (f"unknown for every training {lacking[0]} ({why}): its values cannot be "
                "compared, it is scored by whether it is known")  # fmt: skip
        return scores, f"{lacking[0]}s lack it", note
    floor = values[known].min() - 1
    scores = np.where(known, values, floor)
    fitted = auc(labels[train], scores[train]) if train.any() else float("nan")
    return (-scores, "fakes lower", "") if fitted < 0.5 else (scores, "fakes higher", "")


@dataclass
class Result:
    cue: str
    split: str
    kind: str  # "all" or one fake kind
    auc: float
    low: float
    high: float
    reals: int
    fakes: int
    direction: str = ""  # for a number: whether fakes have the higher values
    note: str = ""  # what to know: why it was not measured (AUC NaN), or how it was scored

    def as_dict(self) -> dict:
        return {key: (None if isinstance(value, float) and np.isnan(value) else value)
                for key, value in self.__dict__.items()}  # fmt: skip


def row_kinds(table: CueTable, manifest: dict[str, list[str]] | None) -> list[tuple[str, ...]]:
    """Each row's kinds of fake: the manifest's for a video it names, else the cache's."""
    manifest = manifest or {}
    return [tuple(manifest[name]) if name in manifest else cached
            for name, cached in zip(table.names, _cached_kinds(table), strict=True)]  # fmt: skip


def _cached_kinds(table: CueTable) -> list[tuple[str, ...]]:
    return table.kinds or [()] * len(table.names)  # a table made by hand has no kinds


def groups(table: CueTable, kinds: dict[str, list[str]] | None) -> dict[str, np.ndarray]:
    """'all' and one group per fake kind (`row_kinds`): its fakes and every real video. A
    kind that every fake has would repeat 'all' (DFDC's only kind is "fake"): left out."""
    labels = np.array(table.labels)
    known = labels >= 0
    fakes = known & (labels == schema.LABEL_FAKE)
    found = {"all": known}
    per_row = row_kinds(table, kinds)
    for kind in sorted({k for values in per_row for k in values}):
        has = np.array([kind in values for values in per_row], dtype=bool)
        if np.array_equal(has & fakes, fakes):
            continue
        found[kind] = known & ((labels == 0) | has)
    return found


def kinds_line(table: CueTable, manifest: dict[str, list[str]] | None,
               source: str = "the manifest") -> str:  # fmt: skip
    """Where the kinds scored apart come from and how many fakes each has ("" with none)."""
    manifest = manifest or {}
    per_row = row_kinds(table, manifest)
    counts = Counter(kind for kinds, label in zip(per_row, table.labels, strict=True)
                     if label == schema.LABEL_FAKE for kind in kinds)  # fmt: skip
    if not counts:
        return ""
    named = sum(name in manifest for name in table.names)
    rest = sum(bool(kinds) for name, kinds in zip(table.names, _cached_kinds(table), strict=True)
               if name not in manifest)  # fmt: skip
    origin = source if named else "the cache's labels"
    if named and rest:
        origin = f"{source} for the {named} videos it names, the cache's labels for {rest} more"
    listed = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))
    return f"kinds of fake (from {origin}): {listed}"


def audit(table: CueTable, kinds: dict[str, list[str]] | None = None, rounds: int = BOOTSTRAP,
          seed: int = 0) -> list[Result]:  # fmt: skip
    """Every cue alone and all together, per labelled split and per group (see `groups`);
    where one cannot be measured, a Result with NaN and a note that says why."""
    labels, splits = np.array(table.labels), np.array(table.splits)
    results = []
    for kind, members in groups(table, kinds).items():
        train = members & (splits == TRAIN)
        if not train.any():  # no training split: each split fits its own rule
            train = members
        group = Group(kind, members, labels, splits, rounds, seed)
        for cue in table.columns:
            values = table.encoded(cue, train)
            why = UNKNOWN_WHEN.get(cue, "not in the files' headers")
            categorical = cue in table.categorical
            scores, direction, note = rule_scores(values, labels, train, categorical, why)
            notes = None if categorical else unknown_notes(values, members, splits, why)
            results += group.scored(cue, scores, direction, note, notes)
        scores, note, notes = classifier_scores(table, members, train, seed)
        results += group.scored(ALL_CUES, scores, "", note, notes)
    return results


def unknown_notes(values: np.ndarray, members: np.ndarray, splits: np.ndarray,
                  why: str) -> np.ndarray:  # fmt: skip
    """Per row, why the cue is not measurable on its split: unknown for every member of it."""
    notes = np.full(len(values), "", dtype=object)
    for split in np.unique(splits[members]):
        rows = members & (splits == split)
        if not np.isfinite(values[rows]).any():
            notes[rows] = f"{NOT_MEASURABLE}: unknown for every {split} video ({why})"
    return notes


@dataclass
class Group:
    """A group's rows (see `groups`) and how its scores are judged."""

    kind: str
    members: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    rounds: int
    seed: int

    def scored(self, cue: str, scores: np.ndarray | None, direction: str = "", note: str = "",
               notes: np.ndarray | None = None) -> list[Result]:  # fmt: skip
        """The AUC of `scores` on each labelled split with both classes; where there are no
        scores (`note` says why) or a split's rows carry a note (`notes`), a Result with NaN
        and that note instead."""
        found = []
        for split in dict.fromkeys(self.splits[self.members].tolist()):
            rows = self.members & (self.splits == split)
            y = self.labels[rows]
            if y.min() == y.max():
                continue
            counts = int((y == 0).sum()), int((y == 1).sum())
            why = next((n for n in notes[rows] if n), "") if notes is not None else ""
            if scores is None or why:
                nan = float("nan")
                found.append(Result(cue, split, self.kind, nan, nan, nan, *counts, direction,
                                    note if scores is None else why))  # fmt: skip
                continue
            low, high = bootstrap_interval(y, scores[rows], self.rounds, self.seed)
            found.append(Result(cue, split, self.kind, auc(y, scores[rows]), low, high, *counts,
                                direction, note))  # fmt: skip
        return found


def classifier_features(table: CueTable,
                        train: np.ndarray) -> tuple[np.ndarray, list[bool], list[str]]:  # fmt: skip
    """Every cue measurable on the `train` rows as one column (a string cue as its category,
    an unknown number below all known ones, as the rules rank it: no column is left without
    a value, which the classifier cannot bin), whether each is a category, and the cues left
    out (unknown for every training video)."""
    columns, categorical, left_out = [], [], []
    for cue in table.columns:
        values = table.encoded(cue, train)
        known = np.isfinite(values)
        if not known[train].any():
            left_out.append(cue)
            continue
        columns.append(np.where(known, values, values[known].min() - 1))
        categorical.append(cue in table.categorical)
    features = np.column_stack(columns) if columns else np.empty((len(table.names), 0))
    return features, categorical, left_out


def classifier_scores(table: CueTable, members: np.ndarray, train: np.ndarray,
                      seed: int) -> tuple[np.ndarray | None, str, np.ndarray]:  # fmt: skip
    """P(fake) from every measurable cue together: out-of-fold (5-fold, stratified) on the
    training rows, from a model fitted on all of them elsewhere; a note (the cues left out,
    or why there are no scores) and, per row, why it could not learn there: a fit that makes
    no split (too few videos for its leaves) predicts one value for every video, and its
    AUC of 0.5 would be no finding."""
    labels = np.array(table.labels)
    notes = np.full(len(labels), "", dtype=object)
    counts = np.bincount(labels[train], minlength=2)
    features, categorical, left_out = classifier_features(table, train)
    if counts.min() < MIN_PER_CLASS:
        return None, (f"could not learn: {counts[0]} real and {counts[1]} fake training "
                      f"videos, fewer than {MIN_PER_CLASS} of each"), notes  # fmt: skip
    if not categorical:
        return None, "could not learn: no cue is measurable on the training videos", notes
    model = HistGradientBoostingClassifier(max_depth=3, max_iter=50, random_state=seed,
                                           categorical_features=categorical)  # fmt: skip
    scores = np.full(len(labels), np.nan)
    folds = StratifiedKFold(min(5, int(counts.min())), shuffle=True, random_state=seed)
    rows, others = np.flatnonzero(train), members & ~train
    stuck = 0
    # One OpenMP thread: on a few hundred rows, more only wait on each other (10x slower).
    with threadpool_limits(limits=1):
        for fit, held in folds.split(rows, labels[rows]):
            scores[rows[held]], learned = fitted_scores(model, features, labels, rows[fit],
                                                        rows[held])  # fmt: skip
            stuck += not learned
        if others.any():
            scores[others], learned = fitted_scores(model, features, labels, rows, others)
            notes[others] = "" if learned else (
                f"could not learn: fitted on the {len(rows)} training videos it predicts one "
                f"value for every video (each leaf takes {model.min_samples_leaf})")  # fmt: skip
    if stuck:
        notes[rows] = (f"could not learn: {stuck} of its {folds.n_splits} fits on training "
                       f"folds (about {len(rows) - len(rows) // folds.n_splits} videos each) "
                       "predict one value for every video (each leaf takes "
                       f"{model.min_samples_leaf})")  # fmt: skip
    note = f"without {', '.join(left_out)} ({NOT_MEASURABLE} on training)" if left_out else ""
    return scores, note, notes


def fitted_scores(model, features: np.ndarray, labels: np.ndarray, fit: np.ndarray,
                  rows: np.ndarray) -> tuple[np.ndarray, bool]:  # fmt: skip
    """P(fake) of `rows` from a copy of `model` fitted on the `fit` rows, and whether it
    learned anything (its predictions on the rows it was fitted on vary)."""
    fitted = clone(model).fit(features[fit], labels[fit])
    learned = np.ptp(fitted.predict_proba(features[fit])[:, 1]) > 0
    return fitted.predict_proba(features[rows])[:, 1], bool(learned)


def strength(result: Result) -> float:
    """How far from chance, whichever way (a rule scored on another split can flip)."""
    return max(result.auc, 1 - result.auc) if np.isfinite(result.auc) else 0.0


def cue_strength(results: list[Result], cue: str, split: str) -> float:
    """A cue's strength on one split (0 where it was not scored there)."""
    return max((strength(r) for r in results if r.cue == cue and r.split == split), default=0.0)


def measured(result: Result) -> bool:
    """Whether the result is an AUC (not a note on why there is none)."""
    return bool(np.isfinite(result.auc))


def strongest(results: list[Result], split: str) -> Result | None:
    """The strongest single cue measured on `split` (all videos), None where none is."""
    single = [r for r in results if r.split == split and r.kind == "all" and r.cue != ALL_CUES
              and measured(r)]  # fmt: skip
    return max(single, key=strength, default=None)


def judged_split(results: list[Result]) -> str:
    """The split a warning is judged on: validation where there is one, else training."""
    splits = {result.split for result in results}
    return next((split for split in ("val", TRAIN) if split in splits), min(splits, default=""))


def warnings_of(results: list[Result], threshold: float = THRESHOLD) -> list[Result]:
    """Single cues reaching the threshold on the judged split, strongest first."""
    split = judged_split(results)
    found = [result for result in results if result.split == split and result.cue != ALL_CUES
             and strength(result) >= threshold]  # fmt: skip
    return sorted(found, key=strength, reverse=True)


def stratified_auc(labels: np.ndarray, scores: np.ndarray, cue: np.ndarray,
                   strata: int = 5) -> float:  # fmt: skip
    """The AUC of `scores` counting only pairs of a real and a fake in the same stratum of
    `cue` (its value, or its quantile bin where it takes more than `strata` values; unknown
    values together): what a model scores once the cue is held (nearly) fixed."""
    finite = np.isfinite(cue)
    values = np.unique(cue[finite])
    if len(values) <= strata:  # a cue of a few values (a frame rate): one stratum each
        bins = np.where(finite, np.searchsorted(values, cue), -1)
    else:
        edges = np.quantile(cue[finite], np.linspace(0, 1, strata + 1))[1:-1]
        bins = np.where(finite, np.searchsorted(edges, cue, side="right"), -1)
    weighted, pairs = 0.0, 0
    for value in np.unique(bins):
        rows = bins == value
        y = labels[rows]
        n = int((y == 1).sum()) * int((y == 0).sum())
        if n:
            weighted += n * auc(y, scores[rows])
            pairs += n
    return weighted / pairs if pairs else float("nan")


def load_kinds(path) -> dict[str, list[str]]:
    """video name -> fake kinds, from a sample manifest (`clips`: name, kinds). It is read
    like every file a user names (untrusted.load_json: a regular file, bounded, strict JSON)."""
    from pathlib import Path

    from avcache.common.untrusted import load_json

    manifest = load_json(Path(path), "sample manifest", error=ValueError)
    clips = manifest.get("clips") if isinstance(manifest, dict) else None
    if not isinstance(clips, list) or not all(_is_clip(clip) for clip in clips):
        raise ValueError(f"{path}: not a sample manifest: expected {{\"clips\": [{{\"name\": "
                         "NAME, \"kinds\": [KIND, ...]}, ...]}")  # fmt: skip
    return {clip["name"]: list(clip.get("kinds", [])) for clip in clips}


def _is_clip(clip: object) -> bool:
    """A manifest's clip: a name and a list of kinds, all strings."""
    return (isinstance(clip, dict) and isinstance(clip.get("name"), str)
            and isinstance(clip.get("kinds", []), list)
            and all(isinstance(kind, str) for kind in clip.get("kinds", [])))  # fmt: skip


def _interval(result: Result) -> str:
    if not measured(result):
        return NOT_MEASURABLE
    return f"{result.auc:.3f} [{result.low:.2f}, {result.high:.2f}]"


def report_lines(results: list[Result], threshold: float = THRESHOLD) -> list[str]:
    """One row per cue (all videos): its AUC on each labelled split with the interval, and
    its strongest fake kind on the judged split; then a warning line per cue above the
    threshold (per kind too)."""
    overall = [result for result in results if result.kind == "all"]
    splits = list(dict.fromkeys(result.split for result in overall))
    judged = judged_split(results)
    header = f"{'cue':<24}" + "".join(f"{split + ' AUC [95%]':>22}" for split in splits)
    lines = [header + f"  {'rule':<20}strongest kind on {judged}"]
    by_cue = {}
    for result in overall:
        by_cue.setdefault(result.cue, {})[result.split] = result
    order = sorted(by_cue, key=lambda cue: -cue_strength(overall, cue, judged))
    for cue in order:
        cells = "".join(f"{_interval(by_cue[cue][s]) if s in by_cue[cue] else '-':>22}"
                        for s in splits)  # fmt: skip
        kinds = [r for r in results if r.cue == cue and r.kind != "all" and r.split == judged
                 and measured(r)]  # fmt: skip
        best = max(kinds, key=strength, default=None)
        kind = f"{best.kind} {best.auc:.3f}" if best else "-"
        rule = next(iter(by_cue[cue].values())).direction or ("model" if cue == ALL_CUES else "-")
        lines.append(f"{cue:<24}{cells}  {rule:<20}{kind}")
    lines += note_lines(overall)
    for result in warnings_of(results, threshold):
        lines.append(warning_line(result))
    return lines


def note_lines(overall: list[Result]) -> list[str]:
    """One line per cue and note (why it was not measured, or how it was scored), naming
    the splits it holds for."""
    splits_of: dict[tuple[str, str], list[str]] = {}
    for result in overall:
        if result.note:
            splits_of.setdefault((result.cue, result.note), []).append(result.split)
    return [f"note: {cue} ({', '.join(splits)}): {note}"
            for (cue, note), splits in splits_of.items()]  # fmt: skip


def warning_line(result: Result) -> str:
    who = "fakes" if result.kind == "all" else f"fakes of kind {result.kind}"
    return (f"WARNING: shortcut: {result.cue} alone separates {who} from reals: AUC "
            f"{_interval(result)} on {result.split} ({result.direction}; {result.reals} real, "
            f"{result.fakes} fake)")  # fmt: skip


def summary_line(results: list[Result], threshold: float = THRESHOLD) -> str:
    """The one line to read: the strongest cue, the classifier and how many cues warn."""
    split = judged_split(results)
    if not any(r.split == split and r.kind == "all" for r in results):
        return "audit: no labelled split with both real and fake videos: nothing to measure"
    best = strongest(results, split)
    single = f"strongest cue {best.cue} AUC {_interval(best)}" if best else (
        f"no single cue is measurable on {split} (see the notes)")  # fmt: skip
    model = next((r for r in results if r.split == split and r.kind == "all"
                  and r.cue == ALL_CUES), None)  # fmt: skip
    together = ""
    if model:  # a classifier that could not learn says so: its 0.5 would be no finding
        together = f"; all cues together {_interval(model) if measured(model) else model.note}"
    verdict = warning_count(warnings_of(results, threshold), threshold)
    return f"audit ({split}): {single}{together}; {verdict}"


def warning_count(warned: list[Result], threshold: float) -> str:
    """How many cues warn on all fakes and on one kind of fake alone: a kind's warning is
    the weaker news, since a kind is a few fakes and its interval wide."""
    overall = sum(r.kind == "all" for r in warned)
    per_kind = len(warned) - overall
    if overall:
        also = f" (and {per_kind} per fake kind)" if per_kind else ""
        return f"WARNING: {overall} cue(s) alone reach AUC {threshold:g}{also}"
    if per_kind:
        return (f"no single cue reaches AUC {threshold:g} on all fakes; WARNING: {per_kind} "
                f"do on one fake kind (read their intervals)")  # fmt: skip
    return f"no single cue reaches AUC {threshold:g}"


def plot(results: list[Result], path, threshold: float = THRESHOLD):
    """Bars of each cue's AUC (all videos) on each labelled split, with the intervals and
    the threshold; strongest at the top."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    overall = [r for r in results if r.kind == "all"]
    splits = list(dict.fromkeys(r.split for r in overall))
    judged = judged_split(results)
    cues = sorted(dict.fromkeys(r.cue for r in overall),
                  key=lambda cue: cue_strength(overall, cue, judged))  # fmt: skip
    figure, axes = plt.subplots(figsize=(8, 0.32 * len(cues) * len(splits) + 1.5))
    height = 0.8 / max(len(splits), 1)
    for i, split in enumerate(splits):
        found = {r.cue: r for r in overall if r.split == split and measured(r)}
        y = np.arange(len(cues)) + i * height
        values = [found[c].auc if c in found else np.nan for c in cues]
        errors = [[found[c].auc - found[c].low if c in found else 0 for c in cues],
                  [found[c].high - found[c].auc if c in found else 0 for c in cues]]  # fmt: skip
        axes.barh(y, np.array(values) - 0.5, height, left=0.5, xerr=errors, label=split,
                  capsize=2)  # fmt: skip
    for x in (threshold, 1 - threshold):
        axes.axvline(x, color="red", linestyle="--", linewidth=1)
    axes.axvline(0.5, color="black", linewidth=0.8)
    axes.set_yticks(np.arange(len(cues)) + height * (len(splits) - 1) / 2, cues)
    axes.set_xlim(0, 1)
    axes.set_xlabel("ROC AUC on the labels (0.5: the cue says nothing; red: warning threshold)")
    axes.set_title("Shortcut audit: each cue alone, and all together")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
