"""Competition metric and companion scores.

:func:`kl_divergence` reproduces the Kaggle metric of the HMS competition: both sides are probability rows over
the six classes (vote fractions vs. predictions); the submission is clipped to ``[1e-15, 1 - 1e-15]``; each cell
contributes ``y * log(y / p)`` where ``y > 0``; the row sums are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hms_core.constants import CLASSES, N_CLASSES, VOTE_COLUMNS

EPS = 1e-15


class MetricInputError(ValueError):
    """Metric inputs of the wrong shape, range or normalisation."""


def _as_matrix(x: Any, name: str, columns: Sequence[str] | None) -> np.ndarray:
    if hasattr(x, "columns"):  # pandas / polars frame
        cols = list(x.columns)
        wanted = list(columns) if columns is not None else None
        if wanted is None:
            wanted = [c for c in VOTE_COLUMNS if c in cols] or [c for c in CLASSES if c in cols]
        missing = [c for c in wanted if c not in cols]
        if missing or len(wanted) != N_CLASSES:
            raise MetricInputError(
                f"{name}: expected the six class columns {list(VOTE_COLUMNS)} (or {list(CLASSES)}), "
                f"missing {missing or wanted}"
            )
        arr = np.asarray(x[wanted].to_numpy() if hasattr(x[wanted], "to_numpy") else x[wanted], dtype=np.float64)
    else:
        arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != N_CLASSES:
        raise MetricInputError(f"{name}: expected shape (n_rows, {N_CLASSES}), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.argwhere(~np.isfinite(arr))[0, 0])
        raise MetricInputError(f"{name}: non-finite value in row {bad}")
    return arr


def _check_probabilities(arr: np.ndarray, name: str, atol: float = 1e-6) -> None:
    if arr.min() < 0 or arr.max() > 1:
        row = int(np.argwhere((arr < 0) | (arr > 1))[0, 0])
        raise MetricInputError(f"{name}: values must lie in [0, 1]; row {row} is {arr[row].tolist()}")
    sums = arr.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1) > atol)
    if bad.size:
        raise MetricInputError(
            f"{name}: every row must sum to 1; {bad.size} rows do not, e.g. row {int(bad[0])} sums to {sums[bad[0]]:.6f}"
        )


def votes_to_probabilities(votes: Any) -> np.ndarray:
    """Vote counts (n, 6) -> vote fractions. Rows with no votes raise."""
    v = _as_matrix(votes, "votes", VOTE_COLUMNS if hasattr(votes, "columns") else None)
    s = v.sum(axis=1, keepdims=True)
    if np.any(s <= 0):
        raise MetricInputError(f"votes: row {int(np.flatnonzero(s[:, 0] <= 0)[0])} has no votes")
    return v / s


def kl_divergence_rows(solution: Any, submission: Any, columns: Sequence[str] | None = None) -> np.ndarray:
    """Per-row KL(solution || submission) with the competition's clipping; shape (n_rows,)."""
    y = _as_matrix(solution, "solution", columns)
    p = _as_matrix(submission, "submission", columns)
    if y.shape != p.shape:
        raise MetricInputError(f"solution has shape {y.shape} but submission has {p.shape}")
    _check_probabilities(y, "solution")
    _check_probabilities(p, "submission")
    p = np.clip(p, EPS, 1 - EPS)
    with np.errstate(divide="ignore", invalid="ignore"):
        cell = np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0) / p), 0.0)
    return cell.sum(axis=1)


def kl_divergence(solution: Any, submission: Any, columns: Sequence[str] | None = None) -> float:
    """The competition metric: mean over rows of KL(solution || submission). Lower is better.

    Accepts (n, 6) arrays or data frames with the six ``*_vote`` (or class-name) columns.
    """
    return float(kl_divergence_rows(solution, submission, columns).mean())


def prior_baseline(train_targets: np.ndarray, n_rows: int) -> np.ndarray:
    """Predict the mean training distribution for every row (the class-prior baseline)."""
    prior = np.asarray(train_targets, dtype=np.float64).mean(axis=0)
    return np.tile(prior / prior.sum(), (n_rows, 1))


def classification_report(targets: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy against the vote argmax (expert consensus) and one-vs-rest AUROC per class."""
    from sklearn.metrics import roc_auc_score

    targets = np.asarray(targets, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    y = targets.argmax(axis=1)
    out: dict[str, float] = {"accuracy": float((probs.argmax(axis=1) == y).mean())}
    for k, cls in enumerate(CLASSES):
        pos = y == k
        out[f"auroc_{cls}"] = float(roc_auc_score(pos, probs[:, k])) if 0 < pos.sum() < len(y) else float("nan")
    return out
