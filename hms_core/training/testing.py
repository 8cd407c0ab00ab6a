"""Small synthetic processed partitions in the exact on-disk layout, for tests and the training benchmark.

Each row has a latent class; the bipolar signals carry a class-specific rhythm (frequency and hemisphere), the
spectrograms a class-specific band, the features noisy class scores; votes are drawn around the latent class, so a
model that learns the mapping beats the class prior clearly. Partitions are written by
:func:`hms_core.partition.write_partition` with a :class:`~hms_core.partition.Layout` (the labelled segment
centred in the context, as preprocessing places it), so they carry a manifest like real ones. Not a substitute
for ``hms_core.synthetic``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from hms_core.config import EEGPreprocessingConfig
from hms_core.constants import (
    EEG_WINDOW_SAMPLES,
    KAGGLE_SPECTROGRAM,
    LABEL_WINDOW_SAMPLES,
    N_CLASSES,
    SFREQ,
    SPEC_FREQS,
    SPEC_WINDOW_ROWS,
    VOTE_COLUMNS,
    bipolar_names,
)  # fmt: skip
from hms_core.partition import Layout, write_partition

CLASS_FREQ = (5.0, 1.0, 1.5, 2.0, 2.5, 0.0)  # Hz of the rhythm per class; Other has none
CLASS_SIDE = (0, 0, 2, 0, 2, 2)  # 0 left (LL, LP chains), 2 both
#: (frequency bins, frames) of each spectrogram type in the test partitions (small, fast to train on).
DEFAULT_SPEC_SHAPES: dict[str, tuple[int, int]] = {
    "stft": (32, 40), "multitaper": (32, 40), "wavelet": (24, 40), "mel": (24, 40),
    KAGGLE_SPECTROGRAM: (len(SPEC_FREQS), SPEC_WINDOW_ROWS),
}  # fmt: skip


def synthetic_layout(n_times: int = EEG_WINDOW_SAMPLES, segment_length: int = LABEL_WINDOW_SAMPLES,
                spec_shapes: dict[str, tuple[int, int]] | None = None) -> Layout:  # fmt: skip
    """The layout of a test partition: ``segment_length`` samples centred in an ``n_times`` context (the config's
    :attr:`~hms_core.config.EEGPreprocessingConfig.segment_slice`), spectrograms over the segment."""
    seg = EEGPreprocessingConfig(context_length=n_times, segment_length=segment_length).segment_slice
    shapes = dict(DEFAULT_SPEC_SHAPES if spec_shapes is None else spec_shapes)
    span_s = segment_length / SFREQ
    axes = {
        name: (tuple(np.round(np.linspace(0.5, 20.0, fb), 4).tolist()),
               tuple(np.round((np.arange(tb) + 0.5) * span_s / tb, 4).tolist()))
        for name, (fb, tb) in shapes.items() if name != KAGGLE_SPECTROGRAM
    }  # fmt: skip
    return Layout(context_length=n_times, segment_start=seg.start, segment_length=segment_length,
                  bipolar=bipolar_names(False), dtype="float16", spectrogram_span="segment", spectrogram_axes=axes,
                  with_kaggle=KAGGLE_SPECTROGRAM in shapes)  # fmt: skip


def make_partition(path: str | os.PathLike[str], n: int, seed: int = 0, fold: int = 0,
                   n_times: int = EEG_WINDOW_SAMPLES, spec_shapes: dict[str, tuple[int, int]] | None = None,
                   with_votes: bool = True, id_offset: int = 0,
                   segment_length: int = LABEL_WINDOW_SAMPLES) -> Path:  # fmt: skip
    """Write a partition of ``n`` rows: ``index.parquet``, ``bipolar.npy``, ``quality.npy``, ``spec_*.npy``,
    ``features.parquet`` and ``manifest.json`` (``n_times`` samples of context)."""
    path = Path(path)
    layout = synthetic_layout(n_times, segment_length, spec_shapes)
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, N_CLASSES, n)
    t = np.arange(n_times) / SFREQ
    x = rng.normal(0, 1.0, (n, 16, n_times)).astype(np.float32)
    flip = rng.random(n) < 0.5  # right-sided lateralised events for half the rows
    for i in range(n):
        f = CLASS_FREQ[cls[i]]
        if f:
            wave = 1.5 * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
            chans = list(range(16)) if CLASS_SIDE[cls[i]] == 2 else ([0, 1, 2, 3, 8, 9, 10, 11])
            if CLASS_SIDE[cls[i]] == 0 and flip[i]:
                chans = [c + 4 for c in chans]
            x[i, chans] += wave
    arrays: dict[str, np.ndarray] = {"bipolar": x, "quality": np.ones((n, 16), bool)}
    for name, (fb, tb) in (DEFAULT_SPEC_SHAPES if spec_shapes is None else spec_shapes).items():
        s = rng.normal(0, 0.5, (n, 4, fb, tb)).astype(np.float32)
        for i in range(n):
            band = int(cls[i] * fb / N_CLASSES)
            chains = [0, 2] if CLASS_SIDE[cls[i]] == 0 else [0, 1, 2, 3]
            if CLASS_SIDE[cls[i]] == 0 and flip[i]:
                chains = [1, 3]
            s[i, chains, band : band + max(fb // N_CLASSES, 1)] += 1.5
        arrays[f"spec_{name}"] = s
    total = np.where(rng.random(n) < 0.5, rng.integers(1, 8, n), rng.integers(10, 20, n))
    votes = np.zeros((n, N_CLASSES), np.int64)
    for i in range(n):
        p = np.full(N_CLASSES, 0.15 / (N_CLASSES - 1))
        p[cls[i]] = 0.85
        votes[i] = rng.multinomial(total[i], p)
    idx = pd.DataFrame({
        "eeg_id": np.arange(n) + id_offset + 1000 * seed, "eeg_sub_id": 0, "eeg_label_offset_seconds": 0.0,
        "spectrogram_id": np.arange(n) + id_offset, "spectrogram_label_offset_seconds": 0.0,
        "label_id": np.arange(n) + id_offset, "patient_id": rng.integers(0, 50, n),
        "expert_consensus": [("Seizure", "LPD", "GPD", "LRDA", "GRDA", "Other")[k] for k in votes.argmax(1)],
    })  # fmt: skip
    if with_votes:
        for k, c in enumerate(VOTE_COLUMNS):
            idx[c] = votes[:, k]
        idx["total_votes"] = votes.sum(1)
    idx["fold"] = fold
    feats = pd.DataFrame({"eeg_id": idx["eeg_id"]})
    onehot = np.eye(N_CLASSES)[cls]
    for k in range(N_CLASSES):
        feats[f"score_{k}"] = onehot[:, k] + rng.normal(0, 0.4, n)
    feats["noise"] = rng.normal(size=n)
    write_partition(path, idx, arrays, layout, features=feats)
    return path


def make_folds(root: str | os.PathLike[str], n_folds: int = 3, rows_per_fold: int = 48, n_test: int = 8,
               seed: int = 0, n_times: int = EEG_WINDOW_SAMPLES) -> list[Path]:  # fmt: skip
    """``root/windows/fold_k`` for k < n_folds and ``root/windows/test``; returns the fold folders."""
    root = Path(root) / "windows"
    folds = [make_partition(root / f"fold_{k}", rows_per_fold, seed * 100 + k, k, n_times, id_offset=k * 10_000)
             for k in range(n_folds)]  # fmt: skip
    make_partition(root / "test", n_test, seed * 100 + 99, -1, n_times, with_votes=False, id_offset=900_000)
    return folds
