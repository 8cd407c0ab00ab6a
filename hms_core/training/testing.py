"""Small synthetic processed partitions in the exact on-disk layout, for tests and the training benchmark.

Each row has a latent class; the bipolar signals carry a class-specific rhythm (frequency and hemisphere), the
spectrograms a class-specific band, the features noisy class scores; votes are drawn around the latent class, so a
model that learns the mapping beats the class prior clearly. Not a substitute for ``hms_core.synthetic``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hms_core.constants import EEG_WINDOW_SAMPLES, N_CLASSES, SFREQ, VOTE_COLUMNS
from hms_core.io import save_npy, write_parquet

CLASS_FREQ = (5.0, 1.0, 1.5, 2.0, 2.5, 0.0)  # Hz of the rhythm per class; Other has none
CLASS_SIDE = (0, 0, 2, 0, 2, 2)  # 0 left (LL, LP chains), 2 both


def make_partition(path: str | Path, n: int, seed: int = 0, fold: int = 0, n_times: int = EEG_WINDOW_SAMPLES,
                   spec_shapes: dict[str, tuple[int, int]] | None = None, with_votes: bool = True,
                   id_offset: int = 0) -> Path:  # fmt: skip
    """Write ``index.parquet``, ``bipolar.npy`` (float16), ``quality.npy``, ``spec_*.npy``, ``features.parquet``."""
    path = Path(path)
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
    save_npy(path / "bipolar.npy", x.astype(np.float16))
    save_npy(path / "quality.npy", np.ones((n, 16), bool))
    default_shapes = {"stft": (32, 40), "multitaper": (32, 40), "wavelet": (24, 40), "mel": (24, 40), "kaggle": (100, 300)}
    for name, (fb, tb) in (spec_shapes or default_shapes).items():
        s = rng.normal(0, 0.5, (n, 4, fb, tb)).astype(np.float32)
        for i in range(n):
            band = int(cls[i] * fb / N_CLASSES)
            chains = [0, 2] if CLASS_SIDE[cls[i]] == 0 else [0, 1, 2, 3]
            if CLASS_SIDE[cls[i]] == 0 and flip[i]:
                chains = [1, 3]
            s[i, chains, band : band + max(fb // N_CLASSES, 1)] += 1.5
        save_npy(path / f"spec_{name}.npy", s.astype(np.float16) if name != "kaggle" else s)
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
    write_parquet(path / "index.parquet", idx)
    feats = pd.DataFrame({"eeg_id": idx["eeg_id"]})
    onehot = np.eye(N_CLASSES)[cls]
    for k in range(N_CLASSES):
        feats[f"score_{k}"] = onehot[:, k] + rng.normal(0, 0.4, n)
    feats["noise"] = rng.normal(size=n)
    write_parquet(path / "features.parquet", feats)
    return path


def make_folds(root: str | Path, n_folds: int = 3, rows_per_fold: int = 48, n_test: int = 8, seed: int = 0,
               n_times: int = EEG_WINDOW_SAMPLES) -> list[Path]:  # fmt: skip
    """``root/windows/fold_k`` for k < n_folds and ``root/windows/test``; returns the fold folders."""
    root = Path(root) / "windows"
    folds = [make_partition(root / f"fold_{k}", rows_per_fold, seed * 100 + k, k, n_times, id_offset=k * 10_000)
             for k in range(n_folds)]  # fmt: skip
    make_partition(root / "test", n_test, seed * 100 + 99, -1, n_times, with_votes=False, id_offset=900_000)
    return folds
