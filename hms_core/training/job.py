"""One (model, fold) training job from the platform config: the single place that turns a config into a call.

The Dagster model asset and the ``torchrun`` entry point (:mod:`hms_core.training.ddp`) both call
:func:`fold_job` and :func:`train_job`, and build their loggers with :func:`hms_core.tracking.build_loggers`, so a
model trained with DDP has the same inputs, model and training parameters, preprocessing parameters (saved in
``final/config.json`` for serving), output folder and tracking runs as one trained by the asset.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hms_core.checks import check_option
from hms_core.config import PlatformConfig, TrainingConfig
from hms_core.models.registry import get_spec

if TYPE_CHECKING:  # the engine imports torch; a job is built without it
    from hms_core.training.fold import FoldResult

__all__ = ["TEST_PARTITION", "FoldJob", "fold_job", "make_job", "train_job"]

#: Folder name of the test-set partition beside the fold partitions.
TEST_PARTITION = "test"


@dataclass(frozen=True)
class FoldJob:
    """Everything one training of ``model`` on fold ``fold`` needs (paths absolute, configs resolved)."""

    model: str
    fold: str
    train_dirs: tuple[Path, ...]
    val_dir: Path
    test_dir: Path | None
    out_dir: Path
    model_cfg: dict[str, Any]
    training: TrainingConfig
    preprocessing: dict[str, Any]
    run_name: str
    tags: dict[str, str] = field(default_factory=dict)
    #: False: a fixed schedule trained to its end (a refit on every fold, :mod:`hms_core.training.refit`)
    early_stopping: bool = True


def fold_job(cfg: PlatformConfig, model: str, fold: str) -> FoldJob:
    """Partition ``fold`` of ``model``: train on every other fold's partition, validate on ``fold``'s, predict the
    test partition, write to ``<root>/models/<model>/<fold>``."""
    check_option("fold", fold, cfg.fold_names)
    windows = cfg.processed_dir / "windows"
    return make_job(cfg, model, fold, train_dirs=[windows / f for f in cfg.fold_names if f != fold],
                    val_dir=windows / fold, test_dir=windows / TEST_PARTITION, out_dir=cfg.models_dir / model / fold)  # fmt: skip


def make_job(cfg: PlatformConfig, model: str, name: str, train_dirs: Sequence[str | os.PathLike[str]],
             val_dir: str | os.PathLike[str], test_dir: str | os.PathLike[str] | None,
             out_dir: str | os.PathLike[str]) -> FoldJob:  # fmt: skip
    """A job on explicit partition folders (``name`` names the run); parameters from ``cfg`` as in
    :func:`fold_job`."""
    get_spec(model)  # an unknown model fails naming the registered ones
    return FoldJob(
        model=model,
        fold=name,
        train_dirs=tuple(Path(d).resolve() for d in train_dirs),
        val_dir=Path(val_dir).resolve(),
        test_dir=Path(test_dir).resolve() if test_dir is not None else None,
        out_dir=Path(out_dir).resolve(),
        model_cfg=get_spec(model).config_cls.bind_workspace(dict(cfg.models.get(model, {})), cfg),
        training=cfg.training,
        # the exact preprocessing parameters travel with the weights: serving reuses them
        preprocessing=cfg.preprocessing.model_dump(mode="json"),
        run_name=f"{model}-{name}",
        tags={"model": model, "fold": name, "profile": cfg.profile},
    )


def train_job(job: FoldJob, loggers: Sequence[Any] = (), resume: bool = True,
              progress: Callable[[int, int], None] | None = None) -> FoldResult:  # fmt: skip
    """:func:`hms_core.training.engine.train_fold` with the job's arguments."""
    from hms_core.training.engine import train_fold

    return train_fold(job.model, job.model_cfg, job.training, list(job.train_dirs), job.val_dir, job.test_dir,
                      job.out_dir, loggers=loggers, resume=resume, progress=progress,
                      preprocessing=job.preprocessing, early_stopping=job.early_stopping)  # fmt: skip
