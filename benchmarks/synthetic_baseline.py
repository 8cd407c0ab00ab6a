"""Learnability check of the synthetic data set: a band-power logistic regression vs the class-prior baseline.

Features: log band power (delta 0.5-4, theta 4-8, alpha 8-13, beta 13-30 Hz) of each double-banana chain (mean
over its 4 bipolar pairs, Welch PSD) in the labelled central 10 s. One row per ``eeg_id``; multinomial logistic
regression fitted on soft targets (vote fractions as sample weights); GroupKFold by ``patient_id``; both models
are scored with the competition KL divergence on held-out EEGs with >= 10 votes.

    PYTHONPATH=. python benchmarks/synthetic_baseline.py [--out /tmp/synthetic_demo] [--profile demo] [--workers 2]

prints ``RESULT prior_kl=... bandpower_kl=... n_rows=...``. A good synthetic set is clearly learnable (band-power
KL well below the prior's) but far from trivial.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import polars as pl
from scipy.signal import welch

from hms_core.constants import (
    BIPOLAR_PAIRS,
    EEG_CHANNELS,
    HIGH_VOTE_THRESHOLD,
    LABEL_START_SAMPLE,
    LABEL_WINDOW_SAMPLES,
    N_CLASSES,
    SFREQ,
    VOTE_COLUMNS,
)
from hms_core.metrics import kl_divergence

BANDS = ((0.5, 4.0), (4.0, 8.0), (8.0, 13.0), (13.0, 30.0))


def bandpower_features(eeg: np.ndarray) -> np.ndarray:
    """(19, n) referential central window -> (16,) log band powers: 4 chains x 4 bands."""
    idx = {c: i for i, c in enumerate(EEG_CHANNELS)}
    x = np.nan_to_num(eeg.astype(np.float64))
    bip = np.stack([x[idx[a]] - x[idx[b]] for a, b in BIPOLAR_PAIRS])
    f, p = welch(bip, fs=SFREQ, nperseg=400, axis=-1)
    feats = []
    for chain in range(4):
        pc = p[4 * chain : 4 * chain + 4].mean(0)
        feats += [np.log(pc[(f >= lo) & (f < hi)].mean() + 1e-6) for lo, hi in BANDS]
    return np.asarray(feats)


def load_eeg_table(data_dir: str | Path) -> tuple[pl.DataFrame, np.ndarray]:
    """One row per eeg_id (its first sub-window) and the (n, 16) features of its central 10 s."""
    data_dir = Path(data_dir)
    train = pl.read_csv(data_dir / "train.csv")
    rows = train.group_by("eeg_id", maintain_order=True).first()
    feats = []
    for eeg_id, off in zip(rows["eeg_id"].to_list(), rows["eeg_label_offset_seconds"].to_list()):
        sig = (
            pl.read_parquet(data_dir / "train_eegs" / f"{eeg_id}.parquet").select(list(EEG_CHANNELS)).to_numpy().T
        )
        a = int(off * SFREQ) + LABEL_START_SAMPLE
        feats.append(bandpower_features(sig[:, a : a + LABEL_WINDOW_SAMPLES]))
    return rows, np.stack(feats)


def fit_predict_bandpower(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Standardised features + multinomial logistic regression on soft targets; (n_test, 6) probabilities."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    xt = scaler.transform(x_train)
    # soft targets: every sample once per class, weighted by its vote fraction
    xs = np.repeat(xt, N_CLASSES, axis=0)
    ys = np.tile(np.arange(N_CLASSES), len(x_train))
    ws = np.asarray(y_train).reshape(-1)
    keep = ws > 0
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(xs[keep], ys[keep], sample_weight=ws[keep])
    proba = np.zeros((len(x_test), N_CLASSES))
    proba[:, clf.classes_] = clf.predict_proba(scaler.transform(x_test))
    return proba


def cross_validate(rows: pl.DataFrame, feats: np.ndarray, n_splits: int = 5, seed: int = 0) -> dict[str, float]:
    """Out-of-fold KL of the prior and of the band-power logistic regression on EEGs with >= 10 votes."""
    from sklearn.model_selection import GroupKFold

    votes = rows.select(list(VOTE_COLUMNS)).to_numpy().astype(np.float64)
    y = votes / votes.sum(1, keepdims=True)
    groups = rows["patient_id"].to_numpy()
    high = votes.sum(1) >= HIGH_VOTE_THRESHOLD
    p_prior = np.zeros_like(y)
    p_model = np.zeros_like(y)
    n_splits = min(n_splits, len(np.unique(groups)))
    for tr, te in GroupKFold(n_splits=n_splits).split(feats, y, groups):
        p_prior[te] = y[tr].mean(0)
        p_model[te] = fit_predict_bandpower(feats[tr], y[tr], feats[te])
    return {
        "prior_kl": kl_divergence(y[high], p_prior[high]),
        "bandpower_kl": kl_divergence(y[high], p_model[high]),
        "n_rows": int(high.sum()),
        "n_eegs": len(y),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/synthetic_demo", help="data set folder (generated if incomplete)")
    ap.add_argument("--profile", default="demo", help="config profile whose dataset.synthetic section is used")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    from hms_core.config import load_config
    from hms_core.synthetic import generate_dataset

    cfg = load_config(args.profile).dataset.synthetic
    if args.workers:
        cfg = cfg.model_copy(update={"workers": args.workers})
    t0 = time.perf_counter()
    summary = generate_dataset(args.out, cfg)
    t1 = time.perf_counter()
    rows, feats = load_eeg_table(args.out)
    res = cross_validate(rows, feats)
    print(
        f"generate: {summary['seconds']:.1f} s ({t1 - t0:.1f} s wall), {summary['n_eegs']} EEGs, {summary['n_rows']} rows"
    )
    print(f"RESULT prior_kl={res['prior_kl']:.4f} bandpower_kl={res['bandpower_kl']:.4f} n_rows={res['n_rows']}")


if __name__ == "__main__":
    main()
