"""What a scan leaves per recording: the timeline, the events, an EDF+ annotation file, a summary and a figure.

:func:`write_scan_outputs` writes, each atomically (:mod:`hms_core.io`):

- ``timeline.csv`` and ``timeline.parquet``: one row per judged window (:data:`~hms_core.scanning.events.
  TIMELINE_COLUMNS` and whatever else the engine added);
- ``events.tsv``: the BIDS / SzCORE events table (:func:`~hms_core.scanning.events.detect_events`);
- ``events.edf``: the same events as an annotation-only EDF+ (edfio; no signals, the recording's start date and
  time in the header), which EDFbrowser imports beside the recording and ``mne.read_annotations`` reads;
- ``summary.json``: per class the burden per hour (event time as a fraction of the evaluated time of that hour),
  the overall burden, the worst 12-h stretch, the longest event, the first onset; and the time not evaluated,
  per reason;
- ``timeline.png``: :func:`~hms_core.scanning.plots.plot_scan`.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hms_core.io import atomic_path, write_json, write_parquet, write_text
from hms_core.scanning.events import EVENT_TYPES, EventConfig, detect_events, validate_timeline
from hms_core.scanning.plots import HemisphereSpectrogram, plot_scan

__all__ = [
    "NO_EVENTS_TEXT",
    "OUTPUT_FILES",
    "WORST_STRETCH_H",
    "ScanOutputs",
    "summarize",
    "write_events_edf",
    "write_scan_outputs",
]

#: Output name -> file name in the recording's output folder.
OUTPUT_FILES: dict[str, str] = {
    "timeline_csv": "timeline.csv",
    "timeline_parquet": "timeline.parquet",
    "events": "events.tsv",
    "annotations": "events.edf",
    "summary": "summary.json",
    "plot": "timeline.png",
}
#: The single annotation of a recording without events.
NO_EVENTS_TEXT = "hms scan: no events detected"
#: Length of the "worst stretch" of the summary (hours).
WORST_STRETCH_H = 12.0
_BIN_S = 60.0  # the summary's time grid (burden per hour, worst stretch) in seconds


@dataclass
class ScanOutputs:
    """Paths written (``OUTPUT_FILES`` keys), the summary dict and the events table."""

    paths: dict[str, Path]
    summary: dict[str, Any]
    events: pd.DataFrame = field(repr=False)


def _window_grid(tl: pd.DataFrame) -> tuple[np.ndarray, float]:
    """Window centres and the stride (the time each window stands for)."""
    starts = tl["start_s"].to_numpy(float)
    centre = 0.5 * (starts + tl["end_s"].to_numpy(float))
    stride = float(np.median(np.diff(starts))) if len(starts) > 1 else float(tl["end_s"].iloc[0] - starts[0])
    return centre, stride


def _in_events(centre: np.ndarray, ev: pd.DataFrame) -> np.ndarray:
    inside = np.zeros(centre.shape, bool)
    for onset, dur in zip(ev["onset"].to_numpy(float), ev["duration"].to_numpy(float)):
        inside |= (centre >= onset) & (centre < onset + dur)
    return inside


def _fmt_time(start: dt.datetime | None, seconds: float | None) -> str | None:
    if start is None or seconds is None:
        return None
    return (start + dt.timedelta(seconds=float(seconds))).isoformat(sep=" ", timespec="seconds")


def summarize(
    timeline: pd.DataFrame,
    events: pd.DataFrame,
    *,
    duration_s: float,
    start_datetime: dt.datetime | None = None,
    classes: list[str] | tuple[str, ...] = tuple(EVENT_TYPES),
    worst_stretch_h: float = WORST_STRETCH_H,
) -> dict[str, Any]:
    """Burden figures of one scanned recording (the content of ``summary.json``)."""
    tl = validate_timeline(timeline)
    centre, stride = _window_grid(tl) if len(tl) else (np.zeros(0), 0.0)
    evaluated = tl["evaluated"].to_numpy(bool)
    reasons = tl.loc[~evaluated, "reason"].astype(str).value_counts()
    n_hours = max(1, math.ceil(duration_s / 3600.0 - 1e-9))
    hour = np.clip((centre // 3600.0).astype(int), 0, n_hours - 1)
    eval_per_hour = np.bincount(hour[evaluated], minlength=n_hours) * stride
    n_bins = max(1, math.ceil(duration_s / _BIN_S - 1e-9))
    bins = np.clip((centre // _BIN_S).astype(int), 0, n_bins - 1)
    eval_per_bin = np.bincount(bins[evaluated], minlength=n_bins) * stride
    k = min(n_bins, max(1, round(worst_stretch_h * 3600.0 / _BIN_S)))
    per_class: dict[str, Any] = {}
    for cls in classes:
        ev = events[events["eventType"] == EVENT_TYPES[cls]]
        inside = _in_events(centre, ev) & evaluated
        ev_hour = np.bincount(hour[inside], minlength=n_hours) * stride
        burden_h = np.divide(ev_hour, eval_per_hour, out=np.full(n_hours, np.nan), where=eval_per_hour > 0)
        ev_bin = np.bincount(bins[inside], minlength=n_bins) * stride
        num = np.convolve(ev_bin, np.ones(k), mode="valid")
        den = np.convolve(eval_per_bin, np.ones(k), mode="valid")
        ratio = np.divide(num, den, out=np.full(num.shape, -1.0), where=den > 0)
        best = int(np.argmax(ratio))
        total_eval = float(eval_per_hour.sum())
        longest = ev.loc[ev["duration"].idxmax()] if len(ev) else None
        first = float(ev["onset"].min()) if len(ev) else None
        per_class[cls] = {
            "event_type": EVENT_TYPES[cls],
            "n_events": len(ev),
            "burden": float(ev_hour.sum() / total_eval) if total_eval > 0 else None,
            "burden_per_hour": [None if not np.isfinite(v) else round(float(v), 4) for v in burden_h],
            "event_time_s": float(ev_hour.sum()),
            "longest_event_s": float(longest["duration"]) if longest is not None else 0.0,
            "longest_event_onset_s": float(longest["onset"]) if longest is not None else None,
            "first_onset_s": first,
            "first_onset_datetime": _fmt_time(start_datetime, first),
            "worst_stretch": {
                "hours": round(k * _BIN_S / 3600.0, 3),
                "start_s": best * _BIN_S,
                "end_s": min((best + k) * _BIN_S, float(duration_s)),
                "burden": float(ratio[best]) if ratio[best] >= 0 else None,
            },
        }
    not_eval_s = float((~evaluated).sum() * stride)
    return {
        "duration_s": float(duration_s),
        "start_datetime": start_datetime.isoformat(sep=" ", timespec="seconds") if start_datetime else None,
        "n_windows": len(tl),
        "stride_s": stride,
        "evaluated_s": float(evaluated.sum() * stride),
        "not_evaluated_s": not_eval_s,
        "not_evaluated_fraction": float((~evaluated).mean()) if len(tl) else 1.0,
        "not_evaluated_by_reason_s": {str(r): float(n * stride) for r, n in reasons.items()},
        "classes": per_class,
    }


def write_events_edf(
    target: str | os.PathLike[str], events: pd.DataFrame, start_datetime: dt.datetime | None = None
) -> Path:
    """An annotation-only EDF+ of the events (text ``"<eventType> p=<confidence>"``), atomically.

    A recording without events gets one annotation at 0 s, :data:`NO_EVENTS_TEXT` (an EDF+ needs one)."""
    from edfio import Edf, EdfAnnotation, Recording

    anns = [
        EdfAnnotation(float(e.onset), float(e.duration), f"{e.eventType} p={float(e.confidence):.2f}")
        for e in events.itertuples(index=False)
    ]
    if not anns:  # an EDF+ must hold signals or annotations: say so rather than write no file
        anns = [EdfAnnotation(0.0, None, NO_EVENTS_TEXT)]
    kwargs: dict[str, Any] = {}
    if start_datetime is not None:
        kwargs = {"starttime": start_datetime.time().replace(microsecond=0),
                  "recording": Recording(startdate=start_datetime.date())}  # fmt: skip
    edf = Edf([], annotations=anns, **kwargs)
    target = Path(target)
    with atomic_path(target, suffix=".tmp.edf") as tmp:
        edf.write(tmp)
    return target


def write_scan_outputs(
    out_dir: str | os.PathLike[str],
    timeline: pd.DataFrame,
    cfg: EventConfig | None = None,
    *,
    recording: str,
    duration_s: float,
    start_datetime: dt.datetime | None = None,
    spectrogram: HemisphereSpectrogram | None = None,
    meta: dict[str, Any] | None = None,
) -> ScanOutputs:
    """Detect events and write every output file of one recording into ``out_dir`` (see the module docstring)."""
    cfg = cfg or EventConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tl = validate_timeline(timeline, source=f"timeline of '{recording}'")
    events = detect_events(
        tl, cfg, recording_duration_s=duration_s, start_datetime=start_datetime, spectrogram=spectrogram
    )
    paths = {k: out / v for k, v in OUTPUT_FILES.items()}
    # summary.json is written last and stands for a whole set: while the others are rewritten there is none, so a
    # scan killed half-way never leaves a new timeline beside an old summary. Temporaries of a killed write go too.
    paths["summary"].unlink(missing_ok=True)
    for name in OUTPUT_FILES.values():
        for stale in out.glob(f".{name}.*"):
            stale.unlink(missing_ok=True)
    write_text(paths["timeline_csv"], tl.to_csv(index=False, float_format="%.5g"))
    write_parquet(paths["timeline_parquet"], tl)
    write_text(paths["events"], events.to_csv(sep="\t", index=False, na_rep="n/a"))
    write_events_edf(paths["annotations"], events, start_datetime)
    summary = {
        "recording": str(recording),
        **summarize(tl, events, duration_s=duration_s, start_datetime=start_datetime, classes=cfg.classes),
        "events_config": cfg.model_dump(),
        **({"meta": meta} if meta else {}),
    }
    plot_scan(
        tl, paths["plot"], duration_s=duration_s, events=events, spectrogram=spectrogram,
        title=f"{Path(recording).name}: {duration_s / 3600:.1f} h",
    )  # fmt: skip
    write_json(paths["summary"], summary)
    return ScanOutputs(paths=paths, summary=summary, events=events)
