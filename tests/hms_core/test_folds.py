"""Patient-grouped stratified folds: no patient in two folds, every EEG assigned, balanced classes, checks fire."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from hms_core.constants import CLASSES
from hms_core.folds import check_folds, fold_class_balance, make_folds


def _labels(n_eegs: int = 600, n_patients: int = 80, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    eeg = np.arange(n_eegs) + 1000
    patient = rng.integers(0, n_patients, n_eegs)
    cls = rng.choice(CLASSES, n_eegs, p=[0.2, 0.15, 0.15, 0.1, 0.1, 0.3])
    df = pl.DataFrame({"eeg_id": eeg, "patient_id": patient, "expert_consensus": cls})
    # some EEGs have a second (eeg_id, votes) row with another consensus, as after deduplication
    extra = df.head(50).with_columns(pl.lit("Other").alias("expert_consensus"))
    return pl.concat([df, extra])


def test_folds_group_patients_and_cover_all_eegs() -> None:
    labels = _labels()
    folds = make_folds(labels, n_folds=5, seed=42)
    assert folds.columns == ["eeg_id", "patient_id", "fold"]
    assert folds.height == labels["eeg_id"].n_unique() and folds["eeg_id"].is_unique().all()
    assert sorted(folds["fold"].unique().to_list()) == [0, 1, 2, 3, 4]
    per_patient = folds.group_by("patient_id").agg(pl.col("fold").n_unique())
    assert per_patient["fold"].max() == 1
    result = check_folds(folds, labels, n_folds=5)
    assert result["passed"] and all(c["passed"] for c in result["checks"].values()), result
    assert result["checks"]["class_balance"]["details"]["max_abs_deviation"] < 0.1


def test_folds_deterministic_and_seed_dependent() -> None:
    labels = _labels()
    a = make_folds(labels, 5, seed=1)
    b = make_folds(labels.sample(fraction=1.0, shuffle=True, seed=3), 5, seed=1)
    assert a.equals(b)
    c = make_folds(labels, 5, seed=2)
    assert not a["fold"].equals(c["fold"])


def test_class_balance_table() -> None:
    labels = _labels()
    folds = make_folds(labels, 4, seed=0)
    bal = fold_class_balance(labels, folds)
    assert bal["fold"].to_list() == ["0", "1", "2", "3", "all"]
    assert bal.columns == ["fold", "n_patients", "n_eegs", "n_rows", *CLASSES]
    total = bal.filter(pl.col("fold") == "all")
    assert total["n_rows"][0] == labels.height and total["n_eegs"][0] == labels["eeg_id"].n_unique()
    per = bal.filter(pl.col("fold") != "all")
    assert per["n_rows"].sum() == labels.height and per["n_patients"].sum() == labels["patient_id"].n_unique()
    np.testing.assert_allclose(bal.select(CLASSES).sum_horizontal().to_numpy(), 1.0)
    expected_seizure = (labels["expert_consensus"] == "Seizure").mean()
    assert total["Seizure"][0] == pytest.approx(expected_seizure)


def test_check_folds_detects_leaks_and_gaps() -> None:
    labels = _labels()
    folds = make_folds(labels, 5, seed=0)
    # move one EEG of a multi-EEG patient to another fold: patient leak
    counts = folds.group_by("patient_id").len().filter(pl.col("len") > 1)
    pid = counts["patient_id"][0]
    victim = folds.filter(pl.col("patient_id") == pid)["eeg_id"][0]
    leaked = folds.with_columns(
        pl.when(pl.col("eeg_id") == victim).then((pl.col("fold") + 1) % 5).otherwise(pl.col("fold")).alias("fold")
    )
    res = check_folds(leaked, labels, n_folds=5)
    assert not res["passed"] and not res["checks"]["no_patient_overlap"]["passed"]
    assert str(pid) in res["checks"]["no_patient_overlap"]["details"]["examples"]
    # drop an EEG and an entire fold
    res = check_folds(folds.filter(pl.col("fold") != 4), labels, n_folds=5)
    assert not res["passed"]
    assert res["checks"]["all_folds_present"]["details"]["empty"] == [4]
    assert res["checks"]["all_labels_assigned"]["details"]["n_unassigned"] > 0
    dup = pl.concat([folds, folds.head(1)])
    assert not check_folds(dup)["checks"]["unique_eeg_ids"]["passed"]


def test_check_folds_class_balance_is_advisory() -> None:
    labels = pl.DataFrame({
        "eeg_id": list(range(10)), "patient_id": list(range(10)),
        "expert_consensus": ["Seizure"] * 5 + ["Other"] * 5,
    })  # fmt: skip
    folds = labels.select("eeg_id", "patient_id").with_columns(
        (pl.col("eeg_id") >= 5).cast(pl.Int64).alias("fold")
    )
    res = check_folds(folds, labels, n_folds=2)
    assert res["passed"] and not res["checks"]["class_balance"]["passed"]
    assert res["checks"]["class_balance"]["details"]["max_abs_deviation"] == pytest.approx(0.5)


def test_invalid_arguments() -> None:
    labels = _labels(n_eegs=20, n_patients=3)
    with pytest.raises(ValueError, match="Invalid value for the 'n_folds' parameter"):
        make_folds(labels, n_folds=1)
    with pytest.raises(ValueError, match=r"at most the number of patients \(3\)"):
        make_folds(labels, n_folds=5)
    with pytest.raises(ValueError, match="missing columns"):
        make_folds(labels.drop("patient_id"))
    bad = labels.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(99).otherwise(pl.col("patient_id")).alias("patient_id")
    )
    bad = pl.concat([bad, labels.head(1)])
    with pytest.raises(ValueError, match="several patients"):
        make_folds(bad, n_folds=2)
