"""Resources shared by every asset: the platform config the definitions were built from, and the trackers.

The config is validated once, when the definitions load (``definitions.py``); the graph, the code versions and
:class:`WorkspaceResource` all come from that one object. A Dagster resource must be serialisable, so the
resource carries the config's JSON dump and rebuilds the object with a pydantic ``model_validate`` of it: the YAML
file is never read again during a run. A long-lived UI picks up edits when the code location is reloaded
("Reload definitions"); a run whose config differs from the one its job was built with stops with a clear error.
"""

from __future__ import annotations

import contextlib
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
        if run is not None and "hms/pid" not in run.tags:  # not started by `hms run`, which holds the locks itself
            from hms_dagster.locks import check_not_held

            check_not_held(self.config, run)


@contextlib.contextmanager
def no_retry_on(*errors: type[BaseException]):
    """Inside a step with a retry policy: ``errors`` (bad data, no credentials) fail the step at once, as a
    ``dagster.Failure`` that is not retried, with the original message and the original error as its cause."""
    try:
        yield
    except errors as e:
        raise dg.Failure(description=f"{type(e).__name__}: {e}", allow_retries=False) from e


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


def gpu_steps(assets: list) -> list[str]:
    """The step keys (op names) of the assets in the ``gpu`` pool: every torch training, pretraining included."""
    from hms_dagster.instance import TRAINING_POOL

    return sorted(a.op.name for a in assets if isinstance(a, dg.AssetsDefinition) and a.op.pool == TRAINING_POOL)


def build_executor(cfg: PlatformConfig, assets: list) -> dg.ExecutorDefinition | None:
    """``operations.executor``: None (Dagster's multiprocess default) or ``k8s_job_executor``, one pod per step,
    with the GPU requests of :func:`hms_dagster.deployment.gpu_step_config` on the :func:`gpu_steps` of ``assets``
    (its other settings come from the run launcher of ``deploy/dagster.yaml``)."""
    if cfg.operations.executor != "k8s":
        return None
    from dagster_k8s import k8s_job_executor

    from hms_dagster.deployment import executor_config

    return k8s_job_executor.configured(executor_config(cfg, gpu_steps(assets)), name="k8s_job_executor")


def build_resources(cfg: PlatformConfig) -> dict[str, Any]:
    return {
        # MLflow and W&B are opened per training run by hms_core.tracking.build_loggers from cfg.logging (the same
        # call as the torchrun entry point's), so they need no Dagster resource of their own
        "workspace": WorkspaceResource.from_config(cfg),
    }
