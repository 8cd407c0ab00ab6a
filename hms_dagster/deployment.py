"""From one machine to a cluster: instance storage, the Kubernetes step executor, GPU steps and torchrun.

- :func:`storage_yaml`: the ``storage:`` block of a new instance's ``dagster.yaml`` (``operations.instance_storage``;
  PostgreSQL through dagster-postgres, its URL read from an environment variable when Dagster starts).
- :func:`executor_config`: the ``k8s_job_executor`` settings when ``operations.executor: k8s``: one pod per step,
  and on every step of the ``gpu`` pool (the torch trainings, pretraining included) the GPU requests and limits of
  :func:`gpu_step_config`.
- :func:`torchrun_command`: the data-parallel launch of one (model, fold) inside its training step when a step has
  more than one GPU (``operations.training_gpus``).
``deploy/`` holds the Dockerfile, the cluster's ``dagster.yaml`` and the Helm values that use these.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hms_core.config import PlatformConfig

GPU_RESOURCE = "nvidia.com/gpu"


def storage_yaml(cfg: PlatformConfig) -> str:
    """The storage section of a new ``dagster.yaml`` ('' for SQLite, Dagster's default in DAGSTER_HOME)."""
    ops = cfg.operations
    if ops.instance_storage != "postgres":
        return ""
    return (
        "storage:                    # operations.instance_storage: postgres (dagster-postgres)\n"
        "  postgres:\n"
        "    postgres_url:\n"
        f"      env: {ops.postgres_url_env}   # postgresql+psycopg2://user:password@host:port/db, read at start-up\n"
    )


def gpu_step_config(cfg: PlatformConfig) -> dict[str, Any]:
    """The dagster-k8s config (``container_config`` / ``pod_spec_config``) of one torch training step."""
    n = cfg.operations.training_gpus
    gpus = {GPU_RESOURCE: n} if n else {}
    return {
        "container_config": {"resources": {"requests": {"cpu": "4", "memory": "24Gi", **gpus},
                                           "limits": {"memory": "48Gi", **gpus}}},
        "pod_spec_config": {"tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]},
    }  # fmt: skip


def executor_config(cfg: PlatformConfig, gpu_steps: Iterable[str]) -> dict[str, Any]:
    """``k8s_job_executor`` config: GPU requests on ``gpu_steps`` (step keys: the training assets' op names); the
    image, namespace and service account come from the run launcher's config."""
    return {
        "max_concurrent": 0,  # no cap inside a run; the gpu pool and the cluster's quotas limit the GPU steps
        "per_step_k8s_config": {step: gpu_step_config(cfg) for step in sorted(gpu_steps)},
    }


def torchrun_command(cfg: PlatformConfig, model: str, fold: str) -> list[str]:
    """``torchrun --nproc_per_node N -m hms_core.training.ddp --config CFG --model M --fold F``: the entry point
    builds the same job and loggers as the model asset (``hms_core.training.job.fold_job``)."""
    beside = Path(sys.executable).with_name("torchrun")  # the virtualenv's, also when it is not on PATH
    torchrun = [str(beside)] if beside.exists() else [shutil.which("torchrun") or "torchrun"]
    cfg_arg = cfg.source_path or cfg.profile
    return [*torchrun, "--standalone", "--nproc_per_node", str(cfg.operations.training_gpus),
            "-m", "hms_core.training.ddp", "--config", cfg_arg, "--model", model, "--fold", fold]  # fmt: skip


def run_torchrun(context: Any, cfg: PlatformConfig, model: str, fold: str) -> None:
    """Train ``model`` on ``fold`` data-parallel with :func:`torchrun_command` inside the current step, its output
    in the step's log; a failure raises ``dagster.Failure`` with the end of the output."""
    import dagster as dg

    from hms_core.config import CONFIG_ENV_VAR

    cmd = torchrun_command(cfg, model, fold)
    context.log.info("data-parallel training: " + " ".join(cmd))
    env = {**os.environ, **({CONFIG_ENV_VAR: cfg.source_path} if cfg.source_path else {})}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    tail = (proc.stdout + proc.stderr)[-4000:]
    context.log.info(tail)
    if proc.returncode:
        raise dg.Failure(description=f"torchrun exited with {proc.returncode} for {model} {fold}:\n{tail}")
