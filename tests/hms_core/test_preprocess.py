"""The streaming partition builder and the single-record serving path."""

from __future__ import annotations

import numpy as np
import pytest

from hms_core.config import PreprocessingConfig
from hms_core.constants import SFREQ
from hms_core.eeg_io import RecordError
from hms_core.preprocess import preprocess_record, process_windows


def _cfg(**spec: object) -> PreprocessingConfig:
    cfg = PreprocessingConfig()
    cfg.workers = 1
    cfg.spectrogram.types = spec.pop("types", ["stft", "mel"])  # type: ignore[assignment]
    return cfg


def _eeg(rng: np.random.Generator, seconds: int = 60) -> np.ndarray:
    n = seconds * SFREQ
    f = np.fft.rfftfreq(n, 1 / SFREQ)
    f[0] = f[1]
    spec = (rng.normal(size=(20, f.size)) + 1j * rng.normal(size=(20, f.size))) / np.sqrt(f)
    x = np.fft.irfft(spec, n)
    x = 25 * x / x.std(-1, keepdims=True) + 10 * np.sin(2 * np.pi * 10 * np.arange(n) / SFREQ)
    return x.T.astype(np.float32)


def test_bad_inputs_name_the_record() -> None:
    cfg = _cfg(types=["stft"])
    rng = np.random.default_rng(5)
    eeg = _eeg(rng, 50)
    with pytest.raises(RecordError, match=r"'rec-a' is sampled at 256 Hz.*expects 200 Hz"):
        preprocess_record(eeg, cfg, sfreq=256, record_id="rec-a")
    with pytest.raises(RecordError, match=r"'rec-b' is too short: 1000 samples \(5.0 s\)"):
        preprocess_record(eeg[:1000], cfg, record_id="rec-b")
    bad = eeg.copy()
    bad[:, :19] = np.nan
    with pytest.raises(RecordError, match=r"\['rec-c'\] are all NaN"):
        preprocess_record(bad, cfg, record_id="rec-c")
    with pytest.raises(RecordError, match=r"'rec-d'.*\(n_times, 20\).*got \(10000, 19\)"):
        preprocess_record(eeg[:, :19], cfg, record_id="rec-d")
    with pytest.raises(RecordError, match=r"'rec-e' is too short.*\[0, 10000\)"):
        preprocess_record(eeg[:9000], cfg, record_id="rec-e", offset_s=0.0)


def test_quality_flags_and_scaling_in_process_windows() -> None:
    rng = np.random.default_rng(6)
    x = np.stack([_eeg(rng, 50) for _ in range(2)])
    x[0, :, 0] = 3.0  # Fp1 flat
    x[1, 2000:2600, 4] = np.nan  # F7: 3-s gap > max_gap_s and 6 % of the window (kept: below max_nan_fraction)
    x[1, :, 8] += 2000  # Fz: DC offset is removed by the band-pass, not flagged
    out = process_windows(x, _cfg(types=["stft"]), ["a", "b"])
    assert out.window_quality["flagged_channels"].tolist() == ["Fp1", ""]
    assert out.quality[0].sum() == 14 and out.quality[1].all()  # Fp1-F7, Fp1-F3 unusable
    assert out.window_quality["nan_fraction"][1] == pytest.approx(600 / 10000 / 19)
    med = np.median(out.bipolar[1], -1)
    q75, q25 = np.percentile(out.bipolar[1], [75, 25], -1)
    np.testing.assert_allclose(med, 0, atol=0.05)  # quantiles are estimated on every 4th sample
    np.testing.assert_allclose(q75 - q25, 1, atol=0.05)
    assert np.isfinite(out.spectrograms["stft"]).all() and out.features.height == 2


def test_all_nan_window_can_be_kept_flagged() -> None:
    cfg = _cfg(types=["stft"])
    cfg.eeg.all_nan_windows = "flag"
    rng = np.random.default_rng(6)
    bad = _eeg(rng, 50)
    bad[:, :19] = np.nan
    out = preprocess_record(bad, cfg, record_id="rec-f")
    assert np.isfinite(out["bipolar"]).all() and np.all(out["bipolar"] == 0)
    assert not out["quality"].any()
    assert out["window_quality"]["n_missing_channels"] == 19
