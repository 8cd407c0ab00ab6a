"""Long synthetic recordings (hours) with annotated events of every class, streamed to EDF in chunks.

A recording is planned first (cheap, deterministic by seed): one patient style (the data-set generator's
:func:`~hms_core.synthetic.generator.draw_patient_style`), alternating wake and sleep stretches of 30-120 min
(wake: posterior alpha, more blinks and muscle; sleep: no alpha, steeper 1/f, higher amplitude, spindles), and a
sequence of events that never overlap, each class drawn by :func:`~hms_core.synthetic.patterns.draw_pattern`,
the very parameters the 50-s training samples use:

- seizures of 30-180 s whose frequency and amplitude evolve (the seizure renderer's stepped frequencies and
  amplitude ramp), some emerging from a few minutes of LPDs on the same side (the ictal-interictal continuum);
- LPD, GPD (2-20 min), LRDA, GRDA (1-10 min) whose amplitude waxes and wanes over 40-180 s;
- at least 3 minutes between consecutive events (more than the 90-s SzCORE merge gap).

The signal is then rendered chunk by chunk (``chunk_s``, default 5 min): background (crossfaded over 5 s between
chunks so stretches join without a step), the events overlapping the chunk (an event is rendered once, when the
first chunk reaches it, and dropped when the chunk passes its end, so at most a few 20-min events are in memory),
transient and amplifier artifacts, movement bursts (all channels, 3-15 s), flat and disconnected stretches
(amplifier at zero: EDF cannot carry NaN), ECG in the EKG channel and its leak, line noise. Each chunk is written to
the EDF at once: a 24-h file never needs more than a chunk plus the live events in memory.

The truth goes beside the EDF as ``<stem>_events.tsv`` in the BIDS / SzCORE layout (onset, duration, eventType,
confidence, channels, dateTime, recordingDuration), and the artifacts as ``<stem>_artifacts.tsv``.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hms_core.checks import check_option, check_range
from hms_core.constants import EEG_CHANNELS, LEFT_CHANNELS, RIGHT_CHANNELS, SFREQ
from hms_core.io import atomic_path, write_text
from hms_core.scanning.events import DATETIME_FORMAT, EVENT_TYPES, EVENTS_COLUMNS
from hms_core.synthetic.artifacts import DEFAULT_RANGE_UV, add_amplifier_artifacts, add_artifacts, ecg, line_noise
from hms_core.synthetic.background import background, draw_background_params
from hms_core.synthetic.generator import _LEAK_W, draw_patient_style
from hms_core.synthetic.patterns import draw_pattern, render_other, render_pattern
from hms_core.synthetic.spatial import CH_INDEX

__all__ = ["EVENT_DURATION_S", "LongPlan", "plan_long_recording", "truth_path", "write_long_recording"]

N_CH = len(EEG_CHANNELS)
#: Duration range (s) of each class's events.
EVENT_DURATION_S: dict[str, tuple[float, float]] = {
    "Seizure": (30.0, 180.0), "LPD": (120.0, 1200.0), "GPD": (120.0, 1200.0), "LRDA": (60.0, 600.0),
    "GRDA": (60.0, 600.0),
}  # fmt: skip
#: How often each class is drawn for the next event (seizures most: they are what the benchmark scores first).
EVENT_MIX: dict[str, float] = {"Seizure": 0.32, "LPD": 0.17, "GPD": 0.17, "LRDA": 0.17, "GRDA": 0.17}
MIN_GAP_S = 180.0
CROSSFADE_S = 5.0
LABEL_STYLES = ("ref", "le_1010")
_ALIAS_1010 = {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}


@dataclass
class LongEvent:
    cls: str
    onset_s: float
    duration_s: float
    params: dict[str, Any]
    wax_period_s: float
    seed: list[int]

    @property
    def end_s(self) -> float:
        return self.onset_s + self.duration_s

    @property
    def channels(self) -> str:
        """The hemisphere's electrodes for lateralised events, else n/a (generalized)."""
        p = self.params
        if self.cls in ("GPD", "GRDA") or (self.cls == "Seizure" and p.get("generalized")):
            return "n/a"
        return ",".join(LEFT_CHANNELS if p.get("side", -1) < 0 else RIGHT_CHANNELS)


@dataclass
class LongPlan:
    duration_s: int
    sfreq: int
    style: dict[str, Any]
    states: list[tuple[float, float, str, dict[str, Any]]]  # (start, end, "wake"|"sleep", background params)
    events: list[LongEvent]
    seed: int
    start: dt.datetime
    artifacts: list[dict[str, Any]] = field(default_factory=list)


def _state_background(rng: np.random.Generator, style: dict[str, Any], state: str) -> dict[str, Any]:
    bg = draw_background_params(rng, style)
    if state == "sleep":
        bg.update(alpha_amp=0.0, beta=bg["beta"] + 0.35, rms=bg["rms"] * 1.3, beta_amp=bg["beta_amp"] * 0.5)
    else:
        bg.update(alpha_amp=max(bg["alpha_amp"], 8.0))
    return bg


def plan_long_recording(
    hours: float,
    seed: int,
    *,
    sfreq: int = SFREQ,
    mean_gap_min: float = 8.0,
    start: dt.datetime | None = None,
    event_mix: dict[str, float] | None = None,
) -> LongPlan:
    """States and events of one long recording (no signal yet)."""
    check_range("hours", hours, 1.0 / 60.0, 96.0)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 15, 0]))
    duration = round(hours * 3600)
    style = draw_patient_style(rng)
    style["dc_p"] = 0.0  # a DC offset per chunk would step at every chunk boundary
    states = []
    t, state = 0.0, "wake" if rng.random() < 0.5 else "sleep"
    while t < duration:
        d = float(rng.uniform(30, 120) * 60)
        states.append((t, min(t + d, duration), state, _state_background(rng, style, state)))
        t += d
        state = "sleep" if state == "wake" else "wake"
    mix = event_mix or EVENT_MIX
    names = list(mix)
    p = np.array([mix[c] for c in names], float)
    events: list[LongEvent] = []
    t = float(rng.uniform(60, 300))
    k = 0
    # every class once first (seizures first: the benchmark scores them), then drawn from the mix
    order = sorted(names, key=lambda c: c != "Seizure")
    order = order[:1] + [str(c) for c in rng.permutation(order[1:])]

    def new(cls: str, onset: float, dur: float, params: dict[str, Any] | None = None) -> LongEvent:
        nonlocal k
        k += 1
        return LongEvent(cls, onset, dur, params or draw_pattern(cls, rng), float(rng.uniform(40, 180)),
                         [seed, 15, 2, k])  # fmt: skip

    while True:
        cls = order.pop(0) if order else str(names[rng.choice(len(names), p=p / p.sum())])
        dur = float(np.exp(rng.uniform(*np.log(EVENT_DURATION_S[cls]))))
        lead = None
        if cls == "Seizure" and rng.random() < 0.25:  # emerging from LPDs on the same side
            lead_dur = float(rng.uniform(120, 300))
            lead = new("LPD", t, lead_dur)
        onset = t + (lead.duration_s if lead else 0.0)
        if onset + dur > duration - 60:
            break
        ev = new(cls, onset, dur)
        if lead is not None:
            ev.params["side"] = lead.params["side"]
            events.append(lead)
        events.append(ev)
        t = onset + dur + MIN_GAP_S + float(rng.exponential(mean_gap_min * 60))
    start = start or dt.datetime(2026, 1, 1, 20, 0, 0) + dt.timedelta(minutes=int(rng.integers(0, 600)))
    return LongPlan(duration, sfreq, style, states, events, seed, start)


def _render_event(ev: LongEvent, sfreq: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence(ev.seed))
    n = round(ev.duration_s * sfreq)
    x = render_pattern(ev.cls, ev.params, n, rng, sfreq)
    if ev.cls != "Seizure":  # periodic and rhythmic patterns wax and wane
        t = np.arange(n) / sfreq
        env = 0.6 + 0.4 * np.sin(2 * np.pi * t / ev.wax_period_s + rng.uniform(0, 2 * np.pi))
        x *= env.astype(np.float32)
    return x


def _movement(x: np.ndarray, rng: np.random.Generator, start: int, sfreq: int) -> dict[str, Any]:
    """A movement burst: large slow swings plus muscle on every channel for 3-15 s."""
    n = x.shape[-1]
    d = int(rng.uniform(3, 15) * sfreq)
    a, b = start, min(start + d, n)
    m = b - a
    if m <= 0:
        return {}
    t = np.arange(m) / sfreq
    ramp = np.clip(np.minimum(t, t[-1] - t) / 0.5, 0, 1).astype(np.float32)
    slow = np.sin(2 * np.pi * rng.uniform(0.3, 2.0) * t + rng.uniform(0, 6.3))[None, :] * rng.uniform(
        0.3, 1.0, (N_CH, 1)
    )
    emg = np.diff(rng.standard_normal((N_CH, m + 1)), axis=-1)
    amp = float(rng.uniform(150, 600))
    x[:, a:b] += (amp * slow + 0.25 * amp * emg).astype(np.float32) * ramp
    return {"kind": "movement", "start_s": a / sfreq, "dur_s": m / sfreq, "amp_uv": amp}


def _disconnect(x: np.ndarray, rng: np.random.Generator, start: int, sfreq: int, kind: str) -> dict[str, Any]:
    d = int(rng.uniform(5, 60) * sfreq)
    a, b = start, min(start + d, x.shape[-1])
    if kind == "flat_channel":
        ch = int(rng.integers(0, N_CH))
        x[ch, a:b] = rng.normal(0.0, 0.05, b - a)
        return {"kind": kind, "start_s": a / sfreq, "dur_s": (b - a) / sfreq, "channels": EEG_CHANNELS[ch]}
    x[:, a:b] = rng.normal(0.0, 0.05, (N_CH, b - a))  # the amplifier lost every lead: flat zero line
    return {"kind": kind, "start_s": a / sfreq, "dur_s": (b - a) / sfreq, "channels": "all"}


#: Per-hour rates of the long-recording artifacts (the transient ones come from the patient style, per minute).
LONG_ARTIFACT_RATES_PER_H: dict[str, float] = {"movement": 3.0, "flat_channel": 1.0, "disconnection": 0.5}


def _state_at(plan: LongPlan, t_s: float) -> tuple[str, dict[str, Any]]:
    for s0, s1, state, bg in plan.states:
        if s0 <= t_s < s1:
            return state, bg
    return plan.states[-1][2], plan.states[-1][3]


def render_chunk(
    plan: LongPlan,
    a: int,
    b: int,
    live: dict[int, np.ndarray],
    carry: np.ndarray | None = None,
    artifacts: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], np.ndarray]:
    """Samples ``[a, b)`` of the recording: (EEG (19, b - a), EKG (b - a,), artifact events, carry).

    The background is rendered over ``[a, b + fade)``; its first ``fade`` samples are crossfaded (sin/cos ramps,
    which keep the power of two independent noises) with ``carry``, the previous chunk's overhang, and its last
    ``fade`` samples are returned as the next chunk's ``carry``. ``live`` caches rendered events between calls.
    """
    sf = plan.sfreq
    rng = np.random.default_rng(np.random.SeedSequence([plan.seed, 15, 1, a]))
    n = b - a
    fade = int(CROSSFADE_S * sf)
    state, bg = _state_at(plan, (a + b) / 2 / sf)
    x = background(rng, n + fade, bg, sf)
    if state == "sleep":
        x += render_other({"subtype": "spindles", "amp_uv": 25.0, "freq_hz": 13.0}, n + fade, rng, sf)
    if carry is not None:
        m = min(fade, n, carry.shape[1])
        ramp = np.linspace(0.0, np.pi / 2, m, dtype=np.float32)
        x[:, :m] = x[:, :m] * np.sin(ramp) + carry[:, :m] * np.cos(ramp)
    carry_out = x[:, n:].copy()
    x = np.ascontiguousarray(x[:, :n])
    for i, ev in enumerate(plan.events):
        ea = round(ev.onset_s * sf)
        eb = ea + round(ev.duration_s * sf)  # the length _render_event renders
        if eb <= a or ea >= b:
            continue
        if i not in live:
            live[i] = _render_event(ev, sf)
        sig = live[i]
        lo, hi = max(a, ea), min(b, eb)
        x[:, lo - a : hi - a] += sig[:, lo - ea : hi - ea]
    for i in [i for i in live if round(plan.events[i].onset_s * sf) + live[i].shape[1] <= b]:
        del live[i]
    events: list[dict[str, Any]] = []
    ekg = rng.normal(0.0, 5.0, n).astype(np.float32)
    if artifacts:
        style = plan.style
        events += add_artifacts(x, rng, style, (), sf)
        heart, _ = ecg(rng, n, style["heart_bpm"], sf)
        if style["ekg_present"]:
            ekg += np.float32(style["ekg_uv"]) * heart
        leak = np.zeros(N_CH, np.float32)
        for ch, wgt in _LEAK_W.items():
            leak[CH_INDEX[ch]] = wgt * style["ecg_leak_uv"]
        x += leak[:, None] * heart[None, :]
        if style["line_uv"] > 0:
            amps = style["line_uv"] * np.random.default_rng([plan.seed, 15, 4]).uniform(0.3, 1.5, N_CH + 1)
            lines = line_noise(n, amps, style["line_120_ratio"], sf)
            x += lines[:-1]
            ekg += lines[-1]
        hours = n / sf / 3600.0
        for kind, rate in LONG_ARTIFACT_RATES_PER_H.items():
            for s in np.sort(rng.integers(0, n, size=rng.poisson(rate * hours))):
                ev = _movement(x, rng, int(s), sf) if kind == "movement" else _disconnect(x, rng, int(s), sf, kind)
                if ev:
                    events.append(ev)
        events += add_amplifier_artifacts(x, rng, style, (), sf)
    for e in events:
        e["start_s"] = float(e.get("start_s", 0.0)) + a / sf
    return x, ekg, events, carry_out


def truth_path(edf_path: str | os.PathLike[str], what: str = "events") -> Path:
    """``<stem>_events.tsv`` (BIDS: ``..._eeg.edf`` -> ``..._events.tsv``) beside the EDF."""
    p = Path(edf_path)
    return p.with_name(p.stem.removesuffix("_eeg") + f"_{what}.tsv")


def _labels(style: str) -> list[str]:
    check_option("labels", style, LABEL_STYLES)
    if style == "ref":
        return [f"EEG {ch}-REF" for ch in EEG_CHANNELS] + ["ECG EKG"]
    return [f"{_ALIAS_1010.get(ch, ch)}-LE" for ch in EEG_CHANNELS] + ["EKG1"]


def truth_table(plan: LongPlan) -> pd.DataFrame:
    rows = [
        {
            "onset": round(ev.onset_s, 3),
            "duration": round(ev.duration_s, 3),
            "eventType": EVENT_TYPES[ev.cls],
            "confidence": 1.0,
            "channels": ev.channels,
            "dateTime": (plan.start + dt.timedelta(seconds=ev.onset_s)).strftime(DATETIME_FORMAT),
            "recordingDuration": float(plan.duration_s),
        }
        for ev in plan.events
    ]
    return pd.DataFrame(rows, columns=list(EVENTS_COLUMNS))


def write_long_recording(
    path: str | os.PathLike[str],
    hours: float,
    seed: int = 0,
    *,
    sfreq: int = SFREQ,
    chunk_s: int = 300,
    labels: str = "ref",
    artifacts: bool = True,
    mean_gap_min: float = 8.0,
    event_mix: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Write a long synthetic EDF+ (19 EEG + EKG, clinical labels, ``sfreq`` Hz, microvolts) and its truth.

    Returns the truth events (the ``<stem>_events.tsv`` table). Deterministic by ``seed`` (and ``chunk_s``).
    """
    import pyedflib

    check_range("sfreq", sfreq, 100, 2000)
    check_range("chunk_s", chunk_s, 10, 3600)
    path = Path(path)
    plan = plan_long_recording(hours, seed, sfreq=sfreq, mean_gap_min=mean_gap_min, event_mix=event_mix)
    limit = float(plan.style.get("amp_range_uv", DEFAULT_RANGE_UV))
    names = _labels(labels)
    headers = [
        {"label": lab, "dimension": "uV", "sample_frequency": sfreq, "physical_max": limit, "physical_min": -limit,
         "digital_max": 32767, "digital_min": -32768, "transducer": "AgAgCl electrode", "prefilter": "HP:0.1Hz"}
        for lab in names
    ]  # fmt: skip
    headers[-1].update(physical_max=5000.0, physical_min=-5000.0, transducer="ECG electrode")
    n_total = plan.duration_s * sfreq
    step = chunk_s * sfreq
    live: dict[int, np.ndarray] = {}
    arts: list[dict[str, Any]] = []
    with atomic_path(path, suffix=".tmp.edf") as tmp:
        w = pyedflib.EdfWriter(str(tmp), len(names), file_type=pyedflib.FILETYPE_EDFPLUS)
        try:
            w.setSignalHeaders(headers)
            w.setStartdatetime(plan.start)
            w.setPatientCode(f"synthetic-{seed}")
            w.setEquipment("hms_core.synthetic.long")
            carry = None
            for a in range(0, n_total, step):
                b = min(a + step, n_total)
                x, ekg, ev, carry = render_chunk(plan, a, b, live, carry, artifacts)
                arts += ev
                x = np.nan_to_num(np.clip(x, -limit, limit), nan=0.0)
                data = np.vstack([x, np.clip(ekg, -5000, 5000)[None]]).astype(np.float64)
                w.writeSamples(np.ascontiguousarray(data))
        finally:
            w.close()
    truth = truth_table(plan)
    write_text(truth_path(path), truth.to_csv(sep="\t", index=False))
    art = pd.DataFrame(arts)
    if len(art):
        art = art[[c for c in ("kind", "start_s", "dur_s", "amp_uv", "channels") if c in art.columns]]
        if "channels" in art.columns:
            art["channels"] = [",".join(c) if isinstance(c, list) else c for c in art["channels"]]
        art = art.sort_values("start_s", kind="stable")
    write_text(truth_path(path, "artifacts"), art.to_csv(sep="\t", index=False, na_rep="n/a"))
    return truth
