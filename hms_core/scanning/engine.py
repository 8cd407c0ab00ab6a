"""Scan a long recording into a class-probability timeline: :func:`scan_recording`.

The recording is read in chunks of ``scan.chunk_s`` seconds of windows (plus the 50-s context and
``scan.filter_pad_s`` of filter margin on either side), so memory is bounded by the chunk whatever the file's
length. Each chunk goes through the continuous front end (:mod:`hms_core.scanning.frontend`); its windows, one
10-s segment every ``scan.stride_s`` seconds with the 50-s context around it, are judged for quality and the
evaluable ones classified in batches of ``scan.batch_size``:

- ``engine="ensemble"``: the deployment package's engines (or the workspace's trained ensemble) on the exact
  per-window inputs of training and serving (:func:`~hms_core.scanning.frontend.window_batch`);
- ``engine="distilled"``: the scanning model distilled from that ensemble (:mod:`hms_core.scanning.distill`) on
  STFT frames shared by all overlapping windows;
- ``engine="cascade"``: the distilled model on every window, then the ensemble on the windows where the distilled
  model sees a ``scan.cascade`` class (and their neighbours), whose probabilities replace the distilled ones
  there (with ``scan.cascade.stride_s``, on every few candidates only, the ones between interpolated). The
  timeline's ``engine`` column names the engine of each window (``interpolated`` for those).

A window is **not evaluated** (``evaluated=False``, probabilities NaN, never zeros) when its 50-s context runs past
the recording (``edge``), it has no EEG signal (``nan``), or more channels than ``max_missing_channels`` cannot be
judged in its segment: the reason is the commonest cause among them (``missing_channels``, ``flat``,
``disconnected``, ``artifact`` for electrode pops).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hms_core.config import PlatformConfig, PreprocessingConfig
from hms_core.constants import CLASSES, EEG_CHANNELS, SFREQ
from hms_core.eeg_io import RecordError
from hms_core.monitoring.log import monitored_feature_columns
from hms_core.scanning.config import ScanConfig
from hms_core.scanning.distill import distilled_dir
from hms_core.scanning.frontend import (
    AMP_BLOCK,
    WindowQuality,
    context_start,
    distill_context_frames,
    distill_frames,
    distill_inputs,
    distill_n_frames,
    frame_power,
    hemisphere_columns,
    prepare_chunk,
    quality_flags,
    window_batch,
    window_features,
    window_quality,
    window_span,
)
from hms_core.scanning.predictors import (
    DEFAULT_MAX_MISSING,
    DISTILLED_DIR,
    Cascade,
    DistilledModel,
    PackageEnsemble,
    Prediction,
    WorkspaceEnsemble,
    entropy,
    interpolate_between,
    load_distilled,
)
from hms_core.signal import bipolar_quality

__all__ = [
    "ENGINES",
    "EXTRA_COLUMNS",
    "ScanResult",
    "Scanner",
    "load_scanner",
    "scan_reader",
    "scan_recording",
]

ENGINES: tuple[str, ...] = ("ensemble", "distilled", "cascade")
#: Timeline columns the engine adds to the contract's (hms_core.scanning.events.TIMELINE_COLUMNS).
EXTRA_COLUMNS: tuple[str, ...] = (
    "window", "engine", "disagreement", "n_bad_channels", "n_flat", "n_disconnected", "n_missing", "n_pops",
    "nan_fraction", "clipped_fraction",
)  # fmt: skip
#: Causes of a bad channel in the order ties are broken, and the timeline's reason for each.
_CAUSES: tuple[tuple[str, str], ...] = (
    ("missing", "missing_channels"), ("flat", "flat"), ("noisy", "disconnected"), ("popping", "artifact"),
)  # fmt: skip
#: The teacher version of a workspace's trained ensemble (before a deployment package exists).
WORKSPACE_VERSION = "workspace-ensemble"
#: Chunk starts are multiples of this many samples (artifact blocks, 1-s amplitude blocks, STFT hops).
_ALIGN = AMP_BLOCK


# --- which engines classify the windows -----------------------------------------------------------------------
@dataclass
class Scanner:
    """The engines a scan can use, resolved from a package or a workspace."""

    preprocessing: PreprocessingConfig
    version: str
    max_missing_channels: int
    ensemble_factory: Callable[[], Any] | None
    distilled: DistilledModel | None
    source: Path
    _ensemble: Any = field(default=None, repr=False)

    @property
    def ensemble(self) -> Any:
        if self._ensemble is None:
            if self.ensemble_factory is None:
                raise FileNotFoundError(f"{self.source}: no ensemble engines to run")
            self._ensemble = self.ensemble_factory()
        return self._ensemble

    def choose(self, engine: str, scan: ScanConfig | None = None) -> Any:
        """The predictor for ``engine`` (auto | ensemble | distilled | cascade, the last with ``scan.cascade`` at
        ``scan.stride_s``); a clear error when it is not there."""
        if engine == "auto":  # the cascade where it can run: the distilled model's speed, the ensemble's events
            if self.distilled is None:
                engine = "ensemble"
            else:
                engine = "cascade" if self.ensemble_factory is not None else "distilled"
        if engine in ("distilled", "cascade"):
            if self.distilled is None:
                raise FileNotFoundError(
                    f"{self.source} has no distilled scanning model ({DISTILLED_DIR}/model.onnx), which engine "
                    f"{engine} needs; build it with `hms scan --distill` or scan with --engine ensemble"
                )
            if engine == "cascade":
                scan = scan or ScanConfig()
                return Cascade(self.distilled, self.ensemble, scan.cascade, scan.stride_s)
            return self.distilled
        if engine != "ensemble":
            from hms_core.checks import invalid_value

            raise invalid_value("engine", engine, ["auto", *ENGINES])
        return self.ensemble


def newest_package(cfg: PlatformConfig) -> Path | None:
    """The newest deployment package under ``<root>/models/deployments`` (a folder holding manifest.json)."""
    base = Path(cfg.models_dir) / "deployments"
    found = sorted((p for p in base.glob("*") if (p / "manifest.json").is_file()), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _distilled(scan: ScanConfig, platform: PlatformConfig | None, folders: list[Path], preprocessing: Any,
               max_missing: int, version: str) -> DistilledModel | None:  # fmt: skip
    """The distilled model: ``scan.distilled_model`` when set (an error when it holds none), else the first of
    ``folders`` that holds one."""
    if scan.distilled_model:
        folder = Path(scan.distilled_model)
        if platform is not None and not folder.is_absolute():
            folder = platform.root / folder
        found = load_distilled(folder, preprocessing, scan.threads, max_missing, version)
        if found is None:
            raise FileNotFoundError(f"scan.distilled_model: {folder} holds no distilled scanning model "
                                    f"(model.onnx + distill.json); materialize scan_model or run `hms scan --distill`")  # fmt: skip
        return found
    for folder in folders:
        found = load_distilled(folder, preprocessing, scan.threads, max_missing, version)
        if found is not None:
            return found
    return None


def load_scanner(package: Any, scan: ScanConfig, platform: PlatformConfig | None = None) -> Scanner:
    """Resolve the engines of a scan. ``package``: a deployment package (object or folder), or None for
    ``scan.package`` / the newest package of ``platform``'s workspace, else that workspace's trained ensemble."""
    if package is None and scan.package:
        package = Path(scan.package)
        if platform is not None and not package.is_absolute():
            package = platform.root / package
    if package is None and platform is not None:
        package = newest_package(platform)
    if package is not None:
        if isinstance(package, (str, os.PathLike)):
            from hms_core.export import load_package

            package = load_package(package, verify=True)
        ens = PackageEnsemble(package, scan.precision)
        pkg_path = Path(package.path)
        folders = [pkg_path / DISTILLED_DIR]  # inside the package (were EXPORT to ship it)
        if platform is not None:  # what the scan_model asset / `hms scan --distill` write for this package
            folders.append(distilled_dir(platform.models_dir, ens.version))
        folders.append(distilled_dir(pkg_path.parent.parent, ens.version))  # beside a package of another workspace
        distilled = _distilled(scan, platform, folders, ens.preprocessing, ens.max_missing_channels, ens.version)
        return Scanner(ens.preprocessing, ens.version, ens.max_missing_channels, lambda: ens, distilled, pkg_path)
    if platform is None:
        raise ValueError("scan needs a deployment package or a platform config whose workspace holds an ensemble")
    from hms_core.ensemble.build import ENSEMBLE_FILE

    if not (platform.ensemble_dir / ENSEMBLE_FILE).is_file():
        raise FileNotFoundError(
            f"no deployment package under {Path(platform.models_dir) / 'deployments'} and no trained ensemble at "
            f"{platform.ensemble_dir / ENSEMBLE_FILE}: run `hms run --stage all` (or pass --package PATH)"
        )
    version = WORKSPACE_VERSION
    distilled = _distilled(scan, platform, [distilled_dir(platform.models_dir, version)], platform.preprocessing,
                           DEFAULT_MAX_MISSING, version)  # fmt: skip
    return Scanner(platform.preprocessing, version, DEFAULT_MAX_MISSING, lambda: WorkspaceEnsemble(platform, scan.threads),
                   distilled, platform.root)  # fmt: skip


# --- the scan ---------------------------------------------------------------------------------------------------
def _take(q: WindowQuality, idx: np.ndarray) -> WindowQuality:
    return WindowQuality(**{f.name: getattr(q, f.name)[idx] for f in fields(q)})


def _reasons(q: WindowQuality, edge: np.ndarray, max_missing: int) -> tuple[np.ndarray, np.ndarray]:
    """(evaluated (W,), reason (W,) str) from the segment's channel flags."""
    bad = q.bad_segment
    counts = np.stack([
        (q.missing | q.long_gaps).sum(1), (q.flat_seg & ~q.missing).sum(1),
        (q.noisy_seg & ~q.missing & ~q.flat_seg).sum(1), (q.popping_seg & ~q.missing).sum(1),
    ], 1)  # fmt: skip
    reason = np.array([c[1] for c in _CAUSES], dtype=object)[counts.argmax(1)]
    ok = bad.sum(1) <= max_missing
    reason[ok] = ""
    reason[q.missing.all(1)] = "nan"
    reason[edge] = "edge"
    return reason == "", reason


@dataclass
class _Chunk:
    """One chunk read and through the continuous front end (what a worker thread prepares ahead)."""

    k0: int
    k1: int
    signal: Any  # ChunkSignal
    ctx: np.ndarray
    quality: WindowQuality
    ok: np.ndarray
    reason: np.ndarray
    frames: Any  # FramePower
    distill: Any  # DistillFrames | None


@dataclass
class ScanLog:
    """What a scan hands the prediction log: every ``scan.log_stride_s``-th evaluated window with its window-quality
    flags and the preprocessing features that drift monitoring reads (``features`` None when not computed)."""

    windows: np.ndarray  # timeline row indices
    flags: dict[str, np.ndarray]
    features: Any  # polars DataFrame of hms_core.monitoring.log.monitored_feature_columns, or None


def _log_every(scan: ScanConfig) -> int:
    """Windows between two logged ones (``scan.log_stride_s`` rounded to whole strides, at least 1)."""
    return max(1, round(scan.log_stride_s / scan.stride_s))


def scan_reader(
    reader: Any,
    predictor: Any,
    scan: ScanConfig,
    max_missing_channels: int,
    progress: Callable[[int, int], None] | None = None,
    on_batch: Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None = None,
    log: list[ScanLog] | None = None,
) -> tuple[pd.DataFrame, Any]:
    """Timeline and hemisphere spectrogram of a recording opened for streaming (``duration_s``, ``read(a, b)``).

    ``predictor``: a :class:`~hms_core.scanning.predictors.DistilledModel` or an ensemble predictor
    (``predict(BatchOutput)``); ``progress(done, total)`` is called after each chunk. ``on_batch(spec, scalars,
    probs)``: called with every evaluated batch's distilled-model inputs and the predictor's probabilities (the
    teacher windows of :mod:`hms_core.scanning.distill`). ``log``: a list that receives a :class:`ScanLog` per chunk
    (the windows for the prediction log, with their features when ``scan.log_features``).

    ``scan.prepare_ahead`` worker threads read and prepare the next chunks (reading, resampling, filtering, the
    quality tests and the STFT frames release the GIL) while this one classifies the current chunk's windows."""
    import threading
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from hms_core.scanning.plots import HemisphereSpectrogram

    pp: PreprocessingConfig = predictor.preprocessing
    cascade = predictor if isinstance(predictor, Cascade) else None
    if cascade is not None:  # the distilled model on every window, the ensemble (teacher) on its candidates
        student, teacher = cascade.distilled, cascade.teacher
    elif isinstance(predictor, DistilledModel):
        student, teacher = predictor, None
    else:
        student, teacher = None, predictor
    distilled = student is not None
    dcfg = student.dcfg if student else scan.distill  # a distilled model reads the inputs it was trained on
    if scan.stride_samples % dcfg.hop:
        raise ValueError(f"stride_s ({scan.stride_s}) must be a multiple of the distilled model's STFT hop "
                         f"({dcfg.hop} samples), so windows share its frames")  # fmt: skip
    n_total = round(reader.duration_s * SFREQ)
    stride, seg_len = scan.stride_samples, pp.eeg.segment_length
    n_win = (n_total - seg_len) // stride + 1 if n_total >= seg_len else 0
    seg_starts = np.arange(n_win, dtype=np.int64) * stride
    before, after = window_span(pp)
    edge = (seg_starts - before < 0) | (seg_starts + after > n_total)
    per_chunk = max(int(scan.chunk_s * SFREQ) // stride, 1)
    pad = round(scan.filter_pad_s * SFREQ)
    n_frames = distill_n_frames(dcfg, seg_len)
    ctx_samples = distill_context_frames(dcfg) * dcfg.hop  # frames the model reads beyond the segment
    types = getattr(teacher, "spectrogram_types", None)
    needs_features = getattr(teacher, "needs_features", None)
    log_every = _log_every(scan)
    probs = np.full((n_win, len(CLASSES)), np.nan, np.float32)
    disagreement = np.full(n_win, np.nan, np.float32)
    evaluated = np.zeros(n_win, bool)
    reason = np.full(n_win, "", dtype=object)
    scored_by = np.full(n_win, "", dtype=object)  # the engine whose probabilities a window has
    counts = {k: np.zeros(n_win, np.int16) for k in ("n_bad_channels", "n_flat", "n_disconnected", "n_missing",
                                                     "n_pops")}  # fmt: skip
    nan_frac = np.zeros(n_win, np.float32)
    clip_frac = np.zeros(n_win, np.float32)
    col = round(scan.strip_seconds * SFREQ)
    n_cols = max(-(-n_total // col), 1)
    strip_sum: np.ndarray | None = None
    strip_n = np.zeros(n_cols, np.int64)
    freqs = np.zeros(0)
    fmax = max(dcfg.freq_max, scan.strip_freq_max)

    read_lock = threading.Lock()

    def prepare(k0: int) -> _Chunk:
        k1 = min(k0 + per_chunk, n_win)
        lo = max(int(seg_starts[k0]) - before - pad, 0) // _ALIGN * _ALIGN
        hi = min(int(seg_starts[k1 - 1]) + after + pad, n_total)
        with read_lock:  # one reader (file handle, resampler state) for every worker thread
            raw = reader.read(lo / SFREQ, hi / SFREQ)
        if raw.shape[0] < hi - lo:  # a file shorter than its header says: the rest is missing
            raw = np.concatenate([raw, np.full((hi - lo - raw.shape[0], raw.shape[1]), np.nan, np.float32)])
        chunk = prepare_chunk(raw[: hi - lo], lo, pp)
        del raw
        ctx = context_start(seg_starts[k0:k1], pp)
        q = window_quality(chunk, ctx, pp)
        ok, why = _reasons(q, edge[k0:k1], max_missing_channels)
        # STFT frames over this chunk's segments (the hemisphere spectrogram; the distilled model's input)
        fp = frame_power(chunk, dcfg, int(seg_starts[k0]) - ctx_samples, int(seg_starts[k1 - 1]) + seg_len + ctx_samples,
                         fmax)  # fmt: skip
        dfr = distill_frames(fp, dcfg) if distilled or on_batch is not None else None
        return _Chunk(k0, k1, chunk, ctx, q, ok, why, fp, dfr)

    starts = list(range(0, n_win, per_chunk))
    n_ahead = scan.prepare_ahead
    with ThreadPoolExecutor(n_ahead, thread_name_prefix="scan-prepare") as pool:
        ahead = deque(pool.submit(prepare, k) for k in starts[:n_ahead])
        for i in range(len(starts)):
            c = ahead.popleft().result()
            if i + n_ahead < len(starts):
                ahead.append(pool.submit(prepare, starts[i + n_ahead]))
            k0, k1, q, fp = c.k0, c.k1, c.quality, c.frames
            evaluated[k0:k1], reason[k0:k1] = c.ok, c.reason
            counts["n_bad_channels"][k0:k1] = q.bad_segment.sum(1)
            counts["n_flat"][k0:k1] = (q.flat_seg & ~q.missing).sum(1)
            counts["n_disconnected"][k0:k1] = q.noisy_seg.sum(1)
            counts["n_missing"][k0:k1] = (q.missing | q.long_gaps).sum(1)
            counts["n_pops"][k0:k1] = q.popping_seg.sum(1)
            nan_frac[k0:k1] = q.nan_fraction.mean(1)
            clip_frac[k0:k1] = q.clipped_fraction.mean(1)
            cols, valid, freqs = hemisphere_columns(fp, scan.strip_freq_max)
            centres = fp.first * dcfg.hop + dcfg.hop // 2 + valid * dcfg.hop
            own_end = int(seg_starts[k1]) if k1 < n_win else n_total
            keep = (centres >= (int(seg_starts[k0]) if k0 else 0)) & (centres < own_end)
            if strip_sum is None:
                strip_sum = np.zeros((2, len(freqs), n_cols))
            ci = np.minimum(centres[keep] // col, n_cols - 1)
            for side in range(2):
                for f in range(len(freqs)):
                    strip_sum[side, f] += np.bincount(ci, cols[side, f, valid[keep]], minlength=n_cols)
            strip_n += np.bincount(ci, minlength=n_cols)
            todo = np.flatnonzero(c.ok)
            bip_all = bipolar_quality(q.ref_ok, pp.eeg.include_central_chain) if distilled or on_batch else None
            if student is not None:
                for b0 in range(0, len(todo), scan.batch_size):
                    b = todo[b0 : b0 + scan.batch_size]
                    spec, scal = distill_inputs(c.distill, seg_starts[k0 + b], n_frames, bip_all[b], dcfg)
                    pred: Prediction = student.predict_inputs(spec, scal)
                    probs[k0 + b] = pred.probs
                    disagreement[k0 + b] = pred.disagreement
                scored_by[k0 + todo] = student.kind
            judge, fill = todo, None  # windows the ensemble judges; the mask of the interpolated ones
            if cascade is not None:  # the ensemble judges the distilled model's candidates again
                cand = cascade.candidates(probs[k0:k1], c.ok)
                judged = cascade.judged(cand)
                judge, fill = np.flatnonzero(judged), cand & ~judged
            if teacher is not None:
                for b0 in range(0, len(judge), scan.ensemble_batch_size):
                    b = judge[b0 : b0 + scan.ensemble_batch_size]
                    pred = teacher.predict(
                        window_batch(c.signal, c.ctx[b], _take(q, b), pp, needs_features, types)
                    )
                    if on_batch is not None:
                        on_batch(*distill_inputs(c.distill, seg_starts[k0 + b], n_frames, bip_all[b], dcfg),
                                 pred.probs)  # fmt: skip
                    probs[k0 + b] = pred.probs
                    disagreement[k0 + b] = pred.disagreement
                scored_by[k0 + judge] = teacher.kind
            if fill is not None and fill.any():  # cascade.stride_s: candidates between two judged windows
                between = np.flatnonzero(fill)
                probs[k0 + between] = interpolate_between(probs[k0:k1].astype(np.float64), judged, fill)
                disagreement[k0 + between] = np.nan
                scored_by[k0 + between] = "interpolated"
            if log is not None:
                sel = todo[(k0 + todo) % log_every == 0]
                if len(sel):
                    qs = _take(q, sel)
                    feats = None
                    if scan.log_features:
                        feats = window_features(c.signal, c.ctx[sel], qs, pp)
                        feats = feats.select([f for f in monitored_feature_columns() if f in feats.columns])
                    log.append(ScanLog(k0 + sel, quality_flags(qs, pp.eeg.include_central_chain), feats))
            del c
            if progress is not None:
                progress(k1, n_win)
    tl = pd.DataFrame({"window": np.arange(n_win), "start_s": seg_starts / SFREQ,
                       "end_s": (seg_starts + seg_len) / SFREQ})  # fmt: skip
    p64 = probs.astype(np.float64)
    if n_win:
        p64[evaluated] /= p64[evaluated].sum(1, keepdims=True)  # float32 storage: renormalise exactly
    for j, c in enumerate(CLASSES):
        tl[c] = p64[:, j]
    tl["entropy"] = np.where(evaluated, entropy(np.nan_to_num(p64)), np.nan)
    tl["evaluated"] = evaluated
    tl["reason"] = reason.astype(str)
    tl["engine"] = scored_by.astype(str)
    tl["disagreement"] = disagreement.astype(np.float64)
    for k, v in counts.items():
        tl[k] = v
    tl["nan_fraction"] = nan_frac
    tl["clipped_fraction"] = clip_frac
    spectrogram = None
    if strip_sum is not None and n_win:
        with np.errstate(invalid="ignore", divide="ignore"):
            power = np.log10(strip_sum / strip_n + 1e-6).astype(np.float32)
        power[:, :, strip_n == 0] = np.nan
        times = (np.arange(n_cols) + 0.5) * col / SFREQ
        spectrogram = HemisphereSpectrogram(times_s=times, freqs_hz=np.asarray(freqs), power=power)
    return tl, spectrogram


@dataclass
class _Head:
    """The first ``duration_s`` seconds of an open recording (``scan_recording(limit_s=...)``)."""

    rec: Any
    duration_s: float

    def read(self, start_s: float, stop_s: float) -> np.ndarray:
        return self.rec.read(start_s, min(stop_s, self.duration_s))


@dataclass
class ScanResult:
    path: Path
    duration_s: float
    start_datetime: dt.datetime | None
    channels_found: tuple[str, ...]
    channels_missing: tuple[str, ...]
    engine: str
    package_version: str
    seconds: float
    timeline: pd.DataFrame = field(repr=False)
    spectrogram: Any = field(repr=False)
    outputs: Any = field(default=None, repr=False)

    @property
    def realtime_factor(self) -> float:
        """Recording seconds scanned per wall-clock second."""
        return self.duration_s / max(self.seconds, 1e-9)

    @property
    def n_windows(self) -> int:
        return len(self.timeline)

    @property
    def n_evaluated(self) -> int:
        return int(self.timeline["evaluated"].sum())

    @property
    def n_ensemble(self) -> int:
        """Windows the ensemble judged (all evaluated ones with engine ensemble, the candidates with cascade)."""
        return int((self.timeline["engine"] == "ensemble").sum())


def _log_predictions(platform: PlatformConfig, res: ScanResult, logged: list[ScanLog]) -> int:
    """The logged windows (every ``scan.log_stride_s``, evaluated ones only) into the workspace's prediction log
    (source "scan") with their window-quality flags and preprocessing features, flushed before returning.
    Returns the number of rows."""
    from types import SimpleNamespace

    import polars as pl

    from hms_core.monitoring.log import PredictionLog, prediction_rows

    if not logged:
        return 0
    tl = res.timeline
    rows_idx = np.concatenate([g.windows for g in logged])
    flags = {k: np.concatenate([g.flags[k] for g in logged]) for k in logged[0].flags}
    feats = [g.features for g in logged if g.features is not None]
    batch = SimpleNamespace(window_quality=flags, features=pl.concat(feats) if len(feats) == len(logged) else None)
    rows = prediction_rows(
        tl.loc[rows_idx, list(CLASSES)].to_numpy(), batch, package_version=res.package_version,
        input_kind=res.path.suffix.lstrip(".").lower() or "file", source="scan", latency_s=res.seconds,
        window_starts=tl.loc[rows_idx, "start_s"].to_numpy(), disagreement=tl.loc[rows_idx, "disagreement"].to_numpy(),
        precision=res.engine, identifiers={"record_name": res.path.name},
    )  # fmt: skip
    log = PredictionLog.from_config(platform)
    try:
        log.append(rows)
    finally:
        log.close()
    return len(rows)


def scan_recording(
    path: str | os.PathLike[str],
    package: Any,
    cfg: ScanConfig,
    out_dir: str | os.PathLike[str] | None,
    *,
    platform: PlatformConfig | None = None,
    scanner: Scanner | None = None,
    progress: Callable[[int, int], None] | None = None,
    limit_s: float | None = None,
) -> ScanResult:
    """Scan one recording and (with ``out_dir``) write its outputs (timeline.csv/parquet, events.tsv, events.edf,
    summary.json, timeline.png via :func:`hms_core.scanning.outputs.write_scan_outputs`).

    ``package``: a deployment package (object or folder) or None (see :func:`load_scanner`; ``platform`` is the
    workspace to fall back on); ``limit_s``: scan only the first ``limit_s`` seconds of the recording. Raises :class:`~hms_core.eeg_io.RecordError` naming the file for a file that cannot
    be scanned (truncated, wrong rate, no EEG channels, length 0, shorter than one window)."""
    from hms_core.recording import open_recording

    t0 = time.perf_counter()
    scanner = scanner or load_scanner(package, cfg, platform)
    predictor = scanner.choose(cfg.engine, cfg)
    max_missing = scanner.max_missing_channels if cfg.max_missing_channels is None else cfg.max_missing_channels
    path = Path(path)
    with open_recording(path, min_eeg_channels=len(EEG_CHANNELS) - max_missing) as rec:
        seg_s = scanner.preprocessing.eeg.segment_length / SFREQ
        if rec.duration_s < seg_s:
            raise RecordError(
                f"EEG recording '{path}' lasts {rec.duration_s:g} s; a scan needs at least one {seg_s:g}-s window."
            )
        logged: list[ScanLog] | None = [] if cfg.log_predictions and platform is not None else None
        reader = rec if limit_s is None or limit_s >= rec.duration_s else _Head(rec, float(limit_s))
        tl, spectrogram = scan_reader(reader, predictor, cfg, max_missing, progress, log=logged)
        duration, start = float(reader.duration_s), rec.start_datetime
        found, missing = tuple(rec.channels), tuple(rec.missing)
    seconds = time.perf_counter() - t0
    res = ScanResult(
        path, duration, start, found, missing, predictor.kind, scanner.version, seconds, tl, spectrogram
    )
    if out_dir is not None:
        from hms_core.scanning.outputs import write_scan_outputs

        meta = {
            "engine": res.engine, "package_version": res.package_version, "stride_s": cfg.stride_s,
            "scan_seconds": round(seconds, 3), "realtime_factor": round(res.realtime_factor, 1),
            "channels_missing": list(missing), "n_windows": res.n_windows, "n_evaluated": res.n_evaluated,
            "n_ensemble_windows": res.n_ensemble,
        }  # fmt: skip
        res.outputs = write_scan_outputs(out_dir, tl, cfg.events_for(res.engine), recording=str(path),
                                         duration_s=duration, start_datetime=start, spectrogram=spectrogram,
                                         meta=meta)  # fmt: skip
    if logged is not None:
        _log_predictions(platform, res, logged)
    return res
