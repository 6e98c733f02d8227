"""The process group GPU ranks join, tried with two CPU ranks: every collective that
training makes on host tensors (the run-folder lock's vote, summed counts, gathered
predictions) has a backend. NCCL cannot start without a GPU, so gloo stands in for it,
bound to the same device types NCCL would be."""

from __future__ import annotations

import os
import socket
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
