"""The models stage serial vs parallel: the same fold runs one after another in the runner's process and then
``--parallel`` at a time in worker processes (what ``hms run`` does without a CUDA device), side by side.

A small workspace of the profile (``--patients`` synthetic patients, cached under ``--cache``) is built once through
the pipeline (data, preprocessing and, when the fine-tuned ``eeg_foundation`` reads it, the foundation stage). Then
each mode trains the whole models stage from scratch in its own temporary workspace on those partitions (fresh
Dagster instance, models and tracking; the MLflow store is created before the clock starts, as the foundation stage
does in the demo), and the two modes' prediction files are compared byte for byte.

    python -m benchmarks.demo_time [--profile demo] [--patients 30] [--parallel 2] [--models ...]

The machine is shared, so the wall times are upper bounds; the ratio of the two modes, measured one after the
other, is the claim, with the CPU-seconds and the load average beside it. Last line:
``RESULT serial_s=... parallel_s=... ratio=... speedup=... identical_files=k/n ...``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import yaml

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "hms_bench_demo_time"


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its reaped children (the worker processes of a parallel stage)."""
    return sum(
        r.ru_utime + r.ru_stime
        for r in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def _base_workspace(profile: str, patients: int, models: list[str] | None, cache: Path):
    """The cached workspace holding the raw data, the partitions and (if needed) the pretrained encoder."""
    from hms_core.config import load_config
    from hms_dagster.runner import run_pipeline

    prof = load_config(profile)
    enabled = models or prof.enabled_models()
    unknown = sorted(set(enabled) - set(prof.models))
    if unknown:
        raise SystemExit(f"--models: unknown model(s) {unknown}; known: {sorted(prof.models)}")
    key = hashlib.sha256(json.dumps([profile, patients, sorted(enabled)]).encode()).hexdigest()[:12]
    root = cache / key
    root.mkdir(parents=True, exist_ok=True)
    path = root / "base.yaml"
    path.write_text(yaml.safe_dump({
        "base": prof.source_path, "workspace": {"root": str(root / "ws")},
        "dataset": {"synthetic": {"n_patients": patients}},
        "models": {m: {"enabled": m in enabled} for m in prof.models},
    }))  # fmt: skip
    cfg = load_config(path)
    for stage in ("data", "preprocessing", "foundation"):
        if stage == "foundation" and not _needs_encoder(cfg):
            continue
        report = run_pipeline(cfg, stage, resume=True)  # cached: only what is missing or stale
        if not report.ok:
            raise SystemExit(f"{stage} stage failed: {report.failed[2]}")
    return cfg


def _needs_encoder(cfg) -> bool:
    """Whether an enabled model reads the foundation stage's encoder (as the model assets decide it)."""
    from hms_core.models.specs import MODEL_SPECS

    return any(MODEL_SPECS[m].config_cls.uses_foundation_encoder(cfg.models[m]) for m in cfg.enabled_models())


def _time_models(base, parallel: int, tmp: Path) -> dict[str, float | dict[str, str]]:
    from hms_core.config import load_config
    from hms_core.foundation.job import encoder_dir
    from hms_core.tracking import MLflowLogger
    from hms_dagster.runner import run_pipeline

    models = {}
    if _needs_encoder(base):
        models["eeg_foundation"] = {"encoder_path": str(encoder_dir(base))}  # the base workspace's encoder
    path = tmp / f"parallel_{parallel}.yaml"
    path.write_text(yaml.safe_dump({
        "base": base.source_path, "workspace": {"root": str(tmp / f"ws_{parallel}")},
        "dataset": {"raw_data_path": str(base.raw_dir), "processed_data_path": str(base.processed_dir)},
        "models": models,
    }))  # fmt: skip
    cfg = load_config(path)
    if cfg.mlflow_uri is not None:  # the one-time sqlite schema migration, outside the clock
        _ = MLflowLogger(cfg.mlflow_uri, cfg.logging.mlflow_experiment, cfg.root / "mlruns", "warm-up").client
    load = os.getloadavg()[0]
    cpu, t = _cpu_seconds(), time.perf_counter()
    report = run_pipeline(cfg, "models", parallel=parallel, require_upstream=False)
    secs, cpu = time.perf_counter() - t, _cpu_seconds() - cpu
    if not report.ok:
        raise SystemExit(f"models stage (parallel={parallel}) failed: {report.failed[2]}")
    files = {
        str(f.relative_to(cfg.models_dir)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(cfg.models_dir.rglob("*.parquet"))
    }
    row = {"parallel": parallel, "runs": len(report.done), "processes": len(set(report.pids.values())),
           "seconds": round(secs, 1), "cpu_seconds": round(cpu, 1), "load_avg_1m": round(load, 2),
           "run_seconds": [round(s, 1) for _, _, s in report.done]}  # fmt: skip
    print(json.dumps(row), flush=True)
    return {"seconds": secs, "cpu": cpu, "load": load, "files": files}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--patients", type=int, default=30, help="synthetic patients of the small workspace")
    ap.add_argument("--parallel", type=int, default=2, help="fold runs at once in the parallel mode")
    ap.add_argument("--models", nargs="*", default=None, help="models to train (default: the profile's enabled)")
    ap.add_argument("--cache", default=str(DEFAULT_CACHE))
    a = ap.parse_args(argv)

    from hms_dagster.instance import usable_cores

    base = _base_workspace(a.profile, a.patients, a.models, Path(a.cache))
    print(f"# profile {base.profile}, {a.patients} patients, {base.dataset.n_folds} folds, models "
          f"{base.enabled_models()}, {usable_cores()} usable cores, parallel {a.parallel}", flush=True)  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="hms_bench_demo_time_"))
    try:
        serial = _time_models(base, 1, tmp)
        par = _time_models(base, a.parallel, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    same = sum(par["files"].get(k) == v for k, v in serial["files"].items())
    result = {
        "serial_s": round(serial["seconds"], 1),
        "parallel_s": round(par["seconds"], 1),
        "ratio": round(par["seconds"] / serial["seconds"], 3),
        "speedup": round(serial["seconds"] / par["seconds"], 2),
        "serial_cpu_s": round(serial["cpu"], 1),
        "parallel_cpu_s": round(par["cpu"], 1),
        "identical_files": f"{same}/{len(serial['files'])}",
        "parallel": a.parallel,
        "patients": a.patients,
        "load_avg_1m": f"{serial['load']:.2f}/{par['load']:.2f}",
    }
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()), flush=True)
    return 0 if same == len(serial["files"]) and par["files"].keys() == serial["files"].keys() else 1


if __name__ == "__main__":
    raise SystemExit(main())
