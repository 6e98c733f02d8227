"""What the held-out protocols share: every recipe trained with each part held out (a kind of
fake, a data set) for every seed, each run a training process of its own, `jobs` at a time;
and the table of their AUCs, recipe by held-out part."""

from __future__ import annotations

import math
import shutil
import statistics
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# recipe -> held-out part -> "seed S" -> the held-out AUC of that run
Results = dict[str, dict[str, dict[str, float]]]


def sweep(parts: list[str], recipes: list[str], seeds: list[int], jobs: int,
          train: Callable[[str, str, int], float],
          record: Callable[[Results], None]) -> Results:  # fmt: skip
    """`train(part, recipe, seed)` for every combination, `jobs` at a time: threads, since
    each only waits on its training process. After each run its AUC joins the results and
    `record(results)` writes them, one call at a time, so that a long sweep's table fills in
    as runs finish. The first failure (in the runs' order) cancels the runs not yet started
    and is raised once those under way end."""
    runs = [(part, recipe, seed) for part in parts for recipe in recipes for seed in seeds]
    results: Results = {recipe: {} for recipe in recipes}
    writing = threading.Lock()

    def run_one(task: tuple[str, str, int]) -> None:
        part, recipe, seed = task
        auc = train(part, recipe, seed)
        with writing:
            results[recipe].setdefault(part, {})[f"seed {seed}"] = auc
            record(results)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(run_one, runs))  # the first failure is raised here
    return results


def run_folder(runs: Path, recipe: str, seed: int) -> Path:
    """The folder of one run among `runs` (those of one held-out part)."""
    return runs / recipe.replace(" ", "_") / f"seed{seed}"


def run_training(command: list[str], run: Path, what: str) -> None:
    """Train in a process of its own into a fresh `run` (one cut short is started again),
    then drop its checkpoints: ~90 MB each, and the tables need only metrics."""
    if run.exists():
        shutil.rmtree(run)
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"training {what} failed: {done.stderr[-2000:]}")
    for checkpoint in run.glob("*.pt"):
        checkpoint.unlink()


def table(results: Results, parts: list[str]) -> str:
    """Markdown: recipe x held-out part, mean (± half the range) over seeds, and the mean
    and the worst over parts (the README's tables)."""
    lines = ["| recipe | " + " | ".join(parts) + " | mean | worst |",
             "|---" * (len(parts) + 3) + "|"]  # fmt: skip
    for recipe, by_part in results.items():
        cells, means = [], []
        for part in parts:
            values = [v for v in by_part.get(part, {}).values() if math.isfinite(v)]
            if not values:  # not run yet, or no held-out fake in this sample's val split
                cells.append("—")
                continue
            mean = statistics.fmean(values)
            means.append(mean)
            spread = f" ±{(max(values) - min(values)) / 2:.2f}" if len(values) > 1 else ""
            cells.append(f"{mean:.2f}{spread}")
        overall = f"{statistics.fmean(means):.3f} | {min(means):.3f}" if means else "— | —"
        lines.append(f"| {recipe} | " + " | ".join(cells) + f" | {overall} |")
    return "\n".join(lines)
