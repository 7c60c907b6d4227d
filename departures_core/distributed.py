"""Data-parallel training under ``torchrun``: which process this is, and what it shares.

``torchrun --nproc_per_node N -m departures_core train ...`` starts N processes with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` set. Each pairs and
trains on its share of the training conditions; gradients are averaged every step
(`torch.nn.parallel.DistributedDataParallel`: NCCL on GPUs, gloo on CPU); only rank 0
writes the run folder. Started without torchrun, everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        """The process that writes the run folder and reports progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active and dist.is_initialized():
            dist.barrier()

    def share(self, sizes: list[int]) -> list[int]:
        """This process's share of items of these sizes (largest first, each to the least
        loaded process): every process gets about the same number of cells."""
        if not self.active:
            return list(range(len(sizes)))
        load = np.zeros(self.world)
        mine = []
        for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
            owner = int(np.argmin(load))
            load[owner] += sizes[i]
            if owner == self.rank:
                mine.append(i)
        return sorted(mine)


def context() -> Context:
    """This process's place in a torchrun job (one process when not under torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    return Context(
        rank=int(os.environ.get("RANK", "0")),
        world=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))),
    )


def setup(ctx: Context, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on CPU); the device of this process."""
    if not ctx.active:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def teardown(ctx: Context) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()


def threads_for(requested: int, ctx: Context | None = None) -> int:
    """Torch threads of a training process: ``requested``, or (0) the machine's cores shared
    by the processes of this torchrun node and at most half of them otherwise, so that a
    second training or the app on the same machine does not spin against this one (two
    trainings with a thread per core each ran ~50x slower)."""
    if requested and requested > 0:
        return int(requested)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ctx = ctx or context()
    share = cores // ctx.local_world if ctx.active else cores // 2
    return max(1, int(share or 1))
