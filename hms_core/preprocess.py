"""The preprocessing pipeline: one function for a batch of 50-s EEG windows, used for training partitions
(:func:`build_partition`, streaming to memory-mapped arrays) and for single records in serving
(:func:`preprocess_record`).

Steps per window (all vectorised across the batch): NaN gaps (short ones interpolated, long ones filled and the
channel flagged) -> flat/disconnected channels and electrode pops on the raw signal -> zero-phase SOS band-pass +
notch (and harmonics) on the whole 50 s -> noisy channels (robust amplitude after filtering) -> central
``context_length`` samples kept -> double-banana montage -> amplitude clipping -> features and spectrograms
(on unscaled microvolts, over the labelled segment or the context) -> robust scaling (median/IQR per channel).
EKG is filtered and scaled like EEG but kept apart.

Partition layout (row ``i`` of ``index.parquet`` <-> index ``i`` of every array) is described in
:func:`build_partition`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hms_core.config import PreprocessingConfig
from hms_core.constants import (
    EEG_CHANNELS,
    EEG_FILE_COLUMNS,
    EEG_WINDOW_SAMPLES,
    SFREQ,
    SPEC_FREQS,
    SPEC_WINDOW_ROWS,
    CHAIN_NAMES,
    bipolar_names,
)
from hms_core.eeg_io import (
    RecordError,
    extract_window,
    kaggle_spectrogram_window,
    read_hms_eeg,
    read_kaggle_spectrogram_table,
)
from hms_core.io import atomic_path, write_json, write_parquet
from hms_core.signal import (
    apply_filter,
    bipolar_montage,
    bipolar_quality,
    clip_amplitude,
    design_filter,
    detect_artifacts,
    fill_nans,
    robust_scale,
)
from hms_core.spectral import (
    chain_average,
    compute_spectrogram,
    kaggle_spectrogram_image,
    log_normalize,
    spectrogram_axes,
)

__all__ = [
    "BatchOutput",
    "PartitionManifest",
    "PartitionData",
    "process_windows",
    "preprocess_record",
    "build_partition",
    "load_partition",
    "partition_checks",
    "array_specs",
    "QUALITY_COLUMNS",
]

N_EEG = len(EEG_CHANNELS)
#: Per-window quality columns added to index.parquet.
QUALITY_COLUMNS: tuple[str, ...] = (
    "nan_fraction", "was_interpolated", "n_flagged_channels", "flagged_mask", "flagged_channels",
    "n_flagged_bipolar", "n_missing_channels", "n_flat", "n_noisy", "n_pops", "clipped_fraction",
)  # fmt: skip
ROW_COLUMNS_REQUIRED: tuple[str, ...] = ("eeg_id", "eeg_label_offset_seconds", "patient_id", "fold")
PROGRESS_FILE = "progress.json"
PARTIAL_DIR = ".partial"


# --- the shared per-batch transform -----------------------------------------------------------------------------
@dataclass
class BatchOutput:
    """Outputs of :func:`process_windows` for B windows (float32; cast to the storage dtype when written)."""

    referential: np.ndarray  # (B, 19, context)
    bipolar: np.ndarray  # (B, 16|18, context)
    ekg: np.ndarray  # (B, context)
    quality: np.ndarray  # (B, 16|18) bool, True = usable derivation
    quality_ref: np.ndarray  # (B, 19) bool
    spectrograms: dict[str, np.ndarray]  # type -> (B, 4, F, T)
    features: Any  # polars.DataFrame (B rows) or None
    window_quality: dict[str, np.ndarray]  # QUALITY_COLUMNS -> (B,)
    seconds: dict[str, float] = field(default_factory=dict)


def _span(cfg: PreprocessingConfig, span: str) -> slice:
    ctx, seg = cfg.eeg.context_length, cfg.eeg.segment_length
    if span == "context":
        return slice(0, ctx)
    start = (ctx - seg) // 2
    return slice(start, start + seg)


def _span_length(cfg: PreprocessingConfig, span: str) -> int:
    s = _span(cfg, span)
    return s.stop - s.start


def n_bipolar(cfg: PreprocessingConfig) -> int:
    return len(bipolar_names(cfg.eeg.include_central_chain))


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str) -> _Timer:
        self._name = name
        return self

    def __enter__(self) -> None:
        self._t = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.seconds[self._name] = self.seconds.get(self._name, 0.0) + time.perf_counter() - self._t


def process_windows(
    windows: np.ndarray,
    cfg: PreprocessingConfig,
    record_ids: Sequence[str] | None = None,
    sfreq: float = SFREQ,
    compute_features: bool | None = None,
) -> BatchOutput:
    """Preprocess B windows shaped (B, n_times, 20) in EEG_FILE_COLUMNS order (microvolts, 200 Hz).

    ``n_times`` is normally 10000 (the 50-s window); the filters run on all of it and the central
    ``cfg.eeg.context_length`` samples are kept. Raises :class:`RecordError` naming the record for a wrong sampling
    rate, a wrong channel count, a too-short window or an all-NaN record.
    """
    ecfg = cfg.eeg
    windows = np.asarray(windows)
    b = windows.shape[0]
    ids = list(record_ids) if record_ids is not None else [f"window {i}" for i in range(b)]
    if sfreq != SFREQ:
        raise RecordError(
            f"EEG record(s) {ids[:3]} are sampled at {sfreq:g} Hz but the pipeline expects {SFREQ} Hz; "
            f"resample first (hms_core.eeg_io.read_edf does it)."
        )
    if windows.ndim != 3 or windows.shape[2] != len(EEG_FILE_COLUMNS):
        raise RecordError(
            f"EEG record(s) {ids[:3]}: expected windows shaped (batch, n_times, {len(EEG_FILE_COLUMNS)}) with "
            f"columns {list(EEG_FILE_COLUMNS)}, got {windows.shape}."
        )
    n_times = windows.shape[1]
    if n_times < ecfg.context_length:
        raise RecordError(
            f"EEG record {ids[0]!r} is too short: {n_times} samples ({n_times / sfreq:.1f} s) but "
            f"context_length is {ecfg.context_length} samples ({ecfg.context_length / sfreq:.1f} s)."
        )
    tm = _Timer()
    with tm("nan"):
        x = np.ascontiguousarray(windows.transpose(0, 2, 1), dtype=np.float32)
        nan = np.isnan(x[:, :N_EEG])
        all_nan = nan.all(axis=(1, 2))
        if all_nan.any() and ecfg.all_nan_windows == "error":
            bad = [ids[i] for i in np.flatnonzero(all_nan)]
            raise RecordError(
                f"EEG record(s) {bad} are all NaN in every EEG channel; nothing to preprocess "
                f"(set preprocessing.eeg.all_nan_windows: flag to keep such windows as flagged zeros)."
            )
        x, nrep = fill_nans(x, max_gap=int(round(ecfg.max_gap_s * sfreq)), copy=False)
    with tm("artifacts"):
        art = detect_artifacts(
            x[:, :N_EEG], flat_uv=ecfg.flat_uv, noisy_uv=None, pop_uv=ecfg.pop_uv,
            max_pops=ecfg.max_pops, sfreq=sfreq,
        )  # fmt: skip
    with tm("filter"):
        sos = design_filter(
            ecfg.filter_low, ecfg.filter_high, float(sfreq), ecfg.filter_order, ecfg.notch_freq, ecfg.notch_quality
        )
        y = apply_filter(x, sos)
        c0 = (n_times - ecfg.context_length) // 2
        y = y[..., c0 : c0 + ecfg.context_length]
    with tm("artifacts"):
        # loose/noisy electrodes are judged after the band-pass, so slow drifts and DC offsets do not count
        q25, q75 = np.percentile(y[:, :N_EEG, ::4], [25, 75], axis=-1)
        art.noisy = (q75 - q25) / 1.349 > ecfg.noisy_uv
        missing = nrep.all_nan[:, :N_EEG]
        long_gaps = nrep.long_gap_fraction[:, :N_EEG] > ecfg.max_nan_fraction
        ref_bad = missing | long_gaps | art.flat | art.noisy | art.popping
        ref_ok = ~ref_bad
        bip_ok = bipolar_quality(ref_ok, ecfg.include_central_chain)
    with tm("montage"):
        ref = y[:, :N_EEG]
        ekg = y[:, N_EEG]
        bip = bipolar_montage(ref, ecfg.include_central_chain)
        ref, _ = clip_amplitude(ref, ecfg.clip_uv, out=ref)
        bip, clipped = clip_amplitude(bip, ecfg.clip_uv, out=bip)
        ekg, _ = clip_amplitude(ekg, 10 * ecfg.clip_uv, out=ekg)
    feats = None
    if compute_features if compute_features is not None else cfg.features.enabled:
        from hms_core.features import compute_features as _features

        with tm("features"):
            sl = _span(cfg, cfg.features.span)
            feats = _features(
                bip[..., sl], sfreq, quality=bip_ok, fmin=ecfg.filter_low, fmax=ecfg.filter_high,
                extra={"nan_fraction": nrep.nan_fraction[:, :N_EEG].mean(1),
                       "flagged_fraction": ref_bad.mean(1), "clipped_fraction": clipped.mean(1),
                       "pops_per_channel": art.n_pops.mean(1)},
            )  # fmt: skip
    specs: dict[str, np.ndarray] = {}
    sl = _span(cfg, cfg.spectrogram.span)
    seg = bip[:, : 4 * len(CHAIN_NAMES), sl]
    for name in cfg.spectrogram.types:
        with tm(f"spec_{name}"):
            power, _ = compute_spectrogram(name, seg, cfg.spectrogram, sfreq)
            specs[name] = log_normalize(chain_average(power, bip_ok))
    with tm("scaling"):
        if ecfg.scaling == "robust":
            robust_scale(ref, out=ref)
            robust_scale(bip, out=bip)
            robust_scale(ekg, out=ekg)
    weights = 1 << np.arange(N_EEG, dtype=np.int64)
    flagged_names = np.array([",".join(EEG_CHANNELS[j] for j in np.flatnonzero(r)) for r in ref_bad], dtype=object)
    wq = {
        "nan_fraction": nrep.nan_fraction[:, :N_EEG].mean(1).astype(np.float32),
        "was_interpolated": nrep.interpolated[:, :N_EEG].any(1),
        "n_flagged_channels": ref_bad.sum(1).astype(np.int16),
        "flagged_mask": (ref_bad * weights).sum(1).astype(np.int64),
        "flagged_channels": flagged_names,
        "n_flagged_bipolar": (~bip_ok).sum(1).astype(np.int16),
        "n_missing_channels": missing.sum(1).astype(np.int16),
        "n_flat": art.flat.sum(1).astype(np.int16),
        "n_noisy": art.noisy.sum(1).astype(np.int16),
        "n_pops": art.n_pops.sum(1).astype(np.int32),
        "clipped_fraction": clipped.mean(1).astype(np.float32),
    }
    return BatchOutput(ref, bip, ekg, bip_ok, ref_ok, specs, feats, wq, tm.seconds)


def preprocess_record(
    eeg: np.ndarray,
    cfg: PreprocessingConfig,
    sfreq: float = SFREQ,
    record_id: str = "record",
    offset_s: float | None = None,
) -> dict[str, Any]:
    """Preprocess one record (n_times, 20) in EEG_FILE_COLUMNS order: the serving path, same code as training.

    Uses the 50-s window at ``offset_s`` (default: the centre of the record; records shorter than 50 s but at
    least ``context_length`` samples are used whole). Returns ``bipolar`` (16|18, context), ``referential``
    (19, context), ``ekg`` (context,), ``quality`` (16|18,) bool, ``spec_<type>`` (4, F, T) in the storage dtype,
    ``features`` (one-row polars DataFrame or None) and ``window_quality`` (dict of scalars).
    """
    eeg = np.asarray(eeg)
    if eeg.ndim != 2 or eeg.shape[1] != len(EEG_FILE_COLUMNS):
        raise RecordError(
            f"EEG record {record_id!r}: expected an array shaped (n_times, {len(EEG_FILE_COLUMNS)}) with columns "
            f"{list(EEG_FILE_COLUMNS)}, got {eeg.shape}."
        )
    if sfreq != SFREQ:
        raise RecordError(
            f"EEG record {record_id!r} is sampled at {sfreq:g} Hz but the pipeline expects {SFREQ} Hz; "
            f"resample first (hms_core.eeg_io.read_edf does it)."
        )
    n = eeg.shape[0]
    if n > EEG_WINDOW_SAMPLES or offset_s is not None:
        off = (n - EEG_WINDOW_SAMPLES) / 2 / sfreq if offset_s is None else offset_s
        eeg = extract_window(eeg, np.floor(off * sfreq) / sfreq, record_id, EEG_WINDOW_SAMPLES, sfreq)
    out = process_windows(eeg[None], cfg, [record_id], sfreq)
    dt = np.dtype(cfg.eeg.dtype)
    res: dict[str, Any] = {
        "bipolar": out.bipolar[0].astype(dt),
        "referential": out.referential[0].astype(dt),
        "ekg": out.ekg[0].astype(dt),
        "quality": out.quality[0],
        "features": out.features,
        "window_quality": {k: v[0] for k, v in out.window_quality.items()},
    }
    for name, arr in out.spectrograms.items():
        res[f"spec_{name}"] = arr[0].astype(dt)
    return res


# --- partition layout -----------------------------------------------------------------------------------------
def array_specs(
    cfg: PreprocessingConfig, n_rows: int, with_kaggle: bool
) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) of every array a partition of ``n_rows`` windows holds."""
    dt = cfg.eeg.dtype
    ctx = cfg.eeg.context_length
    specs: dict[str, tuple[tuple[int, ...], str]] = {
        "bipolar": ((n_rows, n_bipolar(cfg), ctx), dt),
        "referential": ((n_rows, N_EEG, ctx), dt),
        "ekg": ((n_rows, ctx), dt),
        "quality": ((n_rows, n_bipolar(cfg)), "bool"),
    }
    n_span = _span_length(cfg, cfg.spectrogram.span)
    for name in cfg.spectrogram.types:
        f, t = spectrogram_axes(name, cfg.spectrogram, n_span).shape
        specs[f"spec_{name}"] = ((n_rows, len(CHAIN_NAMES), f, t), dt)
    if with_kaggle:
        specs["spec_kaggle"] = ((n_rows, len(CHAIN_NAMES), len(SPEC_FREQS), SPEC_WINDOW_ROWS), dt)
    return specs


@dataclass
class PartitionManifest:
    """What :func:`build_partition` wrote; ``to_dict()`` is JSON-ready (the asset's metadata)."""

    out_dir: str
    n_rows: int
    shapes: dict[str, list[int]]
    dtypes: dict[str, str]
    bytes: dict[str, int]
    total_bytes: int
    seconds: float
    step_seconds: dict[str, float]
    records_per_second: float
    frequency_axes: dict[str, list[float]]
    time_axes: dict[str, list[float]]
    n_flagged_channels: int
    flagged_fraction: float
    flagged_bipolar_fraction: float
    nan_fraction: float
    n_windows_with_flags: int
    folds: list[int]
    n_patients: int
    n_eegs: int
    resumed_from: int
    batch_size: int
    config_hash: str
    config: dict[str, Any]
    files: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _config_hash(cfg: PreprocessingConfig) -> str:
    return hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]


def _fingerprint(rows: pd.DataFrame, cfg: PreprocessingConfig, batch_size: int, with_kaggle: bool) -> str:
    cols = [c for c in ("eeg_id", "eeg_label_offset_seconds", "spectrogram_id", "spectrogram_label_offset_seconds")
            if c in rows.columns]  # fmt: skip
    h = hashlib.sha256(pd.util.hash_pandas_object(rows[cols], index=False).values.tobytes())
    h.update(f"{_config_hash(cfg)}|{batch_size}|{with_kaggle}".encode())
    return h.hexdigest()[:16]


class _LRU:
    """Small thread-safe LRU cache of loaded files (rows of one EEG are usually adjacent)."""

    def __init__(self, loader: Callable[[Any], np.ndarray], size: int = 16) -> None:
        self.loader, self.size, self.data = loader, size, OrderedDict()
        self.lock = threading.Lock()

    def __call__(self, key: Any) -> np.ndarray:
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
        val = self.loader(key)  # outside the lock: reads of different files overlap
        with self.lock:
            self.data[key] = val
            while len(self.data) > self.size:
                self.data.popitem(last=False)
        return val


def _rows_in(batch_starts: Any, batch_size: int, n: int) -> int:
    return int(sum(min(batch_size, n - b) for b in batch_starts))


def _validate_rows(rows: pd.DataFrame, need_spec: bool) -> None:
    need = list(ROW_COLUMNS_REQUIRED)
    if need_spec:
        need += ["spectrogram_id", "spectrogram_label_offset_seconds"]
    missing = [c for c in need if c not in rows.columns]
    if missing:
        raise ValueError(f"build_partition: 'rows' lacks column(s) {missing}; it has {list(rows.columns)}.")
    if rows.empty:
        raise ValueError("build_partition: 'rows' is empty; a partition needs at least one labelled row.")


@dataclass
class _BatchJob:
    b0: int
    rows: pd.DataFrame
    eeg_dir: str
    spec_dir: str | None
    partial: str


def _write_rows(path: Path, b0: int, arr: np.ndarray) -> None:
    """Write ``arr`` as rows ``b0 ...`` of the .npy file at ``path`` in place (dtype of the file)."""
    mm = np.load(path, mmap_mode="r")
    offset, dtype, row_shape = mm.offset, mm.dtype, mm.shape[1:]
    del mm
    data = np.ascontiguousarray(arr, dtype=dtype)
    if data.shape[1:] != row_shape:
        raise ValueError(f"Rows for '{path}' have shape {data.shape[1:]}, expected {row_shape}.")
    with open(path, "r+b") as f:
        f.seek(offset + b0 * int(np.prod(row_shape)) * dtype.itemsize)
        f.write(data.tobytes())


def _run_batch(
    job: _BatchJob, cfg: PreprocessingConfig, eegs: _LRU, spec_tables: _LRU | None
) -> tuple[int, dict[str, float]]:
    """Read, preprocess and write one batch of rows into the partial arrays; returns (b0, step seconds)."""
    partial = Path(job.partial)
    secs: dict[str, float] = {}
    t0 = time.perf_counter()
    ids = [f"{Path(job.eeg_dir) / str(e)}.parquet (row {job.b0 + i}, offset {o} s)"
           for i, (e, o) in enumerate(zip(job.rows["eeg_id"], job.rows["eeg_label_offset_seconds"]))]  # fmt: skip
    windows = np.stack(
        [extract_window(eegs(e), o, rid)
         for e, o, rid in zip(job.rows["eeg_id"], job.rows["eeg_label_offset_seconds"], ids)]
    )  # fmt: skip
    kag = None
    if spec_tables is not None:
        kag = np.stack(
            [kaggle_spectrogram_window(spec_tables(s), o)
             for s, o in zip(job.rows["spectrogram_id"], job.rows["spectrogram_label_offset_seconds"])]
        )  # fmt: skip
    secs["read"] = time.perf_counter() - t0
    out = process_windows(windows, cfg, ids)
    secs.update(out.seconds)
    t0 = time.perf_counter()
    if kag is not None:
        _write_rows(partial / "spec_kaggle.npy", job.b0, kaggle_spectrogram_image(kag))
    secs["spec_kaggle"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _write_rows(partial / "bipolar.npy", job.b0, out.bipolar)
    _write_rows(partial / "referential.npy", job.b0, out.referential)
    _write_rows(partial / "ekg.npy", job.b0, out.ekg)
    _write_rows(partial / "quality.npy", job.b0, out.quality)
    for name, arr in out.spectrograms.items():
        _write_rows(partial / f"spec_{name}.npy", job.b0, arr)
    write_parquet(partial / f"index_{job.b0:09d}.parquet", pd.DataFrame(out.window_quality))
    if out.features is not None:
        write_parquet(partial / f"features_{job.b0:09d}.parquet", out.features)
    secs["write"] = time.perf_counter() - t0
    return job.b0, secs


def build_partition(
    rows: pd.DataFrame,
    eeg_dir: Path,
    spec_dir: Path | None,
    out_dir: Path,
    cfg: PreprocessingConfig,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> PartitionManifest:
    """Preprocess every row of ``rows`` into ``out_dir``, streaming batch by batch (peak memory ~ batch_size).

    Writes (row ``i`` of index.parquet <-> index ``i`` of every array): ``index.parquet`` (the rows' columns +
    :data:`QUALITY_COLUMNS`), ``bipolar.npy`` (N, 16|18, context), ``referential.npy`` (N, 19, context),
    ``ekg.npy`` (N, context), ``quality.npy`` (N, 16|18) bool, ``spec_<type>.npy`` (N, 4, F, T) per
    ``cfg.spectrogram.types``, ``spec_kaggle.npy`` (N, 4, 100, 300) when ``spec_dir`` is given and enabled,
    ``features.parquet`` and ``manifest.json`` (written last; its presence marks a complete partition).

    Arrays are filled in ``out_dir/.partial/`` through ``np.lib.format.open_memmap``; a progress marker records
    the completed rows, so rerunning on an interrupted partition with the same rows and config resumes where it
    stopped. Final files replace old ones atomically, one by one, after the old manifest was removed.
    ``cfg.workers`` > 1 processes batches in that many threads (at most two batches per thread in flight, so peak
    memory is bounded by ``workers * batch_size`` windows, whatever N).
    """
    t_start = time.perf_counter()
    eeg_dir, out_dir = Path(eeg_dir), Path(out_dir)
    with_kaggle = spec_dir is not None and cfg.spectrogram.use_kaggle_spectrograms
    _validate_rows(rows, with_kaggle)
    if batch_size < 1:
        raise ValueError(f"Invalid value for the 'batch_size' parameter: must be >= 1, got {batch_size}.")
    rows = rows.reset_index(drop=True)
    n = len(rows)
    specs = array_specs(cfg, n, with_kaggle)
    partial = out_dir / PARTIAL_DIR
    fp = _fingerprint(rows, cfg, batch_size, with_kaggle)
    marker = partial / PROGRESS_FILE
    done: set[int] = set()
    if marker.exists():
        try:
            state = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            state = {}
        if state.get("fingerprint") == fp and all((partial / f"{k}.npy").exists() for k in specs):
            done = {int(b) for b in state.get("done_batches", [])}
    if not done and partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    for k, (shape, dt) in specs.items():
        path = partial / f"{k}.npy"
        if done:
            got = np.load(path, mmap_mode="r")
            if got.shape != shape or str(got.dtype) != dt:
                raise RuntimeError(
                    f"Partial array '{path}' has shape {got.shape}, expected {shape}; delete {partial}."
                )
            del got
        else:  # header + full-size file; batches are written in place (positioned writes, no growing mapping)
            del_me = np.lib.format.open_memmap(path, mode="w+", dtype=dt, shape=shape)
            del del_me
    starts = list(range(0, n, batch_size))
    todo = [b for b in starts if b not in done]
    resumed_from = _rows_in(done, batch_size, n)
    step_seconds: dict[str, float] = {}

    def save_marker() -> None:
        state = {"fingerprint": fp, "done_batches": sorted(done), "n_rows": n, "batch_size": batch_size}
        write_json(marker, state)

    def finished(b0: int, secs: dict[str, float]) -> None:
        done.add(b0)
        for k, v in secs.items():
            step_seconds[k] = step_seconds.get(k, 0.0) + v
        save_marker()
        if progress is not None:
            progress(_rows_in(done, batch_size, n), n)

    save_marker()
    if progress is not None:
        progress(_rows_in(done, batch_size, n), n)
    cols = [c for c in ("eeg_id", "eeg_label_offset_seconds", "spectrogram_id", "spectrogram_label_offset_seconds")
            if c in rows.columns]  # fmt: skip
    jobs = [
        _BatchJob(b0, rows.iloc[b0 : b0 + batch_size][cols].reset_index(drop=True), str(eeg_dir),
                  None if not with_kaggle else str(spec_dir), str(partial))
        for b0 in todo
    ]  # fmt: skip
    mode = cfg.eeg.missing_channels
    eegs = _LRU(lambda i: read_hms_eeg(eeg_dir / f"{i}.parquet", missing_channels=mode), size=8 * cfg.workers)
    spec_tables = (
        _LRU(lambda i: read_kaggle_spectrogram_table(Path(str(spec_dir)) / f"{i}.parquet"), size=4 * cfg.workers)
        if with_kaggle else None
    )  # fmt: skip
    workers = min(cfg.workers, len(jobs))
    if workers > 1:
        # threads, not processes: the heavy steps (parquet reads, SOS filters, FFTs, percentiles, torch) release
        # the GIL, threads start instantly and share the file caches; worker processes paid seconds of imports
        # each and pyarrow/torch thread pools are not fork-safe. torch runs one intra-op thread per worker.
        import torch
        from concurrent.futures import ThreadPoolExecutor

        n_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="hms-preprocess") as pool:
                # at most 2 batches in flight per worker keeps peak memory ~ 2 * workers * batch_size windows
                pending = []
                for job in jobs:
                    pending.append(pool.submit(_run_batch, job, cfg, eegs, spec_tables))
                    if len(pending) >= 2 * workers:
                        b0, secs = pending.pop(0).result()
                        finished(b0, secs)
                for fut in pending:
                    b0, secs = fut.result()
                    finished(b0, secs)
        finally:
            torch.set_num_threads(n_threads)
    else:
        for job in jobs:
            b0, secs = _run_batch(job, cfg, eegs, spec_tables)
            finished(b0, secs)
    # finalise: index + features from the per-batch parts, then the arrays, then the manifest
    import polars as pl

    t0 = time.perf_counter()
    quality = pd.concat([pd.read_parquet(partial / f"index_{s:09d}.parquet") for s in starts], ignore_index=True)
    index = pd.concat([rows, quality], axis=1)
    (out_dir / "manifest.json").unlink(missing_ok=True)
    write_parquet(out_dir / "index.parquet", index)
    files = ["index.parquet"]
    if cfg.features.enabled:
        feats = pl.concat([pl.read_parquet(partial / f"features_{s:09d}.parquet") for s in starts], how="vertical")
        key = pl.DataFrame({"eeg_id": rows["eeg_id"].to_numpy(), "row": np.arange(n, dtype=np.int64)})
        if "label_id" in rows.columns:
            key = key.with_columns(pl.Series("label_id", rows["label_id"].to_numpy()))
        write_parquet(out_dir / "features.parquet", pl.concat([key, feats], how="horizontal"))
        files.append("features.parquet")
    for k in specs:
        with atomic_path(out_dir / f"{k}.npy", suffix=".tmp.npy") as tmp:
            os.replace(partial / f"{k}.npy", tmp)
        files.append(f"{k}.npy")
    step_seconds["finalise"] = time.perf_counter() - t0
    shutil.rmtree(partial, ignore_errors=True)
    n_span = _span_length(cfg, cfg.spectrogram.span)
    axes = {name: spectrogram_axes(name, cfg.spectrogram, n_span) for name in cfg.spectrogram.types}
    freq_axes = {k: [round(float(f), 4) for f in a.freqs] for k, a in axes.items()}
    time_axes = {k: [round(float(t), 4) for t in a.times] for k, a in axes.items()}
    if with_kaggle:
        freq_axes["kaggle"] = list(SPEC_FREQS)
        time_axes["kaggle"] = [float(2 * i) for i in range(SPEC_WINDOW_ROWS)]
    seconds = time.perf_counter() - t_start
    nbytes = {f"{k}.npy": (out_dir / f"{k}.npy").stat().st_size for k in specs}
    n_flag = int(index["n_flagged_channels"].sum())
    manifest = PartitionManifest(
        out_dir=str(out_dir),
        n_rows=n,
        shapes={k: list(s) for k, (s, _) in specs.items()},
        dtypes={k: d for k, (_, d) in specs.items()},
        bytes=nbytes,
        total_bytes=int(sum(nbytes.values())),
        seconds=round(seconds, 3),
        step_seconds={k: round(v, 4) for k, v in step_seconds.items()},
        records_per_second=round(_rows_in(todo, batch_size, n) / max(seconds, 1e-9), 2),
        frequency_axes=freq_axes,
        time_axes=time_axes,
        n_flagged_channels=n_flag,
        flagged_fraction=round(n_flag / (n * N_EEG), 6),
        flagged_bipolar_fraction=round(float(index["n_flagged_bipolar"].sum()) / (n * n_bipolar(cfg)), 6),
        nan_fraction=round(float(index["nan_fraction"].mean()), 6),
        n_windows_with_flags=int((index["n_flagged_channels"] > 0).sum()),
        folds=sorted(int(f) for f in rows["fold"].unique()),
        n_patients=int(rows["patient_id"].nunique()),
        n_eegs=int(rows["eeg_id"].nunique()),
        resumed_from=resumed_from,
        batch_size=batch_size,
        config_hash=_config_hash(cfg),
        config=cfg.model_dump(mode="json"),
        files=[*files, "manifest.json"],
    )
    write_json(out_dir / "manifest.json", manifest.to_dict())
    return manifest


# --- reading a partition back ---------------------------------------------------------------------------------
@dataclass
class PartitionData:
    """A built partition: memory-mapped arrays (read-only), the index table and the manifest."""

    out_dir: Path
    index: pd.DataFrame
    arrays: dict[str, np.ndarray]
    manifest: dict[str, Any]

    def __len__(self) -> int:
        return len(self.index)

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(
            f"Partition '{self.__dict__.get('out_dir')}' has no array {name!r}; it has {sorted(arrays)}."
        )

    @property
    def spectrograms(self) -> dict[str, np.ndarray]:
        return {k.removeprefix("spec_"): v for k, v in self.arrays.items() if k.startswith("spec_")}

    def features(self) -> Any:
        import polars as pl

        return pl.read_parquet(self.out_dir / "features.parquet")


def load_partition(out_dir: str | os.PathLike[str]) -> PartitionData:
    """Open a partition written by :func:`build_partition` (arrays memory-mapped read-only)."""
    out_dir = Path(out_dir)
    mpath = out_dir / "manifest.json"
    if not mpath.exists():
        raise FileNotFoundError(
            f"Partition '{out_dir}' is incomplete or missing: no manifest.json (build_partition writes it last)."
        )
    manifest = json.loads(mpath.read_text())
    arrays = {k: np.load(out_dir / f"{k}.npy", mmap_mode="r") for k in manifest["shapes"]}
    index = pd.read_parquet(out_dir / "index.parquet")
    return PartitionData(out_dir, index, arrays, manifest)


def partition_checks(
    out_dir: str | os.PathLike[str],
    cfg: PreprocessingConfig,
    fold: int | None = None,
    patient_folds: dict[Any, int] | None = None,
    chunk: int = 256,
) -> dict[str, tuple[bool, dict[str, Any]]]:
    """Figures for the asset checks: ``finite``, ``shapes``, ``flagged_fraction``, ``patients_in_fold``.

    ``fold``: the partition's fold (every row must carry it); ``patient_folds``: the global patient -> fold map
    (every patient must sit in its own fold). Arrays are scanned ``chunk`` windows at a time.
    """
    part = load_partition(out_dir)
    n = len(part)
    res: dict[str, tuple[bool, dict[str, Any]]] = {}
    bad: dict[str, int] = {}
    for k, a in part.arrays.items():
        if a.dtype == bool:
            continue
        cnt = 0
        for s in range(0, n, chunk):
            cnt += int((~np.isfinite(a[s : s + chunk])).sum())
        bad[k] = cnt
    res["finite"] = (all(v == 0 for v in bad.values()), {"non_finite": bad})
    expected = array_specs(cfg, n, "spec_kaggle" in part.arrays)
    mism = {
        k: {"expected": [list(s), d],
            "got": [list(part.arrays[k].shape), str(part.arrays[k].dtype)] if k in part.arrays else None}
        for k, (s, d) in expected.items()
        if k not in part.arrays or part.arrays[k].shape != s or str(part.arrays[k].dtype) != d
    }  # fmt: skip
    shapes = {k: list(v.shape) for k, v in part.arrays.items()}
    res["shapes"] = (not mism, {"n_rows": n, "mismatches": mism, "shapes": shapes})
    frac = float(part.index["n_flagged_channels"].sum()) / max(n * N_EEG, 1)
    res["flagged_fraction"] = (
        frac <= cfg.max_flagged_fraction,
        {"flagged_fraction": round(frac, 6), "max_flagged_fraction": cfg.max_flagged_fraction,
         "n_windows_with_flags": int((part.index["n_flagged_channels"] > 0).sum())},
    )  # fmt: skip
    idx = part.index
    folds_per_patient = idx.groupby("patient_id")["fold"].nunique()
    detail: dict[str, Any] = {
        "folds": sorted(int(f) for f in idx["fold"].unique()),
        "n_patients": int(len(folds_per_patient)),
    }
    ok = bool((folds_per_patient <= 1).all())
    if fold is not None:
        wrong = idx.loc[idx["fold"] != fold, "patient_id"].unique().tolist()
        detail["rows_outside_fold"] = int((idx["fold"] != fold).sum())
        detail["patients_outside_fold"] = [int(p) if isinstance(p, (int, np.integer)) else p for p in wrong[:20]]
        ok &= not wrong
    if patient_folds is not None:
        exp = idx["patient_id"].map(patient_folds)
        wrong_rows = idx[exp.isna() | (exp != idx["fold"])]
        detail["patients_not_in_their_fold"] = wrong_rows["patient_id"].unique().tolist()[:20]
        ok &= wrong_rows.empty
    res["patients_in_fold"] = (ok, detail)
    return res
