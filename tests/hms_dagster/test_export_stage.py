"""The export stage from the CLI on a copy of the trained workspace: a new package with its checks; a parity failure
stops it, naming the engines."""

from __future__ import annotations

import json

import dagster as dg
import yaml
from typer.testing import CliRunner

from hms_dagster.cli import app
from hms_dagster.instance import prepare_instance
from tests.conftest import copy_workspace

runner = CliRunner()


def _with_export(ws, **keys) -> str:
    data = yaml.safe_load(ws.config_path.read_text())
    data["export"] = {**data.get("export", {}), **keys}
    ws.config_path.write_text(yaml.safe_dump(data))
    return str(ws.config_path)


def _check(cfg, asset: str, name: str):
    key = dg.AssetCheckKey(dg.AssetKey(asset), name)
    return prepare_instance(cfg).event_log_storage.get_latest_asset_check_execution_by_key([key])[key].evaluation


def test_export_stage_from_the_cli_builds_a_verified_package(deployment_package, trained_workspace, tmp_path):
    from hms_core.config import load_config
    from hms_core.export import load_package

    ws = copy_workspace(trained_workspace, tmp_path / "ok")
    path = _with_export(ws, members="kept", precisions=["fp32"])
    out = runner.invoke(app, ["run", "--stage", "export", "--config", path])
    assert out.exit_code == 0, out.output
    cfg = load_config(path)
    latest = json.loads((cfg.models_dir / "deployments" / "latest.json").read_text())
    assert latest["version"] != deployment_package.name  # a new version beside the copied one
    pkg = load_package(cfg.models_dir / "deployments")
    assert pkg.member_names == pkg.blend_members and all("int8" not in m["engines"] for m in pkg.meta["members"])
    for asset, check in [("onnx_engines", "fp32_parity"), ("onnx_engines", "int8_tolerance"),
                         ("deployment_package", "manifest_verified"), ("deployment_package", "matches_torch_ensemble"),
                         ("deployment_package", "int8_ensemble_kl")]:  # fmt: skip
        assert _check(cfg, asset, check).passed, (asset, check)
    status = runner.invoke(app, ["status", "--json", "--config", path])
    data = json.loads(status.output)
    assert data["stages"]["export"] == "complete"


def test_an_engine_over_the_parity_tolerance_stops_the_export_naming_it(
    deployment_package, trained_workspace, tmp_path
):
    ws = copy_workspace(trained_workspace, tmp_path / "bad")
    path = _with_export(ws, members="kept", precisions=["fp32"], fp32_tolerance=1e-12)
    before = (ws.cfg.models_dir / "deployments" / "latest.json").read_text()
    out = runner.invoke(app, ["run", "--stage", "export", "--config", path])
    assert out.exit_code != 0
    kept = json.loads((ws.cfg.ensemble_dir / "ensemble.json").read_text())["kept_members"]
    assert "fp32_parity" in out.output and f"{kept[0]}/fold_0" in out.output and "fp32_tolerance" in out.output
    assert (ws.cfg.models_dir / "deployments" / "latest.json").read_text() == before  # no new package
    engines = json.loads((ws.cfg.models_dir / "export" / "engines.json").read_text())
    assert all(not r["deployed"] and "fp32_tolerance" in r["reason"] for r in engines["records"]
               if r["precision"] == "fp32")  # fmt: skip
