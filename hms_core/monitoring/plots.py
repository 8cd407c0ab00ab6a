"""Trend figures of the monitoring assets: PSI per feature over the days, KL and ECE over the days. Each is written
as a PNG file and returned as markdown with the image embedded (Dagster metadata shows it in the UI)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd

from hms_core.plots import _plt

__all__ = ["drift_trend", "quality_trend"]

#: Features drawn in the drift trend (the ones with the largest PSI on any day).
TOP_FEATURES = 8


def _save(fig, path: Path, title: str) -> str:
    from hms_core.io import write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=70, bbox_inches="tight")
    _plt().close(fig)
    write_bytes(path, buf.getvalue())
    return f"**{title}**\n\n![{title}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


def drift_trend(history: pd.DataFrame, path: Path, psi_warn: float, psi_error: float) -> str | None:
    """PSI over the days of the :data:`TOP_FEATURES` features that drifted most, with the warn / error lines."""
    h = history.dropna(subset=["psi"]) if len(history) else history
    if h.empty:
        return None
    plt = _plt()
    top = h.groupby("feature")["psi"].max().sort_values(ascending=False).head(TOP_FEATURES).index.tolist()
    days = sorted(h["day"].unique())
    x = np.arange(len(days))
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for f in top:
        s = h[h["feature"] == f].groupby("day")["psi"].max().reindex(days)
        ax.plot(x, s.to_numpy(), marker="o", ms=3, lw=1, label=f)
    ax.axhline(psi_warn, color="orange", ls="--", lw=0.8, label=f"warn {psi_warn:g}")
    ax.axhline(psi_error, color="red", ls="--", lw=0.8, label=f"error {psi_error:g}")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xticks(x)
    ax.set_xticklabels(days, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("PSI vs training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="upper left")
    return _save(fig, path, "Drift per feature over days (PSI, largest features)")


def quality_trend(history: pd.DataFrame, path: Path) -> str | None:
    """KL of the labelled windows per day against the reference KL expected for their vote counts, and ECE."""
    h = history.dropna(subset=["kl"]) if len(history) else history
    if h.empty:
        return None
    plt = _plt()
    days = sorted(h["day"].unique())
    x = np.arange(len(days))
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for v, g in h.groupby("package_version"):
        g = g.set_index("day").reindex(days)
        ax.plot(x, g["kl"].to_numpy(float), marker="o", ms=3, label=f"KL {v}")
        ax.plot(x, g["expected_kl"].to_numpy(float), ls="--", lw=1, label=f"reference KL {v}")
        ax.plot(x, g["ece"].to_numpy(float), marker="s", ms=3, lw=0.8, label=f"ECE {v}")
    ax.set_xticks(x)
    ax.set_xticklabels(days, rotation=45, ha="right", fontsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return _save(fig, path, "Quality over days (KL against expert votes, ECE)")
