"""Does self-supervised pretraining help? The fine-tuned ``eeg_foundation`` classifier from the pretrained encoder
vs from scratch, and a linear probe on frozen pretrained vs random features, at 100 % and about 10 % of the
labelled training rows, with the same training budget and seeds (the profile's ``training`` section, untouched).

Data: the small synthetic set of :mod:`benchmarks.small_data` (default 50 patients, 5 patient-grouped folds, cached
under ``--cache``). The encoder is pretrained once with the profile's ``foundation`` section (``--steps`` overrides
the step count) on every recording of that raw set, train and test, without labels, then each setting trains on
four folds and predicts the fifth (``--folds`` to run fewer). ``training.max_train_rows`` (a seeded row subset,
the same for every setting) gives the 10 % runs.

    python -m benchmarks.foundation [--patients 50] [--steps N] [--folds 0 1 2 3 4] [--threads 1]

Prints one line per setting and a last line ``RESULT prior_kl=... ft_pre_kl=... ft_scratch_kl=...
probe_pre_kl=... probe_rand_kl=... ft_ratio=... probe_ratio=...`` for 100 % and the same keys with ``_10pct``
(out-of-fold KL over every validation row; ratios are pretrained / scratch, below 1 means pretraining helped),
plus the pretraining time and the corpus size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.small_data import DEFAULT_CACHE, _key, _targets, prepare_data
from hms_core.metrics import kl_divergence

SETTINGS: dict[str, dict[str, Any]] = {
    "ft_pre": {"pretrained": True, "linear_probe": False},
    "ft_scratch": {"pretrained": False, "linear_probe": False},
    "probe_pre": {"pretrained": True, "linear_probe": True},
    "probe_rand": {"pretrained": False, "linear_probe": True},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--patients", type=int, default=50)
    ap.add_argument("--eegs-per-patient", type=int, nargs=2, default=(2, 6))
    ap.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    ap.add_argument("--steps", type=int, default=None, help="pretraining steps (default: the profile's)")
    ap.add_argument("--folds", type=int, nargs="*", default=None)
    ap.add_argument("--fractions", type=float, nargs="*", default=[1.0, 0.1])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", default=str(DEFAULT_CACHE))
    a = ap.parse_args(argv)

    import torch

    from hms_core.config import load_config
    from hms_core.foundation.data import build_corpus, list_recordings, select_recordings
    from hms_core.foundation.pretrain import pretrain
    from hms_core.training import train_fold

    over: dict[str, Any] = {
        "dataset": {"synthetic": {"n_patients": a.patients, "seed": a.seed, "workers": a.workers, "n_test": 1,
                                  "eegs_per_patient": list(a.eegs_per_patient)}},
        "preprocessing": {"workers": a.workers},
        "training": {"torch_threads": a.threads, "device": "cpu"},
        "foundation": {"device": "cpu", "torch_threads": a.threads, **({"steps": a.steps} if a.steps else {})},
    }  # fmt: skip
    cfg = load_config(a.profile, over)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    cache = Path(a.cache)
    raw, dirs, rows = prepare_data(cfg, cache)
    n_folds = len(dirs)
    folds = a.folds if a.folds else list(range(n_folds))

    fcfg = cfg.foundation
    fdir = (
        cache / f"foundation_{_key(fcfg.model_dump(mode='json', exclude={'torch_threads', 'device'}), str(raw))}"
    )
    recs = select_recordings(
        list_recordings(raw, fcfg.include_test), fcfg.max_recordings, fcfg.max_hours, fcfg.seed
    )
    t = time.perf_counter()
    corpus = build_corpus(recs, cfg.preprocessing, fdir / "corpus", window=fcfg.window_s * 200)
    corpus_s = time.perf_counter() - t
    t = time.perf_counter()
    pre = pretrain(corpus, fcfg, fdir, resume=True, preprocessing=cfg.preprocessing.model_dump(mode="json"))
    pretrain_s = time.perf_counter() - t
    encoder = fdir / "encoder"
    m = corpus.manifest
    print(f"# corpus: {m['n_recordings']} recordings ({m['n_train_recordings']} train, {m['n_test_recordings']} "
          f"test), {m['recording_hours']:.2f} h, {m['n_blocks']} blocks of 50 s, built in {corpus_s:.0f} s; "
          f"pretraining {fcfg.steps} steps x {fcfg.batch_size} windows ({fcfg.model_size}) in {pretrain_s:.0f} s "
          f"(resumed from {pre.resumed_from}); final train loss {pre.metrics.get('loss', float('nan')):.4f}, "
          f"held-out {pre.metrics.get('eval_loss', float('nan')):.4f}", flush=True)  # fmt: skip
    first = next((h for h in pre.history if "eval_loss" in h), {})
    print(f"# held-out loss first/last evaluation: {first.get('eval_loss', float('nan')):.4f} -> "
          f"{pre.metrics.get('eval_loss', float('nan')):.4f} (recon {first.get('eval_recon', float('nan')):.4f} -> "
          f"{pre.metrics.get('eval_recon', float('nan')):.4f})", flush=True)  # fmt: skip

    fold_rows = {k: rows[rows["fold"] == k].reset_index(drop=True) for k in range(n_folds)}
    y = {k: _targets(fold_rows[k]) for k in range(n_folds)}
    prior = {k: np.concatenate([y[j] for j in range(n_folds) if j != k]).mean(0) for k in folds}
    yy = np.concatenate([y[k] for k in folds])
    prior_kl = kl_divergence(yy, np.concatenate([np.tile(prior[k], (len(y[k]), 1)) for k in folds]))
    base = dict(cfg.models.get("eeg_foundation", {}))
    base.pop("enabled", None)
    work = cache / "models" / _key("foundation", os.getpid(), time.time())
    res: dict[str, float] = {"prior_kl": prior_kl}
    try:
        for frac in a.fractions:
            tag = "" if frac >= 1 else f"_{round(frac * 100)}pct"
            for name, over_m in SETTINGS.items():
                preds, secs = [], time.perf_counter()
                for k in folds:
                    n_train = sum(len(fold_rows[j]) for j in range(n_folds) if j != k)
                    tcfg = cfg.training.model_copy(update={"max_train_rows": None if frac >= 1
                                                           else max(8, round(frac * n_train))})  # fmt: skip
                    mcfg = {**base, **over_m, "encoder_path": str(encoder)}
                    r = train_fold("eeg_foundation", mcfg, tcfg, [d for j, d in enumerate(dirs) if j != k], dirs[k],
                                   None, work / f"{name}{tag}" / f"fold_{k}", resume=False)  # fmt: skip
                    preds.append(r.oof_pred)
                kl = kl_divergence(yy, np.concatenate(preds))
                res[f"{name}{tag}_kl"] = kl
                print(f"{name}{tag:7s} OOF KL {kl:.4f} (prior {prior_kl:.4f}, ratio to prior {kl / prior_kl:.3f}) "
                      f"in {time.perf_counter() - secs:.0f} s", flush=True)  # fmt: skip
            res[f"ft_ratio{tag}"] = res[f"ft_pre{tag}_kl"] / res[f"ft_scratch{tag}_kl"]
            res[f"probe_ratio{tag}"] = res[f"probe_pre{tag}_kl"] / res[f"probe_rand{tag}_kl"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tail = (f"n_rows={len(yy)} folds={len(folds)} corpus_hours={m['recording_hours']:.2f} "
            f"pretrain_steps={fcfg.steps} pretrain_s={pretrain_s:.0f} seconds={time.perf_counter() - t0:.0f}")  # fmt: skip
    print("RESULT " + " ".join(f"{k}={v:.4f}" for k, v in res.items()) + " " + tail, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
