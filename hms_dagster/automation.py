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

A failing blocking check stops the cascade: :func:`deps_blocking_checks_passed` keeps everything downstream of
it from being requested until that partition is materialized again and passes (a failed check within a run already
skips that run's downstream steps). It is Dagster's ``all_deps_blocking_checks_passed`` judged per fold (see
:class:`BlockingChecksPassed`), so a failed fold is not forgotten when a later fold passes.
One :class:`dagster.AutomationConditionSensorDefinition` targets exactly these assets; it starts stopped unless
``operations.automation: running`` and is switched in the UI (Automation).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from hms_core.config import PlatformConfig
from hms_dagster.stages import ENSEMBLE, EXPORT, MODELS, PREPROCESSING, RAW_DATASET

AC = dg.AutomationCondition

#: The automation condition sensor's name (one for the pipeline; monitoring / scan bring their own sensors).
AUTOMATION_SENSOR = "hms_automation_sensor"
#: Label of the pipeline's "eager after passing checks" condition (shown in the UI's automation tab).
AFTER_UPSTREAM = "after_upstream_passed"
#: Groups whose assets get :func:`after_upstream`.
AUTOMATED_GROUPS = (PREPROCESSING, MODELS, ENSEMBLE, EXPORT)


class BlockingChecksPassed(dg.AutomationCondition):
    """True for each partition (or the unpartitioned asset) whose latest materialization passed every blocking check.

    Dagster's ``all_blocking_checks_passed`` judges an *unpartitioned* check by its newest execution only. Our checks
    are unpartitioned also on the fold-partitioned assets (one check spec per asset; a run records its evaluation
    with ``partition=None``), so there a fold that failed was forgotten as soon as a later fold's run passed, and
    the ensemble was requested over a model fold that had failed ``beats_prior``; with fold runs finishing out of
    order the newest execution could also aim at an older materialization and block for good. Here every partition
    is judged by the newest passed-or-failed evaluation aimed at *its* latest materialization: naming it as
    ``target_materialization_data`` (what a run records for every check result), or recorded in the same run
    (Dagster's own two rules in ``AssetCheckExecutionRecord.targets_latest_materialization``, less its timestamp
    fallback for an evaluation outside the run that names no target: SQLite stores that timestamp in seconds). A partition without such an evaluation, or never materialized, is not passed.
    """

    @property
    def requires_cursor(self) -> bool:
        return False

    @property
    def name(self) -> str:
        return "blocking_checks_passed"

    @property
    def description(self) -> str:
        return "Every blocking check passed on this partition's latest materialization"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        key, view, graph = context.key, context.asset_graph_view, context.asset_graph
        candidate = context.candidate_subset
        blocking = [c for c in graph.get(key).check_keys if graph.get(c).blocking]
        if not blocking or candidate.is_empty:
            return dg.AutomationResult(context=context, true_subset=candidate)
        partitions = candidate.expensively_compute_partition_keys() if candidate.is_partitioned else {None}
        latest = _latest_materializations(view.instance, key, partitions)
        passed = set(latest)
        for check_key in blocking:
            passed &= _passed_partitions(view.instance, check_key, latest)
        if not candidate.is_partitioned:
            return dg.AutomationResult(
                context=context, true_subset=candidate if passed else context.get_empty_subset()
            )
        subset = view.get_subset_from_partition_keys(key, context.partitions_def, passed)
        return dg.AutomationResult(context=context, true_subset=candidate.compute_intersection(subset))


def _latest_materializations(instance, key: dg.AssetKey, partitions) -> dict[str | None, tuple[int, str]]:
    """Partition (None: unpartitioned) -> (storage id, run id) of its latest materialization, for those
    materialized."""
    out = {}
    for p in partitions:
        filt = dg.AssetRecordsFilter(asset_key=key, asset_partitions=None if p is None else [p])
        records = instance.fetch_materializations(filt, limit=1).records
        if records:
            out[p] = (records[0].storage_id, records[0].run_id)
    return out


def _passed_partitions(instance, check_key: dg.AssetCheckKey, latest: dict) -> set[str | None]:
    """The partitions of ``latest`` whose newest evaluation of ``check_key`` aimed at their latest materialization
    passed (history newest first, paged until every partition has one or the history ends)."""
    done = {AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED}
    verdict: dict[str | None, bool] = {}
    cursor = None
    while len(verdict) < len(latest):
        records = instance.event_log_storage.get_asset_check_execution_history(
            check_key, limit=200, cursor=cursor, status=done
        )
        if not records:
            break
        for r in records:
            target = r.evaluation.target_materialization_data if r.evaluation else None
            # the materialization it names; else (no target, or an older one) the partition of the same run
            aimed = [p for p, (sid, _) in latest.items() if target is not None and target.storage_id == sid]
            aimed = aimed or [p for p, (_, run_id) in latest.items() if r.run_id == run_id]
            for p in aimed:
                verdict.setdefault(p, r.status == AssetCheckExecutionRecordStatus.SUCCEEDED)
        cursor = records[-1].id
    return {p for p, ok in verdict.items() if ok}


def deps_blocking_checks_passed() -> dg.AutomationCondition:
    """Every partition of every dependency that this partition reads passed its blocking checks (or is requested
    this tick: its checks then run in that run and a failure skips what follows there, as in Dagster's
    ``all_deps_blocking_checks_passed``)."""
    return ~AC.any_deps_match(~(BlockingChecksPassed() | AC.will_be_requested()))


def after_upstream(ignore: Sequence[str] = ()) -> dg.AutomationCondition:
    """Dagster's ``eager()`` (a dependency updated, or a partition newly missing; nothing upstream missing or in
    progress; not in progress itself) plus :func:`deps_blocking_checks_passed` (Dagster's
    ``all_deps_blocking_checks_passed`` judged per partition); updates of ``ignore`` don't trigger."""
    updated = AC.any_deps_updated()
    if ignore:
        updated = updated.ignore(dg.AssetSelection.assets(*ignore))
    return (
        AC.in_latest_time_window()
        & (AC.newly_missing() | updated).since_last_handled()
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
        & deps_blocking_checks_passed()
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
    # use_user_code_server: the daemon evaluates only Dagster's serializable built-in conditions; a custom one
    # (BlockingChecksPassed) is evaluated in the code location (Dagster's documented way, a beta parameter in 1.13)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.AutomationConditionSensorDefinition(
            AUTOMATION_SENSOR,
            target=dg.AssetSelection.assets(*keys),
            default_status=default_status(cfg),
            minimum_interval_seconds=cfg.operations.automation_interval_s,
            use_user_code_server=True,
            description="Declarative automation of the pipeline: preprocessing after folds, models after their "
            "inputs, ensemble after its members, export after a passing ensemble check (every fold judged); "
            "weekly retrain.",
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
