"""Property tests (hypothesis): no finite input makes a transform produce a non-finite or negative value.

Inputs are what ICU EEG holds besides background activity: electrode pops (single-sample spikes), steps, DC
offsets, saturated (clipped) stretches, silent (all-zero) and flat channels, 1/f noise and amplitudes from 1e-3 to
1e5 uV, one kind on every channel or a different kind per channel. Every spectrogram type must give finite,
non-negative power that scales with the square of the amplitude, the features must be finite, and
``process_windows`` must turn finite raw windows into finite outputs (in the float16 storage dtype) without
needing its zero-and-flag guard. The runs are derandomized and database-less, so CI sees the same examples on
every run.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hms_core.config import PreprocessingConfig, SpectrogramConfig
from hms_core.constants import EEG_FILE_COLUMNS, SFREQ
from hms_core.features import compute_features
from hms_core.preprocess import process_windows
from hms_core.spectral import SPECTROGRAM_REGISTRY, chain_average, compute_spectrogram, log_normalize

PROPERTY = settings(
    deadline=None, derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip
KINDS = ("silent", "flat", "white", "pink", "spike", "pop500", "step", "dc", "saturated")
N_SEG = 2000  # the labelled 10 s the spectrograms and features cover
N_WINDOW = 10000  # the 50-s window process_windows reads
CFG = SpectrogramConfig()


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-variance noise with a 1/f power spectrum."""
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    x = np.fft.irfft((rng.normal(size=f.size) + 1j * rng.normal(size=f.size)) / np.sqrt(f), n)
    return x / x.std()


def _channel(rng: np.random.Generator, kind: str, amp: float, n: int) -> np.ndarray:
    """One channel of ``kind`` with amplitude ``amp`` (uV)."""
    if kind == "silent":
        return np.zeros(n)
    if kind == "flat":  # a disconnected electrode held at a rail
        return np.full(n, amp)
    if kind == "white":
        return amp * rng.standard_normal(n)
    base = amp * _pink(rng, n)
    if kind == "spike":  # electrode pops: single samples far above the background
        idx = rng.integers(0, n, rng.integers(1, 4))
        base[idx] += amp * rng.uniform(5, 50, idx.size) * rng.choice([-1, 1], idx.size)
    elif kind == "pop500":  # one 500-uV sample in an otherwise silent channel (the reproducer)
        base = np.zeros(n)
        base[rng.integers(0, n)] = 500.0
    elif kind == "step":
        base[rng.integers(1, n) :] += amp * rng.uniform(2, 50) * rng.choice([-1, 1])
    elif kind == "dc":
        base += amp * rng.uniform(10, 1000) * rng.choice([-1, 1])
    elif kind == "saturated":  # the amplifier at its rails for long stretches
        base = np.clip(10 * base, -amp, amp)
    return base


@st.composite
def signals(draw: st.DrawFn, n_channels: int, n_times: int) -> np.ndarray:
    """(n_channels, n_times) float32: one kind on all channels, or a kind (and amplitude) per channel."""
    seed = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):  # alone
        kinds = [draw(st.sampled_from(KINDS))] * n_channels
        amps = [10 ** draw(st.floats(-3, 5))] * n_channels
    else:  # mixed
        kinds = draw(st.lists(st.sampled_from(KINDS), min_size=n_channels, max_size=n_channels))
        amps = [10**e for e in draw(st.lists(st.floats(-3, 5), min_size=n_channels, max_size=n_channels))]
    rng = np.random.default_rng(seed)
    return np.stack([_channel(rng, k, a, n_times) for k, a in zip(kinds, amps)]).astype(np.float32)


def _spike(n_channels: int, n_times: int, at: int = N_SEG // 2) -> np.ndarray:
    x = np.zeros((n_channels, n_times), np.float32)
    x[:, at] = 500.0
    return x


@settings(PROPERTY, max_examples=40)
@given(x=signals(16, N_SEG))
@example(x=_spike(16, N_SEG))
def test_every_spectrogram_is_finite_and_non_negative(x: np.ndarray) -> None:
    for name in SPECTROGRAM_REGISTRY:
        power, freqs = compute_spectrogram(name, x[None], CFG)
        assert power.shape[:3] == (1, 16, len(freqs))
        assert np.isfinite(power).all(), f"{name}: non-finite power"
        assert (power >= 0).all(), f"{name}: {(power < 0).sum()} negative cells, min {power.min():.3g}"
        assert np.isfinite(log_normalize(chain_average(power))).all(), name


@settings(PROPERTY, max_examples=15)
@given(x=signals(16, N_SEG), gain=st.floats(1e-2, 1e2))
def test_power_scales_with_the_square_of_the_amplitude(x: np.ndarray, gain: float) -> None:
    """Power is quadratic in the input, so no transform hides a clamp or an offset: P(g x) = g^2 P(x)."""
    for name in SPECTROGRAM_REGISTRY:
        p1, _ = compute_spectrogram(name, x[None], CFG)
        p2, _ = compute_spectrogram(name, (gain * x)[None].astype(np.float32), CFG)
        tol = 1e-4 * gain**2 * max(float(p1.max()), 1e-30)
        np.testing.assert_allclose(p2, gain**2 * p1, rtol=1e-3, atol=tol, err_msg=name)


@settings(PROPERTY, max_examples=40)
@given(x=signals(16, N_SEG))
@example(x=_spike(16, N_SEG))
def test_features_are_finite(x: np.ndarray) -> None:
    quality = np.ones((1, 16), bool)
    quality[0, ::5] = False
    feats = compute_features(x[None], SFREQ, quality=quality)
    values = feats.to_numpy().astype(np.float64)
    bad = [c for c, ok in zip(feats.columns, np.isfinite(values).all(0)) if not ok]
    assert not bad, f"non-finite features: {bad[:10]}"


@pytest.fixture(scope="module")
def full_config() -> PreprocessingConfig:
    cfg = PreprocessingConfig()
    cfg.spectrogram.types = list(SPECTROGRAM_REGISTRY)
    return cfg


@settings(PROPERTY, max_examples=25)
@given(x=signals(len(EEG_FILE_COLUMNS), N_WINDOW))
@example(x=_spike(len(EEG_FILE_COLUMNS), N_WINDOW, at=N_WINDOW // 2))
def test_process_windows_finite_in_finite_out(full_config: PreprocessingConfig, x: np.ndarray) -> None:
    """The whole transform (NaN repair, artifacts, filters, montage, clipping, scaling, all four spectrograms,
    features) on a raw 50-s window: every output is finite in the storage dtype, and the bad-window guard was not
    needed."""
    out = process_windows(x.T[None], full_config, ["prop"])
    assert out.non_finite == {} and not out.window_quality["bad_window"].any()
    dt = np.dtype(full_config.eeg.dtype)
    arrays = {"referential": out.referential, "bipolar": out.bipolar, "ekg": out.ekg} | out.spectrograms
    for name, arr in arrays.items():
        assert np.isfinite(arr.astype(dt)).all(), name
    assert np.isfinite(out.features.to_numpy().astype(np.float64)).all()
    for name, values in out.window_quality.items():
        if np.asarray(values).dtype.kind == "f":
            assert np.isfinite(values).all(), name
