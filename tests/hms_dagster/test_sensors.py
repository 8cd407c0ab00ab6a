"""Sensors and the schedule that retrain when the data changes."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from hms_core.config import load_config
from hms_dagster.definitions import build_definitions
from hms_dagster.instance import prepare_instance
from hms_dagster.runner import run_pipeline
from tests.hms_dagster.conftest import write_config


def _sensor(defs, name):
    return defs.resolve_sensor_def(name)


def test_sensors_follow_data_changes(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    cfg = load_config(write_config(tmp_path))
    defs = build_definitions(cfg)
    instance = prepare_instance(cfg)

    raw = _sensor(defs, "raw_data_sensor")
    res = raw(dg.build_sensor_context(instance=instance))
    assert isinstance(res, dg.SkipReason) and "no raw data" in res.skip_message

    assert run_pipeline(cfg, "data").ok
    res = raw(dg.build_sensor_context(instance=instance))
    assert isinstance(res, dg.SkipReason) and "unchanged" in res.skip_message

    # New rows in train.csv: the raw data fingerprint changes -> the data stage is requested.
    csv = cfg.raw_dir / "train.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")
    res = raw(dg.build_sensor_context(instance=instance))
    assert isinstance(res, dg.RunRequest) and res.run_key.startswith("raw-")

    prep = _sensor(defs, "preprocess_on_new_folds_sensor")
    res = prep(dg.build_sensor_context(instance=instance))
    jobs = sorted((r.job_name, r.partition_key) for r in res.run_requests)
    assert jobs == [("preprocessing_job", f) for f in cfg.fold_names] + [("test_preprocessing_job", None)]
    again = prep(dg.build_sensor_context(instance=instance, cursor=res.cursor))
    assert not again.run_requests

    retrain = _sensor(defs, "retrain_on_new_windows_sensor")
    res = retrain(dg.build_sensor_context(instance=instance))
    assert not res.run_requests  # no fold has windows yet


def test_weekly_schedule_requests_every_fold():
    cfg = load_config("tiny")
    defs = build_definitions(cfg)
    sched = defs.resolve_schedule_def("weekly_retrain_schedule")
    with dg.instance_for_test() as inst:
        ctx = dg.build_schedule_context(instance=inst, scheduled_execution_time=dt.datetime(2026, 11, 22, 3))
        reqs = list(sched(ctx))
    assert sorted(r.partition_key for r in reqs) == cfg.fold_names
    assert all(r.run_key.startswith("20261122-") for r in reqs)
