"""Signal and label metadata of the HMS Harmful Brain Activity task: the one source of truth.

Every module that needs a channel name, the sampling rate, a window length or the class order imports it from
here. Values follow the Kaggle competition data (see ``shared/reference/hms_data.md``).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Final

import numpy as np

#: Sampling rate of ``train_eegs``/``test_eegs`` (Hz).
SFREQ: Final[int] = 200

#: Class order used for every probability vector in the platform.
CLASSES: Final[tuple[str, ...]] = ("Seizure", "LPD", "GPD", "LRDA", "GRDA", "Other")
N_CLASSES: Final[int] = len(CLASSES)
VOTE_COLUMNS: Final[tuple[str, ...]] = (
    "seizure_vote",
    "lpd_vote",
    "gpd_vote",
    "lrda_vote",
    "grda_vote",
    "other_vote",
)
#: ``train.csv`` columns in file order.
TRAIN_COLUMNS: Final[tuple[str, ...]] = (
    "eeg_id",
    "eeg_sub_id",
    "eeg_label_offset_seconds",
    "spectrogram_id",
    "spectrogram_sub_id",
    "spectrogram_label_offset_seconds",
    "label_id",
    "patient_id",
    "expert_consensus",
    *VOTE_COLUMNS,
)
TEST_COLUMNS: Final[tuple[str, ...]] = ("eeg_id", "spectrogram_id", "patient_id")

#: The 19 referential EEG channels in ``train_eegs`` column order, then the EKG column.
EEG_CHANNELS: Final[tuple[str, ...]] = (
    "Fp1", "F3", "C3", "P3", "F7", "T3", "T5", "O1", "Fz", "Cz",
    "Pz", "Fp2", "F4", "C4", "P4", "F8", "T4", "T6", "O2",
)  # fmt: skip
EKG_CHANNEL: Final[str] = "EKG"
EEG_FILE_COLUMNS: Final[tuple[str, ...]] = (*EEG_CHANNELS, EKG_CHANNEL)
LEFT_CHANNELS: Final[tuple[str, ...]] = ("Fp1", "F3", "C3", "P3", "F7", "T3", "T5", "O1")
RIGHT_CHANNELS: Final[tuple[str, ...]] = ("Fp2", "F4", "C4", "P4", "F8", "T4", "T6", "O2")
MIDLINE_CHANNELS: Final[tuple[str, ...]] = ("Fz", "Cz", "Pz")

#: Double-banana montage: 4 chains of 4 bipolar pairs (anode, cathode).
CHAINS: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "LL": (("Fp1", "F7"), ("F7", "T3"), ("T3", "T5"), ("T5", "O1")),
    "RL": (("Fp2", "F8"), ("F8", "T4"), ("T4", "T6"), ("T6", "O2")),
    "LP": (("Fp1", "F3"), ("F3", "C3"), ("C3", "P3"), ("P3", "O1")),
    "RP": (("Fp2", "F4"), ("F4", "C4"), ("C4", "P4"), ("P4", "O2")),
}
CHAIN_NAMES: Final[tuple[str, ...]] = tuple(CHAINS)
#: Optional central chain (Fz-Cz, Cz-Pz) appended after the 16 double-banana pairs.
CENTRAL_PAIRS: Final[tuple[tuple[str, str], ...]] = (("Fz", "Cz"), ("Cz", "Pz"))
BIPOLAR_PAIRS: Final[tuple[tuple[str, str], ...]] = tuple(p for c in CHAINS.values() for p in c)
BIPOLAR_PAIRS_WITH_CENTRAL: Final[tuple[tuple[str, str], ...]] = (*BIPOLAR_PAIRS, *CENTRAL_PAIRS)
#: Left/right flip (label preserving): chain LL<->RL and LP<->RP.
CHAIN_FLIP: Final[dict[str, str]] = {"LL": "RL", "RL": "LL", "LP": "RP", "RP": "LP"}


def bipolar_names(include_central: bool = False) -> tuple[str, ...]:
    pairs = BIPOLAR_PAIRS_WITH_CENTRAL if include_central else BIPOLAR_PAIRS
    return tuple(f"{a}-{b}" for a, b in pairs)


def bipolar_flip_index(include_central: bool = False) -> np.ndarray:
    """Permutation of bipolar channels that mirrors left and right (LL<->RL, LP<->RP, central fixed)."""
    n = len(BIPOLAR_PAIRS)
    idx = []
    for chain in CHAIN_NAMES:
        start = CHAIN_NAMES.index(CHAIN_FLIP[chain]) * 4
        idx.extend(range(start, start + 4))
    if include_central:
        idx.extend(range(n, n + len(CENTRAL_PAIRS)))
    return np.asarray(idx, dtype=np.int64)


def referential_flip_index() -> np.ndarray:
    """Permutation of the 19 referential channels that mirrors left and right (midline fixed)."""
    mirror = dict(zip(LEFT_CHANNELS, RIGHT_CHANNELS)) | dict(zip(RIGHT_CHANNELS, LEFT_CHANNELS))
    return np.asarray([EEG_CHANNELS.index(mirror.get(ch, ch)) for ch in EEG_CHANNELS], dtype=np.int64)


# Windows (seconds) ---------------------------------------------------------------------------------------------
#: A labelled row with offset ``o`` covers EEG samples ``[SFREQ*o, SFREQ*(o+50))``.
EEG_WINDOW_S: Final[int] = 50
#: The labelled part is the central 10 s: seconds ``o+20 ... o+30``.
LABEL_WINDOW_S: Final[int] = 10
EEG_WINDOW_SAMPLES: Final[int] = EEG_WINDOW_S * SFREQ
LABEL_WINDOW_SAMPLES: Final[int] = LABEL_WINDOW_S * SFREQ
LABEL_START_SAMPLE: Final[int] = (EEG_WINDOW_S - LABEL_WINDOW_S) // 2 * SFREQ  # 4000

# Kaggle spectrograms ---------------------------------------------------------------------------------------------
SPEC_ROW_S: Final[int] = 2
SPEC_WINDOW_S: Final[int] = 600
SPEC_WINDOW_ROWS: Final[int] = SPEC_WINDOW_S // SPEC_ROW_S  # 300
SPEC_NFFT: Final[int] = 1024
SPEC_FIRST_BIN: Final[int] = 3
SPEC_N_FREQS: Final[int] = 100
#: Exact centre frequencies (Hz) of the 100 bins: bin k is FFT bin k + 3 of a 1024-point FFT at 200 Hz.
SPEC_FREQS_EXACT: Final[tuple[float, ...]] = tuple(
    (k + SPEC_FIRST_BIN) * SFREQ / SPEC_NFFT for k in range(SPEC_N_FREQS)
)


def _spec_freq_label(k: int) -> str:
    """Label of bin ``k`` as the real files write it: rounded half-up to 2 decimals, no trailing zeros."""
    exact = Decimal((k + SPEC_FIRST_BIN) * SFREQ) / Decimal(SPEC_NFFT)  # a binary fraction: exact in decimal
    text = format(exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP), "f")
    return text.rstrip("0").rstrip(".")


#: Frequency labels of the real ``train_spectrograms`` columns: ``0.59 0.78 ... 3.13 ... 4.1 ... 19.92``.
SPEC_FREQ_LABELS: Final[tuple[str, ...]] = tuple(_spec_freq_label(k) for k in range(SPEC_N_FREQS))
#: The labels as numbers (Hz, 2 decimals), the frequency axis of the Kaggle spectrograms.
SPEC_FREQS: Final[tuple[float, ...]] = tuple(float(f) for f in SPEC_FREQ_LABELS)
#: The 400 power columns of a Kaggle spectrogram file, exactly as the real files name them (LL, RL, LP, RP).
SPEC_COLUMNS: Final[tuple[str, ...]] = tuple(f"{c}_{f}" for c in CHAIN_NAMES for f in SPEC_FREQ_LABELS)
SPEC_TIME_COLUMN: Final[str] = "time"
#: A file's column ``<chain>_<freq>`` maps to the grid bin nearest ``freq`` when it lies within this many Hz
#: (labels are rounded to 2 decimals, so the exact bin is at most 0.005 Hz away; bins are 0.195 Hz apart).
SPEC_FREQ_TOLERANCE_HZ: Final[float] = 0.01

#: The spectrogram types the platform computes from the EEG (``hms_core.spectral`` registers one function each),
#: and the name of the competition's own 10-min spectrograms when they are stored beside them.
SPECTROGRAM_TYPES: Final[tuple[str, ...]] = ("stft", "multitaper", "wavelet", "mel")
KAGGLE_SPECTROGRAM: Final[str] = "kaggle"

#: Rows with at least this many votes are the "high-quality" rows used for local validation.
HIGH_VOTE_THRESHOLD: Final[int] = 10
