"""Combiners of member predictions, fitted on out-of-fold predictions to minimise the competition KL.

Every combiner maps member probabilities ``P`` of shape ``(n_members, n_rows, 6)`` to ensemble probabilities
``(n_rows, 6)`` and is saved as plain JSON (:meth:`Combiner.to_dict` / :func:`combiner_from_dict`), so a fitted
ensemble loads without pickle:

- :class:`MeanCombiner`: the arithmetic mean of the members' probabilities (nothing fitted);
- :class:`LogLinearCombiner`: ``softmax(sum_m w_m log p_m + b)`` with non-negative weights ``w`` and a per-class
  bias ``b`` (the 3rd-place HMS solution's blend), fitted with L-BFGS-B; with one member it is temperature scaling
  plus a per-class bias (:mod:`hms_core.ensemble.calibration`);
- :class:`StackingCombiner`: a multinomial softmax regression on the concatenated member log-probabilities,
  fitted on the soft vote targets with an L2 penalty that shrinks it towards the members' geometric mean.

Fitting minimises the mean (optionally weighted) KL(targets || prediction), whose gradient in the logits is
``p - y``; scipy's L-BFGS-B gets the exact gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax

from hms_core.checks import check_option
from hms_core.constants import N_CLASSES

__all__ = [
    "COMBINERS",
    "Combiner",
    "LogLinearCombiner",
    "MeanCombiner",
    "StackingCombiner",
    "combiner_from_dict",
    "log_probs",
    "make_combiner",
]

#: Member probabilities are clipped to this before taking logs (a softmax never gives 0, a GBM might).
LOG_EPS = 1e-7


def log_probs(p: np.ndarray) -> np.ndarray:
    """``log(clip(p))`` renormalised, for probabilities of any leading shape ``(..., 6)``."""
    q = np.clip(np.asarray(p, dtype=np.float64), LOG_EPS, 1.0)
    return np.log(q / q.sum(axis=-1, keepdims=True))


def _as_members(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 3 or p.shape[2] != N_CLASSES:
        raise ValueError(f"member predictions must have shape (n_members, n_rows, {N_CLASSES}), got {p.shape}")
    return p


def _kl_loss(logits: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray]:
    """Weighted mean cross-entropy of soft targets (KL up to a constant) and its gradient in the logits."""
    lp = log_softmax(logits, axis=1)
    loss = float(-(w * (y * lp).sum(axis=1)).sum())
    return loss, (np.exp(lp) - y) * w[:, None]


def _row_weights(n: int, sample_weight: np.ndarray | None) -> np.ndarray:
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if w.shape != (n,) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"sample_weight must be {n} non-negative numbers with a positive sum")
    return w / w.sum()


@dataclass
class Combiner:
    """Base class: ``fit(P, y)`` then ``predict(P)``; ``members`` names the rows of ``P`` (for reports)."""

    kind: ClassVar[str] = ""
    members: list[str] = field(default_factory=list)

    def fit(self, p: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> Combiner:
        return self

    def predict(self, p: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def member_weights(self) -> dict[str, float]:
        """A weight per member for reports (each combiner says what its weights mean)."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "members": list(self.members), "params": self.params()}


@dataclass
class MeanCombiner(Combiner):
    kind: ClassVar[str] = "mean"

    def predict(self, p: np.ndarray) -> np.ndarray:
        return _as_members(p).mean(axis=0)

    def member_weights(self) -> dict[str, float]:
        return {m: 1.0 / len(self.members) for m in self.members}


@dataclass
class LogLinearCombiner(Combiner):
    """``softmax(sum_m w_m log p_m + b)``, ``w >= 0``; starts from the geometric mean (``w = 1/M``, ``b = 0``)."""

    kind: ClassVar[str] = "log_linear"
    weights: np.ndarray | None = None
    bias: np.ndarray | None = None
    max_weight: float = 10.0

    def logits(self, p: np.ndarray) -> np.ndarray:
        if self.weights is None or self.bias is None:
            raise ValueError("LogLinearCombiner is not fitted; call fit() or load fitted params first")
        return np.tensordot(self.weights, log_probs(_as_members(p)), axes=1) + self.bias

    def predict(self, p: np.ndarray) -> np.ndarray:
        return softmax(self.logits(p), axis=1)

    def fit(self, p: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> LogLinearCombiner:
        lp = log_probs(_as_members(p))
        m, n = lp.shape[:2]
        y = np.asarray(y, dtype=np.float64)
        w_row = _row_weights(n, sample_weight)

        def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[:m], theta[m:]
            loss, g = _kl_loss(np.tensordot(w, lp, axes=1) + b, y, w_row)
            return loss, np.concatenate([np.einsum("mnc,nc->m", lp, g), g.sum(axis=0)])

        x0 = np.concatenate([np.full(m, 1.0 / m), np.zeros(N_CLASSES)])
        bounds = [(0.0, self.max_weight)] * m + [(None, None)] * N_CLASSES
        res = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 500})
        self.weights, self.bias = res.x[:m].copy(), res.x[m:] - res.x[m:].mean()  # softmax ignores a shift
        return self

    def member_weights(self) -> dict[str, float]:
        return {m: float(w) for m, w in zip(self.members, self.weights if self.weights is not None else [])}

    def params(self) -> dict[str, Any]:
        return {"weights": _list(self.weights), "bias": _list(self.bias), "max_weight": self.max_weight}


@dataclass
class StackingCombiner(Combiner):
    """Multinomial softmax regression on the ``6 * M`` member log-probabilities (soft targets), L2-shrunk towards
    the geometric mean of the members (``coef = [I/M, ..., I/M]``)."""

    kind: ClassVar[str] = "stacking"
    l2: float = 0.01
    coef: np.ndarray | None = None  # (M * 6, 6)
    intercept: np.ndarray | None = None  # (6,)

    def _features(self, p: np.ndarray) -> np.ndarray:
        lp = log_probs(_as_members(p))  # (M, n, 6)
        return lp.transpose(1, 0, 2).reshape(lp.shape[1], -1)

    def _prior_coef(self, m: int) -> np.ndarray:
        return np.tile(np.eye(N_CLASSES) / m, (m, 1))

    def predict(self, p: np.ndarray) -> np.ndarray:
        if self.coef is None or self.intercept is None:
            raise ValueError("StackingCombiner is not fitted; call fit() or load fitted params first")
        return softmax(self._features(p) @ self.coef + self.intercept, axis=1)

    def fit(self, p: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> StackingCombiner:
        x = self._features(p)
        m = x.shape[1] // N_CLASSES
        y = np.asarray(y, dtype=np.float64)
        w_row = _row_weights(len(x), sample_weight)
        prior = self._prior_coef(m)
        shape = (x.shape[1], N_CLASSES)

        def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
            coef, b = theta[: prior.size].reshape(shape), theta[prior.size :]
            loss, g = _kl_loss(x @ coef + b, y, w_row)
            d = coef - prior
            loss += self.l2 * float((d * d).sum())
            return loss, np.concatenate([(x.T @ g + 2 * self.l2 * d).ravel(), g.sum(axis=0)])

        x0 = np.concatenate([prior.ravel(), np.zeros(N_CLASSES)])
        res = minimize(fun, x0, jac=True, method="L-BFGS-B", options={"maxiter": 300})
        self.coef = res.x[: prior.size].reshape(shape)
        self.intercept = res.x[prior.size :] - res.x[prior.size :].mean()
        return self

    def member_weights(self) -> dict[str, float]:
        """Each member's share of the absolute stacking coefficients (its diagonal block dominates)."""
        if self.coef is None:
            return {}
        blocks = np.abs(self.coef).reshape(len(self.members), N_CLASSES, N_CLASSES).sum(axis=(1, 2))
        return {m: float(b / blocks.sum()) for m, b in zip(self.members, blocks)}

    def params(self) -> dict[str, Any]:
        return {"l2": self.l2, "coef": _list(self.coef), "intercept": _list(self.intercept)}


def _list(a: np.ndarray | None) -> list | None:
    return None if a is None else np.asarray(a, dtype=np.float64).tolist()


COMBINERS: dict[str, type[Combiner]] = {c.kind: c for c in (MeanCombiner, LogLinearCombiner, StackingCombiner)}


def make_combiner(kind: str, members: list[str], stacking_l2: float = 0.01) -> Combiner:
    check_option("combiner", kind, tuple(COMBINERS))
    if kind == StackingCombiner.kind:
        return StackingCombiner(members=list(members), l2=stacking_l2)
    return COMBINERS[kind](members=list(members))


def combiner_from_dict(d: dict[str, Any]) -> Combiner:
    """Rebuild a fitted combiner from :meth:`Combiner.to_dict` (JSON; no pickle)."""
    kind = check_option("kind", d.get("kind"), tuple(COMBINERS))
    params = dict(d.get("params") or {})
    arrays = {k: (np.asarray(v, dtype=np.float64) if isinstance(v, list) else v) for k, v in params.items()}
    return COMBINERS[kind](members=list(d.get("members", [])), **arrays)
