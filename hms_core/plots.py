"""Figures recorded as Dagster metadata: embedded PNGs in markdown (matplotlib, Agg backend)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np

from hms_core.constants import CLASSES, SFREQ


def _png_markdown(fig, title: str) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60, bbox_inches="tight")
    plt.close(fig)
    return f"**{title}**\n\n![{title}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def example_figure_markdown(partition_dir: str | Path) -> dict[str, str]:
    """One example per class: bipolar traces of the labelled segment (``eeg_windows``) and each spectrogram type
    (``spectrograms``)."""
    from hms_core.partition import PartitionError, load_partition

    try:
        part = load_partition(partition_dir)
    except PartitionError:
        return {}
    if not part.has("bipolar") or not part.has_targets:
        return {}
    plt = _plt()
    consensus = part.votes.argmax(axis=1)
    examples = {c: int(np.flatnonzero(consensus == k)[0]) for k, c in enumerate(CLASSES) if (consensus == k).any()}
    bip = part.array("bipolar")
    names = part.layout.bipolar
    seg = part.layout.segment
    fig, axes = plt.subplots(1, len(examples), figsize=(3.2 * len(examples), 4.5), squeeze=False)
    for ax, (cls, i) in zip(axes[0], examples.items()):
        x = np.nan_to_num(np.asarray(bip[i, :, seg], dtype=np.float32))
        x = 0.45 * x / max(float(np.percentile(np.abs(x), 99)), 1e-6)  # one scale per example, as an EEG viewer
        for c in range(x.shape[0]):
            ax.plot(np.arange(x.shape[1]) / SFREQ, np.clip(x[c], -0.9, 0.9) - c, lw=0.4, color="k")
        ax.set_title(f"{cls} (row {i})", fontsize=9)
        ax.set_yticks(-np.arange(len(names)))
        ax.set_yticklabels(names, fontsize=5)
        ax.set_xlabel("s", fontsize=7)
    out = {"eeg_windows": _png_markdown(fig, "Bipolar 10 s segment, one example per class")}
    specs = sorted(part.spectrograms.items())
    if specs:
        fig, axes = plt.subplots(
            len(specs), len(examples), figsize=(2.4 * len(examples), 1.8 * len(specs)), squeeze=False
        )
        for r, (spec_type, arr) in enumerate(specs):
            for c, (cls, i) in enumerate(examples.items()):
                ax = axes[r, c]
                ax.imshow(np.asarray(arr[i, 0], dtype=np.float32), aspect="auto", origin="lower", cmap="magma")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(cls, fontsize=8)
                if c == 0:
                    ax.set_ylabel(spec_type, fontsize=8)
        out["spectrograms"] = _png_markdown(fig, "Chain LL spectrograms per type, one example per class")
    return out


def learning_curve_markdown(history: list[dict]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3))
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    keys = sorted(
        {
            k
            for h in history
            for k, v in h.items()
            if isinstance(v, (int, float)) and (k.endswith("loss") or k.startswith("val_kl"))
        }
    )
    for key in keys:
        pts = [(e, h[key]) for e, h in zip(epochs, history) if h.get(key) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=key)
    ax.set_xlabel("epoch / round")
    ax.set_ylabel("KL")
    if keys:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png_markdown(fig, "Learning curve")
