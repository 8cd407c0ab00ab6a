"""Training one (model, fold): plain functions, no orchestration.

:func:`train_fold` opens the fold's partitions into one :class:`~hms_core.training.fold.FoldData`, picks the
trainer of the model spec's framework (:data:`TRAINERS`: :mod:`~hms_core.training.torch_trainer` for ``pytorch``,
:mod:`~hms_core.training.gbm_trainer` for ``lightgbm``), calls the loggers (rank 0 only) and writes
``metrics.json``. Every trainer writes, atomically, ``final/{weights, config.json}``, ``oof.parquet`` and
``test_pred.parquet``; the torch trainer also ``checkpoints/last.pt`` every epoch and ``checkpoints/best.pt`` on
improvement, and re-running with ``resume=True`` after a crash or ``kill -9`` ends with the same result as an
uninterrupted run.

Callers that start from a platform config (the Dagster asset, the ``torchrun`` entry point) go through
:func:`hms_core.training.job.fold_job`, so both train with the same inputs, parameters and outputs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from hms_core.checks import check_option
from hms_core.config import TrainingConfig
from hms_core.io import write_json
from hms_core.models.registry import get_spec, resolve_config
from hms_core.training import distributed, gbm_trainer, torch_trainer
from hms_core.training.fold import FitContext, FoldData, FoldResult, load_fold_data

__all__ = ["TRAINERS", "FoldResult", "get_trainer", "run_fold", "train_fold"]

Trainer = Callable[[FoldData, FitContext], FoldResult]
#: One trainer per framework (``ModelSpec.framework``).
TRAINERS: dict[str, Trainer] = {"pytorch": torch_trainer.fit, "lightgbm": gbm_trainer.fit}


def get_trainer(framework: str) -> Trainer:
    return TRAINERS[check_option("framework", framework, TRAINERS)]


def run_fold(data: FoldData, ctx: FitContext) -> FoldResult:
    """Train on an opened fold: loggers' ``on_start``, the framework's trainer, ``metrics.json``, ``on_end``."""
    t0 = time.perf_counter()
    trainer = get_trainer(ctx.spec.framework)
    main = distributed.context().is_main
    params = {"model": ctx.model_name, **{f"model.{k}": v for k, v in ctx.model_cfg.items()},
              **{f"train.{k}": v for k, v in ctx.cfg.model_dump(mode="json").items()},
              "n_train_rows": len(data.rows), "n_val_rows": len(data.val), "train_dirs": data.train_dirs,
              "val_dir": str(data.val.path)}  # fmt: skip
    if main:
        for lg in ctx.loggers:
            lg.on_start(params)
    threads = torch.get_num_threads()
    if ctx.cfg.torch_threads:
        torch.set_num_threads(ctx.cfg.torch_threads)
    try:
        res = trainer(data, ctx)
    finally:
        torch.set_num_threads(threads)
    res.metrics["seconds"] = time.perf_counter() - t0
    if main:
        res.paths["metrics"] = write_json(ctx.out_dir / "metrics.json", res.metrics)
        for lg in ctx.loggers:
            lg.on_end(res.metrics, [p for p in res.paths.values() if Path(p).is_file()])
    return res


def train_fold(
    model_name: str,
    model_cfg: dict[str, Any],
    train_cfg: TrainingConfig,
    train_dirs: Sequence[str | os.PathLike[str]],
    val_dir: str | os.PathLike[str],
    test_dir: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    loggers: Sequence[Any] = (),
    resume: bool = True,
    progress: Callable[[int, int], None] | None = None,
    preprocessing: dict[str, Any] | None = None,
    early_stopping: bool = True,
) -> FoldResult:
    """Train ``model_name`` on ``train_dirs``, validate on ``val_dir``, predict ``test_dir``; see module docstring.

    ``preprocessing`` (saved in ``final/config.json`` for serving) defaults to the parameters recorded in the first
    training partition's manifest. ``early_stopping=False`` trains the configured epochs / boosting rounds to the
    end (:class:`~hms_core.training.fold.FitContext`; a refit on every fold).
    """
    spec, mcfg = get_spec(model_name), resolve_config(model_name, model_cfg)
    data = load_fold_data(train_dirs, val_dir, test_dir, train_cfg)
    if preprocessing is None:
        preprocessing = data.train[0].manifest.get("config") or None
    ctx = FitContext(model_name, spec, mcfg, train_cfg, Path(out_dir), preprocessing, loggers, resume, progress,
                     early_stopping)  # fmt: skip
    return run_fold(data, ctx)
