"""The preprocessing transform: one function for a batch of 50-s EEG windows, used to build training partitions
(:func:`hms_core.partition.build_partition` streams batches through it) and for single records in serving
(:func:`preprocess_record`).

Steps per window (all vectorised across the batch): NaN gaps (short ones interpolated, long ones filled and the
channel flagged) -> flat/disconnected channels and electrode pops on the raw signal -> zero-phase SOS band-pass +
notch (and harmonics) on the whole 50 s -> noisy channels (robust amplitude after filtering) -> central
``context_length`` samples kept -> double-banana montage -> amplitude clipping -> features and spectrograms
(on unscaled microvolts, over the labelled segment or the context) -> robust scaling (median/IQR per channel).
EKG is filtered and scaled like EEG but kept apart. The labelled segment's position inside the context is
``cfg.eeg.segment_slice`` (recorded in every partition's layout).

The on-disk layout of a partition lives in :mod:`hms_core.partition`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hms_core.config import PreprocessingConfig
from hms_core.constants import (
    CHAIN_NAMES,
    EEG_CHANNELS,
    EEG_FILE_COLUMNS,
    EEG_WINDOW_SAMPLES,
    SFREQ,
)
from hms_core.eeg_io import RecordError, extract_window
from hms_core.signal import (
    apply_filter,
    bipolar_montage,
    bipolar_quality,
    clip_amplitude,
    design_filter,
    detect_artifacts,
    fill_nans,
    order_statistics,
    robust_scale,
)
from hms_core.spectral import (
    chain_average,
    compute_spectrogram,
    log_normalize,
    spectral_cache,
)

__all__ = ["QUALITY_COLUMNS", "BatchOutput", "preprocess_record", "process_windows", "single_threaded_compute"]

N_EEG = len(EEG_CHANNELS)
_log = logging.getLogger(__name__)
#: Per-window quality columns added to index.parquet (``bad_window``: all-NaN input, or an output that was not
#: finite and was zeroed; see :func:`process_windows`).
QUALITY_COLUMNS: tuple[str, ...] = (
    "nan_fraction", "was_interpolated", "n_flagged_channels", "flagged_mask", "flagged_channels",
    "n_flagged_bipolar", "n_missing_channels", "n_flat", "n_noisy", "n_pops", "clipped_fraction", "bad_window",
)  # fmt: skip


@contextlib.contextmanager
def single_threaded_compute() -> Iterator[None]:
    """Run the transform's BLAS products on one thread (and torch's ops, where torch is already imported),
    restoring the previous settings on exit.

    For callers that parallelise over batches themselves (the partition builder's worker threads, a scanner or a
    service with several workers): OpenBLAS's own threads spin-wait between the transform's many small products,
    which on shared cores doubled its CPU time. The setting is process-wide (enter it once around the work, not
    per call: finding the BLAS libraries takes a few milliseconds). Without threadpoolctl it changes nothing."""
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - installed with scikit-learn
            pass
        else:
            stack.enter_context(threadpool_limits(1, user_api="blas"))
        torch = sys.modules.get("torch")
        if torch is not None:
            n_threads = torch.get_num_threads()
            torch.set_num_threads(1)
            stack.callback(torch.set_num_threads, n_threads)
        yield


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
    #: output name -> values that were not finite (or beyond the storage dtype) and were replaced by 0
    non_finite: dict[str, int] = field(default_factory=dict)


def _span(cfg: PreprocessingConfig, span: str) -> slice:
    """Samples of the stored context that features / spectrograms cover: all of it, or the labelled segment."""
    return slice(0, cfg.eeg.context_length) if span == "context" else cfg.eeg.segment_slice


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


def _zero_non_finite(arr: np.ndarray, limit: float) -> tuple[np.ndarray, int]:
    """Set the values of ``arr`` (B, ...) that are not finite or exceed ``limit`` in magnitude (the storage dtype
    would make them inf) to 0, in place. Returns which windows held any (B,) and how many values were replaced."""
    axes = tuple(range(1, arr.ndim))
    with np.errstate(invalid="ignore"):
        bad = ~((arr.max(axis=axes) <= limit) & (arr.min(axis=axes) >= -limit))  # NaN fails both comparisons
    n = 0
    for i in np.flatnonzero(bad):
        wrong = ~(np.abs(arr[i]) <= limit)
        n += int(wrong.sum())
        arr[i][wrong] = 0.0
    return bad, n


def _zero_non_finite_features(feats: Any) -> tuple[Any, np.ndarray, int]:
    """The features table with non-finite float cells set to 0, which rows held any, and how many cells."""
    import polars as pl

    cols = [c for c, t in feats.schema.items() if t.is_float()]
    if not cols:
        return feats, np.zeros(feats.height, bool), 0
    wrong = ~np.isfinite(feats.select(cols).to_numpy())
    if not wrong.any():
        return feats, np.zeros(feats.height, bool), 0
    fixed = feats.with_columns(
        pl.when(pl.col(c).is_finite()).then(pl.col(c)).otherwise(pl.lit(0.0, feats.schema[c])).alias(c)
        for c in cols
    )
    return fixed, wrong.any(1), int(wrong.sum())


def process_windows(
    windows: np.ndarray,
    cfg: PreprocessingConfig,
    record_ids: Sequence[str] | None = None,
    sfreq: float = SFREQ,
    compute_features: bool | None = None,
    *,
    copy: bool = True,
) -> BatchOutput:
    """Preprocess B windows shaped (B, n_times, 20) in EEG_FILE_COLUMNS order (microvolts, 200 Hz).

    ``n_times`` is normally 10000 (the 50-s window); the filters run on all of it and the central
    ``cfg.eeg.context_length`` samples are kept. Raises :class:`RecordError` naming the record for a wrong sampling
    rate, a wrong channel count, a too-short window or an all-NaN record (unless ``all_nan_windows: flag``).

    Every output is finite and representable in ``cfg.eeg.dtype``: a value that is not (which finite input does
    not produce) is replaced by 0, counted in :attr:`BatchOutput.non_finite`, logged, and its window flagged in the
    ``bad_window`` quality column (so are all-NaN windows kept as zeros).

    ``copy=False`` lets the transform work in the memory of ``windows`` (which it then overwrites) when that is
    already channel-major float32, i.e. ``windows`` is ``w.transpose(0, 2, 1)`` of a C-contiguous (B, 20, n_times)
    array ``w``: the partition builder's own read buffer, which saves a transposing copy.
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
        if copy and np.may_share_memory(x, windows):
            x = x.copy()  # the caller's array stays as it was
        if not np.isfinite(x.sum(dtype=np.float64)):  # +-inf samples are missing data too
            x[np.isinf(x)] = np.nan
        x, nrep = fill_nans(x, max_gap=round(ecfg.max_gap_s * sfreq), copy=False)  # one NaN scan for both
        all_nan = nrep.all_nan[:, :N_EEG].all(1)
        if all_nan.any() and ecfg.all_nan_windows == "error":
            bad = [ids[i] for i in np.flatnonzero(all_nan)]
            raise RecordError(
                f"EEG record(s) {bad} are all NaN in every EEG channel; nothing to preprocess "
                f"(set preprocessing.eeg.all_nan_windows: flag to keep such windows as flagged zeros)."
            )
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
        # one sort serves this check and the robust scaling of the (clipped) referential channels
        ref_stats = order_statistics(y[:, :N_EEG], (25, 50, 75), stride=4)
        q25, _, q75 = ref_stats.percentiles()
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
    # the spectrograms' input; the features share its Hann frames when they cover the same samples
    spec_span = _span(cfg, cfg.spectrogram.span)
    seg = bip[:, : 4 * len(CHAIN_NAMES), spec_span]
    cache = spectral_cache(seg, cfg.spectrogram)
    feats = None
    if compute_features if compute_features is not None else cfg.features.enabled:
        from hms_core.features import compute_features as _features

        with tm("features"):
            sl = _span(cfg, cfg.features.span)
            feats = _features(
                seg if sl == spec_span and bip.shape[1] == seg.shape[1] else bip[..., sl], sfreq, quality=bip_ok,
                fmin=ecfg.filter_low, fmax=ecfg.filter_high, cache=cache,
                extra={"nan_fraction": nrep.nan_fraction[:, :N_EEG].mean(1),
                       "flagged_fraction": ref_bad.mean(1), "clipped_fraction": clipped.mean(1),
                       "pops_per_channel": art.n_pops.mean(1)},
            )  # fmt: skip
    specs: dict[str, np.ndarray] = {}
    for name in cfg.spectrogram.types:
        with tm(f"spec_{name}"):
            power, _ = compute_spectrogram(name, seg, cfg.spectrogram, sfreq, cache)
            specs[name] = log_normalize(chain_average(power, bip_ok))
    del cache
    with tm("scaling"):
        if ecfg.scaling == "robust":
            # channels flatter than eps are only centred, so a clipped value stays inside the storage dtype
            top = float(np.finfo(np.dtype(ecfg.dtype)).max)
            robust_scale(ref, eps=max(1e-3, 4 * ecfg.clip_uv / top), out=ref,
                         quantiles=ref_stats.percentiles(ecfg.clip_uv))  # fmt: skip
            robust_scale(bip, eps=max(1e-3, 4 * ecfg.clip_uv / top), out=bip)
            robust_scale(ekg, eps=max(1e-3, 40 * ecfg.clip_uv / top), out=ekg)
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
    # a rare bad window must not stop a fold: whatever is not finite (in the storage dtype) becomes 0, and the
    # window is flagged (as are all-NaN windows kept under all_nan_windows: flag); the partition's blocking check
    # fails only above preprocessing.max_bad_window_fraction
    with tm("finite"):
        bad_window = all_nan.copy()
        non_finite: dict[str, int] = {}
        top = float(np.finfo(np.dtype(ecfg.dtype)).max)
        arrays = {"referential": ref, "bipolar": bip, "ekg": ekg} | {f"spec_{k}": v for k, v in specs.items()}
        for name, arr in arrays.items():
            bad, n = _zero_non_finite(arr, top)
            bad_window |= bad
            if n:
                non_finite[name] = n
        if feats is not None:
            feats, bad, n = _zero_non_finite_features(feats)
            bad_window |= bad
            if n:
                non_finite["features"] = n
        if non_finite:
            _log.warning(
                "Replaced non-finite outputs by 0 in %d window(s) %s: %s", int(bad_window.sum()),
                [ids[i] for i in np.flatnonzero(bad_window)][:5], non_finite,
            )  # fmt: skip
    wq["bad_window"] = bad_window
    return BatchOutput(ref, bip, ekg, bip_ok, ref_ok, specs, feats, wq, tm.seconds, non_finite)


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
