"""Patient-grouped, class-stratified cross-validation folds.

Folds come from scikit-learn's ``StratifiedGroupKFold`` on ``expert_consensus`` grouped by ``patient_id``, so no
patient's recordings appear in two folds (the leak that makes local CV optimistic). The result has one row per
``eeg_id``; :func:`fold_class_balance` and :func:`check_folds` give the tables and flags the asset checks report.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import polars as pl

from hms_core.constants import CLASSES

FOLD_COLUMNS: tuple[str, ...] = ("eeg_id", "patient_id", "fold")


def _require(df: pl.DataFrame, cols: tuple[str, ...], name: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: missing columns {missing}; expected at least {list(cols)}, got {df.columns}")


def make_folds(labels: pl.DataFrame, n_folds: int = 5, seed: int = 42) -> pl.DataFrame:
    """Assign every ``eeg_id`` of ``labels`` to one of ``n_folds`` folds, grouped by patient.

    ``labels`` needs ``eeg_id``, ``patient_id`` and ``expert_consensus`` (one or more rows per EEG; every row
    counts for stratification). Deterministic for a given input set and ``seed``. Returns ``eeg_id, patient_id,
    fold`` sorted by ``eeg_id``.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    _require(labels, ("eeg_id", "patient_id", "expert_consensus"), "make_folds")
    if not isinstance(n_folds, int | np.integer) or n_folds < 2:
        raise ValueError(
            f"Invalid value for the 'n_folds' parameter. Expected an integer >= 2, but got {n_folds!r} instead."
        )
    keys = ["eeg_id", "patient_id", "expert_consensus"]
    df = labels.select(keys).sort(keys)
    n_patients = df["patient_id"].n_unique()
    if n_patients < n_folds:
        raise ValueError(
            f"Invalid value for the 'n_folds' parameter. Expected at most the number of patients ({n_patients}), "
            f"but got {n_folds} instead."
        )
    eeg_patients = df.group_by("eeg_id").agg(pl.col("patient_id").n_unique().alias("n")).filter(pl.col("n") > 1)
    if eeg_patients.height:
        raise ValueError(f"make_folds: eeg_id {eeg_patients['eeg_id'][0]} belongs to several patients")
    y = df["expert_consensus"].to_numpy()
    groups = df["patient_id"].to_numpy()
    fold = np.full(df.height, -1, dtype=np.int64)
    skf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "least populated class has only k members": expected for rare classes
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for k, (_, val) in enumerate(skf.split(np.zeros(df.height), y, groups)):
            fold[val] = k
    out = (
        df.with_columns(pl.Series("fold", fold))
        .group_by("eeg_id")
        .agg(pl.col("patient_id").first(), pl.col("fold").unique())
    )
    if (out["fold"].list.len() > 1).any():  # impossible when grouping works; the guard documents the contract
        raise AssertionError("make_folds: an eeg_id was split across folds")
    out = out.with_columns(pl.col("fold").list.first().cast(pl.Int64)).select(FOLD_COLUMNS).sort("eeg_id")
    leaks = out.group_by("patient_id").agg(pl.col("fold").n_unique().alias("n")).filter(pl.col("n") > 1)
    assert leaks.height == 0, f"make_folds: patients in several folds: {leaks['patient_id'].to_list()[:10]}"
    return out


def fold_class_balance(labels: pl.DataFrame, folds: pl.DataFrame) -> pl.DataFrame:
    """Per fold: patients, EEGs, label rows, and the class fractions of ``expert_consensus`` (plus an ``all`` row).

    Columns: ``fold`` (string; ``"all"`` for the total), ``n_patients, n_eegs, n_rows``, then one fraction column
    per class in :data:`~hms_core.constants.CLASSES` order.
    """
    _require(labels, ("eeg_id", "expert_consensus"), "fold_class_balance(labels)")
    _require(folds, FOLD_COLUMNS, "fold_class_balance(folds)")
    df = labels.select("eeg_id", "expert_consensus").join(folds, on="eeg_id", how="inner")

    def summarize(d: pl.DataFrame, by: list[str]) -> pl.DataFrame:
        aggs = [
            pl.col("patient_id").n_unique().alias("n_patients"),
            pl.col("eeg_id").n_unique().alias("n_eegs"),
            pl.len().alias("n_rows"),
            *[(pl.col("expert_consensus") == c).mean().alias(c) for c in CLASSES],
        ]
        return d.group_by(by).agg(aggs) if by else d.select(aggs)

    per_fold = summarize(df, ["fold"]).sort("fold").with_columns(pl.col("fold").cast(pl.String))
    total = summarize(df, []).with_columns(pl.lit("all").alias("fold"))
    cols = ["fold", "n_patients", "n_eegs", "n_rows", *CLASSES]
    return pl.concat([per_fold.select(cols), total.select(cols)], how="vertical_relaxed")


def check_folds(
    folds: pl.DataFrame,
    labels: pl.DataFrame | None = None,
    n_folds: int | None = None,
    max_class_deviation: float = 0.15,
) -> dict[str, Any]:
    """Blocking and advisory checks of a fold table.

    Returns ``{"passed": bool, "checks": {name: {"passed", "blocking", "details"}}}``; ``passed`` is the AND of
    the blocking checks: ``no_patient_overlap``, ``unique_eeg_ids``, ``all_folds_present`` (when ``n_folds`` is
    given) and ``all_labels_assigned`` (when ``labels`` is given). ``class_balance`` (max absolute deviation of a
    fold's class fraction from the overall fraction <= ``max_class_deviation``) is advisory.
    """
    _require(folds, FOLD_COLUMNS, "check_folds")
    checks: dict[str, dict[str, Any]] = {}

    per_patient = folds.group_by("patient_id").agg(pl.col("fold").unique().sort().alias("folds"))
    leaked = per_patient.filter(pl.col("folds").list.len() > 1).sort("patient_id")
    checks["no_patient_overlap"] = {
        "passed": leaked.height == 0,
        "blocking": True,
        "details": {
            "n_patients": per_patient.height,
            "n_leaked_patients": leaked.height,
            "examples": dict(zip(map(str, leaked["patient_id"].to_list()[:10]), leaked["folds"].to_list()[:10])),
        },
    }
    dup = folds.filter(pl.col("eeg_id").is_duplicated())["eeg_id"].unique().sort()
    checks["unique_eeg_ids"] = {
        "passed": dup.len() == 0,
        "blocking": True,
        "details": {"n_eegs": folds["eeg_id"].n_unique(), "duplicated": dup.to_list()[:10]},
    }
    sizes = dict(folds.group_by("fold").len().sort("fold").iter_rows())
    if n_folds is not None:
        absent = [k for k in range(n_folds) if sizes.get(k, 0) == 0]
        unexpected = [k for k in sizes if not 0 <= k < n_folds]
        checks["all_folds_present"] = {
            "passed": not absent and not unexpected,
            "blocking": True,
            "details": {
                "eegs_per_fold": {str(k): v for k, v in sizes.items()},
                "empty": absent,
                "unexpected": unexpected,
            },
        }
    if labels is not None:
        _require(labels, ("eeg_id", "expert_consensus"), "check_folds(labels)")
        unassigned = labels.select("eeg_id").unique().join(folds, on="eeg_id", how="anti")["eeg_id"].sort()
        checks["all_labels_assigned"] = {
            "passed": unassigned.len() == 0,
            "blocking": True,
            "details": {"n_unassigned": unassigned.len(), "examples": unassigned.to_list()[:10]},
        }
        bal = fold_class_balance(labels, folds)
        overall = bal.filter(pl.col("fold") == "all").select(CLASSES).row(0)
        per = bal.filter(pl.col("fold") != "all")
        dev = np.abs(per.select(CLASSES).to_numpy() - np.asarray(overall)[None, :])
        worst = float(dev.max()) if dev.size else 0.0
        where = np.unravel_index(int(dev.argmax()), dev.shape) if dev.size else None
        worst_at = None if where is None else {"fold": per["fold"][int(where[0])], "class": CLASSES[where[1]]}
        checks["class_balance"] = {
            "passed": worst <= max_class_deviation,
            "blocking": False,
            "details": {
                "max_abs_deviation": round(worst, 4),
                "threshold": max_class_deviation,
                "worst": worst_at,
            },
        }
    return {"passed": all(c["passed"] for c in checks.values() if c["blocking"]), "checks": checks}
