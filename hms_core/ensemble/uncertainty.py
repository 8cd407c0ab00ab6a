"""Per-window uncertainty, figures with patient-bootstrap intervals, and the ranked review list.

- Predictive entropy ``H(p)`` of each window against the entropy of its rater votes ``H(y)``: their Spearman rank
  correlation says whether the model is unsure where the raters disagree.
- With ``n`` votes even a perfect model scores about ``(classes present - 1) / (2 n)`` KL (the bias of the
  empirical vote distribution), so figures are split by vote count (:data:`VOTE_BUCKETS`) and each bucket carries
  that floor beside the model's KL.
- Intervals resample *patients* (rows of one patient are correlated), :func:`bootstrap_mean`.
- :func:`review_list`: the windows where the model most disagrees with the raters (largest per-window KL) or is
  most unsure (largest predictive entropy), with the reason for each, for a clinical researcher to look at.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from hms_core.constants import CLASSES, HIGH_VOTE_THRESHOLD, N_CLASSES
from hms_core.metrics import kl_divergence_rows

__all__ = ["VOTE_BUCKETS", "bootstrap_mean", "entropy", "kl_by_vote_bucket", "review_list", "uncertainty_summary",
           "vote_floor"]  # fmt: skip

#: Vote-count buckets (inclusive lower, exclusive upper); the high-vote bucket starts at HIGH_VOTE_THRESHOLD.
VOTE_BUCKETS: tuple[tuple[int, int | None], ...] = ((1, 2), (2, 4), (4, HIGH_VOTE_THRESHOLD),
                                                    (HIGH_VOTE_THRESHOLD, 20), (20, None))  # fmt: skip
MAX_ENTROPY = float(np.log(N_CLASSES))


def entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=1)


def vote_floor(targets: np.ndarray, votes: np.ndarray) -> np.ndarray:
    """About the KL a perfect model still scores on a row with ``votes`` votes: ``(classes present - 1) / (2n)``."""
    present = (np.asarray(targets) > 0).sum(axis=1)
    return (present - 1) / (2.0 * np.maximum(np.asarray(votes, dtype=np.float64), 1))


def bootstrap_mean(values: np.ndarray, groups: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:  # fmt: skip
    """Mean of ``values`` and its ``level`` percentile interval from resampling ``groups`` (patients) with
    replacement; each resample weighs a patient's rows by how often the patient was drawn."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.bincount(g, values)
    counts = np.bincount(g).astype(np.float64)
    draws = np.random.default_rng(seed).multinomial(len(sums), np.full(len(sums), 1.0 / len(sums)), n_resamples)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (draws @ sums) / (draws @ counts)
    means = means[np.isfinite(means)]
    a = (1 - level) / 2
    return float(values.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def _bucket_label(lo: int, hi: int | None) -> str:
    return f">={lo}" if hi is None else (f"{lo}" if hi == lo + 1 else f"{lo}-{hi - 1}")


def kl_by_vote_bucket(targets: np.ndarray, probs: np.ndarray, votes: np.ndarray, patients: np.ndarray,
                      n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Per vote-count bucket: rows, mean KL with its patient-bootstrap interval, the perfect-model floor."""
    kl = kl_divergence_rows(targets, probs)
    floor = vote_floor(targets, votes)
    out = []
    for lo, hi in VOTE_BUCKETS:
        m = (votes >= lo) & ((votes < hi) if hi is not None else True)
        mean, low, high = bootstrap_mean(kl[m], patients[m], n_resamples, seed)
        out.append({"votes": _bucket_label(lo, hi), "rows": int(m.sum()), "kl": mean, "kl_low": low,
                    "kl_high": high, "floor": float(floor[m].mean()) if m.any() else float("nan")})  # fmt: skip
    return pd.DataFrame(out)


def uncertainty_summary(targets: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Spearman correlation between predictive entropy and rater-vote entropy (all rows)."""
    h_pred, h_vote = entropy(probs), entropy(targets)
    rho = spearmanr(h_pred, h_vote).statistic if len(h_pred) > 2 and h_vote.std() > 0 else float("nan")
    return {"entropy_spearman": float(rho), "mean_predictive_entropy": float(h_pred.mean()),
            "mean_vote_entropy": float(h_vote.mean())}  # fmt: skip


def _fmt(p: np.ndarray) -> str:
    return " ".join(f"{c}={v:.2f}" for c, v in zip(CLASSES, p))


def review_list(rows: pd.DataFrame, targets: np.ndarray, probs: np.ndarray, size: int = 50) -> pd.DataFrame:
    """The ``size`` windows most worth a second look: half ranked by disagreement with the raters (per-window KL),
    half by predictive entropy (ties and overlaps filled from the other ranking), each with its reason.

    ``rows`` needs ``eeg_id`` and ``total_votes``; ``eeg_label_offset_seconds``, ``patient_id`` are kept if there.
    """
    kl = kl_divergence_rows(targets, probs)
    h = entropy(probs)
    h_vote = entropy(targets)
    by_kl, by_h = list(np.argsort(-kl, kind="stable")), list(np.argsort(-h, kind="stable"))
    picked: dict[int, str] = {}
    n = min(size, len(kl))
    while len(picked) < n:
        for order, why in ((by_kl, "disagree"), (by_h, "unsure")):
            while order and order[0] in picked:
                order.pop(0)
            if order and len(picked) < n:
                picked[int(order.pop(0))] = why
    cons, pred = targets.argmax(axis=1), probs.argmax(axis=1)
    out = []
    for rank, (i, why) in enumerate(picked.items(), start=1):
        if why == "disagree":
            reason = (
                f"disagrees with the raters: KL {kl[i]:.2f}; raters say {CLASSES[cons[i]]} "
                f"({targets[i, cons[i]]:.0%}), model says {CLASSES[pred[i]]} ({probs[i, pred[i]]:.0%})"
            )
        else:
            reason = (
                f"unsure: predictive entropy {h[i]:.2f} of at most {MAX_ENTROPY:.2f} nats "
                f"(rater-vote entropy {h_vote[i]:.2f})"
            )
        out.append({
            "rank": rank, "eeg_id": int(rows["eeg_id"].iloc[i]),
            "offset_s": float(rows["eeg_label_offset_seconds"].iloc[i])
            if "eeg_label_offset_seconds" in rows.columns else float("nan"),
            "patient_id": rows["patient_id"].iloc[i] if "patient_id" in rows.columns else None,
            "votes": int(rows["total_votes"].iloc[i]), "voted": _fmt(targets[i]), "predicted": _fmt(probs[i]),
            "rater_consensus": CLASSES[cons[i]], "model_class": CLASSES[pred[i]], "kl": float(kl[i]),
            "entropy": float(h[i]), "vote_entropy": float(h_vote[i]) + 0.0, "why": reason,
        })  # fmt: skip
    return pd.DataFrame(out)
