"""Training throughput (and fold KL) of every registered model with a profile's ``models``/``training`` settings.

Trains each enabled model for a few epochs on one fold of processed partitions (``--processed`` folder with
``windows/fold_k``; by default small synthetic partitions in the exact layout are generated in a temp dir) and
reports training samples per second as measured by the engine (forward + backward + optimiser step, data loading
included, evaluation excluded; for LightGBM: training rows / fit seconds).

    python -m benchmarks.train [--profile demo] [--processed DIR] [--epochs 2] [--rows 160] [--stage-config demo]

The last line is ``RESULT <model>=<samples/s> ...`` (plus ``seconds_<model>`` per training run, and with
``--stage-config`` the wall time of the whole models stage through Dagster, ``<profile>_models_stage_s``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--processed", default=None, help="processed data folder holding windows/fold_k")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument(
        "--rows", type=int, default=160, help="rows per synthetic fold (when --processed is not given)"
    )
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument(
        "--stage-config",
        default=None,
        help="also time the whole models stage (all folds, trained from scratch in a temporary workspace) "
        "on this config's processed data, which must exist (e.g. after make demo)",
    )
    a = ap.parse_args(argv)

    import torch

    from hms_core.config import load_config
    from hms_core.partition import load_partition
    from hms_core.training import train_fold
    from hms_core.training.testing import make_folds

    cfg = load_config(a.profile)
    tmp = Path(tempfile.mkdtemp(prefix="hms_bench_train_"))
    if a.processed:
        folds = sorted((Path(a.processed) / "windows").glob("fold_*"))
        if len(folds) < 2:
            raise SystemExit(f"{a.processed}/windows must hold at least two fold_k folders, found {len(folds)}")
        rows = [len(load_partition(f)) for f in folds[:2]]  # complete partitions (manifest), or a clear error
    else:
        folds = make_folds(tmp / "data", n_folds=2, rows_per_fold=a.rows, n_test=4, seed=0)
        rows = [a.rows, a.rows]
    train_cfg = cfg.training.model_copy(update={"epochs": a.epochs, "stage2_epochs": 0,
                                                "early_stopping_patience": a.epochs + 1})  # fmt: skip
    names = a.models or cfg.enabled_models()
    print(f"# {platform.node()} {os.cpu_count()} cpus, torch {torch.__version__}, threads "
          f"{train_cfg.torch_threads or torch.get_num_threads()}, profile {cfg.profile}, rows train/val "
          f"{rows[0]}/{rows[1]}, epochs {a.epochs}")  # fmt: skip
    result: dict[str, float] = {}
    for name in names:
        t = time.perf_counter()
        res = train_fold(name, cfg.models[name], train_cfg, folds[:1], folds[1], None, tmp / "models" / name,
                         resume=False)  # fmt: skip
        secs = time.perf_counter() - t
        m = res.metrics
        print(json.dumps({"model": name, "train_samples_per_s": round(m["train_samples_per_s"], 1),
                          "seconds": round(secs, 2), "n_params": int(m["n_params"]),
                          "val_kl": round(m["val_kl"], 4), "prior_kl": round(m["prior_kl"], 4)}), flush=True)  # fmt: skip
        result[name] = round(m["train_samples_per_s"], 1)
        result[f"seconds_{name}"] = round(secs, 2)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    if a.stage_config:
        result.update(_time_models_stage(a.stage_config))
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()), flush=True)
    return 0


def _time_models_stage(config: str) -> dict[str, float]:
    """Wall time of the whole models stage (every enabled model x every fold) through Dagster, trained from
    scratch: the runs go to a temporary workspace (fresh instance, models and tracking) that reads the given
    workspace's processed partitions, so finished trainings there are neither reused nor overwritten."""
    import shutil

    import yaml

    from hms_core.config import load_config
    from hms_dagster.runner import run_pipeline

    base = load_config(config)
    if not (base.processed_dir / "windows").is_dir():
        raise SystemExit(f"{base.processed_dir}/windows does not exist: run the preprocessing stage first "
                         f"(e.g. make demo)")  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="hms_bench_stage_"))
    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump({
        "base": base.source_path, "workspace": {"root": str(tmp)},
        "dataset": {"raw_data_path": str(base.raw_dir), "processed_data_path": str(base.processed_dir)},
    }))  # fmt: skip
    cfg = load_config(path)
    t = time.perf_counter()
    report = run_pipeline(cfg, "models", require_upstream=False)  # the partitions belong to another instance
    secs = time.perf_counter() - t
    shutil.rmtree(tmp, ignore_errors=True)
    if not report.ok:
        raise SystemExit(f"models stage failed: {report.failed[2]}")
    print(
        json.dumps(
            {"stage": "models", "profile": cfg.profile, "runs": len(report.done), "seconds": round(secs, 1)}
        )
    )
    return {f"{base.profile}_models_stage_s": round(secs, 1)}


if __name__ == "__main__":
    raise SystemExit(main())
