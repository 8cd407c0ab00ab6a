"""`hms run` killed with SIGKILL mid-stage, then `hms run --resume`: completed partitions are not redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
from typer.testing import CliRunner

from hms_core.config import load_config
from hms_dagster.cli import app
from hms_dagster.runner import run_pipeline
from tests.hms_dagster.conftest import write_config
from tests.reliability import tally


def _hms(*args: str, cfg: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hms_dagster.cli", *args, "--config", str(cfg)],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


def _status(cfg: Path) -> dict:
    """`hms status --json` in this process (the CLI code; no interpreter start-up)."""
    out = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["status", "--json", "--config", str(cfg)])
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


def _materialized(home: Path, key: str) -> set[str]:
    with dg.DagsterInstance.from_config(str(home)) as inst:
        return set(inst.get_materialized_partitions(dg.AssetKey(key)))


def _partitions_with_status(home: Path, job: str, status=dg.DagsterRunStatus.SUCCESS) -> set[str]:
    with dg.DagsterInstance.from_config(str(home)) as inst:
        runs = inst.get_runs(dg.RunsFilter(job_name=job, statuses=[status]))
        return {r.tags["dagster/partition"] for r in runs}


def test_kill_dash_nine_then_resume(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    cfg = write_config(tmp_path)
    home = tmp_path / "ws" / "dagster_home"
    report = run_pipeline(load_config(cfg), "data")  # in this process: the interrupted `hms run` is the next one
    assert report.ok, report.failed

    proc = subprocess.Popen(
        [sys.executable, "-m", "hms_dagster.cli", "run", "--stage", "preprocessing", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    done: set[str] = set()
    running: set[str] = set()
    # kill inside the next fold's run, not between two runs (a tiny fold takes about a second)
    while time.time() < deadline and not (done and running - done):
        time.sleep(0.2)
        done = _partitions_with_status(home, "preprocessing_job")
        running = _partitions_with_status(home, "preprocessing_job", dg.DagsterRunStatus.STARTED)
        assert proc.poll() is None, "the run finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done and len(done) < 3, done
    tally.add("preprocessing_cli", faults_injected=1)

    status = _status(cfg)
    states = {(a["asset"], a["partition"]): a["state"] for a in status["assets"]}
    for fold in done:
        assert states[("eeg_windows", fold)] == "fresh"
    interrupted = [a for a in status["assets"] if a["asset"] == "eeg_windows" and a["partition"] not in done]
    assert all(a["state"] in ("failed", "missing") for a in interrupted)
    assert any(a["state"] == "failed" for a in interrupted), "the killed run should be reported as failed"

    out = _hms("run", "--stage", "preprocessing", "--resume", cfg=cfg)
    assert out.returncode == 0, out.stdout + out.stderr
    for fold in done:
        assert f"skip preprocessing: preprocessing_job {fold} (fresh)" in out.stdout
    assert _materialized(home, "eeg_windows") == {"fold_0", "fold_1", "fold_2"}
    status = _status(cfg)
    assert status["stages"]["data"] == "complete" and status["stages"]["preprocessing"] == "complete"
    tally.add("preprocessing_cli", faults_survived=1)
