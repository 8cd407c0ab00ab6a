"""Two runs of the same asset partition at once (two ``hms run``, or ``hms run`` beside a UI run): one runs, the
other is refused before it writes anything, with a message naming the holder (pid, host, start time, command);
the output of the one that ran is whole (hms_dagster/locks.py, the runner's ``_execute``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from tests.conftest import copy_workspace
from tests.reliability import faults, tally

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

HOLD = """
import sys, time
from pathlib import Path
from hms_dagster.locks import partition_locks
with partition_locks(Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3] or None, "held by the test"):
    print("held", flush=True)
    time.sleep(float(sys.argv[4]))
"""


def _hold(root: Path, assets: list[str], partition: str | None, seconds: float = 60.0) -> subprocess.Popen:
    """Another process holding the locks (only ``hms_dagster.locks`` imported: it starts in a blink)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root), ",".join(assets), partition or "", str(seconds)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


def _runs_of_this_process(cfg) -> int:
    with dg.DagsterInstance.from_config(str(cfg.dagster_home)) as inst:
        return len(inst.get_run_records(dg.RunsFilter(job_name="data_job", tags={"hms/pid": str(os.getpid())})))


def test_a_held_partition_refuses_a_second_holder_and_names_the_first(tmp_path):
    from hms_dagster.locks import PartitionBusyError, held_by_other, partition_locks

    holder = _hold(tmp_path, ["model_lightgbm"], "fold_1")
    try:
        t = time.perf_counter()
        with pytest.raises(PartitionBusyError) as ei, partition_locks(tmp_path, ["model_lightgbm"], "fold_1"):
            pass
        assert time.perf_counter() - t < 1.0  # refused at once, not after a wait
        msg = str(ei.value)
        assert f"pid {holder.pid}" in msg and "model_lightgbm fold_1" in msg and "held by the test" in msg
        assert re.search(r"started \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", msg) and "hms run --resume" in msg
        assert held_by_other(tmp_path, "model_lightgbm", "fold_1").pid == holder.pid
        with partition_locks(tmp_path, ["model_lightgbm"], "fold_0"):  # another partition is free
            assert held_by_other(tmp_path, "model_lightgbm", "fold_0") is None  # held by this process
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed (-9): the kernel dropped its lock, nothing stale is left
    assert held_by_other(tmp_path, "model_lightgbm", "fold_1") is None
    with partition_locks(tmp_path, ["model_lightgbm"], "fold_1"):
        pass
    tally.add("lock_unit", faults_injected=1, faults_survived=1)


def test_two_runs_of_one_stage_at_once_one_is_refused_and_the_output_is_whole(trained_workspace, tmp_path):
    """A real ``run_pipeline`` (what ``hms run`` runs) in a child, a second one of the same stage in this process
    while the first runs: the second is refused naming the child; the child's output equals the reference (the
    raw data set checksum for checksum, the labels and folds)."""
    from hms_dagster.runner import run_pipeline

    ref = trained_workspace.cfg
    ws = copy_workspace(trained_workspace, tmp_path)
    cfg = ws.cfg
    shutil.rmtree(cfg.raw_dir)  # generated again: the first run lasts seconds, the second meets it running
    proc = faults.start_stage(ws.config_path, "data")
    started = faults.run_started(cfg.dagster_home, "data_job", proc.pid)
    deadline = time.monotonic() + 120
    while not started() and proc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.is_alive(), "the first run ended before the second could start"
    tally.add("two_runs", faults_injected=1)
    before = _runs_of_this_process(cfg)  # the shared workspace may have been built by this process
    second = run_pipeline(cfg, "data")
    still_running = proc.is_alive()
    proc.join(300)
    assert proc.exitcode == 0, "the first run failed"
    assert still_running, "the first run ended before the second was refused: the race was not tested"
    assert second.failed is not None and not second.done
    _, run_id, error = second.failed
    assert run_id == "-" and f"pid {proc.pid}" in error and "is being materialized by another run" in error, error
    assert "folds is being" in error and "(data: data_job)" in error and "Nothing was run or written" in error
    assert _runs_of_this_process(cfg) == before, "the refused run started a Dagster run"
    # the fold arrays are not the data stage's; the manifest records timings; config.resolved.yaml records every
    # config key of the code that ran (a reused HMS_TEST_WORKSPACE may predate an edit of a profile)
    volatile = ("synthetic_manifest.json", "config.resolved.yaml")
    skip = lambda p: p.parts[0] == "windows" or p.name in volatile
    want = {
        **faults.tree_hashes(ref.processed_dir, skip, ref.root.parent),
        **faults.tree_hashes(ref.raw_dir, skip),
    }
    got = {**faults.tree_hashes(cfg.processed_dir, skip, cfg.root.parent), **faults.tree_hashes(cfg.raw_dir, skip)}
    bad = faults.compare_hashes(want, got)
    tally.add("two_runs", artifacts_compared=len(want), artifacts_mismatched=len(bad))
    assert not bad, bad
    tally.add("two_runs", faults_survived=1)


def test_cli_beside_a_ui_run_either_way(trained_workspace, tmp_path):
    """A run launched outside ``hms run`` (the UI, a sensor: no ``hms/pid`` tag) while ``hms run`` holds the
    partition stops at its first step naming the holder; ``hms run`` while such a run is in progress is refused
    naming that run."""
    from hms_dagster.definitions import build_definitions
    from hms_dagster.runner import _ui_run_in_progress, run_pipeline

    ws = copy_workspace(trained_workspace, tmp_path)
    cfg = ws.cfg
    defs = build_definitions(cfg)
    job = defs.resolve_job_def("data_job")
    # 1. the CLI holds the data stage's partitions; a "UI" run of the same job fails before writing
    before = faults.tree_hashes(cfg.processed_dir, lambda p: p.parts[0] == "windows")
    holder = _hold(cfg.root, ["raw_dataset", "labels", "folds"], None)
    try:
        with dg.instance_for_test() as inst:
            res = job.execute_in_process(instance=inst, raise_on_error=False)
        assert not res.success
        errors = [e.event_specific_data.error for e in res.all_events
                  if getattr(e.event_specific_data, "error", None) is not None]  # fmt: skip
        text = " ".join(err.message + (err.cause.message if err.cause else "") for err in errors)
        assert f"pid {holder.pid}" in text and "is being materialized by another run" in text, text
    finally:
        holder.kill()
        holder.wait()
    assert faults.tree_hashes(cfg.processed_dir, lambda p: p.parts[0] == "windows") == before  # nothing written
    # 2. a "UI" run of the data job in progress on the workspace's instance; `hms run` refuses
    with dg.DagsterInstance.from_config(str(cfg.dagster_home)) as inst:
        ui_run = inst.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED, tags={"hms/job": "data_job"})
        report = run_pipeline(cfg, "data")
        assert report.failed is not None and not report.done
        error = report.failed[2]
        assert f"run {ui_run.run_id} of data_job" in error and "not by `hms run`" in error, error
        inst.report_run_failed(ui_run)
        # that run over, nothing stands in the way any more (what the refusal above asked first)
        assert _ui_run_in_progress(inst, report.failed[0]) is None
    tally.add("cli_and_ui", faults_injected=2, faults_survived=2)
