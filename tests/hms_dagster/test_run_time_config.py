"""One config at run time, code versions that follow only result-changing keys (seen through `hms status`),
DAGSTER_HOME, and a stage asked for before its inputs exist."""

from __future__ import annotations

import json

import dagster as dg
import pytest
from typer.testing import CliRunner

from hms_core.config import load_config
from hms_dagster.cli import app
from hms_dagster.definitions import build_definitions
from hms_dagster.instance import prepare_instance
from hms_dagster.resources import CONFIG_HASH_TAG
from hms_dagster.runner import MissingUpstreamError, run_pipeline
from hms_dagster.stages import (
    DATA,
    DATA_JOB,
    EEG_WINDOWS,
    FOLDS,
    LABELS,
    MODELS,
    MODELS_JOB,
    PREPROCESSING,
    PREPROCESSING_JOB,
    RAW_DATASET,
    TEST_WINDOWS,
)
from tests.hms_dagster.conftest import write_config

runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1"})
#: Two models, one per trainer framework, keep the module's one training run short.
MODELS_CFG = {"efficientnet": {"enabled": False}, "sparcnet": {"enabled": False}}
TWO_MODELS = ("model_resnet1d_gru", "model_lightgbm")


def _status(path) -> dict:
    out = runner.invoke(app, ["status", "--json", "--config", str(path)])
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


def _states(path) -> dict[tuple[str, str | None], str]:
    return {(a["asset"], a["partition"]): a["state"] for a in _status(path)["assets"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Data, preprocessing (every fold) and both models on fold_0, run from a config whose YAML file is edited and
    then deleted after the config was loaded: the runs use the loaded config, never the file."""
    root = tmp_path_factory.mktemp("runtime_config")
    path = write_config(root, models=MODELS_CFG)
    cfg = load_config(path)
    write_config(root, models=MODELS_CFG, workspace={"root": str(root / "elsewhere")})  # edited after loading
    assert run_pipeline(cfg, DATA).ok
    path.unlink()  # and then deleted
    events: list[str] = []
    report = run_pipeline(cfg, MODELS, fold=0, with_upstream=True, on_event=lambda k, pr, i: events.append(k))
    assert report.ok, report.failed
    # --with-upstream brought the data stage (fresh: skipped) and every preprocessing fold in before the models
    assert [pr.job.name for pr in report.skipped] == [DATA_JOB]
    done = [(pr.job.name, pr.partition) for pr, _, _ in report.done]
    assert done[-1] == (MODELS_JOB, "fold_0")
    assert {(PREPROCESSING_JOB, f) for f in cfg.fold_names} <= set(done)
    assert (cfg.processed_dir / "folds.parquet").exists() and not (root / "elsewhere").exists()
    return root, cfg


def _variant(root, **sections):
    return write_config(root, models=MODELS_CFG, **sections)


def test_unchanged_config_is_fresh_where_materialized(trained):
    root, cfg = trained
    states = _states(_variant(root))
    assert states[(RAW_DATASET, None)] == states[(FOLDS, None)] == states[(TEST_WINDOWS, None)] == "fresh"
    assert all(states[(EEG_WINDOWS, f)] == "fresh" for f in cfg.fold_names)
    assert states[("model_resnet1d_gru", "fold_0")] == states[("model_lightgbm", "fold_0")] == "fresh"
    assert states[("model_lightgbm", "fold_1")] == "missing"


def test_workers_batch_sizes_threads_and_logging_leave_everything_fresh(trained):
    root, cfg = trained
    before = _states(_variant(root))  # (each variant rewrites the one config file: read it before the next)
    path = _variant(
        root,
        dataset={"processing_batch_size": 7, "check_files": "none", "synthetic": {"workers": 2}},
        preprocessing={"workers": 2},
        training={"torch_threads": 2, "num_workers": 1, "gradient_checkpointing": True},
        logging={"wandb_mode": "disabled", "mlflow_tracking_uri": None, "mlflow_experiment": "x", "log_dir": "l2"},
    )
    fresh = {k for k, v in before.items() if v == "fresh"}
    expected = {(a, None) for a in (RAW_DATASET, LABELS, FOLDS, TEST_WINDOWS)}
    expected |= {(EEG_WINDOWS, f) for f in cfg.fold_names} | {(m, "fold_0") for m in TWO_MODELS}
    assert expected <= fresh
    after = _states(path)
    assert {k: after[k] for k in fresh} == dict.fromkeys(fresh, "fresh")


def test_a_filter_change_makes_preprocessing_and_every_model_stale(trained):
    root, cfg = trained
    rows = _status(_variant(root, preprocessing={"eeg": {"filter_high": 40}}))["assets"]
    states = {(a["asset"], a["partition"]): a for a in rows}
    for asset in (RAW_DATASET, LABELS, FOLDS):
        assert states[(asset, None)]["state"] == "fresh"
    assert states[(TEST_WINDOWS, None)]["state"] == "stale"
    for fold in cfg.fold_names:
        assert states[(EEG_WINDOWS, fold)]["state"] == "stale"
        assert "code version" in states[(EEG_WINDOWS, fold)]["reason"]
    assert states[("model_resnet1d_gru", "fold_0")]["state"] == "stale"
    assert states[("model_lightgbm", "fold_0")]["state"] == "stale"


def test_torch_optimiser_keys_do_not_make_lightgbm_stale(trained):
    root, _ = trained
    states = _states(_variant(root, training={"learning_rate": 0.01, "weight_decay": 0.1, "batch_size": 8}))
    assert states[("model_resnet1d_gru", "fold_0")] == "stale"
    assert states[("model_lightgbm", "fold_0")] == "fresh"
    assert states[(EEG_WINDOWS, "fold_0")] == "fresh"
    states = _states(_variant(root, training={"seed": 1}))  # the row plan and the booster read the seed
    assert states[("model_resnet1d_gru", "fold_0")] == states[("model_lightgbm", "fold_0")] == "stale"


def test_a_run_launched_with_another_config_stops_before_any_work(tmp_path):
    cfg = load_config(write_config(tmp_path))
    job = build_definitions(cfg).resolve_job_def(DATA_JOB)
    with dg.instance_for_test() as inst:
        result = job.execute_in_process(
            instance=inst, tags={CONFIG_HASH_TAG: "000000000000"}, raise_on_error=False
        )
        assert not result.success
        text = " ".join(str(ev.message) for ev in result.all_events) + " ".join(
            str(ev.event_specific_data) for ev in result.all_events
        )
    assert "changed after this run's job was loaded" in text and "Reload" in text
    assert not cfg.raw_dir.exists()


def test_status_says_which_dagster_home_is_used(tmp_path, monkeypatch):
    path = write_config(tmp_path)
    data = _status(path)
    assert (
        data["dagster_home"] == str(tmp_path / "ws" / "dagster_home") and data["dagster_home_source"] == "default"
    )

    path = write_config(tmp_path, workspace={"dagster_home": str(tmp_path / "from_config")})
    data = _status(path)
    assert data["dagster_home"] == str(tmp_path / "from_config") and data["dagster_home_source"] == "config"
    assert "workspace.dagster_home" in data["dagster_home_reason"]

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "from_env"))
    data = _status(path)
    assert data["dagster_home"] == str(tmp_path / "from_env") and data["dagster_home_source"] == "environment"
    assert (tmp_path / "from_env" / "dagster.yaml").exists()
    out = runner.invoke(app, ["status", "--config", str(path)])
    assert out.exit_code == 0, out.output
    assert f"DAGSTER_HOME: {tmp_path / 'from_env'} (environment: $DAGSTER_HOME is set" in out.output


def test_a_stage_before_its_inputs_names_them_and_the_stage_to_run(tiny_config):
    out = runner.invoke(app, ["run", "--stage", PREPROCESSING, "--config", str(tiny_config)])
    assert out.exit_code == 2, out.output
    assert "Stage 'preprocessing' reads assets that are not materialized yet" in out.output
    for asset in (RAW_DATASET, LABELS, FOLDS):
        assert asset in out.output
    assert "Run `hms run --stage data` first" in out.output and "--with-upstream" in out.output

    out = runner.invoke(app, ["run", "--stage", MODELS, "--fold", "1", "--config", str(tiny_config)])
    assert out.exit_code == 2, out.output
    assert "eeg_windows (fold_0, fold_1, fold_2)" in out.output and TEST_WINDOWS in out.output
    assert "Run `hms run --stage data` then `hms run --stage preprocessing` first" in out.output

    cfg = load_config(tiny_config)
    with pytest.raises(MissingUpstreamError) as e:
        run_pipeline(cfg, PREPROCESSING)
    assert e.value.stages == [DATA] and set(e.value.missing) == {RAW_DATASET, LABELS, FOLDS}
    assert not prepare_instance(cfg).get_runs()  # nothing was launched
