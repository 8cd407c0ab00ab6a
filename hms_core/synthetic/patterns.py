"""ACNS 2021 patterns (Seizure, LPD, GPD, LRDA, GRDA) and the 'Other' confusers, drawn per sample.

Every class has a ``draw`` function (latent parameters, JSON-friendly, including an ``alt`` class that raters
confuse it with when the draw lands on a border) and a ``render`` function that turns the parameters into a
``(19, n_times)`` float32 referential signal in microvolts. :data:`PATTERNS` is the registry the generator uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.signal import oaconvolve

from hms_core.checks import check_option, invalid_value
from hms_core.constants import CHAINS, EEG_CHANNELS, SFREQ
from hms_core.synthetic.background import band_shape, noise_freqs, spectral_noise
from hms_core.synthetic.spatial import (
    CH_INDEX,
    anterior_gradient,
    electrode_positions,
    gaussian_field,
    hemisphere_mask,
    mirror,
)

N_CH = len(EEG_CHANNELS)
Params = dict[str, Any]
LATERAL_LEFT = ("Fp1", "F3", "C3", "P3", "F7", "T3", "T5", "O1")
LATERAL_RIGHT = ("Fp2", "F4", "C4", "P4", "F8", "T4", "T6", "O2")
#: Where lateralized maxima sit, roughly as often as in ICU recordings (temporal and fronto-central first).
FOCUS_WEIGHTS = {"F7": 3, "T3": 4, "T5": 3, "F3": 2, "C3": 3, "P3": 2, "Fp1": 1, "O1": 1}


def _amplitude(rng: np.random.Generator, lo: float, hi: float, faint_p: float = 0.08) -> float:
    """Peak amplitude (uV) in [lo, hi], log-scale Beta(3, 1.5) (mostly well above ``lo``); with probability
    ``faint_p`` a faint one below ``lo`` (hard to see, so raters disagree more)."""
    if rng.random() < faint_p:
        return float(rng.uniform(0.4, 0.8) * lo)
    return float(lo * (hi / lo) ** rng.beta(3.0, 1.5))


def _side(rng: np.random.Generator) -> int:
    return int(rng.choice([-1, 1]))


def _focus(rng: np.random.Generator, side: int) -> str:
    names = list(FOCUS_WEIGHTS)
    p = np.array(list(FOCUS_WEIGHTS.values()), float)
    ch = names[rng.choice(len(names), p=p / p.sum())]
    return ch if side < 0 else LATERAL_RIGHT[LATERAL_LEFT.index(ch)]


def lateral_field(focus: str, width_m: float, contra_ratio: float) -> np.ndarray:
    """Gaussian field around ``focus`` plus ``contra_ratio`` x its mirror image; max 1."""
    p = electrode_positions()[CH_INDEX[focus]]
    w = gaussian_field(p, width_m) + contra_ratio * gaussian_field(mirror(p), width_m)
    return w / w.max()


def generalized_field(frontal_gain: float, asymmetry: float = 1.0, weak_side: int = 1) -> np.ndarray:
    """Diffuse field, frontal ``1 + frontal_gain`` x posterior; ``weak_side`` scaled by ``asymmetry``."""
    w = 1.0 + frontal_gain * anterior_gradient()
    side = hemisphere_mask(weak_side)
    w = w * np.where(side == 1.0, asymmetry, 1.0)
    return w / w.max()


def propagation_delays(origin: np.ndarray | str, ms_per_cm: float, sfreq: float = SFREQ) -> list[int]:
    """Per-channel delays (samples) of a field spreading from ``origin`` at ``ms_per_cm`` (travelling waves)."""
    c = electrode_positions()[CH_INDEX[origin]] if isinstance(origin, str) else np.asarray(origin, float)
    dist_cm = 100.0 * np.sqrt(((electrode_positions() - c) ** 2).sum(-1))
    return np.round(dist_cm * ms_per_cm / 1000.0 * sfreq).astype(int).tolist()


def _apply_field(base: np.ndarray, field: np.ndarray, delays: list[int] | None) -> np.ndarray:
    """(n,) waveform -> (19, n) ``field[ch] * base`` delayed per channel (np.roll; edges are tapered)."""
    out = np.empty((N_CH, base.shape[-1]), np.float32)
    for ch in range(N_CH):
        d = int(delays[ch]) if delays is not None else 0
        out[ch] = np.roll(base, d) if d else base
    out *= np.asarray(field, np.float32)[:, None]
    return out


def _smooth_edges(n: int, ramp: int) -> np.ndarray:
    i = np.arange(n)
    return np.clip(np.minimum(i + 1, n - i) / max(ramp, 1), 0.0, 1.0).astype(np.float32)


# Periodic discharges ---------------------------------------------------------------------------------------------
def discharge_template(p: Params, sfreq: float = SFREQ) -> tuple[np.ndarray, int]:
    """Sharp/spike (+ optional triphasic lead and fast activity) + slow wave; returns (template, zero index)."""
    t = np.arange(int(-0.15 * sfreq), int(0.75 * sfreq)) / sfreq
    d = p["sharp_ms"] / 1000.0
    x = -np.exp(-0.5 * (t / (d / 4)) ** 2) + 0.35 * np.exp(-0.5 * ((t - 0.55 * d) / (d / 3)) ** 2)
    if p["triphasic"]:
        x += 0.3 * np.exp(-0.5 * ((t + 0.5 * d) / (d / 4)) ** 2)
    s = p["slow_ms"] / 1000.0
    x -= p["slow_amp"] * np.exp(-0.5 * ((t - d - s / 2) / (s / 3.5)) ** 2)
    if p.get("fast_hz"):
        x += 0.25 * np.sin(2 * np.pi * p["fast_hz"] * t) * np.exp(-0.5 * ((t - 0.05) / 0.06) ** 2)
    x /= np.abs(x).max()
    return x.astype(np.float32), int(0.15 * sfreq)


def discharge_train(
    rng: np.random.Generator, n_times: int, rate: float, jitter: float, amp_sd: float = 0.15, sfreq: float = SFREQ
) -> tuple[np.ndarray, np.ndarray]:
    """Impulse train (n_times,) with inter-discharge intervals ``1/rate * (1 + jitter * N(0, 1))``."""
    period = sfreq / rate
    n_max = int(n_times / (0.5 * period)) + 2
    steps = period * np.clip(1.0 + jitter * rng.standard_normal(n_max), 0.5, 1.8)
    times = rng.uniform(0, period) + np.concatenate([[0.0], np.cumsum(steps[:-1])])
    times = times[times < n_times].astype(np.int64)
    train = np.zeros(n_times, np.float32)
    train[times] = np.clip(1.0 + amp_sd * rng.standard_normal(times.size), 0.4, 1.8)
    return train, times


def render_periodic(p: Params, n_times: int, rng: np.random.Generator, sfreq: float = SFREQ) -> np.ndarray:
    tpl, zero = discharge_template(p, sfreq)
    train, _ = discharge_train(rng, n_times, p["rate_hz"], p["jitter"], sfreq=sfreq)
    base = oaconvolve(train, tpl)[zero : zero + n_times].astype(np.float32)
    out = _apply_field(base, p["amp_uv"] * np.asarray(p["field"]), p.get("delays_samples"))
    return out * _smooth_edges(n_times, int(sfreq))


def draw_lpd(rng: np.random.Generator, ctx: Params) -> Params:
    side = _side(rng)
    focus = _focus(rng, side)
    edge = None
    rate = float(np.clip(rng.lognormal(np.log(1.0), 0.3), 0.5, 2.0))
    contra = float(rng.uniform(0.0, 0.35))
    alt = "GPD"
    r = rng.random()
    if r < 0.15:  # fast LPD: near the ictal-interictal border
        rate, edge, alt = float(rng.uniform(2.0, 2.5)), "fast_lpd", "Seizure"
    elif r < 0.28:  # bilateral asymmetric: between LPD and GPD
        contra, edge, alt = float(rng.uniform(0.45, 0.8)), "bilateral_asymmetric", "GPD"
    spike = rng.random() < 0.3
    width = float(rng.uniform(0.03, 0.06))
    return {
        "side": side,
        "focus": focus,
        "width_m": width,
        "contra_ratio": contra,
        "field": lateral_field(focus, width, contra).tolist(),
        "delays_samples": propagation_delays(focus, float(rng.uniform(4, 12))),
        "rate_hz": rate,
        "jitter": float(rng.uniform(0.05, 0.2)),
        "sharp_ms": float(rng.uniform(30, 70) if spike else rng.uniform(70, 200)),
        "triphasic": bool(rng.random() < 0.15),
        "slow_ms": float(rng.uniform(100, 300)),
        "slow_amp": float(rng.uniform(0.2, 0.7)),
        "fast_hz": float(rng.uniform(10, 25)) if rng.random() < 0.25 else None,
        "amp_uv": _amplitude(rng, 50, 300),
        "edge": edge,
        "alt": alt,
    }


def draw_gpd(rng: np.random.Generator, ctx: Params) -> Params:
    edge, alt = None, "LPD"
    asym, weak = 1.0, _side(rng)
    rate = float(rng.uniform(0.5, 2.5))
    r = rng.random()
    if r < 0.15:
        asym, edge, alt = float(rng.uniform(0.35, 0.6)), "asymmetric", "LPD"
    elif r < 0.25 and rate > 1.8:
        edge, alt = "fast_gpd", "Seizure"
    triphasic = bool(rng.random() < 0.4)
    gain = float(rng.uniform(0.5, 1.5))
    lag_ms = float(rng.uniform(25, 100)) if triphasic else 0.0
    delays = np.round((1.0 - anterior_gradient()) * lag_ms / 1000.0 * SFREQ).astype(int)
    return {
        "frontal_gain": gain,
        "asymmetry": asym,
        "weak_side": weak,
        "field": generalized_field(gain, asym, weak).tolist(),
        "delays_samples": delays.tolist(),
        "rate_hz": rate,
        "jitter": float(rng.uniform(0.03, 0.15)),
        "sharp_ms": float(rng.uniform(80, 220)),
        "triphasic": triphasic,
        "lag_ms": lag_ms,
        "slow_ms": float(rng.uniform(100, 300)),
        "slow_amp": float(rng.uniform(0.1, 0.5)),
        "fast_hz": None,
        "amp_uv": _amplitude(rng, 50, 200),
        "voltage_state": "low" if rng.random() < 0.6 else "normal",
        "edge": edge,
        "alt": alt,
    }


# Rhythmic activity -----------------------------------------------------------------------------------------------
def waveform(theta: np.ndarray, shape: str, sharpness: float) -> np.ndarray:
    """Periodic waveform of phase ``theta``: 'sine', 'sawtooth' (steep rise), 'sharp' or 'spike_wave'."""
    if shape == "sine":
        return np.sin(theta)
    if shape == "sawtooth":
        return np.sin(theta) + 0.45 * np.sin(2 * theta) + 0.2 * np.sin(3 * theta)
    if shape == "sharp":
        x = np.exp(sharpness * (np.cos(theta) - 1.0))
        return (x - x.mean()) / max(np.abs(x - x.mean()).max(), 1e-6)
    if shape == "spike_wave":
        spike = np.exp(sharpness * (np.cos(theta) - 1.0))
        wave = np.exp(2.0 * (np.cos(theta - 2.2) - 1.0))
        x = -spike - 0.7 * wave
        return (x - x.mean()) / max(np.abs(x - x.mean()).max(), 1e-6)
    raise invalid_value("shape", shape, "'sine', 'sawtooth', 'sharp', 'spike_wave'")


def _phase(freq: np.ndarray, rng: np.random.Generator, sfreq: float) -> np.ndarray:
    return (2 * np.pi * np.cumsum(freq) / sfreq + rng.uniform(0, 2 * np.pi)).astype(np.float64)


def _wander(rng: np.random.Generator, n_times: int, rel: float, sfreq: float) -> np.ndarray:
    """Slow (< 0.1 Hz) relative frequency wander of standard deviation ``rel``."""
    k = max(2, int(n_times / sfreq / 10) + 2)
    return 1.0 + rel * np.interp(np.arange(n_times), np.linspace(0, n_times, k), rng.standard_normal(k))


def render_rhythmic(p: Params, n_times: int, rng: np.random.Generator, sfreq: float = SFREQ) -> np.ndarray:
    freq = p["freq_hz"] * _wander(rng, n_times, p.get("wander", 0.03), sfreq)
    base = waveform(_phase(freq, rng, sfreq), p["shape"], p.get("sharpness", 4.0)).astype(np.float32)
    env = np.ones(n_times, np.float32)
    t = np.arange(n_times) / sfreq
    if p.get("wax_depth"):
        env *= (1.0 + p["wax_depth"] * np.sin(2 * np.pi * p["wax_hz"] * t + rng.uniform(0, 6.3))).astype(
            np.float32
        )
    if p.get("runs"):
        gate = np.zeros(n_times, np.float32)
        s = rng.uniform(0, 2) * sfreq
        while s < n_times:
            d = rng.uniform(*p["run_s"]) * sfreq
            a, b = int(s), int(min(s + d, n_times))
            gate[a:b] = _smooth_edges(b - a, int(0.3 * sfreq))
            s = b + rng.uniform(*p["gap_s"]) * sfreq
        env *= gate
    out = _apply_field(base * env, p["amp_uv"] * np.asarray(p["field"]), p.get("delays_samples"))
    return out * _smooth_edges(n_times, int(sfreq))


def draw_lrda(rng: np.random.Generator, ctx: Params) -> Params:
    side = _side(rng)
    edge, alt = None, "GRDA"
    freq = float(np.clip(rng.lognormal(np.log(1.5), 0.3), 0.5, 3.0))
    contra = float(rng.uniform(0.0, 0.3))
    r = rng.random()
    if r < 0.15:
        contra, edge, alt = float(rng.uniform(0.5, 0.8)), "bilateral_asymmetric", "GRDA"
    elif r < 0.25:
        freq, edge, alt = float(rng.uniform(2.5, 3.0)), "fast_lrda", "Seizure"
    hemi = hemisphere_mask(side)
    w = np.where(hemi == 1.0, 1.0, np.where(hemi == 0.5, 0.5 * (1 + contra), contra))
    w = w * (0.35 + 0.65 * anterior_gradient())
    run_lo = max(3.0, 6.0 / freq)
    origin = "F7" if side < 0 else "F8"
    return {
        "side": side,
        "delays_samples": propagation_delays(origin, float(rng.uniform(6, 18))),
        "contra_ratio": contra,
        "field": (w / w.max()).tolist(),
        "freq_hz": freq,
        "shape": "sawtooth" if rng.random() < 0.35 else "sine",
        "wander": 0.04,
        "runs": True,
        "run_s": (run_lo, max(run_lo + 1.0, 10.0)),
        "gap_s": (0.3, 2.5),
        "amp_uv": _amplitude(rng, 50, 200),
        "edge": edge,
        "alt": alt,
    }


def draw_grda(rng: np.random.Generator, ctx: Params) -> Params:
    edge, alt = None, "LRDA"
    freq = float(np.clip(rng.lognormal(np.log(2.0), 0.25), 1.0, 4.0))
    asym, weak = 1.0, _side(rng)
    r = rng.random()
    if r < 0.15:
        asym, edge, alt = float(rng.uniform(0.4, 0.65)), "asymmetric", "LRDA"
    elif r < 0.25:
        freq, edge, alt = float(rng.uniform(1.0, 1.5)), "slow_gpd_like", "GPD"
    gain = float(rng.uniform(0.3, 1.5)) if rng.random() < 0.7 else float(rng.uniform(0.0, 0.3))
    front = electrode_positions()[[CH_INDEX["Fp1"], CH_INDEX["Fp2"]]].mean(0)
    return {
        "delays_samples": propagation_delays(front, float(rng.uniform(6, 18))),
        "frontal_gain": gain,
        "asymmetry": asym,
        "weak_side": weak,
        "field": generalized_field(gain, asym, weak).tolist(),
        "freq_hz": freq,
        "shape": "sine" if edge != "slow_gpd_like" else "sharp",
        "sharpness": 3.0,
        "wander": 0.03,
        "wax_depth": float(rng.uniform(0.2, 0.5)),
        "wax_hz": float(rng.uniform(0.05, 0.25)),
        "amp_uv": _amplitude(rng, 50, 150),
        "edge": edge,
        "alt": alt,
    }


# Seizure -----------------------------------------------------------------------------------------------------------
def draw_seizure(rng: np.random.Generator, ctx: Params) -> Params:
    generalized = rng.random() < 0.3
    side = _side(rng)
    chain = str(rng.choice([c for c in CHAINS if (c[0] == "L") == (side < 0)]))
    electrodes = [a for a, _ in CHAINS[chain]] + [CHAINS[chain][-1][1]]
    n_el = int(rng.integers(2, 5))
    start = int(rng.integers(0, len(electrodes) - n_el + 1))
    core = electrodes[start : start + n_el]
    others = [e for e in EEG_CHANNELS if e not in core]
    pos = electrode_positions()
    core_c = pos[[CH_INDEX[e] for e in core]].mean(0)
    near = sorted(others, key=lambda e: float(((pos[CH_INDEX[e]] - core_c) ** 2).sum()))
    spread = near[: int(rng.integers(2, 6))]
    f0 = float(rng.uniform(2.5, 8.0))
    n_steps = int(rng.integers(2, 5))
    direction = -1 if rng.random() < 0.7 else 1
    freqs = [f0]
    for _ in range(n_steps):
        freqs.append(float(np.clip(freqs[-1] + direction * rng.uniform(0.5, 1.5), 1.5, 9.0)))
    edge, alt = None, "LPD"
    shape = str(rng.choice(["spike_wave", "sharp", "sine"], p=[0.4, 0.35, 0.25]))
    if rng.random() < 0.15:  # barely evolving, slow: the seizure / rhythmic delta border
        freqs = [float(rng.uniform(2.0, 3.0))] * 2
        edge, alt = "minimal_evolution", "GRDA" if generalized else "LRDA"
        shape = "sine"
    elif generalized:
        alt = "GPD"
    elif shape == "sine":
        alt = "LRDA"
    origin = core_c if not generalized else electrode_positions()[CH_INDEX["Fz"]]
    return {
        "generalized": bool(generalized),
        "delays_samples": propagation_delays(origin, float(rng.uniform(4, 12))),
        "side": side,
        "chain": chain,
        "core": core,
        "spread_to": spread if not generalized else [],
        "freqs_hz": freqs,
        "shape": shape,
        "sharpness": float(rng.uniform(6, 30)),
        "amp_uv": _amplitude(rng, 50, 300, faint_p=0.1),
        "ramp_frac": float(rng.uniform(0.1, 0.4)),
        "edge": edge,
        "alt": alt,
    }


def render_seizure(p: Params, n_times: int, rng: np.random.Generator, sfreq: float = SFREQ) -> np.ndarray:
    freqs = np.asarray(p["freqs_hz"])
    k = len(freqs)
    seg = np.minimum(np.arange(n_times) * k // max(n_times, 1), k - 1)
    f = freqs[seg] * _wander(rng, n_times, 0.02, sfreq)
    base = waveform(_phase(f, rng, sfreq), p["shape"], p["sharpness"]).astype(np.float32)
    t = np.arange(n_times) / n_times
    env = np.clip(0.3 + 0.7 * t / max(p["ramp_frac"], 1e-3), 0.3, 1.0).astype(np.float32)
    if p["generalized"]:
        field = generalized_field(0.5)
        w0, w1 = field * 0.6, field * 0.4
        spread_env = np.clip(t * 2.0, 0, 1).astype(np.float32)
    else:
        w0 = np.zeros(N_CH)
        for e in p["core"]:
            w0 = np.maximum(w0, gaussian_field(e, 0.025))
        w1 = np.zeros(N_CH)
        for e in p["spread_to"]:
            w1 = np.maximum(w1, 0.7 * gaussian_field(e, 0.025))
        onset = 0.3 + 0.3 * rng.random()
        spread_env = np.clip((t - onset) / 0.15, 0, 1).astype(np.float32)
    sig = base * env * np.float32(p["amp_uv"])
    delays = p.get("delays_samples")
    out = _apply_field(sig, w0, delays) + _apply_field(sig * spread_env, w1, delays)
    return out * _smooth_edges(n_times, int(0.5 * sfreq))


# Other -------------------------------------------------------------------------------------------------------------
OTHER_SUBTYPES = {
    "background": 0.24,
    "polymorphic_delta": 0.2,
    "sporadic_spikes": 0.12,
    "spindles": 0.1,
    "burst_suppression": 0.1,
    "artifact_heavy": 0.14,
    "pd_like_artifact": 0.1,
}


def draw_other(rng: np.random.Generator, ctx: Params) -> Params:
    names = list(OTHER_SUBTYPES)
    p = np.array(list(OTHER_SUBTYPES.values()))
    sub = names[rng.choice(len(names), p=p / p.sum())]
    out: Params = {"subtype": sub, "edge": None, "alt": None, "amp_uv": 0.0}
    side = _side(rng)
    if sub == "polymorphic_delta":
        focal = rng.random() < 0.5
        w = lateral_field(_focus(rng, side), 0.07, 0.2) if focal else generalized_field(0.3)
        out.update(field=w.tolist(), amp_uv=_amplitude(rng, 25, 90, 0.0), alt="LRDA" if focal else "GRDA")
    elif sub == "sporadic_spikes":
        focus = _focus(rng, side)
        out.update(
            field=lateral_field(focus, 0.04, 0.1).tolist(), rate_hz=float(rng.uniform(0.05, 0.4)), jitter=0.9,
            sharp_ms=float(rng.uniform(30, 120)), triphasic=False, slow_ms=150.0, slow_amp=0.3, fast_hz=None,
            amp_uv=_amplitude(rng, 50, 200, 0.0), alt="LPD",
        )  # fmt: skip
    elif sub == "spindles":
        out.update(amp_uv=float(rng.uniform(15, 50)), freq_hz=float(rng.uniform(12, 14)))
    elif sub == "burst_suppression":
        out.update(voltage_state="burst_suppression", alt="GPD")
    elif sub == "artifact_heavy":
        out.update(artifact_boost=float(rng.uniform(3, 6)))
    elif sub == "pd_like_artifact":
        ch = str(rng.choice(EEG_CHANNELS))
        field = np.zeros(N_CH)
        field[CH_INDEX[ch]] = 1.0
        out.update(
            channel=ch, field=field.tolist(), rate_hz=float(rng.uniform(0.8, 2.0)), jitter=float(rng.uniform(0.02, 0.1)),
            sharp_ms=float(rng.uniform(20, 60)), triphasic=False, slow_ms=float(rng.uniform(100, 300)),
            slow_amp=float(rng.uniform(0.0, 0.3)), fast_hz=None, amp_uv=_amplitude(rng, 40, 200, 0.0),
            alt="LPD" if rng.random() < 0.7 else "GPD",
        )  # fmt: skip
    return out


def render_other(p: Params, n_times: int, rng: np.random.Generator, sfreq: float = SFREQ) -> np.ndarray:
    sub = p["subtype"]
    if sub in ("sporadic_spikes", "pd_like_artifact"):
        return render_periodic(p, n_times, rng, sfreq)
    out = np.zeros((N_CH, n_times), np.float32)
    if sub == "polymorphic_delta":
        freqs = noise_freqs(n_times, sfreq)
        shape = band_shape(freqs, 1.2, 0.8)[None] * (freqs > 0.3)
        src = spectral_noise(rng, shape, n_times)[0]
        out += (0.6 * p["amp_uv"] * np.asarray(p["field"], np.float32))[:, None] * src[None]
    elif sub == "spindles":
        t = np.arange(n_times) / sfreq
        env = np.zeros(n_times, np.float32)
        s = rng.uniform(0, 3)
        while s < t[-1]:
            d = rng.uniform(0.5, 2.0)
            m = (t >= s) & (t < s + d)
            env[m] = np.sin(np.pi * (t[m] - s) / d) ** 2
            s += d + rng.uniform(3, 10)
        w = np.maximum(gaussian_field("C3", 0.05), gaussian_field("C4", 0.05))
        w = np.maximum(w, gaussian_field("Cz", 0.05)).astype(np.float32)
        out += (p["amp_uv"] * w)[:, None] * (env * np.sin(2 * np.pi * p["freq_hz"] * t))[None].astype(np.float32)
    return out


#: Registry: class -> (draw(rng, ctx) -> params, render(params, n_times, rng, sfreq) -> (19, n_times)).
PATTERNS: dict[str, tuple[Callable[..., Params], Callable[..., np.ndarray]]] = {
    "Seizure": (draw_seizure, render_seizure),
    "LPD": (draw_lpd, render_periodic),
    "GPD": (draw_gpd, render_periodic),
    "LRDA": (draw_lrda, render_rhythmic),
    "GRDA": (draw_grda, render_rhythmic),
    "Other": (draw_other, render_other),
}


def draw_pattern(cls: str, rng: np.random.Generator, ctx: Params | None = None) -> Params:
    check_option("cls", cls, PATTERNS)
    return PATTERNS[cls][0](rng, ctx or {})


def render_pattern(
    cls: str, params: Params, n_times: int, rng: np.random.Generator, sfreq: float = SFREQ
) -> np.ndarray:
    """(19, n_times) float32 pattern signal in microvolts."""
    return PATTERNS[cls][1](params, n_times, rng, sfreq).astype(np.float32, copy=False)
