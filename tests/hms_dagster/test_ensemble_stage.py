"""The ensemble stage through Dagster (runner + job + assets) over constructed member outputs on disk.

The members' files are written in the trainers' exact layout (``hms_core.ensemble.testing``), so the stage runs
in seconds without training; ``require_upstream=False`` because the model assets were not materialized on this
instance (their files were written directly).
"""

from __future__ import annotations

import dagster as dg
import mlflow
import pandas as pd
from mlflow import MlflowClient

from hms_core.config import load_config
from hms_core.constants import VOTE_COLUMNS
from hms_core.ensemble.testing import write_member_outputs
from hms_dagster.assets.ensemble import CHECK
from hms_dagster.instance import prepare_instance
from hms_dagster.runner import MissingUpstreamError, run_pipeline
from hms_dagster.stages import (
    ENSEMBLE_MODEL,
    EVALUATION_REPORT,
    NOT_BUILT,
    REGISTERED_ENSEMBLE,
    SUBMISSION,
    ensemble_asset_keys,
)
from tests.hms_dagster.conftest import write_config


def _check(inst, key: str):
    ck = dg.AssetCheckKey(dg.AssetKey(key), CHECK)
    return inst.event_log_storage.get_latest_asset_check_execution_by_key([ck])[ck]


def test_ensemble_stage_materializes_ensemble_report_submission_and_registry(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    cfg = load_config(write_config(tmp_path))
    assert "ensemble" not in NOT_BUILT
    assert ensemble_asset_keys(cfg) == [ENSEMBLE_MODEL, EVALUATION_REPORT, SUBMISSION, REGISTERED_ENSEMBLE]
    with_upstream_missing = None
    try:
        run_pipeline(cfg, "ensemble")
    except MissingUpstreamError as e:  # no model was materialized on this instance
        with_upstream_missing = e
    assert with_upstream_missing is not None and "model_" in str(with_upstream_missing)

    names = cfg.ensemble_members()
    write_member_outputs(cfg.root, names, n_rows=300, n_folds=cfg.dataset.n_folds, n_test=4)
    report = run_pipeline(cfg, "ensemble", require_upstream=False)
    assert report.ok, report.failed
    inst = prepare_instance(cfg)
    for key in ensemble_asset_keys(cfg):
        assert inst.get_latest_materialization_event(dg.AssetKey(key)) is not None, key
    ev = _check(inst, ENSEMBLE_MODEL)
    assert ev.evaluation.passed
    meta = inst.get_latest_materialization_event(dg.AssetKey(ENSEMBLE_MODEL)).asset_materialization.metadata
    assert meta["ensemble_kl"].value <= meta["best_member_kl"].value
    assert "ensemble (nested CV)" in meta["kl_table"].value

    rmeta = inst.get_latest_materialization_event(dg.AssetKey(EVALUATION_REPORT)).asset_materialization.metadata
    for fig in (
        "confusion_matrix",
        "roc_pr",
        "reliability",
        "kl_by_votes",
        "weights",
        "examples",
        "per_fold_spread",
    ):
        assert "data:image/png;base64," in rmeta[fig].value, fig
    html = (cfg.ensemble_dir / "report" / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') >= 7
    assert "<script" not in html and "http://" not in html and "https://" not in html  # opens offline
    assert "mlflow_run_id" in rmeta and list((cfg.root / "wandb").glob("offline-run-*"))

    sub = pd.read_csv(cfg.ensemble_dir / "submission.csv")
    sample = pd.read_csv(cfg.raw_dir / "sample_submission.csv")
    assert list(sub.columns) == ["eeg_id", *VOTE_COLUMNS] and sub["eeg_id"].tolist() == sample["eeg_id"].tolist()

    mlflow.set_tracking_uri(cfg.mlflow_uri)
    client = MlflowClient(cfg.mlflow_uri)
    mv = client.get_model_version(cfg.ensemble.registered_model_name, "1")
    assert mv.tags["hms/members"] and any(t.startswith("hms/checkpoint/") for t in mv.tags)
    assert "hms/data_version/folds" in mv.tags
    arts = [a.path for a in client.list_artifacts(mv.run_id, "ensemble")]
    assert "ensemble/ensemble.json" in arts and "ensemble/submission.csv" in arts
    run = client.get_run(mv.run_id)
    assert (
        run.data.metrics["final_ensemble_kl"] == meta["ensemble_kl"].value
        or abs(run.data.metrics["final_ensemble_kl"] - meta["ensemble_kl"].value) < 1e-4
    )


def test_check_blocks_report_submission_and_registry_when_the_ensemble_is_worse(tmp_path, monkeypatch):
    """One member that is the exact vote distribution: refitting it (log-linear weight + bias on the other folds)
    can only add noise, so the nested ensemble is slightly worse than its member; the blocking check fails and
    nothing downstream is materialized."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    name = load_config("tiny").enabled_models()[-1]
    cfg = load_config(
        write_config(
            tmp_path,
            ensemble={"members": [name], "combiners": ["log_linear"], "calibration": False, "quality_gate": True},
        )
    )
    write_member_outputs(cfg.root, [name], n_rows=240, n_folds=cfg.dataset.n_folds, scales=[1.0], noises=[0.0])
    report = run_pipeline(cfg, "ensemble", require_upstream=False)
    assert not report.ok
    assert f"{CHECK} failed" in report.failed[2]
    inst = prepare_instance(cfg)
    assert inst.get_latest_materialization_event(dg.AssetKey(ENSEMBLE_MODEL)) is not None
    assert _check(inst, ENSEMBLE_MODEL).evaluation.passed is False
    for key in (EVALUATION_REPORT, SUBMISSION, REGISTERED_ENSEMBLE):
        assert inst.get_latest_materialization_event(dg.AssetKey(key)) is None, key
    assert not (cfg.ensemble_dir / "submission.csv").exists()

    # with the gate off (ensemble.quality_gate: false, as the tiny profile has it) the check only warns
    cfg = load_config(write_config(tmp_path, ensemble={"members": [name], "combiners": ["log_linear"],
                                                       "calibration": False, "quality_gate": False}))  # fmt: skip
    report = run_pipeline(cfg, "ensemble", require_upstream=False)
    assert report.ok, report.failed
    assert _check(prepare_instance(cfg), ENSEMBLE_MODEL).evaluation.passed is False
    assert (cfg.ensemble_dir / "submission.csv").exists()
