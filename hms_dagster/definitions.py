"""The code location: ``dagster dev -m hms_dagster.definitions`` (or ``hms ui``).

The platform config (``$HMS_CONFIG``, default the ``demo`` profile) is read and validated once, here, when the
definitions load; the asset graph (fold partitions from ``dataset.n_folds``, one asset per enabled model), the
code versions and the resources are all built from that one object, so the UI shows exactly what the CLI runs.
An edit to the YAML reaches the UI when the code location is reloaded ("Reload definitions").
"""

from __future__ import annotations

import dagster as dg

from hms_core.config import PlatformConfig, load_config
from hms_dagster.assets.data import build_data_assets
from hms_dagster.assets.ensemble import build_ensemble_assets
from hms_dagster.assets.export import build_export_assets
from hms_dagster.assets.foundation import build_foundation_assets
from hms_dagster.assets.models import build_model_assets
from hms_dagster.assets.monitoring import build_monitoring_assets, build_monitoring_automation, monitoring_job
from hms_dagster.assets.preprocessing import build_preprocessing_assets
from hms_dagster.assets.scan import build_scan_definitions
from hms_dagster.automation import apply_automation, automation_sensor
from hms_dagster.resources import CONFIG_HASH_TAG, build_executor, build_resources
from hms_dagster.sensors import build_sensors
from hms_dagster.stages import MONITORING_JOB, all_stage_jobs


def build_definitions(cfg: PlatformConfig) -> dg.Definitions:
    assets = [
        *build_data_assets(cfg),
        *build_preprocessing_assets(cfg),
        *build_foundation_assets(cfg),
        *build_model_assets(cfg),
    ]
    assets += build_ensemble_assets(cfg)
    assets += build_export_assets(cfg)
    assets += build_monitoring_assets(cfg)
    # declarative automation, set here for every stage's assets (hms_dagster.automation)
    assets, automated = apply_automation(cfg, assets)
    # the scan stage: recordings as dynamic partitions, driven by its folder sensor (not by automation)
    defined = {k.to_user_string() for a in assets for k in a.keys}
    scan_assets, scan_jobs, scan_sensors = build_scan_definitions(cfg, defined)
    assets += scan_assets
    jobs = {j.name: j.job({CONFIG_HASH_TAG: cfg.config_hash}) for j in all_stage_jobs(cfg)}
    if cfg.monitoring.enabled:
        jobs[MONITORING_JOB] = monitoring_job(cfg, {CONFIG_HASH_TAG: cfg.config_hash})
    monitoring_sensors, schedules = build_monitoring_automation(cfg, jobs)
    sensors = [*build_sensors(cfg, jobs), automation_sensor(cfg, automated), *monitoring_sensors]
    jobs.update(scan_jobs)
    sensors += scan_sensors
    return dg.Definitions(
        assets=assets,
        jobs=list(jobs.values()),
        sensors=sensors,
        schedules=schedules,
        resources=build_resources(cfg),
        executor=build_executor(cfg, assets),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(load_config())
