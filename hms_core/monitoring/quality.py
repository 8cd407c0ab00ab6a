"""Prediction quality once expert votes arrive for logged windows.

Labels are CSV files dropped into ``monitoring.quality.labels_dir`` (default ``<root>/monitoring/labels``): a
``window_id`` column (the id the log recorded and the service returned, ``<request_id>:<i>``) and the six vote
columns ``seizure_vote ... other_vote`` (counts, as in ``train.csv``). A window labelled in several files takes the
votes of the file that sorts last by name (a corrected export replaces an earlier one; votes are not added up).

For the windows of one day that have votes: the competition KL (:func:`hms_core.metrics.kl_divergence`) of the
logged probabilities against the vote shares, the top-label ECE
(:func:`hms_core.ensemble.calibration.expected_calibration_error`) and the accuracy against the consensus. KL
depends on the number of votes (a window with one vote has a floor of 0 but a noisy target), so the day's KL is
compared with the reference's out-of-fold KL *expected for the day's vote counts*: the reference KL of each
vote-count bucket weighted by the day's share of that bucket (buckets the reference lacks fall back to its overall
KL). ``ratio = KL / expected``; warn / error at ``kl_warn_ratio`` / ``kl_error_ratio``, and at ``ece_warn`` /
``ece_error``; fewer than ``min_labelled`` labelled windows and the day is not judged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hms_core.constants import CLASSES, VOTE_COLUMNS
from hms_core.monitoring.drift import ERROR, INSUFFICIENT, OK, WARN
from hms_core.monitoring.reference import Reference

__all__ = ["LabelsError", "QualityReport", "compute_quality", "expected_kl", "read_labels"]


class LabelsError(ValueError):
    """A labels CSV is unreadable or lacks a column; the message names the file and what is expected."""


def read_labels(folder: str | os.PathLike[str]) -> pd.DataFrame:
    """Every ``*.csv`` in ``folder``: ``window_id`` + the six vote columns + ``labels_file``; one row per window
    (the last file by name wins). An empty frame when the folder does not exist or holds no CSV."""
    folder = Path(folder)
    files = sorted(folder.glob("*.csv")) if folder.is_dir() else []
    cols = ["window_id", *VOTE_COLUMNS]
    frames = []
    for f in files:
        try:
            df = pd.read_csv(f, dtype={"window_id": str})
        except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
            raise LabelsError(f"labels file {f} is not a readable CSV ({e})") from None
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise LabelsError(
                f"labels file {f} lacks the columns {missing}; expected window_id and {list(VOTE_COLUMNS)}"
            )
        votes = df[list(VOTE_COLUMNS)].apply(pd.to_numeric, errors="coerce")
        bad = votes.isna().any(axis=1) | (votes < 0).any(axis=1) | (votes.sum(axis=1) <= 0)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise LabelsError(
                f"labels file {f}, row {row + 2}: votes must be non-negative numbers with at least one vote, got "
                f"{df.loc[df.index[row], list(VOTE_COLUMNS)].tolist()}"
            )
        frames.append(pd.DataFrame({"window_id": df["window_id"].astype(str)} | {c: votes[c] for c in VOTE_COLUMNS}
                                   | {"labels_file": f.name}))  # fmt: skip
    if not frames:
        return pd.DataFrame(columns=[*cols, "labels_file"])
    out = pd.concat(frames, ignore_index=True)
    return out.drop_duplicates("window_id", keep="last").reset_index(drop=True)


def expected_kl(ref: Reference | None, votes: np.ndarray) -> float | None:
    """The reference's out-of-fold KL for a day whose windows have ``votes`` (total votes per window): the
    per-bucket reference KL weighted by the day's bucket shares (the overall KL where a bucket is empty)."""
    overall = ref.metrics.get("kl") if ref is not None else None
    if overall is None:
        return None
    buckets = ref.metrics.get("kl_by_votes") or []
    if not buckets:
        return float(overall)
    v = np.asarray(votes, dtype=np.float64)
    total = 0.0
    for b in buckets:
        m = (v >= b["lo"]) & ((v < b["hi"]) if b["hi"] is not None else True)
        total += m.sum() * (b["kl"] if b["kl"] is not None else overall)
    covered = sum(((v >= b["lo"]) & ((v < b["hi"]) if b["hi"] is not None else True)).sum() for b in buckets)
    total += (len(v) - covered) * overall
    return float(total / max(len(v), 1))


@dataclass
class QualityReport:
    n_logged: int
    n_labelled: int
    kl: float | None
    expected_kl: float | None
    ratio: float | None
    ece: float | None
    accuracy: float | None
    status: str
    reasons: list[str] = field(default_factory=list)
    per_class: pd.DataFrame | None = None  # class, n (consensus), recall, mean predicted probability
    thresholds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "reasons": self.reasons, "n_logged": self.n_logged,
            "n_labelled": self.n_labelled, "kl": self.kl, "expected_kl": self.expected_kl, "ratio": self.ratio,
            "ece": self.ece, "accuracy": self.accuracy, "thresholds": self.thresholds,
        }  # fmt: skip


def compute_quality(
    ref: Reference | None, rows: pd.DataFrame, labels: pd.DataFrame, quality_cfg: Any
) -> QualityReport:
    """Quality of a day's logged ``rows`` (with ``window_id`` and ``prob_*``) against ``labels`` (from
    :func:`read_labels`); ``quality_cfg`` is a :class:`hms_core.config.QualityConfig`. Without a reference (or one
    without out-of-fold targets) the KL ratio is not judged; the ECE still is."""
    from hms_core.ensemble.calibration import expected_calibration_error
    from hms_core.metrics import kl_divergence, votes_to_probabilities
    from hms_core.monitoring.log import PROB_COLUMNS

    q = quality_cfg
    thresholds = {"kl_warn_ratio": q.kl_warn_ratio, "kl_error_ratio": q.kl_error_ratio, "ece_warn": q.ece_warn,
                  "ece_error": q.ece_error, "min_labelled": q.min_labelled}  # fmt: skip
    n_logged = len(rows)
    if n_logged == 0 or labels.empty or "window_id" not in rows.columns:
        joined = pd.DataFrame()
    else:
        joined = rows.merge(labels, on="window_id", how="inner")
    n = len(joined)
    if n < q.min_labelled:
        why = f"{n} of {n_logged} logged windows have expert votes; {q.min_labelled} needed (monitoring.quality.min_labelled)"
        return QualityReport(n_logged, n, None, None, None, None, None, INSUFFICIENT, [why], thresholds=thresholds)
    p = joined[list(PROB_COLUMNS)].to_numpy(np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    votes = joined[list(VOTE_COLUMNS)].to_numpy(np.float64)
    y = votes_to_probabilities(votes)
    kl = kl_divergence(y, p)
    exp = expected_kl(ref, votes.sum(axis=1))
    ratio = kl / exp if exp else None
    ece = expected_calibration_error(p, y)
    consensus = y.argmax(axis=1)
    predicted = p.argmax(axis=1)
    per_class = pd.DataFrame([
        {"class": c, "n": int((consensus == k).sum()),
         "recall": float((predicted[consensus == k] == k).mean()) if (consensus == k).any() else float("nan"),
         "mean_prob": float(p[:, k].mean()), "vote_share": float(y[:, k].mean())}
        for k, c in enumerate(CLASSES)
    ])  # fmt: skip
    status, reasons = OK, []
    if ratio is not None and ratio >= q.kl_error_ratio:
        status = ERROR
        reasons.append(f"KL {kl:.3f} is {ratio:.2f}x the reference {exp:.3f} (error at {q.kl_error_ratio:g}x)")
    elif ratio is not None and ratio >= q.kl_warn_ratio:
        status = WARN
        reasons.append(f"KL {kl:.3f} is {ratio:.2f}x the reference {exp:.3f} (warn at {q.kl_warn_ratio:g}x)")
    if ece >= q.ece_error:
        status = ERROR
        reasons.append(f"ECE {ece:.3f} >= {q.ece_error:g}")
    elif ece >= q.ece_warn:
        status = ERROR if status == ERROR else WARN
        reasons.append(f"ECE {ece:.3f} >= {q.ece_warn:g}")
    return QualityReport(n_logged, n, kl, exp, ratio, ece, float((predicted == consensus).mean()), status, reasons,
                         per_class, thresholds)  # fmt: skip
