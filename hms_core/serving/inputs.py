"""Uploads -> :class:`Recording`: an HMS EEG parquet, an EDF/BDF file or a JSON body, checked and resampled to 200 Hz.

Accepted inputs
- HMS EEG parquet (``train_eegs``/``test_eegs`` format): float columns named as
  :data:`~hms_core.constants.EEG_FILE_COLUMNS` at 200 Hz, microvolts; read from memory (pyarrow buffer), never
  written to disk. Columns with other spellings of a channel (``FP1``, ``EEG Fp1-REF``) map through
  :func:`hms_core.eeg_io.normalize_channel_name`.
- EDF/EDF+/BDF: read by :func:`hms_core.eeg_io.read_edf` (clinical labels such as ``EEG Fp1-REF``, ``FP1``,
  ``Fp1-Ref``, ``T7`` -> T3; units converted to microvolts; every channel resampled to 200 Hz). pyEDFlib needs a
  path, so the bytes go to a file in a fresh private temporary folder (mode 0700, random name) that is deleted at
  once; the client's file name is never used as a path.
- JSON ``{"sampling_rate": float, "channels": [names], "data": [[...], ...]}`` with ``data`` channels x samples
  (``null`` = a missing sample); resampled to 200 Hz.

What is refused, and how (:mod:`hms_core.serving.errors`): a content type that is none of these or that
contradicts the bytes (415); a file that does not parse or is truncated, JSON with a syntax error (400); a
recording with no EEG channel, duplicated channels, non-numeric columns, infinite values, a sampling rate outside
the accepted range, no samples or every EEG sample NaN (422). How many missing channels a package tolerates and
how long a recording must be are the package's business (:mod:`hms_core.serving.predictor`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hms_core.constants import EEG_CHANNELS, EEG_FILE_COLUMNS, SFREQ
from hms_core.eeg_io import RecordError, normalize_channel_name, read_edf, resample
from hms_core.serving.errors import BadInput, Unprocessable, UnsupportedType

__all__ = ["CONTENT_TYPES", "KINDS", "Recording", "read_json", "read_upload", "safe_name", "sniff_kind"]

#: Input kinds, as reported in every response.
KINDS: tuple[str, ...] = ("hms_parquet", "edf", "bdf", "json")
#: Declared content types that name a kind; ``application/octet-stream`` (or none) lets the bytes decide.
CONTENT_TYPES: dict[str, str | None] = {
    "application/vnd.apache.parquet": "hms_parquet",
    "application/x-parquet": "hms_parquet",
    "application/parquet": "hms_parquet",
    "application/edf": "edf",
    "application/x-edf": "edf",
    "application/x-bdf": "bdf",
    "application/bdf": "bdf",
    "application/json": "json",
    "application/octet-stream": None,
    "binary/octet-stream": None,
    "": None,
}
_PARQUET_MAGIC = b"PAR1"
_EDF_MAGIC = b"0       "
_BDF_MAGIC = b"\xffBIOSEMI"
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+\- ()\[\]]")


@dataclass
class Recording:
    """One uploaded recording in platform layout.

    ``data`` is float32 (n_times, 20) in EEG_FILE_COLUMNS order, microvolts, at 200 Hz (NaN where a channel or
    sample is missing); ``missing`` are the EEG channels absent or NaN throughout; ``ignored`` the input labels
    that are no channel of the platform (``Photic``, ``EMG``...); ``channel_map`` canonical name -> input label.
    """

    data: np.ndarray
    source: str
    kind: str
    original_sfreq: float
    missing: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    channel_map: dict[str, str] = field(default_factory=dict)

    @property
    def n_times(self) -> int:
        return int(self.data.shape[0])

    @property
    def duration_s(self) -> float:
        return self.n_times / SFREQ

    @property
    def found(self) -> tuple[str, ...]:
        return tuple(c for c in EEG_CHANNELS if c not in self.missing)


def safe_name(filename: str | None) -> str:
    """A display name for a client's file name: its last component, odd characters replaced, at most 100 chars.

    ``../../etc/passwd`` -> ``passwd``; only ever shown in messages and responses, never used as a path.
    """
    if not filename:
        return "upload"
    base = re.split(r"[\\/]", str(filename))[-1].strip()
    base = _NAME_CHARS.sub("_", base)[:100].strip(". ")
    return base or "upload"


def sniff_kind(data: bytes) -> str | None:
    """The input kind the first bytes announce, or None."""
    if data[:4] == _PARQUET_MAGIC:
        return "hms_parquet"
    if data[:8] == _BDF_MAGIC:
        return "bdf"
    if data[:8] == _EDF_MAGIC:
        return "edf"
    if data[:64].lstrip()[:1] == b"{":
        return "json"
    return None


def _declared_kind(content_type: str | None, source: str) -> str | None:
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in CONTENT_TYPES:
        allowed = ", ".join(repr(t) for t in CONTENT_TYPES if t)
        raise UnsupportedType(
            f"'{source}': content type {media!r} is not accepted. Send an HMS EEG parquet, an EDF/BDF file or "
            f"JSON as one of {allowed}.",
            field="content_type",
        )
    return CONTENT_TYPES[media]


def read_upload(
    data: bytes,
    filename: str | None = None,
    content_type: str | None = None,
    *,
    sampling_rate_range: tuple[float, float] = (1.0, 8192.0),
) -> Recording:
    """Parse one upload into a :class:`Recording`; raises a :class:`~hms_core.serving.errors.ServingError`.

    The kind comes from the bytes (parquet / EDF / BDF magic, or a JSON object); a declared content type must
    agree with them. ``sampling_rate_range`` (Hz, inclusive) bounds the input rate of EDF/BDF and JSON.
    """
    source = safe_name(filename)
    declared = _declared_kind(content_type, source)
    if not data:
        raise BadInput(f"'{source}' is empty (0 bytes).", field="file")
    kind = sniff_kind(data)
    if kind is None:
        kind = declared
    elif declared is not None and declared != kind and {declared, kind} != {"edf", "bdf"}:
        raise UnsupportedType(
            f"'{source}': content type {content_type!r} says {declared} but the bytes are {kind}.",
            field="content_type",
        )
    if kind is None:
        raise BadInput(
            f"'{source}' is not an HMS EEG parquet (starts with 'PAR1'), an EDF/BDF file (header starts with "
            f"'0' and 7 spaces, or 0xFF 'BIOSEMI') or a JSON object; its first bytes are {data[:8]!r}.",
            field="file",
        )
    if kind == "hms_parquet":
        return _read_parquet(data, source)
    if kind in ("edf", "bdf"):
        return _read_edf(data, source, kind, sampling_rate_range)
    return read_json(data, source, sampling_rate_range=sampling_rate_range)


# --- HMS parquet ----------------------------------------------------------------------------------------------
def _read_parquet(data: bytes, source: str) -> Recording:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if data[-4:] != _PARQUET_MAGIC or len(data) < 12:
        raise BadInput(
            f"'{source}' is a truncated parquet file: {len(data)} bytes and no parquet footer ('PAR1' at the end).",
            field="file",
        )
    try:
        pf = pq.ParquetFile(pa.BufferReader(data))
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError, ValueError) as e:
        raise BadInput(f"'{source}' could not be read as parquet: {e}", field="file") from None
    chosen = _map_labels(schema.names, source, exact_first=True)
    bad = [
        f"{label} ({schema.field(label).type})"
        for label in chosen.values()
        if not (pa.types.is_floating(schema.field(label).type) or pa.types.is_integer(schema.field(label).type))
    ]
    if bad:
        raise Unprocessable(f"'{source}': column(s) {bad} are not numeric; EEG columns must hold microvolts.")
    try:
        table = pf.read(columns=list(chosen.values()), use_threads=False)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise BadInput(f"'{source}' is a damaged parquet file: {e}", field="file") from None
    out = np.full((table.num_rows, len(EEG_FILE_COLUMNS)), np.nan, np.float32)
    for name, label in chosen.items():
        out[:, EEG_FILE_COLUMNS.index(name)] = table.column(label).to_numpy(zero_copy_only=False)
    ignored = tuple(n for n in schema.names if n not in chosen.values())
    return _finish(out, source, "hms_parquet", float(SFREQ), chosen, ignored)


def _map_labels(labels: list[str], source: str, exact_first: bool = False) -> dict[str, str]:
    """Canonical channel -> input label; a channel named twice is refused, labels of no channel are skipped."""
    chosen: dict[str, str] = {}
    dup: dict[str, list[str]] = {}
    exact = [x for x in labels if x in EEG_FILE_COLUMNS] if exact_first else []
    for label in [*exact, *(x for x in labels if x not in exact)]:
        name = label if label in exact else normalize_channel_name(str(label))
        if name is None:
            continue
        if name in chosen:
            dup.setdefault(name, [chosen[name]]).append(label)
        else:
            chosen[name] = label
    if dup:
        shown = "; ".join(f"{k}: {v}" for k, v in dup.items())
        raise Unprocessable(f"'{source}' names the same channel more than once ({shown}).", field="channels")
    if not any(c in chosen for c in EEG_CHANNELS):
        raise Unprocessable(
            f"'{source}' has none of the 19 EEG channels {list(EEG_CHANNELS)} (found {list(labels)[:25]}).",
            field="channels",
        )
    return chosen


# --- EDF / BDF ------------------------------------------------------------------------------------------------
def _read_edf(data: bytes, source: str, kind: str, rate_range: tuple[float, float]) -> Recording:
    folder = tempfile.mkdtemp(prefix="hms-upload-")  # 0700, random name; the client's name is not used
    path = Path(folder) / f"upload.{kind}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            rec = read_edf(path, missing_channels="flag")
        except RecordError as e:
            msg = str(e).replace(str(path), source)
            if "could not be read" in msg:
                raise BadInput(f"{msg} (malformed or truncated {kind.upper()} file)", field="file") from None
            raise Unprocessable(msg, field="channels") from None
        except (OSError, ValueError) as e:
            raise BadInput(
                f"'{source}' could not be read as {kind.upper()}: {str(e).replace(str(path), source)}",
                field="file",
            ) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    _check_rate(rec.original_sfreq, source, rate_range)
    return _finish(rec.data, source, kind, rec.original_sfreq, rec.channel_map, ())


# --- JSON -----------------------------------------------------------------------------------------------------
def read_json(
    body: bytes | str | dict,
    source: str = "json",
    *,
    sampling_rate_range: tuple[float, float] = (1.0, 8192.0),
) -> Recording:
    """``{"sampling_rate": Hz, "channels": [names], "data": [[samples of channel 0], ...]}`` -> Recording."""
    if isinstance(body, dict):
        obj = body
    else:
        try:
            obj = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadInput(f"'{source}' is not valid JSON: {e}", field="body") from None
    if not isinstance(obj, dict):
        raise Unprocessable(f"'{source}': expected a JSON object, got {type(obj).__name__}.", field="body")
    expected = {"sampling_rate", "channels", "data"}
    absent = sorted(expected - obj.keys())
    if absent:
        raise Unprocessable(
            f'\'{source}\': missing key(s) {absent}; expected {{"sampling_rate": Hz, "channels": [names], '
            f'"data": [[...], ...]}} with data channels x samples.',
            field=absent[0],
        )
    extra = sorted(obj.keys() - expected - {"name"})
    if extra:
        raise Unprocessable(f"'{source}': unknown key(s) {extra}; allowed are {sorted(expected)} and 'name'.")
    rate = obj["sampling_rate"]
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise Unprocessable(
            f"'{source}': sampling_rate must be a number (Hz), got {rate!r}.", field="sampling_rate"
        )
    _check_rate(float(rate), source, sampling_rate_range)
    channels = obj["channels"]
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels) or not channels:
        raise Unprocessable(f"'{source}': channels must be a non-empty list of names.", field="channels")
    rows = obj["data"]
    if not isinstance(rows, list) or len(rows) != len(channels):
        n = len(rows) if isinstance(rows, list) else type(rows).__name__
        raise Unprocessable(
            f"'{source}': data must be a list of {len(channels)} rows (one per channel, channels x samples), got {n}.",
            field="data",
        )
    lengths = {len(r) if isinstance(r, list) else -1 for r in rows}
    if len(lengths) != 1 or -1 in lengths:
        raise Unprocessable(
            f"'{source}': every row of data must be a list of samples of the same length; got lengths "
            f"{sorted(len(r) if isinstance(r, list) else type(r).__name__ for r in rows)[:5]}.",
            field="data",
        )
    try:
        arr = np.asarray(rows, dtype=np.float64)  # null -> NaN
    except (TypeError, ValueError) as e:
        raise Unprocessable(f"'{source}': data must hold numbers or null: {e}", field="data") from None
    chosen = _map_labels(channels, source)
    _check_finite(arr.T, [channels[i] for i in range(len(channels))], source)
    out = np.full((arr.shape[1], len(EEG_FILE_COLUMNS)), np.nan, np.float32)
    order = [channels.index(label) for label in chosen.values()]
    picked = arr[order].T  # (n_times, n_chosen)
    if arr.shape[1] and float(rate) != SFREQ:
        picked = resample(picked, float(rate), SFREQ, axis=0)
        out = np.full((picked.shape[0], len(EEG_FILE_COLUMNS)), np.nan, np.float32)
    for j, name in enumerate(chosen):
        out[:, EEG_FILE_COLUMNS.index(name)] = picked[:, j]
    ignored = tuple(c for c in channels if c not in chosen.values())
    name = safe_name(obj["name"]) if isinstance(obj.get("name"), str) else source
    return _finish(out, name, "json", float(rate), chosen, ignored)


# --- shared checks --------------------------------------------------------------------------------------------
def _check_rate(rate: float, source: str, rate_range: tuple[float, float]) -> None:
    lo, hi = rate_range
    if not math.isfinite(rate) or not lo <= rate <= hi:
        raise Unprocessable(
            f"'{source}': sampling rate {rate!r} Hz is outside the accepted range [{lo:g}, {hi:g}] Hz (the low "
            f"end is twice the package's band-pass top; the input is resampled to {SFREQ} Hz).",
            field="sampling_rate",
        )


def _check_finite(data: np.ndarray, labels: list[str], source: str) -> None:
    """Refuse +-inf samples (NaN means missing and is allowed); ``data`` is (n_times, n_labels)."""
    if data.size and not np.isfinite(np.nansum(data, dtype=np.float64)):
        bad = [labels[j] for j in np.flatnonzero(np.isinf(data).any(axis=0))]
        if bad:
            raise Unprocessable(
                f"'{source}' holds infinite values in channel(s) {bad}; send NaN (or null) for missing samples.",
                field="data",
            )


def _finish(
    data: np.ndarray,
    source: str,
    kind: str,
    original_sfreq: float,
    chosen: dict[str, str],
    ignored: tuple[str, ...],
) -> Recording:
    """Checks every kind shares: samples present, no inf, some EEG not NaN; which EEG channels are missing."""
    if data.shape[0] == 0:
        raise Unprocessable(f"'{source}' holds no samples.", field="data")
    _check_finite(data, list(EEG_FILE_COLUMNS), source)
    eeg = data[:, : len(EEG_CHANNELS)]
    empty = np.isnan(eeg).all(axis=0)
    if empty.all():
        raise Unprocessable(
            f"'{source}' is NaN in every sample of every EEG channel ({data.shape[0]} samples); nothing to score.",
            field="data",
        )
    missing = tuple(c for j, c in enumerate(EEG_CHANNELS) if c not in chosen or empty[j])
    return Recording(
        data=np.ascontiguousarray(data, dtype=np.float32),
        source=source,
        kind=kind,
        original_sfreq=float(original_sfreq),
        missing=missing,
        ignored=tuple(ignored),
        channel_map=dict(chosen),
    )
