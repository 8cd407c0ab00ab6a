"""The models stage through Dagster on the tiny profile: one fold, every enabled model, MLflow and W&B runs."""

from __future__ import annotations

import json

import dagster as dg
import mlflow
import pandas as pd

from hms_core.config import load_config
from hms_core.constants import VOTE_COLUMNS
from hms_dagster.instance import prepare_instance
from hms_dagster.runner import run_pipeline
from tests.hms_dagster.conftest import write_config


def test_models_stage_one_fold_end_to_end(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    cfg = load_config(write_config(tmp_path))
    assert run_pipeline(cfg, "data").ok
    assert run_pipeline(cfg, "preprocessing").ok
    report = run_pipeline(cfg, "models", fold=1)
    assert report.ok, report.failed
    assert [pr.partition for pr, _, _ in report.done] == ["fold_1"]

    inst = prepare_instance(cfg)
    folds = pd.read_parquet(cfg.processed_dir / "folds.parquet")
    n_val = int((folds["fold"] == 1).sum())
    for name in cfg.enabled_models():
        key = dg.AssetKey(f"model_{name}")
        assert inst.get_materialized_partitions(key) == {"fold_1"}
        meta = inst.get_latest_materialization_event(key).asset_materialization.metadata
        for field in ("val_kl", "val_kl_high_votes", "prior_kl", "accuracy", "n_params", "seconds", "epochs"):
            assert field in meta, (name, field)
        assert 0 < meta["val_kl"].value < 20 and meta["prior_kl"].value > 0
        assert "learning_curve" in meta and "data:image/png;base64" in meta["learning_curve"].value
        oof = pd.read_parquet(cfg.models_dir / name / "fold_1" / "oof.parquet")
        assert len(oof) == n_val
        probs = oof[list(VOTE_COLUMNS)].to_numpy()
        assert ((probs.sum(axis=1) - 1).__abs__() < 1e-4).all()
        saved = json.loads((cfg.models_dir / name / "fold_1" / "final" / "config.json").read_text())
        assert saved["preprocessing"] == cfg.preprocessing.model_dump(mode="json")
        test = pd.read_parquet(cfg.models_dir / name / "fold_1" / "test_pred.parquet")
        assert len(test) == cfg.dataset.synthetic.n_test
        ev = inst.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(key, "beats_prior")]
        )[dg.AssetCheckKey(key, "beats_prior")]
        assert ev is not None and ev.evaluation is not None
        assert ev.evaluation.passed == (meta["val_kl"].value < meta["prior_kl"].value)

    mlflow.set_tracking_uri(cfg.mlflow_uri)
    runs = mlflow.search_runs(experiment_names=[cfg.logging.mlflow_experiment])
    assert set(runs["tags.mlflow.runName"]) == {f"{m}-fold_1" for m in cfg.enabled_models()}
    assert (runs["status"] == "FINISHED").all()
    assert runs["metrics.final_val_kl"].notna().all() and runs["metrics.final_prior_kl"].notna().all()
    assert list((cfg.root / "wandb").glob("offline-run-*")), "W&B offline runs are written under the workspace"
    assert list((cfg.logs_dir / "metrics").glob("*-fold_1.jsonl"))
