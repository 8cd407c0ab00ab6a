"""Distributed data-parallel helpers (one process per GPU under ``torchrun``; gloo on CPU).

``python -m torch.distributed.run --nproc_per_node N -m hms_core.training.ddp --model NAME --train DIR ...`` trains
one fold with N processes: each rank draws its shard of the same seeded permutation, gradients are all-reduced by
``DistributedDataParallel``, every rank evaluates identically (so early stopping agrees without messages) and only
rank 0 writes checkpoints, predictions and tracking.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


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
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistContext()


def init_distributed(backend: str | None = None) -> DistContext:
    """Initialise the process group from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR...); no-op alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return context()
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    return context()


def barrier() -> None:
    if context().enabled:
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    from hms_core.config import TrainingConfig, load_config
    from hms_core.training.engine import train_fold

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", nargs="+", required=True, help="processed training partition folders")
    ap.add_argument("--val", required=True)
    ap.add_argument("--test", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--config", default=None, help="platform config (profile or YAML); models/training are used")
    ap.add_argument("--model-cfg", default=None, help="JSON model config overriding the config file's")
    ap.add_argument("--train-cfg", default=None, help="JSON training config overriding the config file's")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--no-resume", action="store_true")
    a = ap.parse_args(argv)
    ctx = init_distributed(a.backend)
    try:
        cfg = load_config(a.config) if a.config else None
        model_cfg = dict(cfg.models.get(a.model, {})) if cfg else {}
        model_cfg.update(json.loads(a.model_cfg) if a.model_cfg else {})
        train = cfg.training.model_dump() if cfg else {}
        train.update(json.loads(a.train_cfg) if a.train_cfg else {})
        res = train_fold(a.model, model_cfg, TrainingConfig.model_validate(train), [Path(p) for p in a.train],
                         Path(a.val), Path(a.test) if a.test else None, Path(a.out),
                         resume=not a.no_resume)  # fmt: skip
        if ctx.is_main:
            print("RESULT " + json.dumps({k: res.metrics[k] for k in ("val_kl", "epochs", "best_epoch")}), flush=True)
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
