"""Stages materialized through the Dagster instance on the tiny profile: data, resume, staleness, bad input."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest

from hms_core.config import load_config
from hms_dagster.definitions import build_definitions
from hms_dagster.instance import prepare_instance
from hms_dagster.runner import run_pipeline
from hms_dagster.status import collect_status, status_summary
from tests.hms_dagster.conftest import write_config


def _states(cfg):
    inst = prepare_instance(cfg)
    return {(r.asset, r.partition): r.state for r in collect_status(cfg, build_definitions(cfg), inst)}


@pytest.fixture(scope="module")
def data_workspace(tmp_path_factory):
    """A tiny workspace whose data stage has run once (shared by the tests of this module)."""
    root = tmp_path_factory.mktemp("pipeline")
    cfg = load_config(write_config(root))
    report = run_pipeline(cfg, "data")
    assert report.ok, report.failed
    return root, cfg


def test_data_stage_materializes_with_checks(data_workspace):
    _, cfg = data_workspace
    inst = prepare_instance(cfg)
    states = _states(cfg)
    assert states[("raw_dataset", None)] == "fresh"
    assert states[("labels", None)] == "fresh"
    assert states[("folds", None)] == "fresh"
    labels = pl.read_parquet(cfg.processed_dir / "labels.parquet")
    folds = pl.read_parquet(cfg.processed_dir / "folds.parquet")
    assert labels.height == folds.height and labels["eeg_id"].is_unique().all()
    assert folds.group_by("patient_id").agg(pl.col("fold").n_unique())["fold"].max() == 1
    assert sorted(folds["fold"].unique().to_list()) == list(range(cfg.dataset.n_folds))
    # every check evaluation recorded on the instance passed
    for key, check in [
        ("raw_dataset", "files_valid"),
        ("labels", "vote_sums"),
        ("folds", "no_patient_in_two_folds"),
    ]:
        rec = inst.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey(key), check)]
        )[dg.AssetCheckKey(dg.AssetKey(key), check)]
        assert rec.evaluation.passed, (key, check)
    meta = inst.get_latest_materialization_event(dg.AssetKey("labels")).asset_materialization.metadata
    assert meta["rows"].value == labels.height and meta["patients"].value == labels["patient_id"].n_unique()
    assert (cfg.processed_dir / "config.resolved.yaml").exists()


def test_resume_skips_fresh_work(data_workspace):
    _, cfg = data_workspace
    report = run_pipeline(cfg, "data", resume=True)
    assert report.ok and not report.done and len(report.skipped) == 1


def test_config_change_makes_only_dependent_assets_stale(data_workspace):
    root, _ = data_workspace
    cfg2 = load_config(write_config(root, dataset={"fold_seed": 7}))
    states = _states(cfg2)
    assert states[("raw_dataset", None)] == "fresh"
    assert states[("labels", None)] == "fresh"
    assert states[("folds", None)] == "stale"
    assert (
        status_summary(collect_status(cfg2, build_definitions(cfg2), prepare_instance(cfg2)))["stages"]["data"]
        == "incomplete"
    )
    report = run_pipeline(cfg2, "data", resume=True)
    assert report.ok and len(report.done) == 1
    assert _states(cfg2)[("folds", None)] == "fresh"


def test_bad_input_fails_naming_the_file_and_keeps_good_outputs(tmp_path):
    cfg = load_config(write_config(tmp_path))
    assert run_pipeline(cfg, "data").ok
    labels_before = (cfg.processed_dir / "labels.parquet").read_bytes()
    eeg = min((cfg.raw_dir / "train_eegs").glob("*.parquet"))
    eeg.write_bytes(eeg.read_bytes()[: eeg.stat().st_size // 3])  # truncated file
    report = run_pipeline(cfg, "data")
    assert not report.ok
    pr, _, error = report.failed
    assert pr.job.name == "data_job"
    assert eeg.name in error
    assert (cfg.processed_dir / "labels.parquet").read_bytes() == labels_before
    states = _states(cfg)
    assert states[("raw_dataset", None)] == "failed"


def test_missing_data_without_credentials_or_synthetic_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "nokaggle"))
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(write_config(tmp_path, dataset={"allow_synthetic": False}))
    report = run_pipeline(cfg, "data")
    assert not report.ok
    error = report.failed[2]
    assert "kaggle.json" in error and "KAGGLE_USERNAME" in error and str(cfg.raw_dir) in error


def test_changed_synthetic_config_regenerates_the_data(tmp_path):
    cfg = load_config(write_config(tmp_path))
    assert run_pipeline(cfg, "data").ok
    n_before = pl.read_parquet(cfg.processed_dir / "labels.parquet")["patient_id"].n_unique()
    cfg2 = load_config(
        write_config(tmp_path, dataset={"synthetic": {"n_patients": 6, "eegs_per_patient": [2, 3]}})
    )
    assert _states(cfg2)[("raw_dataset", None)] == "stale"
    assert run_pipeline(cfg2, "data", resume=True).ok
    labels = pl.read_parquet(cfg2.processed_dir / "labels.parquet")
    assert labels["patient_id"].n_unique() == 6 != n_before
    referenced = {f"{i}.parquet" for i in labels["eeg_id"].to_list()}
    assert referenced <= {p.name for p in (cfg2.raw_dir / "train_eegs").glob("*.parquet")}
    assert len(list((cfg2.raw_dir / "train_eegs").glob("*.parquet"))) == labels["eeg_id"].n_unique()


def test_data_stage_from_a_kaggle_download(tmp_path, monkeypatch):
    """source: kaggle — the client (faked: no network here) returns the competition zip; the data stage
    verifies, extracts, marks it complete and builds labels and folds from it."""
    import zipfile

    from hms_core import kaggle
    from hms_core.config import SyntheticConfig
    from hms_core.synthetic import generate_dataset

    src = tmp_path / "competition"
    generate_dataset(src, SyntheticConfig(n_patients=6, eegs_per_patient=(2, 3), n_test=2, seed=5, workers=1))
    (src / "synthetic_manifest.json").unlink()  # a real download carries no generator manifest
    calls = []

    def fake_download(competition, download_dir, quiet=False):
        calls.append(competition)
        download_dir.mkdir(parents=True, exist_ok=True)
        z = download_dir / f"{competition}.zip"
        with zipfile.ZipFile(z, "w") as zf:
            for f in sorted(src.rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(src).as_posix())
        return z

    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    monkeypatch.setattr(kaggle, "_kaggle_download", fake_download)
    cfg = load_config(write_config(tmp_path, dataset={"source": "kaggle", "allow_synthetic": False}))
    report = run_pipeline(cfg, "data")
    assert report.ok, report.failed
    assert calls == [cfg.dataset.kaggle_competition]
    assert kaggle.raw_dir_complete(cfg.raw_dir)
    labels = pl.read_parquet(cfg.processed_dir / "labels.parquet")
    assert labels["patient_id"].n_unique() == 6
    meta = prepare_instance(cfg).get_latest_materialization_event(dg.AssetKey("raw_dataset")).asset_materialization
    assert meta.metadata["source"].value == "kaggle"
    # the next run finds the complete download and does not download again
    assert run_pipeline(cfg, "data").ok and len(calls) == 1


def test_parallel_fold_runs_give_the_serial_files(trained_workspace, tmp_path):
    """The models stage with its fold runs in two worker processes writes the same predictions, bit for bit, as one
    run after another in the runner's process (each training seeds itself and runs one torch thread): the shared
    workspace's stage ran in one mode, this test runs the other on the same partitions."""
    import os

    import pandas as pd

    from hms_dagster.instance import PID_TAG, usable_cores
    from hms_dagster.stages import MODELS_JOB

    if usable_cores() < 2:
        pytest.skip("one usable CPU core: fold runs cannot run two at a time")
    base = trained_workspace.cfg
    inst = prepare_instance(base)
    runs = inst.get_runs(dg.RunsFilter(job_name=MODELS_JOB, statuses=[dg.DagsterRunStatus.SUCCESS]))
    workers = {r.tags[PID_TAG] for r in runs}
    mode = 1 if len(workers) >= 2 else 2  # the mode the shared workspace did not use
    name = "resnet1d_gru"  # one torch model keeps the serial stage short
    (tmp_path / "serial").mkdir()
    cfg = load_config(write_config(
        tmp_path / "serial", models={m: {"enabled": m == name} for m in base.models}, foundation={"enabled": False},
        dataset={"raw_data_path": str(base.raw_dir), "processed_data_path": str(base.processed_dir)},
        logging={"mlflow_tracking_uri": None, "wandb_mode": "disabled"},
    ))  # fmt: skip
    report = run_pipeline(cfg, "models", parallel=mode, require_upstream=False)
    assert report.ok, report.failed
    pids = set(report.pids.values())
    assert len(report.done) == len(cfg.fold_names) and report.parallel == mode
    assert pids == {os.getpid()} if mode == 1 else (len(pids) == 2 and os.getpid() not in pids)
    serial = sorted((cfg.models_dir / name).rglob("*.parquet"))
    assert len(serial) == 2 * len(cfg.fold_names)  # oof + test predictions per fold
    for f in serial:
        rel = f.relative_to(cfg.models_dir)
        pd.testing.assert_frame_equal(
            pd.read_parquet(f), pd.read_parquet(base.models_dir / rel), check_exact=True, obj=str(rel)
        )
