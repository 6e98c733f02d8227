"""This process's place in a torchrun job, read from the environment torchrun sets.

Apart from train/distributed.py, which joins the process group, so that avcache-train can
set up its logging and answer a mistake before it imports torch.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass


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
