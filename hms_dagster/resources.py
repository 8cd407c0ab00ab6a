"""Resources shared by every asset: the resolved platform config and the experiment trackers."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import dagster as dg

from hms_core.config import PlatformConfig, load_config


@functools.lru_cache(maxsize=8)
def _load(config_path: str) -> PlatformConfig:
    return load_config(config_path)


class WorkspaceResource(dg.ConfigurableResource):
    """Where the platform reads and writes: the validated YAML config and the paths derived from it."""

    config_path: str

    @property
    def config(self) -> PlatformConfig:
        return _load(self.config_path)

    def stage_dir(self, *parts: str) -> Path:
        p = self.config.processed_dir.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p


class TrackingResource(dg.ConfigurableResource):
    """MLflow (local sqlite by default; ``None`` disables it) and Weights & Biases (offline by default).

    One tracking run per (model, fold) materialization; the Dagster run id is recorded as a tag so the UI's run and
    the MLflow/W&B runs can be found from each other.
    """

    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = "hms-eeg"
    wandb_project: str = "hms-eeg"
    wandb_mode: str = "offline"
    root: str = "."

    def loggers(self, run_name: str, tags: dict[str, str], group: str | None = None,
                state_dir: str | None = None) -> list[Any]:
        """Loggers for one training: JSON lines under logs/metrics always, MLflow and W&B when enabled.

        ``state_dir`` keeps the MLflow run id, so a resumed training continues the same MLflow run.
        """
        from hms_core import tracking

        root = Path(self.root)
        out: list[Any] = [tracking.JSONLinesLogger(root / "logs" / "metrics" / f"{run_name}.jsonl")]
        if self.mlflow_tracking_uri:
            out.append(
                tracking.MLflowLogger(
                    tracking_uri=self.mlflow_tracking_uri,
                    experiment=self.mlflow_experiment,
                    artifact_location=root / "mlflow_artifacts",
                    run_name=run_name,
                    tags=tags,
                    state_file=Path(state_dir) / "mlflow_run.json" if state_dir else None,
                )
            )
        if self.wandb_mode != "disabled":
            out.append(
                tracking.WandbLogger(
                    project=self.wandb_project,
                    mode=self.wandb_mode,
                    run_name=run_name,
                    tags=[f"{k}:{v}" for k, v in tags.items()],
                    group=group,
                    dir=root,
                )
            )
        return out


def build_resources(cfg: PlatformConfig) -> dict[str, Any]:
    assert cfg.source_path is not None
    return {
        "workspace": WorkspaceResource(config_path=cfg.source_path),
        "tracking": TrackingResource(
            mlflow_tracking_uri=cfg.mlflow_uri,
            mlflow_experiment=cfg.logging.mlflow_experiment,
            wandb_project=cfg.logging.wandb_project,
            wandb_mode=cfg.logging.wandb_mode,
            root=str(cfg.root),
        ),
    }
