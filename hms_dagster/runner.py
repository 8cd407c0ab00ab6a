"""Run pipeline stages through the Dagster instance, one run per (job, partition), resumably."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from hms_core.checks import check_option, check_range
from hms_core.config import PlatformConfig
from hms_dagster.definitions import build_definitions
from hms_dagster.instance import (
    PID_TAG,
    cuda_available,
    pool_limit,
    prepare_instance,
    reap_interrupted_runs,
    run_tags,
    usable_cores,
)
from hms_dagster.locks import PartitionBusyError, partition_locks
from hms_dagster.stages import ALL, MODELS_JOB, NOT_BUILT, STAGE_ORDER, StageJob, stage_of_asset, stage_plan
from hms_dagster.status import StatusResolver

#: Jobs whose fold runs may run at once, each in its own process, on a machine without a CUDA device: their steps
#: are single-threaded trainings (``training.torch_threads``, LightGBM ``num_threads``), so one run per core uses
#: the cores a serial loop leaves idle. Preprocessing already spreads a fold over ``preprocessing.workers``.
PARALLEL_JOBS = (MODELS_JOB,)
PARALLEL_ENV_VAR = "HMS_PARALLEL_RUNS"


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
    parallel: int = 1  # fold runs of a PARALLEL_JOBS job that ran at once (see parallel_runs)
    pids: dict[str, int] = field(default_factory=dict)  # run_id -> the process that ran it

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


def parallel_runs(cfg: PlatformConfig, instance: dg.DagsterInstance, requested: int | None = None) -> int:
    """How many fold runs of a :data:`PARALLEL_JOBS` job run at once: ``requested``, else ``$HMS_PARALLEL_RUNS``,
    else 1 (one after another). A request is capped by the usable CPU cores and the instance's ``gpu`` pool limit
    (a run beyond it would only wait for a slot), and is 1 with a CUDA device (one GPU)."""
    env = os.environ.get(PARALLEL_ENV_VAR, "").strip()
    if requested is None and env:
        if not env.isdigit():
            raise ValueError(f"Invalid value for ${PARALLEL_ENV_VAR}: {env!r}; expected a whole number >= 1.")
        requested = int(env)
    if requested is None:
        # Opt-in: on the project's 2-core machine two fold runs at once were no faster than one after another
        # (benchmarks.demo_time, README "Parallel fold runs"), so the default stays serial.
        return 1
    check_range("parallel", requested, 1, 1024)
    if cfg.training.device != "cpu" and cuda_available():
        return 1
    limit = pool_limit(instance)
    return max(1, min(requested, usable_cores(), limit if limit is not None else requested))


def _ui_run_in_progress(instance: dg.DagsterInstance, pr: PlannedRun) -> str | None:
    """A run of ``pr``'s assets and partition in progress that no ``hms`` process started (launched from the UI
    or by a sensor: it holds no lock file); its description, else None. Runs of ``hms`` processes hold the locks
    of :mod:`hms_dagster.locks` instead, and those of dead ones were reaped before this is asked."""
    active = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
              dg.DagsterRunStatus.STARTED]  # fmt: skip
    tags = {"dagster/partition": pr.partition} if pr.partition else None
    mine = {dg.AssetKey(a) for a in pr.job.asset_keys}
    for rec in instance.get_run_records(dg.RunsFilter(statuses=active, tags=tags)):
        run = rec.dagster_run
        if PID_TAG in run.tags or (pr.partition is None and "dagster/partition" in run.tags):
            continue
        selected = set(run.asset_selection) if run.asset_selection else None
        if (selected is None and run.job_name == pr.job.name) or (selected and selected & mine):
            started = dt.datetime.fromtimestamp(rec.create_timestamp.timestamp(), dt.UTC).isoformat(
                timespec="seconds"
            )
            return f"run {run.run_id} of {run.job_name} ({run.status.value}, created {started}, not by `hms run`)"
    return None


def _execute(
    defs: dg.Definitions, instance: dg.DagsterInstance, pr: PlannedRun, log_level: str, root: Path
) -> tuple[bool, str, str, float, int]:
    """Run one planned run in this process: (success, run_id, error text, seconds, pid). The run holds the
    :mod:`hms_dagster.locks` lock of each of its (asset, partition) pairs; when another run holds one (or a UI
    run of them is in progress), nothing runs and the error names that run."""
    t0 = time.perf_counter()
    try:
        with partition_locks(root, pr.job.asset_keys, pr.partition, pr.label):
            other = _ui_run_in_progress(instance, pr)
            if other is not None:
                what = f"{pr.job.name} {pr.partition}" if pr.partition else pr.job.name
                msg = (
                    f"{what} is being materialized by another run: {other}. Nothing was run or written for it. "
                    "Wait for that run to finish (the UI's Runs page), then continue with `hms run --resume`."
                )
                return False, "-", msg, time.perf_counter() - t0, os.getpid()
            result = defs.resolve_job_def(pr.job.name).execute_in_process(
                run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
                instance=instance,
                partition_key=pr.partition,
                tags=run_tags(pr.stage),
                raise_on_error=False,
            )
    except PartitionBusyError as e:
        return False, "-", str(e), time.perf_counter() - t0, os.getpid()
    error = "" if result.success else _error_text(result)
    return result.success, result.run_id, error, time.perf_counter() - t0, os.getpid()


# --- worker processes of parallel fold runs ---------------------------------------------------------------------
_WORKER: dict[str, object] = {}


def _worker_init() -> None:
    """Each worker dies with the runner (Linux ``PR_SET_PDEATHSIG``): after a ``kill -9`` of ``hms run`` no fold
    run goes on training unseen, and the next run's reaper marks the runs the workers had started as failed."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the runner died before prctl took effect
            os._exit(1)


def _worker_run(cfg: PlatformConfig, pr: PlannedRun, log_level: str) -> tuple[bool, str, str, float, int]:
    """One fold run in a worker process: the same definitions (built once per worker from the runner's config
    object, not re-read from its file) and the same instance folder as the runner."""
    key = cfg.model_dump_json()
    if _WORKER.get("key") != key:
        _WORKER.update(key=key, defs=build_definitions(cfg), instance=prepare_instance(cfg))
    return _execute(_WORKER["defs"], _WORKER["instance"], pr, log_level, cfg.root)  # type: ignore[arg-type]


def _run_parallel(
    cfg: PlatformConfig,
    batch: list[PlannedRun],
    n: int,
    log_level: str,
    report: RunReport,
    emit: Callable[[str, PlannedRun | None, dict], None],
) -> bool:
    """Run ``batch`` (fold runs of one job) ``n`` at a time in spawned worker processes (spawn, not fork: the
    runner holds torch, polars and sqlite state). Stops submitting at the first failure, lets the runs under way
    finish, and records the first failure. Returns True when every run succeeded."""
    ctx = multiprocessing.get_context("spawn")
    todo = list(batch)
    running: dict[Future, PlannedRun] = {}
    with ProcessPoolExecutor(max_workers=min(n, len(batch)), mp_context=ctx, initializer=_worker_init) as pool:
        while todo or running:
            while todo and len(running) < n and report.failed is None:
                pr = todo.pop(0)
                emit("start", pr, {})
                running[pool.submit(_worker_run, cfg, pr, log_level)] = pr
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                pr = running.pop(fut)
                try:
                    ok, run_id, error, secs, pid = fut.result()
                except BrokenProcessPool as e:  # a worker died (killed, out of memory) before it returned
                    ok, run_id, error, secs, pid = False, "-", f"the worker process running it died: {e}", 0.0, 0
                report.pids[run_id] = pid
                if ok:
                    report.done.append((pr, run_id, secs))
                    emit("done", pr, {"run_id": run_id, "seconds": secs})
                elif report.failed is None:
                    report.failed = (pr, run_id, error)
                    emit("fail", pr, {"run_id": run_id, "error": error, "seconds": secs})
    return report.failed is None


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
    parallel: int | None = None,
) -> RunReport:
    """Materialize ``stage`` (or all stages in order). ``resume`` runs only missing/failed/stale partitions.

    Before anything runs, the upstream assets the planned runs read are looked up on the instance: when some were
    never materialized, :class:`MissingUpstreamError` names them and the stages to run first, unless
    ``with_upstream``, which runs the earlier stages first (every fold, only what is missing, failed or stale).
    ``require_upstream=False`` skips that look-up, for inputs written outside this instance (a benchmark that
    trains in a scratch workspace on another workspace's partitions).

    Fold runs of a :data:`PARALLEL_JOBS` job run ``parallel`` at a time, each in its own process
    (:func:`parallel_runs`: by default one per usable core without a CUDA device, else 1). Each training seeds
    itself and runs its own torch threads, so the runs produce the same files in any order or concurrency.

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
    i = 0
    while i < len(report.planned):
        pr = report.planned[i]
        # a PARALLEL_JOBS job's fold runs: a batch of consecutive runs of the same job
        j = i + 1
        while (
            j < len(report.planned) and pr.job.name in PARALLEL_JOBS and report.planned[j].job.name == pr.job.name
        ):
            j += 1
        if j > i + 1:
            report.parallel = parallel_runs(cfg, instance, parallel)
            if report.parallel == 1:
                j = i + 1
        batch = []
        for cand in report.planned[i:j]:
            # Evaluate staleness just before each run: an upstream run earlier in this loop may have changed it
            # (the fold runs of one batch do not read each other).
            if resume or cand.upstream or (fold is not None and not cand.job.partitioned):
                resolver = StatusResolver(cfg, defs, instance)
                if not resolver.needs_run(cand.stage, cand.job.name, cand.job.asset_keys, cand.partition):
                    report.skipped.append(cand)
                    emit("skip", cand, {})
                    continue
            batch.append(cand)
        i = j
        if len(batch) > 1:
            if not _run_parallel(cfg, batch, report.parallel, log_level, report, emit):
                return report
            continue
        for one in batch:
            emit("start", one, {})
            ok, run_id, error, secs, pid = _execute(defs, instance, one, log_level, cfg.root)
            report.pids[run_id] = pid
            if not ok:
                report.failed = (one, run_id, error)
                emit("fail", one, {"run_id": run_id, "error": error, "seconds": secs})
                return report
            report.done.append((one, run_id, secs))
            emit("done", one, {"run_id": run_id, "seconds": secs})
    return report
