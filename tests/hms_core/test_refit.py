"""The refit on every fold (hms_core.training.refit): its length from the fold runs, every fold's rows, no epoch
chosen on rows it trained on; the config key that asks for it."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import yaml

from hms_core.config import ConfigError, TrainingConfig, load_config
from hms_core.partition import load_partition
from hms_core.training.refit import (
    REFIT_FILE,
    RefitPlan,
    _median_count,
    plan_refit,
    refit_job,
    refit_training,
    run_refit,
    stage_counts,
)


def test_stage_counts_and_the_median_follow_early_stopped_stages():
    # stage 1 planned as epochs 0-5, early-stopped after epoch 3: stage 2 starts at epoch 6; best at epoch 7
    history = [{"epoch": e, "stage": 1} for e in range(4)] + [{"epoch": e, "stage": 2} for e in range(6, 9)]
    assert stage_counts(history, 7, 2) == [4, 2]
    assert stage_counts(history, 2, 2) == [3, 0]
    assert _median_count([2, 3]) == 3 and _median_count([1, 2, 9]) == 2 and _median_count([4]) == 4
    plan = RefitPlan("x", "pytorch", {"fold_0": [4, 2]}, (4, 2), 1.5, "rule")
    t = refit_training(TrainingConfig(epochs=10, stage2_epochs=3, min_steps=125), plan)
    assert (t.epochs, t.stage2_epochs, t.warmup_epochs, t.min_steps) == (4, 2, 1.5, 0)


def test_a_torch_refit_trains_every_fold_row_for_the_folds_best_epochs(trained_workspace, tmp_path):
    cfg = trained_workspace.cfg
    plan = plan_refit(cfg, "sparcnet")
    for fold in cfg.fold_names:  # one stage: epochs up to the best = best_epoch + 1 of each fold run
        best = json.loads((cfg.models_dir / "sparcnet" / fold / "metrics.json").read_text())["best_epoch"]
        assert plan.fold_counts[fold] == [int(best) + 1]
    assert plan.stage_epochs == (_median_count([c[0] for c in plan.fold_counts.values()]),)
    job = replace(refit_job(cfg, "sparcnet", plan), out_dir=tmp_path / "refit")
    assert job.train_dirs == tuple(cfg.processed_dir / "windows" / f for f in cfg.fold_names)
    assert not job.early_stopping and job.training.epochs == plan.epochs and job.training.min_steps == 0
    out = run_refit(job, plan)
    hist = out.result.history
    assert [h["epoch"] for h in hist] == list(range(plan.epochs))  # no early stop, no stretching
    assert all("val_kl" not in h for h in hist)  # nothing evaluated on rows it trains on
    assert out.result.metrics["best_epoch"] == plan.epochs - 1  # the last epoch's weights are the model
    assert out.rows == sum(len(load_partition(d)) for d in job.train_dirs)
    doc = json.loads((tmp_path / "refit" / REFIT_FILE).read_text())
    assert doc["epochs"] == plan.epochs and doc["rows"] == out.rows and doc["fold_counts"] == plan.fold_counts
    assert (tmp_path / "refit" / "final" / "weights.pt").is_file()


def test_a_lightgbm_refit_keeps_the_median_of_the_folds_best_rounds(trained_workspace, tmp_path):
    from hms_core.training.predict import load_trained

    cfg = trained_workspace.cfg
    plan = plan_refit(cfg, "lightgbm")
    best = [int(json.loads((cfg.models_dir / "lightgbm" / f / "metrics.json").read_text())["best_epoch"])
            for f in cfg.fold_names]  # fmt: skip
    assert plan.stage_epochs == (_median_count(best),) and plan.warmup_epochs is None
    job = replace(refit_job(cfg, "lightgbm", plan), out_dir=tmp_path / "refit")
    assert job.model_cfg["n_estimators"] == plan.epochs
    out = run_refit(job, plan)
    booster = load_trained(tmp_path / "refit").model.booster
    assert booster.current_iteration() == plan.epochs  # every round kept: no early stopping on training rows
    assert out.result.history == []
    test = load_partition(cfg.processed_dir / "windows" / "test")
    p = load_trained(tmp_path / "refit").predict(test)
    assert p.shape == (len(test), 6) and np.allclose(p.sum(axis=1), 1)


def test_final_models_names_ensemble_members_and_folds_or_refit(tmp_path):
    def write(final_models) -> str:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"base": "tiny", "export": {"final_models": final_models}}))
        return str(path)

    cfg = load_config(write({"lightgbm": "refit", "sparcnet": "folds"}))
    assert cfg.refit_models() == ["lightgbm"]
    with pytest.raises(ConfigError, match=r"export.final_models: \['nosuch'\] are not ensemble members"):
        load_config(write({"nosuch": "refit"}))
    with pytest.raises(ConfigError, match=r"final_models.*refitt"):
        load_config(write({"lightgbm": "refitt"}))
