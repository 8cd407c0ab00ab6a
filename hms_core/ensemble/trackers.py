"""The evaluation report logged to the experiment trackers: one MLflow run and one W&B run (offline by default).

Both use the platform's loggers (:mod:`hms_core.tracking`) with the ``logging`` section of the config: MLflow gets
the figures as metrics and the HTML + PNGs as artifacts under ``report/``; W&B gets the figures in its summary,
each PNG as an image, the HTML as an ``Html`` panel and the files saved with the run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hms_core.tracking import MLflowLogger, WandbLogger

__all__ = ["log_report"]

RUN_NAME = "ensemble-report"


def _figures(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {
        k: float(metrics[k]) for k in ("ensemble_kl", "ensemble_kl_high_votes", "best_member_kl", "gain_vs_best")
    }
    for name, m in metrics["members"].items():
        out[f"member_{name}_kl"] = float(m["kl"])
    out["ece_before"] = float(metrics["calibration"]["ece_before"])
    out["ece_after"] = float(metrics["calibration"]["ece_after"])
    out["entropy_spearman"] = float(metrics["uncertainty"]["entropy_spearman"])
    return out


def log_report(cfg: Any, paths: Mapping[str, str | os.PathLike[str]], metrics: Mapping[str, Any],
               tags: Mapping[str, str] | None = None) -> dict[str, str]:  # fmt: skip
    """Log the report files ``paths`` (name -> file) and figures; returns the run ids / dirs written."""
    tags = {k: str(v) for k, v in (tags or {}).items()}
    figures = _figures(metrics)
    params = {"chosen_combiner": metrics["chosen_combiner"], "kept_members": metrics["kept_members"],
              "dropped_members": metrics["dropped_members"]}  # fmt: skip
    out: dict[str, str] = {}
    files = [Path(p) for p in paths.values() if Path(p).is_file()]
    if cfg.mlflow_uri is not None:
        ml = MLflowLogger(cfg.mlflow_uri, cfg.logging.mlflow_experiment, cfg.root / "mlflow_artifacts", RUN_NAME,
                          tags=tags)  # fmt: skip
        ml.on_start(params)
        for f in files:
            ml.client.log_artifact(ml.run_id, str(f), artifact_path="report")
        ml.on_end(figures)
        out["mlflow_run_id"] = ml.run_id
    if cfg.logging.wandb_mode != "disabled":
        import wandb

        wb = WandbLogger(cfg.logging.wandb_project, RUN_NAME, cfg.root, cfg.logging.wandb_mode, group="ensemble",
                         tags=[f"{k}:{v}" for k, v in tags.items()])  # fmt: skip
        wb.on_start(params)
        media: dict[str, Any] = {}
        for f in files:
            if f.suffix == ".png":
                media[f"report/{f.stem}"] = wandb.Image(str(f))
            elif f.suffix == ".html":
                media["report/html"] = wandb.Html(f.read_text())
            wb.run.save(str(f), base_path=str(f.parent), policy="now")
        wb.run.log(media)
        out["wandb_dir"] = str(wb.run_dir)
        wb.on_end(figures)
    return out
