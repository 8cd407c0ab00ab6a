"""`hms ui` serves the code location: assets with lineage, fold partitions and the CLI's materializations."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from hms_core.config import load_config
from hms_dagster.runner import run_pipeline
from tests.hms_dagster.conftest import write_config

QUERY = """{ assetNodes { assetKey { path } dependencyKeys { path } isPartitioned partitionKeys
  assetMaterializations(limit: 1) { runId } } }"""


LAUNCH = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
RUN = '{ runOrError(runId: "%s") { ... on Run { status } } }'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_shows_assets_lineage_partitions_and_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    path = write_config(tmp_path)
    cfg = load_config(path)
    report = run_pipeline(cfg, "data")
    assert report.ok
    port = _free_port()
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("DAGSTER_HOME", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hms_dagster.cli", "ui", "--config", str(path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509 (no threads here)
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(1)
        nodes = None
        while time.time() < deadline:  # the code location loads after the server answers
            r = httpx.post(f"{base}/graphql", json={"query": QUERY}, timeout=30)
            nodes = r.json().get("data", {}).get("assetNodes")
            if nodes:
                break
            time.sleep(1)
        assert nodes, r.text
        by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
        assert {"raw_dataset", "labels", "folds", "eeg_windows", "model_lightgbm"} <= set(by_key)
        assert {"path": ["folds"]} in by_key["eeg_windows"]["dependencyKeys"]
        assert by_key["eeg_windows"]["partitionKeys"] == cfg.fold_names
        run_ids = {rid for _, rid, _ in report.done}
        assert by_key["folds"]["assetMaterializations"][0]["runId"] in run_ids

        # materialize from the UI: launch the data job as the "Materialize" button does (queued run, daemon,
        # multiprocess executor) and wait for it
        launched = httpx.post(
            f"{base}/graphql",
            json={
                "query": LAUNCH,
                "variables": {
                    "p": {
                        "selector": {
                            "repositoryLocationName": "hms_dagster.definitions",
                            "repositoryName": "__repository__",
                            "jobName": "data_job",
                        },
                        "runConfigData": {},
                    }
                },
            },
            timeout=60,
        ).json()
        run_id = launched["data"]["launchRun"]["run"]["runId"]
        status = None
        while time.time() < deadline + 120 and status not in ("SUCCESS", "FAILURE", "CANCELED"):
            time.sleep(2)
            res = httpx.post(f"{base}/graphql", json={"query": RUN % run_id}, timeout=30).json()
            status = res["data"]["runOrError"]["status"]
        assert status == "SUCCESS", status
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
