"""Serving inputs and windows without a package: every upload kind read into the platform layout, every bad input
refused with a status and a message that names the problem, and windows placed by the package layout."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hms_core.config import load_config
from hms_core.constants import EEG_CHANNELS, EEG_FILE_COLUMNS, SFREQ, bipolar_names
from hms_core.partition import Layout
from hms_core.serving.errors import ServingError
from hms_core.serving.inputs import read_upload, safe_name
from hms_core.serving.windows import iter_window_batches, plan_windows

#: Clinical EDF label spellings (mixed as real exports do): "EEG Fp1-REF", "FP1", "Fp1-Ref", 10-10 names.
CLINICAL = {"Fp1": "EEG Fp1-REF", "F3": "EEG F3-REF", "C3": "C3", "P3": "P3-Ref", "T3": "EEG T7-REF",
            "T5": "EEG P7-REF", "T4": "T8", "T6": "EEG P8-REF", "Fz": "EEG FZ-REF", "Cz": "CZ"}  # fmt: skip


def hms_parquet(n_rows: int = 10_000, seed: int = 0, nan_channels: tuple[str, ...] = ()) -> bytes:
    """An HMS EEG parquet as the competition writes it: 20 float32 columns, 200 Hz, a NaN stretch in Fp1."""
    rng = np.random.default_rng(seed)
    cols = {c: (20 * rng.standard_normal(n_rows)).astype(np.float32) for c in EEG_FILE_COLUMNS}
    cols["Fp1"][1000:1400] = np.nan
    for c in nan_channels:
        cols[c][:] = np.nan
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    return buf.getvalue()


def clinical_edf(path: Path, seconds: int = 60, fs: int = 256, drop: tuple[str, ...] = (), seed: int = 0) -> bytes:
    """An EDF+ written by pyEDFlib with clinical channel names at ``fs`` Hz: a 10 Hz rhythm of 50 uV + noise."""
    import pyedflib

    rng = np.random.default_rng(seed)
    labels = [CLINICAL.get(c, f"EEG {c.upper()}-REF") for c in EEG_CHANNELS if c not in drop] + ["EKG1", "Photic"]
    t = np.arange(fs * seconds) / fs
    writer = pyedflib.EdfWriter(str(path), len(labels), file_type=pyedflib.FILETYPE_EDFPLUS)
    try:
        writer.setSignalHeaders([
            pyedflib.highlevel.make_signal_header(
                label, dimension="uV", sample_frequency=fs, physical_min=-1000, physical_max=1000
            )
            for label in labels
        ])  # fmt: skip
        writer.writeSamples([50 * np.sin(2 * np.pi * 10 * t) + 5 * rng.standard_normal(t.size) for _ in labels])
    finally:
        writer.close()
    return path.read_bytes()


def eeg_json(n: int = 10_000, rate: float = 200.0, channels: list[str] | None = None, seed: int = 0) -> dict:
    channels = list(EEG_CHANNELS) if channels is None else channels
    rng = np.random.default_rng(seed)
    return {
        "sampling_rate": rate,
        "channels": channels,
        "data": np.round(20 * rng.standard_normal((len(channels), n)), 2).tolist(),  # 0.01 uV: a compact body
    }


def refused(data: bytes, filename: str | None, content_type: str | None) -> ServingError:
    with pytest.raises(ServingError) as info:
        read_upload(data, filename, content_type, sampling_rate_range=(100.0, 8192.0))
    err = info.value
    assert "Traceback" not in err.message and 'File "' not in err.message
    return err


def test_hms_parquet_reads_from_memory_in_platform_layout():
    data = hms_parquet(nan_channels=("Cz",))
    rec = read_upload(data, "1234.parquet", "application/octet-stream")
    table = pq.read_table(io.BytesIO(data))
    assert rec.kind == "hms_parquet" and rec.data.shape == (10_000, 20) and rec.data.dtype == np.float32
    for j, c in enumerate(EEG_FILE_COLUMNS):
        np.testing.assert_array_equal(rec.data[:, j], table.column(c).to_numpy(zero_copy_only=False))
    assert rec.missing == ("Cz",)  # NaN throughout counts as missing; Fp1's NaN stretch does not
    assert rec.duration_s == 50.0


def test_clinical_edf_is_mapped_resampled_and_in_microvolts(tmp_path, monkeypatch):
    import tempfile

    made = []
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: made.append(real_mkdtemp(**kw)) or made[-1])
    data = clinical_edf(tmp_path / "clinical.edf", seconds=30, fs=256)
    rec = read_upload(data, "../../etc/passwd", None)
    assert rec.kind == "edf" and rec.source == "passwd" and rec.original_sfreq == 256
    assert rec.data.shape == (30 * SFREQ, 20) and rec.missing == ()
    assert rec.channel_map["Fp1"] == "EEG Fp1-REF" and rec.channel_map["T3"] == "EEG T7-REF"
    assert rec.channel_map["C3"] == "C3" and rec.channel_map["P3"] == "P3-Ref" and rec.channel_map["EKG"] == "EKG1"
    # the 10 Hz rhythm survives resampling at its frequency and amplitude
    x = rec.data[1000:-1000, EEG_FILE_COLUMNS.index("O2")].astype(np.float64)
    spec = np.abs(np.fft.rfft(x))
    freqs = np.fft.rfftfreq(x.size, 1 / SFREQ)
    assert abs(freqs[spec.argmax()] - 10.0) < 0.05
    assert 45 < np.sqrt(2) * x.std() < 56
    assert len(made) == 1 and not Path(made[0]).exists()  # the private temp folder is gone


def test_json_at_200_hz_equals_its_data_and_other_rates_are_resampled():
    obj = eeg_json(n=2000, channels=[*EEG_CHANNELS[::-1], "Photic"])
    rec = read_upload(json.dumps(obj).encode(), None, "application/json")
    assert rec.kind == "json" and rec.ignored == ("Photic",) and rec.missing == () and "EKG" not in rec.channel_map
    for i, c in enumerate(obj["channels"][:-1]):
        np.testing.assert_array_equal(rec.data[:, EEG_FILE_COLUMNS.index(c)], np.float32(obj["data"][i]))
    rec256 = read_upload(json.dumps(eeg_json(n=256 * 10, rate=256)).encode(), None, "application/json")
    assert rec256.data.shape == (2000, 20) and rec256.original_sfreq == 256


BAD_JSON = [
    ({"sampling_rate": 200, "channels": ["Fp1"]}, 422, "missing key(s) ['data']"),
    ({"sampling_rate": "fast", "channels": ["Fp1"], "data": [[1.0]]}, 422, "sampling_rate must be a number"),
    ({"sampling_rate": 20, "channels": ["Fp1"], "data": [[1.0]]}, 422, "sampling rate 20.0 Hz is outside"),
    ({"sampling_rate": 200, "channels": ["Fp1", "F3"], "data": [[1.0, 2.0], [3.0]]}, 422, "same length"),
    ({"sampling_rate": 200, "channels": ["Fp1", "F3"], "data": [[1.0]]}, 422, "list of 2 rows"),
    ({"sampling_rate": 200, "channels": ["Fp1", "FP1"], "data": [[1.0], [2.0]]}, 422, "same channel more than once"),
    ({"sampling_rate": 200, "channels": ["Foo", "Bar"], "data": [[1.0], [2.0]]}, 422, "none of the 19 EEG channels"),
    ({"sampling_rate": 200, "channels": ["Fp1"], "data": [[None, None]]}, 422, "NaN in every sample"),
    ({"sampling_rate": 200, "channels": ["Fp1"], "data": [["a", 1]]}, 422, "must hold numbers"),
    ({"sampling_rate": 200, "channels": ["Fp1"], "data": [[]]}, 422, "holds no samples"),
]  # fmt: skip


@pytest.mark.parametrize(("obj", "status", "needle"), BAD_JSON)
def test_bad_json_is_refused_naming_the_problem(obj, status, needle):
    err = refused(json.dumps(obj).encode(), None, "application/json")
    assert err.status == status and needle in err.message, err.message


def test_infinite_values_are_refused_naming_the_channel():
    obj = eeg_json(n=200)
    obj["data"][EEG_CHANNELS.index("C4")][7] = float("inf")
    err = refused(json.dumps(obj).encode(), None, "application/json")  # json writes Infinity
    assert err.status == 422 and "infinite values in channel(s) ['C4']" in err.message
    buf = io.BytesIO()
    cols = {c: np.zeros(10, np.float32) for c in EEG_FILE_COLUMNS}
    cols["O1"][3] = -np.inf
    pq.write_table(pa.table(cols), buf)
    assert "['O1']" in refused(buf.getvalue(), "x.parquet", None).message


def test_malformed_truncated_and_mistyped_files_are_refused(tmp_path):
    pqt = hms_parquet(n_rows=2000)
    edf = clinical_edf(tmp_path / "r.edf", seconds=10)
    cases = [
        (pqt[: len(pqt) // 2], "half.parquet", None, 400, "truncated parquet file"),
        (pqt[:-12] + b"PAR1", "cut.parquet", None, 400, "could not be read as parquet"),
        (edf[: len(edf) // 2], "half.edf", None, 400, "malformed or truncated EDF file"),
        (edf, "r.edf", "image/png", 415, "content type 'image/png' is not accepted"),
        (edf, "r.edf", "application/json", 415, "says json but the bytes are edf"),
        (b"hello world", "notes.txt", None, 400, "is not an HMS EEG parquet"),
        (b"", "empty.edf", None, 400, "is empty"),
        (b'{"sampling_rate": 200, "chan', None, "application/json", 400, "is not valid JSON"),
    ]
    for data, name, ctype, status, needle in cases:
        err = refused(data, name, ctype)
        assert err.status == status and needle in err.message, (name, err.message)


def test_parquet_with_wrong_columns_names_them():
    buf = io.BytesIO()
    pq.write_table(pa.table({"time": np.arange(10), "value": np.zeros(10)}), buf)
    err = refused(buf.getvalue(), "other.parquet", None)
    assert err.status == 422 and "none of the 19 EEG channels" in err.message and "'value'" in err.message
    buf = io.BytesIO()
    pq.write_table(pa.table({c: ["x"] * 10 if c == "F7" else np.zeros(10) for c in EEG_FILE_COLUMNS}), buf)
    err = refused(buf.getvalue(), "text.parquet", None)
    assert err.status == 422 and "F7 (string)" in err.message and "not numeric" in err.message


def test_file_names_are_shown_never_used_as_paths():
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("C:\\Users\\x\\rec 1.edf") == "rec 1.edf"
    assert safe_name("..") == "upload" and safe_name(None) == "upload"
    assert safe_name("a\x00b\nc.edf") == "a_b_c.edf"


# --- windows: positions from the package layout -----------------------------------------------------------------
@pytest.fixture(scope="module")
def layout() -> Layout:
    """The positions of the tiny profile's layout (the spectrogram axes, which windows do not use, are left out:
    computing them imports the spectral stack)."""
    eeg = load_config("tiny").preprocessing.eeg
    return Layout(
        context_length=eeg.context_length, segment_start=eeg.segment_slice.start, segment_length=eeg.segment_length,
        bipolar=bipolar_names(eeg.include_central_chain), dtype=eeg.dtype, spectrogram_span="segment",
    )  # fmt: skip


def test_a_50_s_file_gives_its_central_window_and_longer_ones_consecutive_windows(layout):
    one = plan_windows(10_000, layout)
    assert one.n_windows == 1 and one.segment_start_s.tolist() == [20.0] and one.segment_end_s.tolist() == [30.0]
    plan = plan_windows(75 * SFREQ + 150, layout)  # 75.75 s: 3 windows, the last 5.75 s are context / tail only
    assert plan.segment_start_s.tolist() == [20.0, 30.0, 40.0] and plan.segment_end_s.tolist() == [
        30.0,
        40.0,
        50.0,
    ]
    rng = np.random.default_rng(1)
    from hms_core.serving.inputs import Recording

    rec = Recording(rng.standard_normal((plan.starts[-1] + 10_000 + 150, 20)).astype(np.float32), "r", "json", 200)
    batches = list(iter_window_batches(rec, plan, batch_size=2))
    assert [b[1].shape for b in batches] == [(2, 10_000, 20), (1, 10_000, 20)]
    np.testing.assert_array_equal(batches[1][1][0], rec.data[4000:14_000])  # window 2 starts 20 s in


def test_the_segment_position_comes_from_the_layout(layout):
    shifted = dataclasses.replace(layout, segment_start=1000)  # a package whose label sits 5-15 s into the context
    assert plan_windows(10_000, shifted).segment_start_s.tolist() == [5.0]
    short = dataclasses.replace(layout, context_length=6000, segment_start=2000)
    plan = plan_windows(8000, short)  # shorter than 50 s but >= the context: used whole, centred context
    assert plan.input_samples == 8000 and plan.segment_start_s.tolist() == [(1000 + 2000) / SFREQ]


def test_too_short_and_too_long_recordings_are_refused(layout):
    with pytest.raises(ServingError, match=r"too short: 9999 samples .* context of 10000 samples") as info:
        plan_windows(9999, layout, "short.edf")
    assert info.value.status == 422
    with pytest.raises(ServingError, match=r"gives 4 windows .* at most 3 \(serving.max_windows\)"):
        plan_windows(10_000 + 3 * 2000, layout, "long.edf", max_windows=3)
