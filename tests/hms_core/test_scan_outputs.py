"""Scan outputs written and read back: timeline csv/parquet, events.tsv, the EDF+ annotation file (MNE, pyEDFlib),
summary.json burden figures against hand counts, and the overview PNG."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hms_core.constants import CLASSES
from hms_core.scanning.events import EventConfig
from hms_core.scanning.outputs import NO_EVENTS_TEXT, OUTPUT_FILES, summarize, write_scan_outputs
from hms_core.scanning.plots import HemisphereSpectrogram

START = dt.datetime(2026, 7, 1, 21, 30, 0)
DURATION = 3 * 3600.0
STRIDE = 2.0


def _timeline() -> pd.DataFrame:
    """3 h at a 2-s stride: a 600-s seizure from 1800 s, LPDs 2 h-2.5 h, 1000 s not evaluated from 5000 s."""
    n = int((DURATION - 10) / STRIDE) + 1
    st = np.arange(n) * STRIDE
    centre = st + 5.0
    probs = np.full((n, len(CLASSES)), 0.02)
    probs[:, -1] = 0.9
    sz = (centre >= 1800) & (centre < 2400)
    lpd = (centre >= 7200) & (centre < 9000)
    probs[sz] = [0.9, 0.02, 0.02, 0.02, 0.02, 0.02]
    probs[lpd] = [0.02, 0.9, 0.02, 0.02, 0.02, 0.02]
    probs /= probs.sum(1, keepdims=True)
    df = pd.DataFrame(probs, columns=list(CLASSES))
    df.insert(0, "end_s", st + 10.0)
    df.insert(0, "start_s", st)
    df["entropy"] = -(probs * np.log(probs)).sum(1)
    off = (centre >= 5000) & (centre < 6000)
    df["evaluated"] = ~off
    df["reason"] = np.where(off, "disconnected", "")
    df.loc[off, [*CLASSES, "entropy"]] = np.nan
    df["disagreement"] = 0.01  # an engine extra: kept as it is
    return df


def _spectrogram() -> HemisphereSpectrogram:
    times = np.arange(0, DURATION, 30.0) + 15.0
    power = np.random.default_rng(0).normal(0, 0.05, (2, 20, times.size)).astype(np.float32)
    power[0][:, (times >= 7200) & (times < 9000)] += 1.0
    return HemisphereSpectrogram(times, np.linspace(0.5, 20, 20), power)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("scan") / "rec01"
    res = write_scan_outputs(out, _timeline(), EventConfig(), recording="/data/rec01.edf", duration_s=DURATION,
                             start_datetime=START, spectrogram=_spectrogram(), meta={"engine": "test"})  # fmt: skip
    return out, res


def test_every_file_is_written_and_reads_back(outputs) -> None:  # type: ignore[no-untyped-def]
    out, _res = outputs
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES.values())
    tl = _timeline()
    pq = pd.read_parquet(out / "timeline.parquet")
    pd.testing.assert_frame_equal(pq, tl)
    csv = pd.read_csv(out / "timeline.csv", keep_default_na=False, na_values=[""])
    assert list(csv.columns) == list(tl.columns) and len(csv) == len(tl)
    np.testing.assert_allclose(csv["Seizure"], tl["Seizure"], rtol=1e-4)
    ev = pd.read_csv(out / "events.tsv", sep="\t", keep_default_na=False)
    assert ev["eventType"].tolist() == ["sz", "lpd"]
    assert ev["onset"].tolist() == pytest.approx([1800, 7200], abs=6)
    assert ev["duration"].tolist() == pytest.approx([600, 1800], abs=12)
    assert ev["channels"][0] == "n/a" and ev["channels"][1].startswith("Fp1,")  # left louder during the LPDs
    assert ev["dateTime"][0] == (START + dt.timedelta(seconds=float(ev["onset"][0]))).strftime("%Y-%m-%d %H:%M:%S")
    png = (out / "timeline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_edf_annotations_open_in_mne_and_pyedflib(outputs) -> None:  # type: ignore[no-untyped-def]
    import mne
    import pyedflib

    out, res = outputs
    ann = mne.read_annotations(out / "events.edf")
    np.testing.assert_allclose(ann.onset, res.events["onset"], atol=1e-3)
    np.testing.assert_allclose(ann.duration, res.events["duration"], atol=1e-3)
    assert [d.split()[0] for d in ann.description] == ["sz", "lpd"] and ann.description[0].startswith("sz p=0.")
    r = pyedflib.EdfReader(str(out / "events.edf"))
    try:
        onsets, _, texts = r.readAnnotations()
        assert r.getStartdatetime() == START and r.signals_in_file == 0
    finally:
        r.close()
    assert list(texts) == list(ann.description) and onsets.tolist() == pytest.approx(ann.onset.tolist())


def test_summary_burdens_against_hand_counts(outputs) -> None:  # type: ignore[no-untyped-def]
    out, res = outputs
    s = json.loads((out / "summary.json").read_text())
    assert s == json.loads(json.dumps(res.summary, default=str))
    assert s["recording"] == "/data/rec01.edf" and s["meta"] == {"engine": "test"}
    assert s["not_evaluated_s"] == pytest.approx(1000, abs=4)
    assert s["not_evaluated_by_reason_s"] == {"disconnected": pytest.approx(1000, abs=4)}
    sz, lpd = s["classes"]["Seizure"], s["classes"]["LPD"]
    hour0 = sz["burden_per_hour"][0]  # 600 s of seizure in a fully evaluated first hour
    assert hour0 == pytest.approx(res.events["duration"][0] / 3600, abs=0.005)
    assert sz["burden_per_hour"][1:] == [0.0, 0.0] and sz["n_events"] == 1
    # hour 2 (7200-10800 s) is LPD from 7200 to 9000 s: half of it
    assert lpd["burden_per_hour"] == [0.0, 0.0, pytest.approx(0.5, abs=0.005)]
    evaluated = 3 * 3600 - 1000 - 10 + STRIDE  # the windows' centres cover 5 ... DURATION - 5 s
    assert lpd["burden"] == pytest.approx(res.events["duration"][1] / evaluated, abs=0.005)
    assert sz["first_onset_s"] == res.events["onset"][0] and sz["longest_event_s"] == res.events["duration"][0]
    assert sz["first_onset_datetime"].startswith("2026-07-01 22:")
    assert sz["worst_stretch"]["hours"] == 3.0  # a 3-h recording: the worst 12 h is all of it
    assert s["classes"]["GPD"]["n_events"] == 0 and s["classes"]["GPD"]["first_onset_s"] is None


def test_worst_stretch_finds_the_busiest_12_hours() -> None:
    n = int(30 * 3600 / 60)  # 30 h of 1-min windows
    st = np.arange(n) * 60.0
    df = pd.DataFrame({"start_s": st, "end_s": st + 60.0, **{c: 0.0 for c in CLASSES}, "entropy": 0.1,
                       "evaluated": True, "reason": ""})  # fmt: skip
    events = pd.DataFrame({"onset": [2 * 3600.0, 20 * 3600.0, 22 * 3600.0], "duration": [600.0, 1800.0, 1800.0],
                           "eventType": ["sz"] * 3})  # fmt: skip
    s = summarize(df, events, duration_s=30 * 3600.0, classes=["Seizure"])
    w = s["classes"]["Seizure"]["worst_stretch"]
    assert w["hours"] == 12.0 and w["start_s"] <= 20 * 3600 and w["end_s"] >= 22.5 * 3600
    assert w["burden"] == pytest.approx(3600 / (12 * 3600), abs=1e-3)
    assert len(s["classes"]["Seizure"]["burden_per_hour"]) == 30


def test_a_recording_without_events(tmp_path: Path) -> None:
    import mne

    tl = _timeline().iloc[:600].copy()  # 20 min
    tl[list(CLASSES)] = tl[list(CLASSES)].where(tl["evaluated"]).notna() * np.array([0, 0, 0, 0, 0, 1.0])
    tl.loc[~tl["evaluated"], list(CLASSES)] = np.nan
    res = write_scan_outputs(tmp_path, tl, recording="quiet.edf", duration_s=1210.0)
    assert res.events.empty
    assert list(mne.read_annotations(tmp_path / "events.edf").description) == [NO_EVENTS_TEXT]
    assert res.summary["start_datetime"] is None and res.summary["classes"]["Seizure"]["burden"] == 0.0
    assert pd.read_csv(tmp_path / "events.tsv", sep="\t").empty


def test_a_rescan_killed_half_way_leaves_no_old_summary_and_no_temporaries(tmp_path: Path, monkeypatch) -> None:
    """summary.json stands for a whole set: a rewrite that dies before the end removes the old one first (so no new
    timeline sits beside an old summary), and temporaries of an earlier killed write are swept."""
    from hms_core.scanning import outputs

    write_scan_outputs(tmp_path, _timeline(), EventConfig(), recording="rec01.edf", duration_s=DURATION)
    assert (tmp_path / OUTPUT_FILES["summary"]).is_file()
    stale = tmp_path / ".timeline.csv.abc123.tmp.csv"  # what a kill during the atomic write leaves
    stale.write_text("half")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while plotting")

    monkeypatch.setattr(outputs, "plot_scan", killed)
    with pytest.raises(KeyboardInterrupt):
        write_scan_outputs(tmp_path, _timeline(), EventConfig(), recording="rec01.edf", duration_s=DURATION)
    assert not (tmp_path / OUTPUT_FILES["summary"]).exists()
    assert not stale.exists()
    assert (tmp_path / OUTPUT_FILES["timeline_parquet"]).is_file()
