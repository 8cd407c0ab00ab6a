"""Resources shared by every asset: the resolved platform config and the experiment trackers."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import dagster as dg

from hms_core.config import PlatformConfig, load_config


@functools.lru_cache(maxsize=8)
def _load_cached(config_path: str, mtime_ns: int) -> PlatformConfig:
    return load_config(config_path)


def _load(config_path: str) -> PlatformConfig:
    """The validated config, re-read when the file changes (a long-lived UI process sees edits)."""
    return _load_cached(config_path, Path(config_path).stat().st_mtime_ns)


class WorkspaceResource(dg.ConfigurableResource):
    """Where the platform reads and writes: the validated YAML config and the paths derived from it."""

    config_path: str

    @property
    def config(self) -> PlatformConfig:
        return _load(self.config_path)


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking on a local sqlite file by default (``tracking_uri: null`` disables it).

    One MLflow run per (model, fold) training, tagged with the Dagster run id. (dagster-mlflow's resource opens one
    MLflow run per Dagster run, but one models run trains every enabled model of a fold, so the platform opens its
    own runs through ``hms_core.tracking.MLflowLogger``.)
    """

    tracking_uri: str | None = None
    experiment: str = "hms-eeg"
    artifact_root: str = "mlflow_artifacts"

    def logger(self, run_name: str, tags: dict[str, str], state_dir: str | None = None) -> Any | None:
        if not self.tracking_uri:
            return None
        from hms_core.tracking import MLflowLogger

        return MLflowLogger(
            tracking_uri=self.tracking_uri,
            experiment=self.experiment,
            artifact_location=self.artifact_root,
            run_name=run_name,
            tags=tags,
            state_file=Path(state_dir) / "mlflow_run.json" if state_dir else None,
        )


class WandbResource(dg.ConfigurableResource):
    """Weights & Biases, offline by default (runs land in ``<root>/wandb``; ``wandb sync`` uploads them later)."""

    project: str = "hms-eeg"
    mode: str = "offline"
    dir: str = "."

    def logger(self, run_name: str, tags: dict[str, str], group: str | None = None) -> Any | None:
        if self.mode == "disabled":
            return None
        from hms_core.tracking import WandbLogger

        return WandbLogger(project=self.project, mode=self.mode, run_name=run_name,
                           tags=[f"{k}:{v}" for k, v in tags.items()], group=group, dir=self.dir)


def progress_logger(context, label: str, unit: str = "", every_s: float = 5.0):
    """A ``progress(done, total)`` callback for hms_core functions: logs to the run at most every ``every_s``."""
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if total and (done == total or time.perf_counter() - last[0] > every_s):
            last[0] = time.perf_counter()
            context.log.info(f"{label}: {unit}{done}/{total}")

    return progress


def training_loggers(
    workspace: WorkspaceResource, mlflow: MLflowResource, wandb: WandbResource, run_name: str,
    tags: dict[str, str], group: str | None = None, state_dir: str | None = None,
) -> list[Any]:
    """JSON lines under ``logs/metrics`` always, plus MLflow and W&B when enabled."""
    from hms_core.tracking import JSONLinesLogger

    loggers = [JSONLinesLogger(workspace.config.logs_dir / "metrics" / f"{run_name}.jsonl"),
               mlflow.logger(run_name, tags, state_dir), wandb.logger(run_name, tags, group)]
    return [lg for lg in loggers if lg is not None]


def build_resources(cfg: PlatformConfig) -> dict[str, Any]:
    assert cfg.source_path is not None
    return {
        "workspace": WorkspaceResource(config_path=cfg.source_path),
        "mlflow": MLflowResource(
            tracking_uri=cfg.mlflow_uri,
            experiment=cfg.logging.mlflow_experiment,
            artifact_root=str(cfg.root / "mlflow_artifacts"),
        ),
        "wandb": WandbResource(project=cfg.logging.wandb_project, mode=cfg.logging.wandb_mode, dir=str(cfg.root)),
    }
