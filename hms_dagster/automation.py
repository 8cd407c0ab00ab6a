"""Declarative automation: when each stage's assets materialize by themselves, and the sensor that evaluates it.

The conditions are applied here, to the assets the stage modules define (``apply_automation`` in
``definitions.py``), so the whole policy reads in one place:

- ``raw_dataset``, ``labels``, ``folds``, ``foundation_encoder``: no condition. The raw-data sensor
  (:mod:`hms_dagster.sensors`) requests them when ``train.csv`` or the recordings change.
- preprocessing (every fold of ``eeg_windows``/``spectrograms``/... and ``test_windows``): eager after ``folds``
  (``labels`` for the test set), once that asset's blocking checks passed. ``raw_dataset`` is ignored as a trigger:
  a changed recording reaches only its patient's fold, through the raw-data sensor.
- ``model_*``: eager after their inputs (every fold of their preprocessing asset, the test set, the foundation
  encoder) once every blocking check of those inputs passed, or on the weekly retrain cron.
- the ensemble stage after its members (every fold), the export stage after a passing ensemble check.

A failing blocking check stops the cascade: ``all_deps_blocking_checks_passed`` keeps everything downstream of
it from being requested (a failed check within a run already skips that run's downstream steps).
One :class:`dagster.AutomationConditionSensorDefinition` targets exactly these assets; it starts stopped unless
``operations.automation: running`` and is switched in the UI (Automation).
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from hms_core.config import PlatformConfig
from hms_dagster.stages import ENSEMBLE, EXPORT, MODELS, PREPROCESSING, RAW_DATASET

AC = dg.AutomationCondition

#: The automation condition sensor's name (one for the pipeline; monitoring / scan bring their own sensors).
AUTOMATION_SENSOR = "hms_automation_sensor"
#: Label of the pipeline's "eager after passing checks" condition (shown in the UI's automation tab).
AFTER_UPSTREAM = "after_upstream_passed"
#: Groups whose assets get :func:`after_upstream`.
AUTOMATED_GROUPS = (PREPROCESSING, MODELS, ENSEMBLE, EXPORT)


def after_upstream(ignore: Sequence[str] = ()) -> dg.AutomationCondition:
    """Dagster's ``eager()`` (a dependency updated, or a partition newly missing; nothing upstream missing or in
    progress; not in progress itself) plus ``all_deps_blocking_checks_passed``; updates of ``ignore`` don't
    trigger."""
    updated = AC.any_deps_updated()
    if ignore:
        updated = updated.ignore(dg.AssetSelection.assets(*ignore))
    return (
        AC.in_latest_time_window()
        & (AC.newly_missing() | updated).since_last_handled()
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
        & AC.all_deps_blocking_checks_passed()
    ).with_label(AFTER_UPSTREAM)


def scheduled_retrain(cron: str) -> dg.AutomationCondition:
    """``on_cron(cron)`` without its "every dependency updated since the tick" part: a retrain on the tick even when
    the inputs did not change (nothing upstream missing, not already running)."""
    return (
        AC.on_cron(cron).without(AC.all_deps_updated_since_cron(cron)) & ~AC.any_deps_missing() & ~AC.in_progress()
    ).with_label(f"retrain_on_cron({cron})")


def condition_for(cfg: PlatformConfig, spec: dg.AssetSpec) -> dg.AutomationCondition | None:
    """The pipeline's condition of one asset (None: requested by the raw-data sensor, or not ours)."""
    group = spec.group_name
    if group == PREPROCESSING:
        return after_upstream(ignore=[RAW_DATASET])
    if group == MODELS:
        cond = after_upstream()
        if cfg.operations.retrain_cron:
            cond = (cond | scheduled_retrain(cfg.operations.retrain_cron)).with_label("models")
        return cond
    if group in (ENSEMBLE, EXPORT):
        return after_upstream()
    return None


def apply_automation(cfg: PlatformConfig, assets: list) -> tuple[list, list[dg.AssetKey]]:
    """``assets`` with the pipeline's conditions set (an asset whose module set one keeps it), and the keys that
    got one (the automation sensor's target)."""
    out, keys = [], []
    for a in assets:
        if isinstance(a, dg.AssetsDefinition):
            conds = {}
            for spec in a.specs:
                cond = None if spec.automation_condition is not None else condition_for(cfg, spec)
                if cond is not None:
                    conds[spec.key] = cond
            if conds:
                a = a.with_attributes(automation_condition=conds)
                keys.extend(conds)
        out.append(a)
    return out, keys


def automation_sensor(cfg: PlatformConfig, keys: Sequence[dg.AssetKey]) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR,
        target=dg.AssetSelection.assets(*keys),
        default_status=default_status(cfg),
        minimum_interval_seconds=cfg.operations.automation_interval_s,
        description="Declarative automation of the pipeline: preprocessing after folds, models after their "
        "inputs, ensemble after its members, export after a passing ensemble check; weekly retrain.",
    )


def default_status(cfg: PlatformConfig) -> dg.DefaultSensorStatus:
    running = cfg.operations.automation == "running"
    return dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED


def io_retry_policy(cfg: PlatformConfig) -> dg.RetryPolicy | None:
    """The retry policy of I/O steps (download, file reads and writes, model registry): ``operations.io_retries``
    retries, exponential back-off from ``io_retry_delay_s`` with jitter. Errors that a retry cannot fix are raised
    as non-retriable (:func:`hms_dagster.resources.no_retry_on`)."""
    ops = cfg.operations
    if ops.io_retries == 0:
        return None
    return dg.RetryPolicy(
        max_retries=ops.io_retries, delay=ops.io_retry_delay_s, backoff=dg.Backoff.EXPONENTIAL,
        jitter=dg.Jitter.PLUS_MINUS,
    )  # fmt: skip
