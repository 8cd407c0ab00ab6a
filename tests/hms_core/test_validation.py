"""Raw-directory validation: a clean HMS-format directory passes; every kind of damage is reported, naming the
file and field/row, and all problems are collected in one run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hms_core.constants import CLASSES, EEG_FILE_COLUMNS, SPEC_COLUMNS, TRAIN_COLUMNS, VOTE_COLUMNS
from hms_core.validation import DataValidationError, ValidationReport, inspect_parquet, validate_raw_dir

EEG_IDS = (101, 102, 103, 104)
OFFSETS = (0.0, 10.0, 20.0)  # needs 70 s = 14,000 samples


def _eeg_table(n_rows: int, rng: np.random.Generator) -> pa.Table:
    return pa.table({c: rng.standard_normal(n_rows).astype(np.float32) for c in EEG_FILE_COLUMNS})


def _spec_table(n_rows: int, rng: np.random.Generator) -> pa.Table:
    cols = {"time": np.arange(1, 2 * n_rows, 2, dtype=np.float32)}
    cols.update({c: rng.random(n_rows).astype(np.float32) for c in SPEC_COLUMNS})
    return pa.table(cols)


def write_raw_dir(root: Path, seed: int = 0) -> Path:
    """A small, valid HMS raw directory: 4 train EEGs x 3 sub-windows, 1 test EEG."""
    rng = np.random.default_rng(seed)
    for d in ("train_eegs", "train_spectrograms", "test_eegs", "test_spectrograms"):
        (root / d).mkdir(parents=True)
    rows = []
    for k, eeg_id in enumerate(EEG_IDS):
        for sub, off in enumerate(OFFSETS):
            votes = [0] * 6
            votes[k % 6] = 3
            rows.append(
                dict(eeg_id=eeg_id, eeg_sub_id=sub, eeg_label_offset_seconds=off, spectrogram_id=eeg_id + 1000,
                     spectrogram_sub_id=sub, spectrogram_label_offset_seconds=off, label_id=len(rows),
                     patient_id=k // 2, expert_consensus=CLASSES[k % 6], **dict(zip(VOTE_COLUMNS, votes)))
            )  # fmt: skip
        pq.write_table(_eeg_table(14_000, rng), root / f"train_eegs/{eeg_id}.parquet")
        pq.write_table(_spec_table(320, rng), root / f"train_spectrograms/{eeg_id + 1000}.parquet")
    pl.DataFrame(rows).select(TRAIN_COLUMNS).write_csv(root / "train.csv")
    pl.DataFrame({"eeg_id": [7], "spectrogram_id": [8], "patient_id": [9]}).write_csv(root / "test.csv")
    pl.DataFrame({"eeg_id": [7], **{c: [1 / 6] for c in VOTE_COLUMNS}}).write_csv(root / "sample_submission.csv")
    pq.write_table(_eeg_table(10_000, rng), root / "test_eegs/7.parquet")
    pq.write_table(_spec_table(300, rng), root / "test_spectrograms/8.parquet")
    return root


def _edit_train(root: Path, fn) -> None:
    df = pl.read_csv(root / "train.csv")
    fn(df).write_csv(root / "train.csv")


def _find(problems, file: str, field: str | None = None):
    hits = [p for p in problems if p.file == file and (field is None or field in p.field)]
    assert hits, f"no problem for {file}/{field} in {[str(p) for p in problems]}"
    return hits[0]


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    return write_raw_dir(tmp_path / "raw")


def test_clean_directory_passes(raw: Path) -> None:
    report = validate_raw_dir(raw)
    assert report.ok, report.format()
    assert report.warnings == []
    s = report.summary
    assert s["train_rows"] == 12 and s["train_eeg_ids"] == 4 and s["train_patients"] == 2
    assert s["train_eegs"]["checked"] == 4 and s["train_spectrograms"]["checked"] == 4
    assert s["test_eegs"]["checked"] == 1 and s["train_eegs"]["nan_ratio"]["max"] == 0.0
    d = report.to_dict()
    assert d["ok"] and d["n_errors"] == 0
    assert "OK" in report.format()


def test_train_csv_missing_column_wrong_dtype_bad_class(raw: Path) -> None:
    def damage(df: pl.DataFrame) -> pl.DataFrame:
        df = df.with_columns(
            pl.when(pl.int_range(pl.len()) == 4).then(pl.lit("x")).otherwise(pl.col("patient_id").cast(pl.String))
            .alias("patient_id")
        )  # fmt: skip
        return df

    _edit_train(raw, damage)
    report = validate_raw_dir(raw, splits=("train",))
    p = _find(report.errors, "train.csv", "patient_id")
    assert p.row == 4 and "'x'" in p.message and "integer" in p.message

    write_raw_dir(raw.parent / "raw2")
    _edit_train(raw.parent / "raw2", lambda df: df.drop("lpd_vote"))
    report = validate_raw_dir(raw.parent / "raw2", splits=("train",))
    assert "required column is missing" in _find(report.errors, "train.csv", "lpd_vote").message

    write_raw_dir(raw.parent / "raw3")
    _edit_train(raw.parent / "raw3", lambda df: df.with_columns(
        *[pl.when(pl.int_range(pl.len()) == 5).then(0).otherwise(pl.col(c)).alias(c) for c in VOTE_COLUMNS],
        pl.when(pl.int_range(pl.len()) == 2).then(pl.lit("Spike")).otherwise(pl.col("expert_consensus"))
        .alias("expert_consensus"),
    ))  # fmt: skip
    report = validate_raw_dir(raw.parent / "raw3", splits=("train",))
    # dtype and class errors are all collected before the value rules (votes, uniqueness) run
    assert _find(report.errors, "train.csv", "expert_consensus").row == 2
    assert "'Spike'" in _find(report.errors, "train.csv", "expert_consensus").message


def test_votes_all_zero_and_duplicate_label_id(raw: Path) -> None:
    _edit_train(raw, lambda df: df.with_columns(
        *[pl.when(pl.int_range(pl.len()) == 5).then(0).otherwise(pl.col(c)).alias(c) for c in VOTE_COLUMNS],
        pl.when(pl.int_range(pl.len()) == 7).then(0).otherwise(pl.col("label_id")).alias("label_id"),
    ))  # fmt: skip
    report = validate_raw_dir(raw, splits=("train",))
    zero = _find(report.errors, "train.csv", "votes")
    assert zero.row == 5 and "row 5" in zero.message
    dup = _find(report.errors, "train.csv", "label_id")
    assert dup.row == 0 and "7" in dup.message


def test_file_level_damage_collected_in_one_report(raw: Path) -> None:
    rng = np.random.default_rng(1)
    # truncated parquet
    p = raw / "train_eegs/101.parquet"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    # missing EEG file
    (raw / "train_eegs/102.parquet").unlink()
    # too short for the offset-20 window (needs 14,000 rows) and a NaN-only channel
    t = _eeg_table(12_000, rng).to_pandas()
    t["C3"] = np.nan
    pq.write_table(pa.Table.from_pandas(t, preserve_index=False), raw / "train_eegs/103.parquet")
    # missing column and wrong dtype
    t = _eeg_table(14_000, rng).drop_columns(["Fz"]).set_column(0, "Fp1", pa.array(["a"] * 14_000))
    pq.write_table(t, raw / "train_eegs/104.parquet")
    # short spectrogram: warning only
    pq.write_table(_spec_table(200, rng), raw / "train_spectrograms/1101.parquet")

    report = validate_raw_dir(raw)
    assert not report.ok
    assert "unreadable parquet" in _find(report.errors, "train_eegs/101.parquet").message
    assert "does not exist" in _find(report.errors, "train_eegs/102.parquet").message
    short = _find(report.errors, "train_eegs/103.parquet", "row")
    assert "expected >= 14000 rows, got 12000" in short.message and short.row == 8  # row of offset 20 of eeg 103
    assert "NaN-only" in _find(report.warnings, "train_eegs/103.parquet", "C3").message
    assert "missing" in _find(report.errors, "train_eegs/104.parquet", "Fz").message
    assert "numeric" in _find(report.errors, "train_eegs/104.parquet", "Fp1").message
    spec = _find(report.warnings, "train_spectrograms/1101.parquet")
    assert "expected >= 310 rows, got 200" in spec.message
    assert not any(e.file.startswith("train_spectrograms") for e in report.errors)
    assert report.summary["train_eegs"]["unreadable"] == 1
    assert report.summary["train_eegs"]["nan_ratio"]["max"] == pytest.approx(1 / 20)

    with pytest.raises(DataValidationError) as ei:
        raise DataValidationError(report)
    msg = str(ei.value)
    for f in ("101", "102", "103", "104"):
        assert f"train_eegs/{f}.parquet" in msg
    assert ei.value.report is report


def test_error_message_truncates_long_lists(tmp_path: Path) -> None:
    report = ValidationReport(root="r")
    for i in range(30):
        report.error(f"f{i}", "x", "bad")
    msg = str(DataValidationError(report))
    assert "f19" in msg and "f20" not in msg and "and 10 more" in msg


def test_check_files_modes(raw: Path) -> None:
    p = raw / "train_eegs/101.parquet"
    p.write_bytes(b"not a parquet file")
    assert validate_raw_dir(raw, "none").ok  # files not opened: only existence is checked
    assert not validate_raw_dir(raw, "all").ok
    sample = validate_raw_dir(raw, "sample", sample_size=2)
    assert sample.summary["train_eegs"]["checked"] == 2
    again = validate_raw_dir(raw, "sample", sample_size=2)
    assert [str(e) for e in sample.errors] == [str(e) for e in again.errors]  # deterministic subset
    with pytest.raises(ValueError, match="Invalid value for the 'check_files' parameter"):
        validate_raw_dir(raw, "some")


def test_test_split_and_submission(raw: Path) -> None:
    pl.DataFrame({"eeg_id": [7], **{c: [0.2] for c in VOTE_COLUMNS}}).write_csv(raw / "sample_submission.csv")
    (raw / "test_spectrograms/8.parquet").unlink()
    report = validate_raw_dir(raw, splits=("test",))
    assert "sum to 1" in _find(report.errors, "sample_submission.csv", "probabilities").message
    _find(report.errors, "test_spectrograms/8.parquet")
    assert "train_rows" not in report.summary


def test_missing_train_csv_and_dir(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    report = validate_raw_dir(tmp_path / "r")
    files = {e.file for e in report.errors}
    assert {"train.csv", "test.csv", "sample_submission.csv"} <= files
    assert not validate_raw_dir(tmp_path / "nope").ok


def test_inspect_parquet_nan_ratio(tmp_path: Path) -> None:
    t = _eeg_table(10_000, np.random.default_rng(0)).to_pandas()
    t.loc[:4999, "O1"] = np.nan
    path = tmp_path / "x.parquet"
    t.to_parquet(path, index=False)  # pandas stores NaN as null: both must count
    info = inspect_parquet(path, EEG_FILE_COLUMNS)
    assert info.readable and info.num_rows == 10_000 and info.nan_only == []
    assert info.nan_ratio == pytest.approx(5_000 / (10_000 * 20))
