"""``torchrun`` entry point: data-parallel training of one (model, fold), one process per GPU (gloo on CPU).

    torchrun --nproc_per_node 4 -m hms_core.training.ddp --config full --model resnet1d_gru --fold fold_0

builds the call exactly as the Dagster model asset does (:func:`hms_core.training.job.fold_job` and
:func:`hms_core.tracking.build_loggers`): the same partitions, model and training parameters, preprocessing
parameters in ``final/config.json``, output folder ``<root>/models/<model>/<fold>`` and tracking runs. ``--train
DIR ... --val DIR [--test DIR] --out DIR`` override the folders (without ``--fold`` all of ``--train --val --out``
are needed; the run is named after the validation folder). The process-group helpers live in
:mod:`hms_core.training.distributed`; this module is only the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from hms_core.config import PlatformConfig
from hms_core.training.job import FoldJob

__all__ = ["build_parser", "job_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m hms_core.training.ddp", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="platform config: profile name or YAML path (default: "
                                                   "$HMS_CONFIG, else the demo profile)")  # fmt: skip
    ap.add_argument("--model", required=True, help="registered model name")
    ap.add_argument("--fold", default=None, help="fold partition to validate on, e.g. fold_0")
    ap.add_argument("--train", nargs="+", default=None, help="training partition folders (default: other folds)")
    ap.add_argument("--val", default=None, help="validation partition folder (default: the fold's)")
    ap.add_argument("--test", default=None, help="test partition folder (default: <processed>/windows/test)")
    ap.add_argument("--out", default=None, help="output folder (default: <root>/models/<model>/<fold>)")
    ap.add_argument("--backend", default=None, help="process-group backend (default: nccl on GPU, else gloo)")
    ap.add_argument("--no-resume", action="store_true", help="start afresh instead of from checkpoints/last.pt")
    return ap


def job_from_args(
    a: argparse.Namespace, ap: argparse.ArgumentParser | None = None
) -> tuple[PlatformConfig, FoldJob]:
    """The config and the job the command line asks for (argument errors exit with code 2, naming the flag)."""
    from hms_core.config import load_config
    from hms_core.training.job import fold_job, make_job

    ap = ap or build_parser()
    cfg = load_config(a.config)
    if a.fold is not None:
        job = fold_job(cfg, a.model, a.fold)
        over = {k: v for k, v in (("train_dirs", a.train and tuple(Path(p).resolve() for p in a.train)),
                                  ("val_dir", a.val and Path(a.val).resolve()),
                                  ("test_dir", a.test and Path(a.test).resolve()),
                                  ("out_dir", a.out and Path(a.out).resolve())) if v}  # fmt: skip
        return cfg, dataclasses.replace(job, **over)
    missing = [f"--{n}" for n in ("train", "val", "out") if getattr(a, n) is None]
    if missing:
        ap.error(f"give --fold, or all of --train --val --out (missing {' '.join(missing)})")
    return cfg, make_job(cfg, a.model, Path(a.val).name, a.train, a.val, a.test, a.out)


def main(argv: list[str] | None = None) -> int:
    from hms_core.tracking import build_loggers
    from hms_core.training import distributed
    from hms_core.training.job import train_job

    ap = build_parser()
    a = ap.parse_args(argv)
    cfg, job = job_from_args(a, ap)
    ctx = distributed.init_distributed(a.backend)
    try:
        loggers = []
        if ctx.is_main:
            tags = {**job.tags, "launcher": "torchrun", "world_size": str(ctx.world_size)}
            loggers = build_loggers(cfg, job.run_name, tags, group=job.model, state_dir=job.out_dir)
        res = train_job(job, loggers=loggers, resume=not a.no_resume)
        if ctx.is_main:
            print(
                "RESULT " + json.dumps({k: res.metrics[k] for k in ("val_kl", "epochs", "best_epoch")}), flush=True
            )
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
