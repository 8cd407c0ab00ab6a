"""Feature tests: known signals give known values; synthetic classes differ in the expected direction."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from hms_core.constants import CHAIN_NAMES, SFREQ, bipolar_names
from hms_core.features import (
    BANDS,
    band_power,
    compute_features,
    periodicity,
    spectral_shape,
    time_features,
    welch_psd,
)

N = 2000
T = np.arange(N) / SFREQ


def _colored_noise(rng: np.random.Generator, shape: tuple[int, ...], exponent: float) -> np.ndarray:
    """Noise with power ~ 1/f^exponent."""
    spec = rng.normal(size=(*shape, N // 2 + 1)) + 1j * rng.normal(size=(*shape, N // 2 + 1))
    f = np.fft.rfftfreq(N, 1 / SFREQ)
    f[0] = f[1]
    x = np.fft.irfft(spec * f ** (-exponent / 2), N)
    return (x / x.std(-1, keepdims=True)).astype(np.float32)


def _pd_like(rng: np.random.Generator, rate: float, n: int) -> np.ndarray:
    """Periodic-discharge-like signal: sharp 80-uV triphasic-ish transients at ``rate`` Hz over background."""
    x = 10 * _colored_noise(rng, (n,), 1.0)
    period = int(SFREQ / rate)
    k = np.arange(-20, 21)
    wave = 80 * (np.exp(-((k / 4.0) ** 2)) - 0.5 * np.exp(-(((k - 8) / 6.0) ** 2)))
    for s in range(30, N - 30, period):
        x[:, s - 20 : s + 21] += wave
    return x


@pytest.mark.parametrize(
    ("freq", "band"), [(2.0, "delta"), (6.0, "theta"), (10.0, "alpha"), (20.0, "beta"), (40.0, "gamma")]
)
def test_band_power_of_known_sinusoid(freq: float, band: str) -> None:
    amp = 30.0
    x = (amp * np.sin(2 * np.pi * freq * T)).astype(np.float32)[None]
    psd, f = welch_psd(x)
    bp = band_power(psd, f, BANDS[band])[0]
    assert abs(bp / (amp**2 / 2) - 1) < 0.06, f"{band}: {bp:.1f} uV^2, expected {amp**2 / 2:.1f}"
    total = band_power(psd, f, (0.5, 50.0))[0]
    assert bp / total > 0.95


def test_spectral_shape_of_sinusoid_and_noise() -> None:
    x = (20 * np.sin(2 * np.pi * 10 * T)).astype(np.float32)[None]
    psd, f = welch_psd(x)
    sh = spectral_shape(psd, f)
    assert abs(sh["centroid"][0] - 10) < 0.5 and sh["bandwidth"][0] < 1.5
    assert abs(sh["edge_freq"][0] - 10) < 1.0 and abs(sh["rolloff"][0] - 10) < 1.0
    rng = np.random.default_rng(0)
    white = _colored_noise(rng, (8,), 0.0)
    sh_w = spectral_shape(*welch_psd(white))
    assert sh["entropy"][0] < 0.5 < sh_w["entropy"].min()


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0])
def test_aperiodic_slope_recovers_exponent(exponent: float) -> None:
    rng = np.random.default_rng(1)
    x = _colored_noise(rng, (16,), exponent)
    slope = spectral_shape(*welch_psd(x))["aperiodic_slope"]
    assert abs(np.median(slope) + exponent) < 0.25


def test_hjorth_and_time_features_of_sinusoid() -> None:
    f0 = 5.0
    x = (10 * np.sin(2 * np.pi * f0 * T)).astype(np.float32)[None]
    tf = time_features(x)
    assert abs(tf["hjorth_activity"][0] - 50) < 1
    assert abs(tf["hjorth_mobility"][0] - 2 * np.pi * f0 / SFREQ) < 0.005  # per-sample angular frequency
    assert abs(tf["hjorth_complexity"][0] - 1) < 0.02
    assert abs(tf["zero_crossings"][0] - 2 * f0) < 0.3
    assert abs(tf["line_length"][0] - 4 * 10 * f0) < 2  # |d/dt| averages 4 A f
    assert abs(tf["kurtosis"][0] + 1.5) < 0.02  # sinusoid: excess kurtosis -1.5


def test_periodicity_rate_of_discharges_vs_noise() -> None:
    rng = np.random.default_rng(2)
    pd_sig = _pd_like(rng, rate=1.5, n=16)
    noise = 10 * _colored_noise(rng, (16,), 1.0)
    s_pd, r_pd = periodicity(pd_sig)
    s_n, _ = periodicity(noise)
    assert np.median(s_pd) > np.median(s_n) + 0.3
    assert abs(np.median(r_pd) - 1.5) < 0.1


def test_compute_features_table_and_class_directions() -> None:
    rng = np.random.default_rng(3)
    b = 6
    background = (10 * _colored_noise(rng, (b, 16), 1.0)).astype(np.float32)
    lpd = background.copy()
    lpd[:3, :4] += _pd_like(rng, 1.0, 4)[None] * 1.0  # left temporal chain (LL) discharges in windows 0-2
    df = compute_features(lpd, extra={"nan_fraction": np.zeros(b, np.float32)})
    assert isinstance(df, pl.DataFrame) and df.height == b
    names = bipolar_names()
    for col in (f"{names[0]}_alpha_abs", "LL_delta_rel", "RP_gamma_abs", "LL_periodicity", "LL_periodicity_rate",
                "LL_aperiodic_slope", "LL_hjorth_mobility", "RL_line_length", "LP_kurtosis", "RP_zero_crossings",
                "LL_entropy", "LL_edge_freq", "LL_centroid", "LL_bandwidth", "LL_rolloff", "asym_LL-RL_delta",
                "nan_fraction"):  # fmt: skip
        assert col in df.columns, col
    arr = df.select(pl.exclude("nan_fraction")).to_numpy()
    assert np.isfinite(arr).all()
    rel = df.select([f"LL_{k}_rel" for k in BANDS]).to_numpy()
    np.testing.assert_allclose(rel.sum(1), 1.0, atol=0.02)
    # discharges: more periodic, louder on the left, in windows 0-2 than 3-5
    assert df["LL_periodicity"][:3].min() > df["LL_periodicity"][3:].max()
    assert df["asym_LL-RL_delta"][:3].min() > 0.3 > df["asym_LL-RL_delta"][3:].abs().max()
    assert df["LL_line_length"][:3].min() > df["LL_line_length"][3:].max()


def test_quality_mask_excludes_bad_derivations_from_chain_means() -> None:
    rng = np.random.default_rng(4)
    x = (10 * _colored_noise(rng, (1, 16), 1.0)).astype(np.float32)
    x[0, 0] *= 50  # one loud bad derivation in LL
    q = np.ones((1, 16), bool)
    q[0, 0] = False
    loud = compute_features(x)["LL_delta_abs"][0]
    masked = compute_features(x, quality=q)["LL_delta_abs"][0]
    assert masked < loud / 50
    assert set(CHAIN_NAMES) == {"LL", "RL", "LP", "RP"}


def test_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"\(batch, 16\|18, n_times\)"):
        compute_features(np.zeros((16, 2000), np.float32))
