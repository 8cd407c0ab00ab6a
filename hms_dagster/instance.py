"""The Dagster instance behind the CLI and the UI: ``DAGSTER_HOME`` inside the workspace root by default."""

from __future__ import annotations

import os
import socket

import dagster as dg

from hms_core.config import CONFIG_ENV_VAR, PlatformConfig

DAGSTER_YAML = """\
# Written by hms on first use; edit freely (docs.dagster.io, "dagster.yaml reference").
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1          # the "gpu" pool: one training step at a time on one machine
run_monitoring:
  enabled: true               # runs whose process died are marked failed
  poll_interval_seconds: 30
"""

PID_TAG = "hms/pid"
HOST_TAG = "hms/host"


def prepare_instance(cfg: PlatformConfig) -> dg.DagsterInstance:
    """Point ``DAGSTER_HOME`` (and ``HMS_CONFIG``) at this workspace and return the persistent instance."""
    home = cfg.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    yaml_path = home / "dagster.yaml"
    if not yaml_path.exists():
        yaml_path.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    if cfg.source_path:
        os.environ[CONFIG_ENV_VAR] = cfg.source_path
    return dg.DagsterInstance.get()


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
