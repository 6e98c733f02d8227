"""Checkpoints: what a run's last.pt and best.pt hold, how they are written, and how they are
read back (untrusted data: a checkpoint may come from elsewhere).

last.pt holds everything needed to resume: the model's weights and kind, the optimiser and
scheduler, the epoch, the global batches done in it, their summed loss and samples, and the
history (no RNG state: each batch's randomness is seeded from its index). best.pt, chosen by
validation ROC AUC, holds what prediction needs: the weights, kind, epoch and best score,
without the optimiser's state that would triple the file (AdamW keeps two values a
weight). Checkpoints hold only tensors and plain data, are written under a temporary name
and renamed, and are loaded with torch.load(weights_only=True) after the file is checked as
the zip archive torch.save writes.
"""

from __future__ import annotations

import math
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from avcache.common.atomic import atomic_path
from avcache.common.untrusted import printable, regular_file

# What a checkpoint holds besides weights and optimiser: Progress's fields and their types.
PROGRESS_TYPES = {"epoch": int, "best_score": float, "history": list, "batches_done": int,
                  "loss_sum": float, "samples": int}  # fmt: skip


@dataclass
class Progress:
    """What resuming needs besides the weights."""

    epoch: int = 0  # epochs finished
    best_score: float = -math.inf
    history: list[dict] = field(default_factory=list)
    batches_done: int = 0  # global batches of the unfinished epoch already trained on
    loss_sum: float = 0.0  # their summed training loss, over all ranks
    samples: int = 0  # and their samples


def checkpoint_state(model: nn.Module, kind: str, progress: Progress,
                     optimizer: torch.optim.Optimizer | None = None,
                     scheduler=None) -> dict:  # fmt: skip
    """What prediction needs (the weights, kind, epoch and best score) and, given the
    optimiser and its scheduler, everything a resume needs besides."""
    weights = {"model": model.state_dict(), "kind": kind, "epoch": progress.epoch,
               "best_score": progress.best_score}  # fmt: skip
    if optimizer is None:
        return weights
    return {
        **weights,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        **{key: getattr(progress, key) for key in PROGRESS_TYPES},
    }


def save_checkpoint(path: Path, state: dict) -> None:
    """Written under a temporary name and renamed: a checkpoint on disk is always whole."""
    with atomic_path(path) as partial:
        torch.save(state, partial)


def restore(path: Path, model: nn.Module, kind: str, optimizer: torch.optim.Optimizer | None = None,
            scheduler=None) -> Progress | None:  # fmt: skip
    """Load a checkpoint written for `kind` into `model` and, given them, the optimiser and
    scheduler; the progress it recorded (None for the weights alone). Each value is checked
    before use, so a foreign or damaged file is refused in one line naming it."""
    state = read_checkpoint(path)
    if state.get("kind", kind) != kind:
        raise ValueError(f"{path}: written for model.kind={printable(state['kind'])}, "
                         f"this run's model is {kind}")  # fmt: skip
    model.load_state_dict(checked_weights(model, state, path))
    if optimizer is None:
        return None
    progress = progress_of(state, path)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{path}: its optimiser or scheduler state does not fit this run "
                         f"({printable(error)}); it was written by another config"
                         ) from None  # fmt: skip
    return progress


NOT_OURS = "it is not a checkpoint written by avcache-train for this run"
# What a checkpoint's members may declare, all together, before torch reads them: torch.save
# stores every member uncompressed, so a checkpoint declares at most its own size, whatever
# its size; twice that, and 16 MiB more for a small file, leaves room for one compressed
# again, while a 2 MB zip declaring 2.4 GB is refused unread.
CHECKPOINT_INFLATION = 2
CHECKPOINT_SLACK = 16 << 20


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's state on the host. The model's and optimiser's load_state_dict copy each
    tensor to its parameter's device; AdamW's `step` counts stay on the host, where the
    optimiser reads them (loaded onto the GPU, every step would read them back, two host
    synchronisations per parameter). The file is checked as a zip archive first
    (`checked_archive`), and torch reads the very file that was checked."""
    with open_checkpoint(path) as handle:
        checked_archive(handle, path)
        handle.seek(0)
        try:
            state = torch.load(handle, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ValueError(
                f"{path}: refused to load: torch.load(weights_only=True) found more than "
                "tensors and plain data in it (pickled objects, which could run code when "
                "loaded, or a damaged file); checkpoints written by avcache-train hold nothing "
                "else"
            ) from error
        except (RuntimeError, EOFError, OSError, LookupError) as error:
            raise ValueError(f"{path}: not a readable checkpoint ({printable(error)})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a dict: {NOT_OURS}")
    return state


def open_checkpoint(path: Path):
    """The checkpoint opened for reading, refused unless it is a regular file (stat first: a
    FIFO is never opened) and still the same file once opened."""
    info = regular_file(path, "checkpoint")
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise ValueError(f"{path}: cannot read the checkpoint ({error.strerror})") from None
    handle = os.fdopen(descriptor, "rb")
    opened = os.fstat(descriptor)
    if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
        handle.close()
        raise ValueError(f"{path}: the checkpoint was replaced while it was opened; try again")
    return handle


def checked_archive(handle, path: Path) -> None:
    """Refuse, before torch reads a byte of tensor data, a file that is not the zip archive
    torch.save writes (a text file, an old or foreign format: torch would fail with an
    IndexError or KeyError), one without its data.pkl record, and one whose members declare
    more than CHECKPOINT_INFLATION times the file's size (a zip bomb: torch allocates what a
    member declares). Only the archive's directory is read."""
    size = os.fstat(handle.fileno()).st_size
    try:
        with zipfile.ZipFile(handle) as archive:  # leaves `handle` open
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as error:
        raise ValueError(f"{path}: not a checkpoint: not a zip archive, the format torch.save "
                         f"writes ({printable(error)}); {NOT_OURS}") from None  # fmt: skip
    if not any(member.filename.endswith("/data.pkl") for member in members):
        raise ValueError(f"{path}: not a checkpoint: a zip archive without the data.pkl "
                         f"record torch.save writes; {NOT_OURS}")  # fmt: skip
    declared = sum(member.file_size for member in members)
    bound = CHECKPOINT_INFLATION * size + CHECKPOINT_SLACK
    if declared > bound:
        raise ValueError(
            f"{path}: refused to load: its members would inflate to {declared / 2**20:,.0f} MiB "
            f"from a file of {size / 2**20:,.1f} MiB (at most {bound / 2**20:,.0f} MiB "
            f"allowed); torch.save stores checkpoints uncompressed: {NOT_OURS}"
        )


def checked_weights(model: nn.Module, state: dict, path: Path) -> dict:
    """The checkpoint's weights, which must have exactly the model's names and shapes."""
    weights = state.get("model")
    if not isinstance(weights, dict) or not all(
        isinstance(value, torch.Tensor) for value in weights.values()
    ):
        raise ValueError(f"{path}: no 'model' weights (a dict of tensors): {NOT_OURS}")
    expected = model.state_dict()
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    reshaped = [key for key in expected if key in weights
                and weights[key].shape != expected[key].shape]  # fmt: skip
    if missing or unexpected or reshaped:
        problems = [f"{len(names)} {what} (e.g. {printable(names[0])})"
                    for names, what in ((missing, "missing"), (unexpected, "unexpected"),
                                        (reshaped, "of another shape")) if names]  # fmt: skip
        raise ValueError(f"{path}: its weights do not fit this run's model: "
                         f"{', '.join(problems)}; {NOT_OURS}")  # fmt: skip
    return weights


def progress_of(state: dict, path: Path) -> Progress:
    """Progress restored by key, each value of its type (an int is a fine float)."""
    values = {}
    for key, kind in PROGRESS_TYPES.items():
        value = state.get(key)
        allowed = (int, float) if kind is float else kind
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise ValueError(f"{path}: {key!r} is {type(value).__name__}, expected "
                             f"{kind.__name__}: {NOT_OURS}")  # fmt: skip
        values[key] = value
    if not all(isinstance(row, dict) for row in values["history"]):
        raise ValueError(f"{path}: 'history' holds more than metric rows: {NOT_OURS}")
    return Progress(**values)
