"""Calibration: a temperature and a per-class bias on log-probabilities, and how calibrated a prediction is.

``calibrated = softmax(log p / T + b)``: the one-member case of
:class:`~hms_core.ensemble.combiners.LogLinearCombiner` (its weight is ``1 / T``), fitted to minimise KL on
out-of-fold predictions. The expected calibration error is the top-label one against soft targets: rows are binned
by their confidence (largest predicted probability) and each bin compares the mean confidence with the mean vote
fraction of the predicted class (the probability that a rater agrees with the prediction).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hms_core.ensemble.combiners import LogLinearCombiner

__all__ = ["Calibrator", "expected_calibration_error", "reliability_bins"]

N_BINS = 10


@dataclass
class Calibrator:
    temperature: float = 1.0
    bias: np.ndarray | None = None

    @classmethod
    def fit(cls, probs: np.ndarray, targets: np.ndarray) -> Calibrator:
        ll = LogLinearCombiner(members=["ensemble"], max_weight=20.0).fit(np.asarray(probs)[None], targets)
        inv_t = max(float(ll.weights[0]), 1e-3)
        return cls(temperature=1.0 / inv_t, bias=ll.bias)

    def predict(self, probs: np.ndarray) -> np.ndarray:
        ll = LogLinearCombiner(
            members=["ensemble"], weights=np.array([1.0 / self.temperature]),
            bias=np.zeros(probs.shape[1]) if self.bias is None else self.bias,
        )  # fmt: skip
        return ll.predict(np.asarray(probs)[None])

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "bias": None if self.bias is None else self.bias.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibrator:
        bias = d.get("bias")
        return cls(float(d["temperature"]), None if bias is None else np.asarray(bias, dtype=np.float64))


def reliability_bins(probs: np.ndarray, targets: np.ndarray, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """Per confidence bin: row count, mean confidence, mean vote fraction of the predicted class."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    pred = probs.argmax(axis=1)
    conf = probs[np.arange(len(probs)), pred]
    agree = targets[np.arange(len(targets)), pred]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, n_bins) / count
        mean_agree = np.bincount(idx, agree, n_bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "agreement": mean_agree}


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = N_BINS) -> float:
    """Top-label ECE against soft targets: ``sum_bins n_b / n * |confidence_b - agreement_b|``."""
    b = reliability_bins(probs, targets, n_bins)
    used = b["count"] > 0
    return float(
        (b["count"][used] * np.abs(b["confidence"][used] - b["agreement"][used])).sum() / b["count"].sum()
    )
