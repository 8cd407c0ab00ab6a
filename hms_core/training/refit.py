"""Refit on every fold: one model of a member trained on all labelled rows, deployed instead of its fold models.

Each of a member's k fold models learnt from (k - 1) / k of the labelled rows and kept the epoch that scored best
on the rows it left out. A refit learns from every row, so no row is left to choose an epoch with; its length comes
from the fold runs (:func:`plan_refit`):

- torch members: per training stage, the median over the folds of the epochs each fold ran in that stage up to and
  including its best epoch (the weights it kept; read from the fold's epoch history in ``checkpoints/last.pt``),
  rounded half up. The warm-up is the folds' (after ``training.min_steps`` stretched their schedule,
  :func:`~hms_core.training.torch_trainer.plan_fold_schedule`); the cosine spans the refit's own epochs, which are
  not stretched again; the last epoch's (EMA) weights are the model.
- LightGBM: the median over the folds of the boosting rounds each kept (its best iteration), rounded half up;
  every round is kept.

The refit is an ordinary :func:`~hms_core.training.job.train_job` (the same trainers, checkpoints, resume after a
kill, outputs) with every fold's partition as training rows and ``early_stopping=False``. Its "validation"
partition is fold 0's, whose rows it trained on: the figures it writes (``metrics.json``, ``oof.parquet``) are
in-sample checks, not estimates (the out-of-fold estimates stay the fold models'). It writes
``<root>/models/<model>/refit/`` and the plan with the row count in ``refit.json`` there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hms_core.checks import check_option
from hms_core.config import PlatformConfig, TrainingConfig
from hms_core.io import write_json
from hms_core.models.registry import get_spec
from hms_core.training.job import TEST_PARTITION, FoldJob, fold_job, make_job, train_job

if TYPE_CHECKING:
    from hms_core.training.fold import FoldResult

__all__ = ["REFIT", "REFIT_FILE", "RefitPlan", "RefitResult", "plan_refit", "read_refit", "refit_job", "refit_training",
           "run_refit", "stage_counts"]  # fmt: skip

#: Folder of a refit under ``<root>/models/<model>/`` and its key where a package lists a member's folds.
REFIT = "refit"
REFIT_FILE = "refit.json"
FRAMEWORKS = ("pytorch", "lightgbm")


@dataclass(frozen=True)
class RefitPlan:
    """How long a refit of ``model`` trains, and from what: ``fold_counts[fold]`` per stage (torch: epochs of each
    stage up to the fold's best epoch; LightGBM: one entry, the rounds it kept), ``stage_epochs`` their medians."""

    model: str
    framework: str
    fold_counts: dict[str, list[int]]
    stage_epochs: tuple[int, ...]
    warmup_epochs: float | None  # torch: the folds' (stretched) warm-up, in epochs; None for LightGBM
    rule: str

    @property
    def epochs(self) -> int:
        """Epochs (torch, all stages) or boosting rounds (LightGBM) of the refit."""
        return int(sum(self.stage_epochs))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stage_epochs"] = list(self.stage_epochs)
        return d


def _median_count(values: Sequence[int]) -> int:
    """The median, rounded half up (the median of 2 and 3 is 3)."""
    return math.floor(float(np.median(values)) + 0.5)


def _fold_metrics(cfg: PlatformConfig, model: str, fold: str) -> dict[str, Any]:
    import json

    path = cfg.models_dir / model / fold / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: a refit of '{model}' takes its length from every fold "
                                "run; train the model first (`hms run --stage models`)")  # fmt: skip
    return json.loads(path.read_text())


def _torch_fold_counts(cfg: PlatformConfig, model: str, fold: str) -> tuple[list[int], float]:
    """(epochs of each stage up to and including the fold's best epoch, the fold's planned warm-up in epochs)."""
    from hms_core.training.checkpoint import LAST, load_checkpoint
    from hms_core.training.fold import load_fold_data
    from hms_core.training.torch_trainer import plan_fold_schedule

    job = fold_job(cfg, model, fold)
    data, plan = plan_fold_schedule(load_fold_data(job.train_dirs, job.val_dir, None, job.training), job.training)
    path = job.out_dir / "checkpoints" / LAST
    ck = load_checkpoint(path)
    if ck is None or "state" not in ck:
        raise FileNotFoundError(f"{path} does not exist: a refit of '{model}' reads each fold run's epoch "
                                "history from it; re-train the fold (`hms run --stage models`)")  # fmt: skip
    state = ck["state"]
    best = int(state["best_epoch"])
    if best < 0 or not state["history"]:
        raise ValueError(f"{path}: the fold run recorded no best epoch (best_epoch {best}); re-train the fold")
    return stage_counts(state["history"], best, len(data.stages)), float(plan.warmup_epochs)


def stage_counts(history: Sequence[dict[str, Any]], best_epoch: int, n_stages: int) -> list[int]:
    """Epochs a fold ran in each of its ``n_stages`` stages up to and including ``best_epoch``, from its epoch
    history (records with ``epoch`` and 1-based ``stage``; a stage that early-stopped jumps to the next one's
    first epoch, so epoch numbers may have gaps)."""
    counts = [0] * n_stages
    for rec in history:
        if int(rec["epoch"]) <= best_epoch:
            counts[int(rec["stage"]) - 1] += 1
    return counts


def plan_refit(cfg: PlatformConfig, model: str) -> RefitPlan:
    """The length of a refit of ``model`` from its fold runs (see the module docstring)."""
    framework = check_option("framework", get_spec(model).framework, FRAMEWORKS)
    folds = cfg.fold_names
    if framework == "lightgbm":
        counts = {}
        for f in folds:
            best = int(_fold_metrics(cfg, model, f)["best_epoch"])
            if best < 1:
                raise ValueError(f"{cfg.models_dir / model / f / 'metrics.json'}: best_epoch {best} is not a "
                                 "number of boosting rounds (>= 1); re-train the fold")  # fmt: skip
            counts[f] = [best]
        rounds = _median_count([c[0] for c in counts.values()])
        return RefitPlan(model, framework, counts, (rounds,), None,
                         "boosting rounds: median over the folds of each fold's best iteration (rounded half up); "
                         "every round kept")  # fmt: skip
    per_fold = {f: _torch_fold_counts(cfg, model, f) for f in folds}
    n_stages = len(next(iter(per_fold.values()))[0])
    stages = [_median_count([c[i] for c, _ in per_fold.values()]) for i in range(n_stages)]
    stages[0] = max(stages[0], 1)
    while len(stages) > 1 and stages[-1] == 0:  # a later stage no fold's best epoch reached: not trained
        stages.pop()
    return RefitPlan(model, framework, {f: c for f, (c, _) in per_fold.items()}, tuple(stages),
                     float(np.median([w for _, w in per_fold.values()])),
                     "epochs per stage: median over the folds of the epochs each fold ran up to and including "
                     "its best epoch (rounded half up); warm-up as the folds'; cosine over the refit's epochs; the "
                     "last epoch's weights are the model")  # fmt: skip


def refit_training(cfg: TrainingConfig, plan: RefitPlan) -> TrainingConfig:
    """The training config of the refit: the folds' with the planned epochs (torch), not stretched again."""
    if plan.framework != "pytorch":
        return cfg
    update = {"epochs": plan.stage_epochs[0], "stage2_epochs": plan.stage_epochs[1] if len(plan.stage_epochs) > 1
              else 0, "warmup_epochs": plan.warmup_epochs, "min_steps": 0}  # fmt: skip
    return TrainingConfig.model_validate({**cfg.model_dump(), **update})


def refit_job(cfg: PlatformConfig, model: str, plan: RefitPlan) -> FoldJob:
    """The refit of ``model``: every fold's partition as training rows, fold 0's as the (in-sample) validation
    partition, the test partition predicted, output ``<root>/models/<model>/refit``, ``early_stopping=False``."""
    windows = cfg.processed_dir / "windows"
    job = make_job(cfg, model, REFIT, train_dirs=[windows / f for f in cfg.fold_names],
                   val_dir=windows / cfg.fold_names[0], test_dir=windows / TEST_PARTITION,
                   out_dir=cfg.models_dir / model / REFIT)  # fmt: skip
    model_cfg = dict(job.model_cfg)
    if plan.framework == "lightgbm":
        model_cfg["n_estimators"] = plan.epochs
    return replace(job, model_cfg=model_cfg, training=refit_training(job.training, plan), early_stopping=False)


@dataclass
class RefitResult:
    plan: RefitPlan
    result: FoldResult
    rows: int  # training rows (every fold's, after training.max_train_rows)
    path: Path  # refit.json


def run_refit(job: FoldJob, plan: RefitPlan, loggers: Sequence[Any] = (), resume: bool = True,
              progress: Callable[[int, int], None] | None = None) -> RefitResult:  # fmt: skip
    """Train the refit ``job`` (:func:`~hms_core.training.job.train_job`) and write ``refit.json`` beside it."""
    from hms_core.partition import load_partition
    from hms_core.training.fold import plan_rows

    res = train_job(job, loggers=loggers, resume=resume, progress=progress)
    rows = len(plan_rows([load_partition(d) for d in job.train_dirs], job.training)[0])
    doc = {**plan.to_dict(), "epochs": plan.epochs, "rows": rows, "train_dirs": [str(d) for d in job.train_dirs],
           "in_sample_partition": str(job.val_dir), "in_sample_val_kl": res.metrics.get("val_kl"),
           "trained_epochs": res.metrics.get("epochs")}  # fmt: skip
    path = write_json(job.out_dir / REFIT_FILE, doc)
    res.paths["refit"] = path
    return RefitResult(plan, res, rows, path)


def read_refit(out_dir: str | Path) -> dict[str, Any]:
    """``refit.json`` of a trained refit folder (:func:`run_refit`)."""
    import json

    path = Path(out_dir) / REFIT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the refit was not trained (the refit_<model> asset, "
                                "`hms run --stage export`)")  # fmt: skip
    return json.loads(path.read_text())
