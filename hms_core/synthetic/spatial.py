"""Electrode geometry for the synthetic generator: standard 10-20 positions, distance kernels, scalp fields.

Positions come from MNE's ``standard_1020`` template (the HMS names T3/T4/T5/T6 are T7/T8/P7/P8 there). They are
computed once per process and cached; everything else (mixing matrices, Gaussian fields) derives from them.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

from hms_core.checks import check_range
from hms_core.constants import EEG_CHANNELS

#: HMS (old 10-20) names that the modern nomenclature renamed.
HMS_TO_MNE: dict[str, str] = {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}
CH_INDEX: dict[str, int] = {ch: i for i, ch in enumerate(EEG_CHANNELS)}


@lru_cache(maxsize=1)
def electrode_positions() -> np.ndarray:
    """(19, 3) head-frame positions (metres) of :data:`EEG_CHANNELS`: x to the right, y to the nose, z up."""
    import mne

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MNE >= 1.12 flags the template name as deprecated
        pos = mne.channels.make_standard_montage("standard_1020").get_positions()["ch_pos"]
    out = np.array([pos[HMS_TO_MNE.get(ch, ch)] for ch in EEG_CHANNELS], dtype=np.float64)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=1)
def distance_matrix() -> np.ndarray:
    """(19, 19) Euclidean inter-electrode distances (metres)."""
    p = electrode_positions()
    d = np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1))
    d.setflags(write=False)
    return d


@lru_cache(maxsize=1)
def neighbour_distance() -> float:
    """Median distance between electrodes that are bipolar-chain neighbours (about 6 cm)."""
    from hms_core.constants import BIPOLAR_PAIRS

    d = distance_matrix()
    return float(np.median([d[CH_INDEX[a], CH_INDEX[b]] for a, b in BIPOLAR_PAIRS]))


@lru_cache(maxsize=64)
def _mixing_matrix_cached(rho_key: int) -> np.ndarray:
    rho = rho_key / 1000.0
    length = neighbour_distance() / np.sqrt(-2.0 * np.log(rho))
    k = np.exp(-(distance_matrix() ** 2) / (2.0 * length**2))
    w, v = np.linalg.eigh(k)
    m = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m /= np.sqrt((m**2).sum(axis=1, keepdims=True))  # unit variance per channel
    m.setflags(write=False)
    return m


def mixing_matrix(neighbour_corr: float) -> np.ndarray:
    """Symmetric square root of a Gaussian distance kernel whose chain-neighbour correlation is ``neighbour_corr``.

    ``mixing_matrix(r) @ z`` turns independent unit-variance sources ``z`` (19, n_times) into channels with
    correlation ``exp(-d**2 / (2 l**2))``; neighbours at the median chain distance correlate at ``neighbour_corr``.
    """
    check_range("neighbour_corr", neighbour_corr, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    return _mixing_matrix_cached(round(neighbour_corr * 1000))


def gaussian_field(centre: np.ndarray | str, width_m: float) -> np.ndarray:
    """(19,) weights ``exp(-d**2 / (2 width**2))`` around an electrode name or a 3-D point."""
    c = electrode_positions()[CH_INDEX[centre]] if isinstance(centre, str) else np.asarray(centre, dtype=float)
    d2 = ((electrode_positions() - c) ** 2).sum(-1)
    return np.exp(-d2 / (2.0 * width_m**2))


def mirror(point: np.ndarray) -> np.ndarray:
    """Left/right mirror image of a 3-D point (x -> -x)."""
    p = np.array(point, dtype=float)
    p[..., 0] *= -1
    return p


def side_of(ch: str) -> int:
    """-1 for left, +1 for right, 0 for midline electrodes."""
    x = electrode_positions()[CH_INDEX[ch], 0]
    return 0 if abs(x) < 0.01 else int(np.sign(x))


def anterior_gradient() -> np.ndarray:
    """(19,) electrode y-coordinate scaled to [0 (most posterior), 1 (most frontal)]."""
    y = electrode_positions()[:, 1]
    return (y - y.min()) / (y.max() - y.min())


def hemisphere_mask(side: int) -> np.ndarray:
    """(19,) 1 for electrodes on ``side`` (-1 left / +1 right), 0.5 for midline, 0 for the other side."""
    s = np.array([side_of(ch) for ch in EEG_CHANNELS])
    return np.where(s == side, 1.0, np.where(s == 0, 0.5, 0.0))
