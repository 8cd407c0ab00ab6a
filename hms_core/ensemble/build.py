"""The ensemble stage's work, end to end, on files: members in, ensemble files out.

:func:`build_ensemble` reads every fold of every member (:func:`~hms_core.ensemble.members.load_members`), runs the
nested CV (:func:`~hms_core.ensemble.nested.nested_cv`: the honest figure), fits the final ensemble on every row
(:func:`~hms_core.ensemble.nested.fit_final`: the one that predicts the test set), scores members and ensemble
(all rows and rows with >= :data:`~hms_core.constants.HIGH_VOTE_THRESHOLD` votes, patient-bootstrap intervals,
per fold, by vote count, calibration before/after) and writes, atomically, into ``<root>/ensemble/``:

``ensemble.json``   the fitted combiner + calibrator (JSON, loadable without pickle: :func:`load_ensemble`),
                    members kept and dropped, the selection path, lineage (member checkpoints, data version)
``weights.json``    each kept member's weight
``oof.parquet``     the nested out-of-fold ensemble predictions (calibrated and not) with ids and targets
``test_pred.parquet`` the test predictions of the final ensemble
``metrics.json``    every member's KL and the ensemble's, the check, calibration, uncertainty, buckets
``review_list.csv`` the windows most worth a second look (:func:`~hms_core.ensemble.uncertainty.review_list`)
``submission.csv``  written by :func:`write_submission_file` (the submission asset)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hms_core.config import PlatformConfig, result_dump
from hms_core.constants import HIGH_VOTE_THRESHOLD
from hms_core.ensemble.calibration import Calibrator, expected_calibration_error
from hms_core.ensemble.combiners import combiner_from_dict
from hms_core.ensemble.members import MemberPredictions, load_members
from hms_core.ensemble.nested import FinalEnsemble, NestedResult, ensemble_predict, fit_final, nested_cv
from hms_core.ensemble.uncertainty import bootstrap_mean, kl_by_vote_bucket, review_list, uncertainty_summary
from hms_core.io import sha256_file, write_json, write_parquet, write_text
from hms_core.metrics import classification_report, kl_divergence_rows
from hms_core.training.predict import PRED_COLUMNS, TARGET_COLUMNS

__all__ = ["EnsembleOutputs", "build_ensemble", "load_ensemble", "write_submission_file"]

ENSEMBLE_FILE = "ensemble.json"
WEIGHTS_FILE = "weights.json"
OOF_FILE = "oof.parquet"
TEST_FILE = "test_pred.parquet"
METRICS_FILE = "metrics.json"
REVIEW_FILE = "review_list.csv"
SUBMISSION_FILE = "submission.csv"
#: Column prefix of the uncalibrated nested predictions in ``oof.parquet``.
RAW_PREFIX = "raw_"


@dataclass
class EnsembleOutputs:
    out_dir: Path
    metrics: dict[str, Any]
    paths: dict[str, Path]
    members: MemberPredictions
    nested: NestedResult
    final: FinalEnsemble


def _score(targets: np.ndarray, probs: np.ndarray, votes: np.ndarray, patients: np.ndarray, folds: np.ndarray,
           n_resamples: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """KL (all rows, high-vote rows) with patient-bootstrap intervals, per-fold KL, accuracy and AUROC."""
    kl = kl_divergence_rows(targets, probs)
    high = votes >= HIGH_VOTE_THRESHOLD
    mean, lo, hi = bootstrap_mean(kl, patients, n_resamples, seed)
    out: dict[str, Any] = {"kl": mean, "kl_low": lo, "kl_high": hi}
    mean, lo, hi = bootstrap_mean(kl[high], patients[high], n_resamples, seed)
    out.update({"kl_high_votes": mean, "kl_high_votes_low": lo, "kl_high_votes_high": hi})
    out["per_fold"] = {f"fold_{int(f)}": float(kl[folds == f].mean()) for f in np.unique(folds)}
    out.update(classification_report(targets, probs))
    return out


def _data_version(cfg: PlatformConfig) -> dict[str, str]:
    out = {}
    for name, path in (("folds", cfg.processed_dir / "folds.parquet"),
                       ("test_manifest", cfg.processed_dir / "windows" / "test" / "manifest.json")):  # fmt: skip
        if path.is_file():
            out[name] = sha256_file(path)[:16]
    return out


def _with_offsets(rows: pd.DataFrame, cfg: PlatformConfig) -> pd.DataFrame:
    """Add ``eeg_label_offset_seconds`` from the folds table (the prediction tables carry ids only)."""
    path = cfg.processed_dir / "folds.parquet"
    if "eeg_label_offset_seconds" in rows.columns or not path.is_file() or "label_id" not in rows.columns:
        return rows
    folds = pd.read_parquet(path, columns=["label_id", "eeg_label_offset_seconds"])
    return rows.merge(folds, on="label_id", how="left")


def build_ensemble(cfg: PlatformConfig, progress: Any = None, out_dir: Path | None = None) -> EnsembleOutputs:
    """Everything of the module docstring; returns the figures and paths (the asset records them). ``out_dir``
    (default ``<root>/ensemble``) is where the files go."""
    e = cfg.ensemble
    names = cfg.ensemble_members()
    mp = load_members(cfg.models_dir, names, cfg.dataset.n_folds)
    y, votes, patients, folds = mp.targets, mp.votes, mp.patients, mp.folds
    kinds = list(e.combiners)
    if progress:
        progress(0, 3)
    nested = nested_cv(mp.oof, y, folds, names, kinds, e.min_member_gain, e.stacking_l2, e.calibration)
    if progress:
        progress(1, 3)
    final = fit_final(mp.oof, y, folds, names, kinds, e.min_member_gain, e.stacking_l2, e.calibration)
    if progress:
        progress(2, 3)
    ens = nested.calibrated if nested.calibrated is not None else nested.pred
    b, seed = e.bootstrap_resamples, e.seed

    members = {n: _score(y, mp.member(n), votes, patients, folds, b, seed) for n in names}
    best = min(names, key=lambda n: members[n]["kl"])
    ensemble = _score(y, ens, votes, patients, folds, b, seed)
    ensemble["uncalibrated_kl"] = float(kl_divergence_rows(y, nested.pred).mean())
    combiners = {k: float(kl_divergence_rows(y, v).mean()) for k, v in nested.per_kind.items()}
    best_kl, ens_kl = members[best]["kl"], ensemble["kl"]
    metrics: dict[str, Any] = {
        "members": members,
        "ensemble": ensemble,
        "nested_kl_by_combiner": combiners,
        "best_member": best,
        "best_member_kl": best_kl,
        "ensemble_kl": ens_kl,
        "ensemble_kl_high_votes": ensemble["kl_high_votes"],
        "gain_vs_best": float((best_kl - ens_kl) / best_kl),
        "check_not_worse_than_best": bool(ens_kl <= best_kl),
        "chosen_combiner": final.selection.kind,
        "kept_members": final.combiner.members,
        "dropped_members": [n for n in names if n not in final.combiner.members],
        "selection_cv_kl": final.selection.cv_kl,
        "outer_folds": [
            {
                "fold": o.fold,
                "chosen": o.chosen,
                "members": o.members,
                "inner_kl": o.inner_kl,
                "outer_kl": o.outer_kl,
                "temperature": o.temperature,
                "n_fit_rows": len(o.fit_rows),
                "n_scored_rows": len(o.scored_rows),
            }
            for o in nested.outer
        ],
        "calibration": {
            "enabled": e.calibration,
            "kl_before": float(kl_divergence_rows(y, nested.pred).mean()),
            "kl_after": float(kl_divergence_rows(y, ens).mean()),
            "ece_before": expected_calibration_error(nested.pred, y),
            "ece_after": expected_calibration_error(ens, y),
            "final_temperature": final.calibrator.temperature if final.calibrator else None,
            "applied_final": final.calibrator is not None,
            "applied_outer_folds": [o.fold for o in nested.outer if o.temperature is not None],
        },
        "uncertainty": uncertainty_summary(y, ens),
        "kl_by_votes": kl_by_vote_bucket(y, ens, votes, patients, b, seed).to_dict(orient="records"),
        "kl_by_votes_members": {
            n: kl_by_vote_bucket(y, mp.member(n), votes, patients, b, seed).to_dict(orient="records")
            for n in names
        },
        "n_rows": len(y),
        "n_rows_high_votes": int((votes >= HIGH_VOTE_THRESHOLD).sum()),
        "n_patients": len(np.unique(patients)),
    }
    out_dir = cfg.ensemble_dir if out_dir is None else Path(out_dir)
    paths = _write_outputs(cfg, out_dir, mp, nested, final, ens, metrics)
    if progress:
        progress(3, 3)
    return EnsembleOutputs(out_dir, metrics, paths, mp, nested, final)


def _write_outputs(cfg: PlatformConfig, out_dir: Path, mp: MemberPredictions, nested: NestedResult,
                   final: FinalEnsemble, ens: np.ndarray, metrics: dict[str, Any]) -> dict[str, Path]:  # fmt: skip
    paths: dict[str, Path] = {}
    rows = _with_offsets(mp.rows, cfg)
    oof = rows.copy()
    for k, c in enumerate(PRED_COLUMNS):
        oof[c] = ens[:, k]
    for k, c in enumerate(PRED_COLUMNS):
        oof[RAW_PREFIX + c] = nested.pred[:, k]
    for k, c in enumerate(TARGET_COLUMNS):
        oof[c] = mp.targets[:, k]
    paths["oof"] = write_parquet(out_dir / OOF_FILE, oof)
    if mp.test is not None and mp.test_rows is not None:
        test = final.predict(dict(zip(mp.names, mp.test)))
        df = mp.test_rows.copy()
        for k, c in enumerate(PRED_COLUMNS):
            df[c] = test[:, k]
        paths["test_pred"] = write_parquet(out_dir / TEST_FILE, df)
    weights = final.combiner.member_weights()
    paths["weights"] = write_json(out_dir / WEIGHTS_FILE, {"combiner": final.combiner.kind, "weights": weights,
                                                            "dropped": metrics["dropped_members"]})  # fmt: skip
    doc = {
        "combiner": final.combiner.to_dict(),
        "calibrator": final.calibrator.to_dict() if final.calibrator else None,
        "kept_members": final.combiner.members,
        "dropped_members": metrics["dropped_members"],
        "selection": {k: {"members": s.members, "cv_kl": s.cv_kl, "path": s.path} for k, s in final.selections.items()},
        "lineage": {"members": {n: mp.lineage[n] for n in mp.names}, "data_version": _data_version(cfg)},
        "config": result_dump(cfg.ensemble),
        "config_hash": cfg.result_hash("ensemble"),
        "metrics": {k: metrics[k] for k in ("ensemble_kl", "ensemble_kl_high_votes", "best_member",
                                             "best_member_kl", "gain_vs_best", "chosen_combiner")},
    }  # fmt: skip
    paths["ensemble"] = write_json(out_dir / ENSEMBLE_FILE, doc)
    paths["metrics"] = write_json(out_dir / METRICS_FILE, metrics)
    review = review_list(rows, mp.targets, ens, cfg.ensemble.review_list_size)
    paths["review_list"] = write_text(out_dir / REVIEW_FILE, review.to_csv(index=False))
    return paths


@dataclass
class LoadedEnsemble:
    """A saved ensemble: ``predict({member: probs})`` with the fitted combiner and calibrator."""

    combiner: Any
    calibrator: Calibrator | None
    doc: dict[str, Any]

    @property
    def members(self) -> list[str]:
        return list(self.combiner.members)

    def predict(self, member_probs: dict[str, np.ndarray]) -> np.ndarray:
        return ensemble_predict(self.combiner, self.calibrator, member_probs)


def load_ensemble(path: str | os.PathLike[str]) -> LoadedEnsemble:
    """Load ``ensemble.json`` (or the folder holding it): plain JSON, no pickle."""
    p = Path(path)
    p = p / ENSEMBLE_FILE if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist; run `hms run --stage ensemble` first")
    doc = json.loads(p.read_text())
    cal = Calibrator.from_dict(doc["calibrator"]) if doc.get("calibrator") else None
    return LoadedEnsemble(combiner_from_dict(doc["combiner"]), cal, doc)


def write_submission_file(cfg: PlatformConfig) -> tuple[Path, pd.DataFrame]:
    """``<root>/ensemble/submission.csv`` from the ensemble's test predictions and ``sample_submission.csv``."""
    from hms_core.ensemble.submission import SAMPLE_SUBMISSION, build_submission, write_submission

    test_path = cfg.ensemble_dir / TEST_FILE
    if not test_path.is_file():
        raise FileNotFoundError(f"{test_path} does not exist: the ensemble asset writes it when every member has "
                                "test predictions (test_pred.parquet in each fold)")  # fmt: skip
    sample = cfg.raw_dir / SAMPLE_SUBMISSION
    if not sample.is_file():
        raise FileNotFoundError(f"{sample} does not exist: the submission keeps its ids and order (Kaggle layout)")
    test = pd.read_parquet(test_path)
    df = build_submission(test["eeg_id"], test[list(PRED_COLUMNS)].to_numpy(), sample)
    return write_submission(df, cfg.ensemble_dir / SUBMISSION_FILE, sample), df
