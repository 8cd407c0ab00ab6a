"""Where the pipeline stands: every asset and partition, materialized / stale / missing / failed, with figures.

Dagster's instance is the pipeline state (it replaces the seed tool's ``training_state.json``). Per-partition
staleness uses Dagster's stale-status resolver, an internal API wrapped here in one place.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

import dagster as dg

from hms_core.config import PlatformConfig
from hms_dagster.stages import NOT_BUILT, STAGE_ORDER, stage_plan

FIGURE_KEYS = (
    "rows", "train_rows", "train_patients", "eegs", "patients", "n_folds", "test_rows", "val_kl", "val_kl_high_votes", "prior_kl", "accuracy",
    "flagged_fraction", "bytes", "epochs", "seconds", "ensemble_kl", "best_member_kl", "gain_vs_best_pct",
    "n_recordings", "recording_hours", "steps", "eval_loss",
)  # fmt: skip


@dataclass
class PartitionStatus:
    stage: str
    asset: str
    partition: str | None
    state: str  # fresh | stale | missing | failed | running
    materialized_at: str | None = None
    run_id: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stale_resolver(instance: dg.DagsterInstance, defs: dg.Definitions):
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._core.loader import LoadingContextForTest

    return CachingStaleStatusResolver(instance, defs.resolve_asset_graph(), LoadingContextForTest(instance))


def _latest_record(instance: dg.DagsterInstance, key: str, partition: str | None):
    f = dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition] if partition else None)
    recs = instance.fetch_materializations(f, limit=1).records
    return recs[0] if recs else None


def _figures(record) -> dict[str, Any]:
    if record is None or record.asset_materialization is None:
        return {}
    meta = record.asset_materialization.metadata
    out = {}
    for k in FIGURE_KEYS:
        if k in meta:
            v = meta[k].value
            out[k] = round(v, 4) if isinstance(v, float) else v
    return out


def _latest_run(instance: dg.DagsterInstance, job: str, partition: str | None):
    tags = {"dagster/partition": partition} if partition else None
    recs = instance.get_run_records(dg.RunsFilter(job_name=job, tags=tags), limit=1)
    return recs[0] if recs else None


class StatusResolver:
    """Resolves the state of (asset, partition) pairs against one instance snapshot."""

    def __init__(self, cfg: PlatformConfig, defs: dg.Definitions, instance: dg.DagsterInstance):
        self.cfg, self.defs, self.instance = cfg, defs, instance
        self.stale = _stale_resolver(instance, defs)

    def state(self, stage: str, job: str, asset: str, partition: str | None) -> PartitionStatus:
        from dagster._core.definitions.data_version import StaleStatus

        key = dg.AssetKey(asset)
        rec = _latest_record(self.instance, asset, partition)
        status = self.stale.get_status(key, partition)
        run = _latest_run(self.instance, job, partition)
        ps = PartitionStatus(stage, asset, partition, "missing", figures=_figures(rec))
        if rec is not None:
            ps.materialized_at = dt.datetime.fromtimestamp(rec.timestamp).isoformat(timespec="seconds")
            ps.run_id = rec.run_id
            ps.state = "fresh" if status == StaleStatus.FRESH else "stale"
            if ps.state == "stale":
                causes = self.stale.get_stale_root_causes(key, partition)
                ps.reason = "; ".join(f"{c.asset_key.to_user_string()}: {c.reason}" for c in causes[:3]) or None
        if run is not None and (
            rec is None or rec.run_id == run.dagster_run.run_id or run.create_timestamp.timestamp() > rec.timestamp
        ):
            rs = run.dagster_run.status
            if rs == dg.DagsterRunStatus.FAILURE or rs == dg.DagsterRunStatus.CANCELED:
                ps.state, ps.run_id, ps.reason = "failed", run.dagster_run.run_id, f"run {rs.value.lower()}"
            elif not run.dagster_run.is_finished:
                ps.state, ps.run_id = "running", run.dagster_run.run_id
        return ps

    def needs_run(self, stage: str, job: str, assets: tuple[str, ...], partition: str | None) -> bool:
        return any(self.state(stage, job, a, partition).state != "fresh" for a in assets)


def collect_status(
    cfg: PlatformConfig, defs: dg.Definitions, instance: dg.DagsterInstance
) -> list[PartitionStatus]:
    resolver = StatusResolver(cfg, defs, instance)
    plan = stage_plan(cfg)
    rows: list[PartitionStatus] = []
    for stage in STAGE_ORDER:
        if stage in NOT_BUILT and not plan[stage]:
            rows.append(PartitionStatus(stage, "-", None, "not built", reason=NOT_BUILT[stage]))
            continue
        for job in plan[stage]:
            parts = cfg.fold_names if job.partitioned else [None]
            for asset in job.asset_keys:
                rows.extend(resolver.state(stage, job.name, asset, p) for p in parts)
    return rows


def status_summary(rows: list[PartitionStatus]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    stages: dict[str, str] = {}
    for r in rows:
        prev = stages.get(r.stage)
        if r.state == "not built":
            stages[r.stage] = "not built"
        elif prev is None:
            stages[r.stage] = "complete" if r.state == "fresh" else "incomplete"
        elif r.state != "fresh":
            stages[r.stage] = "incomplete"
    return {"counts": counts, "stages": stages}
