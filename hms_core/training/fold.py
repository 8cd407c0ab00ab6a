"""One fold in, one fold out: the data a trainer learns from (:class:`FoldData`), what else it is told
(:class:`FitContext`), and what it returns and writes (:class:`FoldResult`, :func:`fold_metrics`,
:func:`write_fold_outputs`).

Partitions are read through :mod:`hms_core.partition` only. The row plan is every training row as a
``(partition, row)`` pair (capped by ``training.max_train_rows``, seeded); the stages split it into the first stage
(all rows, low-vote rows weighted by ``training.low_vote_weight``) and the optional second stage on rows with at
least ``training.min_votes`` votes. Validation metrics on "high-vote" rows use
:data:`hms_core.constants.HIGH_VOTE_THRESHOLD`, the competition's local-validation subset, whatever the training
knobs say.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hms_core.config import TrainingConfig
from hms_core.constants import HIGH_VOTE_THRESHOLD
from hms_core.io import write_parquet
from hms_core.metrics import classification_report, kl_divergence, prior_baseline
from hms_core.models.specs import ModelSpec
from hms_core.partition import Partition, PartitionError, load_partition
from hms_core.training.predict import ID_COLUMNS, prediction_table

log = logging.getLogger(__name__)

__all__ = [
    "FitContext",
    "FoldData",
    "FoldResult",
    "Stage",
    "fold_metrics",
    "load_fold_data",
    "plan_rows",
    "plan_stages",
    "write_fold_outputs",
]

#: Layout fields every partition of a fold must share (the model's input shape depends on them).
_SHARED_LAYOUT = ("context_length", "segment_start", "segment_length", "bipolar", "sfreq")


@dataclass(frozen=True)
class Stage:
    """One training stage: epochs ``first_epoch ... first_epoch + n_epochs - 1`` on ``rows[mask]`` with weights."""

    number: int  # 1-based, as logged
    first_epoch: int
    n_epochs: int
    mask: np.ndarray
    weights: np.ndarray


@dataclass
class FoldData:
    """A fold's partitions and the training plan: what every trainer reads instead of a list of arguments."""

    train: list[Partition]
    val: Partition
    test: Partition | None
    rows: np.ndarray  # (n, 2) int64: (index into ``train``, row)
    votes: np.ndarray  # (n,) total votes of each planned row
    stages: list[Stage]

    @property
    def total_epochs(self) -> int:
        return sum(s.n_epochs for s in self.stages)

    def stage_at(self, epoch: int) -> Stage:
        return max((s for s in self.stages if s.first_epoch <= epoch), key=lambda s: s.first_epoch)

    def next_stage_start(self, epoch: int) -> int | None:
        """First epoch of the stage after the one ``epoch`` belongs to (None in the last stage)."""
        later = [s.first_epoch for s in self.stages if s.first_epoch > epoch]
        return later[0] if later else None

    @property
    def prior(self) -> np.ndarray:
        """Class prior of the training partitions (the baseline every model must beat)."""
        return prior_baseline(np.concatenate([p.targets for p in self.train]), 1)[0]

    @property
    def val_high_votes(self) -> np.ndarray:
        return self.val.total_votes >= HIGH_VOTE_THRESHOLD

    def flat_rows(self) -> np.ndarray:
        """Planned rows as indices into the concatenation of the training partitions."""
        starts = np.concatenate([[0], np.cumsum([len(p) for p in self.train])])
        return starts[self.rows[:, 0]] + self.rows[:, 1]

    @property
    def train_dirs(self) -> list[str]:
        return [str(p.path) for p in self.train]


def plan_rows(parts: Sequence[Partition], cfg: TrainingConfig) -> tuple[np.ndarray, np.ndarray]:
    """All training rows as (partition, row) pairs and their total votes (capped by ``max_train_rows``)."""
    rows = np.concatenate([np.stack([np.full(len(p), i), np.arange(len(p))], 1) for i, p in enumerate(parts)])
    votes = np.concatenate([p.total_votes for p in parts])
    if cfg.max_train_rows is not None and len(rows) > cfg.max_train_rows:
        keep = np.sort(np.random.default_rng([cfg.seed, 1]).choice(len(rows), cfg.max_train_rows, replace=False))
        rows, votes = rows[keep], votes[keep]
    return rows.astype(np.int64), votes


def plan_stages(cfg: TrainingConfig, votes: np.ndarray) -> list[Stage]:
    """Stage 1 on every row (low-vote rows weighted), stage 2 (``stage2_epochs`` > 0) on high-vote rows only."""
    low = votes < cfg.min_votes
    w1 = np.where(low, cfg.low_vote_weight, 1.0).astype(np.float32)
    stages = [Stage(1, 0, cfg.epochs, w1 > 0, w1)]
    if cfg.stage2_epochs > 0:
        high = ~low
        if high.sum() == 0:
            log.warning("stage 2 skipped: no training rows with >= %d votes", cfg.min_votes)
        else:
            stages.append(Stage(2, cfg.epochs, cfg.stage2_epochs, high, np.ones(len(votes), np.float32)))
    return stages


def _check_layouts(parts: Sequence[Partition]) -> None:
    ref = parts[0]
    for p in parts[1:]:
        diff = {k: (getattr(ref.layout, k), getattr(p.layout, k)) for k in _SHARED_LAYOUT
                if getattr(ref.layout, k) != getattr(p.layout, k)}  # fmt: skip
        if diff:
            detail = "; ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items())
            raise PartitionError(f"Partitions '{ref.path}' and '{p.path}' were preprocessed with different layouts "
                                 f"({detail}); rebuild them with one preprocessing config.")  # fmt: skip


def load_fold_data(train_dirs: Sequence[str | os.PathLike[str]], val_dir: str | os.PathLike[str],
                   test_dir: str | os.PathLike[str] | None, cfg: TrainingConfig) -> FoldData:  # fmt: skip
    """Open the fold's partitions (memory-mapped), check they share one layout, and plan rows and stages."""
    if not train_dirs:
        raise ValueError("load_fold_data: 'train_dirs' is empty; pass at least one processed partition folder")
    train = [load_partition(d) for d in train_dirs]
    val = load_partition(val_dir)
    test = load_partition(test_dir) if test_dir is not None else None
    _check_layouts([*train, val, *([test] if test is not None else [])])
    rows, votes = plan_rows(train, cfg)
    return FoldData(train, val, test, rows, votes, plan_stages(cfg, votes))


@dataclass
class FitContext:
    """Everything a trainer needs besides the data: the model, its resolved config, the training config, where to
    write, and the callbacks (loggers are called on rank 0 only)."""

    model_name: str
    spec: ModelSpec
    model_cfg: dict[str, Any]
    cfg: TrainingConfig
    out_dir: Path
    preprocessing: dict[str, Any] | None = None
    loggers: Sequence[Any] = ()
    resume: bool = True
    progress: Callable[[int, int], None] | None = None
    #: False: train the configured schedule to its end (epochs, boosting rounds) without choosing by the validation
    #: rows; a refit on every fold (:mod:`hms_core.training.refit`), whose "validation" rows are training rows
    early_stopping: bool = True

    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.on_epoch_end(int(epoch), {k: v for k, v in metrics.items() if k != "epoch"})


@dataclass
class FoldResult:
    model_name: str
    oof_pred: np.ndarray
    val_index: pd.DataFrame  # the validation rows' ids
    test_pred: np.ndarray | None
    metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)


def fold_metrics(targets: np.ndarray, probs: np.ndarray, votes: np.ndarray, prior: np.ndarray) -> dict[str, float]:
    """KL of the predictions and of the class prior, on all rows and on rows with >= HIGH_VOTE_THRESHOLD votes,
    plus accuracy and per-class AUROC (:func:`hms_core.metrics.classification_report`)."""
    high = votes >= HIGH_VOTE_THRESHOLD
    m = {"val_kl": kl_divergence(targets, probs)}
    m["val_kl_high_votes"] = kl_divergence(targets[high], probs[high]) if high.any() else m["val_kl"]
    m["prior_kl"] = kl_divergence(targets, np.tile(prior, (len(targets), 1)))
    m["prior_kl_high_votes"] = (
        kl_divergence(targets[high], np.tile(prior, (int(high.sum()), 1))) if high.any() else m["prior_kl"]
    )
    m["n_val_high_votes"] = float(high.sum())
    m.update(classification_report(targets, probs))
    return m


def val_ids(val: Partition) -> pd.DataFrame:
    """The id columns of the validation rows (the ``val_index`` of a :class:`FoldResult`)."""
    return val.index[[c for c in ID_COLUMNS if c in val.index.columns]].reset_index(drop=True)


def write_fold_outputs(out_dir: Path, data: FoldData, oof: np.ndarray,
                       test_pred: np.ndarray | None) -> dict[str, Path]:  # fmt: skip
    """``oof.parquet`` (validation rows) and ``test_pred.parquet`` (when there is a test partition)."""
    paths = {"oof": write_parquet(out_dir / "oof.parquet", prediction_table(data.val, oof))}
    if data.test is not None and test_pred is not None:
        paths["test_pred"] = write_parquet(out_dir / "test_pred.parquet", prediction_table(data.test, test_pred))
    return paths
