"""Property-based fuzzing (hypothesis) of the recording readers: HMS parquet (:func:`hms_core.eeg_io.read_hms_eeg`)
and EDF/BDF (:func:`hms_core.recording.open_recording` + ``read``) fed damaged bytes (truncated, overwritten,
header fields replaced) and tables of the wrong shape (columns missing, reordered, of other dtypes, empty, NaN and
inf values). A reader either returns what it promises (float32, the platform's channel layout) or raises
:class:`~hms_core.eeg_io.RecordError` naming the file; never another exception. A short run always; ``-m fuzz`` a
long one."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hms_core.constants import EEG_FILE_COLUMNS
from hms_core.eeg_io import RecordError, read_hms_eeg
from hms_core.recording import open_recording
from tests.reliability import tally

SHORT = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))  # fmt: skip
LONG = settings(max_examples=600, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def _parquet(n: int = 400, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    pq.write_table(pa.table({c: rng.normal(0, 30, n).astype(np.float32) for c in EEG_FILE_COLUMNS}), buf)
    return buf.getvalue()


def _edf(seconds: int = 4, fs: int = 200) -> bytes:
    import pyedflib

    labels = [f"EEG {c}-REF" for c in EEG_FILE_COLUMNS[:19]] + ["EKG1"]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.edf"
        w = pyedflib.EdfWriter(str(path), len(labels), file_type=pyedflib.FILETYPE_EDFPLUS)
        w.setSignalHeaders([{"label": lab, "dimension": "uV", "sample_frequency": fs, "physical_max": 3200,
                             "physical_min": -3200, "digital_max": 32767, "digital_min": -32768}
                            for lab in labels])  # fmt: skip
        rng = np.random.default_rng(0)
        w.writeSamples([np.clip(rng.normal(0, 30, seconds * fs), -3200, 3200) for _ in labels])
        w.close()
        return path.read_bytes()


PARQUET = _parquet()
EDF = _edf()


@st.composite
def damaged(draw, good: bytes, header: int) -> bytes:
    """``good`` truncated, with byte runs overwritten (often in its first ``header`` bytes), or with bytes
    spliced in."""
    data = bytearray(good)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "overwrite", "header", "insert"]))
        if kind == "truncate":
            data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
        elif kind == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif data:
            hi = min(len(data), header) if kind == "header" else len(data)
            at = draw(st.integers(0, max(0, hi - 1)))
            chunk = draw(st.one_of(st.binary(min_size=1, max_size=16),
                                   st.text("0123456789 -.eE+", min_size=1, max_size=8).map(str.encode)))  # fmt: skip
            data[at : at + len(chunk)] = chunk
    return bytes(data)


def _column(draw, n: int):
    kind = draw(st.sampled_from(["f32", "f64", "int", "str", "bool", "null", "special"]))
    if kind == "f32":
        return pa.array(np.random.default_rng(n).normal(0, 30, n).astype(np.float32))
    if kind == "f64":
        return pa.array(np.full(n, draw(st.floats(allow_nan=True, allow_infinity=True))))
    if kind == "int":
        return pa.array(np.arange(n, dtype=np.int64) * draw(st.integers(-(2**40), 2**40)))
    if kind == "str":
        return pa.array(["a"] * n)
    if kind == "bool":
        return pa.array([True] * n)
    if kind == "null":
        return pa.nulls(n, pa.float32())
    return pa.array(np.array([np.nan, np.inf, -np.inf, 1e38, -1e38][: max(1, min(n, 5))] * n, np.float64)[:n])


@st.composite
def odd_tables(draw) -> bytes:
    """HMS-like tables with columns dropped, renamed, reordered or of other types, any length (0 included)."""
    n = draw(st.sampled_from([0, 1, 7, 400]))
    names = list(EEG_FILE_COLUMNS)
    names = draw(st.permutations(names))
    names = names[: draw(st.integers(0, len(names)))]
    extra = draw(st.lists(st.sampled_from(["fp1", "FP1", "EEG Fp1", "time", "", "Fp1 "]), max_size=3, unique=True))
    cols = {name: _column(draw, n) for name in [*names, *extra] if name not in ()}
    buf = io.BytesIO()
    pq.write_table(pa.table(cols) if cols else pa.table({"x": pa.array([], pa.float32())}), buf)
    return buf.getvalue()


def _read_parquet(tmp: Path, data: bytes) -> None:
    path = tmp / "rec.parquet"
    path.write_bytes(data)
    tally.add("reader_fuzz", bad_inputs_tried=1)
    try:
        for mode in ("error", "flag"):
            x = read_hms_eeg(path, missing_channels=mode)
            assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == len(EEG_FILE_COLUMNS)
    except RecordError as e:
        assert str(path) in str(e), f"the error does not name the file: {e}"
    tally.add("reader_fuzz", bad_inputs_rejected_cleanly=1)  # read, or refused with a RecordError naming it


def _read_edf(tmp: Path, data: bytes) -> None:
    path = tmp / "rec.edf"
    path.write_bytes(data)
    tally.add("reader_fuzz", bad_inputs_tried=1)
    try:
        with open_recording(path) as rec:
            x = rec.read(0, rec.duration_s)
            assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == len(EEG_FILE_COLUMNS)
    except RecordError as e:
        assert str(path) in str(e), f"the error does not name the file: {e}"
    tally.add("reader_fuzz", bad_inputs_rejected_cleanly=1)


@pytest.fixture
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def test_damaged_parquet_is_read_or_refused_clearly(tmp):
    SHORT(given(damaged(PARQUET, 64))(lambda data: _read_parquet(tmp, data)))()


def test_odd_tables_are_read_or_refused_clearly(tmp):
    SHORT(given(odd_tables())(lambda data: _read_parquet(tmp, data)))()


def test_damaged_edf_is_read_or_refused_clearly(tmp):
    SHORT(given(damaged(EDF, 256 * 21))(lambda data: _read_edf(tmp, data)))()


@pytest.mark.fuzz
def test_readers_long(tmp):
    LONG(given(damaged(PARQUET, 64))(lambda data: _read_parquet(tmp, data)))()
    LONG(given(odd_tables())(lambda data: _read_parquet(tmp, data)))()
    LONG(given(damaged(EDF, 256 * 21))(lambda data: _read_edf(tmp, data)))()
