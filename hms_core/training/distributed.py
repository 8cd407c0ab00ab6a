"""Process-group helpers for data-parallel training (one process per GPU under ``torchrun``; gloo on CPU).

The trainers ask :func:`context` who they are: each rank draws its shard of the same seeded permutation, gradients
are all-reduced by ``DistributedDataParallel``, every rank evaluates identically (so early stopping agrees without
messages) and only rank 0 writes checkpoints, predictions and tracking. The ``torchrun`` entry point is
:mod:`hms_core.training.ddp`; this module imports nothing from the engine, so there is no import cycle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "barrier", "cleanup", "context", "init_distributed"]


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def context() -> DistContext:
    """The current process's rank information (single process when no process group is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistContext()


def init_distributed(backend: str | None = None) -> DistContext:
    """Initialise the process group from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR...); no-op alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return context()
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return context()


def barrier() -> None:
    if context().enabled:
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
