"""Validation of a raw HMS directory (the Kaggle layout) that collects every problem instead of stopping at one.

Layout checked (see ``shared/reference/hms_data.md``)::

    raw_dir/train.csv  test.csv  sample_submission.csv
    raw_dir/train_eegs/{eeg_id}.parquet           raw_dir/test_eegs/{eeg_id}.parquet
    raw_dir/train_spectrograms/{spec_id}.parquet  raw_dir/test_spectrograms/{spec_id}.parquet

Each problem is a :class:`Problem` naming the file, the field (column, or ``row N``) and what was expected vs.
what was found. Errors make :attr:`ValidationReport.ok` false; warnings (NaN-only channels, spectrograms shorter
than their 10-minute window, unreferenced files) are reported but do not block. Parquet files are inspected with
pyarrow in a thread pool: the footer gives columns, types and row counts; the data columns are read once for the
NaN statistics. A truncated or otherwise unreadable file becomes an error, never an exception.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from hms_core.checks import check_option
from hms_core.constants import (
    CLASSES,
    EEG_FILE_COLUMNS,
    EEG_WINDOW_S,
    EEG_WINDOW_SAMPLES,
    SFREQ,
    SPEC_COLUMNS,
    SPEC_ROW_S,
    SPEC_TIME_COLUMN,
    SPEC_WINDOW_ROWS,
    SPEC_WINDOW_S,
    TEST_COLUMNS,
    TRAIN_COLUMNS,
    VOTE_COLUMNS,
)

CheckFiles = Literal["all", "sample", "none"]
CHECK_FILES_MODES: tuple[str, ...] = ("all", "sample", "none")
#: Referenced parquet files inspected per kind in ``check_files="sample"`` mode.
DEFAULT_SAMPLE_SIZE = 200
#: Problems listed in a :class:`DataValidationError` message before "... and N more".
MAX_LISTED_PROBLEMS = 20

INT_COLUMNS: tuple[str, ...] = (
    "eeg_id",
    "eeg_sub_id",
    "spectrogram_id",
    "spectrogram_sub_id",
    "label_id",
    "patient_id",
    *VOTE_COLUMNS,
)
FLOAT_COLUMNS: tuple[str, ...] = ("eeg_label_offset_seconds", "spectrogram_label_offset_seconds")
#: The canonical spectrogram file columns. Files are matched by parsed chain and frequency
#: (:func:`hms_core.eeg_io.match_spectrogram_columns`), not by these exact names.
SPEC_FILE_COLUMNS: tuple[str, ...] = (SPEC_TIME_COLUMN, *SPEC_COLUMNS)
SUBMISSION_COLUMNS: tuple[str, ...] = ("eeg_id", *VOTE_COLUMNS)
#: ``|sum - 1|`` allowed for a submission row: six probabilities written with 6 decimals (``0.166667``) are off by
#: up to 3e-6, so 1e-6 would reject a valid file.
SUBMISSION_SUM_TOLERANCE = 1e-5
FILE_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    # kind: (directory, expected columns; spectrogram columns are matched on the grid, see inspect_parquet)
    "train_eegs": ("train_eegs", EEG_FILE_COLUMNS),
    "train_spectrograms": ("train_spectrograms", SPEC_FILE_COLUMNS),
    "test_eegs": ("test_eegs", EEG_FILE_COLUMNS),
    "test_spectrograms": ("test_spectrograms", SPEC_FILE_COLUMNS),
}


@dataclass(frozen=True)
class Problem:
    """One finding: ``file`` (relative to the raw directory), ``field`` (column or ``row N``), ``message``."""

    file: str
    field: str
    message: str
    row: int | None = None

    def __str__(self) -> str:
        where = self.file + (f" [{self.field}]" if self.field else "")
        return f"{where}: {self.message}"


@dataclass
class ValidationReport:
    """All errors and warnings of one validation run plus summary statistics."""

    root: str = ""
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, file: str, field: str, message: str, row: int | None = None) -> None:
        self.errors.append(Problem(file, field, message, row))

    def warn(self, file: str, field: str, message: str, row: int | None = None) -> None:
        self.warnings.append(Problem(file, field, message, row))

    def extend(self, other: ValidationReport) -> ValidationReport:
        self.errors.extend(other.errors)
        self.warnings.extend(other.warnings)
        self.summary.update(other.summary)
        return self

    def format(self, max_problems: int = 50) -> str:
        """Human-readable report: a status line, then errors and warnings (at most ``max_problems`` each)."""
        status = "OK" if self.ok else "FAILED"
        counts = f"{len(self.errors)} errors, {len(self.warnings)} warnings"
        lines = [f"Validation of '{self.root}': {status} ({counts})"]
        for title, items in (("Errors", self.errors), ("Warnings", self.warnings)):
            if not items:
                continue
            lines.append(f"{title}:")
            lines.extend(f"  - {p}" for p in items[:max_problems])
            if len(items) > max_problems:
                lines.append(f"  ... and {len(items) - max_problems} more")
        if self.summary:
            lines.append("Summary:")
            lines.extend(f"  {k}: {v}" for k, v in self.summary.items())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "ok": self.ok,
            "n_errors": len(self.errors),
            "n_warnings": len(self.warnings),
            "errors": [asdict(p) for p in self.errors],
            "warnings": [asdict(p) for p in self.warnings],
            "summary": self.summary,
        }


class DataValidationError(ValueError):
    """Raised when a :class:`ValidationReport` has errors; the message lists the first problems."""

    def __init__(self, report: ValidationReport, max_listed: int = MAX_LISTED_PROBLEMS) -> None:
        self.report = report
        n = len(report.errors)
        lines = [f"Data validation of '{report.root}' failed with {n} error(s):"]
        lines.extend(f"  - {p}" for p in report.errors[:max_listed])
        if n > max_listed:
            lines.append(f"  ... and {n - max_listed} more errors")
        if report.warnings:
            lines.append(f"({len(report.warnings)} warning(s) not listed)")
        super().__init__("\n".join(lines))


# Tables ---------------------------------------------------------------------------------------------------------


def _rows(mask: pl.Series) -> list[int]:
    return np.flatnonzero(mask.fill_null(True).to_numpy()).tolist()


def _row_note(rows: list[int], limit: int = 5) -> str:
    """``row 3`` / ``rows 3, 8, 9 (and 12 more)``; rows are 0-based data rows (CSV line = row + 2)."""
    shown = ", ".join(str(r) for r in rows[:limit])
    more = f" (and {len(rows) - limit} more)" if len(rows) > limit else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown}{more}"


def read_csv_table(path: str | os.PathLike[str], report: ValidationReport, name: str) -> pl.DataFrame | None:
    """Read a CSV with full-length schema inference; an unreadable file is an error and returns ``None``."""
    path = Path(path)
    if not path.is_file():
        report.error(name, "", f"file is missing (expected at '{path}')")
        return None
    try:
        return pl.read_csv(path, infer_schema_length=None)
    except Exception as e:  # noqa: BLE001 - any parser failure is a finding
        report.error(name, "", f"cannot be read as CSV: {type(e).__name__}: {e}")
        return None


def check_columns(df: pl.DataFrame, expected: Sequence[str], report: ValidationReport, name: str) -> bool:
    """Exact column set and order; returns False when a required column is missing."""
    cols = list(df.columns)
    missing = [c for c in expected if c not in cols]
    extra = [c for c in cols if c not in expected]
    for c in missing:
        report.error(name, c, f"required column is missing; expected columns {list(expected)}, got {cols}")
    for c in extra:
        report.error(name, c, f"unexpected column; expected exactly {list(expected)}")
    if not missing and not extra and cols != list(expected):
        report.warn(name, "", f"columns are in a different order: expected {list(expected)}, got {cols}")
    return not missing


def _check_int_column(df: pl.DataFrame, col: str, report: ValidationReport, name: str) -> None:
    s = df[col]
    if s.null_count():
        report.error(name, col, f"missing values at {_row_note(_rows(s.is_null()))}", row=_rows(s.is_null())[0])
    if s.dtype.is_integer():
        return
    if s.dtype.is_float():
        bad = _rows(s.is_not_null() & (s != s.round(0)))
        if bad:
            report.error(name, col, f"expected integer values, got {s[bad[0]]!r} at {_row_note(bad)}", row=bad[0])
        else:
            report.error(name, col, f"expected an integer column, got {s.dtype} (whole numbers written as floats)")
        return
    cast = s.cast(pl.Int64, strict=False)
    bad = _rows(cast.is_null() & s.is_not_null())
    report.error(
        name, col, f"expected integer values, got {s[bad[0]]!r} at {_row_note(bad)}" if bad else
        f"expected an integer column, got {s.dtype}", row=bad[0] if bad else None,
    )  # fmt: skip


def _check_float_column(df: pl.DataFrame, col: str, report: ValidationReport, name: str) -> None:
    s = df[col]
    if s.null_count():
        report.error(name, col, f"missing values at {_row_note(_rows(s.is_null()))}", row=_rows(s.is_null())[0])
    if s.dtype.is_numeric():
        neg = _rows(s < 0)
        if neg:
            report.error(name, col, f"expected offsets >= 0, got {s[neg[0]]} at {_row_note(neg)}", row=neg[0])
        return
    cast = s.cast(pl.Float64, strict=False)
    bad = _rows(cast.is_null() & s.is_not_null())
    report.error(
        name, col, f"expected numeric (float) values, got {s[bad[0]]!r} at {_row_note(bad)}" if bad else
        f"expected a float column, got {s.dtype}", row=bad[0] if bad else None,
    )  # fmt: skip


def check_train_table(df: pl.DataFrame, report: ValidationReport, name: str = "train.csv") -> bool:
    """Schema, dtypes and value rules of ``train.csv``. Returns True when the table is usable downstream."""
    if not check_columns(df, TRAIN_COLUMNS, report, name):
        return False
    n_err = len(report.errors)
    for col in INT_COLUMNS:
        _check_int_column(df, col, report, name)
    for col in FLOAT_COLUMNS:
        _check_float_column(df, col, report, name)
    cons = df["expert_consensus"]
    bad = _rows(~cons.cast(pl.String).is_in(list(CLASSES)))
    if bad:
        report.error(
            name, "expert_consensus",
            f"Allowed values are {list(CLASSES)}, but got {cons[bad[0]]!r} at {_row_note(bad)}", row=bad[0],
        )  # fmt: skip
    if len(report.errors) > n_err:
        return False
    votes = df.select(VOTE_COLUMNS)
    for col in VOTE_COLUMNS:
        neg = _rows(df[col] < 0)
        if neg:
            report.error(name, col, f"votes must be >= 0, got {df[col][neg[0]]} at {_row_note(neg)}", row=neg[0])
    zero = _rows(votes.sum_horizontal() <= 0)
    if zero:
        msg = f"all six vote columns are 0 at {_row_note(zero)}; expected >= 1 vote"
        report.error(name, "votes", msg, row=zero[0])
    dup = _rows(df["label_id"].is_duplicated())
    if dup:
        report.error(
            name, "label_id", f"label_id must be unique; {df['label_id'][dup[0]]} repeats at {_row_note(dup)}",
            row=dup[0],
        )  # fmt: skip
    multi = df.group_by("eeg_id").agg(pl.col("patient_id").n_unique().alias("n")).filter(pl.col("n") > 1)
    for eeg_id in multi["eeg_id"].sort().to_list()[:MAX_LISTED_PROBLEMS]:
        rows = _rows(df["eeg_id"] == eeg_id)
        msg = f"eeg_id {eeg_id} has several patient_ids at {_row_note(rows)}"
        report.error(name, "patient_id", msg, row=rows[0])
    return len(report.errors) == n_err


def check_test_table(df: pl.DataFrame, report: ValidationReport, name: str = "test.csv") -> bool:
    if not check_columns(df, TEST_COLUMNS, report, name):
        return False
    n_err = len(report.errors)
    for col in TEST_COLUMNS:
        _check_int_column(df, col, report, name)
    if len(report.errors) == n_err:
        dup = _rows(df["eeg_id"].is_duplicated())
        if dup:
            report.error(name, "eeg_id", f"eeg_id must be unique; repeats at {_row_note(dup)}", row=dup[0])
    return len(report.errors) == n_err


def check_submission_table(
    df: pl.DataFrame,
    report: ValidationReport,
    name: str = "sample_submission.csv",
    test_ids: Iterable[int] | None = None,
) -> bool:
    """``eeg_id`` plus six probability columns in [0, 1] summing to 1; ids match ``test.csv`` when given."""
    if not check_columns(df, SUBMISSION_COLUMNS, report, name):
        return False
    n_err = len(report.errors)
    _check_int_column(df, "eeg_id", report, name)
    for col in VOTE_COLUMNS:
        _check_float_column(df, col, report, name)
    if len(report.errors) > n_err:
        return False
    probs = df.select(VOTE_COLUMNS).cast(pl.Float64)
    outside = pl.any_horizontal([(pl.col(c) < 0) | (pl.col(c) > 1) for c in VOTE_COLUMNS])
    out = _rows(probs.select(outside).to_series())
    if out:
        report.error(name, "probabilities", f"values must lie in [0, 1] at {_row_note(out)}", row=out[0])
    sums = probs.sum_horizontal()
    bad = _rows((sums - 1).abs() > SUBMISSION_SUM_TOLERANCE)
    if bad:
        msg = f"rows must sum to 1, got {sums[bad[0]]:.6f} at {_row_note(bad)}"
        report.error(name, "probabilities", msg, row=bad[0])
    if test_ids is not None:
        want, got = set(test_ids), set(df["eeg_id"].to_list())
        if want != got:
            report.error(
                name, "eeg_id",
                f"eeg_ids differ from test.csv: {len(want - got)} missing (e.g. {sorted(want - got)[:3]}), "
                f"{len(got - want)} unexpected (e.g. {sorted(got - want)[:3]})",
            )  # fmt: skip
    return len(report.errors) == n_err


# Parquet files ---------------------------------------------------------------------------------------------------


@dataclass
class FileInfo:
    """What one parquet file holds; ``nan_ratio`` is over the expected data columns."""

    rel: str
    readable: bool = False
    num_rows: int = 0
    nan_ratio: float = float("nan")
    nan_only: list[str] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)


def _spectrogram_columns(names: list[str], info: FileInfo) -> tuple[list[str], list[str]]:
    """Match a spectrogram file's columns on the Kaggle grid: (present columns, canonical order; ignored ones)."""
    from hms_core.eeg_io import match_spectrogram_columns, spectrogram_grid_description

    match = match_spectrogram_columns(names)
    for field_, message in match.problems:
        info.errors.append(Problem(info.rel, field_, f"{message}; expected {spectrogram_grid_description()}"))
    present = ([match.time] if match.time else []) + [c for c in match.columns if c is not None]
    return present, list(match.ignored)


def inspect_parquet(
    path: str | os.PathLike[str], expected: Sequence[str], rel: str | None = None, read_data: bool = True
) -> FileInfo:
    """Inspect one parquet file: readable, expected columns, numeric types, row count and NaN statistics.

    ``expected`` = :data:`SPEC_FILE_COLUMNS` matches the columns on the Kaggle spectrogram grid by parsed chain
    and frequency (any spelling, any order; see :func:`hms_core.eeg_io.match_spectrogram_columns`); any other
    ``expected`` is a list of exact names.

    Never raises for a bad file: problems are collected in the returned :class:`FileInfo`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    info = FileInfo(rel=rel or path.name)
    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
        info.num_rows = pf.metadata.num_rows
    except Exception as e:  # noqa: BLE001 - truncated / not parquet / permission
        info.errors.append(Problem(info.rel, "", f"unreadable parquet file ({type(e).__name__}: {e})"))
        return info
    names = list(schema.names)
    if tuple(expected) == SPEC_FILE_COLUMNS:
        present, extra = _spectrogram_columns(names, info)
    else:
        missing = [c for c in expected if c not in names]
        extra = [c for c in names if c not in expected]
        if missing:
            shown = missing if len(missing) <= 10 else [*missing[:10], f"... ({len(missing)} in all)"]
            msg = f"required column(s) missing; got {len(names)} columns"
            info.errors.append(Problem(info.rel, ", ".join(map(str, shown)), msg))
        present = [c for c in expected if c in names]
    extra = [c for c in extra if not c.startswith("__index_level")]
    if extra:
        info.warnings.append(Problem(info.rel, ", ".join(extra[:10]), "unexpected column(s)"))
    numeric = []
    for c in present:
        t = schema.field(c).type
        if pa.types.is_floating(t) or pa.types.is_integer(t):
            numeric.append(c)
        else:
            info.errors.append(Problem(info.rel, c, f"expected a numeric (float) column, got {t}"))
    if not read_data or not numeric:
        info.readable = True
        return info
    try:
        table = pf.read(columns=numeric)
    except Exception as e:  # noqa: BLE001 - footer fine but a data page is corrupt
        info.errors.append(Problem(info.rel, "", f"unreadable parquet data ({type(e).__name__}: {e})"))
        return info
    info.readable = True
    n = table.num_rows
    data_cols = [c for c in numeric if c != SPEC_TIME_COLUMN]
    total_nan = 0
    infinite: list[str] = []
    for c in data_cols:
        arr = table.column(c).to_numpy()
        k = int(np.isnan(arr).sum()) if arr.dtype.kind == "f" else table.column(c).null_count
        total_nan += k
        if n and k == n:
            info.nan_only.append(c)
        if arr.dtype.kind == "f" and np.isinf(arr).any():
            infinite.append(c)
    if data_cols and n:
        info.nan_ratio = total_nan / (n * len(data_cols))
    if infinite:
        info.warnings.append(Problem(info.rel, ", ".join(infinite[:10]), "infinite (+-inf) samples; the "
                                     "preprocessing treats them as missing (NaN), like a gap"))  # fmt: skip
    return info


def _sample_ids(ids: Sequence[int], k: int, seed: int = 0) -> list[int]:
    ids = sorted(set(ids))
    if len(ids) <= k:
        return ids
    rng = np.random.default_rng(seed)
    return sorted(np.asarray(ids)[rng.choice(len(ids), size=k, replace=False)].tolist())


def _nan_stats(ratios: list[float]) -> dict[str, float | int]:
    r = np.asarray([x for x in ratios if not math.isnan(x)], dtype=np.float64)
    if not r.size:
        return {"files": 0}
    return {
        "files": int(r.size),
        "files_with_nan": int((r > 0).sum()),
        "mean": round(float(r.mean()), 6),
        "median": round(float(np.median(r)), 6),
        "p95": round(float(np.quantile(r, 0.95)), 6),
        "max": round(float(r.max()), 6),
    }


def _default_workers() -> int:
    return min(16, 4 * (os.cpu_count() or 1))


def check_parquet_files(
    raw_dir: Path,
    kind: str,
    ids: Sequence[int],
    report: ValidationReport,
    *,
    min_rows: dict[int, tuple[int, int | None]] | None = None,
    min_rows_default: int,
    exact_rows: int | None = None,
    short_is_error: bool = True,
    check_files: CheckFiles = "all",
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    workers: int | None = None,
    executor: ThreadPoolExecutor | None = None,
) -> dict[str, Any]:
    """Existence (always), then content checks of the referenced files of one kind; returns summary stats.

    ``min_rows`` maps id -> (required rows, CSV row that requires it) for offset-dependent lengths.
    """
    folder, expected = FILE_KINDS[kind]
    d = raw_dir / folder
    ids = sorted({int(i) for i in ids})
    stats: dict[str, Any] = {"referenced": len(ids)}
    if not d.is_dir():
        if ids:
            report.error(folder, "", f"directory is missing; {len(ids)} files are referenced (expected '{d}')")
        return stats
    present = {p.stem for p in d.glob("*.parquet")}
    missing = [i for i in ids if str(i) not in present]
    for i in missing:
        report.error(f"{folder}/{i}.parquet", "", "referenced file does not exist")
    stats["missing"] = len(missing)
    orphans = len(present - {str(i) for i in ids})
    stats["unreferenced"] = orphans
    if orphans:
        report.warn(folder, "", f"{orphans} parquet file(s) are not referenced by the CSV")
    if check_files == "none":
        return stats
    todo = [i for i in ids if str(i) in present]
    if check_files == "sample":
        todo = _sample_ids(todo, sample_size)
    paths = [(i, d / f"{i}.parquet", f"{folder}/{i}.parquet") for i in todo]
    own = executor is None
    ex = executor or ThreadPoolExecutor(max_workers=workers or _default_workers())
    try:
        infos = list(ex.map(lambda t: inspect_parquet(t[1], expected, rel=t[2]), paths))
    finally:
        if own:
            ex.shutdown()
    short = report.error if short_is_error else report.warn
    for (i, _, rel), info in zip(paths, infos):
        report.errors.extend(info.errors)
        report.warnings.extend(info.warnings)
        if not info.readable:
            continue
        if info.nan_only:
            label = "channel(s)" if "eeg" in kind else "column(s)"
            more = [f"... ({len(info.nan_only)} in all)"] if len(info.nan_only) > 10 else []
            shown = info.nan_only[:10] + more
            n_data = len([c for c in expected if c != SPEC_TIME_COLUMN])
            report.warn(rel, ", ".join(shown), f"NaN-only {label} ({len(info.nan_only)} of {n_data})")
        need, row = (min_rows or {}).get(i, (min_rows_default, None))
        need = max(need, min_rows_default)
        if info.num_rows < need:
            where = f" for the window at CSV row {row}" if row is not None else ""
            msg = f"too short{where}: expected >= {need} rows, got {info.num_rows}"
            short(rel, f"row {row}" if row is not None else "rows", msg, row)
        elif exact_rows is not None and info.num_rows != exact_rows:
            report.warn(rel, "rows", f"expected exactly {exact_rows} rows, got {info.num_rows}")
    stats["checked"] = len(infos)
    stats["unreadable"] = sum(not x.readable for x in infos)
    stats["nan_only_files"] = sum(bool(x.nan_only) for x in infos)
    stats["rows_min"] = min((x.num_rows for x in infos if x.readable), default=0)
    stats["nan_ratio"] = _nan_stats([x.nan_ratio for x in infos if x.readable])
    return stats


def _required_rows(
    df: pl.DataFrame, id_col: str, offset_col: str, rows_per_s: float, window_s: int
) -> dict[int, tuple[int, int]]:
    """id -> (rows needed by its largest offset, the CSV row of that offset)."""
    d = df.select(id_col, offset_col).with_row_index("row")
    d = d.sort([id_col, offset_col, "row"]).group_by(id_col, maintain_order=True).last()
    need = np.ceil((d[offset_col].to_numpy().astype(np.float64) + window_s) * rows_per_s).astype(np.int64)
    return {int(i): (int(n), int(r)) for i, n, r in zip(d[id_col].to_list(), need, d["row"].to_list())}


def validate_train_files(
    raw_dir: str | os.PathLike[str],
    train: pl.DataFrame,
    report: ValidationReport,
    *,
    check_files: CheckFiles = "all",
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    workers: int | None = None,
) -> None:
    """EEG/spectrogram files referenced by a validated ``train.csv`` frame: exist, readable, long enough."""
    raw_dir = Path(raw_dir)
    with ThreadPoolExecutor(max_workers=workers or _default_workers()) as ex:
        eeg_need = _required_rows(train, "eeg_id", "eeg_label_offset_seconds", SFREQ, EEG_WINDOW_S)
        report.summary["train_eegs"] = check_parquet_files(
            raw_dir, "train_eegs", list(eeg_need), report, min_rows=eeg_need, min_rows_default=EEG_WINDOW_SAMPLES,
            check_files=check_files, sample_size=sample_size, executor=ex,
        )  # fmt: skip
        spec_need = _required_rows(
            train, "spectrogram_id", "spectrogram_label_offset_seconds", 1 / SPEC_ROW_S, SPEC_WINDOW_S
        )
        report.summary["train_spectrograms"] = check_parquet_files(
            raw_dir, "train_spectrograms", list(spec_need), report, min_rows=spec_need,
            min_rows_default=SPEC_WINDOW_ROWS, short_is_error=False, check_files=check_files,
            sample_size=sample_size, executor=ex,
        )  # fmt: skip


def validate_raw_dir(
    raw_dir: str | os.PathLike[str],
    check_files: CheckFiles = "all",
    *,
    splits: Sequence[str] = ("train", "test"),
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    workers: int | None = None,
) -> ValidationReport:
    """Check a raw HMS directory and return every problem found.

    Parameters
    ----------
    raw_dir : path
        Folder with ``train.csv``, ``test.csv``, ``sample_submission.csv`` and the four parquet folders.
    check_files : "all" | "sample" | "none"
        Which referenced parquet files are opened: all of them, a deterministic subset of ``sample_size`` per
        kind, or none (existence is always checked from the directory listing).
    splits : sequence of "train", "test"
        Which halves to check (the labels step only needs ``("train",)``).
    workers : int | None
        Threads for parquet inspection (default ``min(16, 4 * cpu_count)``).
    """
    check_option("check_files", check_files, CHECK_FILES_MODES)
    for s in splits:
        check_option("splits", s, ("train", "test"))
    t0 = time.perf_counter()
    raw_dir = Path(raw_dir)
    report = ValidationReport(root=str(raw_dir))
    report.summary["check_files"] = check_files
    if not raw_dir.is_dir():
        report.error(str(raw_dir), "", "raw data directory does not exist")
        return report
    if "train" in splits:
        train = read_csv_table(raw_dir / "train.csv", report, "train.csv")
        if train is not None:
            report.summary.update(train_rows=train.height)
            if check_train_table(train, report):
                report.summary.update(
                    train_eeg_ids=train["eeg_id"].n_unique(),
                    train_spectrogram_ids=train["spectrogram_id"].n_unique(),
                    train_patients=train["patient_id"].n_unique(),
                )
                validate_train_files(raw_dir, train, report, check_files=check_files, sample_size=sample_size,
                                     workers=workers)  # fmt: skip
    if "test" in splits:
        test = read_csv_table(raw_dir / "test.csv", report, "test.csv")
        test_ok = test is not None and check_test_table(test, report)
        sub = read_csv_table(raw_dir / "sample_submission.csv", report, "sample_submission.csv")
        if sub is not None:
            check_submission_table(sub, report, test_ids=test["eeg_id"].to_list() if test_ok else None)
        if test_ok:
            report.summary["test_rows"] = test.height
            with ThreadPoolExecutor(max_workers=workers or _default_workers()) as ex:
                report.summary["test_eegs"] = check_parquet_files(
                    raw_dir, "test_eegs", test["eeg_id"].to_list(), report, min_rows_default=EEG_WINDOW_SAMPLES,
                    exact_rows=EEG_WINDOW_SAMPLES, check_files=check_files, sample_size=sample_size, executor=ex,
                )  # fmt: skip
                report.summary["test_spectrograms"] = check_parquet_files(
                    raw_dir, "test_spectrograms", test["spectrogram_id"].to_list(), report,
                    min_rows_default=SPEC_WINDOW_ROWS, exact_rows=SPEC_WINDOW_ROWS, short_is_error=False,
                    check_files=check_files, sample_size=sample_size, executor=ex,
                )  # fmt: skip
    report.summary["n_errors"] = len(report.errors)
    report.summary["n_warnings"] = len(report.warnings)
    report.summary["seconds"] = round(time.perf_counter() - t0, 3)
    return report
