"""The whole code location loads, for every profile, and exposes what the CLI runs."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg
import pytest

from hms_core.config import load_config
from hms_dagster.definitions import build_definitions
from hms_dagster.stages import STAGE_ORDER, all_stage_jobs, stage_plan


@pytest.mark.parametrize("profile", ["tiny", "demo", "full"])
def test_definitions_load_for_every_profile(profile):
    cfg = load_config(profile)
    defs = build_definitions(cfg)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {
        "raw_dataset",
        "labels",
        "folds",
        "eeg_windows",
        "spectrograms",
        "eeg_features",
        "test_windows",
    } <= keys
    for name in cfg.enabled_models():
        assert f"model_{name}" in keys
    for job in all_stage_jobs(cfg):
        defs.resolve_job_def(job.name)
    windows = graph.get(dg.AssetKey("eeg_windows"))
    assert windows.partitions_def.get_partition_keys() == cfg.fold_names


def test_lineage_models_read_every_fold_of_their_input():
    cfg = load_config("tiny")
    graph = build_definitions(cfg).resolve_asset_graph()
    node = graph.get(dg.AssetKey("model_lightgbm"))
    assert dg.AssetKey("eeg_features") in node.parent_keys
    assert dg.AssetKey("eeg_windows") in graph.get(dg.AssetKey("model_resnet1d_gru")).parent_keys
    assert dg.AssetKey("spectrograms") in graph.get(dg.AssetKey("model_efficientnet")).parent_keys


def test_disabled_model_has_no_asset(tmp_path):
    from tests.hms_dagster.conftest import write_config

    cfg = load_config(write_config(tmp_path, models={"sparcnet": {"enabled": False}}))
    keys = {k.to_user_string() for k in build_definitions(cfg).resolve_asset_graph().get_all_asset_keys()}
    assert "model_sparcnet" not in keys and "model_lightgbm" in keys


def test_stage_plan_covers_every_stage():
    plan = stage_plan(load_config("tiny"))
    assert list(plan) == list(STAGE_ORDER)
    assert plan["data"] and plan["preprocessing"] and plan["models"]


def test_module_loads_like_dagster_dev_does(tiny_config):
    """`dagster dev -m hms_dagster.definitions` imports the module and finds the lazy `defs`."""
    code = (
        "import dagster as dg, hms_dagster.definitions as m; "
        "d = m.defs() if callable(m.defs) else m.defs; "
        "print(len(list(d.resolve_asset_graph().get_all_asset_keys())))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "HMS_CONFIG": str(tiny_config)},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip().splitlines()[-1]) >= 11


def test_hms_core_never_imports_dagster():
    code = (
        "import sys, pkgutil, importlib, hms_core; "
        "mods=[m.name for m in pkgutil.walk_packages(hms_core.__path__, 'hms_core.')]; "
        "[importlib.import_module(m) for m in mods if 'ddp' not in m]; "
        "print('dagster' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("profile", ["tiny", "full"])
def test_stage_jobs_select_their_asset_group(profile):
    """A job selected by asset group materializes exactly the assets the runner plans for it."""
    cfg = load_config(profile)
    defs = build_definitions(cfg)
    graph = defs.resolve_asset_graph()
    for job in all_stage_jobs(cfg):
        resolved = {k.to_user_string() for k in defs.resolve_job_def(job.name).asset_layer.executable_asset_keys}
        assert resolved == set(job.asset_keys), job.name
        if job.group is not None:
            assert {graph.get(dg.AssetKey(k)).group_name for k in resolved} == {job.group}, job.name
