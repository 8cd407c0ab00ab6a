"""Run pipeline stages through the Dagster instance, one run per (job, partition), resumably."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from hms_core.checks import check_option, check_range
from hms_core.config import PlatformConfig
from hms_dagster.definitions import build_definitions
from hms_dagster.instance import prepare_instance, reap_interrupted_runs, run_tags
from hms_dagster.stages import ALL, NOT_BUILT, STAGE_ORDER, StageJob, stage_of_asset, stage_plan
from hms_dagster.status import StatusResolver


class StageNotBuiltError(RuntimeError):
    pass


class MissingUpstreamError(RuntimeError):
    """A stage was asked for before the assets it reads exist; nothing was run. ``missing`` maps each upstream
    asset to its missing partitions (``[None]`` for an unpartitioned asset); ``stages`` are the stages to run."""

    def __init__(self, stage: str, missing: dict[str, list[str | None]], stages: list[str]):
        self.stage, self.missing, self.stages = stage, missing, stages
        what = "; ".join(
            a if parts == [None] else f"{a} ({', '.join(str(p) for p in parts)})" for a, parts in missing.items()
        )
        first = " then ".join(f"`hms run --stage {s}`" for s in stages)
        super().__init__(
            f"Stage '{stage}' reads assets that are not materialized yet: {what}. Run {first} first, or add "
            f"--with-upstream to run the missing upstream stages before it (`--stage {ALL}` runs every stage)."
        )


@dataclass
class PlannedRun:
    stage: str
    job: StageJob
    partition: str | None
    upstream: bool = False  # added by with_upstream: runs only when missing, failed or stale

    @property
    def label(self) -> str:
        return f"{self.stage}: {self.job.name}" + (f" {self.partition}" if self.partition else "")


@dataclass
class RunReport:
    planned: list[PlannedRun] = field(default_factory=list)
    done: list[tuple[PlannedRun, str, float]] = field(default_factory=list)  # (run, run_id, seconds)
    skipped: list[PlannedRun] = field(default_factory=list)
    not_built: list[str] = field(default_factory=list)
    failed: tuple[PlannedRun, str, str] | None = None  # (run, run_id, error)
    reaped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed is None


def _select_stages(stage: str) -> list[str]:
    check_option("stage", stage, (ALL, *STAGE_ORDER))
    return list(STAGE_ORDER) if stage == ALL else [stage]


def _materialized(instance: dg.DagsterInstance, asset: str, partitioned: bool) -> set[str | None]:
    key = dg.AssetKey(asset)
    if partitioned:
        return set(instance.get_materialized_partitions(key))
    return {None} if instance.get_latest_materialization_event(key) is not None else set()


def missing_upstream(
    defs: dg.Definitions, instance: dg.DagsterInstance, planned: list[PlannedRun]
) -> tuple[dict[str, list[str | None]], list[str]]:
    """The upstream assets (-> partitions) that the ``planned`` runs read, that are not materialized on
    ``instance`` and that no planned run up to that one produces; and the stages that read them. A fold-level input read
    through an ``AllPartitionMapping`` (a model trains on every other fold) needs every fold; any other
    partitioned input the run's own partition."""
    graph = defs.resolve_asset_graph()
    produced: set[tuple[str, str | None]] = set()
    have: dict[str, set[str | None]] = {}
    missing: dict[str, set[str | None]] = {}
    needed_by: list[str] = []
    for pr in planned:
        produced.update((a, pr.partition) for a in pr.job.asset_keys)  # a job materializes its assets in order
        for asset in pr.job.asset_keys:
            key = dg.AssetKey(asset)
            for parent in graph.get(key).parent_keys:
                node, name = graph.get(parent), parent.to_user_string()
                if node.partitions_def is None:
                    parts: set[str | None] = {None}
                elif pr.partition is None or isinstance(graph.get_partition_mapping(key, parent),
                                                        dg.AllPartitionMapping):  # fmt: skip
                    parts = set(node.partitions_def.get_partition_keys())
                else:
                    parts = {pr.partition}
                if name not in have:
                    have[name] = _materialized(instance, name, node.partitions_def is not None)
                lack = {p for p in parts if p not in have[name] and (name, p) not in produced}
                if lack:
                    missing.setdefault(name, set()).update(lack)
                    if pr.stage not in needed_by:
                        needed_by.append(pr.stage)
    return {a: sorted(p, key=str) for a, p in missing.items()}, needed_by


def _error_text(result: dg.ExecuteInProcessResult) -> str:
    msgs = []
    for ev in result.get_step_failure_events():
        err = ev.step_failure_data.error if ev.step_failure_data else None
        if err is not None:
            cause = err.cause.message.strip() if err.cause else ""
            msgs.append(f"{ev.step_key}: {err.message.strip()}" + (f"\n  caused by: {cause}" if cause else ""))
    for ev in result.get_asset_check_evaluations():
        if not ev.passed:
            meta = {k: getattr(v, "value", v) for k, v in ev.metadata.items()}
            msgs.append(f"check {ev.asset_key.to_user_string()}:{ev.check_name} failed: {meta}")
    return "\n".join(msgs) or "run failed (see the run's logs in the Dagster UI)"


def _full_runs(cfg: PlatformConfig, plan: dict[str, list[StageJob]], stage: str) -> list[PlannedRun]:
    return [PlannedRun(stage, j, p) for j in plan[stage] for p in (cfg.fold_names if j.partitioned else [None])]


def _stages_to_run_first(
    cfg: PlatformConfig, defs: dg.Definitions, instance: dg.DagsterInstance, missing: dict[str, list[str | None]]
) -> list[str]:
    """The stages that produce ``missing``, and those their own missing inputs come from, in pipeline order."""
    owners, plan = stage_of_asset(cfg), stage_plan(cfg)
    todo = {owners[a] for a in missing if a in owners}
    while True:
        runs = [pr for s in STAGE_ORDER if s in todo for pr in _full_runs(cfg, plan, s)]
        more = {owners[a] for a in missing_upstream(defs, instance, runs)[0] if a in owners} - todo
        if not more:
            return [s for s in STAGE_ORDER if s in todo]
        todo |= more


def run_pipeline(
    cfg: PlatformConfig,
    stage: str = ALL,
    resume: bool = False,
    fold: int | None = None,
    log_level: str = "WARNING",
    on_event: Callable[[str, PlannedRun | None, dict], None] | None = None,
    with_upstream: bool = False,
    require_upstream: bool = True,
) -> RunReport:
    """Materialize ``stage`` (or all stages in order). ``resume`` runs only missing/failed/stale partitions.

    Before anything runs, the upstream assets the planned runs read are looked up on the instance: when some were
    never materialized, :class:`MissingUpstreamError` names them and the stages to run first, unless
    ``with_upstream``, which runs the earlier stages first (every fold, only what is missing, failed or stale).
    ``require_upstream=False`` skips that look-up, for inputs written outside this instance (a benchmark that
    trains in a scratch workspace on another workspace's partitions).

    ``on_event(kind, run, info)`` is called with kind in {"plan", "start", "done", "skip", "fail", "not_built"}.
    """
    emit = on_event or (lambda *a: None)
    stages = _select_stages(stage)
    if fold is not None:
        check_range("fold", fold, 0, cfg.dataset.n_folds - 1)
    defs = build_definitions(cfg)
    instance = prepare_instance(cfg)
    report = RunReport(reaped=reap_interrupted_runs(instance))
    plan = stage_plan(cfg)
    upstream: list[PlannedRun] = []
    if with_upstream and stage != ALL:
        for s in STAGE_ORDER[: STAGE_ORDER.index(stage)]:
            upstream.extend(
                PlannedRun(pr.stage, pr.job, pr.partition, upstream=True) for pr in _full_runs(cfg, plan, s)
            )
    for s in stages:
        if not plan[s]:
            report.not_built.append(s)
            emit("not_built", None, {"stage": s, "what": NOT_BUILT.get(s, "no enabled assets")})
            if len(stages) == 1:
                raise StageNotBuiltError(
                    f"Stage '{s}' is not built yet: {NOT_BUILT.get(s, 'no enabled assets in the config')}. "
                    f"Built stages: {[x for x in STAGE_ORDER if plan[x]]}."
                )
            continue
        for job in plan[s]:
            parts: list[str | None]
            if job.partitioned:
                parts = [cfg.fold_names[fold]] if fold is not None else list(cfg.fold_names)
            else:
                parts = [None]
            report.planned.extend(PlannedRun(s, job, p) for p in parts)
    report.planned[:0] = upstream
    missing, needed_by = missing_upstream(defs, instance, report.planned) if require_upstream else ({}, [])
    if missing:
        raise MissingUpstreamError(
            ", ".join(needed_by), missing, _stages_to_run_first(cfg, defs, instance, missing)
        )
    emit("plan", None, {"n": len(report.planned)})
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    for pr in report.planned:
        # Evaluate staleness just before each run: an upstream run earlier in this loop may have changed it.
        if resume or pr.upstream or (fold is not None and not pr.job.partitioned):
            resolver = StatusResolver(cfg, defs, instance)
            if not resolver.needs_run(pr.stage, pr.job.name, pr.job.asset_keys, pr.partition):
                report.skipped.append(pr)
                emit("skip", pr, {})
                continue
        emit("start", pr, {})
        t0 = time.perf_counter()
        job_def = defs.resolve_job_def(pr.job.name)
        result = job_def.execute_in_process(
            run_config=run_config,
            instance=instance,
            partition_key=pr.partition,
            tags=run_tags(pr.stage),
            raise_on_error=False,
        )
        secs = time.perf_counter() - t0
        if not result.success:
            report.failed = (pr, result.run_id, _error_text(result))
            emit("fail", pr, {"run_id": result.run_id, "error": report.failed[2], "seconds": secs})
            return report
        report.done.append((pr, result.run_id, secs))
        emit("done", pr, {"run_id": result.run_id, "seconds": secs})
    return report
