"""The prediction log: every window the service, ``hms predict`` or ``hms scan`` predicted, as data.

Layout: ``<root>/date=YYYY-MM-DD/part-<HHMMSSffffff>-<pid>-<random>.parquet`` (``root`` is
``<workspace>/monitoring/predictions`` by default), one file per writer flush and UTC day, each written to a
temporary name and renamed when complete. Parquet files rather than one DuckDB database, because:

- any number of processes (uvicorn workers, a scan, ``hms predict``) append at once without a lock: each writes
  its own files, so there is no locked database file to wait on or to fail on;
- a reader (the daily Dagster assets, DuckDB's ``read_parquet('<root>/date=*/*.parquet', hive_partitioning=1)``,
  pandas) never sees a half-written row group, and one day is one folder (the daily partition);
- a day can be archived or deleted by moving its folder.

What a row holds (:func:`prediction_rows` builds them): the time, request and window ids (random, generated here,
returned to the caller so that expert votes can be matched later), package version, input kind and source,
engine precision, the request's latency and window count, the six probabilities, their entropy and the members'
disagreement, the window-quality flags of the preprocessing, and the preprocessing figures that drift first
(:func:`monitored_feature_columns`: band powers per chain, amplitude, flagged / NaN / clipped fractions). No raw
EEG (a column holding arrays is dropped) and no patient identifiers: the columns of :data:`IDENTIFIER_COLUMNS`
are dropped unless ``store_identifiers`` (config ``monitoring.log.store_identifiers``) asks for them.

:meth:`PredictionLog.append` never blocks on disk and never raises: rows go into a bounded in-memory queue that a
background thread writes every ``flush_rows`` rows or ``flush_interval_s`` seconds (and on :meth:`close`). A full
queue drops the new rows and counts them; a full disk (less than ``min_free_mb`` free) or a folder that cannot be
written keeps the rows queued (retried with back-off, up to the queue bound). Each problem is logged once as a
warning and listed by :meth:`PredictionLog.health` (what the service's ``/ready`` shows) until a write succeeds.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pandas as pd

from hms_core.checks import check_range
from hms_core.constants import CHAIN_NAMES, CLASSES
from hms_core.ensemble.uncertainty import entropy

if TYPE_CHECKING:
    from hms_core.config import PlatformConfig

__all__ = [
    "IDENTIFIER_COLUMNS",
    "PROB_COLUMNS",
    "QUALITY_FLAG_COLUMNS",
    "PredictionLog",
    "logged_days",
    "monitored_feature_columns",
    "monitoring_dir",
    "new_request_id",
    "prediction_rows",
    "read_predictions",
]

_log = logging.getLogger(__name__)

#: One probability column per class, in :data:`hms_core.constants.CLASSES` order.
PROB_COLUMNS: tuple[str, ...] = tuple(f"prob_{c.lower()}" for c in CLASSES)
#: Window-quality flags of :func:`hms_core.preprocess.process_windows` kept in the log (numbers only: the
#: ``flagged_channels`` names are left out, ``flagged_mask`` carries the same information as bits).
QUALITY_FLAG_COLUMNS: tuple[str, ...] = (
    "nan_fraction", "was_interpolated", "n_flagged_channels", "flagged_mask", "n_flagged_bipolar",
    "n_missing_channels", "n_flat", "n_noisy", "n_pops", "clipped_fraction", "bad_window",
)  # fmt: skip
#: Columns that identify a recording or a patient: dropped unless ``store_identifiers``.
IDENTIFIER_COLUMNS: tuple[str, ...] = (
    "record_name", "file_name", "filename", "path", "eeg_id", "patient_id", "spectrogram_id", "label_id",
)  # fmt: skip
#: Per-window figures of the features table that are not band powers (``hms_core.preprocess`` adds them).
_QUALITY_FEATURES: tuple[str, ...] = ("flagged_fraction", "nan_fraction", "clipped_fraction", "pops_per_channel")
#: Per-chain features besides the band powers: amplitude (variance, uV^2), line length, 1/f slope.
_CHAIN_FEATURES: tuple[str, ...] = ("hjorth_activity", "line_length", "aperiodic_slope")
#: Partition folder name of a day.
DAY_PREFIX = "date="


def monitored_feature_columns() -> list[str]:
    """The preprocessing features the log keeps and drift is computed on: absolute and relative power of each
    band (:data:`hms_core.features.BANDS`) per chain, each chain's amplitude (Hjorth activity = variance in uV^2;
    its quantiles over the windows are the amplitude percentiles), line length and aperiodic slope, and the
    flagged-channel, NaN, clipped and electrode-pop figures of each window. A band above the filter's upper edge
    is absent from the features table and so from the log."""
    from hms_core.features import BANDS

    cols = [f"{c}_{b}_{kind}" for c in CHAIN_NAMES for b in BANDS for kind in ("abs", "rel")]
    cols += [f"{c}_{f}" for c in CHAIN_NAMES for f in _CHAIN_FEATURES]
    return cols + list(_QUALITY_FEATURES)


def monitoring_dir(cfg: PlatformConfig) -> Path:
    """``<workspace>/<monitoring.root>``: predictions/, labels/ and the daily reports."""
    return cfg.path(cfg.monitoring.root)


def new_request_id() -> str:
    """A random request id (no information about the input); window ``i`` of it is ``<request_id>:<i>``."""
    return uuid.uuid4().hex[:16]


def prediction_rows(
    probs: np.ndarray,
    batch: Any | None = None,
    *,
    package_version: str,
    input_kind: str,
    source: str = "serve",
    latency_s: float = float("nan"),
    request_id: str | None = None,
    window_starts: Sequence[float] | None = None,
    disagreement: np.ndarray | None = None,
    precision: str | None = None,
    identifiers: Mapping[str, Any] | None = None,
    timestamp: datetime | None = None,
) -> pd.DataFrame:
    """The log rows of one request: B windows predicted together.

    ``probs`` (B, 6) in CLASSES order; ``batch`` the :class:`hms_core.preprocess.BatchOutput` the prediction was
    made from (its features table and window-quality flags; None logs the predictions alone); ``input_kind``
    e.g. ``"parquet"``, ``"edf"``; ``source`` ``"serve"``, ``"predict"`` or ``"scan"``; ``latency_s`` the request's
    wall time; ``window_starts`` each window's start in the recording (s); ``identifiers`` (e.g.
    ``{"record_name": ...}``) are written only by a log with ``store_identifiers``. The ``window_id`` column
    (``<request_id>:<i>``) is what a labels CSV refers to.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(CLASSES):
        raise ValueError(f"prediction_rows: probs must be shaped (n_windows, {len(CLASSES)}), got {p.shape}")
    b = p.shape[0]
    rid = request_id or new_request_id()
    ts = pd.Timestamp(timestamp or datetime.now(UTC))
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    cols: dict[str, Any] = {
        "timestamp": pd.DatetimeIndex([ts] * b),
        "request_id": [rid] * b,
        "window_id": [f"{rid}:{i}" for i in range(b)],
        "window_index": np.arange(b, dtype=np.int32),
        "window_start_s": np.full(b, np.nan) if window_starts is None else np.asarray(window_starts, np.float64),
        "package_version": [str(package_version)] * b,
        "input_kind": [str(input_kind)] * b,
        "source": [str(source)] * b,
        "precision": [precision or ""] * b,
        "latency_s": np.full(b, float(latency_s)),
        "n_windows": np.full(b, b, dtype=np.int32),
        "predicted_class": [CLASSES[k] for k in p.argmax(axis=1)],
        "entropy": entropy(p),
        "disagreement": np.full(b, np.nan) if disagreement is None else np.asarray(disagreement, np.float64),
    }
    for k, c in enumerate(PROB_COLUMNS):
        cols[c] = p[:, k]
    if batch is not None:
        wq = getattr(batch, "window_quality", None) or {}
        for c in QUALITY_FLAG_COLUMNS:
            if c in wq:
                v = np.asarray(wq[c])
                cols[c] = v.astype(np.float64) if v.dtype.kind == "f" else v
        feats = getattr(batch, "features", None)
        if feats is not None:
            present = [c for c in monitored_feature_columns() if c in feats.columns]
            for c in present:
                cols[c] = np.asarray(feats[c].to_numpy(), dtype=np.float64)
    for k, v in (identifiers or {}).items():
        cols[k] = list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v] * b
    lengths = {k: len(v) for k, v in cols.items()}
    if len(set(lengths.values())) != 1:
        bad = {k: n for k, n in lengths.items() if n != b}
        raise ValueError(f"prediction_rows: {b} windows but columns of other lengths {bad}")
    return pd.DataFrame(cols)


class PredictionLog:
    """Append-only, day-partitioned parquet log with a bounded queue and a background writer (module docstring).

    ``PredictionLog(root)``; ``append(rows)`` (pandas or polars frame, or a list of dicts) returns whether the
    rows were queued and never raises; ``flush()`` waits until what is queued is written (tests, CLI);
    ``close()`` flushes and stops the writer; ``health()`` / ``problems`` say what went wrong.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        max_queue_rows: int = 100_000,
        flush_rows: int = 2000,
        flush_interval_s: float = 5.0,
        min_free_mb: float = 100.0,
        store_identifiers: bool = False,
        retry_s: float = 5.0,
    ) -> None:
        self.root = Path(root)
        self.max_queue_rows = int(check_range("max_queue_rows", max_queue_rows, 1))
        self.flush_rows = int(check_range("flush_rows", flush_rows, 1))
        self.flush_interval_s = float(check_range("flush_interval_s", flush_interval_s, 0, low_inclusive=False))
        self.min_free_mb = float(check_range("min_free_mb", min_free_mb, 0))
        self.retry_s = float(check_range("retry_s", retry_s, 0, low_inclusive=False))
        self.store_identifiers = bool(store_identifiers)
        self._cond = threading.Condition()
        self._pending: deque[pd.DataFrame] = deque()
        self._queued_rows = 0
        self._accepted = 0
        self._written = 0
        self._dropped = 0
        self._files = 0
        self._attempts = 0
        self._failing = False
        self._flush_wanted = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._problems: dict[str, str] = {}
        self._last_write: str | None = None

    @classmethod
    def from_config(cls, cfg: PlatformConfig) -> PredictionLog:
        """The workspace's log (``<root>/monitoring/predictions``) with the ``monitoring.log`` keys."""
        m = cfg.monitoring.log
        return cls(
            monitoring_dir(cfg) / "predictions", max_queue_rows=m.queue_rows, flush_rows=m.flush_rows,
            flush_interval_s=m.flush_interval_s, min_free_mb=m.min_free_mb, store_identifiers=m.store_identifiers,
        )  # fmt: skip

    # --- the request side: O(1), never raises ----------------------------------------------------------------
    def append(self, rows: Any) -> bool:
        """Queue ``rows`` for writing. Returns False (and counts the rows as dropped) when the queue is full or
        the log is closed; never raises and never waits for the disk."""
        try:
            df = _as_frame(rows)
            n = len(df)
            if n == 0:
                return True
            with self._cond:
                if self._closed:
                    self._dropped += n
                    self._problem("closed", f"prediction log {self.root} is closed; {n} row(s) dropped")
                    return False
                if self._queued_rows + n > self.max_queue_rows:
                    self._dropped += n
                    self._problem(
                        "queue_full",
                        f"prediction log queue full ({self._queued_rows} of max_queue_rows={self.max_queue_rows} "
                        f"rows waiting for {self.root}); {self._dropped} row(s) dropped so far",
                    )
                    return False
                self._pending.append(df)
                self._queued_rows += n
                self._accepted += n
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
                    self._thread.start()
                if self._queued_rows >= self.flush_rows:
                    self._cond.notify_all()
            return True
        except Exception as e:  # noqa: BLE001 - a log problem must never fail a prediction
            with self._cond:
                self._dropped += _safe_len(rows)
                self._problem("bad_rows", f"prediction log could not queue rows ({type(e).__name__}: {e})")
            return False

    # --- state ------------------------------------------------------------------------------------------------
    @property
    def problems(self) -> list[str]:
        """What currently prevents rows from being logged (empty when all is well)."""
        with self._cond:
            return list(self._problems.values())

    def health(self) -> dict[str, Any]:
        """For ``/ready``: ``ok``, ``problems`` and the counters (rows accepted, queued, written, dropped)."""
        with self._cond:
            return {
                "ok": not self._problems, "problems": list(self._problems.values()), "root": str(self.root),
                "accepted_rows": self._accepted, "queued_rows": self._queued_rows, "written_rows": self._written,
                "dropped_rows": self._dropped, "files_written": self._files, "last_write_utc": self._last_write,
            }  # fmt: skip

    def flush(self, timeout: float = 30.0) -> bool:
        """Ask the writer to write everything queued now and wait (up to ``timeout`` s). True when the queue is
        empty; False when a write failed (see :attr:`problems`) or the time ran out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._queued_rows == 0:
                return True
            seen = self._attempts
            self._flush_wanted = True
            self._cond.notify_all()
            while self._queued_rows > 0:
                if self._attempts > seen and self._failing:
                    return False
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._cond.wait(left)
            return True

    def close(self, timeout: float = 30.0) -> bool:
        """Write what is queued (one last attempt), stop the writer. True when nothing was lost at close."""
        with self._cond:
            if self._closed:
                return self._queued_rows == 0
            self._closed = True
            dropped = self._dropped
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._cond:
            return self._queued_rows == 0 and self._dropped == dropped

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the writer thread ------------------------------------------------------------------------------------
    def _problem(self, kind: str, message: str) -> None:
        """Record a problem (caller holds the lock); warn once per new problem kind."""
        if kind not in self._problems:
            _log.warning("%s", message)
        self._problems[kind] = message

    def _run(self) -> None:
        while True:
            with self._cond:
                wait = self.retry_s if self._failing else self.flush_interval_s
                deadline = time.monotonic() + wait
                while not self._closed and not (self._flush_wanted and not self._failing):
                    if not self._failing and self._queued_rows >= self.flush_rows:
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch = list(self._pending)
                self._pending.clear()
                closing = self._closed
                self._flush_wanted = False
            unwritten: list[pd.DataFrame] = []
            n_written = 0
            if batch:
                unwritten, n_written = self._write(batch)
            with self._cond:
                self._attempts += 1
                self._written += n_written
                lost = sum(len(d) for d in unwritten)
                self._queued_rows -= n_written
                if unwritten and closing:
                    self._dropped += lost
                    self._queued_rows -= lost
                    self._problem("closed", f"prediction log {self.root}: {lost} row(s) not written at close")
                elif unwritten:
                    self._pending.extendleft(reversed(unwritten))
                self._failing = bool(unwritten)
                if batch and not unwritten:
                    for kind in ("disk_full", "unwritable", "queue_full"):
                        self._problems.pop(kind, None)
                self._cond.notify_all()
                if closing:
                    return

    def _free_mb(self) -> float:
        p = self.root
        while not p.exists() and p != p.parent:
            p = p.parent
        return shutil.disk_usage(p).free / 1e6

    def _write(self, batch: list[pd.DataFrame]) -> tuple[list[pd.DataFrame], int]:
        """Write ``batch``: returns (the frames not written, to retry; rows written). Rows that can never be
        written (a column parquet cannot store) are dropped and reported, not retried."""
        from hms_core.io import write_parquet

        try:
            df = self._clean(pd.concat(batch, ignore_index=True))
        except Exception as e:  # noqa: BLE001
            with self._cond:
                n = sum(len(d) for d in batch)
                self._dropped += n
                self._queued_rows -= n
                self._problem("bad_rows", f"prediction log: {n} row(s) dropped ({type(e).__name__}: {e})")
            return [], 0
        try:
            free = self._free_mb()
        except OSError as e:
            free = float("inf")
            _log.debug("disk usage of %s unknown: %s", self.root, e)
        if free < self.min_free_mb:
            with self._cond:
                self._problem(
                    "disk_full",
                    f"prediction log {self.root}: only {free:.0f} MB free on its disk (min_free_mb="
                    f"{self.min_free_mb:g}); {len(df)} row(s) kept queued, not written",
                )
            return [df], 0
        days = df["timestamp"].dt.strftime("%Y-%m-%d")
        left: list[pd.DataFrame] = []
        written = 0
        for day in sorted(days.unique()):
            part = df[days == day]
            name = f"part-{datetime.now(UTC):%H%M%S%f}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
            try:
                write_parquet(self.root / f"{DAY_PREFIX}{day}" / name, part.reset_index(drop=True))
            except OSError as e:
                left.append(part)
                with self._cond:
                    self._problem(
                        "unwritable",
                        f"prediction log: cannot write {self.root / (DAY_PREFIX + day)} ({e.strerror or e}); "
                        f"rows kept queued and retried every {self.retry_s:g} s",
                    )
                continue
            except Exception as e:  # noqa: BLE001 - e.g. a column pyarrow cannot convert: retrying will not help
                with self._cond:
                    self._dropped += len(part)
                    self._queued_rows -= len(part)
                    self._problem(
                        "bad_rows", f"prediction log: {len(part)} row(s) dropped ({type(e).__name__}: {e})"
                    )
                continue
            written += len(part)
            with self._cond:
                self._files += 1
                self._last_write = datetime.now(UTC).isoformat(timespec="seconds")
        return left, written

    def _clean(self, df: pd.DataFrame) -> pd.DataFrame:
        """A timestamp on every row (UTC), identifiers dropped unless asked for, no array-valued columns."""
        if "timestamp" not in df.columns:
            df["timestamp"] = pd.Timestamp.now(tz="UTC")
        ts = pd.to_datetime(df["timestamp"], utc=True)
        df["timestamp"] = ts
        drop = [] if self.store_identifiers else [c for c in IDENTIFIER_COLUMNS if c in df.columns]
        for c in df.columns:
            if df[c].dtype == object:
                first = df[c].dropna()
                if len(first) and isinstance(first.iloc[0], (np.ndarray, list, tuple, bytes)):
                    drop.append(c)  # a signal or any other array never goes into the log
        return df.drop(columns=drop) if drop else df


def _as_frame(rows: Any) -> pd.DataFrame:
    if isinstance(rows, pd.DataFrame):
        return rows
    if hasattr(rows, "to_pandas"):  # polars
        return rows.to_pandas()
    return pd.DataFrame(list(rows) if not isinstance(rows, Mapping) else rows)


def _safe_len(rows: Any) -> int:
    try:
        return len(rows)
    except Exception:  # noqa: BLE001
        return 0


# --- reading --------------------------------------------------------------------------------------------------
def _day_str(day: str | date | datetime) -> str:
    if isinstance(day, datetime):
        return day.strftime("%Y-%m-%d")
    if isinstance(day, date):
        return day.isoformat()
    try:
        return date.fromisoformat(str(day)).isoformat()
    except ValueError:
        raise ValueError(
            f"Invalid value for the 'day' parameter. Allowed values are dates such as '2026-12-02', "
            f"but got {day!r} instead."
        ) from None


def logged_days(root: str | os.PathLike[str]) -> list[str]:
    """Days (``YYYY-MM-DD``) that have at least one complete part file under ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        d.name.removeprefix(DAY_PREFIX)
        for d in root.glob(f"{DAY_PREFIX}*")
        if d.is_dir() and any(d.glob("part-*.parquet"))
    )


def read_predictions(
    root: str | os.PathLike[str], day: str | date | datetime, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """Every row logged on ``day`` (UTC), in time order; an empty frame when nothing was logged that day.
    Temporary files of a write in progress are never read (they are not named ``part-*``)."""
    folder = Path(root) / f"{DAY_PREFIX}{_day_str(day)}"
    files = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    if not files:
        return pd.DataFrame(columns=list(columns) if columns else [])
    frames = []
    for f in files:
        d = pd.read_parquet(f)
        frames.append(d[[c for c in columns if c in d.columns]] if columns else d)
    out = pd.concat(frames, ignore_index=True)
    return (
        out.sort_values("timestamp", kind="stable").reset_index(drop=True) if "timestamp" in out.columns else out
    )
