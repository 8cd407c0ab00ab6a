"""The scan overview figure: a whole recording (up to days) readable at a glance.

Top to bottom, on one time axis in hours: detected events per class (bars), the six class probabilities stacked
(binned to about one column per pixel, so 24 h keep their shape), the uncertainty band (entropy of the blend,
normalised to [0, 1] by log 6) with the stretches that were not evaluated shaded grey, and the left and right
hemisphere spectrograms (log power, 0.5-20 Hz) that the engine computed over the continuous signal.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hms_core.constants import CLASSES
from hms_core.io import atomic_path

__all__ = ["CLASS_COLOURS", "HemisphereSpectrogram", "plot_scan"]

#: One colour per class (CLASSES order), the same in every scan figure.
CLASS_COLOURS: dict[str, str] = {
    "Seizure": "#d62728", "LPD": "#ff7f0e", "GPD": "#9467bd", "LRDA": "#2ca02c", "GRDA": "#1f77b4",
    "Other": "#d9d9d9",
}  # fmt: skip
_HEMISPHERES = ("left", "right")


@dataclass(frozen=True)
class HemisphereSpectrogram:
    """Downsampled left/right spectrogram of a whole recording (contract.md).

    ``power`` (2, F, T) float32 log10 power (uV^2/Hz), row 0 the left hemisphere (mean of chains LL and LP),
    row 1 the right (RL, RP); ``times_s`` (T,) column centres in seconds from the recording start; ``freqs_hz``
    (F,) bin centres.
    """

    times_s: np.ndarray
    freqs_hz: np.ndarray
    power: np.ndarray

    def __post_init__(self) -> None:
        p = np.asarray(self.power)
        t, f = np.asarray(self.times_s), np.asarray(self.freqs_hz)
        if p.ndim != 3 or p.shape[0] != 2 or p.shape[1:] != (f.size, t.size):
            raise ValueError(
                f"HemisphereSpectrogram: 'power' must be shaped (2, len(freqs_hz), len(times_s)) = "
                f"(2, {f.size}, {t.size}), got {p.shape}"
            )


def _bin(timeline: pd.DataFrame, n_bins: int, duration_s: float) -> pd.DataFrame:
    """Mean of the evaluated windows per time bin (by window centre); NaN where a bin has none."""
    centre = 0.5 * (timeline["start_s"].to_numpy(float) + timeline["end_s"].to_numpy(float))
    edges = np.linspace(0.0, max(duration_s, float(centre.max(initial=0.0)) + 1e-6), n_bins + 1)
    idx = np.clip(np.searchsorted(edges, centre, side="right") - 1, 0, n_bins - 1)
    ev = timeline["evaluated"].to_numpy(bool)
    cols = [*CLASSES, "entropy"]
    vals = timeline[cols].to_numpy(float)
    vals[~ev] = np.nan
    df = pd.DataFrame(vals, columns=cols)
    df["bin"] = idx
    df["evaluated"] = ev.astype(float)
    out = df.groupby("bin").mean().reindex(range(n_bins))
    out["t_h"] = 0.5 * (edges[:-1] + edges[1:]) / 3600.0
    out["evaluated"] = out["evaluated"].fillna(0.0)
    return out


def plot_scan(
    timeline: pd.DataFrame,
    target: str | os.PathLike[str],
    *,
    duration_s: float,
    events: pd.DataFrame | None = None,
    spectrogram: HemisphereSpectrogram | None = None,
    title: str = "",
    n_bins: int = 1440,
    dpi: int = 100,
) -> Path:
    """Write the overview PNG of one scanned recording atomically; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_bins = max(1, min(n_bins, len(timeline)))
    b = _bin(timeline, n_bins, duration_s)
    hours = max(duration_s / 3600.0, 1e-3)
    n_spec = 2 if spectrogram is not None else 0
    ratios = [0.6, 3.0, 0.8] + [1.2] * n_spec
    fig, axes = plt.subplots(
        len(ratios), 1, figsize=(16, 2.2 + 1.4 * sum(ratios)), sharex=True, gridspec_kw={"height_ratios": ratios}
    )
    ax_ev, ax_p, ax_u = axes[:3]
    # events
    from hms_core.scanning.events import EVENT_TYPES

    names = list(EVENT_TYPES)
    if events is not None and len(events):
        by_type = {v: k for k, v in EVENT_TYPES.items()}
        for ev in events.itertuples(index=False):
            cls = by_type.get(ev.eventType)
            if cls is None:
                continue
            y = names.index(cls)
            ax_ev.broken_barh([(ev.onset / 3600.0, max(ev.duration / 3600.0, hours / 2000))], (y - 0.4, 0.8),
                              color=CLASS_COLOURS[cls])  # fmt: skip
    ax_ev.set_yticks(range(len(names)), [EVENT_TYPES[c] for c in names], fontsize=7)
    ax_ev.set_ylim(-0.6, len(names) - 0.4)
    ax_ev.invert_yaxis()
    ax_ev.set_ylabel("events", fontsize=8)
    # stacked probabilities
    t = b["t_h"].to_numpy()
    probs = b[list(CLASSES)].to_numpy(float)
    ax_p.stackplot(t, np.nan_to_num(probs).T, colors=[CLASS_COLOURS[c] for c in CLASSES], labels=CLASSES,
                   linewidth=0)  # fmt: skip
    ax_p.set_ylim(0, 1)
    ax_p.set_ylabel("class probability")
    ax_p.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    # uncertainty and not evaluated
    u = (b["entropy"] / math.log(len(CLASSES))).to_numpy(float)
    ax_u.fill_between(t, 0, np.nan_to_num(u), color="#555555", alpha=0.6, linewidth=0, label="entropy / log 6")
    not_eval = 1.0 - b["evaluated"].to_numpy(float)
    for ax in (ax_p, ax_u):
        ax.fill_between(t, 0, 1, where=not_eval > 0.5, color="#000000", alpha=0.3, linewidth=0, step="mid")
    ax_u.set_ylim(0, 1)
    ax_u.set_ylabel("uncertainty", fontsize=8)
    ax_u.text(1.002, 0.5, "grey: not\nevaluated", transform=ax_u.transAxes, fontsize=7, va="center")
    # spectrograms
    if spectrogram is not None:
        p = np.asarray(spectrogram.power, float)
        finite = p[np.isfinite(p)]
        lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
        ts = np.asarray(spectrogram.times_s, float) / 3600.0
        fs = np.asarray(spectrogram.freqs_hz, float)
        for k, ax in enumerate(axes[3:]):
            ax.pcolormesh(ts, fs, p[k], shading="nearest", cmap="magma", vmin=lo, vmax=hi, rasterized=True)
            ax.set_ylabel(f"{_HEMISPHERES[k]}\nHz", fontsize=8)
    axes[-1].set_xlim(0, hours)
    axes[-1].set_xlabel("hours from recording start")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.06, right=0.91, top=0.95 if title else 0.98, bottom=0.06, hspace=0.12)  # no re-draw
    target = Path(target)
    with atomic_path(target, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return target
