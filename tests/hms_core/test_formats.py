"""The real Kaggle file formats, written by hand in these tests (not by our generator nor from our constants), read
by the platform's readers and validator: spectrogram column names (the published list, the old spelling, other
exports), ``train.csv`` dtypes, ``time``, NaNs, file lengths, the one-row ``test.csv`` and ``sample_submission.csv``.
Facts from shared/reference/hms_data.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from hms_core.constants import EEG_FILE_COLUMNS, SPEC_COLUMNS, SPEC_FREQS, TEST_COLUMNS, TRAIN_COLUMNS
from hms_core.eeg_io import (
    RecordError,
    match_spectrogram_columns,
    read_hms_eeg,
    read_kaggle_spectrogram,
    read_kaggle_spectrogram_table,
)
from hms_core.labels import load_test_windows, read_train_csv
from hms_core.validation import validate_raw_dir

# The 100 frequency labels of the real train_spectrograms files, as published (hms_data.md), pasted literally.
PUBLISHED_FREQS = """
0.59 0.78 0.98 1.17 1.37 1.56 1.76 1.95 2.15 2.34 2.54 2.73 2.93 3.13 3.32 3.52 3.71 3.91 4.1 4.3 4.49 4.69 4.88
5.08 5.27 5.47 5.66 5.86 6.05 6.25 6.45 6.64 6.84 7.03 7.23 7.42 7.62 7.81 8.01 8.2 8.4 8.59 8.79 8.98 9.18 9.38
9.57 9.77 9.96 10.16 10.35 10.55 10.74 10.94 11.13 11.33 11.52 11.72 11.91 12.11 12.3 12.5 12.7 12.89 13.09
13.28 13.48 13.67 13.87 14.06 14.26 14.45 14.65 14.84 15.04 15.23 15.43 15.63 15.82 16.02 16.21 16.41 16.6 16.8
16.99 17.19 17.38 17.58 17.77 17.97 18.16 18.36 18.55 18.75 18.95 19.14 19.34 19.53 19.73 19.92
""".split()  # noqa: SIM905 - the published text, pasted as is
CHAINS = ("LL", "RL", "LP", "RP")
REAL_SPEC_COLUMNS = [f"{c}_{f}" for c in CHAINS for f in PUBLISHED_FREQS]
#: What the platform wrote and required before: Python round() and 2 fixed decimals (LL_3.12, LL_4.10, ...).
OLD_SPEC_COLUMNS = [f"{c}_{round((k + 3) * 200 / 1024, 2):.2f}" for c in CHAINS for k in range(100)]
EEG_COLUMNS = [
    "Fp1",
    "F3",
    "C3",
    "P3",
    "F7",
    "T3",
    "T5",
    "O1",
    "Fz",
    "Cz",
    "Pz",
    "Fp2",
    "F4",
    "C4",
    "P4",
    "F8",
    "T4",
    "T6",
    "O2",
    "EKG",
]
TRAIN_HEADER = (
    "eeg_id,eeg_sub_id,eeg_label_offset_seconds,spectrogram_id,spectrogram_sub_id,spectrogram_label_offset_seconds,"
    "label_id,patient_id,expert_consensus,seizure_vote,lpd_vote,gpd_vote,lrda_vote,grda_vote,other_vote"
)
# train.csv rows as the real file writes them: integer ids and votes, offsets as floats ("6.0").
TRAIN_ROWS = (
    "1628180742,0,0.0,353733,0,0.0,127492639,42516,Seizure,3,0,0,0,0,0",
    "1628180742,1,6.0,353733,1,6.0,3887563113,42516,Seizure,3,0,0,0,0,0",
    "1628180742,2,8.0,353733,2,8.0,1142670488,42516,Seizure,3,0,0,0,0,0",
    "2277392603,0,0.0,924234,0,0.0,1978807404,30539,GPD,0,0,5,0,1,5",
)
TEST_CSV = "eeg_id,spectrogram_id,patient_id\n3911565283,853520,6885\n"
SUBMISSION_HEADER = "eeg_id,seizure_vote,lpd_vote,gpd_vote,lrda_vote,grda_vote,other_vote"

runner = CliRunner()


def _eeg_file(path: Path, n_rows: int, rng: np.random.Generator, nan_channel: str | None = None) -> None:
    cols = {c: (20 * rng.standard_normal(n_rows)).astype(np.float32) for c in EEG_COLUMNS}
    cols["Fp1"][1000:1400] = np.nan  # a NaN stretch, as in the real files
    if nan_channel:
        cols[nan_channel][:] = np.nan
    pq.write_table(pa.table(cols), path)


def _spec_values(n_rows: int, rng: np.random.Generator) -> np.ndarray:
    vals = rng.gamma(2.0, 3.0, size=(n_rows, 400)).astype(np.float32)
    vals[5:8] = np.nan  # NaN rows occur in the real spectrograms
    return vals


def _spec_file(path: Path, vals: np.ndarray, columns: list[str], time_type: pa.DataType | None = None) -> None:
    n = vals.shape[0]
    arrays = {"time": pa.array(np.arange(1, 2 * n, 2), type=time_type or pa.int64())}
    arrays.update({c: pa.array(vals[:, i]) for i, c in enumerate(columns)})
    pq.write_table(pa.table(arrays), path)


def write_kaggle_dir(root: Path, spec_columns: list[str] = REAL_SPEC_COLUMNS, seed: int = 0) -> Path:
    """A small raw folder in the exact published format (Kaggle layout, real column names, real dtypes)."""
    rng = np.random.default_rng(seed)
    for d in ("train_eegs", "train_spectrograms", "test_eegs", "test_spectrograms"):
        (root / d).mkdir(parents=True)
    (root / "train.csv").write_text("\n".join((TRAIN_HEADER, *TRAIN_ROWS)) + "\n")
    _eeg_file(root / "train_eegs/1628180742.parquet", 11_600, rng)  # offset 8 s + 50 s = 58 s
    _eeg_file(root / "train_eegs/2277392603.parquet", 10_000, rng, nan_channel="O2")
    _spec_file(root / "train_spectrograms/353733.parquet", _spec_values(304, rng), spec_columns)  # (8 + 600) / 2
    _spec_file(root / "train_spectrograms/924234.parquet", _spec_values(300, rng), spec_columns, pa.float64())
    (root / "test.csv").write_text(TEST_CSV)
    (root / "sample_submission.csv").write_text(f"{SUBMISSION_HEADER}\n3911565283" + ",0.166667" * 6 + "\n")
    _eeg_file(root / "test_eegs/3911565283.parquet", 10_000, rng)  # exactly 50 s
    _spec_file(root / "test_spectrograms/853520.parquet", _spec_values(300, rng), spec_columns)  # exactly 10 min
    return root


# Spectrogram column names ---------------------------------------------------------------------------------------
def test_spec_columns_are_the_published_names() -> None:
    assert list(SPEC_COLUMNS) == REAL_SPEC_COLUMNS
    assert list(SPEC_FREQS) == [float(f) for f in PUBLISHED_FREQS]
    for name in ("LL_4.1", "LL_3.13", "LL_15.63", "LL_16.6", "RP_19.92"):
        assert name in SPEC_COLUMNS
    # the old spelling differs in 11 labels per chain (44 columns), which the platform rejected before
    assert sum(a != b for a, b in zip(OLD_SPEC_COLUMNS, REAL_SPEC_COLUMNS)) == 44


def test_reader_reads_the_published_names_in_any_column_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vals = _spec_values(320, rng)
    order = rng.permutation(400)
    _spec_file(tmp_path / "s.parquet", vals[:, order], [REAL_SPEC_COLUMNS[i] for i in order])
    table = read_kaggle_spectrogram_table(tmp_path / "s.parquet")
    assert table.shape == (320, 4, 100) and table.dtype == np.float32
    np.testing.assert_array_equal(table.reshape(320, 400), vals)  # canonical order, NaN rows kept
    assert np.isnan(table[5:8]).all() and not np.isnan(table[8:]).any()
    # a writer that stores missing values as nulls (pandas, Spark) reads as NaN too
    t = pq.read_table(tmp_path / "s.parquet")
    col = t.column_names.index("RL_3.13")
    t = t.set_column(col, "RL_3.13", pa.array(vals[:, 113], mask=np.arange(320) >= 310))
    pq.write_table(t, tmp_path / "nulls.parquet")
    with_nulls = read_kaggle_spectrogram_table(tmp_path / "nulls.parquet")
    assert np.isnan(with_nulls[310:, 1, 13]).all() and np.array_equal(with_nulls[8:310], table[8:310])
    w = read_kaggle_spectrogram(tmp_path / "s.parquet", offset_s=0)
    np.testing.assert_array_equal(w[CHAINS.index("LP"), PUBLISHED_FREQS.index("4.1")], vals[:300, 200 + 18])


@pytest.mark.parametrize(
    "spelling",
    [
        "old",  # LL_3.12, LL_4.10, LL_15.62: what the platform wrote before
        "three_decimals",  # LL_4.100
        "exact",  # LL_4.1015625
        "lower_case",  # ll_4.1
    ],
)
def test_reader_is_tolerant_to_the_spelling(tmp_path: Path, spelling: str) -> None:
    exact = [(k + 3) * 200 / 1024 for k in range(100)]
    columns = {
        "old": OLD_SPEC_COLUMNS,
        "three_decimals": [f"{c}_{float(f):.3f}" for c in CHAINS for f in PUBLISHED_FREQS],
        "exact": [f"{c}_{f!r}" for c in CHAINS for f in exact],
        "lower_case": [c.lower() for c in REAL_SPEC_COLUMNS],
    }[spelling]
    vals = _spec_values(300, np.random.default_rng(2))
    _spec_file(tmp_path / "real.parquet", vals, REAL_SPEC_COLUMNS)
    _spec_file(tmp_path / "other.parquet", vals, columns)
    np.testing.assert_array_equal(
        read_kaggle_spectrogram_table(tmp_path / "other.parquet"),
        read_kaggle_spectrogram_table(tmp_path / "real.parquet"),
    )


def _expect_grid_error(path: Path, *needles: str) -> None:
    with pytest.raises(RecordError) as ei:
        read_kaggle_spectrogram_table(path)
    msg = str(ei.value)
    for needle in (path.name, "(k + 3) * 200 / 1024", "LL, RL, LP, RP", *needles):
        assert needle in msg, (needle, msg)


def test_reader_errors_name_file_column_and_grid(tmp_path: Path) -> None:
    vals = _spec_values(300, np.random.default_rng(3))
    off = list(REAL_SPEC_COLUMNS)
    off[REAL_SPEC_COLUMNS.index("RL_4.1")] = "RL_4.2"  # 0.1 Hz from the nearest bin
    _spec_file(tmp_path / "off_grid.parquet", vals, off)
    _expect_grid_error(
        tmp_path / "off_grid.parquet", "RL_4.2", "does not match any bin", "nearest bin RL_4.3", "RL_4.1"
    )

    dup = list(REAL_SPEC_COLUMNS)
    dup[REAL_SPEC_COLUMNS.index("LP_3.32")] = "LP_3.13"  # LP_3.13 twice, LP_3.32 missing
    t = pa.table({"time": np.arange(300), **{f"c{i}": vals[:, i] for i in range(400)}}).rename_columns(
        ["time", *dup]
    )
    pq.write_table(t, tmp_path / "dup.parquet")
    _expect_grid_error(tmp_path / "dup.parquet", "LP_3.13", "same chain and frequency", "LP_3.32")

    both = pa.table({"time": np.arange(300), **{c: vals[:, i] for i, c in enumerate(REAL_SPEC_COLUMNS)}})
    pq.write_table(both.append_column("LL_4.10", pa.array(vals[:, 0])), tmp_path / "two_spellings.parquet")
    _expect_grid_error(tmp_path / "two_spellings.parquet", "LL_4.1 = LL_4.10")

    pq.write_table(both.drop_columns(["time"]), tmp_path / "no_time.parquet")
    _expect_grid_error(tmp_path / "no_time.parquet", "'time'")

    pq.write_table(both.append_column("CZ_1.17", pa.array(vals[:, 0])), tmp_path / "chain.parquet")
    _expect_grid_error(tmp_path / "chain.parquet", "CZ_1.17", "unknown chain")

    pq.write_table(both.drop_columns(["RP_19.92"]), tmp_path / "missing.parquet")
    _expect_grid_error(tmp_path / "missing.parquet", "RP_19.92", "missing (1 of 400)")

    text = both.set_column(1, "LL_0.59", pa.array(["x"] * 300))
    pq.write_table(text, tmp_path / "text.parquet")
    with pytest.raises(RecordError, match=r"text\.parquet.*LL_0\.59.*numeric"):
        read_kaggle_spectrogram_table(tmp_path / "text.parquet")


def test_unrelated_columns_are_ignored_not_matched() -> None:
    m = match_spectrogram_columns(["time", "__index_level_0__", "note", *reversed(REAL_SPEC_COLUMNS)])
    assert m.ok and m.time == "time" and m.ignored == ("__index_level_0__", "note")
    assert list(m.columns) == REAL_SPEC_COLUMNS


# The validator and `hms validate` on folders in the real format --------------------------------------------------
def test_validate_passes_on_the_real_format(tmp_path: Path) -> None:
    from hms_dagster.cli import app

    raw = write_kaggle_dir(tmp_path / "raw")
    report = validate_raw_dir(raw)
    assert report.ok, report.format()
    # the only findings: the NaN-only O2 channel (a warning, as NaN channels occur in the real data)
    assert [(p.file, p.field) for p in report.warnings] == [("train_eegs/2277392603.parquet", "O2")]
    s = report.summary
    assert s["train_rows"] == 4 and s["train_eeg_ids"] == 2 and s["test_rows"] == 1
    assert s["train_spectrograms"]["checked"] == 2 and s["test_spectrograms"]["checked"] == 1
    assert s["train_spectrograms"]["nan_ratio"]["max"] > 0  # NaN rows counted, not errors
    res = runner.invoke(app, ["validate", "--data", str(raw)])
    assert res.exit_code == 0, res.output


def test_validate_passes_on_the_old_spelling(tmp_path: Path) -> None:
    raw = write_kaggle_dir(tmp_path / "raw", spec_columns=OLD_SPEC_COLUMNS)
    report = validate_raw_dir(raw)
    assert report.ok, report.format()


def test_validate_fails_on_a_broken_grid_naming_file_and_column(tmp_path: Path) -> None:
    from hms_dagster.cli import app

    broken = list(REAL_SPEC_COLUMNS)
    broken[REAL_SPEC_COLUMNS.index("LL_15.63")] = "LL_15.7"
    raw = write_kaggle_dir(tmp_path / "raw", spec_columns=broken)
    report = validate_raw_dir(raw)
    files = {p.file for p in report.errors}
    assert files == {"train_spectrograms/353733.parquet", "train_spectrograms/924234.parquet",
                     "test_spectrograms/853520.parquet"}  # fmt: skip
    fields = {p.field for p in report.errors}
    assert "LL_15.7" in fields and "LL_15.63" in fields  # the stray column and the bin it leaves empty
    res = runner.invoke(app, ["validate", "--data", str(raw), "--json"])
    assert res.exit_code == 1
    errors = json.loads(res.output)["errors"]
    hit = [e for e in errors if e["file"] == "train_spectrograms/353733.parquet" and e["field"] == "LL_15.7"]
    assert hit and "(k + 3) * 200 / 1024" in hit[0]["message"]


def test_validate_requires_the_time_column(tmp_path: Path) -> None:
    raw = write_kaggle_dir(tmp_path / "raw")
    p = raw / "train_spectrograms/924234.parquet"
    pq.write_table(pq.read_table(p).drop_columns(["time"]), p)
    report = validate_raw_dir(raw, splits=("train",))
    [err] = report.errors
    assert (err.file, err.field) == ("train_spectrograms/924234.parquet", "time") and "'time'" in err.message


# train.csv, test.csv, sample_submission.csv ----------------------------------------------------------------------
def test_train_csv_columns_and_dtypes(tmp_path: Path) -> None:
    raw = write_kaggle_dir(tmp_path / "raw")
    df = read_train_csv(raw / "train.csv")
    assert df.columns == list(TRAIN_COLUMNS) == TRAIN_HEADER.split(",") and len(TRAIN_COLUMNS) == 15
    want = {
        c: pl.Float64 if "offset" in c else pl.String if c == "expert_consensus" else pl.Int64 for c in df.columns
    }
    assert dict(df.schema) == want
    assert df["label_id"].max() == 3887563113  # ids beyond int32
    assert df["eeg_label_offset_seconds"].to_list() == [0.0, 6.0, 8.0, 0.0]

    # votes written as floats are not the published format: an error naming the column
    text = (raw / "train.csv").read_text().replace("Seizure,3,0", "Seizure,3.5,0", 1)
    (raw / "train.csv").write_text(text)
    report = validate_raw_dir(raw, splits=("train",))
    assert any(p.file == "train.csv" and p.field == "seizure_vote" and p.row == 0 for p in report.errors)


def test_one_row_test_csv_and_submission_layout(tmp_path: Path) -> None:
    raw = write_kaggle_dir(tmp_path / "raw")
    test = load_test_windows(raw)
    assert test.height == 1 and test["eeg_id"].to_list() == [3911565283]
    assert test["spectrogram_id"].to_list() == [853520] and test["patient_id"].to_list() == [6885]
    assert pl.read_csv(raw / "test.csv").columns == list(TEST_COLUMNS)
    # six probabilities written with 6 decimals sum to 1.000002: a valid submission
    assert validate_raw_dir(raw, splits=("test",)).ok
    (raw / "sample_submission.csv").write_text(f"{SUBMISSION_HEADER}\n3911565283,0.2,0.2,0.2,0.2,0.1,0.11\n")
    report = validate_raw_dir(raw, splits=("test",))
    assert [(p.file, p.field) for p in report.errors] == [("sample_submission.csv", "probabilities")]
    (raw / "sample_submission.csv").write_text("eeg_id,seizure_vote\n3911565283,1.0\n")
    report = validate_raw_dir(raw, splits=("test",))
    assert {p.field for p in report.errors} == {"lpd_vote", "gpd_vote", "lrda_vote", "grda_vote", "other_vote"}


# EEG files: columns, NaNs, lengths --------------------------------------------------------------------------------
def test_eeg_files_nan_and_lengths(tmp_path: Path) -> None:
    raw = write_kaggle_dir(tmp_path / "raw")
    assert EEG_COLUMNS == list(EEG_FILE_COLUMNS)
    eeg = read_hms_eeg(raw / "train_eegs/2277392603.parquet")
    assert eeg.shape == (10_000, 20) and eeg.dtype == np.float32
    assert np.isnan(eeg[:, EEG_COLUMNS.index("O2")]).all()  # NaN channel kept as NaN for the repair step
    assert np.isnan(eeg[1000:1400, 0]).all() and not np.isnan(eeg[:1000, 0]).any()

    rng = np.random.default_rng(5)
    _eeg_file(raw / "train_eegs/2277392603.parquet", 9_999, rng)  # shorter than 50 s
    _eeg_file(raw / "test_eegs/3911565283.parquet", 10_200, rng)  # test EEGs are exactly 50 s
    _spec_file(raw / "test_spectrograms/853520.parquet", _spec_values(299, rng), REAL_SPEC_COLUMNS)
    report = validate_raw_dir(raw)
    [short] = [p for p in report.errors if p.file == "train_eegs/2277392603.parquet"]
    assert "expected >= 10000 rows, got 9999" in short.message
    warned = {p.file: p.message for p in report.warnings}
    assert "expected exactly 10000 rows, got 10200" in warned["test_eegs/3911565283.parquet"]
    assert "expected >= 300 rows, got 299" in warned["test_spectrograms/853520.parquet"]
