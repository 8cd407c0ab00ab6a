"""Long synthetic recordings: the events are where the truth says, the plan covers every class without overlaps,
the EDF carries clinical labels and reads back through the streaming reader, generation is deterministic and its
memory per chunk is bounded by the chunk and the events it overlaps."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.signal as ss

from hms_core.constants import EEG_FILE_COLUMNS, SFREQ
from hms_core.recording import open_recording
from hms_core.scanning.events import EVENT_TYPES, EVENTS_COLUMNS
from hms_core.synthetic.long import MIN_GAP_S, plan_long_recording, truth_path, write_long_recording


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    path = tmp_path_factory.mktemp("long") / "sub-01_eeg.edf"
    truth = write_long_recording(path, hours=1 / 3, seed=3, mean_gap_min=1.0)
    return path, truth


def test_truth_layout_and_edf_header(short: tuple[Path, pd.DataFrame]) -> None:
    path, truth = short
    on_disk = pd.read_csv(truth_path(path), sep="\t", keep_default_na=False)
    assert truth_path(path).name == "sub-01_events.tsv" and tuple(on_disk.columns) == EVENTS_COLUMNS
    assert len(on_disk) == len(truth) >= 2 and set(on_disk["eventType"]) <= set(EVENT_TYPES.values())
    assert on_disk["eventType"][0] == "sz"  # every recording starts its class cycle with a seizure
    assert (on_disk["recordingDuration"] == 1200).all() and (on_disk["onset"] + on_disk["duration"] <= 1200).all()
    assert truth_path(path, "artifacts").is_file()
    with open_recording(path) as rec:
        assert (
            rec.duration_s == 1200 and rec.channels == EEG_FILE_COLUMNS and rec.channel_map["Fp1"] == "EEG Fp1-REF"
        )
        start = rec.start_datetime
    first = start + dt.timedelta(seconds=float(on_disk["onset"][0]))
    assert on_disk["dateTime"][0] == first.strftime("%Y-%m-%d %H:%M:%S")


def _band_power(x: np.ndarray) -> np.ndarray:
    """1-20 Hz power per 10-s block and channel: (n_blocks, 19)."""
    sos = ss.butter(4, [1, 20], btype="band", fs=SFREQ, output="sos")
    y = ss.sosfiltfilt(sos, x[:, :19], axis=0)
    return y[: len(y) // (10 * SFREQ) * 10 * SFREQ].reshape(-1, 10 * SFREQ, 19).var(axis=1)


def test_events_are_where_the_truth_says(short: tuple[Path, pd.DataFrame]) -> None:
    """Inside every event the channels of its field carry several times the 1-20 Hz power they have outside."""
    path, truth = short
    with open_recording(path) as rec:
        power = _band_power(rec.read(0, rec.duration_s))
    t = np.arange(power.shape[0]) * 10.0
    inside = np.zeros(power.shape[0], bool)
    for ev in truth.itertuples():
        inside |= (t + 10 > ev.onset) & (t < ev.onset + ev.duration)
    assert (~inside).sum() >= 10
    quiet = np.median(power[~inside], axis=0)
    for ev in truth.itertuples():
        core = (t >= ev.onset + 5) & (t + 10 <= ev.onset + ev.duration - 5)
        ratio = np.sort(np.median(power[core], axis=0) / quiet)[::-1]
        assert ratio[:3].mean() > 3.0, (ev.eventType, ev.onset, ratio[:5])
        before = (t + 10 <= ev.onset) & (t >= ev.onset - 60) & ~inside
        if before.any():  # the onset is where the truth puts it: the minute before is quiet on those channels
            top = np.argsort(np.median(power[core], axis=0) / quiet)[::-1][:3]
            assert (np.median(power[before][:, top], axis=0) / quiet[top]).mean() < 2.0


def test_plan_covers_every_class_without_overlap() -> None:
    plan = plan_long_recording(8.0, seed=11)
    classes = [e.cls for e in plan.events]
    assert set(classes) == set(EVENT_TYPES) and classes[0] == "Seizure"
    assert {s[2] for s in plan.states} == {"wake", "sleep"}
    for a, b in zip(plan.events[:-1], plan.events[1:]):
        gap = b.onset_s - a.end_s
        assert gap >= MIN_GAP_S - 1e-6 or (gap == pytest.approx(0.0) and a.cls == "LPD" and b.cls == "Seizure")
    seizures = [e for e in plan.events if e.cls == "Seizure"]
    assert all(30 <= e.duration_s <= 180 for e in seizures)
    # the renderer's evolving frequencies (all but the 'minimal_evolution' border cases)
    assert all(len(set(e.params["freqs_hz"])) > 1 for e in seizures if e.params["edge"] != "minimal_evolution")
    again = plan_long_recording(8.0, seed=11)
    assert [(e.cls, e.onset_s) for e in again.events] == [(e.cls, e.onset_s) for e in plan.events]


def test_deterministic_and_256_hz_with_1010_labels(tmp_path: Path) -> None:
    runs = []
    for name in ("a_eeg.edf", "b_eeg.edf"):
        truth = write_long_recording(tmp_path / name, hours=1 / 12, seed=7, mean_gap_min=0.5)
        with open_recording(tmp_path / name) as rec:
            runs.append((truth, rec.read(0, rec.duration_s)))
    pd.testing.assert_frame_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    write_long_recording(tmp_path / "hz_eeg.edf", hours=1 / 30, seed=3, sfreq=256, labels="le_1010")
    with open_recording(tmp_path / "hz_eeg.edf") as rec:
        assert rec.original_sfreq == 256 and rec.channel_map["T3"] == "T7-LE" and rec.missing == ()
        x = rec.read(0, 120)
    assert x.shape == (120 * SFREQ, 20) and np.isfinite(x).all() and 1.0 < float(np.median(x[:, :19].std(0))) < 500


def test_memory_per_chunk_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each chunk holds its own samples plus the rendered events that overlap it, never the recording."""
    from hms_core.synthetic import long

    seen: list[tuple[int, int, int]] = []
    real = long.render_chunk

    def spy(plan, a, b, live, carry=None, artifacts=True):  # type: ignore[no-untyped-def]
        out = real(plan, a, b, live, carry, artifacts)
        seen.append((b - a, sum(v.nbytes for v in live.values()), out[0].nbytes))
        return out

    monkeypatch.setattr(long, "render_chunk", spy)
    chunk_s, hours, only_sz = 60, 0.25, {"Seizure": 1.0}
    write_long_recording(
        tmp_path / "m_eeg.edf", hours, seed=5, chunk_s=chunk_s, mean_gap_min=1.0, event_mix=only_sz
    )
    plan = plan_long_recording(hours, seed=5, mean_gap_min=1.0, event_mix=only_sz)
    longest = max(e.duration_s for e in plan.events) * SFREQ * 19 * 4
    assert len(seen) == 15 and all(n <= chunk_s * SFREQ for n, _, _ in seen)
    assert max(c for _, c, _ in seen) <= 2 * longest  # at most the events that overlap one chunk
    assert max(x for _, _, x in seen) == chunk_s * SFREQ * 19 * 4
    whole = hours * 3600 * SFREQ * 20 * 4
    assert max(c + x for _, c, x in seen) < whole / 3
