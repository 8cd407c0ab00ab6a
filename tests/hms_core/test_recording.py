"""The streaming reader for long recordings: resampling across chunk boundaries, channel mapping, units, missing
channels, the MNE path, the real pyEDFlib file, and a clear RecordError for every kind of bad file."""

from __future__ import annotations

import datetime as dt
import itertools
import os
from pathlib import Path

import numpy as np
import pyedflib
import pytest

from hms_core.constants import EEG_CHANNELS, EEG_FILE_COLUMNS, SFREQ
from hms_core.eeg_io import RecordError, normalize_channel_name, read_edf, resample
from hms_core.recording import open_recording

REAL_EDF = Path(os.path.dirname(pyedflib.__file__)) / "tests" / "data" / "test_utf8.edf"
CLINICAL = [f"EEG {ch.upper()}-REF" for ch in EEG_CHANNELS] + ["ECG EKG"]
START = dt.datetime(2026, 3, 4, 22, 15, 30)


def _write(path: Path, labels: list[str], data: np.ndarray | None, sfreq: float, unit: str = "uV",
           phys: float = 1000.0) -> Path:  # fmt: skip
    with pyedflib.EdfWriter(str(path), len(labels), file_type=pyedflib.FILETYPE_EDFPLUS) as w:
        w.setSignalHeaders([
            {"label": lab, "dimension": unit, "sample_frequency": sfreq, "physical_max": phys,
             "physical_min": -phys, "digital_max": 32767, "digital_min": -32768, "transducer": "", "prefilter": ""}
            for lab in labels
        ])  # fmt: skip
        w.setStartdatetime(START)
        if data is not None:
            w.writeSamples([np.ascontiguousarray(d, dtype=np.float64) for d in data])
    return path


def _sines(n_s: int, sfreq: float, freqs: np.ndarray, amp: float = 80.0) -> np.ndarray:
    t = np.arange(int(n_s * sfreq)) / sfreq
    return amp * np.sin(2 * np.pi * freqs[:, None] * t[None, :])


def _pyedflib_resampled(path: Path) -> np.ndarray:
    """Every mapped channel read whole by pyEDFlib, in microvolts, resampled with eeg_io.resample in one go."""
    r = pyedflib.EdfReader(str(path))
    try:
        out = None
        for i, label in enumerate(r.getSignalLabels()):
            name = normalize_channel_name(label)
            scale = {"mv": 1e3, "uv": 1.0}[r.getPhysicalDimension(i).strip().lower()]
            y = resample(r.readSignal(i) * scale, r.getSampleFrequency(i), SFREQ)
            if out is None:
                out = np.full((len(y), 20), np.nan)
            out[:, EEG_FILE_COLUMNS.index(name)] = y[: len(out)]
    finally:
        r.close()
    return out


@pytest.fixture(scope="module")
def edf256(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 s at 256 Hz, clinical labels in a shuffled order, one sine per channel (3 + 0.4 k Hz), in mV."""
    order = np.random.default_rng(0).permutation(len(CLINICAL))
    data = _sines(120, 256, 3.0 + 0.4 * np.arange(len(CLINICAL))) / 1000.0
    path = tmp_path_factory.mktemp("rec") / "clinical_256.edf"
    return _write(path, [CLINICAL[i] for i in order], data[order], 256, unit="mV", phys=1.0)


def test_resampled_256_to_200_in_microvolts_with_clinical_names(edf256: Path) -> None:
    with open_recording(edf256) as rec:
        assert rec.backend == "pyedflib" and rec.original_sfreq == 256 and rec.sfreq == SFREQ
        assert rec.duration_s == 120 and rec.n_times == 120 * SFREQ
        assert rec.channels == EEG_FILE_COLUMNS and rec.missing == ()
        assert rec.channel_map["T3"] == "EEG T3-REF" and rec.start_datetime == START
        x = rec.read(10, 20)
    assert x.shape == (10 * SFREQ, 20) and x.dtype == np.float32
    t = (10 * SFREQ + np.arange(10 * SFREQ)) / SFREQ
    expected = 80.0 * np.sin(2 * np.pi * (3.0 + 0.4 * np.arange(20))[None, :] * t[:, None])
    np.testing.assert_allclose(x, expected, atol=0.5)  # 16-bit steps of 2 mV / 65536 = 0.03 uV + filter ripple


def test_chunks_join_exactly_across_boundaries(edf256: Path) -> None:
    with open_recording(edf256) as rec:
        whole = rec.read(0, rec.duration_s)
        cuts = [0.0, 7.3, 7.31, 33.333, 60.0, 91.7, 120.0]
        parts = np.concatenate([rec.read(a, b) for a, b in itertools.pairwise(cuts)])
    full = _pyedflib_resampled(edf256)  # an independent reference: pyEDFlib's samples, resampled in one go
    assert parts.shape == whole.shape == (120 * SFREQ, 20)
    np.testing.assert_allclose(parts, whole, atol=1e-3)
    np.testing.assert_allclose(whole, full, atol=1e-3)
    np.testing.assert_allclose(read_edf(edf256).data, whole, atol=1e-6)  # read_edf uses this reader
    # and it is the sine: no step or ripple at the cut points (interior; the file's two ends carry filter edges)
    t = np.arange(whole.shape[0]) / SFREQ
    err = np.abs(whole[:, 0] - 80.0 * np.sin(2 * np.pi * 3.0 * t))[SFREQ:-SFREQ]
    assert err.max() < 0.5


def test_missing_channels_are_nan_and_minimum_is_enforced(tmp_path: Path) -> None:
    keep = [lab for lab in CLINICAL if "T3" not in lab and "O2" not in lab]
    path = _write(tmp_path / "partial.edf", keep, np.zeros((len(keep), 10 * SFREQ)), SFREQ)
    with open_recording(path, min_eeg_channels=17) as rec:
        assert rec.missing == ("T3", "O2") and "T3" not in rec.channels
        x = rec.read(0, 10)
    assert np.isnan(x[:, EEG_FILE_COLUMNS.index("T3")]).all() and not np.isnan(x[:, 0]).any()
    with pytest.raises(RecordError, match=r"partial\.edf' has 17 of the 19 EEG channels.*at least 18.*'T3', 'O2'"):
        open_recording(path, min_eeg_channels=18)


def test_real_pyedflib_file_one_channel() -> None:
    with open_recording(REAL_EDF) as rec:
        assert rec.channels == ("Fp1",) and len(rec.missing) == 18 and rec.original_sfreq == 128
        x = rec.read(100, 160)
    ref = _pyedflib_resampled(REAL_EDF)[100 * SFREQ : 160 * SFREQ]
    np.testing.assert_allclose(x, ref, atol=1e-3, equal_nan=True)
    assert np.isnan(x[:, 1:]).all() and np.isfinite(x[:, 0]).all() and x[:, 0].std() > 1.0
    with pytest.raises(RecordError, match=r"test_utf8\.edf' has 1 of the 19 EEG channels"):
        open_recording(REAL_EDF, min_eeg_channels=15)


def test_other_formats_through_mne(tmp_path: Path) -> None:
    import mne

    sf = 250.0
    data = _sines(30, sf, np.array([5.0, 7.0, 1.0])) * 1e-6  # volts, as MNE stores EEG
    info = mne.create_info(["Fp1", "T7", "ECG"], sf, ch_types=["eeg", "eeg", "ecg"])
    path = tmp_path / "rec_raw.fif"
    mne.io.RawArray(data, info, verbose="error").save(path, verbose="error")
    with open_recording(path) as rec:
        assert (
            rec.backend == "mne" and rec.channels == ("Fp1", "T3", "EKG") and rec.duration_s == pytest.approx(30)
        )
        x = rec.read(5, 15)
    t = np.arange(5 * SFREQ, 15 * SFREQ) / SFREQ
    np.testing.assert_allclose(x[:, EEG_FILE_COLUMNS.index("T3")], 80 * np.sin(2 * np.pi * 7 * t), atol=0.5)


def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    ok = _write(tmp / "ok.edf", CLINICAL, _sines(20, SFREQ, np.full(20, 4.0)), SFREQ)
    raw = ok.read_bytes()
    out = {}
    trunc = tmp / "truncated.edf"
    trunc.write_bytes(raw[: len(raw) * 2 // 3])
    out["truncated"] = (trunc, r"truncated\.edf'.*truncated or padded")
    corrupt = tmp / "corrupt.edf"
    corrupt.write_bytes(b"XYZ" + raw[3:])
    out["corrupt header"] = (corrupt, r"corrupt\.edf'.*(corrupt|version)")
    out["wrong rate"] = (_write(tmp / "rate.edf", CLINICAL, _sines(20, 10, np.full(20, 1.0)), 10),
                         r"rate\.edf'.*implausible sampling rate.*10 Hz.*50-20000 Hz")  # fmt: skip
    out["no EEG channels"] = (_write(tmp / "noeeg.edf", ["Photic", "Resp", "SpO2"], np.zeros((3, 10 * SFREQ)), SFREQ),
                              r"noeeg\.edf' has no EEG channel.*'Photic'")  # fmt: skip
    out["0-length"] = (_write(tmp / "empty.edf", CLINICAL, None, SFREQ), r"empty\.edf'.*length 0")
    zero = tmp / "zero_bytes.edf"
    zero.write_bytes(b"")
    out["0 bytes"] = (zero, r"zero_bytes\.edf' is an empty file")
    out["not there"] = (tmp / "nope.edf", r"nope\.edf' does not exist")
    return out


def test_bad_files_give_clear_errors(tmp_path: Path) -> None:
    for path, pattern in _bad_files(tmp_path).values():
        with pytest.raises(RecordError, match=pattern):
            open_recording(path)


def test_read_rejects_an_inverted_stretch(edf256: Path) -> None:
    with open_recording(edf256) as rec:
        with pytest.raises(RecordError, match=r"clinical_256\.edf': invalid stretch \[20, 10\)"):
            rec.read(20, 10)
        assert rec.read(115, 130).shape == (5 * SFREQ, 20)  # clipped at the end


def test_bdf_24_bit_and_mixed_rates_match_pyedflib(tmp_path: Path) -> None:
    """The numpy record reader against pyEDFlib's own: BDF (24-bit, negative values) with two sampling rates."""
    path = tmp_path / "mixed.bdf"
    rng = np.random.default_rng(1)
    labels = ["Fp1", "C3", "O2"]
    rates = [512, 512, 256]
    data = [np.clip(rng.normal(0, 300, 20 * r), -999, 999) for r in rates]
    with pyedflib.EdfWriter(str(path), 3, file_type=pyedflib.FILETYPE_BDFPLUS) as w:
        w.setSignalHeaders([
            {"label": lab, "dimension": "uV", "sample_frequency": r, "physical_max": 1000.0,
             "physical_min": -1000.0, "digital_max": 8388607, "digital_min": -8388608, "transducer": "",
             "prefilter": ""} for lab, r in zip(labels, rates)
        ])  # fmt: skip
        w.writeSamples(data)
    r = pyedflib.EdfReader(str(path))
    try:
        ref = [r.readSignal(i) for i in range(3)]
    finally:
        r.close()
    with open_recording(path) as rec:
        raw = [rec._raw(ch, 0, ch.n_samples) for ch in sorted(rec._chans, key=lambda c: c.index)]
        x = rec.read(0, 20)
    for got, want in zip(raw, ref):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert (np.concatenate(raw) < 0).any() and x.shape == (20 * SFREQ, 20)
    assert np.isfinite(x[:, [EEG_FILE_COLUMNS.index(c) for c in labels]]).all()
