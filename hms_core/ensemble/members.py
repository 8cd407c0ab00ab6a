"""Read the ensemble members: every fold's out-of-fold and test predictions of every classifier to combine.

A trained (model, fold) leaves ``<models>/<name>/fold_k/{oof.parquet, test_pred.parquet, metrics.json, final/}``
(:mod:`hms_core.training.fold`). :func:`load_members` stacks the out-of-fold rows of all folds, aligns the members
row by row (``label_id``, else ``eeg_id`` + ``eeg_sub_id``), checks that they agree on the targets, averages each
member's test predictions over its fold models, and records the lineage: each fold model's final config and the
SHA-256 of its weights file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hms_core.io import sha256_file
from hms_core.training.predict import PRED_COLUMNS, TARGET_COLUMNS

__all__ = ["MemberError", "MemberPredictions", "load_members"]

OOF_FILE = "oof.parquet"
TEST_FILE = "test_pred.parquet"
METRICS_FILE = "metrics.json"
ID_KEYS = ("label_id",)
FALLBACK_KEYS = ("eeg_id", "eeg_sub_id")


class MemberError(ValueError):
    """A member's prediction files are missing or do not line up with the other members'."""


@dataclass
class MemberPredictions:
    names: list[str]
    rows: pd.DataFrame  # one per out-of-fold row: ids, total_votes, fold
    oof: np.ndarray  # (n_members, n_rows, 6)
    targets: np.ndarray  # (n_rows, 6) vote fractions
    folds: np.ndarray  # (n_rows,) the fold each row was held out in
    test_rows: pd.DataFrame | None = None  # eeg_id (+ ids) per test row
    test: np.ndarray | None = None  # (n_members, n_test, 6): each member's mean over its fold models
    fold_metrics: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # name -> fold -> metrics
    lineage: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # name -> per fold checkpoint info

    @property
    def votes(self) -> np.ndarray:
        return self.rows["total_votes"].to_numpy()

    @property
    def patients(self) -> np.ndarray:
        return self.rows["patient_id"].to_numpy()

    def member(self, name: str) -> np.ndarray:
        return self.oof[self.names.index(name)]


def _key_columns(df: pd.DataFrame) -> list[str]:
    if all(c in df.columns for c in ID_KEYS) and df[list(ID_KEYS)].notna().all().all():
        return list(ID_KEYS)
    return list(FALLBACK_KEYS)


def _fold_dir(models_dir: Path, name: str, fold: int) -> Path:
    return models_dir / name / f"fold_{fold}"


def _read(path: Path, name: str, fold: int) -> pd.DataFrame:
    if not path.is_file():
        raise MemberError(
            f"{path} does not exist: the '{name}' model has no {path.name} for fold_{fold}. Train it first "
            f"(`hms run --stage models`), or leave '{name}' out with ensemble.members."
        )
    df = pd.read_parquet(path)
    missing = [c for c in PRED_COLUMNS if c not in df.columns]
    if missing:
        raise MemberError(f"{path}: columns {missing} are missing (expected {list(PRED_COLUMNS)})")
    return df


def _lineage(fold_dir: Path) -> dict[str, Any]:
    final = fold_dir / "final"
    info: dict[str, Any] = {"dir": str(fold_dir)}
    cfg_path = final / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        weights = final / str(cfg.get("weights_file", ""))
        info["config"] = str(cfg_path)
        if cfg.get("weights_file") and weights.is_file():
            info["weights"] = str(weights)
            info["weights_sha256"] = sha256_file(weights)
    return info


def load_members(models_dir: str | os.PathLike[str], names: list[str], n_folds: int) -> MemberPredictions:
    """Every fold of every member in ``names`` (see the module docstring). Raises :class:`MemberError`."""
    if not names:
        raise MemberError("no ensemble members: enable at least one model (models.<name>.enabled)")
    models_dir = Path(models_dir)
    frames, tests, metrics, lineage = {}, {}, {}, {}
    for name in names:
        parts, test_parts = [], []
        metrics[name], lineage[name] = {}, []
        for k in range(n_folds):
            d = _fold_dir(models_dir, name, k)
            df = _read(d / OOF_FILE, name, k)
            df["fold"] = k
            parts.append(df)
            if (d / TEST_FILE).is_file():
                test_parts.append(_read(d / TEST_FILE, name, k))
            if (d / METRICS_FILE).is_file():
                metrics[name][f"fold_{k}"] = json.loads((d / METRICS_FILE).read_text())
            lineage[name].append(_lineage(d))
        frames[name] = pd.concat(parts, ignore_index=True)
        if len(test_parts) == n_folds:
            tests[name] = test_parts
    ref_name = names[0]
    ref = frames[ref_name]
    keys = _key_columns(ref)
    if ref.duplicated(keys).any():
        raise MemberError(f"'{ref_name}': out-of-fold rows repeat the key {keys} (a row predicted in two folds)")
    ref = ref.sort_values(keys, kind="stable").reset_index(drop=True)
    if not all(c in ref.columns for c in TARGET_COLUMNS):
        raise MemberError(f"'{ref_name}' out-of-fold rows lack the target columns {list(TARGET_COLUMNS)}")
    targets = ref[list(TARGET_COLUMNS)].to_numpy(np.float64)
    oof = []
    for name in names:
        df = frames[name].set_index(keys)
        idx = pd.MultiIndex.from_frame(ref[keys]) if len(keys) > 1 else pd.Index(ref[keys[0]])
        missing = idx.difference(df.index)
        if len(missing) or len(df) != len(ref):
            raise MemberError(
                f"'{name}' and '{ref_name}' predict different out-of-fold rows ({len(df)} vs {len(ref)}, "
                f"{len(missing)} of '{ref_name}' missing, e.g. {list(missing[:3])}); train both on the same folds"
            )
        df = df.loc[idx]
        if not np.array_equal(df["fold"].to_numpy(), ref["fold"].to_numpy()):
            raise MemberError(
                f"'{name}' holds some rows out in another fold than '{ref_name}'; retrain on one folds table"
            )
        oof.append(df[list(PRED_COLUMNS)].to_numpy(np.float64))
    out = MemberPredictions(list(names), ref.drop(columns=[*PRED_COLUMNS, *TARGET_COLUMNS]), np.stack(oof),
                            targets, ref["fold"].to_numpy(), fold_metrics=metrics, lineage=lineage)  # fmt: skip
    if len(tests) == len(names):
        out.test_rows, out.test = _test_predictions(tests, names)
    return out


def _test_predictions(tests: dict[str, list[pd.DataFrame]], names: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Each member's test probabilities averaged over its fold models, aligned on ``eeg_id``."""
    ref = tests[names[0]][0][["eeg_id"]].sort_values("eeg_id").reset_index(drop=True)
    out = []
    for name in names:
        acc = []
        for k, df in enumerate(tests[name]):
            df = df.set_index("eeg_id")
            if df.index.duplicated().any() or set(df.index) != set(ref["eeg_id"]):
                raise MemberError(
                    f"'{name}' fold_{k} test predictions cover other eeg_ids than '{names[0]}' fold_0"
                )
            acc.append(df.loc[ref["eeg_id"], list(PRED_COLUMNS)].to_numpy(np.float64))
        mean = np.mean(acc, axis=0)
        out.append(mean / mean.sum(axis=1, keepdims=True))
    return ref, np.stack(out)
