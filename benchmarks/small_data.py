"""Sample efficiency: every model on a small synthetic set (5 patient-grouped folds) against the band-power baseline.

Generates a small HMS-format set (default 50 patients, 2-6 EEGs each, seed 0) with :mod:`hms_core.synthetic`,
builds its labels, folds and the five processed fold partitions with the platform's own code (cached under
``--cache``, default ``runs/bench_small_data``: a second run only trains), then trains every model of the profile
(default: demo) with :func:`hms_core.training.train_fold` on each fold (trained on the other four), and fits the
band-power logistic regression of :mod:`benchmarks.synthetic_baseline` on the same rows and folds.

    python -m benchmarks.small_data [--patients 50] [--models resnet1d_gru ...] [--folds 0 1] [--set training.x=v]

Prints the out-of-fold KL of each model beside the class-prior KL (all rows, and rows with >= 10 votes), the
per-fold ratio model/prior, and a last line ``RESULT prior_kl=... bandpower_kl=... <model>_kl=... n_patients=...
n_rows=...`` (all rows). ``--set`` overrides config keys for diagnosis (e.g. ``--set training.ema_decay=null``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.synthetic_baseline import bandpower_features, fit_predict_bandpower
from hms_core.constants import (
    EEG_CHANNELS,
    HIGH_VOTE_THRESHOLD,
    LABEL_START_SAMPLE,
    LABEL_WINDOW_SAMPLES,
    SFREQ,
    VOTE_COLUMNS,
)
from hms_core.metrics import kl_divergence

DEFAULT_CACHE = Path("runs/bench_small_data")


def _build_partition():  # type: ignore[no-untyped-def]
    """The platform's partition writer (``hms_core.partition`` once it moves there, else ``hms_core.preprocess``)."""
    try:
        from hms_core.partition import build_partition
    except ImportError:
        from hms_core.preprocess import build_partition
    return build_partition


#: Modules whose code produces the cached raw data and the processed partitions (their source is in the cache key).
_RAW_CODE = ("synthetic",)
_PROCESSED_CODE = ("constants.py", "signal.py", "spectral.py", "features.py", "preprocess.py", "partition.py")


def _key(*objs: Any) -> str:
    return hashlib.sha256(json.dumps(objs, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _code(names: tuple[str, ...]) -> str:
    """Hash of the source files of ``hms_core/<name>`` (files or packages) that exist."""
    import hms_core

    root = Path(hms_core.__file__).parent
    h = hashlib.sha256()
    for name in names:
        for f in sorted((root / name).rglob("*.py")) if (root / name).is_dir() else [root / name]:
            if f.is_file():
                h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:12]


def prepare_data(cfg: Any, cache: Path) -> tuple[Path, list[Path], pd.DataFrame]:
    """Generate (once) the raw set, the folds table and the processed fold partitions; returns (raw, folds, rows)."""
    from hms_core.folds import make_folds
    from hms_core.labels import load_train_labels
    from hms_core.synthetic import generate_dataset

    syn = cfg.dataset.synthetic
    raw = cache / f"raw_{_key(syn.model_dump(mode='json', exclude={'workers'}), _code(_RAW_CODE))}"
    if not (raw / "synthetic_manifest.json").exists():
        t = time.perf_counter()
        s = generate_dataset(raw, syn)
        print(f"# generated {s['n_eegs']} EEGs, {s['n_rows']} rows in {time.perf_counter() - t:.1f} s", flush=True)
    pkey = _key(cfg.preprocessing.model_dump(mode="json", exclude={"workers"}), cfg.dataset.n_folds,
                cfg.dataset.fold_seed, _code(_PROCESSED_CODE))  # fmt: skip
    processed = raw / f"processed_{pkey}"
    folds_file = processed / "folds.parquet"
    if not folds_file.exists():
        labels, _ = load_train_labels(raw, check_files="none")
        assigned = make_folds(labels, n_folds=cfg.dataset.n_folds, seed=cfg.dataset.fold_seed)
        table = labels.join(assigned.select("eeg_id", "fold"), on="eeg_id", how="left").to_pandas()
        processed.mkdir(parents=True, exist_ok=True)
        table.to_parquet(folds_file.with_suffix(".tmp"))
        os.replace(folds_file.with_suffix(".tmp"), folds_file)
    rows = pd.read_parquet(folds_file)
    build_partition = _build_partition()
    dirs = []
    for k in range(cfg.dataset.n_folds):
        out = processed / "windows" / f"fold_{k}"
        if not (out / "manifest.json").exists():
            t = time.perf_counter()
            build_partition(rows[rows["fold"] == k].reset_index(drop=True), eeg_dir=raw / "train_eegs",
                            spec_dir=raw / "train_spectrograms", out_dir=out, cfg=cfg.preprocessing,
                            batch_size=cfg.dataset.processing_batch_size)  # fmt: skip
            print(f"# preprocessed fold_{k} in {time.perf_counter() - t:.1f} s", flush=True)
        dirs.append(out)
    return raw, dirs, rows


def row_bandpower(raw: Path, rows: pd.DataFrame) -> np.ndarray:
    """The band-power features (:func:`benchmarks.synthetic_baseline.bandpower_features`) of each row's 10 s."""
    import polars as pl

    feats, cache = [], {}
    for eeg_id, off in zip(rows["eeg_id"], rows["eeg_label_offset_seconds"]):
        if eeg_id not in cache:
            path = raw / "train_eegs" / f"{eeg_id}.parquet"
            cache = {eeg_id: pl.read_parquet(path).select(list(EEG_CHANNELS)).to_numpy().T}
        a = round(off * SFREQ) + LABEL_START_SAMPLE  # the labelled 10 s: the centre of the 50 s window
        feats.append(bandpower_features(cache[eeg_id][:, a : a + LABEL_WINDOW_SAMPLES]))
    return np.stack(feats)


def _targets(rows: pd.DataFrame) -> np.ndarray:
    v = rows[list(VOTE_COLUMNS)].to_numpy(np.float64)
    return v / v.sum(1, keepdims=True)


def _summary(name: str, preds: dict[int, np.ndarray], y: dict[int, np.ndarray], votes: dict[int, np.ndarray],
             prior: dict[int, np.ndarray]) -> dict[str, Any]:  # fmt: skip
    folds = sorted(preds)
    yy, pp = np.concatenate([y[k] for k in folds]), np.concatenate([preds[k] for k in folds])
    qq = np.concatenate([np.tile(prior[k], (len(y[k]), 1)) for k in folds])
    hv = np.concatenate([votes[k] for k in folds]) >= HIGH_VOTE_THRESHOLD
    per_fold = {k: kl_divergence(y[k], preds[k]) / kl_divergence(y[k], np.tile(prior[k], (len(y[k]), 1)))
                for k in folds}  # fmt: skip
    return {"model": name, "kl": kl_divergence(yy, pp), "prior_kl": kl_divergence(yy, qq),
            "kl_hv": kl_divergence(yy[hv], pp[hv]), "prior_kl_hv": kl_divergence(yy[hv], qq[hv]),
            "fold_ratio": per_fold, "n_rows": len(yy), "n_hv": int(hv.sum())}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="demo", help="config whose models/training/preprocessing are used")
    ap.add_argument("--patients", type=int, default=50)
    ap.add_argument("--eegs-per-patient", type=int, nargs=2, default=(2, 6))
    ap.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training")
    ap.add_argument("--models", nargs="*", default=None, help="default: every enabled model of the profile")
    ap.add_argument("--folds", type=int, nargs="*", default=None, help="validation folds to run (default: all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (diagnosis)")
    ap.add_argument("--cache", default=str(DEFAULT_CACHE))
    ap.add_argument("--history", action="store_true", help="print each training's per-epoch validation KL")
    a = ap.parse_args(argv)

    import torch

    from hms_core.config import load_config, parse_override
    from hms_core.training import train_fold

    over: dict[str, Any] = {"dataset": {"synthetic": {"n_patients": a.patients, "seed": a.seed,
                                                      "eegs_per_patient": list(a.eegs_per_patient),
                                                      "workers": a.workers, "n_test": 1}},
                            "preprocessing": {"workers": a.workers},
                            "training": {"torch_threads": a.threads, "device": "cpu"}}  # fmt: skip
    for expr in a.set:
        over = _merge(over, parse_override(expr))
    cfg = load_config(a.profile, over)
    t0 = time.perf_counter()
    cache = Path(a.cache)
    raw, dirs, rows = prepare_data(cfg, cache)
    n_folds = len(dirs)
    folds = a.folds if a.folds else list(range(n_folds))
    names = a.models if a.models is not None else cfg.enabled_models()
    fold_rows = {k: rows[rows["fold"] == k].reset_index(drop=True) for k in range(n_folds)}
    y = {k: _targets(fold_rows[k]) for k in range(n_folds)}
    votes = {k: fold_rows[k][list(VOTE_COLUMNS)].to_numpy().sum(1) for k in range(n_folds)}
    prior = {k: np.concatenate([y[j] for j in range(n_folds) if j != k]).mean(0) for k in folds}
    print(f"# {os.cpu_count()} cpus, torch {torch.__version__}, {a.threads} thread(s); profile {cfg.profile}; "
          f"{a.patients} patients, {rows['eeg_id'].nunique()} EEGs, {len(rows)} rows, folds {folds}; "
          f"overrides {a.set or 'none'}", flush=True)  # fmt: skip

    results = [_summary("prior", {k: np.tile(prior[k], (len(y[k]), 1)) for k in folds}, y, votes, prior)]
    feats = {k: row_bandpower(raw, fold_rows[k]) for k in range(n_folds)}
    bp = {k: fit_predict_bandpower(np.concatenate([feats[j] for j in range(n_folds) if j != k]),
                                   np.concatenate([y[j] for j in range(n_folds) if j != k]), feats[k])
          for k in folds}  # fmt: skip
    results.append(_summary("bandpower", bp, y, votes, prior))
    work = cache / "models" / _key(a.set, os.getpid(), time.time())
    seconds: dict[str, float] = {}
    try:
        for name in names:
            preds: dict[int, np.ndarray] = {}
            t = time.perf_counter()
            for k in folds:
                res = train_fold(name, cfg.models[name], cfg.training, [d for j, d in enumerate(dirs) if j != k],
                                 dirs[k], None, work / name / f"fold_{k}", resume=False)  # fmt: skip
                preds[k] = res.oof_pred
                if a.history and res.history and "val_kl" in res.history[0]:  # torch models
                    h = " ".join(f"{r['val_kl']:.3f}/{r['val_kl_high_votes']:.3f}" for r in res.history)
                    print(f"#   {name} fold_{k}: best epoch {int(res.metrics['best_epoch'])} of "
                          f"{int(res.metrics['epochs'])}; val KL all/hv per epoch {h}", flush=True)  # fmt: skip
            seconds[name] = time.perf_counter() - t
            results.append(_summary(name, preds, y, votes, prior))
            print(_line(results[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'model':14s} {'OOF KL':>7s} {'prior':>7s} {'ratio':>6s} | {'KL>=10v':>7s} {'prior':>7s} "
          f"{'ratio':>6s} | per-fold ratio (all rows)")  # fmt: skip
    for r in results:
        print(_line(r))
    res_kv = {"prior_kl": results[0]["kl"], "bandpower_kl": results[1]["kl"]}
    res_kv.update({f"{r['model']}_kl": r["kl"] for r in results[2:]})
    res_kv.update({"prior_kl_hv": results[0]["kl_hv"], "bandpower_kl_hv": results[1]["kl_hv"]})
    res_kv.update({f"{r['model']}_kl_hv": r["kl_hv"] for r in results[2:]})
    tail = (f"n_patients={a.patients} n_eegs={rows['eeg_id'].nunique()} n_rows={results[0]['n_rows']} "
            f"n_rows_hv={results[0]['n_hv']} folds={len(folds)} seconds={time.perf_counter() - t0:.0f}")  # fmt: skip
    print("RESULT " + " ".join(f"{k}={v:.4f}" for k, v in res_kv.items()) + " " + tail, flush=True)
    return 0


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _line(r: dict[str, Any]) -> str:
    folds = " ".join(f"{k}:{v:.2f}" for k, v in r["fold_ratio"].items())
    return (f"{r['model']:14s} {r['kl']:7.4f} {r['prior_kl']:7.4f} {r['kl'] / r['prior_kl']:5.2f}x | "
            f"{r['kl_hv']:7.4f} {r['prior_kl_hv']:7.4f} {r['kl_hv'] / r['prior_kl_hv']:5.2f}x | {folds}")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
