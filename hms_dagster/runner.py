"""Run pipeline stages through the Dagster instance, one run per (job, partition), resumably."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from hms_core.config import PlatformConfig
from hms_dagster.definitions import build_definitions
from hms_dagster.instance import prepare_instance, reap_interrupted_runs, run_tags
from hms_dagster.stages import NOT_BUILT, STAGE_ORDER, StageJob, stage_plan
from hms_dagster.status import StatusResolver


class StageNotBuiltError(RuntimeError):
    pass


@dataclass
class PlannedRun:
    stage: str
    job: StageJob
    partition: str | None

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
    if stage == "all":
        return list(STAGE_ORDER)
    if stage not in STAGE_ORDER:
        raise ValueError(f"Invalid value for 'stage'. Allowed values are {['all', *STAGE_ORDER]}, but got {stage!r}")
    return [stage]


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


def run_pipeline(
    cfg: PlatformConfig,
    stage: str = "all",
    resume: bool = False,
    fold: int | None = None,
    log_level: str = "WARNING",
    on_event: Callable[[str, PlannedRun | None, dict], None] | None = None,
) -> RunReport:
    """Materialize ``stage`` (or all stages in order). ``resume`` runs only missing/failed/stale partitions.

    ``on_event(kind, run, info)`` is called with kind in {"plan", "start", "done", "skip", "fail", "not_built"}.
    """
    emit = on_event or (lambda *a: None)
    stages = _select_stages(stage)
    if fold is not None and not 0 <= fold < cfg.dataset.n_folds:
        raise ValueError(f"Invalid value for 'fold': must be in 0..{cfg.dataset.n_folds - 1}, got {fold}")
    defs = build_definitions(cfg)
    instance = prepare_instance(cfg)
    report = RunReport(reaped=reap_interrupted_runs(instance))
    plan = stage_plan(cfg)
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
    emit("plan", None, {"n": len(report.planned)})
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    for pr in report.planned:
        # Evaluate staleness just before each run: an upstream run earlier in this loop may have changed it.
        if resume or (fold is not None and not pr.job.partitioned):
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
