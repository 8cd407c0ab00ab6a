"""Training engine: ``train_fold`` for one (model, fold), ``fold_job``/``train_job`` from the platform config,
``load_trained`` for inference. No orchestration here.

Modules: ``fold`` (a fold's data and result), ``inputs`` (rows -> model inputs), ``data`` (datasets, samplers),
``engine`` (trainer per framework), ``torch_trainer`` / ``gbm_trainer``, ``job`` (config -> call), ``predict``,
``checkpoint``, ``schedule``, ``augment``, ``distributed`` (process group), ``ddp`` (the torchrun entry point),
``refit`` (one model of a member on every fold, deployed instead of its fold models).
"""

from hms_core.training.engine import train_fold
from hms_core.training.fold import FoldData, FoldResult, load_fold_data
from hms_core.training.job import FoldJob, fold_job, train_job
from hms_core.training.predict import PRED_COLUMNS, TARGET_COLUMNS, TrainedModel, load_trained

__all__ = [
    "PRED_COLUMNS",
    "TARGET_COLUMNS",
    "FoldData",
    "FoldJob",
    "FoldResult",
    "TrainedModel",
    "fold_job",
    "load_fold_data",
    "load_trained",
    "train_fold",
    "train_job",
]
