"""Constructed member predictions in the exact on-disk layout of trained models, for tests and benchmarks.

Each row has true logits ``z``; its votes are drawn from ``softmax(z)`` (1 to 25 raters); member ``m`` predicts
``softmax(scale_m * z + noise_m)``, so members differ in skill and their errors are partly independent (an
ensemble can beat the best of them). :func:`write_member_outputs` writes, for every member and fold,
``oof.parquet``, ``test_pred.parquet``, ``metrics.json`` and ``final/{config.json, weights}`` as the trainers do,
plus the ``folds.parquet`` and ``sample_submission.csv`` the ensemble stage reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import softmax

from hms_core.constants import N_CLASSES, VOTE_COLUMNS
from hms_core.io import write_json, write_parquet, write_text
from hms_core.training.predict import PRED_COLUMNS, TARGET_COLUMNS

__all__ = ["constructed_members", "write_member_outputs"]


def constructed_members(n_rows: int, scales: Sequence[float], noises: Sequence[float], n_folds: int = 5,
                        seed: int = 0, n_patients: int | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Arrays: ``z`` (n, 6), ``votes`` (n, 6), ``targets``, ``patient`` (n,), ``fold`` (n,; by patient) and
    ``members`` (M, n, 6)."""
    rng = np.random.default_rng(seed)
    n_patients = n_patients or max(n_folds * 4, n_rows // 8)
    z = rng.normal(0.0, 2.0, (n_rows, N_CLASSES))
    n_votes = rng.integers(1, 26, n_rows)
    votes = np.stack([rng.multinomial(k, p) for k, p in zip(n_votes, softmax(z, axis=1))])
    patient = rng.integers(0, n_patients, n_rows)
    fold_of_patient = rng.permutation(np.arange(n_patients) % n_folds)
    members = np.stack([softmax(s * z + rng.normal(0.0, e, z.shape), axis=1) for s, e in zip(scales, noises)])
    return {"z": z, "votes": votes.astype(np.float64), "targets": votes / votes.sum(1, keepdims=True),
            "patient": patient, "fold": fold_of_patient[patient], "members": members}  # fmt: skip


def write_member_outputs(root: str | os.PathLike[str], names: Sequence[str], n_rows: int = 400, n_folds: int = 3,
                         scales: Sequence[float] | None = None, noises: Sequence[float] | None = None,
                         n_test: int = 5, seed: int = 0) -> dict[str, np.ndarray]:  # fmt: skip
    """Write member outputs under ``root/models``, ``root/data/processed/folds.parquet`` and
    ``root/data/raw/sample_submission.csv`` (a workspace root); returns :func:`constructed_members`' arrays."""
    root = Path(root)
    m = len(names)
    scales = list(scales) if scales is not None else [0.8 - 0.1 * i for i in range(m)]
    noises = list(noises) if noises is not None else [1.0 + 0.3 * i for i in range(m)]
    data = constructed_members(n_rows, scales, noises, n_folds, seed)
    rng = np.random.default_rng(seed + 1)
    ids = pd.DataFrame({
        "eeg_id": 1000 + np.arange(n_rows), "eeg_sub_id": 0, "label_id": 5000 + np.arange(n_rows),
        "spectrogram_id": 7000 + np.arange(n_rows), "patient_id": 100 + data["patient"],
        "total_votes": data["votes"].sum(1).astype(np.int64),
    })  # fmt: skip
    test_ids = 90_000 + np.arange(n_test)
    test_z = rng.normal(0.0, 2.0, (n_test, N_CLASSES))
    for j, name in enumerate(names):
        for k in range(n_folds):
            d = root / "models" / name / f"fold_{k}"
            rows = data["fold"] == k
            df = ids[rows].reset_index(drop=True)
            for c, col in enumerate(PRED_COLUMNS):
                df[col] = data["members"][j, rows, c]
            for c, col in enumerate(TARGET_COLUMNS):
                df[col] = data["targets"][rows, c]
            write_parquet(d / "oof.parquet", df)
            tp = softmax(scales[j] * test_z + rng.normal(0.0, noises[j], test_z.shape), axis=1)
            test = pd.DataFrame({"eeg_id": test_ids, "patient_id": 0, "total_votes": 0})
            for c, col in enumerate(PRED_COLUMNS):
                test[col] = tp[:, c]
            write_parquet(d / "test_pred.parquet", test)
            write_json(d / "metrics.json", {"val_kl": 0.0})
            write_text(d / "final" / "weights.bin", f"{name} fold {k}")
            write_text(d / "final" / "config.json", json.dumps({"weights_file": "weights.bin"}))
    folds = ids.assign(eeg_label_offset_seconds=2.0 * np.arange(n_rows), fold=data["fold"])
    for c, col in enumerate(VOTE_COLUMNS):
        folds[col] = data["votes"][:, c]
    write_parquet(root / "data" / "processed" / "folds.parquet", folds)
    sample = pd.DataFrame({"eeg_id": test_ids[::-1], **{c: 1.0 / N_CLASSES for c in VOTE_COLUMNS}})
    write_text(root / "data" / "raw" / "sample_submission.csv", sample.to_csv(index=False))
    return data
