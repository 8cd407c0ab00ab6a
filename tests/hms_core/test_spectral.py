"""Spectrogram tests: every registered transform peaks at a known sinusoid; axes, chains and scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hms_core.config import SpectrogramConfig
from hms_core.constants import SFREQ, SPECTROGRAM_TYPES
from hms_core.spectral import (
    SPECTROGRAM_REGISTRY,
    chain_average,
    compute_spectrogram,
    kaggle_spectrogram_image,
    log_normalize,
    spectrogram_axes,
)

CFG = SpectrogramConfig()
T = np.arange(2000) / SFREQ


def test_registry_holds_the_config_types() -> None:
    assert tuple(SPECTROGRAM_REGISTRY) == SPECTROGRAM_TYPES == ("stft", "multitaper", "wavelet", "mel")
    assert set(CFG.types) <= set(SPECTROGRAM_REGISTRY)


@pytest.mark.parametrize("name", sorted(SPECTROGRAM_REGISTRY))
@pytest.mark.parametrize("freq", [3.0, 12.0, 31.0])
def test_peak_at_known_sinusoid(name: str, freq: float) -> None:
    rng = np.random.default_rng(0)
    x = (50 * np.sin(2 * np.pi * freq * T) + rng.normal(0, 1, (2, T.size))).astype(np.float32)
    power, freqs = compute_spectrogram(name, x, CFG)
    assert power.shape[:2] == (2, len(freqs))
    assert np.all(np.isfinite(power)) and np.all(power >= 0)
    peak = freqs[power[:, :, 2:-2].mean(axis=(0, 2)).argmax()]
    # tolerance: one STFT bin (0.39 Hz), or the filter / wavelet spacing near f
    tol = max(SFREQ / CFG.nfft, 0.06 * freq)
    assert abs(peak - freq) <= tol, f"{name}: peak at {peak:.2f} Hz, expected {freq} Hz"


@pytest.mark.parametrize("name", sorted(SPECTROGRAM_REGISTRY))
def test_frequency_range_and_axes(name: str) -> None:
    axes = spectrogram_axes(name, CFG, 2000)
    assert axes.freqs.min() >= CFG.freq_min - 1e-6 and axes.freqs.max() <= CFG.freq_max + 1e-6
    assert np.all(np.diff(axes.freqs) > 0)
    hop = CFG.window_size - CFG.overlap
    assert axes.shape[1] == 1 + 2000 // hop
    power, _ = compute_spectrogram(name, np.zeros((3, 5, 2000), np.float32), CFG)
    assert power.shape == (3, 5, *axes.shape)


def test_stft_psd_scaling_matches_parseval() -> None:
    """Integrated PSD of a 10-Hz sinusoid of amplitude A is its power A^2 / 2."""
    x = (10 * np.sin(2 * np.pi * 10 * T)).astype(np.float32)[None]
    cfg = SpectrogramConfig(freq_min=0.0, freq_max=100.0)
    power, freqs = compute_spectrogram("stft", x, cfg)
    total = power[0, :, 2:-2].mean(-1).sum() * (freqs[1] - freqs[0])
    assert abs(total / 50.0 - 1) < 0.05
    mt, _ = compute_spectrogram("multitaper", x, cfg)
    assert abs(mt[0, :, 2:-2].mean(-1).sum() * (freqs[1] - freqs[0]) / 50.0 - 1) < 0.05


def test_mel_filterbank_has_no_empty_filters() -> None:
    from hms_core.spectral import _mel_filterbank

    fb, _lo, hi = _mel_filterbank(float(SFREQ), CFG.mel_nfft, CFG.freq_min, CFG.freq_max, CFG.n_mels)
    assert (fb.sum(0) > 0).all() and hi <= CFG.mel_nfft // 2 + 1


def test_mel_matches_torchaudio_transform() -> None:
    import torchaudio

    hop = CFG.window_size - CFG.overlap
    tr = torchaudio.transforms.MelSpectrogram(
        sample_rate=SFREQ, n_fft=CFG.mel_nfft, win_length=CFG.window_size, hop_length=hop, f_min=CFG.freq_min,
        f_max=CFG.freq_max, n_mels=CFG.n_mels, power=2.0, center=True, pad_mode="reflect", norm="slaney",
        mel_scale="htk",
    )  # fmt: skip
    x = np.random.default_rng(3).normal(0, 30, (3, 2000)).astype(np.float32)
    ours, _ = compute_spectrogram("mel", x, CFG)
    ref = tr(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-3 * ref.max())


def test_unknown_type_error_lists_allowed() -> None:
    with pytest.raises(ValueError, match="Allowed values are 'stft'.*but got 'cqt' instead"):
        compute_spectrogram("cqt", np.zeros((1, 2000), np.float32), CFG)


def test_chain_average_uses_only_usable_derivations() -> None:
    power = np.zeros((1, 16, 2, 3), np.float32)
    power[0, 0] = 4.0  # LL first derivation (bad)
    power[0, 1:4] = 1.0
    q = np.ones((1, 16), bool)
    np.testing.assert_allclose(chain_average(power)[0, 0], 7 / 4)
    q[0, 0] = False
    np.testing.assert_allclose(chain_average(power, q)[0, 0], 1.0)
    q[0, :4] = False
    np.testing.assert_allclose(chain_average(power, q)[0, 0], 0.0)


def test_log_normalize_standardises_per_record() -> None:
    rng = np.random.default_rng(1)
    p = (rng.gamma(2.0, size=(1, 4, 10, 8)) * np.array([1, 100, 1e4])[:, None, None, None]).astype(np.float32)
    z = log_normalize(p)
    np.testing.assert_allclose(z.mean(axis=(1, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=(1, 2, 3)), 1, atol=1e-3)
    np.testing.assert_allclose(z[0], z[2], atol=1e-3)  # invariant to the overall gain


def test_kaggle_image_fills_nan_logs_and_clips() -> None:
    raw = np.full((2, 4, 100, 300), 5.0, np.float32)
    raw[0, :, :, 250:] = np.nan
    raw[1, 0, 0, 0] = 1e9  # clipped at e^8
    img = kaggle_spectrogram_image(raw)
    assert img.shape == raw.shape and np.isfinite(img).all()
    np.testing.assert_allclose(img.mean(axis=(1, 2, 3)), 0, atol=1e-4)
    assert img[0, 0, 0, 0] > img[0, 0, 0, 299]  # NaN -> 0 -> e^-4: lowest value


def test_wavelet_power_is_converged_in_wavelet_sampling() -> None:
    """The CWT rows agree with a much finer-sampled wavelet (2**18 points); pywt's default 2**12 misses by >100%
    at 0.5-0.8 Hz on white noise (zipper artifact), which this test would catch."""
    import pywt

    from hms_core.spectral import MORLET_PRECISION, morlet_power

    rng = np.random.default_rng(0)
    x = rng.normal(0, 30, (4, 2000)).astype(np.float32)
    freqs = np.geomspace(0.5, 50.0, 24)
    ours, _ = morlet_power(x, SFREQ, freqs, hop=128, wavelet=CFG.wavelet)
    scales = pywt.frequency2scale(CFG.wavelet, freqs / SFREQ)
    coef, _ = pywt.cwt(x, scales, CFG.wavelet, method="fft", precision=18)
    ref = (np.abs(coef) ** 2)[..., 64:1984].reshape(len(freqs), 4, 15, 128).mean(-1).transpose(1, 0, 2)
    err = np.linalg.norm(ours[..., 1:] - ref, axis=-1) / np.linalg.norm(ref, axis=-1)  # interior frames 1..15
    assert err.max() < 0.02, f"row {np.unravel_index(err.argmax(), err.shape)}: relative error {err.max():.3f}"
    assert MORLET_PRECISION >= 14


def test_fast_morlet_matches_pywavelets_cwt_including_edges() -> None:
    """The band-limited torch CWT equals the frame-averaged power of ``pywt.cwt`` (edges included) within 2 %,
    for the segment and for a 50 s span (another FFT grouping), and a lone sinusoid peaks at its frequency."""
    from hms_core.spectral import morlet_power, morlet_power_reference

    rng = np.random.default_rng(1)
    for n in (2000, 10000):
        x = rng.normal(0, 30, (3, n)).astype(np.float32)
        freqs = np.geomspace(0.5, 50.0, 20)
        fast, f1 = morlet_power(x, SFREQ, freqs, hop=128)
        ref, f2 = morlet_power_reference(x, SFREQ, freqs, hop=128)
        assert fast.shape == ref.shape == (3, 20, 1 + n // 128) and np.allclose(f1, f2)
        err = np.linalg.norm(fast - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert err.max() < 0.02, f"n={n}: row error {err.max():.4f}"
    t = np.arange(2000) / SFREQ
    power, freqs = morlet_power(np.sin(2 * np.pi * 7.0 * t)[None].astype(np.float32), SFREQ)
    assert abs(freqs[power[0, :, 5:11].mean(-1).argmax()] - 7.0) < 0.6


def test_single_spike_gives_no_negative_wavelet_power() -> None:
    """Regression: one 500-uV sample in a 10-s derivation gave 338 negative CWT cells (the frame means came from a
    truncated spectrum of |c|^2 that rings below zero), so log_normalize made NaN and the fold failed."""
    from hms_core.spectral import morlet_power_reference

    x = np.zeros((1, 2000), np.float32)
    x[0, 1000] = 500.0
    power, _ = compute_spectrogram("wavelet", x, CFG)
    assert (power < 0).sum() == 0
    assert np.isfinite(log_normalize(chain_average(np.repeat(power[:, None], 16, axis=1)))).all()
    # and the spike's power is still where pywt puts it (frames around 5 s, every row)
    ref, _ = morlet_power_reference(x, SFREQ, np.geomspace(CFG.freq_min, CFG.freq_max, CFG.n_wavelet_freqs),
                                    hop=CFG.window_size - CFG.overlap, wavelet=CFG.wavelet)  # fmt: skip
    err = np.linalg.norm(power - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert err.max() < 0.02


def test_wavelet_must_be_a_complex_morlet() -> None:
    from hms_core.spectral import morlet_power

    with pytest.raises(ValueError, match="Invalid value for the 'wavelet' parameter.*but got 'db4' instead"):
        morlet_power(np.zeros((1, 2000), np.float32), wavelet="db4")
    with pytest.raises(ValueError, match="Invalid value for the 'freqs' parameter"):
        morlet_power(np.zeros((1, 2000), np.float32), freqs=np.array([1.0, 150.0]))


@pytest.mark.parametrize("name", ["stft", "multitaper"])
def test_windowed_psd_matches_scipy_spectrogram(name: str) -> None:
    """STFT (torch) and multitaper (one matrix product for all tapers) equal scipy.signal.spectrogram's density
    with the same windows, frame by frame (scipy's frames start at 0, ours are centred: ours k = scipy k - 1)."""
    import scipy.signal as ss
    from scipy.signal.windows import dpss

    x = np.random.default_rng(4).normal(0, 30, (3, 2000)).astype(np.float32)
    power, freqs = compute_spectrogram(name, x, CFG)
    windows = [ss.get_window("hann", CFG.window_size)] if name == "stft" else dpss(CFG.window_size, 2.0, 3)
    ref = np.mean([ss.spectrogram(x.astype(np.float64), SFREQ, window=w, nperseg=CFG.window_size,
                                  noverlap=CFG.overlap, nfft=CFG.nfft, detrend=False)[2] for w in windows], axis=0)  # fmt: skip
    band = np.isin(np.fft.rfftfreq(CFG.nfft, 1 / SFREQ), freqs)
    np.testing.assert_allclose(power[:, :, 1 : 1 + ref.shape[-1]], ref[:, band], rtol=1e-3, atol=1e-4 * ref.max())
