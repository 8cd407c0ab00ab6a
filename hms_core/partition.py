"""The on-disk layout of a processed partition: layout spec, writer, memory-mapped reader and checks.

A partition folder (``<processed>/windows/fold_k`` or ``.../test``) holds, row ``i`` of ``index.parquet`` <-> index
``i`` of every array:

- ``index.parquet``: the label rows (ids, offsets, votes, patient, fold) + the per-window quality columns
  (:data:`hms_core.preprocess.QUALITY_COLUMNS`);
- ``bipolar.npy`` (N, 16|18, context), ``referential.npy`` (N, 19, context), ``ekg.npy`` (N, context),
  ``quality.npy`` (N, 16|18) bool (True = usable derivation);
- ``spec_<type>.npy`` (N, 4, F, T) per spectrogram type, ``spec_kaggle.npy`` (N, 4, 100, 300) when enabled;
- ``features.parquet`` (one row per window);
- ``manifest.json``, written last: its presence marks a complete partition. It carries the :class:`Layout`
  (where the labelled segment sits inside the stored context, channel names, spectrogram axes), so every reader
  (training, plots, export, serving, the foundation model) takes positions from the data it reads, never from
  constants.

This module is the only one that knows file names and shapes; :mod:`hms_core.preprocess` holds the transform.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hms_core.config import PreprocessingConfig
from hms_core.constants import (
    CHAIN_NAMES,
    EEG_CHANNELS,
    KAGGLE_SPECTROGRAM,
    SFREQ,
    SPEC_FREQS,
    SPEC_ROW_S,
    SPEC_WINDOW_ROWS,
    VOTE_COLUMNS,
    bipolar_names,
)
from hms_core.io import atomic_path, write_json, write_parquet

__all__ = [
    "CHECK_NAMES",
    "FEATURES_FILE",
    "INDEX_FILE",
    "LAYOUT_VERSION",
    "MANIFEST_FILE",
    "Layout",
    "Partition",
    "PartitionError",
    "PartitionManifest",
    "build_partition",
    "load_partition",
    "partition_checks",
    "write_partition",
]

INDEX_FILE = "index.parquet"
FEATURES_FILE = "features.parquet"
MANIFEST_FILE = "manifest.json"
PROGRESS_FILE = "progress.json"
PARTIAL_DIR = ".partial"
#: Bumped when the folder layout changes; a reader refuses other versions with a message to rebuild.
LAYOUT_VERSION = 2
ROW_COLUMNS_REQUIRED: tuple[str, ...] = ("eeg_id", "eeg_label_offset_seconds", "patient_id", "fold")
#: The checks :func:`partition_checks` computes (the blocking asset checks of the preprocessing stage).
CHECK_NAMES: tuple[str, ...] = ("finite", "shapes", "bad_windows", "flagged_fraction", "patients_in_fold")
N_EEG = len(EEG_CHANNELS)


class PartitionError(ValueError):
    """A processed partition folder is missing, incomplete, or its files do not match its manifest."""


# --- layout ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Shapes and positions of a partition's arrays (saved in the manifest, read back by every consumer)."""

    context_length: int
    segment_start: int
    segment_length: int
    bipolar: tuple[str, ...]
    dtype: str
    spectrogram_span: str
    #: spectrogram type -> (frequencies Hz, frame-centre times s relative to the span start)
    spectrogram_axes: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = field(default_factory=dict)
    with_kaggle: bool = False
    sfreq: int = SFREQ

    @classmethod
    def from_config(cls, cfg: PreprocessingConfig, with_kaggle: bool) -> Layout:
        from hms_core.spectral import spectrogram_axes

        seg = cfg.eeg.segment_slice
        span = slice(0, cfg.eeg.context_length) if cfg.spectrogram.span == "context" else seg
        n_span = span.stop - span.start
        axes = {}
        for name in cfg.spectrogram.types:
            a = spectrogram_axes(name, cfg.spectrogram, n_span)
            axes[name] = (tuple(round(float(f), 4) for f in a.freqs), tuple(round(float(t), 4) for t in a.times))
        return cls(
            context_length=cfg.eeg.context_length,
            segment_start=seg.start,
            segment_length=cfg.eeg.segment_length,
            bipolar=bipolar_names(cfg.eeg.include_central_chain),
            dtype=cfg.eeg.dtype,
            spectrogram_span=cfg.spectrogram.span,
            spectrogram_axes=axes,
            with_kaggle=with_kaggle,
        )

    @property
    def segment(self) -> slice:
        """The labelled segment inside the stored context (samples)."""
        return slice(self.segment_start, self.segment_start + self.segment_length)

    @property
    def spectrogram_types(self) -> tuple[str, ...]:
        return (*self.spectrogram_axes, *((KAGGLE_SPECTROGRAM,) if self.with_kaggle else ()))

    def frequencies(self, spec_type: str) -> tuple[float, ...]:
        if spec_type == KAGGLE_SPECTROGRAM and self.with_kaggle:
            return tuple(SPEC_FREQS)
        return self._axes(spec_type)[0]

    def times(self, spec_type: str) -> tuple[float, ...]:
        if spec_type == KAGGLE_SPECTROGRAM and self.with_kaggle:
            return tuple(float(SPEC_ROW_S * i) for i in range(SPEC_WINDOW_ROWS))
        return self._axes(spec_type)[1]

    def frames_per_second(self, spec_type: str) -> float:
        t = self.times(spec_type)
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0

    def _axes(self, spec_type: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if spec_type not in self.spectrogram_axes:
            from hms_core.checks import invalid_value

            raise invalid_value("spec_type", spec_type, f"the partition's types {list(self.spectrogram_types)}")
        return self.spectrogram_axes[spec_type]

    def array_specs(self, n_rows: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """name -> (shape, dtype) of every array a partition of ``n_rows`` windows holds."""
        ctx, nb = self.context_length, len(self.bipolar)
        specs: dict[str, tuple[tuple[int, ...], str]] = {
            "bipolar": ((n_rows, nb, ctx), self.dtype),
            "referential": ((n_rows, N_EEG, ctx), self.dtype),
            "ekg": ((n_rows, ctx), self.dtype),
            "quality": ((n_rows, nb), "bool"),
        }
        for name, (freqs, times) in self.spectrogram_axes.items():
            specs[f"spec_{name}"] = ((n_rows, len(CHAIN_NAMES), len(freqs), len(times)), self.dtype)
        if self.with_kaggle:
            specs["spec_kaggle"] = ((n_rows, len(CHAIN_NAMES), len(SPEC_FREQS), SPEC_WINDOW_ROWS), self.dtype)
        return specs

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bipolar"] = list(self.bipolar)
        d["spectrogram_axes"] = {k: {"freqs_hz": list(f), "times_s": list(t)} for k, (f, t) in
                                 self.spectrogram_axes.items()}  # fmt: skip
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Layout:
        d = dict(d)
        d["bipolar"] = tuple(d["bipolar"])
        d["spectrogram_axes"] = {k: (tuple(v["freqs_hz"]), tuple(v["times_s"]))
                                 for k, v in d.get("spectrogram_axes", {}).items()}  # fmt: skip
        return cls(**d)


# --- manifest --------------------------------------------------------------------------------------------------
@dataclass
class PartitionManifest:
    """What :func:`build_partition` wrote; ``to_dict()`` is JSON-ready (the asset's metadata)."""

    out_dir: str
    n_rows: int
    layout: dict[str, Any]
    shapes: dict[str, list[int]]
    dtypes: dict[str, str]
    bytes: dict[str, int]
    total_bytes: int
    seconds: float
    step_seconds: dict[str, float]
    records_per_second: float
    n_flagged_channels: int
    flagged_fraction: float
    flagged_bipolar_fraction: float
    nan_fraction: float
    n_windows_with_flags: int
    n_bad_windows: int
    non_finite_zeroed: dict[str, int]
    folds: list[int]
    n_patients: int
    n_eegs: int
    n_features: int
    resumed_from: int
    batch_size: int
    config_hash: str
    config: dict[str, Any]
    files: list[str]
    layout_version: int = LAYOUT_VERSION
    #: CPU seconds of the worker processes on this build's batches (0 when built in the calling process)
    worker_cpu_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _config_hash(cfg: PreprocessingConfig) -> str:
    return hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]


def _summary(index: pd.DataFrame, layout: Layout) -> dict[str, Any]:
    """Quality figures of a partition from its index (the manifest's summary fields)."""
    n = len(index)
    col = lambda c: index[c] if c in index.columns else pd.Series(np.zeros(n))
    n_flag = int(col("n_flagged_channels").sum())
    return {
        "n_flagged_channels": n_flag,
        "flagged_fraction": round(n_flag / max(n * N_EEG, 1), 6),
        "flagged_bipolar_fraction": round(
            float(col("n_flagged_bipolar").sum()) / max(n * len(layout.bipolar), 1), 6
        ),
        "nan_fraction": round(float(col("nan_fraction").mean()) if n else 0.0, 6),
        "n_windows_with_flags": int((col("n_flagged_channels") > 0).sum()),
        "n_bad_windows": int(col("bad_window").astype(bool).sum()),
        "folds": sorted(int(f) for f in index["fold"].unique()) if "fold" in index.columns else [],
        "n_patients": int(index["patient_id"].nunique()) if "patient_id" in index.columns else 0,
        "n_eegs": int(index["eeg_id"].nunique()) if "eeg_id" in index.columns else 0,
    }


def write_partition(
    out_dir: str | os.PathLike[str],
    index: pd.DataFrame,
    arrays: Mapping[str, np.ndarray],
    layout: Layout,
    features: Any | None = None,
    **manifest_fields: Any,
) -> PartitionManifest:
    """Write a whole partition from in-memory arrays (tests, small sets, generated fixtures).

    Arrays must match ``layout.array_specs(len(index))`` (missing arrays are allowed: a reader then says which is
    absent); the manifest is written last. :func:`build_partition` is the streaming writer for real folds.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    n = len(index)
    specs = layout.array_specs(n)
    files = [INDEX_FILE]
    write_parquet(out_dir / INDEX_FILE, index.reset_index(drop=True))
    for name, arr in arrays.items():
        if name not in specs:
            raise PartitionError(f"write_partition: array {name!r} is not part of the layout {sorted(specs)}")
        shape, dt = specs[name]
        a = np.asarray(arr)
        if a.shape != shape:
            raise PartitionError(
                f"write_partition: array {name!r} has shape {a.shape}, the layout expects {shape}"
            )
        from hms_core.io import save_npy

        save_npy(out_dir / f"{name}.npy", a.astype(dt, copy=False))
        files.append(f"{name}.npy")
    if features is not None:
        write_parquet(out_dir / FEATURES_FILE, features)
        files.append(FEATURES_FILE)
    nbytes = {f: (out_dir / f).stat().st_size for f in files if f.endswith(".npy")}
    written = {k: v for k, v in specs.items() if f"{k}.npy" in nbytes}
    fields: dict[str, Any] = {
        "out_dir": str(out_dir), "n_rows": n, "layout": layout.to_dict(),
        "shapes": {k: list(s) for k, (s, _) in written.items()}, "dtypes": {k: d for k, (_, d) in written.items()},
        "bytes": nbytes, "total_bytes": int(sum(nbytes.values())), "seconds": 0.0, "step_seconds": {},
        "records_per_second": 0.0, **_summary(index, layout), "non_finite_zeroed": {},
        "n_features": 0 if features is None else int(_width(features)), "resumed_from": 0, "batch_size": n,
        "config_hash": "", "config": {}, "files": [*files, MANIFEST_FILE],
    }  # fmt: skip
    fields.update(manifest_fields)
    manifest = PartitionManifest(**fields)
    write_json(out_dir / MANIFEST_FILE, manifest.to_dict())
    return manifest


def _width(df: Any) -> int:
    return df.width if hasattr(df, "width") else df.shape[1]


# --- streaming writer ------------------------------------------------------------------------------------------
def _fingerprint(rows: pd.DataFrame, cfg: PreprocessingConfig, batch_size: int, with_kaggle: bool) -> str:
    """Resume state of a half-built partition: same rows, same config, same batching."""
    cols = [c for c in ("eeg_id", "eeg_label_offset_seconds", "spectrogram_id", "spectrogram_label_offset_seconds")
            if c in rows.columns]  # fmt: skip
    h = hashlib.sha256(pd.util.hash_pandas_object(rows[cols], index=False).values.tobytes())
    h.update(f"{_config_hash(cfg)}|{batch_size}|{with_kaggle}|by_eeg_id".encode())
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


def _processing_order(rows: pd.DataFrame) -> np.ndarray:
    """Row indices grouped by ``eeg_id`` (groups in order of first appearance, rows in order within a group):
    the identity when the rows of each EEG are adjacent already, as in train.csv."""
    codes, _ = pd.factorize(rows["eeg_id"])
    return np.argsort(codes, kind="stable")


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
    b0: int  # the batch's first position in the processing order (rows grouped by eeg_id)
    positions: np.ndarray  # the rows of the partition this batch fills, in the order of ``rows``
    rows: pd.DataFrame
    eeg_dir: str
    spec_dir: str | None
    partial: str


def _npy_layout(path: Path) -> tuple[int, np.dtype, tuple[int, ...]]:
    """Data offset, dtype and shape of the .npy file at ``path`` (its header only)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            mm = np.load(path, mmap_mode="r")
            return mm.offset, mm.dtype, mm.shape
        if fortran:
            raise ValueError(f"'{path}' is stored in Fortran order; the partition writer expects C order.")
        return f.tell(), dtype, shape


#: Whether :func:`_as_storage` may use torch's cast (False in worker processes).
_TORCH_CAST = True


@lru_cache(maxsize=1)
def _torch_half_cast() -> Callable[[np.ndarray], np.ndarray] | None:
    """torch's vectorised float32 -> float16 cast when torch is installed (4x faster than numpy's here and
    bit-identical: both round to nearest even, overflow to inf), else None. Only the partition writer uses it; the
    transform itself never imports torch."""
    try:
        import torch
    except ImportError:
        return None
    return lambda a: torch.from_numpy(a).to(torch.float16).numpy()


def _as_storage(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``arr`` as a C-contiguous array of ``dtype`` (float32 -> float16 by :func:`_torch_half_cast` where torch is
    installed, except in worker processes, numpy's identical cast otherwise)."""
    if dtype == np.float16 and arr.dtype == np.float32 and _TORCH_CAST:
        cast = _torch_half_cast()
        if cast is not None:
            return cast(np.ascontiguousarray(arr))
    return np.ascontiguousarray(arr, dtype=dtype)


def _runs_of(positions: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(first row, indices into ``positions``) of each run of consecutive rows among ``positions``."""
    perm = np.argsort(positions, kind="stable")
    sp = positions[perm]
    cuts = np.flatnonzero(np.diff(sp) != 1) + 1
    return [(int(sp[c[0]]), perm[c]) for c in np.split(np.arange(len(sp)), cuts) if c.size]


def _write_rows(path: Path, rows: int | np.ndarray, arr: np.ndarray) -> None:
    """Write ``arr`` into the .npy file at ``path`` in place (dtype of the file): as rows ``rows ...`` (an int), or
    row ``rows[i]`` <- ``arr[i]`` (an index array; one positioned write per run of consecutive rows)."""
    offset, dtype, shape = _npy_layout(path)
    row_shape = shape[1:]
    data = _as_storage(arr, dtype)
    if data.shape[1:] != row_shape:
        raise ValueError(f"Rows for '{path}' have shape {data.shape[1:]}, expected {row_shape}.")
    row_bytes = int(np.prod(row_shape)) * dtype.itemsize
    if isinstance(rows, (int, np.integer)):
        runs = [(int(rows), None)]
    else:
        runs = _runs_of(np.asarray(rows))
    fd = os.open(path, os.O_WRONLY)
    try:  # positioned writes from the array's own buffer (no bytes copy)
        for first, idx in runs:
            part = data if idx is None else (data[idx[0] : idx[-1] + 1] if _is_step(idx) else data[idx])
            view, pos = memoryview(np.ascontiguousarray(part)).cast("B"), offset + first * row_bytes
            while view:
                n = os.pwrite(fd, view, pos)
                view, pos = view[n:], pos + n
    finally:
        os.close(fd)


def _is_step(idx: np.ndarray) -> bool:
    return bool(idx.size == 1 or (np.diff(idx) == 1).all())


#: Windows transformed and written at a time inside a batch: every intermediate array of a sub-batch stays below
#: glibc's mmap threshold (32 MiB), so its memory is reused warm instead of mapped and page-faulted afresh (the
#: same 300 records cost 21-22 ms CPU each in batches of 100, 17 ms in sub-batches of 25). Outputs do not depend on
#: it (every step is per window).
SUB_BATCH = 25


def _run_batch(
    job: _BatchJob, cfg: PreprocessingConfig, eegs: _LRU, spec_tables: _LRU | None
) -> tuple[int, dict[str, float], dict[str, int]]:
    """Read, preprocess and write one batch of rows into the partial arrays (``SUB_BATCH`` windows at a time);
    returns (b0, step seconds, counts of non-finite values the transform zeroed per output)."""
    from hms_core.eeg_io import extract_window, kaggle_spectrogram_window
    from hms_core.preprocess import process_windows
    from hms_core.spectral import kaggle_spectrogram_image

    partial = Path(job.partial)
    secs: dict[str, float] = {}
    zeroed: dict[str, int] = {}
    quality, features = [], []

    def add(name: str, seconds: float) -> None:
        secs[name] = secs.get(name, 0.0) + seconds

    ids = [f"{Path(job.eeg_dir) / str(e)}.parquet (row {r}, offset {o} s)"
           for r, e, o in zip(job.positions, job.rows["eeg_id"], job.rows["eeg_label_offset_seconds"])]  # fmt: skip
    for s0 in range(0, len(job.positions), SUB_BATCH):
        sl = slice(s0, s0 + SUB_BATCH)
        rows, positions = job.rows.iloc[sl], job.positions[sl]
        t0 = time.perf_counter()
        # channel-major (B, 20, n_times): the transform's own layout, handed over without a transposing copy
        windows = np.stack(
            [extract_window(eegs(e).T, o, rid).T
             for e, o, rid in zip(rows["eeg_id"], rows["eeg_label_offset_seconds"], ids[sl])]
        )  # fmt: skip
        kag = None
        if spec_tables is not None:
            kag = np.stack(
                [kaggle_spectrogram_window(spec_tables(s), o)
                 for s, o in zip(rows["spectrogram_id"], rows["spectrogram_label_offset_seconds"])]
            )  # fmt: skip
        add("read", time.perf_counter() - t0)
        out = process_windows(windows.transpose(0, 2, 1), cfg, ids[sl], copy=False)
        del windows
        for k, v in out.seconds.items():
            add(k, v)
        for k, v in out.non_finite.items():
            zeroed[k] = zeroed.get(k, 0) + v
        t0 = time.perf_counter()
        if kag is not None:
            _write_rows(partial / "spec_kaggle.npy", positions, kaggle_spectrogram_image(kag))
        add("spec_kaggle", time.perf_counter() - t0)
        t0 = time.perf_counter()
        _write_rows(partial / "bipolar.npy", positions, out.bipolar)
        _write_rows(partial / "referential.npy", positions, out.referential)
        _write_rows(partial / "ekg.npy", positions, out.ekg)
        _write_rows(partial / "quality.npy", positions, out.quality)
        for name, arr in out.spectrograms.items():
            _write_rows(partial / f"spec_{name}.npy", positions, arr)
        quality.append(pd.DataFrame(out.window_quality))
        if out.features is not None:
            features.append(out.features)
        add("write", time.perf_counter() - t0)
        del out
    t0 = time.perf_counter()
    write_parquet(partial / f"index_{job.b0:09d}.parquet", pd.concat(quality, ignore_index=True))
    if features:
        import polars as pl

        write_parquet(partial / f"features_{job.b0:09d}.parquet", pl.concat(features, how="vertical"))
    add("write", time.perf_counter() - t0)
    return job.b0, secs, zeroed


# --- worker processes ------------------------------------------------------------------------------------------
#: Modules the fork server imports once, so each worker starts from a process that has them already (a spawned
#: worker paid ~2 s of imports; nothing in these starts a thread at import, so forking the server is safe).
_PRELOAD = ("numpy", "scipy.fft", "scipy.signal", "pandas", "pyarrow.parquet", "polars", "hms_core.preprocess",
            "hms_core.eeg_io", "hms_core.spectral", "hms_core.features")  # fmt: skip
_WORKER: dict[str, Any] = {}


def _exit_with(pid: int) -> None:
    """End this worker at once when process ``pid`` (the partition builder) ends, by a thread waiting on a pidfd
    (polling every second where pidfds are missing): a killed build must leave no worker behind, writing into its
    partial arrays or idling. Workers are children of the fork server, which the workers themselves keep alive, so
    neither parent-death signals nor the pool notice."""
    import threading

    def watch() -> None:
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # pragma: no cover - not Linux >= 5.3
            while True:
                time.sleep(1.0)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    os._exit(1)
                except PermissionError:
                    pass
        import select

        select.select([fd], [], [])  # readable once the process has ended
        os._exit(1)

    threading.Thread(target=watch, name="hms-exit-with-builder", daemon=True).start()


def _file_caches(eeg_dir: str | Path, spec_dir: str | None, missing_channels: str) -> tuple[_LRU, _LRU | None]:
    """The builder's caches of read files: EEG records (channel-major) and, with ``spec_dir``, Kaggle spectrogram
    tables (rows of one file are processed together, so a few entries suffice)."""
    from hms_core.eeg_io import read_hms_eeg_channels, read_kaggle_spectrogram_table

    eegs = _LRU(lambda i: read_hms_eeg_channels(Path(eeg_dir) / f"{i}.parquet", missing_channels=missing_channels),
                size=8)  # fmt: skip
    specs = (
        _LRU(lambda i: read_kaggle_spectrogram_table(Path(spec_dir) / f"{i}.parquet"), size=4)
        if spec_dir
        else None
    )
    return eegs, specs


def _init_worker(builder_pid: int, eeg_dir: str, spec_dir: str | None, missing_channels: str) -> None:
    """Worker-process start: its own file caches, single-threaded BLAS, numpy's float16 cast (importing torch
    would cost each worker seconds and ~0.4 GB for 0.7 ms a record), an exit as soon as the builder ends."""
    from hms_core.preprocess import single_threaded_compute

    global _TORCH_CAST
    _TORCH_CAST = False
    _exit_with(builder_pid)
    _WORKER["compute"] = single_threaded_compute()
    _WORKER["compute"].__enter__()  # for the worker's whole life
    _WORKER["eegs"], _WORKER["specs"] = _file_caches(eeg_dir, spec_dir, missing_channels)


def _run_batch_in_worker(
    job: _BatchJob, cfg: PreprocessingConfig
) -> tuple[tuple[int, dict[str, float], dict[str, int]], float]:
    """:func:`_run_batch` in a worker process, and the CPU seconds the worker spent on it."""
    c0 = time.process_time()
    out = _run_batch(job, cfg, _WORKER["eegs"], _WORKER["specs"])
    return out, time.process_time() - c0


def _worker_pool(workers: int, eeg_dir: Path, spec_dir: str | None, missing_channels: str) -> Any:
    """A pool of ``workers`` processes forked from a fork server that has the transform's modules imported (no
    inherited threads, file descriptors or locks from the caller, e.g. a Dagster step holding its partition lock)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(_PRELOAD))  # only before the server starts; a started server is reused
    return ProcessPoolExecutor(
        workers,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(os.getpid(), str(eeg_dir), spec_dir, missing_channels),
    )


def _run_jobs_in_processes(
    jobs: list[_BatchJob], cfg: PreprocessingConfig, workers: int, eeg_dir: Path, spec_dir: str | None,
    finished: Callable[..., None], out_dir: Path,
) -> float:  # fmt: skip
    """Run ``jobs`` in worker processes, at most two per worker in flight (peak memory ~ 2 * workers *
    batch_size windows), calling ``finished`` in the caller's process as each batch completes; returns the CPU
    seconds the workers spent on the batches."""
    from collections import deque
    from concurrent.futures.process import BrokenProcessPool

    pool = _worker_pool(workers, eeg_dir, spec_dir, cfg.eeg.missing_channels)
    pending: deque = deque()
    cpu = 0.0

    def collect() -> None:
        nonlocal cpu
        out, seconds = pending.popleft().result()
        cpu += seconds
        finished(*out)

    try:
        for job in jobs:
            pending.append(pool.submit(_run_batch_in_worker, job, cfg))
            if len(pending) >= 2 * workers:
                collect()
        while pending:
            collect()
        return cpu
    except BrokenProcessPool as e:
        raise PartitionError(
            f"A preprocessing worker process ended abruptly while building '{out_dir}': killed, out of memory "
            "(fewer preprocessing.workers or a smaller batch size needs less), or it could not start (its own "
            "error is printed above; a script that builds partitions with workers > 1 needs the "
            "`if __name__ == '__main__':` guard, as with any multiprocessing pool). The batches finished before "
            "it are kept and a rerun resumes from them."
        ) from e
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def build_partition(
    rows: pd.DataFrame,
    eeg_dir: Path,
    spec_dir: Path | None,
    out_dir: Path,
    cfg: PreprocessingConfig,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> PartitionManifest:
    """Preprocess every row of ``rows`` into ``out_dir`` (the layout in the module docstring), streaming batch by
    batch (peak memory ~ batch_size).

    Arrays are filled in ``out_dir/.partial/`` through ``np.lib.format.open_memmap``; a progress marker records
    the completed rows, so rerunning on an interrupted partition with the same rows and config resumes where it
    stopped. Final files replace old ones atomically, one by one, after the old manifest was removed.
    ``cfg.workers`` > 1 processes batches in that many worker processes (at most two batches per worker in flight,
    so peak memory is bounded by ``workers * batch_size`` windows, whatever N); outputs are the same for any count.
    """
    t_start = time.perf_counter()
    eeg_dir, out_dir = Path(eeg_dir), Path(out_dir)
    with_kaggle = spec_dir is not None and cfg.spectrogram.use_kaggle_spectrograms
    _validate_rows(rows, with_kaggle)
    if batch_size < 1:
        from hms_core.checks import invalid_value

        raise invalid_value("batch_size", batch_size, "integers >= 1")
    rows = rows.reset_index(drop=True)
    n = len(rows)
    layout = Layout.from_config(cfg, with_kaggle)
    specs = layout.array_specs(n)
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
                raise PartitionError(
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
    non_finite: dict[str, int] = {}  # values the transform zeroed (their windows are flagged bad_window)

    def save_marker() -> None:
        state = {"fingerprint": fp, "done_batches": sorted(done), "n_rows": n, "batch_size": batch_size}
        write_json(marker, state)

    def finished(b0: int, secs: dict[str, float], zeroed: dict[str, int]) -> None:
        done.add(b0)
        for k, v in secs.items():
            step_seconds[k] = step_seconds.get(k, 0.0) + v
        for k, v in zeroed.items():
            non_finite[k] = non_finite.get(k, 0) + int(v)
        save_marker()
        if progress is not None:
            progress(_rows_in(done, batch_size, n), n)

    save_marker()
    if progress is not None:
        progress(_rows_in(done, batch_size, n), n)
    cols = [c for c in ("eeg_id", "eeg_label_offset_seconds", "spectrogram_id", "spectrogram_label_offset_seconds")
            if c in rows.columns]  # fmt: skip
    # rows of one EEG file are processed together (in the order the file first appears), so each file is read
    # once for all its windows; outputs still land in row order
    order = _processing_order(rows)
    jobs = [
        _BatchJob(b0, order[b0 : b0 + batch_size], rows.iloc[order[b0 : b0 + batch_size]][cols].reset_index(drop=True),
                  str(eeg_dir), None if not with_kaggle else str(spec_dir), str(partial))
        for b0 in todo
    ]  # fmt: skip
    workers = max(1, min(cfg.workers, len(jobs)))
    # worker processes, not threads: the transform is numpy-bound, but between its calls enough Python runs under
    # the GIL that two threads kept two cores ~70 % busy. BLAS runs one thread per worker, also with a single
    # worker: idle OpenBLAS threads spin-wait on busy shared cores (the transform cost 2.1x the CPU time with the
    # default two).
    worker_cpu = 0.0
    spec = str(spec_dir) if with_kaggle else None
    if workers > 1:
        worker_cpu = _run_jobs_in_processes(jobs, cfg, workers, eeg_dir, spec, finished, out_dir)
    else:
        from hms_core.preprocess import single_threaded_compute

        eegs, spec_tables = _file_caches(eeg_dir, spec, cfg.eeg.missing_channels)
        if np.dtype(cfg.eeg.dtype) == np.float16:
            _torch_half_cast()  # imported (where installed) before its threads are limited
        with single_threaded_compute():
            for job in jobs:
                finished(*_run_batch(job, cfg, eegs, spec_tables))
    # finalise: index + features from the per-batch parts, then the arrays, then the manifest
    import polars as pl

    t0 = time.perf_counter()
    back = np.argsort(order)  # processing order -> row order
    quality = pd.concat([pd.read_parquet(partial / f"index_{s:09d}.parquet") for s in starts], ignore_index=True)
    quality = quality.iloc[back].reset_index(drop=True)
    index = pd.concat([rows, quality], axis=1)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    write_parquet(out_dir / INDEX_FILE, index)
    files = [INDEX_FILE]
    n_features = 0
    if cfg.features.enabled:
        feats = pl.concat([pl.read_parquet(partial / f"features_{s:09d}.parquet") for s in starts], how="vertical")
        feats = feats[back]
        n_features = feats.width
        key = pl.DataFrame({"eeg_id": rows["eeg_id"].to_numpy(), "row": np.arange(n, dtype=np.int64)})
        if "label_id" in rows.columns:
            key = key.with_columns(pl.Series("label_id", rows["label_id"].to_numpy()))
        write_parquet(out_dir / FEATURES_FILE, pl.concat([key, feats], how="horizontal"))
        files.append(FEATURES_FILE)
    else:
        (out_dir / FEATURES_FILE).unlink(missing_ok=True)
    for k in specs:
        with atomic_path(out_dir / f"{k}.npy", suffix=".tmp.npy") as tmp:
            os.replace(partial / f"{k}.npy", tmp)
        files.append(f"{k}.npy")
    step_seconds["finalise"] = time.perf_counter() - t0
    shutil.rmtree(partial, ignore_errors=True)
    seconds = time.perf_counter() - t_start
    nbytes = {f"{k}.npy": (out_dir / f"{k}.npy").stat().st_size for k in specs}
    manifest = PartitionManifest(
        out_dir=str(out_dir),
        n_rows=n,
        layout=layout.to_dict(),
        shapes={k: list(s) for k, (s, _) in specs.items()},
        dtypes={k: d for k, (_, d) in specs.items()},
        bytes=nbytes,
        total_bytes=int(sum(nbytes.values())),
        seconds=round(seconds, 3),
        step_seconds={k: round(v, 4) for k, v in step_seconds.items()},
        records_per_second=round(_rows_in(todo, batch_size, n) / max(seconds, 1e-9), 2),
        **_summary(index, layout),
        non_finite_zeroed=non_finite,
        n_features=n_features,
        resumed_from=resumed_from,
        batch_size=batch_size,
        worker_cpu_seconds=round(worker_cpu, 3),
        config_hash=_config_hash(cfg),
        config=cfg.model_dump(mode="json"),
        files=[*files, MANIFEST_FILE],
    )
    write_json(out_dir / MANIFEST_FILE, manifest.to_dict())
    return manifest


# --- reader ----------------------------------------------------------------------------------------------------
@dataclass
class Partition:
    """A complete partition folder: the index table, the manifest and its :class:`Layout`, and lazily
    memory-mapped read-only arrays (row ``i`` <-> index row ``i``). Pickles without its memory maps (DataLoader
    workers re-open them and share the page cache)."""

    path: Path
    index: pd.DataFrame
    manifest: dict[str, Any]
    layout: Layout
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _features: pd.DataFrame | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state

    @property
    def array_names(self) -> list[str]:
        return list(self.manifest.get("shapes", {}))

    def has(self, name: str) -> bool:
        return name in self.manifest.get("shapes", {}) and (self.path / f"{name}.npy").exists()

    def array(self, name: str) -> np.ndarray:
        """The memory-mapped array ``name`` (e.g. ``bipolar``, ``spec_mel``), checked against the manifest."""
        if name not in self._arrays:
            f = self.path / f"{name}.npy"
            if name not in self.manifest.get("shapes", {}) or not f.exists():
                raise PartitionError(f"{f} does not exist; this partition has arrays {self.array_names}")
            arr = np.load(f, mmap_mode="r")
            want = tuple(self.manifest["shapes"][name])
            if arr.shape != want:
                raise PartitionError(f"{f}: shape {arr.shape} but {self.path / MANIFEST_FILE} says {want}")
            self._arrays[name] = arr
        return self._arrays[name]

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        return {k: self.array(k) for k in self.array_names}

    @property
    def spectrograms(self) -> dict[str, np.ndarray]:
        return {k.removeprefix("spec_"): self.array(k) for k in self.array_names if k.startswith("spec_")}

    def segment(self, name: str = "bipolar") -> np.ndarray:
        """The labelled segment of a raw array (``bipolar``, ``referential``, ``ekg``), still memory-mapped."""
        return self.array(name)[..., self.layout.segment]

    # --- labels ---
    @property
    def has_targets(self) -> bool:
        """Vote columns present and voted (the test set carries the columns with zero votes)."""
        return all(c in self.index.columns for c in VOTE_COLUMNS) and bool((self.votes.sum(axis=1) > 0).all())

    @property
    def votes(self) -> np.ndarray:
        return self.index[list(VOTE_COLUMNS)].to_numpy(dtype=np.float64)

    @property
    def total_votes(self) -> np.ndarray:
        if "total_votes" in self.index.columns:
            return self.index["total_votes"].to_numpy(dtype=np.float64)
        return self.votes.sum(axis=1)

    @property
    def targets(self) -> np.ndarray:
        """Vote fractions (N, 6) float32; a partition without votes raises."""
        if not all(c in self.index.columns for c in VOTE_COLUMNS):
            raise PartitionError(f"{self.path / INDEX_FILE} has no vote columns {list(VOTE_COLUMNS)}")
        v = self.votes
        s = v.sum(axis=1, keepdims=True)
        if np.any(s <= 0):
            row = int(np.flatnonzero(s[:, 0] <= 0)[0])
            raise PartitionError(f"{self.path / INDEX_FILE}: row {row} has no votes")
        return (v / s).astype(np.float32)

    def features(self) -> pd.DataFrame:
        """The features table (pandas), checked row by row against the index."""
        if self._features is None:
            f = self.path / FEATURES_FILE
            if not f.exists():
                raise PartitionError(
                    f"{f} does not exist (preprocessing.features.enabled is off for this partition)"
                )
            df = pd.read_parquet(f)
            if len(df) != len(self.index):
                raise PartitionError(f"{f} has {len(df)} rows but {self.path / INDEX_FILE} has {len(self.index)}")
            if "eeg_id" in df.columns and "eeg_id" in self.index.columns:
                bad = np.flatnonzero(df["eeg_id"].to_numpy() != self.index["eeg_id"].to_numpy())
                if bad.size:
                    raise PartitionError(f"{f}: row {int(bad[0])} has eeg_id {df['eeg_id'].iloc[bad[0]]} but the "
                                         f"index has {self.index['eeg_id'].iloc[bad[0]]}")  # fmt: skip
            self._features = df
        return self._features


def load_partition(path: str | os.PathLike[str]) -> Partition:
    """Open a complete partition folder (see the module docstring); arrays are memory-mapped on first use."""
    path = Path(path)
    mpath = path / MANIFEST_FILE
    if not mpath.exists():
        raise PartitionError(
            f"Partition '{path}' is incomplete or missing: no {MANIFEST_FILE} (the writer adds it last). "
            f"Run the preprocessing stage (hms run --stage preprocessing)."
        )
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PartitionError(f"{mpath} is not readable JSON ({e}); rebuild the partition.") from None
    version = manifest.get("layout_version")
    if version != LAYOUT_VERSION or "layout" not in manifest:
        raise PartitionError(
            f"{mpath}: layout_version {version!r}, this platform reads version {LAYOUT_VERSION}; rebuild the "
            f"partition (hms run --stage preprocessing --resume marks it stale)."
        )
    f = path / INDEX_FILE
    if not f.exists():
        raise PartitionError(f"{f} does not exist although {mpath} does; rebuild the partition.")
    index = pd.read_parquet(f)
    if len(index) != manifest.get("n_rows"):
        raise PartitionError(f"{f} has {len(index)} rows but {mpath} says n_rows={manifest.get('n_rows')}")
    return Partition(path, index, manifest, Layout.from_dict(manifest["layout"]))


# --- checks ----------------------------------------------------------------------------------------------------
def partition_checks(
    out_dir: str | os.PathLike[str],
    cfg: PreprocessingConfig,
    fold: int | None = None,
    patient_folds: dict[Any, int] | None = None,
    chunk: int = 256,
) -> dict[str, tuple[bool, dict[str, Any]]]:
    """Figures for the asset checks :data:`CHECK_NAMES`.

    - ``finite``: no NaN/inf in any stored array (the transform zeroes and flags a bad window, so this guards the
      writer, not the data);
    - ``shapes``: every array as the config's layout says;
    - ``bad_windows``: windows that could not be judged (``bad_window`` in the index: all-NaN input, or an output
      that was not finite) are at most ``cfg.max_bad_window_fraction`` of the fold; a rare bad window is kept,
      flagged, and does not stop a fold of 20,000;
    - ``flagged_fraction``: flagged channels at most ``cfg.max_flagged_fraction``;
    - ``patients_in_fold``: ``fold`` (every row must carry it); ``patient_folds``, the global patient -> fold map.

    Arrays are scanned ``chunk`` windows at a time.
    """
    part = load_partition(out_dir)
    n = len(part)
    res: dict[str, tuple[bool, dict[str, Any]]] = {}
    bad: dict[str, int] = {}
    for k, a in part.arrays.items():
        if a.dtype == bool:
            continue
        bad[k] = sum(int((~np.isfinite(a[s : s + chunk])).sum()) for s in range(0, n, chunk))
    res["finite"] = (all(v == 0 for v in bad.values()), {"non_finite": bad})
    expected = Layout.from_config(cfg, part.layout.with_kaggle).array_specs(n)
    arrays = part.arrays
    mism = {
        k: {"expected": [list(s), d],
            "got": [list(arrays[k].shape), str(arrays[k].dtype)] if k in arrays else None}
        for k, (s, d) in expected.items()
        if k not in arrays or arrays[k].shape != s or str(arrays[k].dtype) != d
    }  # fmt: skip
    res["shapes"] = (not mism, {"n_rows": n, "mismatches": mism, "shapes": {k: list(v.shape) for k, v in
                                                                           arrays.items()}})  # fmt: skip
    idx = part.index
    bad_mask = idx["bad_window"].astype(bool).to_numpy() if "bad_window" in idx.columns else np.zeros(n, bool)
    bad_frac = float(bad_mask.mean()) if n else 0.0
    bad_rows = idx.loc[bad_mask, [c for c in ("eeg_id", "eeg_label_offset_seconds") if c in idx.columns]]
    res["bad_windows"] = (
        bad_frac <= cfg.max_bad_window_fraction,
        {"n_bad_windows": int(bad_mask.sum()), "bad_window_fraction": round(bad_frac, 6),
         "max_bad_window_fraction": cfg.max_bad_window_fraction,
         "examples": bad_rows.head(20).to_dict(orient="records")},
    )  # fmt: skip
    frac = float(idx["n_flagged_channels"].sum()) / max(n * N_EEG, 1)
    res["flagged_fraction"] = (
        frac <= cfg.max_flagged_fraction,
        {"flagged_fraction": round(frac, 6), "max_flagged_fraction": cfg.max_flagged_fraction,
         "n_windows_with_flags": int((idx["n_flagged_channels"] > 0).sum())},
    )  # fmt: skip
    folds_per_patient = idx.groupby("patient_id")["fold"].nunique()
    detail: dict[str, Any] = {
        "folds": sorted(int(f) for f in idx["fold"].unique()),
        "n_patients": len(folds_per_patient),
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
