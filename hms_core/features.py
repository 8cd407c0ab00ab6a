"""Hand-crafted EEG features of bipolar windows, batched, returned as a polars table (one row per window).

Spectral features come from a Welch PSD (Hann 256 / hop 128 / nfft 512, :func:`hms_core.spectral.stft_power`):
absolute and relative band powers per derivation and chain, spectral centroid, bandwidth, 85 % rolloff,
normalised entropy, 90 % edge frequency and the aperiodic (1/f) slope. Time-domain features: Hjorth
activity/mobility/complexity, line length, excess kurtosis, zero-crossing rate and a periodicity measure (height
and rate of the dominant autocorrelation peak, for periodic discharges). Left/right asymmetry compares the LL/RL
and LP/RP chains. Inputs are filtered, unscaled signals in microvolts.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl
import scipy.fft as sfft

from hms_core.constants import CHAIN_NAMES, SFREQ, bipolar_names
from hms_core.spectral import SpectralCache, stft_power

__all__ = [
    "BANDS",
    "band_power",
    "compute_features",
    "periodicity",
    "spectral_shape",
    "time_features",
    "welch_psd",
]  # fmt: skip

#: Classical EEG bands (Hz), upper edge exclusive.
BANDS: dict[str, tuple[float, float]] = {
    "delta": (0.5, 4.0),
    "theta": (4.0, 8.0),
    "alpha": (8.0, 13.0),
    "beta": (13.0, 30.0),
    "gamma": (30.0, 50.0),
}


def welch_psd(
    x: np.ndarray,
    sfreq: float = SFREQ,
    window_size: int = 256,
    nfft: int = 512,
    cache: SpectralCache | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Welch PSD (uV^2/Hz) along the last axis: mean of 50 %-overlap Hann periodograms. Returns (psd, freqs).

    ``cache`` (a :class:`hms_core.spectral.SpectralCache` of ``x``) shares the Hann frames with the spectrograms."""
    window_size = min(window_size, x.shape[-1])
    p, f = stft_power(x, sfreq, window_size, window_size // 2, max(nfft, window_size), 0.0, sfreq / 2, cache)
    return p.mean(-1), f


def band_power(psd: np.ndarray, freqs: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """Integrated power (uV^2) of ``psd`` (..., F) in ``[band[0], band[1])``."""
    df = float(freqs[1] - freqs[0])
    m = (freqs >= band[0]) & (freqs < band[1])
    return psd[..., m].sum(-1) * df


def spectral_shape(
    psd: np.ndarray, freqs: np.ndarray, fmin: float = 0.5, fmax: float = 50.0
) -> dict[str, np.ndarray]:
    """Centroid, bandwidth, 85 % rolloff, normalised entropy, 90 % edge frequency and 1/f slope in [fmin, fmax]."""
    m = (freqs >= fmin) & (freqs <= fmax)
    f = freqs[m].astype(np.float64)
    p = psd[..., m].astype(np.float64) + 1e-12
    pn = p / p.sum(-1, keepdims=True)
    centroid = (pn * f).sum(-1)
    bandwidth = np.sqrt((pn * (f - centroid[..., None]) ** 2).sum(-1))
    cdf = np.cumsum(pn, -1)
    rolloff = f[np.minimum((cdf < 0.85).sum(-1), len(f) - 1)]
    edge = f[np.minimum((cdf < 0.90).sum(-1), len(f) - 1)]
    entropy = -(pn * np.log(pn)).sum(-1) / np.log(len(f))
    # aperiodic slope: least-squares line of log10 power on log10 frequency over 1-40 Hz (or the range present)
    fm = (f >= max(1.0, fmin)) & (f <= min(40.0, fmax))
    lx = np.log10(f[fm])
    ly = np.log10(p[..., fm])
    lxc = lx - lx.mean()
    slope = (ly * lxc).sum(-1) / (lxc**2).sum()
    return {
        "centroid": centroid, "bandwidth": bandwidth, "rolloff": rolloff, "entropy": entropy,
        "edge_freq": edge, "aperiodic_slope": slope,
    }  # fmt: skip


def time_features(x: np.ndarray, sfreq: float = SFREQ) -> dict[str, np.ndarray]:
    """Hjorth activity/mobility/complexity, line length (uV/s), excess kurtosis, zero-crossing rate (1/s)."""
    x = np.asarray(x, dtype=np.float32)
    xc = x - x.mean(-1, keepdims=True)
    d1 = np.diff(x, axis=-1)
    d2 = np.diff(d1, axis=-1)
    v0 = xc.var(-1) + 1e-12
    v1 = d1.var(-1) + 1e-12
    v2 = d2.var(-1) + 1e-12
    mobility = np.sqrt(v1 / v0)
    complexity = np.sqrt(v2 / v1) / mobility
    xc2 = np.square(xc)
    kurt = np.square(xc2).mean(-1, dtype=np.float64) / v0.astype(np.float64) ** 2 - 3.0
    zc = (np.signbit(xc[..., 1:]) != np.signbit(xc[..., :-1])).sum(-1) * sfreq / x.shape[-1]
    return {
        "hjorth_activity": v0, "hjorth_mobility": mobility, "hjorth_complexity": complexity,
        "line_length": np.abs(d1).mean(-1) * sfreq, "kurtosis": kurt, "zero_crossings": zc,
    }  # fmt: skip


def periodicity(
    x: np.ndarray, sfreq: float = SFREQ, min_rate: float = 0.3, max_rate: float = 4.0
) -> tuple[np.ndarray, np.ndarray]:
    """Dominant autocorrelation peak of each signal: (strength in [-1, 1], rate in Hz).

    The autocorrelation (FFT, biased) is searched for local maxima at lags ``1/max_rate ... 1/min_rate`` s (at
    most half the signal); the highest one gives the strength and ``sfreq / lag`` the rate. Signals without a
    local maximum there get strength 0 and rate 0. Periodic discharges (LPD/GPD) give high strengths at their
    repetition rate; broadband noise does not.
    """
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[-1]
    xc = x - x.mean(-1, keepdims=True)
    # the lags used are 0 .. n // 2 + 1: zero padding to n + n // 2 + 1 points keeps them free of wrap-around
    # (the circular autocorrelation equals the linear one up to lag nfft - n)
    nfft = sfft.next_fast_len(n + n // 2 + 1, real=True)
    spec = sfft.rfft(xc, nfft, axis=-1).view(np.float32)  # interleaved (re, im)
    power = np.square(spec[..., 0::2])
    power += np.square(spec[..., 1::2])
    acf = sfft.irfft(power, nfft, axis=-1)[..., : n // 2 + 2]
    acf = acf / np.maximum(acf[..., :1], 1e-12)
    lo = max(int(sfreq / max_rate), 2)
    hi = min(int(sfreq / min_rate), n // 2)
    if hi <= lo:
        z = np.zeros(x.shape[:-1])
        return z, z.copy()
    mid = acf[..., lo:hi]
    is_peak = (mid > acf[..., lo - 1 : hi - 1]) & (mid >= acf[..., lo + 1 : hi + 1])
    vals = np.where(is_peak, mid, -np.inf)
    k = vals.argmax(-1)
    best = np.take_along_axis(vals, k[..., None], -1)[..., 0]
    has = np.isfinite(best)
    strength = np.where(has, best, 0.0)
    rate = np.where(has, sfreq / (k + lo), 0.0)
    return strength, rate


def _chain_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B, 16) -> (B, 4): weighted mean over the 4 derivations of each chain (weights: usable derivations)."""
    b = values.shape[0]
    v = values[:, :16].reshape(b, 4, 4)
    w = weights[:, :16].reshape(b, 4, 4)
    ws = w.sum(-1)
    return np.where(ws > 0, (v * w).sum(-1) / np.maximum(ws, 1e-12), v.mean(-1))


def compute_features(
    bipolar: np.ndarray,
    sfreq: float = SFREQ,
    quality: np.ndarray | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
    fmin: float = 0.5,
    fmax: float = 50.0,
    cache: SpectralCache | None = None,
) -> pl.DataFrame:
    """Feature table of a batch of bipolar windows (B, 16|18, n_times), microvolts, filtered and unscaled.

    Columns: ``<derivation>_<band>_abs|rel`` for every derivation, ``<chain>_<band>_abs|rel`` and
    ``<chain>_<feature>`` (mean over the chain's usable derivations, per ``quality`` (B, 16|18) bool), and
    ``asym_<LL-RL|LP-RP>_<band>`` = (L - R) / (L + R) of absolute band power; then the ``extra`` columns
    (e.g. NaN and artifact fractions) as given. ``cache`` (a :class:`hms_core.spectral.SpectralCache` of
    ``bipolar``) takes the Welch PSD's Hann frames from the spectrograms of the same signal.
    """
    bipolar = np.asarray(bipolar, dtype=np.float32)
    if bipolar.ndim != 3 or bipolar.shape[1] < 16:
        raise ValueError(
            f"compute_features expects bipolar data shaped (batch, 16|18, n_times), got {bipolar.shape}."
        )
    b, n_ch, _ = bipolar.shape
    names = bipolar_names(include_central=n_ch == 18)[:n_ch]
    w = np.ones((b, n_ch), np.float32) if quality is None else np.asarray(quality, np.float32)
    psd, freqs = welch_psd(bipolar, sfreq, cache=cache)
    bands = {k: (lo, min(hi, fmax)) for k, (lo, hi) in BANDS.items() if lo < fmax}
    total = band_power(psd, freqs, (fmin, fmax)) + 1e-12
    cols: dict[str, np.ndarray] = {}
    chain_abs: dict[str, np.ndarray] = {}
    for band, rng in bands.items():
        bp = band_power(psd, freqs, rng)
        rel = bp / total
        for j, name in enumerate(names):
            cols[f"{name}_{band}_abs"] = bp[:, j]
            cols[f"{name}_{band}_rel"] = rel[:, j]
        cabs = _chain_mean(bp, w)
        crel = _chain_mean(rel, w)
        chain_abs[band] = cabs
        for c, chain in enumerate(CHAIN_NAMES):
            cols[f"{chain}_{band}_abs"] = cabs[:, c]
            cols[f"{chain}_{band}_rel"] = crel[:, c]
    per_channel = spectral_shape(psd, freqs, fmin, fmax) | time_features(bipolar, sfreq)
    strength, rate = periodicity(bipolar, sfreq)
    per_channel["periodicity"] = strength
    per_channel["periodicity_rate"] = rate
    for feat, vals in per_channel.items():
        cm = _chain_mean(vals, w)
        for c, chain in enumerate(CHAIN_NAMES):
            cols[f"{chain}_{feat}"] = cm[:, c]
    for left, right in (("LL", "RL"), ("LP", "RP")):
        li, ri = CHAIN_NAMES.index(left), CHAIN_NAMES.index(right)
        for band, cabs in chain_abs.items():
            lv, rv = cabs[:, li], cabs[:, ri]
            cols[f"asym_{left}-{right}_{band}"] = (lv - rv) / (lv + rv + 1e-12)
    for k, v in (extra or {}).items():
        cols[k] = np.asarray(v)
    return pl.DataFrame({k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in cols.items()})
