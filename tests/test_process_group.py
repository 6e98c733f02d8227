"""The process group GPU ranks join, tried with two CPU ranks: every collective that
training makes on host tensors (the run-folder lock's vote, summed counts, gathered
predictions) has a backend. NCCL cannot start without a GPU, so gloo stands in for it,
bound to the same device types NCCL would be."""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from avcache.train import distributed
from avcache.train.run import lock_run


def gloo_in_place_of_nccl(backend: str) -> str:
    """The device-type -> backend map of `backend`, with gloo wherever NCCL would serve."""
    if ":" in backend:
        pairs = [pair.split(":") for pair in backend.split(",")]
    else:
        pairs = [(device, backend) for device in dist.Backend.backend_capability[backend]]
    return ",".join(f"{device}:{'gloo' if name == 'nccl' else name}" for device, name in pairs)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rank_main(rank: int, port: int, out: str, results: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = gloo_in_place_of_nccl(distributed.backend_for(torch.device("cuda")))
    dist.init_process_group(backend=backend, rank=rank, world_size=2)
    try:
        ranks = distributed.Ranks(rank, 2, rank, 2)
        lock = lock_run(Path(out), ranks)
        total = distributed.sum_across([1.0, float(rank)], torch.device("cpu"))
        gathered = distributed.gather(rank * 10)
        Path(results, f"rank{rank}").write_text(f"{total} {gathered}")
        distributed.barrier()
        lock.release()
    finally:
        dist.destroy_process_group()


def test_the_gpu_ranks_backend_serves_host_tensors(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    mp.spawn(rank_main, args=(free_port(), str(tmp_path / "run"), str(results)), nprocs=2)
    for rank in range(2):
        assert (results / f"rank{rank}").read_text() == "[2.0, 1.0] [0, 10]"


def test_ranks_sharing_a_gpu_use_gloo_and_the_cpu_uses_gloo():
    assert distributed.backend_for(torch.device("cuda"), gpu_shared=True) == "gloo"
    assert distributed.backend_for(torch.device("cpu")) == "gloo"


def identities_exchanged(own: list[str]) -> list[list[str]]:
    """What each of len(own) ranks learns of every rank's device through one store."""
    store = dist.HashStore()
    world = len(own)
    with ThreadPoolExecutor(world) as pool:
        futures = [pool.submit(distributed.devices_of_every_rank, store,
                               distributed.Ranks(rank, world, rank, world), identity)
                   for rank, identity in enumerate(own)]  # fmt: skip
        return [future.result(timeout=60) for future in futures]


def test_ranks_shown_one_gpu_each_share_none_when_the_gpus_differ():
    """SLURM --gpus-per-task=1 or one GPU per pod: every rank sees one device, cuda:0, as
    ranks sharing a GPU would; their GPUs' UUIDs tell them apart (NCCL for CUDA tensors)."""
    own = ["gpu-aaaa", "gpu-bbbb", "gpu-cccc", "gpu-dddd"]
    for learnt in identities_exchanged(own):
        assert learnt == own
        assert not distributed.shares_a_device(learnt)


def test_two_ranks_on_one_gpu_are_told_they_share_it():
    learnt = identities_exchanged(["gpu-aaaa", "gpu-bbbb", "gpu-aaaa"])
    assert all(distributed.shares_a_device(each) for each in learnt)


def test_under_ddp_gradients_are_the_buckets_and_stay_so_across_steps():
    """DDP reduces gradients through flat buckets. As views of them, laid out as the
    (channels_last) parameters, nothing is copied in or out each step; set to None by the
    optimiser they would be new tensors every step, copied into the buckets."""
    import timm

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = timm.create_model("resnet18", num_classes=1, in_chans=1)
        model = model.to(memory_format=torch.channels_last)
        wrapped = distributed.data_parallel(model, torch.device("cpu"))
        optimizer = torch.optim.AdamW(model.parameters())
        storages = []
        for _ in range(3):
            images = torch.randn(2, 1, 32, 32).contiguous(memory_format=torch.channels_last)
            wrapped(images).sum().backward()
            storages.append({p.grad.untyped_storage().data_ptr() for p in model.parameters()})
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)  # as the trainer does under DDP
    finally:
        dist.destroy_process_group()
    parameters = len(list(model.parameters()))
    assert len(storages[1]) < parameters / 10  # a few buckets, not a tensor per parameter
    assert storages[1] == storages[2]
