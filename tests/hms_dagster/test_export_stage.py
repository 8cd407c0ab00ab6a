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


def test_a_member_set_to_refit_is_packaged_as_one_engine_that_runs_torch_free(trained_workspace, tmp_path):
    """``export.final_models: {<a blend member>: refit}``: the export stage (CLI) builds ``refit_<member>``, and the
    package holds one engine for that member instead of one per fold, verified, within parity of the torch ensemble
    of the refit (the blend fitted on the fold models' out-of-fold predictions applied to it), run without torch."""
    import subprocess
    import sys
    import textwrap

    import numpy as np

    from hms_core.config import load_config
    from hms_core.export import load_package
    from hms_core.export.package import batch_from_partition
    from hms_core.partition import load_partition
    from hms_dagster.definitions import build_definitions
    from hms_dagster.stages import EXPORT_JOB, refit_asset_key

    ws = copy_workspace(trained_workspace, tmp_path / "refit")
    kept = json.loads((ws.cfg.ensemble_dir / "ensemble.json").read_text())["kept_members"]
    member = kept[0]
    path = _with_export(ws, members="kept", final_models={member: "refit"})
    cfg = load_config(path)
    job = build_definitions(cfg).resolve_job_def(EXPORT_JOB)  # what the UI launches: the export job / group
    assert dg.AssetKey(refit_asset_key(member)) in job.asset_layer.selected_asset_keys
    out = runner.invoke(app, ["run", "--stage", "export", "--config", path])
    assert out.exit_code == 0, out.output
    ev = prepare_instance(cfg).get_latest_materialization_event(dg.AssetKey(refit_asset_key(member)))
    meta = ev.asset_materialization.metadata
    assert meta["rows"].value == sum(
        len(load_partition(cfg.processed_dir / "windows" / f)) for f in cfg.fold_names
    )
    pkg = load_package(cfg.models_dir / "deployments")
    m = pkg.member(member)
    assert m["folds"] == ["refit"] and m["final"] == "refit" and pkg.meta["refit_members"] == [member]
    assert sorted(p.name for p in (pkg.path / "engines" / member).iterdir()) == sorted(
        f"refit.{prec}.onnx" for prec in m["engines"]
    )
    assert m["refit"]["epochs"] == (meta.get("epochs") or meta["boosting_rounds"]).value
    assert f"`{member}` is one refit on every fold" in (pkg.path / "model_card.md").read_text()
    manifest = json.loads((pkg.path / "manifest.json").read_text())["files"]
    assert f"engines/{member}/refit.fp32.onnx" in manifest
    for asset, check in [("onnx_engines", "fp32_parity"), ("deployment_package", "manifest_verified"),
                         ("deployment_package", "matches_torch_ensemble")]:  # fmt: skip
        assert _check(cfg, asset, check).passed, (asset, check)
    # the package's blend of the refit, torch-free, equals the in-process one
    part = load_partition(cfg.processed_dir / "windows" / "test")
    batch = batch_from_partition(part)
    np.savez(tmp_path / "b.npz", bipolar=batch.bipolar, **{f"spec_{t}": a for t, a in batch.spectrograms.items()})
    batch.features.to_parquet(tmp_path / "f.parquet")
    code = textwrap.dedent(f"""
        import json, sys
        from types import SimpleNamespace
        import numpy as np, pandas as pd
        import hms_core.export
        z = np.load({str(tmp_path / "b.npz")!r})
        b = SimpleNamespace(bipolar=z["bipolar"], features=pd.read_parquet({str(tmp_path / "f.parquet")!r}),
                            spectrograms={{k[5:]: z[k] for k in z.files if k.startswith("spec_")}})
        pred = hms_core.export.load_package({str(pkg.path)!r}).predict_batch(b, precision="best")
        print(json.dumps({{"probs": pred.probs.tolist(), "torch": "torch" in sys.modules}}))
    """)
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["torch"] is False
    np.testing.assert_allclose(np.asarray(got["probs"]), pkg.predict_batch(batch, "best").probs, atol=1e-7, rtol=0)
