"""The shortcut audit: does a trivial cue, one that has nothing to do with a manipulation,
separate real from fake videos in this cache?

Every cue is a number per video: the facts the preprocessor recorded (audit.facts: durations,
silence, loudness, stream parameters, codecs, file size), what every cache holds (container
duration, audio present, share of frames with a face, face box size and position) and what
the model sees of the silence (the mel image's quiet leading and trailing columns). Each cue
alone is turned into a rule on the training split (its direction, or for a codec the fake
rate of each value) and scored on every split by ROC AUC with a bootstrap interval; a small
gradient-boosted classifier on all cues together is cross-validated within the training split
and scored on the others. Where a sample manifest names each fake's kinds, the same per kind
(its fakes against all reals). AUC 0.5: the cue says nothing; near 1: it gives the labels away.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from threadpoolctl import threadpool_limits

from avcache.cache import schema
from avcache.cache.reader import Cache

THRESHOLD = 0.7  # a cue whose AUC reaches this on a labelled split is warned about
BOOTSTRAP = 500  # resamples for the 95% intervals
MEL_QUIET = 32  # a mel column whose mean grey level is below this is silence (0..255)
ALL_CUES = "all cues (classifier)"
TRAIN = "train"


@dataclass
class CueTable:
    """One row per cached video: its split, label, fake kinds and every cue's value."""

    names: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    columns: dict[str, list] = field(default_factory=dict)
    categorical: set[str] = field(default_factory=set)  # string cues (codecs)

    def array(self, name: str) -> np.ndarray:
        """A cue as float64 (a string cue as the code of its value, sorted; NaN: unknown)."""
        values = self.columns[name]
        if name not in self.categorical:
            return np.asarray(values, np.float64)
        codes = {value: i for i, value in enumerate(sorted(set(values)))}
        return np.array([codes[value] for value in values], np.float64)


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
            table.labels += shard.read(schema.LABEL).astype(int).tolist()
            for name, values in cues.items():
                table.columns.setdefault(name, []).extend(np.asarray(values).tolist())
    table.categorical = {name for name in table.columns if name in schema.FACT_STRINGS}
    width = len(table.names)
    table.columns = {
        name: values for name, values in table.columns.items() if len(values) == width
    }  # fmt: skip  (a cue only some shards hold)
    return table


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


def rule_scores(values: np.ndarray, labels: np.ndarray, train: np.ndarray,
                categorical: bool) -> tuple[np.ndarray, str]:  # fmt: skip
    """A cue made a score by a rule fitted on the `train` rows, and the rule in words: a
    number keeps or flips its direction (fakes higher or lower), unknown values ranked below
    all others; a category scores the fake rate of its value among the training rows
    (unseen: their overall rate)."""
    if categorical:
        rate = labels[train].mean() if train.any() else 0.5
        table = {value: labels[train & (values == value)].mean()
                 for value in np.unique(values[train])}  # fmt: skip
        return np.array([table.get(value, rate) for value in values]), "fake rate by value"
    finite = values[np.isfinite(values)]
    floor = finite.min() - 1 if finite.size else 0.0
    scores = np.where(np.isfinite(values), values, floor)
    fitted = auc(labels[train], scores[train]) if train.any() else float("nan")
    return (-scores, "fakes lower") if fitted < 0.5 else (scores, "fakes higher")


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

    def as_dict(self) -> dict:
        return {key: (None if isinstance(value, float) and np.isnan(value) else value)
                for key, value in self.__dict__.items()}  # fmt: skip


def groups(table: CueTable, kinds: dict[str, list[str]] | None) -> dict[str, np.ndarray]:
    """'all' and, with kinds, one group per fake kind: its fakes and every real video."""
    labels = np.array(table.labels)
    known = labels >= 0
    found = {"all": known}
    for kind in sorted({k for values in (kinds or {}).values() for k in values}):
        has = np.array([kind in (kinds or {}).get(name, ()) for name in table.names])
        found[kind] = known & ((labels == 0) | has)
    return found


def audit(table: CueTable, kinds: dict[str, list[str]] | None = None, rounds: int = BOOTSTRAP,
          seed: int = 0) -> list[Result]:  # fmt: skip
    """Every cue alone and all together, per labelled split and per group (see `groups`)."""
    labels, splits = np.array(table.labels), np.array(table.splits)
    results = []
    for kind, members in groups(table, kinds).items():
        train = members & (splits == TRAIN)
        if not train.any():  # no training split: each split fits its own rule
            train = members
        for cue in table.columns:
            values = table.array(cue)
            scores, direction = rule_scores(values, labels, train, cue in table.categorical)
            results += _scored(cue, kind, scores, labels, splits, members, rounds, seed, direction)
        scores = classifier_scores(table, members, train, seed)
        if scores is not None:
            results += _scored(ALL_CUES, kind, scores, labels, splits, members, rounds, seed)
    return results


def _scored(cue, kind, scores, labels, splits, members, rounds, seed, direction=""):
    found = []
    for split in dict.fromkeys(splits[members].tolist()):
        rows = members & (splits == split)
        y = labels[rows]
        if y.min() == y.max():
            continue
        low, high = bootstrap_interval(y, scores[rows], rounds, seed)
        found.append(Result(cue, split, kind, auc(y, scores[rows]), low, high,
                            int((y == 0).sum()), int((y == 1).sum()), direction))  # fmt: skip
    return found


def classifier_scores(table: CueTable, members: np.ndarray, train: np.ndarray,
                      seed: int) -> np.ndarray | None:  # fmt: skip
    """P(fake) from every cue together: out-of-fold (5-fold, stratified) on the training
    rows, from a model fitted on all of them elsewhere; None where training has too few."""
    labels = np.array(table.labels)
    counts = np.bincount(labels[train], minlength=2)
    if counts.min() < 5:
        return None
    features = np.column_stack([table.array(cue) for cue in table.columns])
    categorical = [cue in table.categorical for cue in table.columns]
    model = HistGradientBoostingClassifier(max_depth=3, max_iter=50, random_state=seed,
                                           categorical_features=categorical)  # fmt: skip
    scores = np.full(len(labels), np.nan)
    folds = StratifiedKFold(min(5, int(counts.min())), shuffle=True, random_state=seed)
    # One OpenMP thread: on a few hundred rows, more only wait on each other (10x slower).
    with threadpool_limits(limits=1):
        scores[train] = cross_val_predict(model, features[train], labels[train], cv=folds,
                                          method="predict_proba")[:, 1]  # fmt: skip
        others = members & ~train
        if others.any():
            model.fit(features[train], labels[train])
            scores[others] = model.predict_proba(features[others])[:, 1]
    return scores


def strength(result: Result) -> float:
    """How far from chance, whichever way (a rule scored on another split can flip)."""
    return max(result.auc, 1 - result.auc) if np.isfinite(result.auc) else 0.0


def cue_strength(results: list[Result], cue: str, split: str) -> float:
    """A cue's strength on one split (0 where it was not scored there)."""
    return max((strength(r) for r in results if r.cue == cue and r.split == split), default=0.0)


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

    from avcache.cache.untrusted import load_json

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
    return f"{result.auc:.3f} [{result.low:.2f}, {result.high:.2f}]"


def report_lines(results: list[Result], threshold: float = THRESHOLD) -> list[str]:
    """One row per cue (all videos): its AUC on each labelled split with the interval, and
    its strongest fake kind on the judged split; then a warning line per cue above the
    threshold (per kind too)."""
    overall = [result for result in results if result.kind == "all"]
    splits = list(dict.fromkeys(result.split for result in overall))
    judged = judged_split(results)
    header = f"{'cue':<24}" + "".join(f"{split + ' AUC [95%]':>22}" for split in splits)
    lines = [header + f"  {'rule':<18}strongest kind on {judged}"]
    by_cue = {}
    for result in overall:
        by_cue.setdefault(result.cue, {})[result.split] = result
    order = sorted(by_cue, key=lambda cue: -cue_strength(overall, cue, judged))
    for cue in order:
        cells = "".join(f"{_interval(by_cue[cue][s]) if s in by_cue[cue] else '-':>22}"
                        for s in splits)  # fmt: skip
        kinds = [r for r in results if r.cue == cue and r.kind != "all" and r.split == judged]
        best = max(kinds, key=strength, default=None)
        kind = f"{best.kind} {best.auc:.3f}" if best else "-"
        rule = next(iter(by_cue[cue].values())).direction or "model"
        lines.append(f"{cue:<24}{cells}  {rule:<18}{kind}")
    for result in warnings_of(results, threshold):
        lines.append(warning_line(result))
    return lines


def warning_line(result: Result) -> str:
    who = "fakes" if result.kind == "all" else f"fakes of kind {result.kind}"
    return (f"WARNING: shortcut: {result.cue} alone separates {who} from reals: AUC "
            f"{_interval(result)} on {result.split} ({result.direction}; {result.reals} real, "
            f"{result.fakes} fake)")  # fmt: skip


def summary_line(results: list[Result], threshold: float = THRESHOLD) -> str:
    """The one line to read: the strongest cue, the classifier and how many cues warn."""
    split = judged_split(results)
    single = [r for r in results if r.split == split and r.kind == "all" and r.cue != ALL_CUES]
    if not single:
        return "audit: no labelled split with both real and fake videos: nothing to measure"
    best = max(single, key=strength)
    model = next((r for r in results if r.split == split and r.kind == "all"
                  and r.cue == ALL_CUES), None)  # fmt: skip
    together = f"; all cues together {_interval(model)}" if model else ""
    verdict = warning_count(warnings_of(results, threshold), threshold)
    return f"audit ({split}): strongest cue {best.cue} AUC {_interval(best)}{together}; {verdict}"


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
        found = {r.cue: r for r in overall if r.split == split}
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
