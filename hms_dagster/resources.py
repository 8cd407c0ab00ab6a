"""Resources shared by every asset: the platform config the definitions were built from, and the trackers.

The config is validated once, when the definitions load (``definitions.py``); the graph, the code versions and
:class:`WorkspaceResource` all come from that one object. A Dagster resource must be serialisable, so the
resource carries the config's JSON dump and rebuilds the object with a pydantic ``model_validate`` of it: the YAML
file is never read again during a run. A long-lived UI picks up edits when the code location is reloaded
("Reload definitions"); a run whose config differs from the one its job was built with stops with a clear error.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import dagster as dg

from hms_core.config import ConfigError, PlatformConfig

#: Run tag: ``PlatformConfig.config_hash`` of the definitions a job (or a sensor request) was built from.
CONFIG_HASH_TAG = "hms/config_hash"


@functools.lru_cache(maxsize=8)
def _config_from_json(config_json: str, source_path: str | None) -> PlatformConfig:
    cfg = PlatformConfig.model_validate(json.loads(config_json))
    cfg.source_path = source_path
    return cfg


class WorkspaceResource(dg.ConfigurableResource):
    """Where the platform reads and writes: the validated config (as its JSON dump) and the paths derived from it."""

    config_json: str
    source_path: str | None = None

    @classmethod
    def from_config(cls, cfg: PlatformConfig) -> WorkspaceResource:
        data = cfg.model_dump(mode="json")
        # the root as resolved now: a run worker started in another directory still writes to the same place
        data["workspace"]["root"] = str(cfg.root)
        return cls(config_json=json.dumps(data, sort_keys=True), source_path=cfg.source_path)

    @property
    def config(self) -> PlatformConfig:
        return _config_from_json(self.config_json, self.source_path)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run = context.run
        launched = run.tags.get(CONFIG_HASH_TAG) if run is not None else None
        if launched is not None and launched != self.config.config_hash:
            raise ConfigError(
                f"The config '{self.source_path}' changed after this run's job was loaded (run tag "
                f"{CONFIG_HASH_TAG}={launched}, config now {self.config.config_hash}). Reload the code location "
                "(Reload definitions in the UI) and launch the run again."
            )


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

        return WandbLogger(
            project=self.project,
            mode=self.mode,
            run_name=run_name,
            tags=[f"{k}:{v}" for k, v in tags.items()],
            group=group,
            dir=self.dir,
        )


def progress_logger(context, label: str, unit: str = "", every_s: float = 5.0):
    """A ``progress(done, total)`` callback for hms_core functions: logs to the run at most every ``every_s``."""
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if total and (done == total or time.perf_counter() - last[0] > every_s):
            last[0] = time.perf_counter()
            context.log.info(f"{label}: {unit}{done}/{total}")

    return progress


def require_input(path: str | Path, asset: str, stage: str) -> Path:
    """``path``, written by ``asset`` of ``stage``; if it is not there, an error that names the asset and the stage
    to run (instead of a bare FileNotFoundError from deep inside a reader)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: it is written by the '{asset}' asset. Run `hms run --stage {stage}` first "
            "(or add --with-upstream); `hms status` shows what is missing."
        )
    return path


def training_loggers(workspace: WorkspaceResource, job: Any, run_tags: dict[str, str]) -> list[Any]:
    """The loggers of a training job (``hms_core.training.FoldJob``): :func:`hms_core.tracking.build_loggers`,
    the same call as the torchrun entry point's, with the job's tags plus ``run_tags`` (the Dagster run id)."""
    from hms_core.tracking import build_loggers

    return build_loggers(workspace.config, job.run_name, {**job.tags, **run_tags}, group=job.model,
                         state_dir=job.out_dir)  # fmt: skip


def build_resources(cfg: PlatformConfig) -> dict[str, Any]:
    return {
        "workspace": WorkspaceResource.from_config(cfg),
        "mlflow": MLflowResource(
            tracking_uri=cfg.mlflow_uri,
            experiment=cfg.logging.mlflow_experiment,
            artifact_root=str(cfg.root / "mlflow_artifacts"),
        ),
        "wandb": WandbResource(project=cfg.logging.wandb_project, mode=cfg.logging.wandb_mode, dir=str(cfg.root)),
    }
