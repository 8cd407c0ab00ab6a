"""Background EEG: spatially mixed aperiodic 1/f^beta noise plus posterior alpha and fronto-central beta.

Everything is generated in the frequency domain in one batched inverse FFT, so a 10-minute, 19-channel session
costs a few tens of milliseconds. Arrays are shaped ``(n_channels, n_times)`` in microvolts at ``sfreq``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import fft as sfft

from hms_core.checks import invalid_value
from hms_core.constants import EEG_CHANNELS, SFREQ
from hms_core.synthetic.spatial import CH_INDEX, anterior_gradient, gaussian_field, mixing_matrix

N_CH = len(EEG_CHANNELS)


def spectral_noise(
    rng: np.random.Generator,
    shapes: np.ndarray,
    n_times: int,
    normalise: bool = True,
    f_max: float | None = None,
    sfreq: float = SFREQ,
) -> np.ndarray:
    """Gaussian noise with amplitude spectra ``shapes`` (n_rows, n_fft // 2 + 1); unit RMS rows if ``normalise``.

    ``n_fft`` is ``fft_length(n_times)`` (a fast FFT size >= n_times); the output is cropped to ``n_times``.
    Bins above ``f_max`` Hz are left empty (an amplifier's anti-alias low-pass), which also saves random draws.
    """
    n_fft = fft_length(n_times)
    n_freq = n_fft // 2 + 1
    if shapes.shape[-1] != n_freq and f_max is None:
        raise ValueError(
            f"spectral_noise: 'shapes' must have fft_length(n_times) // 2 + 1 = {n_freq} columns (or give f_max), "
            f"got {shapes.shape[-1]}"
        )
    n_used = n_freq if f_max is None else min(n_freq, int(f_max * n_fft / sfreq) + 1)
    shapes = shapes[:, :n_used].astype(np.float32, copy=normalise or shapes.shape[-1] == n_freq)
    shapes[:, 0] = 0.0
    if normalise:  # Var(irfft) = 4 / n_fft**2 * sum(|S_k|**2) for unit complex Gaussians (DC removed)
        shapes *= (n_fft / 2.0) / np.sqrt(
            np.maximum((shapes.astype(np.float64) ** 2).sum(-1, keepdims=True), 1e-30)
        )
    spec = rng.standard_normal((shapes.shape[0], 2 * n_used), dtype=np.float32).view(np.complex64)
    spec *= shapes
    return sfft.irfft(spec, n=n_fft, axis=-1, overwrite_x=True)[:, :n_times]


def fft_length(n_times: int) -> int:
    """Fast (5-smooth) FFT length >= ``n_times``."""
    return int(sfft.next_fast_len(int(n_times), real=True))


def noise_freqs(n_times: int, sfreq: float = SFREQ) -> np.ndarray:
    """Frequencies (Hz) of the spectra that :func:`spectral_noise` expects for ``n_times`` samples."""
    return np.fft.rfftfreq(fft_length(n_times), 1.0 / sfreq)


def aperiodic_shape(freqs: np.ndarray, beta: float | np.ndarray, f_knee: float = 0.4) -> np.ndarray:
    """Amplitude spectrum of 1/f^beta power with a flat knee below ``f_knee`` (avoids a DC blow-up)."""
    beta = np.atleast_1d(np.asarray(beta, dtype=np.float32))[:, None]
    log_f2 = np.log(freqs.astype(np.float32) ** 2 + np.float32(f_knee**2))
    return np.exp(-beta / np.float32(4.0) * log_f2[None, :])


def band_shape(freqs: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Gaussian amplitude spectrum around ``centre`` Hz with standard deviation ``width`` Hz."""
    return np.exp(-0.5 * ((freqs - np.float32(centre)) / np.float32(width)) ** 2)


def draw_background_params(rng: np.random.Generator, style: dict[str, Any]) -> dict[str, Any]:
    """Per-session background parameters around the patient's style."""
    return {
        "beta": float(np.clip(style["beta"] + rng.normal(0, 0.1), 1.0, 2.5)),
        "rms": float(style["rms"] * rng.uniform(0.85, 1.15)),
        "neighbour_corr": float(np.clip(style["neighbour_corr"] + rng.normal(0, 0.03), 0.55, 0.9)),
        "alpha_amp": float(style["alpha_amp"] * rng.uniform(0.7, 1.3)),
        "alpha_freq": float(np.clip(style["alpha_freq"] + rng.normal(0, 0.3), 6.0, 12.0)),
        "beta_amp": float(style["beta_amp"] * rng.uniform(0.7, 1.3)),
        "beta_freq": float(rng.uniform(14.0, 24.0)),
    }


def _unit_power(shape: np.ndarray) -> np.ndarray:
    """Spectral power ``shape**2`` scaled to sum 1 along frequency (float32)."""
    p = np.square(shape, dtype=np.float32)
    p /= p.sum(-1, keepdims=True, dtype=np.float64).astype(np.float32)
    return p


def background(rng: np.random.Generator, n_times: int, params: dict[str, Any], sfreq: float = SFREQ) -> np.ndarray:
    """(19, n_times) float32 background: RMS ``rms`` aperiodic noise + alpha (posterior) + beta (fronto-central).

    Each channel's source spectrum sums (in power) the aperiodic part and its share of the rhythms; one batched
    inverse FFT (content up to 70 Hz) gives 19 independent sources, mixed by the electrode-distance kernel.
    """
    f_max = 70.0  # a typical EEG amplifier low-pass
    freqs = noise_freqs(n_times, sfreq)
    freqs = freqs[: int(f_max * fft_length(n_times) / sfreq) + 1].astype(np.float32)
    beta = params["beta"] + rng.normal(0.0, 0.05, N_CH)  # a little per-channel spread of the exponent
    power = _unit_power(aperiodic_shape(freqs, beta))
    power *= np.float32(params["rms"] ** 2)
    if params["alpha_amp"] > 0:
        w = np.maximum(gaussian_field("O1", 0.05), gaussian_field("O2", 0.05))
        alpha = _unit_power(band_shape(freqs, params["alpha_freq"], 0.6)[None])
        power += ((params["alpha_amp"] ** 2 / 2 * w**2)[:, None]).astype(np.float32) * alpha
    if params["beta_amp"] > 0:
        cz = gaussian_field("Cz", 0.09)
        w = 0.3 + 0.7 * anterior_gradient() * cz / cz.max()
        fast = _unit_power(band_shape(freqs, params["beta_freq"], 3.0)[None])
        power += ((params["beta_amp"] ** 2 / 2 * w**2)[:, None]).astype(np.float32) * fast
    np.sqrt(power, out=power)
    power *= np.float32(fft_length(n_times) / 2.0)
    src = spectral_noise(rng, power, n_times, normalise=False, f_max=f_max, sfreq=sfreq)
    return mixing_matrix(params["neighbour_corr"]).astype(np.float32) @ src


def voltage_envelope(
    rng: np.random.Generator, n_times: int, state: str, sfreq: float = SFREQ
) -> tuple[np.ndarray, dict[str, Any]]:
    """Gain (n_times,) applied to the background for a voltage ``state``.

    ``normal`` 1; ``low`` about 0.35-0.6 (< 20 uV); ``suppressed`` 0.1-0.3 (< 10 uV); ``burst_suppression``
    suppressed with bursts of 0.5-6 s at 2-5x normal gain every few seconds.
    """
    if state == "normal":
        return np.ones(n_times, np.float32), {"gain": 1.0}
    if state == "low":
        g = float(rng.uniform(0.35, 0.6))
        return np.full(n_times, g, np.float32), {"gain": g}
    if state == "suppressed":
        g = float(rng.uniform(0.1, 0.3))
        return np.full(n_times, g, np.float32), {"gain": g}
    if state == "burst_suppression":
        g = float(rng.uniform(0.08, 0.2))
        env = np.full(n_times, g, np.float32)
        t = rng.uniform(0, 3) * sfreq
        bursts = []
        while t < n_times:
            dur = rng.uniform(0.5, 6.0) * sfreq
            a, b = int(t), int(min(t + dur, n_times))
            gain = rng.uniform(2.0, 5.0)
            ramp = np.minimum(1.0, np.minimum(np.arange(b - a) + 1, b - a - np.arange(b - a)) / (0.1 * sfreq))
            env[a:b] = np.maximum(env[a:b], gain * ramp)
            bursts.append((a / sfreq, b / sfreq))
            t = b + rng.uniform(1.0, 10.0) * sfreq
        return env, {"gain": g, "bursts": bursts}
    raise invalid_value("state", state, "'normal', 'low', 'suppressed', 'burst_suppression'")


__all__ = ["CH_INDEX", "background", "draw_background_params", "spectral_noise", "voltage_envelope"]
