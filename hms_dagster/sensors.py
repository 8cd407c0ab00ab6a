"""Automation: retrain when the data changes.

- ``raw_data_sensor``: the raw folder's fingerprint differs from the data version of the last ``raw_dataset``
  materialization -> run the data stage.
- ``preprocess_on_new_folds_sensor``: ``folds`` was re-materialized -> preprocess every fold and the test set.
- ``retrain_on_new_windows_sensor``: every fold's windows are newer than the last models request -> retrain every
  fold.
- ``weekly_retrain_schedule``: retrain every fold weekly (off by default).
"""

from __future__ import annotations

import dagster as dg

from hms_core.config import PlatformConfig
from hms_dagster.stages import (
    DATA_JOB,
    EEG_WINDOWS,
    FOLDS,
    MODELS_JOB,
    PREPROCESSING_JOB,
    RAW_DATASET,
    TEST_PREPROCESSING_JOB,
)


def _latest_storage_id(instance: dg.DagsterInstance, key: str, partition: str | None = None) -> int:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    return records[0].storage_id if records else 0


def build_automation(cfg: PlatformConfig, jobs: dict) -> tuple[list, list]:
    """The sensors and the schedule, built from ``cfg`` (the definitions' config: no file is read here)."""
    folds = cfg.fold_names
    sensors: list = []
    schedules: list = []

    @dg.sensor(
        job=jobs[DATA_JOB],
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Runs the data stage when files in the raw data folder change.",
    )
    def raw_data_sensor(context: dg.SensorEvaluationContext):
        from hms_core.raw import fingerprint, has_raw_data

        if not has_raw_data(cfg.raw_dir):
            return dg.SkipReason(f"no raw data in {cfg.raw_dir}")
        fp = fingerprint(cfg.raw_dir)
        ev = context.instance.get_latest_materialization_event(dg.AssetKey(RAW_DATASET))
        current = None
        if ev is not None and ev.asset_materialization is not None:
            current = ev.asset_materialization.tags.get("dagster/data_version")
        if current == fp:
            return dg.SkipReason(f"raw data unchanged (fingerprint {fp})")
        return dg.RunRequest(run_key=f"raw-{fp}", tags={"hms/trigger": "raw_data_changed"})

    sensors.append(raw_data_sensor)

    if PREPROCESSING_JOB in jobs:
        targets = [jobs[PREPROCESSING_JOB], jobs[TEST_PREPROCESSING_JOB]]

        @dg.sensor(
            jobs=targets,
            minimum_interval_seconds=30,
            default_status=dg.DefaultSensorStatus.STOPPED,
            description="Preprocesses every fold and the test set after the folds asset changes.",
        )
        def preprocess_on_new_folds_sensor(context: dg.SensorEvaluationContext):
            sid = _latest_storage_id(context.instance, FOLDS)
            if sid == 0 or str(sid) == (context.cursor or ""):
                return dg.SensorResult(skip_reason="folds unchanged")
            reqs = [dg.RunRequest(job_name=TEST_PREPROCESSING_JOB, run_key=f"{sid}-test")]
            reqs += [
                dg.RunRequest(job_name=PREPROCESSING_JOB, partition_key=f, run_key=f"{sid}-{f}") for f in folds
            ]
            return dg.SensorResult(run_requests=reqs, cursor=str(sid))

        sensors.append(preprocess_on_new_folds_sensor)

    if MODELS_JOB in jobs:

        @dg.sensor(
            job=jobs[MODELS_JOB],
            minimum_interval_seconds=60,
            default_status=dg.DefaultSensorStatus.STOPPED,
            description="Retrains every fold once all fold windows were re-materialized.",
        )
        def retrain_on_new_windows_sensor(context: dg.SensorEvaluationContext):
            ids = [_latest_storage_id(context.instance, EEG_WINDOWS, f) for f in folds]
            last = int(context.cursor or 0)
            if min(ids) == 0 or min(ids) <= last:
                return dg.SensorResult(skip_reason="not every fold has new windows")
            reqs = [dg.RunRequest(partition_key=f, run_key=f"{max(ids)}-{f}") for f in folds]
            return dg.SensorResult(run_requests=reqs, cursor=str(max(ids)))

        @dg.schedule(
            job=jobs[MODELS_JOB], cron_schedule="0 3 * * 0", default_status=dg.DefaultScheduleStatus.STOPPED
        )
        def weekly_retrain_schedule(context: dg.ScheduleEvaluationContext):
            for f in folds:
                yield dg.RunRequest(partition_key=f, run_key=f"{context.scheduled_execution_time:%Y%m%d}-{f}")

        sensors.append(retrain_on_new_windows_sensor)
        schedules.append(weekly_retrain_schedule)
    return sensors, schedules
