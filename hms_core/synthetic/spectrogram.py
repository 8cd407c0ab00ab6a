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

from hms_core.constants import BIPOLAR_PAIRS, CHAIN_NAMES, SFREQ, SPEC_COLUMNS, SPEC_FREQS, SPEC_ROW_S
from hms_core.synthetic.spatial import CH_INDEX

NFFT = 1024
FIRST_BIN = 3
_A = np.array([CH_INDEX[a] for a, _ in BIPOLAR_PAIRS])
_B = np.array([CH_INDEX[b] for _, b in BIPOLAR_PAIRS])


def kaggle_spectrogram(x: np.ndarray, sfreq: int = SFREQ) -> tuple[np.ndarray, np.ndarray]:
    """(19, n_times) referential uV -> (``time`` (n_rows,) int64 row centres 1, 3, 5 ... s, power (n_rows, 400) float32).

    Columns follow :data:`hms_core.constants.SPEC_COLUMNS` (LL, RL, LP, RP x 100 frequencies).
    """
    if sfreq != SFREQ:
        raise ValueError(f"Invalid value for the 'sfreq' parameter. Allowed values are {SFREQ}, but got {sfreq} instead.")
    hop = SPEC_ROW_S * sfreq
    n_rows = x.shape[-1] // hop
    bip = (x[_A] - x[_B]).astype(np.float32)
    pad = NFFT // 2
    padded = np.pad(bip, ((0, 0), (pad, pad)), mode="reflect")
    # frame r is centred on sample (2r + 1) s * sfreq, i.e. padded index hop*r + hop/2 + pad
    frames = sliding_window_view(padded, NFFT, axis=-1)[:, hop // 2 : hop // 2 + hop * n_rows : hop]
    win = np.hanning(NFFT).astype(np.float32)
    spec = sfft.rfft(frames * win, axis=-1, workers=1)[..., FIRST_BIN : FIRST_BIN + len(SPEC_FREQS)]
    psd = (spec.real**2 + spec.imag**2) * np.float32(2.0 / (sfreq * float((win**2).sum())))
    chains = psd.reshape(len(CHAIN_NAMES), 4, n_rows, len(SPEC_FREQS)).mean(axis=1)  # (4, rows, 100)
    power = chains.transpose(1, 0, 2).reshape(n_rows, len(SPEC_COLUMNS)).astype(np.float32)
    time = (np.arange(n_rows) * SPEC_ROW_S + SPEC_ROW_S // 2).astype(np.int64)
    return time, power
