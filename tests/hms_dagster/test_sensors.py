"""The raw-data sensor on a copy of the trained tiny workspace: a changed recording requests raw_dataset, then
exactly its patient's fold (and the foundation encoder); the runs it asks for are executed for real and the
automation conditions then ask for every model fold. CSV changes request the data stage; files no CSV names,
raw_dataset alone. Timings are printed as RESULT lines."""

from __future__ import annotations

import time

import dagster as dg
import polars as pl

from hms_dagster.definitions import build_definitions
from hms_dagster.instance import prepare_instance
from hms_dagster.sensors import RAW_DATA_SENSOR, decode_cursor
from hms_dagster.stages import (
    DATA_JOB,
    FOUNDATION_JOB,
    PREPROCESSING_JOB,
    RAW_DATASET,
    TEST_PREPROCESSING_JOB,
    model_asset_key,
)
from tests.conftest import copy_workspace

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _rewrite(path) -> None:
    """The same recording written again with another compression: new size and mtime, same values."""
    pl.read_parquet(path).write_parquet(path, compression="gzip" if path.stat().st_size % 2 else "snappy",
                                        statistics=False)  # fmt: skip


class Sensor:
    def __init__(self, defs, instance):
        self.fn, self.defs, self.instance, self.cursor = (
            defs.resolve_sensor_def(RAW_DATA_SENSOR),
            defs,
            instance,
            None,
        )
        self.seconds: list[float] = []

    def tick(self) -> list[dg.RunRequest]:
        t0 = time.perf_counter()
        res = self.fn(dg.build_sensor_context(instance=self.instance, cursor=self.cursor, definitions=self.defs))
        self.seconds.append(time.perf_counter() - t0)
        self.cursor = res.cursor
        return list(res.run_requests or [])

    def launch(self, req: dg.RunRequest) -> float:
        """Execute a request as the daemon would (its job, partition, assets and tags), in this process."""
        t0 = time.perf_counter()
        result = self.defs.resolve_job_def(req.job_name).execute_in_process(
            instance=self.instance, partition_key=req.partition_key, asset_selection=req.asset_selection,
            tags={**req.tags, "dagster/run_key": req.run_key}, raise_on_error=False, run_config=QUIET,
        )  # fmt: skip
        assert result.success, req
        return time.perf_counter() - t0


def _summary(reqs) -> list[tuple]:
    return sorted((r.job_name, r.partition_key, tuple(k.to_user_string() for k in r.asset_selection or ()))
                  for r in reqs)  # fmt: skip


def test_changed_recording_requests_exactly_its_fold_then_the_models(trained_workspace, tmp_path):
    ws = copy_workspace(trained_workspace, tmp_path)
    cfg = ws.cfg
    defs = build_definitions(cfg)
    instance = prepare_instance(cfg)
    sensor = Sensor(defs, instance)
    assert sensor.tick() == []  # baseline: the folder is what raw_dataset last materialized
    assert sensor.tick() == []
    # the automation sensor's first tick: it records what is materialized (and requests nothing)
    automation_cursor = dg.evaluate_automation_conditions(defs=defs, instance=instance).cursor

    folds = pl.read_parquet(cfg.processed_dir / "folds.parquet")
    row = folds.filter(pl.col("fold") == 1).row(0, named=True)
    target = cfg.fold_names[1]
    _rewrite(cfg.raw_dir / "train_eegs" / f"{row['eeg_id']}.parquet")
    t_change = time.perf_counter()
    (req,) = sensor.tick()
    assert _summary([req]) == [(DATA_JOB, None, (RAW_DATASET,))]  # first validate the files
    assert sensor.tick() == []  # the fold waits for raw_dataset
    raw_s = sensor.launch(req)
    reqs = sensor.tick()
    expected = [(PREPROCESSING_JOB, target, ())]
    if cfg.foundation.enabled:  # it reads every recording
        expected.append((FOUNDATION_JOB, None, ()))
    assert _summary(reqs) == sorted(expected)
    assert all(r.tags["hms/trigger"] == "raw_data_changed" for r in reqs)
    prep = next(r for r in reqs if r.job_name == PREPROCESSING_JOB)
    prep_s = sensor.launch(prep)
    to_run_s = time.perf_counter() - t_change
    assert sensor.tick() == []  # requested once: the run keys and the cursor

    # declarative automation takes over: every model fold reads the re-preprocessed fold
    t0 = time.perf_counter()
    auto = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=automation_cursor)
    auto_s = time.perf_counter() - t0
    wanted = {model_asset_key(m) for m in cfg.enabled_models()}
    asked = {r.key.to_user_string(): r.true_subset.size for r in auto.results if r.true_subset.size}
    assert wanted <= set(asked), asked
    assert all(asked[m] == len(cfg.fold_names) for m in wanted)
    print(f"RESULT raw_sensor_tick_ms={1000 * max(sensor.seconds):.0f} raw_dataset_run_s={raw_s:.1f} "
          f"fold_preprocessing_run_s={prep_s:.1f} change_to_fold_materialized_s={to_run_s:.1f} "
          f"automation_tick_s={auto_s:.2f}")  # fmt: skip


def test_csv_versions_and_unreferenced_files(trained_workspace, tmp_path):
    ws = copy_workspace(trained_workspace, tmp_path)
    cfg = ws.cfg
    defs = build_definitions(cfg)
    sensor = Sensor(defs, prepare_instance(cfg))
    assert sensor.tick() == []

    # a file that no CSV row names: raw_dataset validates it, nothing else reads it
    src = next((cfg.raw_dir / "train_eegs").glob("*.parquet"))
    (cfg.raw_dir / "train_eegs" / "987654321.parquet").write_bytes(src.read_bytes())
    reqs = sensor.tick()
    assert _summary(reqs) == [(DATA_JOB, None, (RAW_DATASET,))]
    assert decode_cursor(sensor.cursor)[1] is None  # nothing waits for it

    # a changed test recording: raw_dataset, then the test set (and the encoder)
    test_eeg = pl.read_csv(cfg.raw_dir / "test.csv")["eeg_id"][0]
    _rewrite(cfg.raw_dir / "test_eegs" / f"{test_eeg}.parquet")
    assert _summary(sensor.tick()) == [(DATA_JOB, None, (RAW_DATASET,))]
    pending = decode_cursor(sensor.cursor)[1]
    assert pending.test and pending.folds == [] and pending.foundation == cfg.foundation.enabled

    # a new train.csv version: the whole data stage; its fold partitions follow `folds` by automation
    csv = cfg.raw_dir / "train.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")
    (req,) = sensor.tick()
    assert (req.job_name, req.partition_key, req.asset_selection) == (DATA_JOB, None, None)
    assert req.run_key.startswith("raw-") and req.run_key.endswith("-data")
    assert sensor.tick() == []  # same state: not requested again
    job_names = {j.name for j in defs.resolve_all_job_defs()}
    assert {DATA_JOB, PREPROCESSING_JOB, TEST_PREPROCESSING_JOB} <= job_names
