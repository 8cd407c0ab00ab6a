"""A snapshot of the demo profile's asset graph: keys, groups, kinds, dependencies (with their partition mapping),
partitions, code versions, checks, automation conditions, pools, retries, jobs and sensors.

An accidental change of the graph (a renamed key, a lost dependency, a code version that moved because a config
key became a result key) fails this test with a readable diff. After an intended change, regenerate the file and
commit it with the change:

    HMS_UPDATE_SNAPSHOT=1 .venv/bin/python -m pytest -q tests/hms_dagster/test_graph_snapshot.py
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import dagster as dg

from hms_core.config import load_config
from hms_dagster.definitions import build_definitions

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph_demo.json"
UPDATE_ENV = "HMS_UPDATE_SNAPSHOT"
PROFILE = "demo"


def _partitions(pd: dg.PartitionsDefinition | None):
    if pd is None:
        return None
    if isinstance(pd, dg.StaticPartitionsDefinition):
        return {"static": pd.get_partition_keys()}
    if isinstance(pd, dg.DynamicPartitionsDefinition):
        return {"dynamic": pd.name}
    if isinstance(pd, dg.TimeWindowPartitionsDefinition):
        return {"time": {"cron": pd.cron_schedule, "start": pd.start.isoformat(), "fmt": pd.fmt}}
    if isinstance(pd, dg.MultiPartitionsDefinition):
        return {"multi": {d.name: _partitions(d.partitions_def) for d in pd.partitions_defs}}
    return {type(pd).__name__: None}


def graph_snapshot(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        if not node.is_materializable:
            continue
        deps = {}
        for parent in sorted(node.parent_keys, key=lambda k: k.to_user_string()):
            mapping = graph.get_partition_mapping(key, parent)
            deps[parent.to_user_string()] = type(mapping).__name__ if node.partitions_def else None
        checks = {c.name: graph.get_check_spec(c).blocking for c in graph.get_check_keys_for_assets({key})}
        retry = defs.resolve_assets_def(key).op.retry_policy
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "code_version": node.code_version,
            "partitions": _partitions(node.partitions_def),
            "deps": deps,
            "checks": dict(sorted(checks.items())),
            "automation": node.automation_condition.get_label() if node.automation_condition else None,
            "pools": sorted(node.pools or ()),
            "retries": retry.max_retries if retry else None,
        }
    jobs = {}
    for job in sorted(defs.resolve_all_job_defs(), key=lambda j: j.name):
        if job.name.startswith("__"):
            continue
        jobs[job.name] = sorted(k.to_user_string() for k in job.asset_layer.executable_asset_keys)
    sensors = {s.name: s.default_status.value for s in sorted(defs.sensors or [], key=lambda s: s.name)}
    schedules = sorted(s.name for s in defs.schedules or [])
    return {"profile": PROFILE, "assets": assets, "jobs": jobs, "sensors": sensors, "schedules": schedules}


def test_asset_graph_matches_the_snapshot():
    current = json.dumps(graph_snapshot(build_definitions(load_config(PROFILE))), indent=2, sort_keys=True) + "\n"
    if os.environ.get(UPDATE_ENV):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(current)
    assert SNAPSHOT.exists(), f"no snapshot yet: run `{UPDATE_ENV}=1 pytest {__file__}`"
    stored = SNAPSHOT.read_text()
    if stored != current:
        diff = "".join(difflib.unified_diff(stored.splitlines(True), current.splitlines(True),
                                            str(SNAPSHOT), "current graph", n=2))  # fmt: skip
        raise AssertionError(
            f"The asset graph changed. If that was intended, regenerate the snapshot with\n"
            f"  {UPDATE_ENV}=1 .venv/bin/python -m pytest -q tests/hms_dagster/test_graph_snapshot.py\n"
            f"and commit it with the change.\n{diff}"
        )
