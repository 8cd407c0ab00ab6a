"""Declarative automation of the real tiny-profile graph, evaluated against an instance in a temp dir.

Materializations and check results are reported as runless events (what a run records), so the conditions are
tested in seconds; the raw-file-to-ensemble cascade with real runs is in test_sensors.py.
"""

from __future__ import annotations

import datetime as dt
import uuid

import dagster as dg
import pytest
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)
from dagster._core.events import DagsterEventType, StepMaterializationData

from hms_core.config import load_config
from hms_dagster.automation import AFTER_UPSTREAM, AUTOMATION_SENSOR
from hms_dagster.definitions import build_definitions
from hms_dagster.sensors import RAW_DATA_SENSOR
from hms_dagster.stages import (
    EEG_WINDOWS,
    ENSEMBLE,
    ENSEMBLE_MODEL,
    EVALUATION_REPORT,
    FOLDS,
    FOUNDATION_ENCODER,
    LABELS,
    MODELS,
    PREPROCESSING,
    RAW_DATASET,
    TEST_WINDOWS,
    ensemble_asset_keys,
    model_asset_key,
    preprocessing_asset_keys,
)
from tests.hms_dagster.conftest import write_config

K = dg.AssetKey


#: Two models (one torch, one LightGBM) keep the evaluations short; the full tiny graph is checked in
#: test_conditions_sit_where_the_policy_says.
SMALL = {
    "models": {
        m: {"enabled": m in ("lightgbm", "sparcnet")}
        for m in ("resnet1d_gru", "efficientnet", "sparcnet", "lightgbm", "eeg_foundation")
    }
}


@pytest.fixture(scope="module")
def defs_cfg(tmp_path_factory):
    cfg = load_config(write_config(tmp_path_factory.mktemp("automation")))
    return build_definitions(cfg), cfg


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cfg = load_config(write_config(tmp_path_factory.mktemp("automation_small"), **SMALL))
    return build_definitions(cfg), cfg


class Tick:
    """Evaluates the automation conditions like the sensor's ticks do, keeping the cursor between them."""

    def __init__(self, defs, instance, selection: dg.AssetSelection | None = None):
        self.defs, self.instance, self.cursor, self.selection = defs, instance, None, selection

    def __call__(self, when: dt.datetime | None = None) -> dict[str, set[str | None]]:
        r = dg.evaluate_automation_conditions(
            defs=self.defs, instance=self.instance, cursor=self.cursor, evaluation_time=when,
            asset_selection=self.selection,
        )  # fmt: skip
        self.cursor = r.cursor
        out = {}
        for res in r.results:
            if res.true_subset.size and isinstance(res.key, dg.AssetKey):
                keys = (
                    res.true_subset.expensively_compute_partition_keys()
                    if res.true_subset.is_partitioned
                    else {None}
                )
                out[res.key.to_user_string()] = set(keys)
        return out


def _run(inst, defs, keys: list[str], partition: str | None = None, failing: set[str] = frozenset()) -> None:
    """Records what one run of ``keys`` (one partition) records, as Dagster's executor does: the run (its asset
    selection, partition tag and end status), each asset's materialization in that run, then each of its checks'
    evaluations in the same run, aimed at that materialization (``target_materialization_data``, as
    ``AssetCheckResult.to_asset_check_evaluation`` builds it; ``partition`` None because these checks are
    unpartitioned even on fold-partitioned assets). ``failing``: the checks (``"asset.check"``) that fail.

    Why not runless events: a check evaluation that is neither in its materialization's run nor names its target
    materialization is matched to it by ``materialization.timestamp < check row's create_timestamp``, and SQLite
    stores that timestamp in whole seconds, so a check recorded in the same second as its materialization counted
    as stale (not passed): the eager cascade then stopped at random after ``folds``."""
    graph = defs.resolve_asset_graph()
    checks = {c: f"{c.asset_key.to_user_string()}.{c.name}" in failing
              for c in graph.get_check_keys_for_assets({K(k) for k in keys})}  # fmt: skip
    failed = any(f and graph.get(c).blocking for c, f in checks.items())
    run = dg.DagsterRun(
        job_name="__automation_test__", run_id=uuid.uuid4().hex, asset_selection=frozenset(K(k) for k in keys),
        asset_check_selection=frozenset(checks), tags={"dagster/partition": partition} if partition else {},
        status=dg.DagsterRunStatus.FAILURE if failed else dg.DagsterRunStatus.SUCCESS,
    )  # fmt: skip
    inst.add_run(run)

    def event(event_type: DagsterEventType, data) -> None:
        inst.report_dagster_event(
            dg.DagsterEvent(event_type.value, run.job_name, event_specific_data=data), run_id=run.run_id
        )

    for k in keys:
        event(
            DagsterEventType.ASSET_MATERIALIZATION,
            StepMaterializationData(dg.AssetMaterialization(k, partition=partition)),
        )
        mat = inst.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=K(k), asset_partitions=[partition] if partition else None), limit=1
        ).records[0]
        assert mat.run_id == run.run_id
        target = AssetCheckEvaluationTargetMaterializationData(
            storage_id=mat.storage_id, run_id=run.run_id, timestamp=mat.timestamp
        )
        for c, fails in checks.items():
            if c.asset_key == K(k):
                ev = dg.AssetCheckEvaluation(
                    asset_key=c.asset_key, check_name=c.name, passed=not fails, target_materialization_data=target,
                    blocking=graph.get(c).blocking,
                )  # fmt: skip
                event(DagsterEventType.ASSET_CHECK_EVALUATION, ev)


def test_conditions_sit_where_the_policy_says(defs_cfg):
    defs, cfg = defs_cfg
    graph = defs.resolve_asset_graph()
    label = {k.to_user_string(): (graph.get(k).automation_condition.get_label() if graph.get(k).automation_condition
                                  else None) for k in graph.get_all_asset_keys()}  # fmt: skip
    for key in (RAW_DATASET, LABELS, FOLDS, FOUNDATION_ENCODER):
        assert label[key] is None, key  # requested by the raw-data sensor
    for key in (*preprocessing_asset_keys(cfg), TEST_WINDOWS, ENSEMBLE_MODEL, EVALUATION_REPORT):
        assert label[key] == AFTER_UPSTREAM, key
    for m in cfg.enabled_models():
        assert label[model_asset_key(m)] == "models"
    sensor = defs.resolve_sensor_def(AUTOMATION_SENSOR)
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert defs.resolve_sensor_def(RAW_DATA_SENSOR).default_status == dg.DefaultSensorStatus.STOPPED
    running = build_definitions(cfg.model_copy(update={"operations": cfg.operations.model_copy(
        update={"automation": "running"})}))  # fmt: skip
    assert running.resolve_sensor_def(AUTOMATION_SENSOR).default_status == dg.DefaultSensorStatus.RUNNING


def test_cascade_runs_stage_after_stage_and_a_failing_blocking_check_stops_it(small):
    defs, cfg = small
    folds, models = cfg.fold_names, [model_asset_key(m) for m in cfg.enabled_models()]
    prep = preprocessing_asset_keys(cfg)
    ensemble = ensemble_asset_keys(cfg)
    with dg.instance_for_test() as inst:
        tick = Tick(defs, inst, dg.AssetSelection.groups(PREPROCESSING, MODELS, ENSEMBLE))
        assert tick() == {}  # nothing materialized: nothing requested (eager waits for missing inputs)
        _run(inst, defs, [RAW_DATASET, LABELS, FOLDS])  # the data job, as the raw-data sensor requests it
        _run(inst, defs, [FOUNDATION_ENCODER])
        req = tick()
        # every fold's preprocessing after folds, the test set after labels; nothing further yet
        assert req == {**{k: set(folds) for k in prep}, TEST_WINDOWS: {None}}
        assert tick() == {}  # requested once (since_last_handled), not again on the next tick

        # one run per fold; the first fold fails a blocking check of its windows, the later folds pass
        for f in folds:
            _run(inst, defs, prep, f, failing={f"{EEG_WINDOWS}.finite"} if f == folds[0] else set())
        _run(inst, defs, [TEST_WINDOWS])
        # every model fold reads every preprocessed fold: no fold of a model reading the windows is trained
        graph = defs.resolve_asset_graph()
        on_windows = {m for m in models if K(EEG_WINDOWS) in graph.get(K(m)).parent_keys}
        assert on_windows and on_windows != set(models)
        assert tick() == {m: set(folds) for m in models if m not in on_windows}
        assert tick() == {}  # the sensor's next tick, before anything ran
        _run(inst, defs, prep, folds[0])  # the fold is preprocessed again and passes: every model (again)
        assert tick() == {m: set(folds) for m in models}

        # a model's first fold fails beats_prior and the folds after it pass: the ensemble is not requested
        failing = f"{models[0]}.beats_prior"
        for m in models:
            for f in folds:
                _run(inst, defs, [m], f, failing={failing} if (m, f) == (models[0], folds[0]) else set())
        assert ENSEMBLE_MODEL not in tick()
        assert ENSEMBLE_MODEL not in tick()  # not on a later tick either
        # the fold is retrained and passes: now the ensemble stage runs (its report in the same run)
        _run(inst, defs, [models[0]], folds[0])
        req = tick()
        assert ENSEMBLE_MODEL in req and EVALUATION_REPORT in req
        assert not set(req) & {*models, *prep}
        _run(inst, defs, ensemble)
        assert tick() == {}

        # a retrain of another model's last fold fails (the newest evaluation fails): the ensemble waits again
        _run(inst, defs, [models[-1]], folds[-1], failing={f"{models[-1]}.beats_prior"})
        assert ENSEMBLE_MODEL not in tick()
        _run(inst, defs, [models[-1]], folds[-1])
        assert ENSEMBLE_MODEL in tick()


def test_weekly_retrain_on_the_cron_tick(small):
    defs, cfg = small
    assert cfg.operations.retrain_cron == "0 3 * * 0"
    models = [model_asset_key(m) for m in cfg.enabled_models()]
    graph = defs.resolve_asset_graph()
    selection = dg.AssetSelection.groups(MODELS)
    with dg.instance_for_test() as inst:
        inputs = selection.upstream(depth=1).resolve(graph) - selection.resolve(graph)
        partitioned = sorted(k.to_user_string() for k in inputs if graph.get(k).partitions_def)
        for key in sorted(k.to_user_string() for k in inputs if not graph.get(k).partitions_def):
            _run(inst, defs, [key])
        for f in cfg.fold_names:
            _run(inst, defs, partitioned, f)
            for m in models:  # the models exist and are current: only the cron asks for a retrain
                _run(inst, defs, [m], f)
        tick = Tick(defs, inst, selection)
        now = dt.datetime.now(dt.UTC)  # the next Saturday noon, after every event above (as on a real instance)
        saturday = (now + dt.timedelta(days=(5 - now.weekday()) % 7 or 7)).replace(hour=12, minute=0, second=0,
                                                                                    microsecond=0)  # fmt: skip
        tick(saturday)
        assert tick(saturday + dt.timedelta(hours=1)) == {}
        req = tick(saturday + dt.timedelta(hours=16))  # Sunday 04:00 UTC: after the 03:00 tick
        assert req == {m: set(cfg.fold_names) for m in models}
        assert tick(saturday + dt.timedelta(hours=17)) == {}  # once per tick
