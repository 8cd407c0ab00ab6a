"""From a scan timeline (one row per judged window) to events per class, in the BIDS / SzCORE ``events.tsv`` layout.

Per class, the window probabilities are smoothed by a centred moving average over ``smoothing_windows`` windows
(windows that were not evaluated are left out of the average, never read as zeros), then thresholded with
hysteresis: an event starts where the smoothed probability reaches ``on_threshold`` and lasts while it stays at or
above ``off_threshold``; a window that was not evaluated ends it. An event spans its windows' centres +- half a
stride. Events separated by less than ``merge_gap_s`` are merged, then events shorter than ``min_duration_s`` are
dropped.

The table follows the SzCORE annotation format (Dan et al., SzCORE, Epilepsia 2024: the BIDS ``events.tsv`` of
the EEG seizure-detection benchmarks): ``onset`` and ``duration`` in seconds, ``eventType`` ``sz`` for seizures
(SzCORE's name) and ``lpd``, ``gpd``, ``lrda``, ``grda`` for the ACNS periodic and rhythmic patterns,
``confidence`` in [0, 1], ``channels`` (the hemisphere's electrodes when the left/right spectrogram power says the
event is lateralised, else ``n/a``), ``dateTime`` of the onset and ``recordingDuration``.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hms_core.constants import CLASSES, LEFT_CHANNELS, RIGHT_CHANNELS
from hms_core.eeg_io import RecordError

if TYPE_CHECKING:
    from hms_core.scanning.plots import HemisphereSpectrogram

__all__ = [
    "EVENTS_COLUMNS",
    "EVENT_CLASSES",
    "EVENT_TYPES",
    "QUALITY_REASONS",
    "TIMELINE_COLUMNS",
    "ClassThresholds",
    "EventConfig",
    "detect_class_events",
    "detect_events",
    "smooth_probabilities",
    "validate_timeline",
]

#: Class (hms_core.constants.CLASSES) -> eventType in events.tsv. "sz" is SzCORE's name for a seizure.
EVENT_TYPES: dict[str, str] = {"Seizure": "sz", "LPD": "lpd", "GPD": "gpd", "LRDA": "lrda", "GRDA": "grda"}
EVENT_CLASSES: tuple[str, ...] = tuple(EVENT_TYPES)
#: Why a window was not evaluated (the timeline's ``reason`` column; "" when it was).
QUALITY_REASONS: tuple[str, ...] = ("edge", "flat", "disconnected", "missing_channels", "artifact", "nan")
#: Columns every timeline carries (others, e.g. ``disagreement``, are kept as they are).
TIMELINE_COLUMNS: tuple[str, ...] = ("start_s", "end_s", *CLASSES, "entropy", "evaluated", "reason")
#: events.tsv columns (BIDS / SzCORE).
EVENTS_COLUMNS: tuple[str, ...] = (
    "onset", "duration", "eventType", "confidence", "channels", "dateTime", "recordingDuration",
)  # fmt: skip
DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class ClassThresholds(BaseModel):
    """Hysteresis thresholds of one class (overrides the defaults of :class:`EventConfig`)."""

    model_config = ConfigDict(extra="forbid")
    on: float = Field(ge=0.0, le=1.0, description="Smoothed probability at which an event starts.")
    off: float = Field(ge=0.0, le=1.0, description="An event lasts while the smoothed probability stays >= off.")

    @model_validator(mode="after")
    def _off_below_on(self) -> ClassThresholds:
        if self.off > self.on:
            raise ValueError(f"'off' ({self.off}) must be <= 'on' ({self.on}) for hysteresis")
        return self


class EventConfig(BaseModel):
    """How window probabilities become events (``scan.events`` in the platform config)."""

    model_config = ConfigDict(extra="forbid")
    classes: list[str] = Field(
        default_factory=lambda: list(EVENT_CLASSES), description="Classes to turn into events (not 'Other')."
    )
    smoothing_windows: int = Field(
        5, ge=1, le=301, description="Centred moving average over this many consecutive windows (1 = none)."
    )
    on_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Smoothed probability at which an event starts.")
    off_threshold: float = Field(0.35, ge=0.0, le=1.0, description="An event lasts while smoothed p >= this.")
    class_thresholds: dict[str, ClassThresholds] = Field(
        default_factory=dict,
        description="Per-class {on, off} overrides, e.g. {'Seizure': {'on': 0.4, 'off': 0.3}}.",
    )
    min_duration_s: float = Field(
        10.0, ge=0.0, description="Events shorter than this (after merging) are dropped."
    )
    merge_gap_s: float = Field(10.0, ge=0.0, description="Events of one class closer than this are merged.")
    lateral_log_ratio: float = Field(
        0.15,
        ge=0.0,
        description="|log10 left/right power| above which an event is lateralised (channels = that hemisphere).",
    )

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if c not in EVENT_CLASSES]
        if bad:
            raise ValueError(f"unknown class(es) {bad}; allowed values are {list(EVENT_CLASSES)}")
        return v

    @field_validator("class_thresholds")
    @classmethod
    def _known_threshold_classes(cls, v: dict[str, ClassThresholds]) -> dict[str, ClassThresholds]:
        bad = [c for c in v if c not in EVENT_CLASSES]
        if bad:
            raise ValueError(f"unknown class(es) {bad} in class_thresholds; allowed are {list(EVENT_CLASSES)}")
        return v

    @model_validator(mode="after")
    def _off_below_on(self) -> EventConfig:
        if self.off_threshold > self.on_threshold:
            raise ValueError(
                f"off_threshold ({self.off_threshold}) must be <= on_threshold ({self.on_threshold}) for hysteresis"
            )
        return self

    def thresholds(self, cls: str) -> tuple[float, float]:
        """(on, off) of ``cls``."""
        t = self.class_thresholds.get(cls)
        return (t.on, t.off) if t is not None else (self.on_threshold, self.off_threshold)


def validate_timeline(timeline: pd.DataFrame, source: str = "timeline") -> pd.DataFrame:
    """Check the columns and order of a timeline; returns it sorted by ``start_s`` with a fresh index."""
    missing = [c for c in TIMELINE_COLUMNS if c not in timeline.columns]
    if missing:
        raise RecordError(
            f"Scan {source} lacks column(s) {missing}; expected {list(TIMELINE_COLUMNS)} "
            f"(got {list(timeline.columns)})."
        )
    tl = timeline.sort_values("start_s", kind="stable").reset_index(drop=True)
    if (tl["end_s"] < tl["start_s"]).any():
        row = int(np.flatnonzero((tl["end_s"] < tl["start_s"]).to_numpy())[0])
        raise RecordError(
            f"Scan {source}: row {row} ends ({tl['end_s'][row]}) before it starts ({tl['start_s'][row]})."
        )
    bad = sorted(set(tl.loc[~tl["evaluated"].astype(bool), "reason"].astype(str)) - set(QUALITY_REASONS))
    if bad:
        raise RecordError(
            f"Scan {source}: unknown 'reason' value(s) {bad} on windows not evaluated; "
            f"allowed values are {list(QUALITY_REASONS)}."
        )
    return tl


def smooth_probabilities(p: np.ndarray, n: int) -> np.ndarray:
    """Centred moving average over ``n`` windows that ignores NaN (not evaluated); NaN where all ``n`` are NaN.

    NaN windows stay NaN (they are not evaluated, so they cannot carry an event).
    """
    p = np.asarray(p, np.float64)
    if n <= 1 or p.size == 0:
        return p.copy()
    valid = np.isfinite(p)
    kernel = np.ones(n)
    # the centred part of the full convolution (np.convolve's "same", which returns n values for a shorter input)
    keep = slice((n - 1) // 2, (n - 1) // 2 + p.size)
    num = np.convolve(np.where(valid, p, 0.0), kernel, mode="full")[keep]
    den = np.convolve(valid.astype(np.float64), kernel, mode="full")[keep]
    out = np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)
    out[~valid] = np.nan
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[first, last] index pairs of the True runs of ``mask``."""
    if not mask.any():
        return []
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1
    return list(zip(starts.tolist(), stops.tolist()))


def hysteresis(s: np.ndarray, on: float, off: float) -> np.ndarray:
    """Boolean state: True from where ``s >= on`` while ``s >= off``; NaN counts as below ``off``."""
    s = np.nan_to_num(np.asarray(s, np.float64), nan=-1.0)
    above_off = s >= off
    out = np.zeros(s.shape, bool)
    for a, b in _runs(above_off):  # each run above 'off' is an event iff it touches 'on' somewhere
        if (s[a : b + 1] >= on).any():
            # the state switches on at the first crossing of 'on' within the run and stays on to its end
            first = a + int(np.flatnonzero(s[a : b + 1] >= on)[0])
            out[first : b + 1] = True
    return out


def detect_class_events(timeline: pd.DataFrame, cls: str, cfg: EventConfig) -> pd.DataFrame:
    """Events of one class: columns ``start_s, end_s, confidence, peak`` (seconds from the recording start)."""
    tl = timeline
    p = np.where(tl["evaluated"].to_numpy(bool), tl[cls].to_numpy(np.float64), np.nan)
    s = smooth_probabilities(p, cfg.smoothing_windows)
    on, off = cfg.thresholds(cls)
    state = hysteresis(s, on, off)
    starts, ends = tl["start_s"].to_numpy(np.float64), tl["end_s"].to_numpy(np.float64)
    # an event covers its windows' centres +- half a stride: a window judges its centre, and a single window
    # lasts one stride (so min_duration_s counts strides, not the 10-s overlap of neighbouring windows)
    centres = 0.5 * (starts + ends)
    half = 0.5 * (float(np.median(np.diff(starts))) if len(starts) > 1 else float(ends[0] - starts[0]))
    spans = [[centres[a] - half, centres[b] + half, a, b] for a, b in _runs(state)]
    merged: list[list[float]] = []
    for sp in spans:
        if merged and sp[0] - merged[-1][1] < cfg.merge_gap_s:
            merged[-1][1], merged[-1][3] = max(merged[-1][1], sp[1]), sp[3]
        else:
            merged.append(sp)
    rows = []
    for a_s, b_s, a, b in merged:
        if b_s - a_s < cfg.min_duration_s:
            continue
        seg = p[int(a) : int(b) + 1]
        seg = seg[np.isfinite(seg) & state[int(a) : int(b) + 1]]
        rows.append(
            {"start_s": float(a_s), "end_s": float(b_s), "confidence": float(seg.mean()) if seg.size else float(on),
             "peak": float(seg.max()) if seg.size else float(on)}
        )  # fmt: skip
    return pd.DataFrame(rows, columns=["start_s", "end_s", "confidence", "peak"])


def _laterality(spec: HemisphereSpectrogram | None, a: float, b: float, ratio: float) -> str:
    if spec is None:
        return "n/a"
    t = np.asarray(spec.times_s)
    sel = (t >= a) & (t <= b)
    if not sel.any():
        sel = np.abs(t - 0.5 * (a + b)) == np.abs(t - 0.5 * (a + b)).min()
    left, right = (np.nanmean(spec.power[i][:, sel]) for i in (0, 1))
    if not (np.isfinite(left) and np.isfinite(right)):
        return "n/a"
    if left - right > ratio:
        return ",".join(LEFT_CHANNELS)
    if right - left > ratio:
        return ",".join(RIGHT_CHANNELS)
    return "n/a"


def detect_events(
    timeline: pd.DataFrame,
    cfg: EventConfig | None = None,
    *,
    recording_duration_s: float,
    start_datetime: dt.datetime | None = None,
    spectrogram: HemisphereSpectrogram | None = None,
) -> pd.DataFrame:
    """Events of every configured class as an ``events.tsv`` table (:data:`EVENTS_COLUMNS`), sorted by onset."""
    cfg = cfg or EventConfig()
    tl = validate_timeline(timeline)
    rows = []
    for cls in cfg.classes:
        for ev in detect_class_events(tl, cls, cfg).itertuples(index=False):
            when = (
                (start_datetime + dt.timedelta(seconds=ev.start_s)).strftime(DATETIME_FORMAT)
                if start_datetime is not None
                else "n/a"
            )
            rows.append(
                {
                    "onset": round(ev.start_s, 3),
                    "duration": round(ev.end_s - ev.start_s, 3),
                    "eventType": EVENT_TYPES[cls],
                    "confidence": round(ev.confidence, 4),
                    "channels": _laterality(spectrogram, ev.start_s, ev.end_s, cfg.lateral_log_ratio),
                    "dateTime": when,
                    "recordingDuration": round(float(recording_duration_s), 3),
                }
            )
    out = pd.DataFrame(rows, columns=list(EVENTS_COLUMNS))
    return out.sort_values(["onset", "eventType"], kind="stable").reset_index(drop=True)
