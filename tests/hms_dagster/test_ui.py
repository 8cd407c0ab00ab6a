"""`hms ui` serves the code location: assets with lineage, fold partitions and the CLI's materializations."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import dagster as dg
import httpx

from hms_dagster.instance import prepare_instance
from hms_dagster.stages import DATA_JOB, EEG_WINDOWS, FOLDS, LABELS, RAW_DATASET, model_asset_key
from tests.hms_dagster.uiutil import alive, default_sigint, descendants, stop_with_sigterm

#: How long the whole `hms ui` process tree may take to exit after SIGTERM.
STOP_WITHIN_S = 30

QUERY = """{ assetNodes { assetKey { path } dependencyKeys { path } isPartitioned partitionKeys
  assetMaterializations(limit: 1) { runId } } }"""


LAUNCH = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
RUN = '{ runOrError(runId: "%s") { ... on Run { status } } }'


def test_ui_shows_assets_lineage_partitions_and_runs_and_stops_on_sigterm(ui_server):
    """`hms ui` serves the CLI's instance, launches a job like the Materialize button, and SIGTERM to `hms ui`
    (a service manager's stop) ends it and every process it started (webserver, daemon, code server). The server
    is the session's shared one (a copy of the trained workspace; test_browser uses it too): this test stops it."""
    cfg, proc, log, base = ui_server.ws.cfg, ui_server.proc, ui_server.log, ui_server.base
    stopped = False
    try:
        r = httpx.post(f"{base}/graphql", json={"query": QUERY}, timeout=30)
        nodes = r.json()["data"]["assetNodes"]
        by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
        assert {RAW_DATASET, LABELS, FOLDS, EEG_WINDOWS, model_asset_key("lightgbm")} <= set(by_key)
        assert {"path": [FOLDS]} in by_key[EEG_WINDOWS]["dependencyKeys"]
        assert by_key[EEG_WINDOWS]["partitionKeys"] == cfg.fold_names
        instance = prepare_instance(cfg)
        latest = instance.get_latest_materialization_event(dg.AssetKey(FOLDS))
        assert by_key[FOLDS]["assetMaterializations"][0]["runId"] == latest.run_id  # the CLI's run

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
                            "jobName": DATA_JOB,
                        },
                        "runConfigData": {},
                    }
                },
            },
            timeout=60,
        ).json()
        run_id = launched["data"]["launchRun"]["run"]["runId"]
        status, deadline = None, time.time() + 300
        while time.time() < deadline and status not in ("SUCCESS", "FAILURE", "CANCELED"):
            time.sleep(2)
            res = httpx.post(f"{base}/graphql", json={"query": RUN % run_id}, timeout=30).json()
            status = res["data"]["runOrError"]["status"]
        assert status == "SUCCESS", status

        seconds, left = stop_with_sigterm(proc, within_s=STOP_WITHIN_S)
        stopped = True
        assert not left, (
            f"still running {STOP_WITHIN_S} s after SIGTERM: {sorted(left)}\n{log.read_text()[-2000:]}"
        )
        assert proc.returncode == 0, log.read_text()[-2000:]
        print(f"RESULT hms_ui_sigterm_to_tree_exit_s={seconds:.1f}")
    finally:
        if not stopped:
            stop_with_sigterm(proc, within_s=STOP_WITHIN_S)


FAKE_DEV = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # a code server that lingers
print("fake dagster dev up", child.pid, flush=True)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))  # dagster dev exits on SIGTERM; its child does not follow
time.sleep(600)
"""


def test_ctrl_c_stops_the_whole_tree(tiny_config, tmp_path):
    """hms_dagster.ui.serve with a stand-in for `dagster dev` whose child outlives it: Ctrl-C (SIGINT; SIGTERM is
    tested on the real UI above) ends serve with exit code 0 and leaves no process behind."""
    script = tmp_path / "fake_dev.py"
    script.write_text(FAKE_DEV)
    code = (
        "import sys; from hms_core.config import load_config; from hms_dagster import ui; "
        f"ui.dagster_dev_command = lambda host, port: [sys.executable, {str(script)!r}]; "
        f"sys.exit(ui.serve(load_config({str(tiny_config)!r}), grace_s=5))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"},
        preexec_fn=default_sigint,  # noqa: PLW1509 (no threads here)
    )
    deadline = time.time() + 60
    while time.time() < deadline and len(descendants(proc.pid)) < 2:  # the stand-in and its child
        time.sleep(0.2)
    tree = descendants(proc.pid)
    assert len(tree) >= 2, proc.stdout.read1().decode() if proc.poll() is not None else tree
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    t0 = time.monotonic()
    while alive(tree) and time.monotonic() - t0 < 10:
        time.sleep(0.2)
    assert not alive(tree), sorted(alive(tree))
