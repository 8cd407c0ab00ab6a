"""Which production shifts the drift check finds, at which day sizes.

A reference is built from synthetic training windows (``hms_core.monitoring.testing.synthetic_windows``, one new
synthetic patient per window, preprocessed by the training transform with the profile's ``preprocessing``) and a
class model's cross-validated predictions (multinomial logistic regression on the monitored features' logs, fitted
on the vote shares: a stand-in for the ensemble's out-of-fold predictions, since no trained workspace is needed
here). Then pools of new windows are drawn, unshifted and shifted: EEG amplitude times 1.1 ... 2, independent
white noise of 1 ... 5 uV RMS per electrode, and a class mix change (the periodic classes LPD + GPD from 27 % to
80 % of the windows). For each shift and day size ``n`` the check runs on ``--trials`` random days of ``n`` windows
of the pool (``monitoring.drift`` of the profile, with ``min_windows`` off so that small days are judged too) and
the share of days that fail with ERROR is the detection rate; on the unshifted pool it is the false-alarm rate.

    PYTHONPATH=. python -m benchmarks.drift [--profile demo] [--reference 300] [--pool 120] [--trials 30]

prints the table and ``RESULT ...``: per shift the smallest size detected on >= 90 % of days (``none`` when no
size up to the pool was) and the false-alarm rate per size.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

SIZES = (25, 50, 100)
SHIFTS: dict[str, dict] = {
    "none": {},
    "amp_1.1": {"amplitude": 1.1},
    "amp_1.25": {"amplitude": 1.25},
    "amp_1.5": {"amplitude": 1.5},
    "noise_1uv": {"noise_uv": 1.0},
    "noise_2uv": {"noise_uv": 2.0},
    "noise_5uv": {"noise_uv": 5.0},
    "classmix_periodic80": {"class_probs": [0.04, 0.4, 0.4, 0.04, 0.04, 0.08]},
}


def _rows(batch, probs: np.ndarray) -> pd.DataFrame:
    from hms_core.monitoring.log import prediction_rows

    return prediction_rows(probs, batch, package_version="benchmark", input_kind="synthetic", source="benchmark")


def _model_inputs(batch, columns: list[str]) -> np.ndarray:
    f = batch.features.select(columns).to_numpy().astype(np.float64)
    return np.sign(f) * np.log1p(np.abs(f))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--reference", type=int, default=300, help="training windows of the reference")
    ap.add_argument("--pool", type=int, default=120, help="windows per shifted pool")
    ap.add_argument("--trials", type=int, default=30, help="random days per (shift, size)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    from hms_core.config import load_config
    from hms_core.monitoring.drift import ERROR, compute_drift, min_windows_for_psi
    from hms_core.monitoring.log import monitored_feature_columns
    from hms_core.monitoring.reference import build_reference
    from hms_core.monitoring.testing import shift_windows, synthetic_windows
    from hms_core.preprocess import process_windows

    t0 = time.perf_counter()
    cfg = load_config(args.profile)
    pre = cfg.preprocessing.model_copy(deep=True)
    pre.spectrogram.types = []  # drift reads the features table only
    drift_cfg = cfg.monitoring.drift.model_copy(update={"min_windows": 1})

    train = synthetic_windows(args.reference, args.seed)
    tb = process_windows(train.windows, pre, compute_features=True)
    cols = [c for c in monitored_feature_columns() if c in tb.features.columns]
    x = _model_inputs(tb, cols)
    y = train.votes.argmax(axis=1)
    model = LogisticRegression(max_iter=2000, C=0.1)
    oof = cross_val_predict(model, x, y, cv=5, method="predict_proba")
    model.fit(x, y)
    full = np.zeros((len(y), 6))
    full[:, np.unique(y)] = oof
    ref = build_reference(tb.features.to_pandas(), full, targets=train.votes / train.votes.sum(1, keepdims=True),
                          votes=train.votes.sum(1), n_bins=drift_cfg.n_bins, sample_size=drift_cfg.reference_sample)  # fmt: skip
    print(f"reference: {ref.n_windows} windows, {len(ref.features)} features, OOF KL {ref.metrics['kl']:.3f} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip

    base = synthetic_windows(args.pool, args.seed + 1)
    rng = np.random.default_rng(args.seed + 2)
    table: dict[str, dict[int, float]] = {}
    for name, shift in SHIFTS.items():
        if "class_probs" in shift:
            day = synthetic_windows(args.pool, args.seed + 3, np.asarray(shift["class_probs"]))
            windows = day.windows
        else:
            windows = shift_windows(base.windows, seed=args.seed + 4, **shift) if shift else base.windows
        b = process_windows(windows, pre, compute_features=True)
        probs = np.zeros((len(windows), 6))
        probs[:, model.classes_] = model.predict_proba(_model_inputs(b, cols))
        rows = _rows(b, probs)
        table[name] = {}
        for n in SIZES:
            if n > len(rows):
                continue
            hits = [
                compute_drift(ref, rows.iloc[rng.choice(len(rows), n, replace=False)], drift_cfg).status == ERROR
                for _ in range(args.trials)
            ]
            table[name][n] = float(np.mean(hits))
        print(f"{name:>22}: " + "  ".join(f"n={n}: {r:.2f}" for n, r in table[name].items()), flush=True)

    m = len(cols) + 1
    try:
        need: int | str = min_windows_for_psi(
            drift_cfg.n_bins, drift_cfg.psi_warn, m, drift_cfg.ks_alpha, ref.n_windows
        )
    except ValueError:
        need = "reference_too_small"
    parts = []
    for name, rates in table.items():
        if name == "none":
            parts += [f"false_alarm_n{n}={r:.2f}" for n, r in rates.items()]
            continue
        found = [n for n, r in rates.items() if r >= 0.9]
        parts.append(f"{name}={min(found) if found else 'none'}")
    print(
        "RESULT " + " ".join(parts) + f" min_windows_rule={need} reference={ref.n_windows} pool={args.pool} "
        f"trials={args.trials} features={m} seconds={time.perf_counter() - t0:.0f}"
    )


if __name__ == "__main__":
    main()
