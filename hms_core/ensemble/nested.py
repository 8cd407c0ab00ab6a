"""Member selection, combiner choice and nested cross-validation over the patient folds.

The members' out-of-fold predictions carry the fold each row was held out in (folds are grouped by patient).

- :func:`select_members`: greedy forward selection for one combiner kind: start from no member, add the member
  whose addition gives the lowest cross-validated KL (fit on all groups but one, predict that one), stop when the
  best addition gains less than ``min_member_gain``. Members never added are *dropped*.
- :func:`choose_ensemble`: run the selection for every combiner kind and keep the one with the lowest CV KL.
- :func:`nested_cv`: for each outer fold ``f``, everything above (selection, choice, calibration) sees only the
  rows of the other folds (the inner CV splits those rows by their own folds, so by patient again); the fitted
  pipeline then predicts fold ``f``. The nested out-of-fold KL is therefore never scored on a row that any fitted
  parameter or choice has seen: it is the ensemble's honest figure. Every outer fold records the rows it fitted on
  and the rows it scored (:attr:`OuterFold.fit_rows`, :attr:`OuterFold.scored_rows`).
- :func:`fit_final`: the same selection over every fold, fitted on every row: the ensemble used for the test set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from hms_core.ensemble.calibration import Calibrator
from hms_core.ensemble.combiners import Combiner, LogLinearCombiner, StackingCombiner, make_combiner
from hms_core.metrics import kl_divergence

LOG_LINEAR, STACKING = LogLinearCombiner.kind, StackingCombiner.kind

__all__ = ["NestedResult", "OuterFold", "Selection", "choose_ensemble", "cv_predict", "fit_final", "nested_cv",
           "select_members"]  # fmt: skip


@dataclass
class Selection:
    """The members one combiner kind keeps, its cross-validated KL and CV predictions on the rows it saw."""

    kind: str
    members: list[str]
    dropped: list[str]
    cv_kl: float
    cv_pred: np.ndarray
    path: list[dict[str, Any]] = field(default_factory=list)  # greedy steps: members so far and their CV KL


@dataclass
class OuterFold:
    fold: int
    fit_rows: np.ndarray
    scored_rows: np.ndarray
    chosen: str
    members: list[str]
    inner_kl: dict[str, float]
    outer_kl: dict[str, float]
    temperature: float | None = None  # None: calibration off, or the inner CV found it does not help


@dataclass
class NestedResult:
    """Nested out-of-fold predictions: of the chosen pipeline (``pred``; calibrated in ``calibrated`` when
    calibration is on) and of each combiner kind forced (``per_kind``)."""

    pred: np.ndarray
    calibrated: np.ndarray | None
    per_kind: dict[str, np.ndarray]
    outer: list[OuterFold]


def _fit(kind: str, p: np.ndarray, y: np.ndarray, names: Sequence[str], idx: Sequence[int], l2: float) -> Combiner:
    return make_combiner(kind, [names[i] for i in idx], l2).fit(p[list(idx)], y)


def cv_predict(kind: str, p: np.ndarray, y: np.ndarray, groups: np.ndarray, names: Sequence[str],
               idx: Sequence[int], l2: float = 0.01) -> np.ndarray:  # fmt: skip
    """Group-wise cross-validated predictions of combiner ``kind`` over members ``idx`` (fit on the other groups)."""
    uniq = np.unique(groups)
    if len(uniq) < 2:
        raise ValueError(
            f"cross-validating the ensemble needs rows from at least 2 folds, got folds {uniq.tolist()}; "
            "set dataset.n_folds to 3 or more (the outer and the inner CV each hold one fold out)"
        )
    out = np.empty_like(y, dtype=np.float64)
    for g in uniq:
        test = groups == g
        out[test] = _fit(kind, p[:, ~test], y[~test], names, idx, l2).predict(p[list(idx)][:, test])
    return out


def select_members(kind: str, p: np.ndarray, y: np.ndarray, groups: np.ndarray, names: Sequence[str],
                   min_gain: float = 0.001, l2: float = 0.01) -> Selection:  # fmt: skip
    """Greedy forward selection of members for ``kind`` by group-wise CV KL (see the module docstring)."""
    chosen: list[int] = []
    best_kl, best_pred = np.inf, None
    path: list[dict[str, Any]] = []
    while len(chosen) < len(names):
        trials = {}
        for j in (j for j in range(len(names)) if j not in chosen):
            pred = cv_predict(kind, p, y, groups, names, [*chosen, j], l2)
            trials[j] = (kl_divergence(y, pred), pred)
        j, (kl, pred) = min(trials.items(), key=lambda kv: kv[1][0])
        if chosen and best_kl - kl < min_gain:
            break
        chosen.append(j)
        best_kl, best_pred = kl, pred
        path.append({"members": [names[i] for i in chosen], "cv_kl": float(kl)})
    return Selection(kind, [names[i] for i in chosen], [n for i, n in enumerate(names) if i not in chosen],
                     float(best_kl), best_pred, path)  # fmt: skip


def choose_ensemble(p: np.ndarray, y: np.ndarray, groups: np.ndarray, names: Sequence[str], kinds: Sequence[str],
                    min_gain: float = 0.001, l2: float = 0.01) -> tuple[Selection, dict[str, Selection]]:  # fmt: skip
    """Select members for every kind; the kind with the lowest CV KL wins (ties: the simpler, earlier kind).

    The stacking model (``36 M`` parameters, about 10x slower to fit than the log-linear blend) is not selected
    greedily when the log-linear blend is also tried: it is cross-validated on the members that blend keeps."""
    sels: dict[str, Selection] = {}
    for k in sorted(kinds, key=lambda k: k == STACKING):  # stacking last: it may reuse the log-linear members
        if k == STACKING and LOG_LINEAR in sels:
            keep = sels[LOG_LINEAR].members
            idx = [names.index(m) for m in keep]
            pred = cv_predict(k, p, y, groups, names, idx, l2)
            kl = kl_divergence(y, pred)
            sels[k] = Selection(k, list(keep), [n for n in names if n not in keep], float(kl), pred,
                                [{"members": list(keep), "cv_kl": float(kl)}])  # fmt: skip
        else:
            sels[k] = select_members(k, p, y, groups, names, min_gain, l2)
    sels = {k: sels[k] for k in kinds}
    best = min(sels.values(), key=lambda s: s.cv_kl)
    return best, sels


def nested_cv(p: np.ndarray, y: np.ndarray, folds: np.ndarray, names: Sequence[str], kinds: Sequence[str],
              min_gain: float = 0.001, l2: float = 0.01, calibrate: bool = True) -> NestedResult:  # fmt: skip
    """Outer loop over the folds; selection, choice and calibration inside the outer-training rows only.

    BLAS runs single-threaded here: the matrices are small (rows x 6 M) and threads cost more than they save,
    badly so when other processes share the cores."""
    with threadpool_limits(1):
        return _nested_cv(p, y, folds, names, kinds, min_gain, l2, calibrate)


def _nested_cv(p: np.ndarray, y: np.ndarray, folds: np.ndarray, names: Sequence[str], kinds: Sequence[str],
               min_gain: float, l2: float, calibrate: bool) -> NestedResult:  # fmt: skip
    p, y, folds = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64), np.asarray(folds)
    if p.shape[1] != len(y) or len(folds) != len(y) or p.shape[0] != len(names):
        raise ValueError(f"shapes disagree: members {p.shape}, targets {y.shape}, folds {folds.shape}, "
                         f"{len(names)} member names")  # fmt: skip
    pred = np.empty_like(y)
    calibrated = np.empty_like(y) if calibrate else None
    per_kind = {k: np.empty_like(y) for k in kinds}
    outer: list[OuterFold] = []
    for f in np.unique(folds):
        test = folds == f
        train = ~test
        best, sels = choose_ensemble(p[:, train], y[train], folds[train], names, kinds, min_gain, l2)
        outer_kl = {}
        for k, sel in sels.items():
            idx = [names.index(m) for m in sel.members]
            per_kind[k][test] = _fit(k, p[:, train], y[train], names, idx, l2).predict(p[idx][:, test])
            outer_kl[k] = kl_divergence(y[test], per_kind[k][test])
        pred[test] = per_kind[best.kind][test]
        temperature = None
        if calibrated is not None:  # decided and fitted on the inner-CV predictions of the outer-training rows
            cal = fit_calibration(best.cv_pred, y[train], folds[train], min_gain)
            calibrated[test] = cal.predict(pred[test]) if cal is not None else pred[test]
            temperature = cal.temperature if cal is not None else None
        outer.append(OuterFold(int(f), np.flatnonzero(train), np.flatnonzero(test), best.kind, best.members,
                               {k: s.cv_kl for k, s in sels.items()}, outer_kl, temperature))  # fmt: skip
    return NestedResult(pred, calibrated, per_kind, outer)


def fit_calibration(
    cv_pred: np.ndarray, y: np.ndarray, groups: np.ndarray, min_gain: float = 0.001
) -> Calibrator | None:
    """A temperature + bias calibrator for cross-validated predictions ``cv_pred``, or None when calibration does
    not help: it is itself cross-validated over ``groups`` first and kept only if that lowers the KL by at least
    ``min_gain`` (on a few rows a 7-parameter calibrator overfits and would make the ensemble worse)."""
    out = np.empty_like(cv_pred)
    for g in np.unique(groups):
        test = groups == g
        out[test] = Calibrator.fit(cv_pred[~test], y[~test]).predict(cv_pred[test])
    if kl_divergence(y, out) > kl_divergence(y, cv_pred) - min_gain:
        return None
    return Calibrator.fit(cv_pred, y)


@dataclass
class FinalEnsemble:
    """The ensemble fitted on every row: combiner, optional calibrator, and the selections behind the choice."""

    combiner: Combiner
    calibrator: Calibrator | None
    selection: Selection
    selections: dict[str, Selection]

    def predict(self, member_probs: dict[str, np.ndarray]) -> np.ndarray:
        return ensemble_predict(self.combiner, self.calibrator, member_probs)


def ensemble_predict(
    combiner: Combiner, calibrator: Calibrator | None, member_probs: dict[str, np.ndarray]
) -> np.ndarray:
    """The combiner over its members' probabilities (a dict by member name, extra members ignored), calibrated."""
    missing = [m for m in combiner.members if m not in member_probs]
    if missing:
        raise KeyError(f"predictions of ensemble members {missing} are missing; got {sorted(member_probs)}")
    out = combiner.predict(np.stack([member_probs[m] for m in combiner.members]))
    return calibrator.predict(out) if calibrator is not None else out


def fit_final(p: np.ndarray, y: np.ndarray, folds: np.ndarray, names: Sequence[str], kinds: Sequence[str],
              min_gain: float = 0.001, l2: float = 0.01, calibrate: bool = True) -> FinalEnsemble:  # fmt: skip
    with threadpool_limits(1):
        best, sels = choose_ensemble(p, y, folds, names, kinds, min_gain, l2)
        idx = [names.index(m) for m in best.members]
        comb = _fit(best.kind, p, y, names, idx, l2)
        cal = fit_calibration(best.cv_pred, y, folds, min_gain) if calibrate else None
    return FinalEnsemble(comb, cal, best, sels)
