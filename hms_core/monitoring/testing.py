"""Synthetic production days for the monitoring tests and ``benchmarks/drift.py``: windows from the platform's
synthetic generator (:func:`hms_core.synthetic.generate_sample`, a new patient style per window), optionally
shifted the ways production data drifts, preprocessed by the training transform
(:func:`hms_core.preprocess.process_windows`).

Shifts (:func:`shift_windows`): ``amplitude`` scales every EEG channel (another amplifier gain or unit); ``noise_uv``
adds independent white noise of that RMS to every electrode (a noisier montage / electrodes: it does not cancel in
the bipolar derivations, unlike noise on the common reference); a class-mix change draws the windows with other
class shares (``class_probs`` of :func:`synthetic_windows`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hms_core.constants import CLASSES, EEG_CHANNELS, EEG_WINDOW_SAMPLES, N_CLASSES

__all__ = ["SyntheticDay", "shift_windows", "synthetic_windows"]


@dataclass
class SyntheticDay:
    windows: np.ndarray  # (n, 10000, 20) float32 microvolts, EEG_FILE_COLUMNS order
    classes: np.ndarray  # (n,) class index (CLASSES order) the generator rendered
    votes: np.ndarray  # (n, 6) the synthetic raters' votes


def synthetic_windows(n: int, seed: int, class_probs: np.ndarray | None = None) -> SyntheticDay:
    """``n`` labelled 50-s windows, each of a new synthetic patient; classes drawn from ``class_probs`` (default:
    the generator's class prior)."""
    from hms_core.synthetic import generate_sample
    from hms_core.synthetic.generator import CLASS_PRIOR

    probs = CLASS_PRIOR if class_probs is None else np.asarray(class_probs, dtype=np.float64)
    if probs.shape != (N_CLASSES,) or (probs < 0).any() or not np.isclose(probs.sum(), 1.0):
        raise ValueError(
            f"Invalid value for the 'class_probs' parameter. Allowed values are {N_CLASSES} non-negative shares "
            f"summing to 1 in {list(CLASSES)} order, but got {class_probs!r} instead."
        )
    rng = np.random.default_rng(seed)
    classes = rng.choice(N_CLASSES, size=n, p=probs)
    windows = np.empty((n, EEG_WINDOW_SAMPLES, len(EEG_CHANNELS) + 1), np.float32)
    votes = np.zeros((n, N_CLASSES), np.int64)
    for i, k in enumerate(classes):
        s = generate_sample(CLASSES[k], seed=int(rng.integers(2**31)))
        windows[i, :, : len(EEG_CHANNELS)] = s.eeg[:, :EEG_WINDOW_SAMPLES].T
        windows[i, :, len(EEG_CHANNELS)] = s.ekg[:EEG_WINDOW_SAMPLES]
        votes[i] = s.label.votes
    return SyntheticDay(windows, classes, votes)


def shift_windows(
    windows: np.ndarray, *, amplitude: float = 1.0, noise_uv: float = 0.0, seed: int = 0
) -> np.ndarray:
    """A shifted copy of ``windows`` (n, n_times, 20): EEG channels times ``amplitude`` plus independent white
    noise of RMS ``noise_uv`` per electrode (the EKG column is left as it is; NaNs stay NaN)."""
    out = np.array(windows, dtype=np.float32, copy=True)
    n_eeg = len(EEG_CHANNELS)
    out[..., :n_eeg] *= np.float32(amplitude)
    if noise_uv > 0:
        rng = np.random.default_rng(seed)
        out[..., :n_eeg] += rng.normal(0.0, noise_uv, out[..., :n_eeg].shape).astype(np.float32)
    return out
