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
    assert out["window_quality"]["bad_window"]


def test_non_finite_output_is_zeroed_and_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Policy for a rare bad window: whatever output is not finite becomes 0, the window is flagged
    (``bad_window``) and counted, and the other windows are untouched."""
    import polars as pl

    import hms_core.features
    from hms_core import spectral
    from hms_core.preprocess import QUALITY_COLUMNS

    rng = np.random.default_rng(7)
    x = np.stack([_eeg(rng, 50) for _ in range(3)])
    cfg = _cfg(types=["stft", "mel"])
    clean = process_windows(x, cfg, ["a", "b", "c"])
    assert "bad_window" in QUALITY_COLUMNS and not clean.window_quality["bad_window"].any()
    assert clean.non_finite == {}

    stft = spectral.SPECTROGRAM_REGISTRY["stft"]

    def broken_stft(x: np.ndarray, *args: object, **kw: object) -> tuple[np.ndarray, np.ndarray]:
        power, freqs = stft(x, *args, **kw)
        power[1, 3, 5, 2] = np.nan  # window "b", one cell of one derivation
        return power, freqs

    features = hms_core.features.compute_features

    def broken_features(*args: object, **kw: object) -> pl.DataFrame:
        df = features(*args, **kw)
        return df.with_columns(pl.Series("LL_delta_abs", [1.0, 2.0, np.inf], dtype=pl.Float32))  # window "c"

    monkeypatch.setitem(spectral.SPECTROGRAM_REGISTRY, "stft", broken_stft)
    monkeypatch.setattr(hms_core.features, "compute_features", broken_features)
    out = process_windows(x, cfg, ["a", "b", "c"])
    assert out.window_quality["bad_window"].tolist() == [False, True, True]
    assert out.non_finite["spec_stft"] > 0 and out.non_finite["features"] == 1
    for arr in (out.spectrograms["stft"], out.spectrograms["mel"], out.bipolar, out.referential, out.ekg):
        assert np.isfinite(arr).all()
    # the NaN spread through the chain average and the per-record normalisation of window b: all of it is 0 now
    assert np.all(out.spectrograms["stft"][1] == 0)
    np.testing.assert_array_equal(out.spectrograms["stft"][[0, 2]], clean.spectrograms["stft"][[0, 2]])
    np.testing.assert_array_equal(out.spectrograms["mel"], clean.spectrograms["mel"])
    assert out.features["LL_delta_abs"].to_list() == [1.0, 2.0, 0.0]


def test_outputs_stay_inside_the_storage_dtype() -> None:
    """A near-flat channel with one large excursion: robust scaling by its tiny IQR would exceed float16 (inf on
    disk); channels flatter than the dtype allows are only centred instead."""
    rng = np.random.default_rng(8)
    x = _eeg(rng, 50)
    x[:, 3] = 0.001 * rng.standard_normal(10000).astype(np.float32)  # P3: IQR ~ 1e-3 uV after the band-pass
    x[5000, 3] = 400.0
    out = preprocess_record(x, _cfg(types=["stft"]), record_id="flat-with-a-pop")
    for key in ("referential", "bipolar", "ekg", "spec_stft"):
        assert out[key].dtype == np.float16 and np.isfinite(out[key]).all(), key
    assert not out["window_quality"]["bad_window"]


def test_channel_major_input_without_copy_gives_the_same_outputs() -> None:
    """The builder's path (a transposed view of a channel-major buffer, copy=False) gives exactly what the
    default path gives, and the default path leaves a caller's channel-major buffer untouched."""
    cfg = _cfg(types=["stft"])
    rng = np.random.default_rng(11)
    w = np.stack([_eeg(rng, 50).T for _ in range(2)])  # (B, 20, n_times) channel-major
    w[0, 3, 100:150] = np.nan
    before = w.copy()
    ref = process_windows(np.ascontiguousarray(w.transpose(0, 2, 1)), cfg)
    kept = process_windows(w.transpose(0, 2, 1), cfg)
    assert np.array_equal(w, before, equal_nan=True)
    fast = process_windows(w.transpose(0, 2, 1), cfg, copy=False)
    for a, b in ((ref, kept), (ref, fast)):
        assert np.array_equal(a.bipolar, b.bipolar) and np.array_equal(
            a.spectrograms["stft"], b.spectrograms["stft"]
        )
        assert a.features.equals(b.features)


def test_sub_batches_give_the_outputs_of_one_batch(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The builder transforms and writes SUB_BATCH windows at a time: with 2 (three sub-batches of a 5-row batch,
    rows of one file split across them) the partition equals the one built in a single sub-batch, row for row
    (up to float32 rounding: pocketfft and BLAS round a row differently with the batch it is in)."""
    import pandas as pd

    from hms_core import partition
    from hms_core.constants import EEG_FILE_COLUMNS

    rng = np.random.default_rng(12)
    (tmp_path / "eegs").mkdir()
    for i in range(2):
        x = _eeg(rng)
        x[1000:1040, 3 + i] = np.nan
        pd.DataFrame(x, columns=list(EEG_FILE_COLUMNS)).to_parquet(tmp_path / "eegs" / f"{i}.parquet")
    rows = pd.DataFrame({"eeg_id": [0, 1, 0, 1, 0], "eeg_label_offset_seconds": [0.0, 0.0, 4.0, 7.0, 9.0],
                         "patient_id": [1, 2, 1, 2, 1], "fold": 0})  # fmt: skip
    cfg = _cfg(types=["stft", "wavelet"])
    parts = {}
    for sub in (2, 100):
        monkeypatch.setattr(partition, "SUB_BATCH", sub)
        partition.build_partition(rows, tmp_path / "eegs", None, tmp_path / f"p{sub}", cfg, batch_size=5)
        parts[sub] = partition.load_partition(tmp_path / f"p{sub}")
    a, b = parts[2], parts[100]
    assert a.array_names == b.array_names and len(a) == 5
    for name in a.array_names:
        x, y = np.asarray(a.array(name), np.float32), np.asarray(b.array(name), np.float32)
        np.testing.assert_allclose(x, y, rtol=2e-3, atol=2e-3 * np.abs(y).max(), err_msg=name)
    pd.testing.assert_frame_equal(a.index, b.index)
    pd.testing.assert_frame_equal(a.features(), b.features(), rtol=1e-4)
