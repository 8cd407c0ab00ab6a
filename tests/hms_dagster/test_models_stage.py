"""The models stage through Dagster on the tiny profile, read from the shared trained workspace (every fold of
every enabled model, trained by ``run_pipeline(cfg, "models")``): asset metadata and checks per fold, the files in
the trainers' layout, MLflow and W&B runs. Training one fold only (``--fold``) is checked in test_run_time_config
(the other folds stay missing)."""

from __future__ import annotations

import json

import dagster as dg
import mlflow
import pandas as pd

from hms_core.constants import VOTE_COLUMNS
from hms_dagster.instance import prepare_instance


def test_models_stage_every_fold_end_to_end(trained_workspace):
    cfg = trained_workspace.cfg
    inst = prepare_instance(cfg)
    folds = pd.read_parquet(cfg.processed_dir / "folds.parquet")
    for name in cfg.enabled_models():
        key = dg.AssetKey(f"model_{name}")
        assert inst.get_materialized_partitions(key) == set(cfg.fold_names), name
        check_key = dg.AssetCheckKey(key, "beats_prior")
        checks = {  # run id -> the check's evaluation in that run (one fold per run)
            r.run_id: r.evaluation
            for r in inst.event_log_storage.get_asset_check_execution_history(check_key, limit=100)
        }
        for k, fold in enumerate(cfg.fold_names):
            (record,) = inst.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=[fold]), limit=1
            ).records
            meta = record.asset_materialization.metadata
            for field in ("val_kl", "val_kl_high_votes", "prior_kl", "accuracy", "n_params", "seconds", "epochs"):
                assert field in meta, (name, fold, field)
            assert 0 < meta["val_kl"].value < 20 and meta["prior_kl"].value > 0
            assert "learning_curve" in meta and "data:image/png;base64" in meta["learning_curve"].value
            oof = pd.read_parquet(cfg.models_dir / name / fold / "oof.parquet")
            assert len(oof) == int((folds["fold"] == k).sum()), (name, fold)
            probs = oof[list(VOTE_COLUMNS)].to_numpy()
            assert ((probs.sum(axis=1) - 1).__abs__() < 1e-4).all()
            saved = json.loads((cfg.models_dir / name / fold / "final" / "config.json").read_text())
            assert saved["preprocessing"] == cfg.preprocessing.model_dump(mode="json")
            test = pd.read_parquet(cfg.models_dir / name / fold / "test_pred.parquet")
            assert len(test) == cfg.dataset.synthetic.n_test
            ev = checks.get(record.run_id)  # the check of the run that materialized this fold
            assert ev is not None, (name, fold)
            assert ev.passed == (meta["val_kl"].value < meta["prior_kl"].value), (name, fold)

    mlflow.set_tracking_uri(cfg.mlflow_uri)
    runs = mlflow.search_runs(experiment_names=[cfg.logging.mlflow_experiment])
    fold_runs = runs[runs["tags.mlflow.runName"].str.contains("-fold_")]
    expected = {f"{m}-{f}" for m in cfg.enabled_models() for f in cfg.fold_names}
    assert set(fold_runs["tags.mlflow.runName"]) == expected and len(fold_runs) == len(expected)
    assert (runs["status"] == "FINISHED").all()
    assert fold_runs["metrics.final_val_kl"].notna().all() and fold_runs["metrics.final_prior_kl"].notna().all()
    assert list((cfg.root / "wandb").glob("offline-run-*")), "W&B offline runs are written under the workspace"
    for f in cfg.fold_names:
        assert len(list((cfg.logs_dir / "metrics").glob(f"*-{f}.jsonl"))) == len(cfg.enabled_models()), f
