"""Label table: validated ``train.csv`` deduplicated to one row per (eeg_id, votes) group, stored as parquet.

Many ``train.csv`` rows of one ``eeg_id`` are overlapping sub-windows with identical votes. Following the top
solutions, each (eeg_id, six vote counts) group keeps one row: the sub-window whose offset is the group's median
(the centre one; for an even count the lower-middle one, ties broken by ``eeg_sub_id``), so the choice is
deterministic. ``total_votes`` and ``n_subwindows`` (group size) are added and the vote counts kept.

The stored parquet can be queried with DuckDB through :func:`labels_connection` (a ``labels`` view) or
:func:`query_labels`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from hms_core.checks import invalid_value
from hms_core.constants import TEST_COLUMNS, TRAIN_COLUMNS, VOTE_COLUMNS
from hms_core.io import write_parquet
from hms_core.validation import (
    CheckFiles,
    DataValidationError,
    ValidationReport,
    check_test_table,
    check_train_table,
    read_csv_table,
    validate_raw_dir,
)

if TYPE_CHECKING:
    import duckdb

LABEL_COLUMNS: tuple[str, ...] = (*TRAIN_COLUMNS, "total_votes", "n_subwindows")
LABEL_SCHEMA: dict[str, pl.DataType] = {
    "eeg_id": pl.Int64(),
    "eeg_sub_id": pl.Int64(),
    "eeg_label_offset_seconds": pl.Float64(),
    "spectrogram_id": pl.Int64(),
    "spectrogram_sub_id": pl.Int64(),
    "spectrogram_label_offset_seconds": pl.Float64(),
    "label_id": pl.Int64(),
    "patient_id": pl.Int64(),
    "expert_consensus": pl.String(),
    **{c: pl.Int64() for c in VOTE_COLUMNS},
    "total_votes": pl.Int64(),
    "n_subwindows": pl.Int64(),
}
GROUP_KEYS: tuple[str, ...] = ("eeg_id", *VOTE_COLUMNS)


def read_train_csv(path: str | os.PathLike[str]) -> pl.DataFrame:
    """Read and validate ``train.csv`` (schema, dtypes, values); raises :class:`DataValidationError`."""
    report = ValidationReport(root=str(path))
    df = read_csv_table(path, report, Path(path).name)
    if df is None or not check_train_table(df, report, Path(path).name):
        raise DataValidationError(report)
    return df.select(TRAIN_COLUMNS).cast({c: t for c, t in LABEL_SCHEMA.items() if c in TRAIN_COLUMNS})


def deduplicate_labels(train: pl.DataFrame) -> pl.DataFrame:
    """One row per (eeg_id, votes) group: the median-offset sub-window, plus ``total_votes``/``n_subwindows``."""
    missing = [c for c in TRAIN_COLUMNS if c not in train.columns]
    if missing:
        raise ValueError(
            f"deduplicate_labels: train frame lacks columns {missing}; expected {list(TRAIN_COLUMNS)}"
        )
    df = train.select(TRAIN_COLUMNS).sort([*GROUP_KEYS, "eeg_label_offset_seconds", "eeg_sub_id"])
    df = df.with_columns(
        pl.len().over(GROUP_KEYS).alias("n_subwindows"),
        pl.int_range(pl.len()).over(GROUP_KEYS).alias("_rank"),
    )
    out = df.filter(pl.col("_rank") == (pl.col("n_subwindows") - 1) // 2).drop("_rank")
    out = out.with_columns(pl.sum_horizontal(VOTE_COLUMNS).alias("total_votes"))
    return out.select(LABEL_COLUMNS).cast(LABEL_SCHEMA).sort(["eeg_id", "eeg_label_offset_seconds"])


def load_train_labels(
    raw_dir: str | os.PathLike[str],
    *,
    check_files: CheckFiles = "all",
    report: ValidationReport | None = None,
    workers: int | None = None,
) -> tuple[pl.DataFrame, ValidationReport]:
    """Validate the train half of ``raw_dir`` and return (deduplicated labels, validation report).

    Pass a ``report`` from an earlier :func:`~hms_core.validation.validate_raw_dir` run to skip re-validation.
    Raises :class:`DataValidationError` when the report has errors (warnings are returned, not raised).
    """
    raw_dir = Path(raw_dir)
    if report is None:
        report = validate_raw_dir(raw_dir, check_files, splits=("train",), workers=workers)
    if not report.ok:
        raise DataValidationError(report)
    train = read_train_csv(raw_dir / "train.csv")
    return deduplicate_labels(train), report


def load_test_windows(raw_dir_or_csv: str | os.PathLike[str]) -> pl.DataFrame:
    """``test.csv`` in the label layout: offsets 0, sub ids 0, votes 0, ``total_votes`` 0, ``n_subwindows`` 1,
    ``label_id`` and ``expert_consensus`` null. Accepts the raw directory or the CSV path."""
    path = Path(raw_dir_or_csv)
    if path.is_dir():
        path = path / "test.csv"
    report = ValidationReport(root=str(path))
    df = read_csv_table(path, report, path.name)
    if df is None or not check_test_table(df, report, path.name):
        raise DataValidationError(report)
    out = df.select(TEST_COLUMNS).with_columns(
        pl.lit(0).alias("eeg_sub_id"),
        pl.lit(0.0).alias("eeg_label_offset_seconds"),
        pl.lit(0).alias("spectrogram_sub_id"),
        pl.lit(0.0).alias("spectrogram_label_offset_seconds"),
        pl.lit(None).alias("label_id"),
        pl.lit(None).alias("expert_consensus"),
        *[pl.lit(0).alias(c) for c in VOTE_COLUMNS],
        pl.lit(0).alias("total_votes"),
        pl.lit(1).alias("n_subwindows"),
    )
    return out.select(LABEL_COLUMNS).cast(LABEL_SCHEMA)


def write_labels(labels: pl.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a label frame atomically as parquet after checking its columns."""
    if list(labels.columns) != list(LABEL_COLUMNS):
        raise ValueError(f"write_labels: expected columns {list(LABEL_COLUMNS)}, got {list(labels.columns)}")
    return write_parquet(path, labels)


def labels_connection(
    parquet_path: str | os.PathLike[str], view: str = "labels", con: duckdb.DuckDBPyConnection | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection (in-memory unless ``con`` is given) with a view ``view`` over the labels parquet."""
    import duckdb

    path = Path(parquet_path)
    if not path.is_file():
        raise FileNotFoundError(f"Labels parquet '{path}' does not exist; materialize the labels first.")
    if not view.isidentifier():
        raise invalid_value("view", view, "SQL identifiers (letters, digits and '_', not starting with a digit)")
    con = con or duckdb.connect()
    escaped = str(path).replace("'", "''")
    con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM read_parquet('{escaped}')")
    return con


def query_labels(parquet_path: str | os.PathLike[str], sql: str, **params: Any) -> pl.DataFrame:
    """Run ``sql`` (which refers to the table ``labels``) on the labels parquet and return a polars frame.

    Example: ``query_labels(p, "SELECT expert_consensus, count(*) n FROM labels GROUP BY 1 ORDER BY 1")``.
    Named parameters are passed to DuckDB (``$name`` placeholders).
    """
    con = labels_connection(parquet_path)
    try:
        return con.sql(sql, params=params or None).pl()
    finally:
        con.close()
