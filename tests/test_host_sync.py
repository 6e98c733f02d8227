"""The training step never makes the host wait for the GPU. On CUDA, torch counts the
synchronisations (test_cuda.py); here, on the CPU, the step is checked for what would cause
them there: a tensor built from Python data (a blocking copy), a copy to a device that is
not asynchronous, a value read back into Python."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.overrides import TorchFunctionMode

from avcache.cache import open_cache
from avcache.common.host_sync import host_syncs
from avcache.train.config import TrainConfig
from avcache.train.engine import Trainer
from avcache.train.loading import make_loader
from tests.toy import write_toy_cache

READS_BACK = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy,
              torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__}  # fmt: skip
FROM_PYTHON = {torch.tensor, torch.as_tensor}
COPIES = {torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.copy_}


def names_a_device(args: tuple, kwargs: dict) -> bool:
    values = [*args[1:], kwargs.get("device")]
    return any(isinstance(value, torch.device | str) for value in values)


class WouldSynchronise(TorchFunctionMode):
    """Records each call that would make the host wait for a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__qualname__", repr(func))
        if func in READS_BACK or func in FROM_PYTHON:
            self.calls.append(name)
        elif func in COPIES and names_a_device(args, kwargs) and not kwargs.get("non_blocking"):
            self.calls.append(f"{name} (blocking)")
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    write_toy_cache(root, {"train": 16, "val": 8})
    return open_cache(root)


@pytest.mark.parametrize("kind", ["audio", "faces", "av"])
def test_a_training_step_builds_no_tensor_from_python_and_reads_nothing_back(cache, tmp_path, kind):
    config = TrainConfig()
    config.model.kind, config.model.mel_size, config.model.frames = kind, 64, 1
    config.data.batch_size, config.data.workers, config.run.device = 8, 0, "cpu"
    config.augment.vflip, config.augment.av_mismatch = 0.5, 0.25
    trainer = Trainer(config, cache, tmp_path)
    _, loader = make_loader(cache, "train", trainer.fields, config, trainer.device,
                            trainer.ranks, train=True)  # fmt: skip
    first, second = list(loader)[:2]
    trainer._backward(first, 0, True)  # the first step may build its constants
    watch = WouldSynchronise()
    with watch:
        loss = trainer._backward(second, 0, True)
    assert watch.calls == []
    assert torch.isfinite(loss)


# The counter test_cuda.py and benchmarks/gpu_check.py read (common/host_sync.py). CUDA's
# debug mode needs a GPU: here a stand-in keeps the mode, and the block raises the warnings
# CUDA would.
SYNC_MESSAGE = "called a synchronizing CUDA operation"


@pytest.fixture
def debug_mode(monkeypatch):
    """The debug mode as torch keeps it: 0 default, 1 warn, 2 error."""
    mode = [0]

    def set_mode(value: int | str) -> None:
        mode[0] = {"default": 0, "warn": 1, "error": 2}.get(value, value)

    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: mode[0])
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", set_mode)
    return mode


def test_the_counter_keeps_each_synchronisation_and_nothing_else(debug_mode):
    with host_syncs() as syncs:
        assert debug_mode == [1]  # CUDA warns on each synchronisation inside the block
        for _ in range(2):  # the same place twice: counted twice
            warnings.warn(SYNC_MESSAGE, UserWarning, stacklevel=1)
        warnings.warn("an unrelated warning", UserWarning, stacklevel=1)
    assert syncs == [SYNC_MESSAGE, SYNC_MESSAGE]
    assert debug_mode == [0]


def test_the_counter_restores_the_mode_before_it_when_the_block_fails(debug_mode):
    debug_mode[0] = 2  # "error", set by whoever called
    with pytest.raises(RuntimeError), host_syncs():
        raise RuntimeError("a failed step")
    assert debug_mode == [2]
