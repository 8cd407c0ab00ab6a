"""Readers for EEG records: HMS parquet windows, Kaggle spectrograms and EDF/BDF files.

Every reader returns data in :data:`hms_core.constants.EEG_FILE_COLUMNS` order (19 EEG channels + EKG),
microvolts, at :data:`hms_core.constants.SFREQ` Hz, shaped ``(n_times, 20)`` like the HMS parquet files. Channels
the file lacks are NaN; with ``missing_channels="error"`` a record that lacks a channel the montage needs raises
:class:`RecordError` listing them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from hms_core.checks import check_option
from hms_core.constants import (
    CHAIN_NAMES,
    EEG_CHANNELS,
    EEG_FILE_COLUMNS,
    EEG_WINDOW_SAMPLES,
    EKG_CHANNEL,
    SFREQ,
    SPEC_COLUMNS,
    SPEC_FIRST_BIN,
    SPEC_FREQ_LABELS,
    SPEC_FREQ_TOLERANCE_HZ,
    SPEC_FREQS,
    SPEC_FREQS_EXACT,
    SPEC_N_FREQS,
    SPEC_NFFT,
    SPEC_ROW_S,
    SPEC_TIME_COLUMN,
    SPEC_WINDOW_ROWS,
)

__all__ = [
    "EEGRecord",
    "RecordError",
    "SpectrogramColumns",
    "extract_window",
    "kaggle_spectrogram_window",
    "match_spectrogram_columns",
    "normalize_channel_name",
    "read_edf",
    "read_hms_eeg",
    "read_hms_eeg_channels",
    "read_kaggle_spectrogram",
    "read_kaggle_spectrogram_table",
    "resample",
]

#: Modern 10-10 names of the four temporal/parietal electrodes that HMS calls T3/T4/T5/T6.
CHANNEL_ALIASES: dict[str, str] = {"T7": "T3", "T8": "T4", "P7": "T5", "P8": "T6"}
_CANONICAL = {ch.upper(): ch for ch in EEG_CHANNELS}
_PREFIX = re.compile(r"^(EEG|POL|ECG|EKG)\s+", re.IGNORECASE)
_REF_SUFFIX = re.compile(r"[-_ ]?(REF|LE|RE|AR|AVG|AV|A1|A2|M1|M2|CAR|REFERENCE)$", re.IGNORECASE)


class RecordError(ValueError):
    """A record cannot be used as given; the message names the record and what was expected."""


@dataclass
class EEGRecord:
    """One EEG record in platform layout: ``data`` (n_times, 20) in EEG_FILE_COLUMNS order, microvolts, 200 Hz."""

    data: np.ndarray
    source: str
    sfreq: float = SFREQ
    original_sfreq: float = SFREQ
    missing: tuple[str, ...] = ()
    channel_map: dict[str, str] = field(default_factory=dict)  # canonical name -> label in the file

    @property
    def n_times(self) -> int:
        return int(self.data.shape[0])


def normalize_channel_name(label: str) -> str | None:
    """Map an EDF/BDF label to a name of EEG_FILE_COLUMNS, or None if it is not one of them.

    Handles ``EEG FP1-REF``, ``Fp1-LE``, ``FP1``, ``fp1``, ``EEG T7-REF`` (-> T3), ``ECG``/``EKG1`` (-> EKG) ...
    """
    s = label.strip()
    upper = s.upper()
    if upper.startswith(("EKG", "ECG")) or re.match(r"^(EEG|POL)\s+(EKG|ECG)", upper):
        return EKG_CHANNEL
    s = _PREFIX.sub("", s)
    s = _REF_SUFFIX.sub("", s).strip().upper()
    s = s.replace(" ", "")
    s = CHANNEL_ALIASES.get(s, s)
    return _CANONICAL.get(s)


def _missing_error(source: str, missing: list[str], found: list[str]) -> RecordError:
    return RecordError(
        f"EEG record '{source}' lacks channel(s) {missing} needed by the double-banana montage "
        f"(found {found}). Provide them, or set preprocessing.eeg.missing_channels: flag to mark the "
        f"derivations that use them as missing."
    )


MISSING_CHANNEL_MODES: tuple[str, ...] = ("error", "flag")


# --- HMS parquet ----------------------------------------------------------------------------------------------
def read_hms_eeg(path: str | os.PathLike[str], missing_channels: str = "error") -> np.ndarray:
    """Read ``train_eegs/{eeg_id}.parquet`` as float32 (n_times, 20) in EEG_FILE_COLUMNS order."""
    return np.ascontiguousarray(read_hms_eeg_channels(path, missing_channels).T)


def read_hms_eeg_channels(path: str | os.PathLike[str], missing_channels: str = "error") -> np.ndarray:
    """:func:`read_hms_eeg` channel-major: float32 (20, n_times) in EEG_FILE_COLUMNS order (the layout the
    transform works in; each parquet column becomes one contiguous row, nothing is interleaved or transposed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_option("missing_channels", missing_channels, MISSING_CHANNEL_MODES)
    path = Path(path)
    if not path.exists():
        raise RecordError(f"EEG record '{path}' does not exist.")
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise RecordError(f"EEG record '{path}' could not be read as parquet (truncated or not a parquet file): "
                          f"{e}") from e  # fmt: skip
    names = schema.names
    missing = [c for c in EEG_FILE_COLUMNS if c not in names]
    missing_eeg = [c for c in missing if c != EKG_CHANNEL]
    if missing_eeg and missing_channels == "error":
        raise _missing_error(str(path), missing_eeg, names)
    present = [c for c in EEG_FILE_COLUMNS if c in names]
    bad = [c for c in present if not _is_numeric(schema.field(c).type)]
    if bad:
        raise RecordError(
            f"EEG record '{path}': column(s) {_shown(bad)} are {schema.field(bad[0]).type}; expected numeric "
            "(float32 microvolt) samples."
        )
    try:
        # read_table: ~40 % less CPU here than ParquetFile(...).read; one thread (the batches run in threads)
        table = pq.read_table(path, columns=present, use_threads=False)
    except (OSError, pa.ArrowException) as e:
        raise RecordError(f"EEG record '{path}' could not be read as parquet (a damaged data page): {e}") from e
    out = np.empty((len(EEG_FILE_COLUMNS), table.num_rows), np.float32)
    for i, c in enumerate(EEG_FILE_COLUMNS):
        out[i] = table.column(c).to_numpy(zero_copy_only=False) if c in names else np.nan
    return out


def extract_window(
    eeg: np.ndarray, offset_s: float, record: str, n_samples: int = EEG_WINDOW_SAMPLES, sfreq: float = SFREQ
) -> np.ndarray:
    """Samples ``[sfreq*offset, sfreq*offset + n_samples)`` of a (n_times, n_channels) record."""
    start = round(float(offset_s) * sfreq)
    stop = start + n_samples
    if start < 0 or stop > eeg.shape[0]:
        raise RecordError(
            f"EEG record '{record}' is too short: it has {eeg.shape[0]} samples ({eeg.shape[0] / sfreq:.1f} s at "
            f"{sfreq:g} Hz) but the window at offset {offset_s} s needs samples [{start}, {stop})."
        )
    return eeg[start:stop]


# --- EDF / BDF ------------------------------------------------------------------------------------------------
_UNIT_TO_UV = {"uv": 1.0, "µv": 1.0, "μv": 1.0, "mv": 1e3, "v": 1e6, "nv": 1e-3}


def resample(x: np.ndarray, sfreq_in: float, sfreq_out: float = SFREQ, axis: int = 0) -> np.ndarray:
    """Polyphase resampling (anti-aliased) by the rational ratio ``sfreq_out / sfreq_in``."""
    import scipy.signal as ss

    if sfreq_in == sfreq_out:
        return x
    ratio = Fraction(sfreq_out / sfreq_in).limit_denominator(1000)
    return ss.resample_poly(x, ratio.numerator, ratio.denominator, axis=axis).astype(np.float32)


def read_edf(path: str | os.PathLike[str], missing_channels: str = "error", sfreq: float = SFREQ) -> EEGRecord:
    """Read an EDF/EDF+/BDF file into platform layout, resampled to ``sfreq`` and converted to microvolts.

    Labels are matched through :func:`normalize_channel_name`; the first label that maps to a channel wins.
    Missing EEG channels raise :class:`RecordError` (``missing_channels="error"``) or stay NaN (``"flag"``).
    """
    from hms_core.recording import open_recording  # the streaming reader: one EDF/BDF code path

    check_option("missing_channels", missing_channels, MISSING_CHANNEL_MODES)
    path = Path(path)
    if not path.exists():
        raise RecordError(f"EEG record '{path}' does not exist.")
    with open_recording(path, sfreq=sfreq) as rec:
        if rec.missing and missing_channels == "error":
            raise _missing_error(str(path), list(rec.missing), list(rec.labels))
        data = rec.read(0, rec.duration_s)
        return EEGRecord(data=data, source=str(path), sfreq=sfreq, original_sfreq=rec.original_sfreq,
                         missing=rec.missing, channel_map=rec.channel_map)  # fmt: skip


# --- Kaggle spectrograms --------------------------------------------------------------------------------------
#: ``<chain>_<frequency>``: what a spectrogram power column looks like in any export (``LL_4.1``, ``rl_3.125``).
_SPEC_COLUMN = re.compile(r"^\s*([A-Za-z]+)_([0-9]+(?:\.[0-9]*)?)\s*$")
_GRID = np.asarray(SPEC_FREQS_EXACT)


def spectrogram_grid_description() -> str:
    """The expected layout in words, for error messages."""
    return (
        f"'{SPEC_TIME_COLUMN}' plus '<chain>_<freq>' columns for chains {', '.join(CHAIN_NAMES)} and the "
        f"{SPEC_N_FREQS} frequencies (k + {SPEC_FIRST_BIN}) * {SFREQ} / {SPEC_NFFT} Hz, k = 0..{SPEC_N_FREQS - 1} "
        f"({SPEC_FREQ_LABELS[0]}, {SPEC_FREQ_LABELS[1]}, {SPEC_FREQ_LABELS[2]} ... {SPEC_FREQ_LABELS[-1]} Hz), "
        f"each within {SPEC_FREQ_TOLERANCE_HZ:g} Hz"
    )


@dataclass(frozen=True)
class SpectrogramColumns:
    """How the columns of one spectrogram file map onto the Kaggle grid.

    ``columns[i]`` is the file's column for canonical column ``SPEC_COLUMNS[i]`` (None when missing); ``time``
    the time column (None when missing); ``ignored`` columns that are not spectrogram columns at all (a pandas
    index, notes); ``problems`` (field, message) pairs, empty when the file matches the grid.
    """

    columns: tuple[str | None, ...]
    time: str | None
    ignored: tuple[str, ...]
    problems: tuple[tuple[str, str], ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _shown(names: list[str], limit: int = 8) -> str:
    more = f" ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def match_spectrogram_columns(names: list[str] | tuple[str, ...]) -> SpectrogramColumns:
    """Map a spectrogram file's column names onto the Kaggle grid by parsed chain and frequency.

    A column ``<chain>_<freq>`` (chain case-insensitive, any number of decimals: ``LL_4.1``, ``LL_4.10``,
    ``LL_4.100``, the old spelling ``LL_3.12``) is the grid bin nearest ``freq`` if it lies within
    :data:`~hms_core.constants.SPEC_FREQ_TOLERANCE_HZ`. Unknown chains, off-grid frequencies, missing and
    duplicated (chain, bin) pairs and a missing ``time`` column are problems; whatever the file's column order,
    ``columns`` is in the canonical :data:`~hms_core.constants.SPEC_COLUMNS` order.
    """
    n_f = len(SPEC_FREQS_EXACT)
    slots: list[list[str]] = [[] for _ in SPEC_COLUMNS]
    problems: list[tuple[str, str]] = []
    unknown_chain: list[str] = []
    off_grid: list[str] = []
    nearest: list[str] = []
    ignored: list[str] = []
    time_col: str | None = None
    for name in names:
        if name == SPEC_TIME_COLUMN:
            time_col = name
            continue
        m = _SPEC_COLUMN.match(str(name))
        if m is None:
            ignored.append(name)
            continue
        chain, freq = m.group(1).upper(), float(m.group(2))
        if chain not in CHAIN_NAMES:
            unknown_chain.append(name)
            continue
        k = int(np.argmin(np.abs(_GRID - freq)))
        if abs(_GRID[k] - freq) > SPEC_FREQ_TOLERANCE_HZ:
            off_grid.append(name)
            gap = abs(_GRID[k] - freq)
            nearest.append(f"{name}: nearest bin {chain}_{SPEC_FREQ_LABELS[k]} is {gap:.3f} Hz away")
            continue
        slots[CHAIN_NAMES.index(chain) * n_f + k].append(name)
    if time_col is None:
        problems.append((SPEC_TIME_COLUMN, f"required column '{SPEC_TIME_COLUMN}' is missing"))
    if unknown_chain:
        problems.append(
            (_shown(unknown_chain), f"unknown chain in column name(s); expected one of {', '.join(CHAIN_NAMES)}")
        )
    if off_grid:
        problems.append((_shown(off_grid), f"frequency does not match any bin of the grid ({_shown(nearest, 3)})"))
    dup = [f"{' = '.join(s)} (bin {SPEC_COLUMNS[i]})" for i, s in enumerate(slots) if len(s) > 1]
    if dup:
        problems.append((_shown(dup, 4), "several columns map to the same chain and frequency"))
    missing = [SPEC_COLUMNS[i] for i, s in enumerate(slots) if not s]
    if missing:
        problems.append((_shown(missing), f"required column(s) missing ({len(missing)} of {len(SPEC_COLUMNS)})"))
    return SpectrogramColumns(
        columns=tuple(s[0] if s else None for s in slots),
        time=time_col,
        ignored=tuple(ignored),
        problems=tuple(problems),
    )


def _is_numeric(arrow_type: object) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_floating(arrow_type) or pa.types.is_integer(arrow_type))


def read_kaggle_spectrogram_table(path: str | os.PathLike[str]) -> np.ndarray:
    """All rows of a Kaggle spectrogram file as float32 (n_rows, 4 chains, 100 freqs), NaN where the file is.

    Columns are matched by parsed chain and frequency (:func:`match_spectrogram_columns`), so the real names
    (``LL_4.1``), other spellings (``LL_4.10``, ``LL_3.12``) and any column order read the same; a file whose
    columns do not cover the grid raises :class:`RecordError` naming the file, the columns and the grid.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise RecordError(f"Spectrogram record '{path}' does not exist.")
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise RecordError(f"Spectrogram record '{path}' could not be read as parquet: {e}") from e
    match = match_spectrogram_columns(schema.names)
    if not match.ok:
        found = "; ".join(f"{cols}: {msg}" for cols, msg in match.problems)
        raise RecordError(
            f"Spectrogram record '{path}' does not match the Kaggle spectrogram grid: {found}. "
            f"Expected {spectrogram_grid_description()}."
        )
    columns = [c for c in match.columns if c is not None]
    bad = [c for c in columns if not _is_numeric(schema.field(c).type)]
    if bad:
        raise RecordError(
            f"Spectrogram record '{path}': column(s) {_shown(bad)} are {schema.field(bad[0]).type}; "
            f"expected numeric (float) power values."
        )
    try:
        table = pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as e:
        raise RecordError(
            f"Spectrogram record '{path}' could not be read as parquet (a damaged data page): {e}"
        ) from e
    arr = np.empty((table.num_rows, len(columns)), np.float32)
    for i, c in enumerate(columns):
        arr[:, i] = table.column(c).to_numpy(zero_copy_only=False)
    return arr.reshape(-1, len(CHAIN_NAMES), len(SPEC_FREQS))


def kaggle_spectrogram_window(table: np.ndarray, offset_s: float) -> np.ndarray:
    """The 10-min window starting at ``offset_s`` of a (n_rows, 4, 100) table: (4, 100, 300); NaN past the end."""
    start = round(float(offset_s) / SPEC_ROW_S)
    out = np.full((SPEC_WINDOW_ROWS, len(CHAIN_NAMES), len(SPEC_FREQS)), np.nan, np.float32)
    chunk = table[max(start, 0) : start + SPEC_WINDOW_ROWS]
    out[: len(chunk)] = chunk
    return out.transpose(1, 2, 0)


def read_kaggle_spectrogram(path: str | os.PathLike[str], offset_s: float = 0.0) -> np.ndarray:
    """The 10-min window of a Kaggle spectrogram starting at ``offset_s``: float32 (4 chains, 100 freqs, 300 rows).

    Rows beyond the end of the file are NaN (filled later by :func:`hms_core.spectral.kaggle_spectrogram_image`).
    """
    return kaggle_spectrogram_window(read_kaggle_spectrogram_table(path), offset_s)
