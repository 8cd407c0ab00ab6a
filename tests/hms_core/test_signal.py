"""Physics tests of the signal-conditioning functions (MNE style: known inputs, measured outputs)."""

from __future__ import annotations

import numpy as np
import pytest

from hms_core.constants import BIPOLAR_PAIRS_WITH_CENTRAL, EEG_CHANNELS, SFREQ, bipolar_names
from hms_core.signal import (
    apply_filter,
    bipolar_montage,
    bipolar_quality,
    clip_amplitude,
    design_filter,
    detect_artifacts,
    fill_nans,
    robust_scale,
)

T = np.arange(50 * SFREQ) / SFREQ


def _amp(x: np.ndarray, f: float) -> float:
    """Amplitude of the f-Hz component of x (least squares on sin/cos), central 30 s to avoid edges."""
    sl = slice(10 * SFREQ, 40 * SFREQ)
    t = T[sl]
    basis = np.stack([np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)], 1)
    coef, *_ = np.linalg.lstsq(basis, x[..., sl].T, rcond=None)
    return float(np.hypot(*coef))


@pytest.mark.parametrize(
    ("freq", "passes"), [(0.1, False), (2.0, True), (10.0, True), (30.0, True), (80.0, False), (95.0, False)]
)
def test_bandpass_attenuation_inside_vs_outside(freq: float, passes: bool) -> None:
    sos = design_filter(0.5, 50.0, SFREQ, order=4)
    x = (20 * np.sin(2 * np.pi * freq * T)).astype(np.float32)
    gain = _amp(apply_filter(x, sos), freq) / 20
    if passes:
        assert gain > 0.95, f"{freq} Hz in the pass band lost amplitude: gain {gain:.3f}"
    else:
        assert gain < 0.05, f"{freq} Hz outside the pass band kept amplitude: gain {gain:.3f}"


def test_filter_is_zero_phase() -> None:
    sos = design_filter(0.5, 50.0, SFREQ, order=4, notch_freq=60.0)
    x = np.sin(2 * np.pi * 7 * T)
    y = apply_filter(x, sos)
    lag = np.argmax(np.correlate(y[4000:6000], x[4000:6000], "full")) - 1999
    assert lag == 0


def test_notch_removes_60hz_and_keeps_rest_rms() -> None:
    rng = np.random.default_rng(0)
    rest = 30 * np.sin(2 * np.pi * 10 * T) + 15 * np.sin(2 * np.pi * 25 * T) + rng.normal(0, 2, T.size)
    x = (rest + 40 * np.sin(2 * np.pi * 60 * T)).astype(np.float32)
    sos = design_filter(None, None, SFREQ, notch_freq=60.0, notch_quality=30.0)
    y = apply_filter(x, sos)
    assert _amp(y, 60.0) < 0.01 * 40
    sl = slice(10 * SFREQ, 40 * SFREQ)
    rms_rest = np.sqrt(np.mean(rest[sl] ** 2))
    rms_y = np.sqrt(np.mean(y[sl] ** 2))
    assert abs(rms_y / rms_rest - 1) < 0.02


def test_notch_covers_harmonics_below_nyquist() -> None:
    # 30 Hz line: notches at 30, 60 and 90 Hz (all < 100 Hz Nyquist); 4 sections in all with no band-pass
    sos = design_filter(None, None, SFREQ, notch_freq=30.0)
    assert sos.shape == (3, 6)
    x = np.sin(2 * np.pi * 90 * T)
    assert _amp(apply_filter(x, sos), 90.0) < 0.02


def test_design_filter_validation_names_parameter() -> None:
    with pytest.raises(ValueError, match="'h_freq'.*Nyquist"):
        design_filter(0.5, 120.0, SFREQ)
    with pytest.raises(ValueError, match="must be below"):
        design_filter(40.0, 20.0, SFREQ)


@pytest.mark.parametrize("central", [False, True])
def test_bipolar_derivation_exact(central: bool) -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(3, len(EEG_CHANNELS), 500)).astype(np.float32)
    bip = bipolar_montage(ref, include_central=central)
    names = bipolar_names(central)
    assert bip.shape == (3, len(names), 500)
    for k, name in enumerate(names):
        a, b = name.split("-")
        np.testing.assert_array_equal(bip[:, k], ref[:, EEG_CHANNELS.index(a)] - ref[:, EEG_CHANNELS.index(b)])
    assert len(names) == (18 if central else 16) and names[-1] == ("Cz-Pz" if central else "P4-O2")


def test_bipolar_montage_rejects_wrong_channel_count() -> None:
    with pytest.raises(ValueError, match="19 referential channels"):
        bipolar_montage(np.zeros((2, 20, 100)))


def test_bipolar_quality_needs_both_electrodes() -> None:
    ok = np.ones((1, 19), bool)
    ok[0, EEG_CHANNELS.index("T3")] = False
    q = bipolar_quality(ok, include_central=True)
    bad = {f"{a}-{b}" for (a, b), good in zip(BIPOLAR_PAIRS_WITH_CENTRAL, q[0]) if not good}
    assert bad == {"F7-T3", "T3-T5"}


def test_robust_scaling_invariant_to_outliers() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(5, 20, size=(4, 10000)).astype(np.float32)
    y = x.copy()
    idx = rng.choice(10000, 100, replace=False)  # 1 % of samples become huge artifacts
    y[:, idx] = 1e4
    keep = np.setdiff1d(np.arange(10000), idx)
    sx, med, iqr = robust_scale(x)
    sy, _, _ = robust_scale(y)
    assert np.max(np.abs(sx[:, keep] - sy[:, keep])) < 0.05
    np.testing.assert_allclose(med, 5, atol=1.5)
    np.testing.assert_allclose(iqr, 20 * 1.349, rtol=0.05)
    # a z-score would not be invariant: it shrinks the clean samples by the artifacts' variance
    zx = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)
    zy = (y - y.mean(-1, keepdims=True)) / y.std(-1, keepdims=True)
    assert np.max(np.abs(zx[:, keep] - zy[:, keep])) > 0.5


def test_robust_scale_flat_channel_is_only_centred() -> None:
    x = np.full((1, 2, 100), 7.0, np.float32)
    s, _, iqr = robust_scale(x)
    assert np.all(s == 0) and np.all(iqr == 0)


def test_fill_nans_interpolates_short_gaps_and_fills_long_ones() -> None:
    x = np.tile(np.arange(1000, dtype=np.float32), (3, 1))
    x[0, 100:150] = np.nan  # short gap (50 samples <= 200) -> linear, exact on a ramp
    x[1, 100:700] = np.nan  # long gap (600 samples) -> channel median of the valid samples
    x[2] = np.nan  # whole channel
    y, rep = fill_nans(x, max_gap=200)
    np.testing.assert_allclose(y[0], np.arange(1000))
    valid = np.r_[0:100, 700:1000]
    np.testing.assert_allclose(y[1, 100:700], np.median(valid))
    assert np.all(y[2] == 0)
    assert not np.isnan(y).any()
    np.testing.assert_allclose(rep.nan_fraction, [0.05, 0.6, 1.0])
    np.testing.assert_allclose(rep.long_gap_fraction, [0.0, 0.6, 1.0])
    assert rep.interpolated.tolist() == [True, False, False]
    assert rep.all_nan.tolist() == [False, False, True]


def test_fill_nans_edge_gap_holds_nearest_value() -> None:
    x = np.arange(20, dtype=np.float32)[None]
    x[0, :3] = np.nan
    y, rep = fill_nans(x, max_gap=5)
    np.testing.assert_allclose(y[0, :3], 3.0)
    assert rep.interpolated[0]


def test_detect_artifacts_flat_noisy_pops() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0, 20, size=(4, 10000)).astype(np.float32)
    x[1] = 12.0  # flat (disconnected, held at a constant)
    x[2] *= 40  # robust std 800 uV: noisy/loose
    for k in range(8):  # 8 electrode pops: a 600-uV step with a slow return
        s = 500 + k * 1100
        x[3, s : s + 100] += 600 * np.exp(-np.arange(100) / 30)
    rep = detect_artifacts(x, flat_uv=0.5, noisy_uv=400, pop_uv=200, max_pops=5)
    assert rep.flat.tolist() == [False, True, False, False]
    assert rep.noisy.tolist() == [False, False, True, False]
    assert rep.n_pops[3] == 8 and rep.n_pops[0] == 0
    assert rep.popping.tolist() == [False, False, True, True]


def test_clip_amplitude_fraction() -> None:
    x = np.array([[0.0, 600.0, -700.0, 100.0]], np.float32)
    y, frac = clip_amplitude(x, 500.0)
    assert y.tolist() == [[0.0, 500.0, -500.0, 100.0]]
    np.testing.assert_allclose(frac, [0.5])


@pytest.mark.parametrize(
    ("l_freq", "h_freq", "notch", "n_times"),
    [(0.5, 50.0, 60.0, 10000), (0.5, 50.0, 60.0, 700), (0.5, None, None, 3000), (None, None, 60.0, 10000),
     (None, 40.0, None, 50)],
)  # fmt: skip
def test_fft_filter_matches_float64_sosfiltfilt(
    l_freq: float | None, h_freq: float | None, notch: float | None, n_times: int
) -> None:
    """The float32 frequency-domain forward-backward filter (apply_filter's default for float32) against
    float64 scipy sosfiltfilt on drifting signals with DC offsets up to 2 mV, spikes and edge steps: the largest
    deviation stays below 5e-5 of the input's peak (float32 sosfiltfilt itself: up to 2e-4 on these)."""
    import scipy.signal as ss

    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, n_times)).cumsum(-1) * 3 + 30 * rng.standard_normal((6, n_times))
    x += rng.uniform(-2000, 2000, (6, 1))
    x[0, n_times // 2] += 3000
    x[1, -1] += 3000
    x[2, 0] -= 3000
    x[3, -n_times // 10 :] += 1000
    x = x.astype(np.float32)
    sos = design_filter(l_freq, h_freq, SFREQ, 4, notch)
    padlen = min(3 * (2 * len(sos) + 1), n_times - 1)
    ref = ss.sosfiltfilt(sos.copy(), x.astype(np.float64), axis=-1, padlen=padlen)
    got = apply_filter(x, sos)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert np.abs(got - ref).max() < 5e-5 * np.abs(x).max()
    sos_path = apply_filter(x, sos, method="sos")
    assert np.abs(sos_path - ref).max() < 5e-4 * np.abs(x).max()
    with pytest.raises(ValueError, match="'method'"):
        apply_filter(x, sos, method="fir")
