"""The competition metric against a plain cell-by-cell reimplementation of Kaggle's scoring code, plus input
handling (frames vs arrays), input errors and clipping."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import polars as pl
import pytest

from hms_core.constants import CLASSES, VOTE_COLUMNS
from hms_core.metrics import (
    EPS,
    MetricInputError,
    classification_report,
    kl_divergence,
    kl_divergence_rows,
    prior_baseline,
    votes_to_probabilities,
)


def reference_kl(solution: np.ndarray, submission: np.ndarray, eps: float = 1e-15) -> float:
    """Kaggle's kl_divergence (micro average, no weights), written out with loops."""
    total = 0.0
    for y_row, p_row in zip(solution.tolist(), submission.tolist()):
        row = 0.0
        for y, p in zip(y_row, p_row):
            p = min(max(p, eps), 1 - eps)
            if y != 0:
                row += y * math.log(y / p)
        total += row
    return total / len(solution)


def _random_probs(rng: np.random.Generator, n: int, zeros: bool) -> np.ndarray:
    x = rng.dirichlet(np.full(6, 0.7), size=n)
    if zeros:  # vote fractions have exact zeros
        votes = rng.integers(0, 4, size=(n, 6))
        votes[votes.sum(1) == 0, 0] = 1
        x = votes / votes.sum(1, keepdims=True)
    return x


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = _random_probs(rng, 200, zeros=True)
    p = _random_probs(rng, 200, zeros=False)
    assert (y == 0).any()
    assert kl_divergence(y, p) == pytest.approx(reference_kl(y, p), rel=1e-12)
    rows = kl_divergence_rows(y, p)
    assert rows.shape == (200,) and (rows >= -1e-12).all()
    assert kl_divergence(y, y) == pytest.approx(0.0, abs=1e-12)


def test_frames_and_arrays_agree() -> None:
    rng = np.random.default_rng(3)
    y, p = _random_probs(rng, 50, True), _random_probs(rng, 50, False)
    expected = kl_divergence(y, p)
    ydf = pd.DataFrame(y, columns=VOTE_COLUMNS).assign(eeg_id=np.arange(50))
    pdf = pd.DataFrame(p, columns=VOTE_COLUMNS).assign(eeg_id=np.arange(50))
    assert kl_divergence(ydf, pdf) == pytest.approx(expected, rel=1e-12)
    assert kl_divergence(pl.from_pandas(ydf), pl.from_pandas(pdf)) == pytest.approx(expected, rel=1e-12)
    # class-name columns, in a shuffled order: picked by name, not position
    named = pd.DataFrame(p, columns=CLASSES)[list(reversed(CLASSES))]
    assert kl_divergence(ydf, named) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(MetricInputError, match="six class columns"):
        kl_divergence(ydf.drop(columns="lpd_vote"), pdf)


def test_bad_inputs_raise() -> None:
    rng = np.random.default_rng(4)
    y, p = _random_probs(rng, 10, True), _random_probs(rng, 10, False)
    with pytest.raises(MetricInputError, match=r"shape \(n_rows, 6\)"):
        kl_divergence(y[:, :5], p[:, :5])
    with pytest.raises(MetricInputError, match="shape"):
        kl_divergence(y, p[:9])
    with pytest.raises(MetricInputError, match="sum to 1.*row 3"):
        bad = p.copy()
        bad[3] *= 0.5
        kl_divergence(y, bad)
    with pytest.raises(MetricInputError, match=r"\[0, 1\].*row 2"):
        bad = y.copy()
        bad[2, 0] = -0.1
        bad[2, 1] += 0.1
        kl_divergence(bad, p)
    with pytest.raises(MetricInputError, match="non-finite value in row 1"):
        bad = p.copy()
        bad[1, 1] = np.nan
        kl_divergence(y, bad)


def test_clipping_of_zero_predictions() -> None:
    y = np.array([[1.0, 0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0, 0]])
    p = np.array([[0.0, 1.0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0, 0]])
    rows = kl_divergence_rows(y, p)
    assert np.isfinite(rows).all()
    assert rows[0] == pytest.approx(-math.log(EPS))  # log(1 / 1e-15) = 34.54
    assert rows[1] == pytest.approx(0.0, abs=1e-12)  # zeros in y contribute nothing, whatever p is there
    assert kl_divergence(y, p) == pytest.approx(reference_kl(y, p))


def test_votes_prior_and_report() -> None:
    votes = np.array([[3, 0, 0, 0, 0, 1], [0, 0, 2, 0, 0, 2]])
    np.testing.assert_allclose(votes_to_probabilities(votes), [[0.75, 0, 0, 0, 0, 0.25], [0, 0, 0.5, 0, 0, 0.5]])
    with pytest.raises(MetricInputError, match="row 1 has no votes"):
        votes_to_probabilities(np.array([[1, 0, 0, 0, 0, 0], [0] * 6]))
    y = votes_to_probabilities(votes)
    prior = prior_baseline(y, 3)
    assert prior.shape == (3, 6)
    np.testing.assert_allclose(prior.sum(1), 1.0)
    np.testing.assert_allclose(prior[0], y.mean(0))
    rep = classification_report(y, y)
    assert rep["accuracy"] == 1.0 and set(rep) == {"accuracy", *(f"auroc_{c}" for c in CLASSES)}
