"""The `hms` CLI: help, config errors, not-built stages, status, and the data stage end to end."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from hms_dagster.cli import app
from tests.hms_dagster.conftest import write_config

runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1"})


def test_help_lists_every_command_and_stage():
    out = runner.invoke(app, ["--help"])
    assert out.exit_code == 0
    for cmd in ("run", "status", "demo-data", "validate", "ui", "config"):
        assert cmd in out.output
    out = runner.invoke(app, ["run", "--help"])
    for word in ("--stage", "--config", "--resume", "--fold", "all", "preprocessing", "foundation", "export"):
        assert word in out.output


def test_invalid_config_names_key_value_and_allowed(tmp_path):
    path = write_config(tmp_path, preprocessing={"eeg": {"filter_low": 60, "filter_high": 40}})
    out = runner.invoke(app, ["config", "--config", str(path)])
    assert out.exit_code == 2
    assert "preprocessing.eeg" in out.output and "filter_low (60.0) must be below filter_high (40.0)" in out.output

    path = write_config(tmp_path, training={"epochz": 3})
    out = runner.invoke(app, ["run", "--stage", "data", "--config", str(path)])
    assert out.exit_code == 2 and "training.epochz" in out.output and "unknown key" in out.output

    path = write_config(tmp_path, logging={"wandb_mode": "sometimes"})
    out = runner.invoke(app, ["config", "--config", str(path)])
    assert out.exit_code == 2 and "logging.wandb_mode" in out.output and "'offline'" in out.output


def test_unknown_profile_is_a_clear_error():
    out = runner.invoke(app, ["config", "--config", "nosuchprofile.yaml"])
    assert out.exit_code == 2 and "does not exist" in out.output and "tiny" in out.output


def test_not_built_stage_says_so(tmp_path):
    path = write_config(tmp_path, export={"enabled": False})  # a stage with no enabled assets
    out = runner.invoke(app, ["run", "--stage", "export", "--config", str(path)])
    assert out.exit_code == 3
    assert "not built yet" in out.output and "no enabled assets" in out.output


def test_bad_fold_is_rejected(tiny_config):
    out = runner.invoke(app, ["run", "--stage", "models", "--fold", "7", "--config", str(tiny_config)])
    assert out.exit_code == 2 and "fold" in out.output


def test_status_on_a_fresh_workspace_is_all_missing(tiny_config):
    out = runner.invoke(app, ["status", "--json", "--config", str(tiny_config)])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    states = {(a["asset"], a["partition"]): a["state"] for a in data["assets"]}
    assert states[("raw_dataset", None)] == "missing"
    assert states[("eeg_windows", "fold_0")] == "missing"
    assert data["stages"]["export"] == "incomplete"
    assert data["stages"]["data"] == "incomplete"


def test_demo_data_then_validate_good_and_bad(tmp_path):
    out = tmp_path / "raw"
    res = runner.invoke(
        app, ["demo-data", "--out", str(out), "--patients", "4", "--seed", "3", "--workers", "1", "--test", "2"]
    )
    assert res.exit_code == 0, res.output
    assert (out / "train.csv").exists() and (out / "test.csv").exists()
    res = runner.invoke(app, ["validate", "--data", str(out)])
    assert res.exit_code == 0, res.output

    eegs = sorted((out / "train_eegs").glob("*.parquet"))
    eegs[0].unlink()  # missing file
    eegs[1].write_bytes(eegs[1].read_bytes()[:100])  # truncated file
    res = runner.invoke(app, ["validate", "--data", str(out), "--json"])
    assert res.exit_code == 1
    report = json.loads(res.output)
    files = {p["file"] for p in report["errors"]}
    assert any(eegs[0].name in f for f in files) and any(eegs[1].name in f for f in files)


def test_model_config_errors_are_all_reported(tmp_path):
    path = write_config(tmp_path, models={"resnet1d_gru": {"dropout": 2}, "xgboost": {}})
    out = runner.invoke(app, ["config", "--config", str(path)])
    assert out.exit_code == 2
    assert "models.resnet1d_gru.dropout: Input should be less than 1 (got 2)" in out.output
    assert "models.xgboost: unknown model" in out.output and "'lightgbm'" in out.output


def test_inspect_runs_the_serving_preprocessing_on_an_edf(tmp_path):
    import os

    import pyedflib

    edf = os.path.join(os.path.dirname(pyedflib.__file__), "tests", "data", "test_utf8.edf")  # real 1-channel EEG
    out = runner.invoke(app, ["inspect", edf, "--config", "tiny", "--json"])
    assert out.exit_code == 0, out.output
    info = json.loads(out.output)
    assert info["original_sfreq"] == 128.0 and info["channel_map"] == {"Fp1": "Fp1"}
    assert info["window_quality"]["n_missing_channels"] == 18 and info["usable_bipolar"] == 0
    assert info["shapes"]["bipolar"] == [16, 10000]

    strict = write_config(tmp_path, preprocessing={"eeg": {"missing_channels": "error"}})
    out = runner.invoke(app, ["inspect", edf, "--config", str(strict)])
    assert out.exit_code == 1 and "lacks channel(s)" in out.output and "'F3'" in out.output
