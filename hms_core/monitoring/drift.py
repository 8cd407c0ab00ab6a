"""Drift of one day's logged windows against the training reference (:mod:`hms_core.monitoring.reference`).

Per monitored feature (and the predictions' entropy):

- **PSI**, the population stability index ``sum_i (c_i - r_i) ln(c_i / r_i)`` over the reference's quantile bins
  (``r_i`` training shares, ``c_i`` the day's, both with :data:`~hms_core.monitoring.reference.BIN_PSEUDOCOUNT`).
  It measures how large a shift is, whatever the sample size (0.1 / 0.25 are the usual "watch" / "act" marks).
- **KS**, the two-sample Kolmogorov-Smirnov test of the day's values against the reference sample. It says whether
  a shift is more than chance; tested at ``ks_alpha / n_features`` (Bonferroni), because ~60 features are tested
  every day.

A feature **warns** when its PSI reaches ``psi_warn`` and its KS test is significant, and has **drifted** (error)
when its PSI reaches ``psi_error`` and its KS test is significant: large enough to matter and not chance.

**Class mix**: the day's shares of predicted (argmax) classes against the out-of-fold class mix, as a PSI over the
six classes plus a chi-square goodness-of-fit test (at ``ks_alpha``); same warn / error rule.

**Sample size.** Under no drift, ``PSI`` is about ``chi2(k - 1) * (1/n + 1/N)`` for ``k`` bins, ``n`` windows of
the day and ``N`` of the reference (the PSI is, to second order, the chi-square distance between two multinomial
samples). :func:`min_windows_for_psi` is the smallest ``n`` at which the upper ``ks_alpha / n_features`` quantile
of that stays below ``psi_warn``: with 10 bins, ~60 features, ``psi_warn`` 0.1 and a large reference, about
340 windows. Fewer windows than that (``monitoring.drift.min_windows`` overrides it) and the day is not judged
(the check warns "insufficient"). How small a shift is found at a given size is measured by ``benchmarks/drift.py``.
Windows of one long recording are not independent: a day made of one patient's scan shows that patient, not
the population, and can drift for that reason alone (the report gives the number of requests beside the windows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from hms_core.constants import CLASSES, N_CLASSES
from hms_core.monitoring.reference import (
    BIN_PSEUDOCOUNT,
    ENTROPY,
    Reference,
    bin_proportions,
)

__all__ = [
    "ClassMixDrift",
    "DriftReport",
    "compute_drift",
    "feature_status",
    "min_windows_for_psi",
    "psi",
]

OK, WARN, ERROR, INSUFFICIENT = "ok", "warn", "error", "insufficient"
_RANK = {OK: 0, INSUFFICIENT: 1, WARN: 2, ERROR: 3}


def worst(*statuses: str) -> str:
    """The most severe of ``statuses`` (error > warn > insufficient > ok)."""
    return max(statuses, key=_RANK.__getitem__) if statuses else OK


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index between two vectors of bin shares (both positive, each summing to 1)."""
    r = np.asarray(reference, dtype=np.float64)
    c = np.asarray(current, dtype=np.float64)
    return float(((c - r) * np.log(c / r)).sum())


def min_windows_for_psi(
    n_bins: int, psi_warn: float, n_features: int = 1, alpha: float = 0.01, n_reference: float = math.inf
) -> int:
    """Smallest day size ``n`` at which an unshifted day's PSI stays below ``psi_warn`` with family-wise
    probability ``1 - alpha`` over ``n_features`` features: ``chi2_{1 - alpha/n_features}(n_bins - 1) * (1/n +
    1/n_reference) < psi_warn``. Raises when even an infinite day cannot get there (reference too small)."""
    from scipy.stats import chi2

    q = float(chi2.ppf(1.0 - alpha / max(n_features, 1), max(n_bins - 1, 1)))
    room = psi_warn - q / n_reference
    if room <= 0:
        raise ValueError(
            f"A reference of {n_reference:g} windows with {n_bins} bins cannot tell a PSI of {psi_warn:g} from "
            f"chance (its own noise is about {q / n_reference:.3f}); use fewer bins or a larger reference."
        )
    return math.ceil(q / room)


def feature_status(psi_value: float, p_value: float, psi_warn: float, psi_error: float, alpha: float) -> str:
    """``error`` / ``warn`` when the PSI reaches that threshold and the test is significant at ``alpha``."""
    if not (np.isfinite(psi_value) and np.isfinite(p_value)) or p_value >= alpha:
        return OK
    return ERROR if psi_value >= psi_error else WARN if psi_value >= psi_warn else OK


@dataclass
class ClassMixDrift:
    reference: np.ndarray  # (6,) out-of-fold shares of predicted classes
    current: np.ndarray  # (6,) the day's shares
    psi: float
    chi2_pvalue: float
    status: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": dict(zip(CLASSES, np.round(self.reference, 4).tolist())),
            "current": dict(zip(CLASSES, np.round(self.current, 4).tolist())),
            "psi": self.psi, "chi2_pvalue": self.chi2_pvalue, "status": self.status,
        }  # fmt: skip


@dataclass
class DriftReport:
    """A day's drift: per-feature table, class mix, and the verdict with its reasons."""

    n_windows: int
    n_requests: int
    min_windows: int
    features: pd.DataFrame  # feature, psi, ks_stat, ks_pvalue, n, ref_median, median, status (worst first)
    class_mix: ClassMixDrift | None
    status: str
    reasons: list[str] = field(default_factory=list)
    not_logged: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def drifted(self) -> list[str]:
        return self.features.loc[self.features["status"] == ERROR, "feature"].tolist()

    @property
    def warned(self) -> list[str]:
        return self.features.loc[self.features["status"] == WARN, "feature"].tolist()

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "reasons": self.reasons, "n_windows": self.n_windows,
            "n_requests": self.n_requests, "min_windows": self.min_windows, "drifted": self.drifted,
            "warned": self.warned, "not_logged": self.not_logged, "thresholds": self.thresholds,
            "class_mix": self.class_mix.to_dict() if self.class_mix else None,
            "max_psi": float(self.features["psi"].max()) if len(self.features) else None,
        }  # fmt: skip


def _class_mix(ref: Reference, predicted: np.ndarray, drift_cfg: Any) -> ClassMixDrift:
    from scipy.stats import chisquare

    counts = np.bincount(predicted, minlength=N_CLASSES).astype(np.float64)
    n = counts.sum()
    ref_counts = ref.class_mix * ref.n_predictions
    r = (ref_counts + BIN_PSEUDOCOUNT) / (ref_counts.sum() + BIN_PSEUDOCOUNT * N_CLASSES)
    c = (counts + BIN_PSEUDOCOUNT) / (n + BIN_PSEUDOCOUNT * N_CLASSES)
    value = psi(r, c)
    p = float(chisquare(counts, n * r).pvalue)
    status = feature_status(value, p, drift_cfg.psi_warn, drift_cfg.psi_error, drift_cfg.ks_alpha)
    return ClassMixDrift(ref.class_mix, counts / max(n, 1), value, p, status)


def compute_drift(ref: Reference, rows: pd.DataFrame, drift_cfg: Any) -> DriftReport:
    """Drift of ``rows`` (one day of the prediction log, or any frame with the monitored columns, ``entropy``
    and the ``prob_*`` / ``predicted_class`` columns) against ``ref``; ``drift_cfg`` is a
    :class:`hms_core.config.DriftConfig`. A monitored feature the rows lack is listed in ``not_logged``."""
    from scipy.stats import ks_2samp

    from hms_core.monitoring.log import PROB_COLUMNS

    wanted = [c for c in ref.bins if drift_cfg.features is None or c in drift_cfg.features or c == ENTROPY]
    present = [c for c in wanted if c in rows.columns]
    not_logged = [c for c in wanted if c not in rows.columns]
    n = len(rows)
    n_requests = int(rows["request_id"].nunique()) if "request_id" in rows.columns else n
    m = max(len(present), 1)
    alpha = drift_cfg.ks_alpha / m
    min_n = drift_cfg.min_windows or min_windows_for_psi(
        ref.n_bins, drift_cfg.psi_warn, m, drift_cfg.ks_alpha, ref.n_windows
    )
    thresholds = {"psi_warn": drift_cfg.psi_warn, "psi_error": drift_cfg.psi_error, "ks_alpha": drift_cfg.ks_alpha,
                  "ks_alpha_per_feature": alpha, "max_error_features": drift_cfg.max_error_features}  # fmt: skip
    records = []
    for c in present:
        v = pd.to_numeric(rows[c], errors="coerce").to_numpy(np.float64)
        v = v[np.isfinite(v)]
        b = ref.bins[c]
        sample = ref.sample(c)
        if v.size == 0 or sample.size == 0:
            records.append({"feature": c, "psi": np.nan, "ks_stat": np.nan, "ks_pvalue": np.nan, "n": int(v.size),
                            "ref_median": b.quantiles.get("p50", np.nan), "median": np.nan, "status": OK})  # fmt: skip
            continue
        value = psi(b.proportions, bin_proportions(v, b.edges))
        ks = ks_2samp(sample, v, method="asymp")
        records.append({
            "feature": c, "psi": value, "ks_stat": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
            "n": int(v.size), "ref_median": b.quantiles.get("p50", np.nan), "median": float(np.median(v)),
            "status": feature_status(value, float(ks.pvalue), drift_cfg.psi_warn, drift_cfg.psi_error, alpha),
        })  # fmt: skip
    table = pd.DataFrame(records, columns=["feature", "psi", "ks_stat", "ks_pvalue", "n", "ref_median", "median",
                                           "status"])  # fmt: skip
    table = table.sort_values("psi", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    mix = None
    if n and all(c in rows.columns for c in PROB_COLUMNS):
        mix = _class_mix(ref, rows[list(PROB_COLUMNS)].to_numpy(np.float64).argmax(axis=1), drift_cfg)
    reasons: list[str] = []
    if n < min_n:
        status = INSUFFICIENT
        reasons.append(f"{n} windows logged, {min_n} needed before drift is judged (monitoring.drift.min_windows)")
    else:
        n_err = int((table["status"] == ERROR).sum())
        status = OK
        if n_err > drift_cfg.max_error_features:
            status = ERROR
            top = table[table["status"] == ERROR].head(5)
            reasons.append(
                f"{n_err} feature(s) drifted (PSI >= {drift_cfg.psi_error:g}, KS p < {alpha:.2g}), more than "
                f"max_error_features={drift_cfg.max_error_features}: "
                + ", ".join(f"{r.feature} (PSI {r.psi:.2f})" for r in top.itertuples())
            )
        elif (table["status"] != OK).any():
            status = WARN
            reasons.append(
                f"{int((table['status'] != OK).sum())} feature(s) at or above PSI {drift_cfg.psi_warn:g}"
            )
        if mix is not None and mix.status != OK:
            status = worst(status, mix.status)
            reasons.append(f"predicted class mix PSI {mix.psi:.2f} (chi-square p {mix.chi2_pvalue:.2g})")
    return DriftReport(n, n_requests, int(min_n), table, mix, status, reasons, not_logged, thresholds)
