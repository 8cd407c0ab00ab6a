"""The trainer of the gradient-boosting framework (``lightgbm``): one fit on the features table.

The row plan and stages are the torch trainer's: the rows of the last stage (the high-vote rows when
``training.stage2_epochs`` > 0, else every row with its low-vote weight) are fitted; boosting early-stops on the
validation rows with at least :data:`~hms_core.constants.HIGH_VOTE_THRESHOLD` votes (all rows when there are
fewer than :data:`MIN_EARLY_STOPPING_ROWS`). Each boosting round's validation loss is logged as an epoch. With
``FitContext.early_stopping=False`` (a refit) every one of the model's ``n_estimators`` rounds is kept.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hms_core.io import write_json
from hms_core.models.registry import create_model
from hms_core.partition import FEATURES_FILE
from hms_core.training import distributed
from hms_core.training.fold import FitContext, FoldData, FoldResult, fold_metrics, val_ids, write_fold_outputs
from hms_core.training.inputs import feature_columns, feature_matrix

__all__ = ["MIN_EARLY_STOPPING_ROWS", "fit"]

#: Fewer high-vote validation rows than this: early-stop on all validation rows instead.
MIN_EARLY_STOPPING_ROWS = 10


def fit(data: FoldData, ctx: FitContext) -> FoldResult:
    cfg = ctx.cfg
    cols = feature_columns(data.train[0].features())
    if not cols:
        raise ValueError(f"{data.train[0].path / FEATURES_FILE} has no numeric feature columns")
    flat = data.flat_rows()
    x = np.concatenate([feature_matrix(p, cols) for p in data.train])[flat]
    y = np.concatenate([p.targets for p in data.train])[flat]
    last = data.stages[-1]  # stage 2 (high-vote rows) if configured, else weighted rows
    mask, w = last.mask, last.weights
    x_val = feature_matrix(data.val, cols)
    y_val, v_val = data.val.targets, data.val.total_votes
    hv = data.val_high_votes
    es_rows = hv if hv.sum() >= MIN_EARLY_STOPPING_ROWS else np.ones(len(hv), bool)
    model = create_model(ctx.model_name, **ctx.model_cfg)
    t = time.perf_counter()
    es_x, es_y = (x_val[es_rows], y_val[es_rows]) if ctx.early_stopping else (None, None)  # refit: every round
    model.fit(x[mask], y[mask], es_x, es_y, sample_weight=w[mask], seed=cfg.seed, feature_names=cols)
    fit_s = time.perf_counter() - t
    oof = model.predict_proba(x_val)
    test_pred = model.predict_proba(feature_matrix(data.test, cols)) if data.test is not None else None
    metrics = fold_metrics(y_val, oof, v_val, data.prior)
    best = int(model.booster.best_iteration or model.booster.current_iteration())
    metrics.update(epochs=float(model.booster.current_iteration()), best_epoch=float(best),
                   n_params=float(model.n_params()), train_samples_per_s=float(mask.sum() / max(fit_s, 1e-9)))  # fmt: skip
    history = [{"epoch": h["round"], "val_soft_logloss": h["val_soft_logloss"]} for h in model.history]
    paths: dict[str, Path] = {}
    if distributed.context().is_main:
        final = ctx.out_dir / "final"
        paths["weights"] = model.save(final / "model.txt")
        config = {"model": model.get_config(), "input_kind": ctx.spec.input_kind,
                  "training": cfg.model_dump(mode="json"), "preprocessing": ctx.preprocessing,
                  "feature_names": cols, "weights_file": "model.txt", "prior": data.prior.tolist(),
                  "metrics": metrics}  # fmt: skip
        paths["config"] = write_json(final / "config.json", config)
        paths.update(write_fold_outputs(ctx.out_dir, data, oof, test_pred))
        for h in history:
            ctx.log_epoch(int(h["epoch"]), h)
    if ctx.progress is not None:
        ctx.progress(1, 1)
    return FoldResult(ctx.model_name, oof, val_ids(data.val), test_pred, metrics, history, paths)
