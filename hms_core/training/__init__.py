"""Training engine: ``train_fold`` for one (model, fold), ``load_trained`` for inference. No orchestration here."""

from hms_core.training.engine import FoldResult, train_fold
from hms_core.training.predict import PRED_COLUMNS, TARGET_COLUMNS, TrainedModel, load_trained

__all__ = ["PRED_COLUMNS", "TARGET_COLUMNS", "FoldResult", "TrainedModel", "load_trained", "train_fold"]
