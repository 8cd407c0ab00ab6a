"""Streaming reader for long EEG recordings (24-72 h): EDF/BDF through pyEDFlib, anything else through MNE.

:func:`open_recording` reads only the header; :meth:`RecordingReader.read` returns any stretch ``[start_s, stop_s)``
in platform layout (``(n, 20)`` float32, :data:`~hms_core.constants.EEG_FILE_COLUMNS` order, microvolts,
:data:`~hms_core.constants.SFREQ` Hz, NaN for channels the file lacks), reading from disk only the input samples
that stretch needs plus a few filter lengths of padding. Memory therefore stays bounded by the chunk, whatever
the length of the file.

Resampling is polyphase (:func:`scipy.signal.resample_poly`, the same filter as
:func:`hms_core.eeg_io.resample`). A chunk is read with ``pad`` input samples of context on either side and starts
on a multiple of the decimation factor, so the output samples of consecutive chunks are the samples a resampling
of the whole file would give (to float rounding): a sine crossing a chunk boundary stays a sine.

Channel labels are mapped with :func:`hms_core.eeg_io.normalize_channel_name` (the first label that maps to a
channel wins, as in :func:`hms_core.eeg_io.read_edf`); physical units are converted to microvolts.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Self

import numpy as np

from hms_core.checks import check_range
from hms_core.constants import EEG_CHANNELS, EEG_FILE_COLUMNS, SFREQ
from hms_core.eeg_io import _UNIT_TO_UV, RecordError, normalize_channel_name

__all__ = ["EDF_SUFFIXES", "MAX_SFREQ", "MIN_SFREQ", "RecordingReader", "open_recording"]

#: Suffixes read with pyEDFlib (per-channel ``readSignal(start, n)``); everything else goes to ``mne.io.read_raw``.
EDF_SUFFIXES: tuple[str, ...] = (".edf", ".bdf", ".rec")
#: Plausible EEG sampling rates (Hz). Below 50 Hz the Nyquist frequency (25 Hz) no longer covers the 0.5-20 Hz
#: band the models look at; above 20 kHz the "rate" is a header error, not an EEG amplifier.
MIN_SFREQ: float = 50.0
MAX_SFREQ: float = 20_000.0


@dataclass
class _Channel:
    name: str  # canonical EEG_FILE_COLUMNS name
    index: int  # index in the file (pyEDFlib signal number or MNE channel index)
    label: str
    sfreq: float
    n_samples: int
    scale: float  # physical unit -> microvolts
    raw_index: int = -1  # EDF/BDF: index in the file header, annotation signals included


@dataclass
class RecordingReader:
    """An opened recording; use :func:`open_recording`. Close it (or use it as a context manager) when done."""

    path: Path
    backend: str  # "pyedflib" | "mne"
    duration_s: float
    start_datetime: dt.datetime | None
    sfreq: float
    labels: tuple[str, ...]  # every signal label of the file, in file order (annotation signals left out)
    _chans: list[_Channel] = field(repr=False)
    _handle: Any = field(repr=False)

    @property
    def channels(self) -> tuple[str, ...]:
        """Canonical names of the channels found, in EEG_FILE_COLUMNS order."""
        found = {c.name for c in self._chans}
        return tuple(c for c in EEG_FILE_COLUMNS if c in found)

    @property
    def missing(self) -> tuple[str, ...]:
        """EEG channels (of the 19) the file lacks; their columns read as NaN."""
        found = {c.name for c in self._chans}
        return tuple(c for c in EEG_CHANNELS if c not in found)

    @property
    def channel_map(self) -> dict[str, str]:
        """Canonical name -> label in the file."""
        return {c.name: c.label for c in self._chans}

    @property
    def original_sfreq(self) -> float:
        return max(c.sfreq for c in self._chans)

    @property
    def n_times(self) -> int:
        """Samples at ``sfreq`` over the whole recording."""
        return math.floor(self.duration_s * self.sfreq + 1e-6)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._handle is not None and self.backend == "pyedflib":
            self._handle.close()
        self._handle = None

    # Reading ---------------------------------------------------------------------------------------------------
    def _raw(self, ch: _Channel, start: int, stop: int) -> np.ndarray:
        """Input samples ``[start, stop)`` of one channel, float64, in the file's physical unit."""
        if self._handle is None:
            raise RecordError(f"EEG recording '{self.path}' is closed.")
        if self.backend == "pyedflib":
            return self._handle.samples(ch.raw_index, start, stop)
        return self._handle.get_data(picks=[ch.index], start=start, stop=stop)[0]

    def read(self, start_s: float, stop_s: float) -> np.ndarray:
        """Samples ``[round(start_s * sfreq), round(stop_s * sfreq))`` as float32 (n, 20) microvolts.

        The stretch is clipped to the recording; a channel that ends earlier than the others is NaN past its end.
        """
        if not (np.isfinite(start_s) and np.isfinite(stop_s)) or stop_s < start_s:
            raise RecordError(
                f"EEG recording '{self.path}': invalid stretch [{start_s}, {stop_s}) s; expected "
                f"0 <= start_s <= stop_s <= {self.duration_s:g}."
            )
        a = max(0, round(start_s * self.sfreq))
        b = min(self.n_times, round(stop_s * self.sfreq))
        out = np.full((len(EEG_FILE_COLUMNS), max(b - a, 0)), np.nan, np.float32)  # channel-major: row writes
        if b <= a:
            return out.T
        for ch in self._chans:
            sig = self._resampled(ch, a, b)
            out[EEG_FILE_COLUMNS.index(ch.name), : len(sig)] = sig
        return np.ascontiguousarray(out.T)

    def _resampled(self, ch: _Channel, a: int, b: int) -> np.ndarray:
        """Output samples ``[a, b)`` of one channel at ``self.sfreq`` (fewer if the channel ends before ``b``)."""
        import scipy.signal as ss

        if ch.sfreq == self.sfreq:
            stop = min(b, ch.n_samples)
            return (self._raw(ch, a, stop) * ch.scale).astype(np.float32) if stop > a else np.empty(0, np.float32)
        ratio = Fraction(self.sfreq / ch.sfreq).limit_denominator(1000)
        up, down = ratio.numerator, ratio.denominator
        # resample_poly's default filter has 10 * max(up, down) taps on each side at the upsampled rate
        pad = math.ceil(10 * max(up, down) / up) + 2
        # output j sits at input position j * down / up; a chunk starting at a multiple of `down` keeps that grid
        i0 = max(0, (math.floor(a * down / up) - pad) // down * down)
        i1 = min(ch.n_samples, math.ceil(b * down / up) + pad)
        if i1 <= i0:
            return np.empty(0, np.float32)
        x = self._raw(ch, i0, i1) * ch.scale
        y = ss.resample_poly(x, up, down)
        j0 = i0 * up // down
        n_total = math.ceil(ch.n_samples * up / down)  # the whole channel's resampled length
        lo, hi = a - j0, min(b, n_total) - j0
        return y[lo:hi].astype(np.float32)


class _EdfData:
    """Direct reads of EDF/BDF data records (numpy on the file): pyEDFlib validates the file and reads the header,
    but its per-channel ``readSignal`` walks the records one small read at a time (0.2 s per channel and 15 min),
    while one read of a block of records serves every channel of a chunk."""

    def __init__(self, path: Path, bdf: bool) -> None:
        with open(path, "rb") as f:
            head = f.read(256)
            ns = int(head[252:256].decode("ascii").strip())
            sig = f.read(256 * ns)
        self.header_bytes = 256 * (ns + 1)

        def field(offset: int, width: int) -> list[str]:
            start = offset * ns
            return [sig[start + i * width : start + (i + 1) * width].decode("latin-1").strip() for i in range(ns)]

        o = 0
        cols = {}
        for name, width in (("label", 16), ("transducer", 80), ("dim", 8), ("pmin", 8), ("pmax", 8), ("dmin", 8),
                            ("dmax", 8), ("prefilter", 80), ("n", 8), ("reserved", 32)):  # fmt: skip
            cols[name] = field(o, width)
            o += width
        self.labels = cols["label"]
        self.n_per_rec = [int(v) for v in cols["n"]]
        self.width = 3 if bdf else 2
        self.offsets = np.concatenate([[0], np.cumsum(self.n_per_rec)])  # in samples within a record
        self.rec_samples = int(self.offsets[-1])
        pmin, pmax = (np.array([float(v) for v in cols[k]]) for k in ("pmin", "pmax"))
        dmin, dmax = (np.array([float(v) for v in cols[k]]) for k in ("dmin", "dmax"))
        self.gain = (pmax - pmin) / np.where(dmax - dmin == 0, 1.0, dmax - dmin)
        self.offset = pmin - self.gain * dmin
        self._file = open(path, "rb")  # noqa: SIM115 - kept open until the reader closes
        self._cache: tuple[int, int, np.ndarray] | None = None

    def _block(self, r0: int, r1: int) -> np.ndarray:
        """Records ``[r0, r1)`` as int32 (n_records, samples per record)."""
        if self._cache is not None and self._cache[0] <= r0 and r1 <= self._cache[1]:
            c0, _, block = self._cache
            return block[r0 - c0 : r1 - c0]
        self._file.seek(self.header_bytes + r0 * self.rec_samples * self.width)
        raw = np.frombuffer(self._file.read((r1 - r0) * self.rec_samples * self.width), np.uint8)
        if self.width == 2:
            block = raw.view("<i2").astype(np.int32)
        else:
            b = raw.reshape(-1, 3).astype(np.int32)
            block = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
            block = np.where(block >= 1 << 23, block - (1 << 24), block)
        block = block.reshape(r1 - r0, self.rec_samples)
        self._cache = (r0, r1, block)
        return block

    def samples(self, i: int, start: int, stop: int) -> np.ndarray:
        """Physical samples ``[start, stop)`` of signal ``i`` (header index), float64."""
        n = self.n_per_rec[i]
        r0, r1 = start // n, -(-stop // n)
        # a little margin, so the other channels of the same chunk (their padding differs) hit the cache
        block = self._block(max(0, r0 - 2), min(self._n_records(), r1 + 2))
        base = max(0, r0 - 2)
        x = block[r0 - base : r1 - base, self.offsets[i] : self.offsets[i] + n].reshape(-1)
        x = x[start - r0 * n : stop - r0 * n]
        return x * self.gain[i] + self.offset[i]

    def _n_records(self) -> int:
        if not hasattr(self, "_nrec"):
            size = os.fstat(self._file.fileno()).st_size
            self._nrec = (size - self.header_bytes) // (self.rec_samples * self.width)
        return self._nrec

    def close(self) -> None:
        self._file.close()
        self._cache = None


def _bad(path: Path, what: str) -> RecordError:
    return RecordError(f"EEG recording '{path}' {what}")


def _check_rates(path: Path, chans: list[_Channel]) -> None:
    bad = [f"{c.label}: {c.sfreq:g} Hz" for c in chans if not (MIN_SFREQ <= c.sfreq <= MAX_SFREQ)]
    if bad:
        raise _bad(
            path,
            f"has an implausible sampling rate ({', '.join(bad[:4])}); expected {MIN_SFREQ:g}-{MAX_SFREQ:g} Hz "
            f"for EEG channels. The header's record duration or samples per record is probably wrong.",
        )


def _select(path: Path, labels: list[str]) -> dict[str, int]:
    chosen: dict[str, int] = {}
    for i, label in enumerate(labels):
        name = normalize_channel_name(label)
        if name is not None and name not in chosen:
            chosen[name] = i
    if not any(n in EEG_CHANNELS for n in chosen):
        raise _bad(
            path,
            f"has no EEG channel among its labels {labels}; expected 10-20 names such as 'Fp1', 'EEG FP1-REF', "
            f"'T7-LE' (see hms_core.eeg_io.normalize_channel_name).",
        )
    return chosen


#: edflib's reasons (in its error text) -> what they mean for the user.
_EDFLIB_REASONS = {
    "Filesize": "is truncated or padded: its size does not match the header's data records x record size",
    "Number of Datarecords": "has no data records (a recording of length 0) or an invalid record count",
    "Duration of Datarecord": "has an invalid data record duration in its header (so no valid sampling rate)",
    "Samples in Datarecord": "has an invalid number of samples per data record (so no valid sampling rate)",
    "Number of Signals": "has an invalid number of signals in its header",
    "Version": "does not start with an EDF/BDF version field (corrupt header, or not an EDF file)",
}


def _open_edf(path: Path) -> tuple[Any, list[_Channel], float, dt.datetime | None, list[str]]:
    import pyedflib

    try:
        reader = pyedflib.EdfReader(str(path))
    except OSError as e:
        text = str(e)
        why = next((v for k, v in _EDFLIB_REASONS.items() if k in text), "has a corrupt or non-standard header")
        raise _bad(path, f"could not be read as EDF/BDF: it {why} (pyEDFlib: {text}).") from e
    try:
        labels = list(reader.getSignalLabels())
        chosen = _select(path, labels)
        n_samp = reader.getNSamples()
        data = _EdfData(path, bdf=reader.filetype in (pyedflib.FILETYPE_BDF, pyedflib.FILETYPE_BDFPLUS))
        # pyEDFlib leaves the annotation signals out of its numbering; the header has them
        raw_idx = [i for i, lab in enumerate(data.labels) if lab not in ("EDF Annotations", "BDF Annotations")]
        chans = []
        for name, i in chosen.items():
            unit = reader.getPhysicalDimension(i).strip().lower()
            chans.append(
                _Channel(name, i, labels[i], float(reader.getSampleFrequency(i)), int(n_samp[i]),
                         _UNIT_TO_UV.get(unit, 1.0), raw_idx[i])
            )  # fmt: skip
        _check_rates(path, chans)
        duration = float(reader.getFileDuration())
        try:
            start = reader.getStartdatetime()
        except (ValueError, OSError):
            start = None
    except BaseException:
        if "data" in locals():
            data.close()
        raise
    finally:
        reader.close()  # edflib allows one open per file and process: the data are read with _EdfData
    return data, chans, duration, start, labels


def _open_mne(path: Path) -> tuple[Any, list[_Channel], float, dt.datetime | None, list[str]]:
    import mne

    try:
        raw = mne.io.read_raw(path, preload=False, verbose="error")
    except Exception as e:  # MNE raises ValueError, OSError, RuntimeError ... depending on the format
        raise _bad(path, f"could not be read by mne.io.read_raw: {type(e).__name__}: {e}") from e
    labels = list(raw.ch_names)
    chosen = _select(path, labels)
    sfreq = float(raw.info["sfreq"])
    volts = mne.io.constants.FIFF.FIFF_UNIT_V
    chans = [
        _Channel(name, i, labels[i], sfreq, int(raw.n_times), 1e6 if raw.info["chs"][i]["unit"] == volts else 1.0)
        for name, i in chosen.items()
    ]
    _check_rates(path, chans)
    meas = raw.info.get("meas_date")
    return raw, chans, raw.n_times / sfreq, meas, labels


def open_recording(
    path: str | os.PathLike[str], *, min_eeg_channels: int = 1, sfreq: float = SFREQ
) -> RecordingReader:
    """Open a recording for streaming reads; only the header is read here.

    ``min_eeg_channels`` is the fewest of the 19 EEG channels the caller can work with (a scanner passes
    ``19 - package.max_missing_channels``). Raises :class:`~hms_core.eeg_io.RecordError`, naming the file, for a
    missing, truncated or corrupt file, an implausible sampling rate, no (or too few) EEG channels and a
    recording of length 0.
    """
    check_range("min_eeg_channels", min_eeg_channels, 1, len(EEG_CHANNELS))
    path = Path(path)
    if not path.exists():
        raise _bad(path, "does not exist.")
    if path.is_file() and path.stat().st_size == 0:
        raise _bad(path, "is an empty file (0 bytes).")
    if path.suffix.lower() in EDF_SUFFIXES:
        handle, chans, duration, start, labels = _open_edf(path)
        backend = "pyedflib"
    else:
        handle, chans, duration, start, labels = _open_mne(path)
        backend = "mne"
    rec = RecordingReader(path, backend, duration, start, float(sfreq), tuple(labels), chans, handle)
    try:
        n_eeg = sum(c.name in EEG_CHANNELS for c in chans)
        if n_eeg < min_eeg_channels:
            raise _bad(
                path,
                f"has {n_eeg} of the {len(EEG_CHANNELS)} EEG channels ({list(rec.channels)}); at least "
                f"{min_eeg_channels} are needed (missing: {list(rec.missing)}).",
            )
        if duration <= 0 or min(c.n_samples for c in chans) == 0:
            raise _bad(path, f"has no samples (duration {duration:g} s); expected a recording of length > 0.")
    except BaseException:
        rec.close()
        raise
    return rec
