"""Counting the times the host waits for the GPU, as CUDA sees them: the training step should
make none (tests/test_cuda.py), and benchmarks/gpu_check.py reports how many it makes.
Imports torch, which the rest of common/ does not: only GPU checks import this, and
tests/test_cuda.py runs in a GPU image's own Python with nothing but torch installed."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# CUDA's warning for each synchronisation in "warn" mode reads "called a synchronizing CUDA
# operation"; other warnings raised in the block are not counted.
SYNC_WARNING = "synchroniz"


@contextmanager
def host_syncs() -> Iterator[list[str]]:
    """The messages of the synchronisations CUDA counts inside the block, in a list filled
    when it ends. Waits CUDA does not see are missing: nvJPEG's, inside torchvision's batched
    decoder. CUDA only: its debug mode needs a GPU. The mode in force before the block is
    restored, even when the block fails."""
    found: list[str] = []
    before = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every synchronisation, not the first of each place
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode(before)
    found.extend(str(w.message) for w in caught if SYNC_WARNING in str(w.message))
