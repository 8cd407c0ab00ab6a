"""LightGBM on the features table with soft labels.

Soft labels: each training row is expanded into one weighted row per class with a non-zero vote fraction
(label = class, weight = vote fraction x row weight) and fitted with the multiclass objective. The multiclass
log-loss of these weighted rows is the cross-entropy against the vote distribution, so minimising it minimises
the KL divergence the competition scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hms_core.constants import N_CLASSES
from hms_core.io import write_text
from hms_core.models.registry import register_model


def expand_soft_labels(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """(n, d), (n, 6) fractions, optional (n,) weights -> expanded X, class labels, weights (zero fractions dropped)."""
    y = np.asarray(y, dtype=np.float64)
    w = np.ones(len(y)) if w is None else np.asarray(w, dtype=np.float64)
    rows, cls = np.nonzero(y > 0)
    return x[rows], cls.astype(np.int32), (y[rows, cls] * w[rows])


@register_model("lightgbm")
class LightGBMSoftClassifier:
    """Soft-label LightGBM classifier: ``fit(X, Y)`` with vote fractions, ``predict_proba(X) -> (n, 6)``."""

    name = "lightgbm"
    input_kind = "features"

    def __init__(self, n_estimators: int = 400, learning_rate: float = 0.05, num_leaves: int = 31,
                 min_child_samples: int = 20, subsample: float = 0.8, colsample_bytree: float = 0.8,
                 reg_lambda: float = 1.0, early_stopping_rounds: int = 50, num_threads: int = 0,
                 **signal: Any) -> None:  # fmt: skip
        self.hparams = dict(n_estimators=n_estimators, learning_rate=learning_rate, num_leaves=num_leaves,
                            min_child_samples=min_child_samples, subsample=subsample,
                            colsample_bytree=colsample_bytree, reg_lambda=reg_lambda,
                            early_stopping_rounds=early_stopping_rounds, num_threads=num_threads)  # fmt: skip
        self.booster: Any = None
        self.feature_names: list[str] | None = None
        self.history: list[dict[str, float]] = []

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, **self.hparams}

    def _params(self, seed: int) -> dict[str, Any]:
        h = self.hparams
        return {
            "objective": "multiclass", "num_class": N_CLASSES, "learning_rate": h["learning_rate"],
            "num_leaves": h["num_leaves"], "min_data_in_leaf": h["min_child_samples"],
            "bagging_fraction": h["subsample"], "bagging_freq": 1 if h["subsample"] < 1 else 0,
            "feature_fraction": h["colsample_bytree"], "lambda_l2": h["reg_lambda"], "seed": seed,
            "deterministic": True, "force_row_wise": True, "num_threads": h["num_threads"], "verbosity": -1,
        }  # fmt: skip

    def fit(self, x: np.ndarray, y: np.ndarray, x_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
            sample_weight: np.ndarray | None = None, seed: int = 0,
            feature_names: list[str] | None = None) -> LightGBMSoftClassifier:  # fmt: skip
        import lightgbm as lgb

        self.feature_names = list(feature_names) if feature_names is not None else None
        xe, ye, we = expand_soft_labels(np.asarray(x, dtype=np.float32), y, sample_weight)
        train = lgb.Dataset(xe, ye, weight=we, feature_name=self.feature_names or "auto", free_raw_data=False)
        valid_sets, callbacks, evals = [], [], {}
        if x_val is not None and y_val is not None:
            xv, yv, wv = expand_soft_labels(np.asarray(x_val, dtype=np.float32), y_val)
            valid_sets = [lgb.Dataset(xv, yv, weight=wv, reference=train)]
            callbacks = [lgb.early_stopping(self.hparams["early_stopping_rounds"], verbose=False),
                         lgb.record_evaluation(evals)]  # fmt: skip
        self.booster = lgb.train(self._params(seed), train, num_boost_round=self.hparams["n_estimators"],
                                 valid_sets=valid_sets, valid_names=["val"][: len(valid_sets)],
                                 callbacks=callbacks)  # fmt: skip
        ll = evals.get("val", {}).get("multi_logloss", [])
        self.history = [{"round": i + 1, "val_soft_logloss": float(v)} for i, v in enumerate(ll)]
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if self.booster is None:
            raise RuntimeError("LightGBMSoftClassifier.predict_proba called before fit() or load().")
        p = np.asarray(self.booster.predict(np.asarray(x, dtype=np.float32),
                                            num_iteration=self.booster.best_iteration or None))  # fmt: skip
        return p / p.sum(axis=1, keepdims=True)

    def n_params(self) -> int:
        return 0 if self.booster is None else int(self.booster.num_trees())

    def save(self, path: str | Path) -> Path:
        return write_text(path, self.booster.model_to_string(num_iteration=self.booster.best_iteration or None))

    def load(self, path: str | Path) -> LightGBMSoftClassifier:
        import lightgbm as lgb

        self.booster = lgb.Booster(model_str=Path(path).read_text())
        return self
