"""Artifacts present in every class: eye blinks, lateral eye movements, muscle, electrode pops, ECG (with the
QRS in the EKG column), 60 Hz line noise (+120 Hz, aliased to 80 Hz), sweat/drift and disconnections, and what the
amplifier adds: single-sample spikes, DC offsets (constant or slowly drifting) and saturation (a channel pinned at
the amplifier's range for 0.1-10 s; the whole recording is clipped at that range, as a real amplifier does).

Rates are per minute and come from the patient's style; :func:`add_artifacts`, :func:`add_amplifier_artifacts` and
:func:`add_disconnections` work in place on a ``(19, n_times)`` session array and return the list of events they
placed (for tests and the manifest). Shapes (shared/reference/synthetic_eeg.md): a pop rises in one or two samples
(10-90 % rise 4-8 ms < 10 ms) and decays with a time constant of 50-500 ms, 100-1000 uV; a spike is one sample of
100-1000 uV; a DC offset is 10-300 uV; a saturated stretch lasts 0.1-10 s at the range.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hms_core.constants import EEG_CHANNELS, SFREQ
from hms_core.synthetic.spatial import CH_INDEX

N_CH = len(EEG_CHANNELS)
#: Poisson-timed transients of :func:`add_artifacts`.
TRANSIENT_KINDS = ("blink", "lateral_eye", "muscle", "pop", "drift")
#: Poisson-timed events of :func:`add_amplifier_artifacts` (DC offsets are per channel, not timed).
AMPLIFIER_KINDS = ("spike", "saturation")
DISCONNECTION_KINDS = ("flat", "nan_channel", "nan_gap")
ARTIFACT_KINDS = (*TRANSIENT_KINDS, *AMPLIFIER_KINDS, "dc_offset", *DISCONNECTION_KINDS)
#: Input ranges (+- uV) of EEG amplifiers: 16-bit at 0.1 uV (3276.7), at 0.2 uV (6553.4), and a +-5 mV front end.
AMPLIFIER_RANGES_UV = (3276.7, 5000.0, 6553.4)
DEFAULT_RANGE_UV = AMPLIFIER_RANGES_UV[0]
POP_UV = (100.0, 1000.0)
POP_TAU_S = (0.05, 0.5)
SPIKE_UV = (100.0, 1000.0)
DC_OFFSET_UV = (10.0, 300.0)
SATURATION_S = (0.1, 10.0)


def _idx(*names: str) -> list[int]:
    return [CH_INDEX[n] for n in names]


def draw_artifact_style(rng: np.random.Generator) -> dict[str, Any]:
    """Patient-level artifact mix: rates (events per minute), line-noise and ECG parameters."""
    awake = rng.random() < 0.3
    return {
        "rates": {
            "blink": float(rng.uniform(1, 10) if awake else rng.uniform(0, 1.0)),
            "lateral_eye": float(rng.uniform(0.5, 4) if awake else rng.uniform(0, 0.5)),
            "muscle": float(rng.exponential(1.0)),
            "pop": float(rng.exponential(0.3)),
            "drift": float(rng.exponential(0.3)),
            "flat": float(rng.exponential(0.05)),
            "nan_channel": float(rng.exponential(0.02)),
            "nan_gap": float(rng.exponential(0.015)),
        },
        "line_uv": float(rng.choice([0.0, rng.uniform(1, 8), rng.uniform(8, 50)], p=[0.25, 0.5, 0.25])),
        "line_120_ratio": float(rng.uniform(0.05, 0.4)),
        "heart_bpm": float(rng.uniform(50, 120)),
        "ekg_uv": float(rng.uniform(500, 2000)),
        "ecg_leak_uv": float(rng.uniform(2, 20)),
        "ekg_present": bool(rng.random() < 0.95),
        **draw_amplifier_style(rng.spawn(1)[0]),
    }


def draw_amplifier_style(rng: np.random.Generator) -> dict[str, Any]:
    """Patient-level amplifier artifacts: spike and saturation rates (per minute), the share of channels with a DC
    offset and the amplifier range. Drawn from a child stream, so adding them left every other draw unchanged."""
    return {
        "amplifier_rates": {
            "spike": float(rng.exponential(0.15)),
            "saturation": 0.0 if rng.random() < 0.5 else float(rng.exponential(0.1)),
        },
        "dc_p": 0.0 if rng.random() < 0.3 else float(rng.uniform(0.1, 0.7)),
        "dc_drift_p": float(rng.uniform(0.2, 0.8)),
        "amp_range_uv": float(rng.choice(AMPLIFIER_RANGES_UV)),
    }


def qrs_template(sfreq: float = SFREQ, qrs_ms: float = 80.0) -> tuple[np.ndarray, int]:
    """PQRST complex with R = +1; QRS width ``qrs_ms`` (60-100 ms). Returns (template, R index)."""
    t = np.arange(int(-0.25 * sfreq), int(0.45 * sfreq)) / sfreq
    q = qrs_ms / 1000.0

    def g(mu: float, sd: float) -> np.ndarray:
        return np.exp(-0.5 * ((t - mu) / sd) ** 2)

    x = (
        0.12 * g(-0.16, 0.03)
        - 0.12 * g(-q / 3, q / 10)
        + g(0.0, q / 7)
        - 0.25 * g(q / 3, q / 10)
        + 0.3 * g(0.28, 0.05)
    )
    return x.astype(np.float32), int(0.25 * sfreq)


def ecg(
    rng: np.random.Generator, n_times: int, heart_bpm: float, sfreq: float = SFREQ
) -> tuple[np.ndarray, np.ndarray]:
    """Unit-R-amplitude ECG (n_times,) with 3% heart-rate variability; returns (signal, R-peak sample indices)."""
    rr = 60.0 / heart_bpm * sfreq
    n_beats = int(n_times / (0.8 * rr)) + 2
    steps = rr * (1.0 + 0.03 * rng.standard_normal(n_beats))
    r_idx = (rng.uniform(0, rr) + np.concatenate([[0.0], np.cumsum(steps[:-1])])).astype(np.int64)
    r_idx = r_idx[r_idx < n_times]
    train = np.zeros(n_times, np.float32)
    train[r_idx] = 1.0
    tpl, zero = qrs_template(sfreq, float(rng.uniform(60, 100)))
    from scipy.signal import oaconvolve

    sig = oaconvolve(train, tpl)[zero : zero + n_times].astype(np.float32)
    return sig, r_idx


def line_noise(n_times: int, amp_uv: np.ndarray, ratio_120: float, sfreq: float = SFREQ) -> np.ndarray:
    """(len(amp_uv), n_times) 60 Hz + 120 Hz (aliases to 80 Hz at 200 Hz sampling) interference."""
    period = int(sfreq) // int(np.gcd(int(sfreq), 60))  # 10 samples at 200 Hz: tile one period
    t = np.arange(period) / sfreq
    one = np.sin(2 * np.pi * 60 * t + 0.3) + ratio_120 * np.sin(2 * np.pi * 120 * t + 1.1)
    base = np.tile(one.astype(np.float32), n_times // period + 1)[:n_times]
    return np.asarray(amp_uv, np.float32)[:, None] * base[None, :]


def _smooth_box(n: int, ramp: int) -> np.ndarray:
    i = np.arange(n)
    r = np.clip(np.minimum(i + 1, n - i) / max(ramp, 1), 0, 1)
    return (0.5 - 0.5 * np.cos(np.pi * r)).astype(np.float32)


def _place(x: np.ndarray, chans: list[int], weights: np.ndarray, start: int, wave: np.ndarray) -> None:
    n = x.shape[-1]
    a, b = max(start, 0), min(start + wave.shape[-1], n)
    if a >= b:
        return
    w = wave[..., a - start : b - start]
    x[chans, a:b] += weights[:, None].astype(np.float32) * (w if w.ndim == 2 else w[None, :])


def _event(kind: str, x: np.ndarray, rng: np.random.Generator, start: int, sfreq: float) -> dict[str, Any]:
    """Add one artifact of ``kind`` at sample ``start``; returns its description."""
    ev: dict[str, Any] = {"kind": kind, "start_s": start / sfreq}
    if kind == "blink":
        d = int(rng.uniform(0.2, 0.4) * sfreq)
        amp = rng.uniform(50, 200)
        wave = (np.sin(np.pi * np.arange(d) / d) ** 2).astype(np.float32) * amp
        spread = rng.uniform(0.3, 0.6)
        _place(
            x,
            _idx("Fp1", "Fp2", "F3", "F4", "F7", "F8", "Fz"),
            np.array([1, 1, spread, spread, spread, spread, 0.5 * spread]),
            start,
            wave,
        )
        ev.update(dur_s=d / sfreq, amp_uv=amp)
    elif kind == "lateral_eye":
        d = int(rng.uniform(0.3, 2.0) * sfreq)
        amp = rng.uniform(20, 100) * rng.choice([-1, 1])
        wave = _smooth_box(d, int(0.05 * sfreq)) * amp
        _place(x, _idx("F7", "F8", "Fp1", "Fp2"), np.array([1.0, -1.0, 0.3, -0.3]), start, wave)
        ev.update(dur_s=d / sfreq, amp_uv=abs(amp))
    elif kind == "muscle":
        d = int(rng.uniform(0.2, 5.0) * sfreq)
        chans = list(
            rng.choice(_idx("T3", "T4", "F7", "F8", "Fp1", "Fp2"), size=int(rng.integers(1, 5)), replace=False)
        )
        amp = rng.uniform(10, 100)
        noise = np.diff(rng.standard_normal((len(chans), d + 1)).astype(np.float32), axis=-1) / np.float32(
            np.sqrt(2)
        )
        _place(x, chans, np.full(len(chans), amp), start, noise * _smooth_box(d, int(0.05 * sfreq)))
        ev.update(dur_s=d / sfreq, amp_uv=amp, channels=[EEG_CHANNELS[c] for c in chans])
    elif kind == "pop":
        ch = int(rng.integers(0, N_CH))
        amp = rng.uniform(*POP_UV) * rng.choice([-1, 1])
        tau = rng.uniform(*POP_TAU_S) * sfreq
        rise = int(rng.integers(1, 3))  # samples from the (zero) onset sample to the peak: 10-90 % rise 4-8 ms
        m = int(5 * tau) + rise
        wave = np.where(np.arange(m) < rise, np.arange(m) / rise, np.exp(-(np.arange(m) - rise) / tau)).astype(
            np.float32
        )
        _place(x, [ch], np.array([amp]), start, wave)
        ev.update(amp_uv=abs(amp), tau_s=tau / sfreq, rise_samples=rise, channels=[EEG_CHANNELS[ch]])
    elif kind == "drift":
        d = int(rng.uniform(5, 30) * sfreq)
        f = rng.uniform(0.05, 0.4)
        amp = rng.uniform(50, 500)
        chans = list(
            rng.choice(
                _idx("Fp1", "Fp2", "F7", "F8", "T3", "T4", "F3", "F4"), size=int(rng.integers(1, 5)), replace=False
            )
        )
        wave = np.sin(2 * np.pi * f * np.arange(d) / sfreq + rng.uniform(0, 6.3)).astype(np.float32) * _smooth_box(
            d, int(sfreq)
        )
        _place(x, chans, amp * rng.uniform(0.5, 1.0, len(chans)), start, wave)
        ev.update(dur_s=d / sfreq, amp_uv=amp, channels=[EEG_CHANNELS[c] for c in chans])
    return ev


def add_artifacts(
    x: np.ndarray,
    rng: np.random.Generator,
    style: dict[str, Any],
    boosts: list[tuple[int, int, float]] = (),
    sfreq: float = SFREQ,
) -> list[dict[str, Any]]:
    """Add Poisson-timed transient artifacts to ``x`` (19, n_times) in place.

    ``boosts`` lists (start, stop, factor) sample ranges where every rate is multiplied by ``factor``
    (artifact-heavy 'Other' samples).
    """
    n = x.shape[-1]
    events: list[dict[str, Any]] = []
    ranges = [(0, n, 1.0)] + [(a, b, f - 1.0) for a, b, f in boosts if f > 1.0]
    for a, b, factor in ranges:
        minutes = (b - a) / sfreq / 60.0
        for kind in TRANSIENT_KINDS:
            k = rng.poisson(style["rates"].get(kind, 0.0) * minutes * factor)
            for s in np.sort(rng.integers(a, b, size=k)):
                events.append(_event(kind, x, rng, int(s), sfreq))
    return events


def dc_offsets(
    rng: np.random.Generator, n_times: int, share: float, drift_p: float
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(19, n_times) float32 offsets: each channel with probability ``share`` carries a DC offset of 10-300 uV
    (log-uniform, either sign), constant or (probability ``drift_p``) drifting linearly to another 10-300 uV value
    of the same sign over the recording (at most 290 uV in >= 50 s: < 6 uV/s)."""
    out = np.zeros((N_CH, n_times), np.float32)
    events: list[dict[str, Any]] = []
    lo, hi = np.log(DC_OFFSET_UV[0]), np.log(DC_OFFSET_UV[1])
    ramp = np.linspace(0.0, 1.0, n_times, dtype=np.float32)
    for ch in np.flatnonzero(rng.random(N_CH) < share):
        sign = float(rng.choice([-1.0, 1.0]))
        start = float(np.exp(rng.uniform(lo, hi)))
        end = float(np.exp(rng.uniform(lo, hi))) if rng.random() < drift_p else start
        out[ch] = sign * (start + (end - start) * ramp)
        events.append(
            {"kind": "dc_offset", "channel": EEG_CHANNELS[ch], "start_uv": sign * start, "end_uv": sign * end}
        )
    return out, events


def add_amplifier_artifacts(
    x: np.ndarray,
    rng: np.random.Generator,
    style: dict[str, Any],
    boosts: list[tuple[int, int, float]] = (),
    sfreq: float = SFREQ,
) -> list[dict[str, Any]]:
    """Single-sample spikes, DC offsets and saturated stretches, then clip ``x`` (19, n_times) at the amplifier
    range, in place. Style keys missing (an older style) mean none of them. Returns the events."""
    n = x.shape[-1]
    rates = style.get("amplifier_rates", {})
    limit = np.float32(style.get("amp_range_uv", DEFAULT_RANGE_UV))
    offsets, events = dc_offsets(rng, n, style.get("dc_p", 0.0), style.get("dc_drift_p", 0.0))
    x += offsets
    ranges = [(0, n, 1.0)] + [(a, b, f - 1.0) for a, b, f in boosts if f > 1.0]
    for a, b, factor in ranges:
        minutes = (b - a) / sfreq / 60.0
        for kind in AMPLIFIER_KINDS:
            for s in np.sort(rng.integers(a, b, size=rng.poisson(rates.get(kind, 0.0) * minutes * factor))):
                s = int(s)
                if kind == "spike":
                    ch = int(rng.integers(0, N_CH))
                    amp = float(rng.uniform(*SPIKE_UV) * rng.choice([-1, 1]))
                    x[ch, s] += np.float32(amp)
                    events.append(
                        {"kind": kind, "start_s": s / sfreq, "amp_uv": abs(amp), "channels": [EEG_CHANNELS[ch]]}
                    )
                else:
                    # a movement or a lead touched: the input leaves the range, the amplifier pins it at the rail
                    d = max(1, int(np.exp(rng.uniform(*np.log(SATURATION_S))) * sfreq))
                    chans = sorted(rng.choice(N_CH, size=int(rng.integers(1, 4)), replace=False).tolist())
                    sign = float(rng.choice([-1.0, 1.0]))
                    x[chans, s : s + d] += np.float32(sign * 3.0) * limit
                    events.append(
                        {
                            "kind": kind,
                            "start_s": s / sfreq,
                            "dur_s": min(d, n - s) / sfreq,
                            "level_uv": sign * float(limit),
                            "channels": [EEG_CHANNELS[c] for c in chans],
                        }
                    )
    np.clip(x, -limit, limit, out=x)
    return events


def add_disconnections(
    x: np.ndarray, rng: np.random.Generator, style: dict[str, Any], sfreq: float = SFREQ
) -> list[dict[str, Any]]:
    """Flat channels (0 +- tiny noise), NaN stretches on one channel, and NaN gaps on all channels, in place."""
    n = x.shape[-1]
    minutes = n / sfreq / 60.0
    events: list[dict[str, Any]] = []
    for kind in DISCONNECTION_KINDS:
        for s in rng.integers(0, n, size=rng.poisson(style["rates"].get(kind, 0.0) * minutes)):
            d = int(rng.uniform(1, 30 if kind != "nan_gap" else 8) * sfreq)
            s = int(s)
            if kind == "flat":
                ch = int(rng.integers(0, N_CH))
                x[ch, s : s + d] = rng.normal(0, 0.05, size=x[ch, s : s + d].shape)
            elif kind == "nan_channel":
                ch = int(rng.integers(0, N_CH))
                x[ch, s : s + d] = np.nan
            else:
                ch = -1
                x[:, s : s + d] = np.nan
            events.append({"kind": kind, "start_s": s / sfreq, "dur_s": d / sfreq, "channel": ch})
    return events
