"""The process group under torchrun: who this rank is, and the few collectives training needs.

`torchrun --nproc_per_node N train/run.py ...` sets RANK, WORLD_SIZE and
LOCAL_RANK; without them everything runs as one process and every collective
here is a no-op. GPU ranks join with NCCL for CUDA tensors and gloo for CPU tensors
(the run-folder lock's vote, `all_gather_object` of predictions): NCCL alone binds
no CPU tensor. Ranks that outnumber the GPUs share them round-robin and use gloo for
everything, since NCCL refuses two ranks on one device.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from timm.utils import distribute_bn


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # ranks on this machine

    @property
    def main(self) -> bool:
        """The rank that writes checkpoints, metrics and plots, and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def ranks_from_env() -> Ranks:
    """This process's place in a torchrun job (one process alone without torchrun)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", 1))
    return Ranks(int(env.get("RANK", 0)), world, int(env.get("LOCAL_RANK", 0)),
                 int(env.get("LOCAL_WORLD_SIZE", world)))  # fmt: skip


def quiet_other_ranks(ranks: Ranks) -> None:
    """Python warnings (deprecations, DDP's "grad strides" notice) once, from rank 0: the
    other ranks would print the same lines again."""
    if not ranks.main:
        warnings.filterwarnings("ignore")


def backend_for(device: torch.device, gpu_shared: bool = False) -> str:
    """The process group's backend for ranks on `device`: one per tensor device type."""
    if device.type == "cuda" and not gpu_shared:
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def start(ranks: Ranks, device: torch.device) -> None:
    """Join the process group torchrun describes (nothing to do for a single process)."""
    if not ranks.distributed or dist.is_initialized():
        return
    shared = False
    if device.type == "cuda":
        torch.cuda.set_device(device)
        shared = ranks.local_world > torch.cuda.device_count()
    dist.init_process_group(backend=backend_for(device, shared), rank=ranks.rank,
                            world_size=ranks.world)  # fmt: skip


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def sum_across(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over ranks (float64, so sums of losses add up exactly enough)."""
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather(value: object) -> list[object]:
    """Every rank's value, in rank order (predictions of a split, for metrics)."""
    if not dist.is_initialized():
        return [value]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def average_batchnorm(model: torch.nn.Module) -> None:
    """Each rank's BatchNorm running statistics saw only its own batches: average them."""
    if dist.is_initialized():
        distribute_bn(model, dist.get_world_size(), reduce=True)
