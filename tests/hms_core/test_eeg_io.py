"""Readers: channel-name variants, EDF/BDF round trips with pyEDFlib, resampling, the real pyEDFlib test file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyedflib
import pytest
import scipy.signal as ss

from hms_core.config import PreprocessingConfig
from hms_core.constants import EEG_CHANNELS, EEG_FILE_COLUMNS, SFREQ, SPEC_COLUMNS, bipolar_names
from hms_core.eeg_io import (
    RecordError,
    extract_window,
    normalize_channel_name,
    read_edf,
    read_hms_eeg,
    read_kaggle_spectrogram,
)
from hms_core.preprocess import preprocess_record

REAL_EDF = Path(os.path.dirname(pyedflib.__file__)) / "tests" / "data" / "test_utf8.edf"


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("EEG FP1-REF", "Fp1"), ("Fp1-LE", "Fp1"), ("FP1", "Fp1"), ("fp1", "Fp1"), ("EEG Fz-REF", "Fz"),
        ("EEG T7-REF", "T3"), ("T8", "T4"), ("p7-le", "T5"), ("EEG P8-AVG", "T6"), ("O2-A1", "O2"),
        ("EEG CZ-REF", "Cz"), ("EKG", "EKG"), ("ECG", "EKG"), ("EEG EKG1-REF", "EKG"), ("EKG1", "EKG"),
        ("EEG A1-REF", None), ("Photic", None), ("EEG T1-REF", None),
    ],
)  # fmt: skip
def test_channel_name_variants(label: str, expected: str | None) -> None:
    assert normalize_channel_name(label) == expected


def _write_edf(path: Path, labels: list[str], data: np.ndarray, sfreq: float, unit: str = "uV", bdf: bool = False,
               phys: float = 1000.0) -> None:  # fmt: skip
    ftype = pyedflib.FILETYPE_BDFPLUS if bdf else pyedflib.FILETYPE_EDFPLUS
    dmax = 8388607 if bdf else 32767
    with pyedflib.EdfWriter(str(path), len(labels), file_type=ftype) as w:
        w.setSignalHeaders([
            {"label": lab, "dimension": unit, "sample_frequency": sfreq, "physical_max": phys, "physical_min": -phys,
             "digital_max": dmax, "digital_min": -dmax - 1, "transducer": "", "prefilter": ""}
            for lab in labels
        ])  # fmt: skip
        w.writeSamples([np.ascontiguousarray(d, dtype=np.float64) for d in data])


def _labels(style: str) -> list[str]:
    alias = {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}
    if style == "ref":
        return [f"EEG {ch.upper()}-REF" for ch in EEG_CHANNELS] + ["EEG EKG1-REF"]
    return [f"{alias.get(ch, ch)}-LE" for ch in EEG_CHANNELS] + ["ECG"]


@pytest.mark.parametrize(("style", "bdf"), [("ref", False), ("le_1010", True)])
def test_edf_round_trip(tmp_path: Path, style: str, bdf: bool) -> None:
    rng = np.random.default_rng(0)
    n = 20 * SFREQ
    data = np.clip(rng.normal(0, 40, (20, n)), -900, 900)
    path = tmp_path / ("rec.bdf" if bdf else "rec.edf")
    order = rng.permutation(20)  # channel order in the file differs from ours
    _write_edf(path, [_labels(style)[i] for i in order], data[order], SFREQ, bdf=bdf)
    rec = read_edf(path)
    assert rec.data.shape == (n, 20) and rec.sfreq == SFREQ and rec.missing == ()
    step = 2000.0 / (2**24 if bdf else 2**16)  # quantisation of the physical range
    np.testing.assert_allclose(rec.data, data.T, atol=step)
    assert rec.channel_map["T3"] == ("EEG T3-REF" if style == "ref" else "T7-LE")


def test_edf_resampled_to_200hz_and_units(tmp_path: Path) -> None:
    sf_in = 256
    t = np.arange(30 * sf_in) / sf_in
    sig_mv = 0.05 * np.sin(2 * np.pi * 10 * t)  # 50 uV written in millivolts
    data = np.tile(sig_mv, (20, 1))
    path = tmp_path / "mv.edf"
    _write_edf(path, _labels("ref"), data, sf_in, unit="mV", phys=1.0)
    rec = read_edf(path)
    assert rec.original_sfreq == sf_in and rec.data.shape == (30 * SFREQ, 20)
    x = rec.data[SFREQ:-SFREQ, 0]
    tt = np.arange(SFREQ, 29 * SFREQ) / SFREQ
    np.testing.assert_allclose(x, 50 * np.sin(2 * np.pi * 10 * tt), atol=1.0)


def test_edf_missing_channels_error_lists_them(tmp_path: Path) -> None:
    labels = [lab for lab in _labels("ref") if "T3" not in lab and "O2" not in lab]
    path = tmp_path / "partial.edf"
    _write_edf(path, labels, np.zeros((len(labels), 10 * SFREQ)), SFREQ)
    with pytest.raises(RecordError, match=r"partial\.edf.*\['T3', 'O2'\].*missing_channels: flag"):
        read_edf(path)
    rec = read_edf(path, missing_channels="flag")
    assert rec.missing == ("T3", "O2")
    assert np.isnan(rec.data[:, EEG_FILE_COLUMNS.index("T3")]).all()


def test_real_edf_resampled_128_to_200() -> None:
    rec = read_edf(REAL_EDF, missing_channels="flag")
    raw = pyedflib.EdfReader(str(REAL_EDF))
    try:
        orig, fs = raw.readSignal(0), raw.getSampleFrequency(0)
        dur = raw.getFileDuration()
    finally:
        raw.close()
    assert fs == 128 and rec.original_sfreq == 128
    assert rec.data.shape == (int(dur * SFREQ), 20)
    x = rec.data[:, 0].astype(np.float64)
    # same spectrum below the old Nyquist: Welch PSDs on 1-Hz bins agree within 10 % between 1 and 40 Hz
    f1, p1 = ss.welch(orig, fs, nperseg=128)
    f2, p2 = ss.welch(x, SFREQ, nperseg=200)
    band = (f1 >= 1) & (f1 <= 40)
    np.testing.assert_allclose(p2[np.isin(f2, f1[band])], p1[band], rtol=0.1)
    assert abs(x.std() / orig.std() - 1) < 0.02
    assert len(rec.missing) == 18 and rec.missing[0] == "F3"


def test_real_edf_missing_channels_error_and_flag_path() -> None:
    with pytest.raises(RecordError, match=r"test_utf8\.edf.*lacks channel\(s\) \['F3', 'C3'.*found \['Fp1'\]"):
        read_edf(REAL_EDF)
    rec = read_edf(REAL_EDF, missing_channels="flag")
    out = preprocess_record(rec.data, PreprocessingConfig(), record_id=str(REAL_EDF))
    assert out["quality"].shape == (16,) and not out["quality"].any()  # every derivation lacks a partner of Fp1
    assert out["window_quality"]["n_missing_channels"] == 18
    assert out["window_quality"]["flagged_channels"].split(",")[0] == "F3"
    for key in ("bipolar", "referential", "spec_stft", "spec_mel"):
        assert np.isfinite(out[key].astype(np.float32)).all(), key
    assert out["bipolar"].shape == (len(bipolar_names()), 10000)


def test_read_hms_eeg_columns_and_missing(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    df = pd.DataFrame(rng.normal(size=(500, 20)).astype(np.float32), columns=list(EEG_FILE_COLUMNS))
    df[list(reversed(EEG_FILE_COLUMNS))].to_parquet(tmp_path / "1.parquet")
    np.testing.assert_array_equal(read_hms_eeg(tmp_path / "1.parquet"), df.to_numpy())
    df.drop(columns=["Cz", "EKG"]).to_parquet(tmp_path / "2.parquet")
    with pytest.raises(RecordError, match=r"2\.parquet.*\['Cz'\]"):
        read_hms_eeg(tmp_path / "2.parquet")
    x = read_hms_eeg(tmp_path / "2.parquet", missing_channels="flag")
    assert np.isnan(x[:, EEG_FILE_COLUMNS.index("Cz")]).all() and np.isnan(x[:, -1]).all()
    with pytest.raises(ValueError, match="Allowed values are 'error', 'flag', but got 'skip' instead"):
        read_hms_eeg(tmp_path / "1.parquet", missing_channels="skip")
    with pytest.raises(RecordError, match="does not exist"):
        read_hms_eeg(tmp_path / "404.parquet")


def test_extract_window_too_short_names_record() -> None:
    eeg = np.zeros((12000, 20), np.float32)
    assert extract_window(eeg, 10, "rec-7").shape == (10000, 20)
    with pytest.raises(RecordError, match=r"'rec-7' is too short: it has 12000 samples \(60.0 s.*\[2400, 12400\)"):
        extract_window(eeg, 12, "rec-7")


def test_read_kaggle_spectrogram_window(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    vals = rng.random((320, 400)).astype(np.float32)
    df = pd.DataFrame(vals, columns=list(SPEC_COLUMNS))
    df.insert(0, "time", np.arange(1, 641, 2))
    df.to_parquet(tmp_path / "s.parquet")
    w = read_kaggle_spectrogram(tmp_path / "s.parquet", offset_s=40)  # rows 20 ... 319, then NaN
    assert w.shape == (4, 100, 300)
    col = SPEC_COLUMNS.index("LP_1.17")  # chain 2, freq index 3
    np.testing.assert_array_equal(w[2, 3, :300], vals[20:320, col])
    w2 = read_kaggle_spectrogram(tmp_path / "s.parquet", offset_s=80)
    assert np.isnan(w2[:, :, 280:]).all() and not np.isnan(w2[:, :, :280]).any()
    df.drop(columns=["RL_0.59"]).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(RecordError, match=r"bad\.parquet.*RL_0\.59"):
        read_kaggle_spectrogram(tmp_path / "bad.parquet")
