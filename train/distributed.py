"""The process group under torchrun: who this rank is, and the few collectives training needs.

`torchrun --nproc_per_node N train/run.py ...` sets RANK, WORLD_SIZE and
LOCAL_RANK; without them everything runs as one process and every collective
here is a no-op. GPU ranks join with NCCL for CUDA tensors and gloo for CPU tensors
(the run-folder lock's vote, `all_gather_object` of predictions): NCCL alone binds
no CPU tensor. Only when two ranks hold the same GPU (more ranks than GPUs on a box, a
correctness run) do all use gloo, since NCCL refuses two ranks on one device. Which GPU a
rank holds is told by its UUID, exchanged through the rendezvous store before the group
forms: launchers that give each rank a GPU of its own and hide the others (SLURM
`--gpus-per-task=1`, one GPU per Kubernetes pod) show every rank one device, as a shared
GPU would, but their UUIDs differ.
"""

from __future__ import annotations

import inspect
import logging
import os

import torch
import torch.distributed as dist
from timm.utils import distribute_bn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from avcache.train.ranks import Ranks

log = logging.getLogger("avcache.train")


def backend_for(device: torch.device, gpu_shared: bool = False) -> str:
    """The process group's backend for ranks on `device`: one per tensor device type."""
    if device.type == "cuda" and not gpu_shared:
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def start(ranks: Ranks, device: torch.device) -> None:
    """Join the process group torchrun describes (nothing to do for a single process)."""
    if not ranks.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store, _, _ = next(dist.rendezvous("env://", ranks.rank, ranks.world))
    held = devices_of_every_rank(store, ranks, device_identity(device))
    shared = device.type == "cuda" and shares_a_device(held)
    if shared and ranks.main:
        log.warning("%d ranks hold %d GPUs: CUDA tensors travel through gloo (correct, but "
                    "many times slower than NCCL; give each rank a GPU of its own)",
                    ranks.world, len(set(held)))  # fmt: skip
    dist.init_process_group(backend=backend_for(device, shared), store=store, rank=ranks.rank,
                            world_size=ranks.world)  # fmt: skip


def device_identity(device: torch.device) -> str:
    """What tells this rank's device apart from every other rank's: a GPU's UUID (the same
    card however CUDA_VISIBLE_DEVICES numbers it), else its host and bus; a CPU is none."""
    if device.type != "cuda":
        return "cpu"
    properties = torch.cuda.get_device_properties(device)
    uuid = getattr(properties, "uuid", None)
    if uuid is not None:
        return f"gpu-{uuid}"
    bus = (properties.pci_domain_id, properties.pci_bus_id, properties.pci_device_id)
    return f"{os.uname().nodename}:{bus}"


def devices_of_every_rank(store: dist.Store, ranks: Ranks, identity: str) -> list[str]:
    """Every rank's device identity, in rank order, through the rendezvous store. The keys
    carry the launcher's restart count: an elastic restart reuses torchrun's store."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    exchange = dist.PrefixStore(f"avcache/devices/{attempt}", store)
    exchange.set(str(ranks.rank), identity)
    return [exchange.get(str(rank)).decode() for rank in range(ranks.world)]


def shares_a_device(identities: list[str]) -> bool:
    """Whether two ranks hold the same device (then NCCL would refuse the group)."""
    return len(set(identities)) < len(identities)


def data_parallel(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """`model` under DDP. Gradients are views of DDP's buckets, laid out as the parameters
    (channels_last included): no copy into the buckets each step, and no stride mismatch,
    as long as the optimiser zeroes them in place instead of setting them to None. BatchNorm
    statistics stay per rank, averaged at checkpoints and epoch ends (average_batchnorm),
    instead of rank 0's overwriting the others' every step."""
    options: dict = {"gradient_as_bucket_view": True}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        options["forward_sync_buffers"] = False  # torch >= 2.13
    else:
        options["broadcast_buffers"] = False  # its name before
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **options)


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
