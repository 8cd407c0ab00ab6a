"""The Dagster instance behind the CLI and the UI.

``$DAGSTER_HOME`` wins when it is set (as every Dagster tool honours it); otherwise ``workspace.dagster_home`` of
the config, else ``<workspace.root>/dagster_home``. ``hms status`` says which one is used and why.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from hms_core.config import CONFIG_ENV_VAR, PlatformConfig
from hms_dagster.deployment import storage_yaml

DAGSTER_YAML = """\
# Written by hms on first use; edit freely (docs.dagster.io, "dagster.yaml reference").
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: {pool_limit}          # the "gpu" pool: {pool_reason}
run_monitoring:
  enabled: true               # runs whose process died are marked failed
  poll_interval_seconds: 30
"""

#: The pool the torch trainings (and pretraining) claim a slot of.
TRAINING_POOL = "gpu"

PID_TAG = "hms/pid"
HOST_TAG = "hms/host"


DAGSTER_HOME_ENV_VAR = "DAGSTER_HOME"


@dataclass(frozen=True)
class DagsterHome:
    path: Path
    source: str  # "environment" | "config" | "default"
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"dagster_home": str(self.path), "dagster_home_source": self.source,
                "dagster_home_reason": self.reason}  # fmt: skip


def resolve_dagster_home(cfg: PlatformConfig) -> DagsterHome:
    """Which Dagster instance folder this config uses, and why."""
    env = os.environ.get(DAGSTER_HOME_ENV_VAR)
    if env:
        return DagsterHome(
            Path(env).expanduser().resolve(),
            "environment",
            f"${DAGSTER_HOME_ENV_VAR} is set (it overrides workspace.dagster_home)",
        )
    if cfg.workspace.dagster_home:
        where = f" in {cfg.source_path}" if cfg.source_path else ""
        return DagsterHome(
            cfg.dagster_home, "config", f"workspace.dagster_home{where} (${DAGSTER_HOME_ENV_VAR} is not set)"
        )
    return DagsterHome(
        cfg.dagster_home,
        "default",
        f"the workspace default <root>/dagster_home (${DAGSTER_HOME_ENV_VAR} and workspace.dagster_home unset)",
    )


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cuda_available() -> bool:
    """Whether torch sees a CUDA device. Without an NVIDIA driver (no ``/proc/driver/nvidia``) or with
    ``CUDA_VISIBLE_DEVICES`` empty or -1 the answer is no, without importing torch (seconds on a busy machine)."""
    import sys

    if "torch" not in sys.modules:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if not Path("/proc/driver/nvidia").exists() or (visible is not None and visible.strip() in ("", "-1")):
            return False
    import torch

    return torch.cuda.is_available()


def default_pool_limit() -> tuple[int, str]:
    """The ``gpu`` pool's default limit for a new instance, and why: one training at a time on a CUDA machine
    (one accelerator), one per usable core on a CPU-only machine (each training runs one torch thread)."""
    if cuda_available():
        return 1, "one training at a time on the CUDA device"
    n = usable_cores()
    return n, f"no CUDA device: one single-threaded training per usable CPU core ({n})"


def prepare_instance(cfg: PlatformConfig) -> dg.DagsterInstance:
    """The persistent instance in :func:`resolve_dagster_home`'s folder (a default ``dagster.yaml`` is written
    when the folder has none, its ``gpu`` pool limit from :func:`default_pool_limit`). The process environment is
    left as it is: :func:`child_env` gives ``hms ui`` its."""
    home = resolve_dagster_home(cfg).path
    home.mkdir(parents=True, exist_ok=True)
    yaml_path = home / "dagster.yaml"
    if not yaml_path.exists():
        limit, reason = default_pool_limit()
        yaml_path.write_text(DAGSTER_YAML.format(pool_limit=limit, pool_reason=reason) + storage_yaml(cfg))
    return dg.DagsterInstance.from_config(str(home))


def pool_limit(instance: dg.DagsterInstance, pool: str = TRAINING_POOL) -> int | None:
    """How many steps of ``pool`` may run at once on ``instance``: the limit set on the instance
    (``dagster instance concurrency set``), else the ``dagster.yaml`` default (a limit Dagster copied from the
    default follows it when the default changes); None when unlimited."""
    default = instance.get_concurrency_config().pool_config.default_pool_limit
    for info in instance.event_log_storage.get_pool_limits():
        if info.name == pool and not (info.from_default and default is not None):
            return int(info.limit)
    return default


def child_env(cfg: PlatformConfig) -> dict[str, str]:
    """The environment of a ``dagster dev`` child: the same instance folder and the same config file as this CLI."""
    prepare_instance(cfg)  # the folder and its dagster.yaml exist before the child starts
    env = {**os.environ, DAGSTER_HOME_ENV_VAR: str(resolve_dagster_home(cfg).path)}
    if cfg.source_path:
        env[CONFIG_ENV_VAR] = cfg.source_path
    return env


def run_tags(stage: str) -> dict[str, str]:
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(), "hms/stage": stage}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_interrupted_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark runs started by a CLI process that no longer exists (kill -9, power loss) as failed.

    Returns the ids of the runs it marked. Runs launched from the UI are left to Dagster's run monitoring.
    """
    host = socket.gethostname()
    active = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED]
    reaped = []
    for rec in instance.get_run_records(dg.RunsFilter(statuses=active)):
        run = rec.dagster_run
        pid, run_host = run.tags.get(PID_TAG), run.tags.get(HOST_TAG)
        if pid is None or run_host != host or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        instance.report_run_failed(run, message=f"Interrupted: the process {pid} that ran it no longer exists.")
        # A killed process never releases its pool slots (e.g. "gpu"); without this the next run waits forever.
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        reaped.append(run.run_id)
    return reaped
