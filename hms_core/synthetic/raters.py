"""Rater model: how many experts voted, and what they voted, given a sample's latent class and difficulty.

The number of raters comes from the two populations of the real ``train.csv`` (1-7 and 10-28). Each sample has a
perceived class distribution: mostly its true class, with a difficulty-dependent share spread over neighbouring
classes (confusion matrix) and over its border class ``alt`` when the draw landed near a border. Votes are a
multinomial draw from that distribution; ``expert_consensus`` is their argmax (ties -> first class in
:data:`hms_core.constants.CLASSES` order).
"""

from __future__ import annotations

import numpy as np

from hms_core.constants import CLASSES, N_CLASSES

#: Row = true class, column = the class a confused rater picks (diagonal unused). Neighbours confuse more.
CONFUSION = np.array(
    [
        # Sz    LPD   GPD   LRDA  GRDA  Other
        [0.00, 0.30, 0.15, 0.15, 0.10, 0.30],  # Seizure
        [0.25, 0.00, 0.30, 0.10, 0.05, 0.30],  # LPD
        [0.15, 0.30, 0.00, 0.05, 0.15, 0.35],  # GPD
        [0.12, 0.10, 0.05, 0.00, 0.35, 0.38],  # LRDA
        [0.08, 0.05, 0.15, 0.30, 0.00, 0.42],  # GRDA
        [0.15, 0.20, 0.15, 0.15, 0.35, 0.00],  # Other
    ]
)
POPULATION_LOW = (1, 7)
POPULATION_HIGH = (10, 28)


def draw_n_raters(rng: np.random.Generator, p_low: float = 0.55) -> int:
    """1-7 raters (mostly 1-3) with probability ``p_low``, else 10-28 (mode in the low teens)."""
    if rng.random() < p_low:
        return int(min(POPULATION_LOW[1], 1 + rng.geometric(0.45) - 1))
    return int(min(POPULATION_HIGH[1], POPULATION_HIGH[0] + rng.poisson(4.0) + rng.geometric(0.15) - 1))


def difficulty(rng: np.random.Generator, edge: bool, snr: float, rater_noise: float) -> float:
    """Latent difficulty in [0, 1]: baseline noise of the patient, border cases, and low pattern-to-background SNR."""
    low_snr = float(np.clip((3.0 - snr) / 3.0, 0.0, 1.0))
    return float(np.clip(rater_noise + 0.3 * rng.beta(2, 4) + 0.3 * edge + 0.35 * low_snr, 0.0, 1.0))


def perceived_distribution(true_class: str, difficulty: float, alt: str | None, alt_share: float) -> np.ndarray:
    """(6,) probability a random rater votes each class."""
    k = CLASSES.index(true_class)
    eps = 0.04 + 0.5 * difficulty
    conf = CONFUSION[k] / CONFUSION[k].sum()
    if alt is not None:
        onehot = np.zeros(N_CLASSES)
        onehot[CLASSES.index(alt)] = 1.0
        conf = (1 - alt_share) * conf + alt_share * onehot
    p = (1 - eps) * np.eye(N_CLASSES)[k] + eps * conf
    return p / p.sum()


def draw_votes(rng: np.random.Generator, n_raters: int, p: np.ndarray, concentration: float = 12.0) -> np.ndarray:
    """(6,) int64 vote counts: Dirichlet-multinomial around ``p`` (raters of one sample share a reading)."""
    q = rng.dirichlet(np.maximum(p * concentration, 1e-3))
    return rng.multinomial(n_raters, q).astype(np.int64)


def consensus(votes: np.ndarray) -> str:
    """Expert consensus: the most-voted class (ties -> first in class order)."""
    return CLASSES[int(np.argmax(votes))]
