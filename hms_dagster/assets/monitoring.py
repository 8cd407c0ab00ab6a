"""Monitoring in production: daily drift and quality of what the service and the scanner predicted.

- ``prediction_drift`` (daily partitions, UTC): the day's logged windows (``hms_core.monitoring.log``) against the
  training distribution stored in the deployment package that predicted them (``hms_core.monitoring.drift``);
  check ``drift_within_limits``.
- ``prediction_quality`` (daily partitions): the day's windows that expert votes arrived for (CSV files in
  ``monitoring.quality.labels_dir``), KL and ECE against the reference (``hms_core.monitoring.quality``); check
  ``quality_within_limits``.

Checks: passed when the day is ``ok``; severity WARN when it warns or is not judged (too few windows or labels),
ERROR when it drifted / degraded. An ERROR evaluation carries ``retrain: true`` (``monitoring.request_retraining``)
and ``monitoring_retrain_sensor`` turns each new one into the retraining cascade: ``models_job`` for every fold;
the operations automation (:mod:`hms_dagster.automation`) then rebuilds the ensemble and the package after them.
``monitoring_daily_schedule`` materializes yesterday's partition at 00:30 UTC. Both start stopped, like the rest
of the automation. Metadata: the verdict and its reasons, the per-feature table, the trends over the days as PNG
(embedded and as a file path).
"""

from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from hms_core.checks import invalid_value
from hms_core.config import PlatformConfig
from hms_dagster.resources import WorkspaceResource
from hms_dagster.stages import (
    DEPLOYMENT_PACKAGE,
    DRIFT_CHECK,
    MODELS_JOB,
    MONITORING,
    MONITORING_JOB,
    PREDICTION_DRIFT,
    PREDICTION_QUALITY,
    QUALITY_CHECK,
    export_asset_keys,
)

GROUP = MONITORING
VERSION = "1"
RETRAIN_SENSOR = "monitoring_retrain_sensor"
DAILY_SCHEDULE = "monitoring_daily_schedule"
TRIGGER_TAG = "hms/trigger"


def daily_partitions(cfg: PlatformConfig) -> dg.DailyPartitionsDefinition:
    """UTC days from ``monitoring.start_date`` up to and including today (today's partition is the day so far)."""
    return dg.DailyPartitionsDefinition(start_date=cfg.monitoring.start_date, timezone="UTC", end_offset=1)


def _severity(status: str) -> dg.AssetCheckSeverity:
    return dg.AssetCheckSeverity.ERROR if status == "error" else dg.AssetCheckSeverity.WARN


def _table(df: Any, columns: list[str], limit: int = 25) -> dg.TableMetadataValue:
    import math

    records = []
    for r in df.head(limit).to_dict("records"):
        rec = {}
        for c in columns:
            v = r.get(c)
            if isinstance(v, float):
                v = None if math.isnan(v) else round(v, 4)
            rec[c] = v if v is None or isinstance(v, (int, float, bool)) else str(v)
        records.append(dg.TableRecord(rec))
    schema = dg.TableSchema(columns=[dg.TableColumn(c, "number" if df[c].dtype.kind in "fiu" else "string")
                                     for c in columns])  # fmt: skip
    return dg.MetadataValue.table(records, schema=schema)


def _check_meta(cfg: PlatformConfig, day: str, status: str, reasons: list[str]) -> dict[str, Any]:
    retrain = status == "error" and cfg.monitoring.request_retraining
    return {"day": day, "status": status, "retrain": retrain, "reason": "; ".join(reasons) or status}


def build_monitoring_assets(cfg: PlatformConfig) -> list:
    if not cfg.monitoring.enabled:
        return []
    parts = daily_partitions(cfg)
    deps = [DEPLOYMENT_PACKAGE] if DEPLOYMENT_PACKAGE in export_asset_keys(cfg) else []
    code = f"{VERSION}-{cfg.result_hash('monitoring')}"

    @dg.asset(
        name=PREDICTION_DRIFT,
        group_name=GROUP,
        partitions_def=parts,
        deps=deps,
        code_version=code,
        kinds={"parquet"},
        description="The day's logged windows against the training distribution in the deployment package: PSI + KS "
        "per input feature, predicted class mix.",
        check_specs=[
            dg.AssetCheckSpec(
                DRIFT_CHECK,
                asset=PREDICTION_DRIFT,
                description="no feature drifted (PSI >= psi_error with a significant KS), "
                "class mix stable, enough windows",
            )
        ],
    )
    def prediction_drift(context: dg.AssetExecutionContext, workspace: WorkspaceResource):
        from hms_core.monitoring.daily import drift_day, drift_history, reports_dir
        from hms_core.monitoring.plots import drift_trend

        cfg = workspace.config
        day = context.partition_key
        res = drift_day(cfg, day)
        d = cfg.monitoring.drift
        meta: dict[str, Any] = {
            "status": res.status, "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in res.reasons) or "-"),
            "n_windows": res.n_windows, "report": dg.MetadataValue.path(str(res.paths["report"])),
            "versions": dg.MetadataValue.json(res.summary),
        }  # fmt: skip
        if len(res.table):
            meta["n_drifted_features"] = int((res.table["status"] == "error").sum())
            meta["max_psi"] = float(res.table["psi"].max())
            meta["features"] = _table(res.table, ["feature", "psi", "ks_pvalue", "median", "ref_median", "status",
                                                  "package_version"])  # fmt: skip
        png = reports_dir(cfg, "drift") / "trend.png"
        trend = drift_trend(drift_history(cfg, until=day), png, d.psi_warn, d.psi_error)
        if trend:
            meta["trend"] = dg.MetadataValue.md(trend)
            meta["trend_png"] = dg.MetadataValue.path(str(png))
        context.log.info(f"drift {day}: {res.status} ({'; '.join(res.reasons) or 'within limits'})")
        yield dg.MaterializeResult(metadata=meta)
        yield dg.AssetCheckResult(
            check_name=DRIFT_CHECK, passed=res.status == "ok", severity=_severity(res.status),
            metadata=_check_meta(cfg, day, res.status, res.reasons), description="; ".join(res.reasons) or None,
        )  # fmt: skip

    @dg.asset(
        name=PREDICTION_QUALITY,
        group_name=GROUP,
        partitions_def=parts,
        deps=deps,
        code_version=code,
        kinds={"parquet"},
        description="KL and calibration of the day's logged windows against expert votes dropped into the labels "
        "folder, against the reference's out-of-fold KL for the same vote counts.",
        check_specs=[
            dg.AssetCheckSpec(
                QUALITY_CHECK,
                asset=PREDICTION_QUALITY,
                description="KL within kl_*_ratio of the reference, ECE below ece_*, enough labelled windows",
            )
        ],
    )
    def prediction_quality(context: dg.AssetExecutionContext, workspace: WorkspaceResource):
        from hms_core.monitoring.daily import quality_day, quality_history, reports_dir
        from hms_core.monitoring.plots import quality_trend

        cfg = workspace.config
        day = context.partition_key
        res = quality_day(cfg, day)
        meta: dict[str, Any] = {
            "status": res.status, "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in res.reasons) or "-"),
            "n_windows": res.n_windows, "report": dg.MetadataValue.path(str(res.paths["report"])),
            "versions": dg.MetadataValue.json(res.summary),
        }  # fmt: skip
        judged = [s for s in res.summary.values() if s.get("kl") is not None]
        if judged:
            best = max(judged, key=lambda s: s["n_labelled"])
            meta |= {"n_labelled": best["n_labelled"], "kl": best["kl"], "ece": best["ece"]}
            if best.get("expected_kl") is not None:
                meta |= {"expected_kl": best["expected_kl"], "kl_ratio": best["ratio"]}
        if len(res.table):
            meta["per_class"] = _table(res.table, ["class", "n", "recall", "mean_prob", "vote_share",
                                                   "package_version"])  # fmt: skip
        png = reports_dir(cfg, "quality") / "trend.png"
        trend = quality_trend(quality_history(cfg, until=day), png)
        if trend:
            meta["trend"] = dg.MetadataValue.md(trend)
            meta["trend_png"] = dg.MetadataValue.path(str(png))
        context.log.info(f"quality {day}: {res.status} ({'; '.join(res.reasons) or 'within limits'})")
        yield dg.MaterializeResult(metadata=meta)
        yield dg.AssetCheckResult(
            check_name=QUALITY_CHECK, passed=res.status == "ok", severity=_severity(res.status),
            metadata=_check_meta(cfg, day, res.status, res.reasons), description="; ".join(res.reasons) or None,
        )  # fmt: skip

    return [prediction_drift, prediction_quality]


def monitoring_job(cfg: PlatformConfig, tags: dict[str, str] | None = None) -> "dg.UnresolvedAssetJobDefinition":
    return dg.define_asset_job(
        MONITORING_JOB, selection=dg.AssetSelection.groups(GROUP),
        description="Drift and quality of one day of logged predictions.", tags={"hms/job": MONITORING_JOB, **(tags or {})},
    )  # fmt: skip


def retrain_requests(
    instance: dg.DagsterInstance, cfg: PlatformConfig, cursor: int
) -> tuple[list[dg.RunRequest], int, list[str]]:
    """New ERROR evaluations of the monitoring checks with ``retrain: true`` since record id ``cursor``: one
    ``models_job`` run per fold for each (the run key names the evaluation, so none is requested twice), the new
    cursor, and why."""
    newest, reasons = cursor, []
    for asset, check in ((PREDICTION_DRIFT, DRIFT_CHECK), (PREDICTION_QUALITY, QUALITY_CHECK)):
        key = dg.AssetCheckKey(dg.AssetKey(asset), check)
        for rec in instance.event_log_storage.get_asset_check_execution_history(key, limit=100):
            if rec.id <= cursor:
                continue
            newest = max(newest, rec.id)
            ev = rec.evaluation  # a planned execution has no result yet
            if (
                not isinstance(ev, dg.AssetCheckEvaluation)
                or ev.passed
                or ev.severity != dg.AssetCheckSeverity.ERROR
            ):
                continue
            retrain = ev.metadata.get("retrain")
            if retrain is None or not retrain.value:
                continue
            why, day = ev.metadata.get("reason"), ev.metadata.get("day")
            reasons.append(
                f"{asset}[{day.value if day else '?'}] {check}: {why.value if why else 'failed'} (evaluation {rec.id})"
            )
    if not reasons:
        return [], newest, []
    reqs = [
        dg.RunRequest(
            job_name=MODELS_JOB,
            partition_key=f,
            run_key=f"monitoring-retrain-{newest}-{f}",
            tags={TRIGGER_TAG: "monitoring_check_failed"},
        )
        for f in cfg.fold_names
    ]
    return reqs, newest, reasons


def build_monitoring_automation(cfg: PlatformConfig, jobs: dict) -> tuple[list, list]:
    """The retraining sensor (when the models job exists) and the daily schedule, both stopped by default."""
    if not cfg.monitoring.enabled or MONITORING_JOB not in jobs:
        return [], []
    sensors: list = []
    if MODELS_JOB in jobs:

        @dg.sensor(
            name=RETRAIN_SENSOR,
            job=jobs[MODELS_JOB],
            minimum_interval_seconds=60,
            default_status=dg.DefaultSensorStatus.STOPPED,
            description="Requests the retraining cascade (every fold of every model; the ensemble and the package "
            "follow through the automation) when a monitoring check fails with ERROR.",
        )
        def monitoring_retrain_sensor(context: dg.SensorEvaluationContext):
            reqs, newest, reasons = retrain_requests(context.instance, cfg, int(context.cursor or 0))
            if not reqs:
                return dg.SensorResult(skip_reason="no new failing monitoring check", cursor=str(newest))
            context.log.info("retraining requested: " + "; ".join(reasons))
            return dg.SensorResult(run_requests=reqs, cursor=str(newest))

        sensors.append(monitoring_retrain_sensor)

    @dg.schedule(
        name=DAILY_SCHEDULE, job=jobs[MONITORING_JOB], cron_schedule="30 0 * * *", execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Drift and quality of yesterday's predictions (UTC), every day at 00:30.",
    )  # fmt: skip
    def monitoring_daily_schedule(context: dg.ScheduleEvaluationContext):
        day = (context.scheduled_execution_time.astimezone(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
        return dg.RunRequest(partition_key=day, run_key=f"monitoring-{day}")

    return sensors, [monitoring_daily_schedule]


def resolve_day(day: str | None) -> str:
    """``day`` or, when None, yesterday (UTC) as ``YYYY-MM-DD``."""
    return day or (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")


def run_monitoring_day(
    cfg: PlatformConfig, day: str | None = None, log_level: str = "WARNING"
) -> dg.ExecuteInProcessResult:
    """``hms monitor``: materialize both monitoring assets of ``day`` (default yesterday, UTC) through the
    workspace's Dagster instance, so the run shows in the UI with its checks."""
    from hms_dagster.definitions import build_definitions
    from hms_dagster.instance import prepare_instance, run_tags

    day = resolve_day(day)
    parts = daily_partitions(cfg)
    if not parts.has_partition_key(day):
        keys = parts.get_partition_keys()
        raise invalid_value(
            "day", day, f"UTC days from monitoring.start_date {keys[0]} to {keys[-1]} (YYYY-MM-DD)"
        )
    defs = build_definitions(cfg)
    return defs.resolve_job_def(MONITORING_JOB).execute_in_process(
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        instance=prepare_instance(cfg), partition_key=day, tags=run_tags(MONITORING), raise_on_error=False,
    )  # fmt: skip


def monitor_cli(cfg: PlatformConfig, day: str | None) -> tuple[int, str]:
    """``hms monitor``'s work: (exit code, text). 0: the day was judged ok, warned or could not be judged; 1: the
    run failed or a check failed with ERROR (drift / degraded quality); 2: a bad ``--day``."""
    try:
        result = run_monitoring_day(cfg, day)
    except ValueError as e:
        return 2, str(e)
    if not result.success:
        from hms_dagster.runner import _error_text

        return 1, f"monitoring run {result.run_id} failed: {_error_text(result)}"
    lines, code = [], 0
    for ev in result.get_asset_check_evaluations():
        status = ev.metadata["status"].value if "status" in ev.metadata else ("ok" if ev.passed else "failed")
        reason = ev.metadata["reason"].value if "reason" in ev.metadata else ""
        retrain = (
            " -> retraining requested (monitoring_retrain_sensor)"
            if ev.metadata.get("retrain") and ev.metadata["retrain"].value
            else ""
        )
        lines.append(f"{ev.asset_key.to_user_string()} {ev.check_name}: {status}{retrain}\n    {reason}")
        if not ev.passed and ev.severity == dg.AssetCheckSeverity.ERROR:
            code = 1
    return code, f"monitoring of {resolve_day(day)}: run {result.run_id}\n" + "\n".join(lines)
