"""Kaggle-style 10-minute spectrograms computed from a referential recording.

Kaggle's ``train_spectrograms`` hold, per chain of the double banana, the power at 100 frequencies
(0.59-19.92 Hz, bins 3..102 of a 1024-point FFT at 200 Hz) in 2 s rows. We reproduce that: for every bipolar
pair a Hann-windowed 1024-sample frame centred on each 2 s row, power spectral density in uV^2/Hz, averaged over
the chain's 4 pairs. Frames touching NaN samples give NaN rows, as in the real files.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import fft as sfft

from hms_core.checks import check_option
from hms_core.constants import (
    BIPOLAR_PAIRS,
    CHAIN_NAMES,
    SFREQ,
    SPEC_COLUMNS,
    SPEC_FIRST_BIN,
    SPEC_FREQS,
    SPEC_NFFT,
    SPEC_ROW_S,
)
from hms_core.synthetic.spatial import CH_INDEX

NFFT = SPEC_NFFT
FIRST_BIN = SPEC_FIRST_BIN
DECIM = 4  # the 100 bins stop at 19.92 Hz: compute them at 50 Hz with 256-point frames (same bins, 4x cheaper)
_A = np.array([CH_INDEX[a] for a, _ in BIPOLAR_PAIRS])
_B = np.array([CH_INDEX[b] for _, b in BIPOLAR_PAIRS])


def _decimate(x: np.ndarray) -> np.ndarray:
    """Ideal (FFT) low-pass at sfreq / (2 DECIM) and decimation by DECIM along the last axis (float32)."""
    n = x.shape[-1]
    n_dec = int(sfft.next_fast_len(-(-n // DECIM), real=True))
    spec = sfft.rfft(x, n=n_dec * DECIM, axis=-1)[..., : n_dec // 2 + 1]
    return (sfft.irfft(spec, n=n_dec, axis=-1)[..., : -(-n // DECIM)] / DECIM).astype(np.float32)


def kaggle_spectrogram(x: np.ndarray, sfreq: int = SFREQ) -> tuple[np.ndarray, np.ndarray]:
    """(19, n_times) referential uV -> (``time`` (n_rows,) int64 row centres 1, 3, 5 ... s, power (n_rows, 400) float32).

    Columns follow :data:`hms_core.constants.SPEC_COLUMNS` (LL, RL, LP, RP x 100 frequencies). Equivalent to
    1024-point Hann frames at 200 Hz centred on each row; computed after an FFT decimation to 50 Hz.
    """
    check_option("sfreq", sfreq, (SFREQ,))
    hop = SPEC_ROW_S * sfreq
    n_rows = x.shape[-1] // hop
    bip = x[_A] - x[_B]
    nan = np.isnan(bip)
    has_nan = bool(nan.any())
    if has_nan:
        bip = np.where(nan, np.float32(0.0), bip)
    dec = _decimate(bip)
    n_win, d_hop = NFFT // DECIM, hop // DECIM
    pad = n_win // 2
    padded = np.pad(dec, ((0, 0), (pad, pad)), mode="reflect")
    # frame r is centred on (2r + 1) s, i.e. decimated sample d_hop * r + d_hop / 2 (+ pad in ``padded``)
    frames = sliding_window_view(padded, n_win, axis=-1)[:, d_hop // 2 : d_hop // 2 + d_hop * n_rows : d_hop]
    win = np.hanning(n_win).astype(np.float32)
    spec = sfft.rfft(frames * win, axis=-1)[..., FIRST_BIN : FIRST_BIN + len(SPEC_FREQS)]
    psd = (spec.real**2 + spec.imag**2) * np.float32(2.0 / (sfreq / DECIM * float((win**2).sum())))
    if has_nan:  # a frame touching a NaN sample is NaN, as in the real files
        c = np.concatenate([np.zeros((nan.shape[0], 1), np.int64), np.cumsum(nan, axis=-1)], axis=-1)
        centre = hop * np.arange(n_rows) + hop // 2
        lo, hi = np.clip(centre - NFFT // 2, 0, x.shape[-1]), np.clip(centre + NFFT // 2, 0, x.shape[-1])
        psd[(c[:, hi] - c[:, lo]) > 0] = np.nan
    chains = psd.reshape(len(CHAIN_NAMES), 4, n_rows, len(SPEC_FREQS)).mean(axis=1)  # (4, rows, 100)
    power = chains.transpose(1, 0, 2).reshape(n_rows, len(SPEC_COLUMNS)).astype(np.float32)
    time = (np.arange(n_rows) * SPEC_ROW_S + SPEC_ROW_S // 2).astype(np.int64)
    return time, power
