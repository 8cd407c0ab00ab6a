"""Timeline -> events: NaN-aware smoothing, hysteresis, minimum duration, merging, not-evaluated windows, the
SzCORE table (eventType names, dateTime, channels from the L/R spectrogram) and config validation."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from hms_core.constants import CLASSES, LEFT_CHANNELS
from hms_core.eeg_io import RecordError
from hms_core.scanning.events import (
    EVENTS_COLUMNS,
    EventConfig,
    detect_class_events,
    detect_events,
    hysteresis,
    smooth_probabilities,
    validate_timeline,
)
from hms_core.scanning.plots import HemisphereSpectrogram

STRIDE = 2.0


def timeline(p_seizure: np.ndarray, evaluated: np.ndarray | None = None, **other: np.ndarray) -> pd.DataFrame:
    """Windows every 2 s (10 s long); Seizure = ``p_seizure``, the rest to Other."""
    n = len(p_seizure)
    st = np.arange(n) * STRIDE
    probs = {c: np.zeros(n) for c in CLASSES}
    probs["Seizure"] = np.asarray(p_seizure, float)
    for c, v in other.items():
        probs[c] = np.asarray(v, float)
    probs["Other"] = 1.0 - sum(v for c, v in probs.items() if c != "Other")
    df = pd.DataFrame({"start_s": st, "end_s": st + 10.0, **probs})
    df["entropy"] = 0.5
    ev = np.ones(n, bool) if evaluated is None else np.asarray(evaluated, bool)
    df["evaluated"] = ev
    df["reason"] = np.where(ev, "", "flat")
    df.loc[~ev, [*CLASSES, "entropy"]] = np.nan
    return df


def test_smoothing_ignores_windows_not_evaluated() -> None:
    p = np.array([0.0, 1.0, np.nan, 1.0, 0.0])
    s = smooth_probabilities(p, 3)
    np.testing.assert_allclose(s, [0.5, 0.5, np.nan, 0.5, 0.5])
    np.testing.assert_array_equal(smooth_probabilities(p, 1), p)


def test_smoothing_longer_than_the_recording() -> None:
    """A smoothing window longer than the timeline (a short recording) averages what there is, same length."""
    p = np.array([0.1, 0.2, np.nan, 0.6])
    s = smooth_probabilities(p, 15)
    assert s.shape == p.shape and np.isnan(s[2])
    assert np.allclose(s[[0, 1, 3]], np.nanmean(p))
    assert np.allclose(smooth_probabilities(np.arange(10.0), 3)[1:-1], np.arange(1.0, 9.0))


def test_hysteresis_starts_at_on_and_holds_above_off() -> None:
    s = np.array([0.1, 0.4, 0.6, 0.45, 0.4, 0.3, 0.45, 0.2, np.nan, 0.9])
    np.testing.assert_array_equal(hysteresis(s, 0.5, 0.35), [0, 0, 1, 1, 1, 0, 0, 0, 0, 1])


def test_event_extent_min_duration_and_merge() -> None:
    p = np.zeros(400)
    p[50:80] = 0.9  # 60 s of windows: centres 105..163 -> [104, 164)
    p[83:90] = 0.9  # 3 windows below 'off' (6 s) later: merged with the first (gap 6 s < 10 s)
    p[200:202] = 0.9  # 2 windows = 4 s: shorter than min_duration_s
    p[300:320] = 0.9
    cfg = EventConfig(smoothing_windows=1, min_duration_s=10.0, merge_gap_s=10.0)
    ev = detect_class_events(timeline(p), "Seizure", cfg)
    assert ev[["start_s", "end_s"]].to_numpy().tolist() == [[104.0, 184.0], [604.0, 644.0]]
    assert ev["confidence"].tolist() == pytest.approx([0.9, 0.9])
    apart = detect_class_events(timeline(p), "Seizure", cfg.model_copy(update={"merge_gap_s": 5.0}))
    assert len(apart) == 3  # no merge at 6 s; the 4-s blip is still too short
    keep_all = detect_class_events(timeline(p), "Seizure", cfg.model_copy(update={"min_duration_s": 0.0}))
    assert len(keep_all) == 3 and keep_all["end_s"][1] - keep_all["start_s"][1] == pytest.approx(4.0)


def test_smoothing_removes_isolated_spikes_and_fills_short_dips() -> None:
    rng = np.random.default_rng(0)
    p = np.clip(rng.normal(0.1, 0.05, 300), 0, 1)
    p[[20, 60, 61]] = 0.95  # isolated false spikes
    p[100:160] = 0.8
    p[[120, 130, 131]] = 0.1  # dips inside the event
    raw = detect_class_events(
        timeline(p), "Seizure", EventConfig(smoothing_windows=1, min_duration_s=0, merge_gap_s=0)
    )
    smooth = detect_class_events(
        timeline(p), "Seizure", EventConfig(smoothing_windows=7, min_duration_s=0, merge_gap_s=0)
    )
    assert len(raw) > 1 + 2  # spikes and the split event
    assert len(smooth) == 1 and smooth["start_s"][0] == pytest.approx(204, abs=4)


def test_windows_not_evaluated_end_an_event_and_are_never_zero() -> None:
    p = np.zeros(200)
    p[20:120] = 0.9
    ev = np.ones(200, bool)
    ev[60:80] = False  # 40 s flat in the middle
    cfg = EventConfig(smoothing_windows=5, merge_gap_s=10.0, min_duration_s=0)
    out = detect_class_events(timeline(p, ev), "Seizure", cfg)
    assert len(out) == 2 and out["end_s"][0] <= 60 * STRIDE + 6 and out["start_s"][1] >= 80 * STRIDE + 4
    # smoothing leaves out the NaN windows: the probability beside the gap stays 0.9, not pulled towards 0
    s = smooth_probabilities(np.where(ev, p, np.nan), 5)
    assert s[[58, 59, 80, 81]] == pytest.approx([0.9] * 4) and np.isnan(s[60:80]).all()
    assert out["confidence"][0] == pytest.approx(0.9)
    merged = detect_class_events(timeline(p, ev), "Seizure", cfg.model_copy(update={"merge_gap_s": 60.0}))
    assert len(merged) == 1


def test_per_class_thresholds() -> None:
    p = np.zeros(100)
    p[10:40] = 0.42
    cfg = EventConfig(smoothing_windows=1, min_duration_s=0)
    assert detect_class_events(timeline(p), "Seizure", cfg).empty
    low = EventConfig.model_validate(cfg.model_dump() | {"class_thresholds": {"Seizure": {"on": 0.4, "off": 0.3}}})
    assert len(detect_class_events(timeline(p), "Seizure", low)) == 1
    assert low.thresholds("LPD") == (0.5, 0.35)


def test_events_table_layout_names_datetime_and_laterality() -> None:
    n = 600
    sz, lpd = np.zeros(n), np.zeros(n)
    sz[100:150] = 0.9
    lpd[300:400] = 0.8
    tl = timeline(sz, LPD=lpd)
    times = np.arange(0, n * STRIDE, 30.0) + 15.0
    power = np.zeros((2, 10, times.size), np.float32)
    power[0][:, (times > 600) & (times < 800)] = 0.5  # left louder during the LPDs
    spec = HemisphereSpectrogram(times, np.linspace(1, 20, 10), power)
    start = dt.datetime(2026, 5, 6, 23, 59, 0)
    ev = detect_events(tl, EventConfig(), recording_duration_s=1210.0, start_datetime=start, spectrogram=spec)
    assert tuple(ev.columns) == EVENTS_COLUMNS
    assert ev["eventType"].tolist() == ["sz", "lpd"]
    assert ev["channels"].tolist() == ["n/a", ",".join(LEFT_CHANNELS)]
    assert ev["dateTime"][0] == (start + dt.timedelta(seconds=float(ev["onset"][0]))).strftime("%Y-%m-%d %H:%M:%S")
    assert ev["dateTime"][1].startswith("2026-05-07")
    assert (ev["recordingDuration"] == 1210.0).all() and ev["confidence"].between(0, 1).all()
    none = detect_events(timeline(np.zeros(50)), recording_duration_s=110.0)
    assert none.empty and tuple(none.columns) == EVENTS_COLUMNS


def test_config_and_timeline_validation() -> None:
    with pytest.raises(ValidationError, match="off_threshold"):
        EventConfig(on_threshold=0.3, off_threshold=0.5)
    with pytest.raises(ValidationError, match=r"unknown class\(es\) \['Other'\]"):
        EventConfig(classes=["Seizure", "Other"])
    with pytest.raises(ValidationError, match="Extra inputs"):
        EventConfig(smoothing=3)
    with pytest.raises(RecordError, match=r"lacks column\(s\) \['entropy'"):
        validate_timeline(timeline(np.zeros(5)).drop(columns="entropy"))
    bad = timeline(np.zeros(5), np.array([1, 0, 1, 1, 1]))
    bad.loc[1, "reason"] = "sleepy"
    with pytest.raises(RecordError, match=r"unknown 'reason' value\(s\) \['sleepy'\].*'edge', 'flat'"):
        validate_timeline(bad)


def test_benchmark_scoring_follows_szcore() -> None:
    """benchmarks.scan scores with timescoring's SzCORE rules: tolerance, any overlap, false alarms per 24 h."""
    from benchmarks.scan import aggregate, score_recording

    truth = pd.DataFrame({"onset": [600.0, 2000.0], "duration": [60.0, 90.0], "eventType": ["sz", "sz"]})
    # first truth event hit 25 s early (inside the 30-s tolerance), the second missed, one false alarm at 3000 s
    hyp = pd.DataFrame({"onset": [560.0, 3000.0], "duration": [15.0, 40.0], "eventType": ["sz", "sz"]})
    c = score_recording(truth, hyp, 3600.0, "sz")
    assert (c["tp"], c["fp"], c["ref"]) == (1.0, 1.0, 2.0)
    s = aggregate([c, score_recording(truth, truth, 3600.0, "sz")])
    assert s["sens"] == pytest.approx(3 / 4) and s["prec"] == pytest.approx(3 / 4)
    assert s["fa24h"] == pytest.approx(1 / (2 / 24)) and s["f1"] == pytest.approx(0.75)
    assert 0 < s["sample_f1"] < 1


def test_benchmark_tuning_picks_thresholds_from_its_own_recordings() -> None:
    """benchmarks.scan --tune: a seizure whose probability only reaches 0.35 is missed at the default onset 0.5; the
    grid search on that (tuning) timeline lowers the seizure onset below it and finds the event, without a false
    alarm on a 0.15 bump elsewhere."""
    from types import SimpleNamespace

    from benchmarks.scan import tune_events

    p = np.full(1800, 0.02)  # one hour, windows every 2 s
    p[600:650] = 0.35  # a 100-s seizure from 1,200 s on
    p[1300:1320] = 0.15
    scanned = SimpleNamespace(timeline=timeline(p), duration_s=3600.0)
    truth = pd.DataFrame({"onset": [1200.0], "duration": [100.0], "eventType": ["sz"]})
    assert detect_class_events(scanned.timeline, "Seizure", EventConfig()).empty
    chosen, info = tune_events([scanned], [truth], EventConfig())
    on, off = chosen.thresholds("Seizure")
    assert off <= on <= 0.35 and info["per_class"]["Seizure"]["f1"] == 1.0
    ev = detect_class_events(scanned.timeline, "Seizure", chosen)
    assert len(ev) == 1 and abs(ev["start_s"].iloc[0] - 1200.0) < 30
    # the printed YAML goes into the config as it is: scan.events, or scan.cascade.events for the cascade
    import yaml

    from benchmarks.scan import _events_yaml
    from hms_core.scanning.config import ScanConfig

    for engine in ("distilled", "cascade"):
        scan = ScanConfig.model_validate(yaml.safe_load(_events_yaml(chosen, engine))["scan"])
        assert scan.events_for(engine) == chosen and scan.events_for("ensemble") == (
            EventConfig() if engine == "cascade" else chosen
        )
