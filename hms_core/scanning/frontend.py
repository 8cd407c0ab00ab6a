"""The scanner's front end: one pass of the platform's preprocessing over a continuous chunk of a recording, and
per-window slices of it.

A 24-h recording scanned every 2 s is 43,200 overlapping 50-s windows; preprocessing each window alone
(:func:`hms_core.preprocess.process_windows`) would filter and inspect every sample 25 times. Here the work that
does not depend on where a window starts is done once per chunk (a few minutes of signal, read with
``scan.filter_pad_s`` of margin so the zero-phase filter has settled at the windows' edges):

- NaN filling (:func:`hms_core.signal.fill_nans`), the zero-phase SOS band-pass + notch
  (:func:`~hms_core.signal.design_filter` / :func:`~hms_core.signal.apply_filter`), the double-banana montage and
  the amplitude clip run over the whole chunk;
- the artifact tests of :func:`hms_core.signal.detect_artifacts` are reduced to per-block statistics (maxima of
  ``|diff|`` over 0.25-s blocks, robust amplitude of 1-s blocks, NaN counts) from which every window's flags are
  sums over the blocks it covers;
- the distilled model's STFT frames (and the hemisphere spectrogram) are computed once on a grid that every
  window's segment and context frames share (``scan.stride_s`` is a multiple of ``scan.distill.hop``).

What stays per window is what the per-window path defines per window: the robust scaling (median / IQR of the
window's own context), the spectrograms of its labelled segment with their per-window ``log_normalize``, and its
features. :func:`window_batch` builds exactly the :class:`~hms_core.preprocess.BatchOutput` the engines read; the
tests check it against :func:`~hms_core.preprocess.process_windows` of the same 50-s windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft

from hms_core.config import PreprocessingConfig
from hms_core.constants import CHAIN_NAMES, EEG_CHANNELS, EEG_WINDOW_SAMPLES, SFREQ
from hms_core.preprocess import BatchOutput
from hms_core.scanning.config import DistillConfig
from hms_core.signal import (
    apply_filter,
    bipolar_montage,
    bipolar_quality,
    clip_amplitude,
    design_filter,
    fill_nans,
    order_statistics,
    robust_scale,
)
from hms_core.spectral import chain_average, compute_spectrogram, log_normalize, spectral_cache

__all__ = ["BLOCK", "ChunkSignal", "WindowQuality", "prepare_chunk", "window_batch", "window_quality"]

N_EEG = len(EEG_CHANNELS)
#: Samples of one artifact block (0.25 s, the refractory block of detect_artifacts); chunks start on its multiples.
BLOCK = SFREQ // 4
#: Blocks per second (detect_artifacts' flat test looks at 1-s maxima).
PER_SEC = SFREQ // BLOCK
#: A channel is flat in a labelled segment when at least this fraction of its seconds are (detect_artifacts asks
#: 90 % of the 50-s window; a segment half flat cannot be judged).
SEGMENT_FLAT_FRACTION = 0.5
#: Samples of the blocks whose robust amplitude stands for the noisy / disconnected test.
AMP_BLOCK = SFREQ


@dataclass
class ChunkSignal:
    """One chunk of a recording after the continuous preprocessing. Sample ``i`` of every array is absolute sample
    ``start + i`` of the recording."""

    start: int
    ref: np.ndarray  # (19, n) filtered, clipped, microvolts
    ekg: np.ndarray  # (n,) filtered, clipped
    bip: np.ndarray  # (16|18, n) filtered bipolar, clipped
    nan_cum: np.ndarray  # (19, n_blocks + 1) cumulative NaN count of the raw signal, per BLOCK
    long_cum: np.ndarray  # (19, n_blocks + 1) ... of samples inside gaps longer than max_gap
    clip_cum: np.ndarray  # (16|18, n_blocks + 1) ... of clipped bipolar samples
    pop_cum: np.ndarray  # (19, n_blocks + 1) cumulative count of 0.25-s blocks holding a jump above pop_uv
    flat_sec: np.ndarray  # (19, n_blocks) 1 where the 1-s stretch starting at that block has no change > flat_uv
    amp: np.ndarray  # (19, n_amp) robust std (IQR / 1.349) of the filtered signal per 1-s block
    amp_start: int  # absolute sample of amp[:, 0]'s block

    @property
    def n(self) -> int:
        return self.ref.shape[-1]


def _run_mask(nan: np.ndarray, max_gap: int) -> np.ndarray:
    """Samples that lie in NaN runs longer than ``max_gap`` (rows of a 2-D bool array)."""
    out = np.zeros_like(nan)
    for i in np.flatnonzero(nan.any(-1)):
        d = np.diff(np.concatenate(([0], nan[i].view(np.int8), [0])))
        starts, stops = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
        for s, e in zip(starts, stops):
            if e - s > max_gap:
                out[i, s:e] = True
    return out


def _cum(a: np.ndarray) -> np.ndarray:
    out = np.zeros((*a.shape[:-1], a.shape[-1] + 1), np.int64)
    np.cumsum(a, axis=-1, out=out[..., 1:])
    return out


def _block_cum(mask: np.ndarray) -> np.ndarray:
    """Cumulative per-:data:`BLOCK` counts of a (C, n) bool mask: (C, ceil(n / BLOCK) + 1). Every window boundary
    is a multiple of BLOCK samples from a chunk start, so spans of these counts are exact."""
    c, n = mask.shape
    nb = -(-n // BLOCK)
    if not mask.any():
        return np.zeros((c, nb + 1), np.int64)
    padded = np.zeros((c, nb * BLOCK), bool)
    padded[:, :n] = mask
    return _cum(padded.reshape(c, nb, BLOCK).sum(-1))


def _quartiles(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 25th and 75th percentiles along the last axis, as ``np.percentile``'s linear method gives them, from one
    partial sort (``np.percentile`` sorts once per quantile)."""
    n = x.shape[-1]
    pos = [0.25 * (n - 1), 0.75 * (n - 1)]
    lo = [int(np.floor(p)) for p in pos]
    kth = sorted({k for i in lo for k in (i, min(i + 1, n - 1))})
    part = np.partition(x, kth, axis=-1)
    out = []
    for p, i in zip(pos, lo):
        a, b = part[..., i], part[..., min(i + 1, n - 1)]
        out.append(a + np.float32(p - i) * (b - a))
    return out[0], out[1]


def prepare_chunk(raw: np.ndarray, start: int, cfg: PreprocessingConfig) -> ChunkSignal:
    """The continuous preprocessing of ``raw`` (n, 20) in EEG_FILE_COLUMNS order (microvolts, 200 Hz, NaN where
    missing) whose first sample is absolute sample ``start`` (a multiple of :data:`BLOCK`)."""
    ecfg = cfg.eeg
    x = np.ascontiguousarray(np.asarray(raw, dtype=np.float32).T)
    x[np.isinf(x)] = np.nan
    nan = np.isnan(x[:N_EEG])
    long_gap = _run_mask(nan, round(ecfg.max_gap_s * SFREQ)) if nan.any() else np.zeros_like(nan)
    x, _ = fill_nans(x, max_gap=round(ecfg.max_gap_s * SFREQ), copy=False)
    n = x.shape[-1]
    # detect_artifacts' statistics, per block of the chunk
    absd = np.abs(np.diff(x[:N_EEG], axis=-1))
    nb = n // BLOCK
    padded = np.zeros((N_EEG, nb * BLOCK), np.float32)
    padded[:, : min(absd.shape[-1], nb * BLOCK)] = absd[:, : nb * BLOCK]
    block_max = padded.reshape(N_EEG, nb, BLOCK).max(-1)
    pop_cum = _cum(block_max > ecfg.pop_uv)
    sec = np.lib.stride_tricks.sliding_window_view(block_max, PER_SEC, axis=-1).max(-1) if nb >= PER_SEC else None
    flat_sec = np.zeros((N_EEG, nb), np.float32)
    if sec is not None:
        flat_sec[:, : sec.shape[-1]] = sec < ecfg.flat_uv
    sos = design_filter(
        ecfg.filter_low, ecfg.filter_high, float(SFREQ), ecfg.filter_order, ecfg.notch_freq, ecfg.notch_quality
    )
    y = apply_filter(x, sos).astype(np.float32, copy=False)
    # the robust amplitude of the filtered signal per 1-s block (every 4th sample, as order_statistics samples)
    a0 = (-start) % AMP_BLOCK
    na = (n - a0) // AMP_BLOCK
    blocks = y[:N_EEG, a0 : a0 + na * AMP_BLOCK : 4].reshape(N_EEG, na, AMP_BLOCK // 4)
    q25, q75 = _quartiles(blocks) if na else (np.zeros((N_EEG, 0), np.float32),) * 2
    amp = ((q75 - q25) / np.float32(1.349)).astype(np.float32)
    ref = y[:N_EEG]
    bip = bipolar_montage(ref, ecfg.include_central_chain)
    clip_amplitude(ref, ecfg.clip_uv, out=ref)
    clip_cum = _block_cum(np.abs(bip) > ecfg.clip_uv)
    clip_amplitude(bip, ecfg.clip_uv, out=bip)
    ekg = y[N_EEG]
    clip_amplitude(ekg, 10 * ecfg.clip_uv, out=ekg)
    return ChunkSignal(start, ref, ekg, bip, _block_cum(nan), _block_cum(long_gap), clip_cum, pop_cum, flat_sec, amp,
                       start + a0)  # fmt: skip


@dataclass
class WindowQuality:
    """Per-window channel flags (W, 19) bool and summaries (W,), from a chunk's block statistics."""

    missing: np.ndarray  # all NaN over the 50-s window
    long_gaps: np.ndarray  # more than max_nan_fraction of the window in long gaps
    flat_ctx: np.ndarray  # detect_artifacts' flat test over the 50-s window
    flat_seg: np.ndarray  # at least SEGMENT_FLAT_FRACTION of the labelled segment's seconds flat
    noisy_ctx: np.ndarray  # robust amplitude above noisy_uv over the context (median of 1-s blocks)
    noisy_seg: np.ndarray  # ... over the labelled segment
    n_pops: np.ndarray  # (W, 19) int: 0.25-s blocks with a jump above pop_uv in the 50-s window
    popping: np.ndarray
    popping_seg: np.ndarray  # more than max_pops pop blocks inside the labelled segment
    nan_fraction: np.ndarray  # (W, 19)
    clipped_fraction: np.ndarray  # (W, 16|18) over the context

    @property
    def ref_ok(self) -> np.ndarray:
        """Usable referential channels for the model inputs: the per-window path's ``ref_ok``."""
        return ~(self.missing | self.long_gaps | self.flat_ctx | self.noisy_ctx | self.popping)

    @property
    def bad_segment(self) -> np.ndarray:
        """Channels the labelled segment cannot be judged on (what decides 'not evaluated')."""
        return self.missing | self.long_gaps | self.flat_seg | self.noisy_seg | self.popping_seg


def _span_sum(cum: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(W, C) sums of the cumulated rows between ``a`` and ``b`` (W,) indices of ``cum`` (C, n + 1)."""
    a = np.clip(a, 0, cum.shape[-1] - 1)
    b = np.clip(b, 0, cum.shape[-1] - 1)
    return (cum[:, b] - cum[:, a]).T


def _block_median(amp: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(W, 19) median over the 1-s amplitude blocks ``[a, b)`` of each window (at least one block; 0 where the
    window holds none). Windows of one length (all of a chunk's but its edge ones) are one vectorised median."""
    n_amp = amp.shape[-1]
    a = np.maximum(np.asarray(a, np.int64), 0)
    b = np.minimum(np.maximum(np.asarray(b, np.int64), a + 1), n_amp)
    length = b - a
    out = np.zeros((len(a), amp.shape[0]), np.float32)
    for n in np.unique(length[length > 0]):
        sel = np.flatnonzero(length == n)
        view = np.lib.stride_tricks.sliding_window_view(amp, int(n), axis=-1)  # (19, n_amp - n + 1, n)
        out[sel] = np.median(view[:, a[sel]], axis=-1).T
    return out


def window_quality(chunk: ChunkSignal, ctx_start: np.ndarray, cfg: PreprocessingConfig) -> WindowQuality:
    """Flags of the windows whose context starts at absolute samples ``ctx_start`` (W,) inside ``chunk``."""
    ecfg = cfg.eeg
    w0 = ctx_start - (EEG_WINDOW_SAMPLES - ecfg.context_length) // 2 - chunk.start  # the 50-s window, chunk index
    w1 = w0 + EEG_WINDOW_SAMPLES
    seg0 = ctx_start + ecfg.segment_slice.start - chunk.start
    seg1 = seg0 + ecfg.segment_length
    c0, c1 = ctx_start - chunk.start, ctx_start - chunk.start + ecfg.context_length
    n_nan = _span_sum(chunk.nan_cum, w0 // BLOCK, w1 // BLOCK)
    missing = n_nan >= EEG_WINDOW_SAMPLES
    long_gaps = _span_sum(chunk.long_cum, w0 // BLOCK, w1 // BLOCK) / EEG_WINDOW_SAMPLES > ecfg.max_nan_fraction
    n_pops = _span_sum(chunk.pop_cum, w0 // BLOCK, w1 // BLOCK)

    def flat(a: np.ndarray, b: np.ndarray, fraction: float) -> np.ndarray:
        n_sec = max(int((b[0] - a[0]) // SFREQ), 1)
        idx = (a // BLOCK)[:, None] + PER_SEC * np.arange(n_sec)[None]
        idx = np.clip(idx, 0, chunk.flat_sec.shape[-1] - 1)
        return chunk.flat_sec[:, idx].mean(-1).T >= fraction

    amp0 = chunk.amp_start - chunk.start
    noisy_ctx = _block_median(chunk.amp, (c0 - amp0) // AMP_BLOCK, (c1 - amp0) // AMP_BLOCK) > ecfg.noisy_uv
    noisy_seg = (
        _block_median(chunk.amp, -(-(seg0 - amp0) // AMP_BLOCK), (seg1 - amp0) // AMP_BLOCK) > ecfg.noisy_uv
    )
    clipped = _span_sum(chunk.clip_cum, c0 // BLOCK, c1 // BLOCK) / ecfg.context_length
    return WindowQuality(
        missing=missing, long_gaps=long_gaps & ~missing, flat_ctx=flat(w0, w1, 0.9) & ~missing,
        flat_seg=flat(seg0, seg1, SEGMENT_FLAT_FRACTION) & ~missing, noisy_ctx=noisy_ctx, noisy_seg=noisy_seg, n_pops=n_pops,
        popping=n_pops > ecfg.max_pops,
        popping_seg=_span_sum(chunk.pop_cum, seg0 // BLOCK, seg1 // BLOCK) > ecfg.max_pops, nan_fraction=(n_nan / EEG_WINDOW_SAMPLES).astype(np.float32),
        clipped_fraction=clipped.astype(np.float32),
    )  # fmt: skip


def _gather(x: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """(W, C, length) copies of ``x[:, s : s + length]`` (x is (C, n) or (n,))."""
    view = np.lib.stride_tricks.sliding_window_view(x, length, axis=-1)
    out = view[..., starts, :]
    return np.ascontiguousarray(np.moveaxis(out, -2, 0)) if x.ndim == 2 else np.ascontiguousarray(out)


def _features(seg: np.ndarray, quality: WindowQuality, bip_ok: np.ndarray, cfg: PreprocessingConfig,
              cache: object | None = None) -> object:  # fmt: skip
    """The features table of the per-window path for bipolar segments ``seg`` (W, 16|18, n) in microvolts."""
    from hms_core.features import compute_features

    return compute_features(
        seg, SFREQ, quality=bip_ok, fmin=cfg.eeg.filter_low, fmax=cfg.eeg.filter_high, cache=cache,
        extra={"nan_fraction": quality.nan_fraction.mean(1), "flagged_fraction": (~quality.ref_ok).mean(1),
               "clipped_fraction": quality.clipped_fraction.mean(1), "pops_per_channel": quality.n_pops.mean(1)},
    )  # fmt: skip


def quality_flags(quality: WindowQuality, include_central_chain: bool) -> dict[str, np.ndarray]:
    """The window-quality flags of :func:`~hms_core.preprocess.process_windows` (``BatchOutput.window_quality``)."""
    ref_bad = ~quality.ref_ok
    bip_ok = bipolar_quality(quality.ref_ok, include_central_chain)
    weights = 1 << np.arange(N_EEG, dtype=np.int64)
    return {
        "nan_fraction": quality.nan_fraction.mean(1).astype(np.float32),
        "was_interpolated": (quality.nan_fraction > 0).any(1),
        "n_flagged_channels": ref_bad.sum(1).astype(np.int16),
        "flagged_mask": (ref_bad * weights).sum(1).astype(np.int64),
        "flagged_channels": np.array(
            [",".join(EEG_CHANNELS[j] for j in np.flatnonzero(r)) for r in ref_bad], dtype=object
        ),
        "n_flagged_bipolar": (~bip_ok).sum(1).astype(np.int16),
        "n_missing_channels": quality.missing.sum(1).astype(np.int16),
        "n_flat": quality.flat_ctx.sum(1).astype(np.int16),
        "n_noisy": quality.noisy_ctx.sum(1).astype(np.int16),
        "n_pops": quality.n_pops.sum(1).astype(np.int32),
        "clipped_fraction": quality.clipped_fraction.mean(1).astype(np.float32),
        "bad_window": quality.missing.all(1),
    }


def window_features(chunk: ChunkSignal, ctx_start: np.ndarray, quality: WindowQuality,
                    cfg: PreprocessingConfig) -> object:  # fmt: skip
    """Only the features table of :func:`window_batch` (what the prediction log keeps for drift monitoring)."""
    ecfg = cfg.eeg
    sl = slice(0, ecfg.context_length) if cfg.features.span == "context" else ecfg.segment_slice
    idx = ctx_start - chunk.start + sl.start
    seg = _gather(chunk.bip, idx, sl.stop - sl.start)
    return _features(seg, quality, bipolar_quality(quality.ref_ok, ecfg.include_central_chain), cfg)


def window_batch(
    chunk: ChunkSignal, ctx_start: np.ndarray, quality: WindowQuality, cfg: PreprocessingConfig,
    compute_features: bool | None = None, types: Sequence[str] | None = None,
) -> BatchOutput:  # fmt: skip
    """The :class:`BatchOutput` of :func:`~hms_core.preprocess.process_windows` for the windows whose stored
    context starts at absolute samples ``ctx_start``, from the chunk's continuous preprocessing: the per-window
    steps (robust scaling, segment spectrograms, features) are those of the per-window path. ``types``: only these
    spectrogram types (default: every type of ``cfg``), e.g. the ones the engines read."""
    ecfg = cfg.eeg
    idx = ctx_start - chunk.start
    ref = _gather(chunk.ref, idx, ecfg.context_length)
    bip = _gather(chunk.bip, idx, ecfg.context_length)
    ekg = _gather(chunk.ekg, idx, ecfg.context_length)
    ref_ok = quality.ref_ok
    bip_ok = bipolar_quality(ref_ok, ecfg.include_central_chain)
    spec_span = slice(0, ecfg.context_length) if cfg.spectrogram.span == "context" else ecfg.segment_slice
    seg = bip[:, : 4 * len(CHAIN_NAMES), spec_span]
    types = list(cfg.spectrogram.types if types is None else types)
    want_features = compute_features if compute_features is not None else cfg.features.enabled
    cache = spectral_cache(seg, cfg.spectrogram) if types or want_features else None
    feats = None
    if want_features:
        sl = slice(0, ecfg.context_length) if cfg.features.span == "context" else ecfg.segment_slice
        same = sl == spec_span and bip.shape[1] == seg.shape[1]
        feats = _features(seg if same else bip[..., sl], quality, bip_ok, cfg, cache if same else None)
    specs = {}
    for name in types:
        power, _ = compute_spectrogram(name, seg, cfg.spectrogram, SFREQ, cache)
        specs[name] = np.nan_to_num(log_normalize(chain_average(power, bip_ok)))
        del power
    del cache
    if ecfg.scaling == "robust":
        top = float(np.finfo(np.dtype(ecfg.dtype)).max)
        stats = order_statistics(ref, (25, 50, 75), stride=4)
        robust_scale(ref, eps=max(1e-3, 4 * ecfg.clip_uv / top), out=ref, quantiles=stats.percentiles())
        robust_scale(bip, eps=max(1e-3, 4 * ecfg.clip_uv / top), out=bip)
        robust_scale(ekg, eps=max(1e-3, 40 * ecfg.clip_uv / top), out=ekg)
    wq = quality_flags(quality, ecfg.include_central_chain)
    return BatchOutput(ref, bip, ekg, bip_ok, ref_ok, specs, feats, wq)


# --- the distilled model's input and the hemisphere spectrogram -----------------------------------------------
@dataclass
class FramePower:
    """Hann-window PSD of the chunk's bipolar derivations on the absolute frame grid: frame ``m`` is centred at
    sample ``first * hop + m * hop + hop // 2`` of the recording."""

    first: int
    power: np.ndarray  # (16|18, M, F_all) float32, uV^2/Hz
    freqs: np.ndarray  # (F_all,)
    valid: np.ndarray  # (M,) bool: the frame lies inside the chunk


def frame_power(chunk: ChunkSignal, dcfg: DistillConfig, lo: int, hi: int, fmax: float,
                workers: int = 1) -> FramePower:  # fmt: skip
    """PSD frames of ``dcfg`` (bins up to ``fmax`` Hz) for every grid frame whose centre lies in absolute samples
    ``[lo, hi)``; frames reaching outside the chunk are zero-padded and marked not ``valid``. One float32 real FFT
    of all frames of the chunk (``workers`` threads)."""
    hop, win = dcfg.hop, dcfg.window_size
    first = -(-(lo - hop // 2) // hop)
    last = (hi - hop // 2 - 1) // hop
    m = max(last - first + 1, 0)
    begin = first * hop + hop // 2 - win // 2 - chunk.start  # chunk index of frame 0's first sample
    pad_l = max(-begin, 0)
    end = begin + (m - 1) * hop + win if m else begin
    pad_r = max(end - chunk.n, 0)
    x = chunk.bip[:, max(begin, 0) : min(end, chunk.n)]
    if pad_l or pad_r:
        x = np.pad(x, ((0, 0), (pad_l, pad_r)))
    freqs = np.fft.rfftfreq(win, 1.0 / SFREQ)
    n_bins = int(np.searchsorted(freqs, fmax + 1e-9))
    window = _hann_window(win)
    power = np.zeros((x.shape[0], m, n_bins), np.float32)
    if m:
        frames = np.lib.stride_tricks.sliding_window_view(x, win, axis=-1)[:, ::hop][:, :m]  # (D, M, win) view
        step = max(1, (1 << 22) // (m * win))  # derivations per FFT call: ~16 MB of frames at a time
        for d0 in range(0, x.shape[0], step):
            spec = scipy.fft.rfft(frames[d0 : d0 + step] * window, axis=-1, workers=workers)[..., :n_bins]
            np.square(spec.real, out=power[d0 : d0 + step])
            power[d0 : d0 + step] += np.square(spec.imag)
        power *= np.float32(2.0 / (SFREQ * float(np.square(window, dtype=np.float64).sum())))
    centres = first * hop + hop // 2 + np.arange(m) * hop
    valid = (centres - win // 2 >= chunk.start) & (centres + win // 2 <= chunk.start + chunk.n)
    return FramePower(first, power, freqs[:n_bins], valid)


@lru_cache(maxsize=4)
def _hann_window(n: int) -> np.ndarray:
    """The periodic Hann window (``torch.hann_window(n, periodic=True)``, ``scipy.signal.get_window('hann', n)``)."""
    w = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)
    w.setflags(write=False)
    return w


@dataclass
class DistillFrames:
    """The distilled model's band of a chunk's frames: per derivation (16, M, F) and, for windows whose 16
    derivations are all usable (nearly all of them), the log power the model reads computed once: per chain
    (4, M, F) or, with ``distill.spatial: derivations``, per derivation (16, M, F)."""

    first: int
    power: np.ndarray  # (16, M, F) float32
    log_chains: np.ndarray  # (4, M, F) float32: log10(mean of the chain's 4 derivations + 1e-6)
    log_derivations: np.ndarray | None = None  # (16, M, F) float32: log10(power + 1e-6), spatial: derivations


def distill_frames(fp: FramePower, dcfg: DistillConfig) -> DistillFrames:
    band = (fp.freqs >= dcfg.freq_min - 1e-9) & (fp.freqs <= dcfg.freq_max + 1e-9)
    p = np.ascontiguousarray(fp.power[: 4 * len(CHAIN_NAMES)][:, :, band])  # (16, M, F)
    chains = p.reshape(len(CHAIN_NAMES), 4, *p.shape[1:]).mean(1)
    per_der = np.log10(p + np.float32(1e-6), dtype=np.float32) if dcfg.spatial == "derivations" else None
    return DistillFrames(fp.first, p, np.log10(chains + np.float32(1e-6), dtype=np.float32), per_der)


def distill_context_frames(dcfg: DistillConfig) -> int:
    """STFT frames the distilled model reads on each side of the segment (``distill.context_s``)."""
    return round(dcfg.context_s * SFREQ) // dcfg.hop


def distill_n_frames(dcfg: DistillConfig, segment_length: int) -> int:
    """Frames of one distilled-model input: the segment's plus ``distill.context_s`` of context on either side."""
    return segment_length // dcfg.hop + 2 * distill_context_frames(dcfg)


def distill_inputs(fp: FramePower | DistillFrames, seg_start: np.ndarray, n_frames: int, bip_ok: np.ndarray,
                   dcfg: DistillConfig) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The distilled model's inputs for windows whose segment starts at absolute samples ``seg_start``:
    ``spec`` (W, R, F, n_frames) log10 PSD standardised per window (the per-window ``log_normalize`` over the
    window's own frames) and ``scalars`` (W, 2): that log power's mean and std. R = 4 chain averages
    (``distill.spatial: chains``) or the 16 derivations in BIPOLAR_PAIRS order (``derivations``). The frames start
    :func:`distill_context_frames` hops before the segment (``n_frames``: :func:`distill_n_frames`). A chain
    averages its usable derivations (``bip_ok``), and an unusable derivation reads its chain's average; windows with
    all 16 usable read the shared log power of :func:`distill_frames`."""
    df = fp if isinstance(fp, DistillFrames) else distill_frames(fp, dcfg)
    n_ch = len(CHAIN_NAMES)
    per_der = dcfg.spatial == "derivations"
    if per_der and df.log_derivations is None:
        raise ValueError(
            "distill_inputs: spatial 'derivations' needs the DistillFrames of the same distill config"
        )
    first = np.asarray(seg_start) // dcfg.hop - df.first - distill_context_frames(dcfg)
    idx = first[:, None] + np.arange(n_frames)[None]  # (W, T)
    w_ok = np.asarray(bip_ok)[:, : 4 * n_ch]
    full = w_ok.all(1)
    shared = df.log_derivations if per_der else df.log_chains
    lp = np.empty((len(idx), shared.shape[0], df.power.shape[-1], n_frames), np.float32)  # (W, R, F, T)
    if full.any():
        lp[full] = shared[:, idx[full]].transpose(1, 0, 3, 2)
    part = np.flatnonzero(~full)
    if len(part):
        g = df.power[:, idx[part]]  # (16, w, T, F)
        w = w_ok[part].reshape(len(part), n_ch, 4).astype(np.float32)
        g = g.reshape(n_ch, 4, *g.shape[1:])
        num = np.einsum("cdwtf,wcd->wcft", g, w)
        chains = np.log10(num / np.maximum(w.sum(-1), 1.0)[..., None, None] + np.float32(1e-6), dtype=np.float32)
        if per_der:
            sub = shared[:, idx[part]].transpose(1, 0, 3, 2)  # (w, 16, F, T)
            bad = ~w_ok[part]
            sub[bad] = np.repeat(chains, 4, axis=1)[bad]
            lp[part] = sub
        else:
            lp[part] = chains
    mean = lp.mean(axis=(1, 2, 3), keepdims=True)
    std = lp.std(axis=(1, 2, 3), keepdims=True)
    lp -= mean
    lp /= np.maximum(std, np.float32(1e-6))
    return lp, np.concatenate([mean.reshape(-1, 1), std.reshape(-1, 1)], 1).astype(np.float32)


def hemisphere_columns(fp: FramePower, freq_max: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame left / right mean PSD (2, F, M) of the valid frames over 0.5 - ``freq_max`` Hz, their centres' frame
    indices and the frequency axis."""
    band = (fp.freqs >= 0.5 - 1e-9) & (fp.freqs <= freq_max + 1e-9)
    p = fp.power[: 4 * len(CHAIN_NAMES)][:, :, band]  # (16, M, F)
    names = list(CHAIN_NAMES)
    rows = {c: slice(4 * names.index(c), 4 * names.index(c) + 4) for c in names}
    left = np.concatenate([p[rows["LL"]], p[rows["LP"]]]).mean(0)
    right = np.concatenate([p[rows["RL"]], p[rows["RP"]]]).mean(0)
    return np.stack([left.T, right.T]), np.flatnonzero(fp.valid), fp.freqs[band]


def segment_start(ctx_start: np.ndarray, cfg: PreprocessingConfig) -> np.ndarray:
    return ctx_start + cfg.eeg.segment_slice.start


def context_start(seg_start: np.ndarray, cfg: PreprocessingConfig) -> np.ndarray:
    return seg_start - cfg.eeg.segment_slice.start


def window_span(cfg: PreprocessingConfig) -> tuple[int, int]:
    """Samples before and after a segment start that its 50-s window covers."""
    before = cfg.eeg.segment_slice.start + (EEG_WINDOW_SAMPLES - cfg.eeg.context_length) // 2
    return before, EEG_WINDOW_SAMPLES - before
