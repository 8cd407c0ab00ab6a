"""Label table: deduplication to the median sub-window per (eeg_id, votes) group, validation, DuckDB access."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hms_core.constants import CLASSES, EEG_FILE_COLUMNS, SPEC_COLUMNS, TRAIN_COLUMNS, VOTE_COLUMNS
from hms_core.labels import (
    LABEL_COLUMNS,
    deduplicate_labels,
    labels_connection,
    load_test_windows,
    load_train_labels,
    query_labels,
    read_train_csv,
    write_labels,
)
from hms_core.validation import DataValidationError


def _row(eeg_id, sub, off, votes, label_id, patient=1, spec_off=None, consensus=None):
    return dict(
        eeg_id=eeg_id, eeg_sub_id=sub, eeg_label_offset_seconds=float(off), spectrogram_id=eeg_id + 1000,
        spectrogram_sub_id=sub, spectrogram_label_offset_seconds=float(off if spec_off is None else spec_off),
        label_id=label_id, patient_id=patient,
        expert_consensus=consensus or CLASSES[int(np.argmax(votes))], **dict(zip(VOTE_COLUMNS, votes)),
    )  # fmt: skip


def _train_frame() -> pl.DataFrame:
    a, b = [3, 0, 0, 0, 0, 1], [0, 0, 5, 0, 0, 10]
    rows = [
        # eeg 1: five sub-windows with votes a (listed out of order), then two with votes b
        _row(1, 0, 0, a, 10), _row(1, 3, 30, a, 13), _row(1, 1, 10, a, 11), _row(1, 4, 40, a, 14),
        _row(1, 2, 20, a, 12), _row(1, 5, 50, b, 15), _row(1, 6, 52, b, 16),
        # eeg 2: one window
        _row(2, 0, 8, b, 20, patient=2),
    ]  # fmt: skip
    return pl.DataFrame(rows).select(TRAIN_COLUMNS)


def test_deduplicate_picks_median_subwindow() -> None:
    out = deduplicate_labels(_train_frame())
    assert list(out.columns) == list(LABEL_COLUMNS)
    assert out.height == 3
    rows = out.select(
        "eeg_id", "eeg_sub_id", "eeg_label_offset_seconds", "label_id", "n_subwindows", "total_votes"
    )
    assert rows.rows() == [
        (1, 2, 20.0, 12, 5, 4),  # median of offsets 0..40
        (1, 5, 50.0, 15, 2, 15),  # even group: the lower-middle one
        (2, 0, 8.0, 20, 1, 15),
    ]
    assert out["lpd_vote"].to_list() == [0, 0, 0] and out["other_vote"].to_list() == [1, 10, 10]
    # deterministic: input order does not matter
    shuffled = _train_frame().sample(fraction=1.0, shuffle=True, seed=7)
    assert deduplicate_labels(shuffled).equals(out)
    assert out.schema["eeg_label_offset_seconds"] == pl.Float64 and out.schema["total_votes"] == pl.Int64


def test_deduplicate_requires_columns() -> None:
    with pytest.raises(ValueError, match="lacks columns"):
        deduplicate_labels(_train_frame().drop("patient_id"))


def test_read_train_csv_rejects_bad_rows(tmp_path: Path) -> None:
    df = _train_frame().with_columns(
        *[pl.when(pl.col("label_id") == 16).then(0).otherwise(pl.col(c)).alias(c) for c in VOTE_COLUMNS]
    )
    df.write_csv(tmp_path / "train.csv")
    with pytest.raises(DataValidationError, match=r"train.csv \[votes\]: all six vote columns are 0 at row 6"):
        read_train_csv(tmp_path / "train.csv")


def _write_dir(root: Path, train: pl.DataFrame, eeg_rows: dict[int, int]) -> Path:
    rng = np.random.default_rng(0)
    (root / "train_eegs").mkdir(parents=True)
    (root / "train_spectrograms").mkdir()
    train.write_csv(root / "train.csv")
    for eeg_id, n in eeg_rows.items():
        pq.write_table(
            pa.table({c: rng.standard_normal(n).astype(np.float32) for c in EEG_FILE_COLUMNS}),
            root / f"train_eegs/{eeg_id}.parquet",
        )
        spec = {"time": np.arange(1, 700, 2, dtype=np.float32)}
        spec.update({c: np.ones(350, np.float32) for c in SPEC_COLUMNS})
        pq.write_table(pa.table(spec), root / f"train_spectrograms/{eeg_id + 1000}.parquet")
    return root


def test_load_train_labels_validates_files(tmp_path: Path) -> None:
    # eeg 1 needs offset 52 + 50 s = 20,400 samples; eeg 2 needs 58 s = 11,600
    ok = _write_dir(tmp_path / "ok", _train_frame(), {1: 20_400, 2: 11_600})
    labels, report = load_train_labels(ok)
    assert report.ok and labels.height == 3
    assert report.summary["train_eegs"]["checked"] == 2

    bad = _write_dir(tmp_path / "bad", _train_frame(), {1: 20_399, 2: 11_600})
    with pytest.raises(DataValidationError) as ei:
        load_train_labels(bad)
    msg = str(ei.value)
    assert "train_eegs/1.parquet" in msg and "expected >= 20400 rows, got 20399" in msg and "CSV row 6" in msg

    # an earlier report is reused instead of re-validating
    labels2, _ = load_train_labels(ok, report=report)
    assert labels2.equals(labels)


def test_parquet_roundtrip_and_duckdb(tmp_path: Path) -> None:
    labels = deduplicate_labels(_train_frame())
    path = write_labels(labels, tmp_path / "labels.parquet")
    assert pl.read_parquet(path).equals(labels)
    res = query_labels(path, "SELECT eeg_id, sum(n_subwindows) AS n FROM labels GROUP BY eeg_id ORDER BY eeg_id")
    assert res.rows() == [(1, 7), (2, 1)]
    hi = query_labels(path, "SELECT count(*) AS n FROM labels WHERE total_votes >= $t", t=10)
    assert hi["n"][0] == 2
    con = labels_connection(path)
    assert con.execute("SELECT count(*) FROM labels").fetchone()[0] == 3
    con.close()
    with pytest.raises(
        ValueError, match="Invalid value for the 'view' parameter.*SQL identifiers.*'labels; drop'"
    ):
        labels_connection(path, view="labels; drop")
    with pytest.raises(FileNotFoundError, match="materialize the labels"):
        query_labels(tmp_path / "missing.parquet", "SELECT 1")
    with pytest.raises(ValueError, match="expected columns"):
        write_labels(labels.drop("n_subwindows"), tmp_path / "x.parquet")


def test_load_test_windows(tmp_path: Path) -> None:
    pl.DataFrame({"eeg_id": [5, 6], "spectrogram_id": [50, 60], "patient_id": [1, 2]}).write_csv(
        tmp_path / "test.csv"
    )
    out = load_test_windows(tmp_path)
    assert list(out.columns) == list(LABEL_COLUMNS)
    assert out["eeg_label_offset_seconds"].to_list() == [0.0, 0.0]
    assert out["total_votes"].to_list() == [0, 0] and out["expert_consensus"].null_count() == 2
    assert out.select(VOTE_COLUMNS).sum_horizontal().to_list() == [0, 0]
    train_schema = deduplicate_labels(_train_frame()).schema
    assert out.schema == train_schema  # the same layout: frames concatenate
    pl.DataFrame({"eeg_id": [5], "spectrogram_id": [50]}).write_csv(tmp_path / "test.csv")
    with pytest.raises(DataValidationError, match="patient_id"):
        load_test_windows(tmp_path / "test.csv")
