"""Time-frequency representations of EEG: STFT, multitaper, Morlet CWT and mel, batched.

Each transform maps ``(..., n_times)`` float arrays to power ``(..., n_freqs, n_frames)`` plus its frequency axis
(Hz), and is registered in :data:`SPECTROGRAM_REGISTRY` so the pipeline, the manifest and the tests enumerate the
same set. Everything runs in numpy + scipy.fft in float32 (no torch: serving and scanning run where torch is not
installed): the STFT, mel and Welch frames are strided views (``sliding_window_view``) of the reflect-padded
signal, windowed and batch-``rfft``-ed in one call; the multitaper PSD is one BLAS product with all tapers' DFT
rows; the CWT is PyWavelets' complex Morlet, computed band-limited with batched ``scipy.fft.ifft``. scipy.fft's
``workers`` default (1, or what ``scipy.fft.set_workers`` sets in the calling thread) applies to every FFT.
All transforms share one frame grid: ``n_frames = 1 + n_times // hop`` with ``hop = window_size - overlap``,
frames centred at ``k * hop / sfreq`` seconds. Every power is a sum of squares with non-negative weights, so it is
never negative, for any input (spikes, steps, silence); a :class:`SpectralCache` lets the STFT, the mel spectrogram
and the features' Welch PSD of one signal share its Hann-window FFT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft as sfft
from numpy.lib.stride_tricks import sliding_window_view

from hms_core.checks import check_option, invalid_value
from hms_core.config import SpectrogramConfig
from hms_core.constants import CHAIN_NAMES, SFREQ

__all__ = [
    "SPECTROGRAM_REGISTRY",
    "SpectralCache",
    "SpectrogramAxes",
    "chain_average",
    "compute_spectrogram",
    "kaggle_spectrogram_image",
    "log_normalize",
    "mel_power",
    "morlet_power",
    "morlet_power_reference",
    "multitaper_power",
    "register_spectrogram",
    "spectral_cache",
    "spectrogram_axes",
    "stft_power",
]

SpectrogramFn = Callable[..., tuple[np.ndarray, np.ndarray]]
#: name -> function(x (..., n_times), cfg, sfreq, cache=None) -> (power (..., F, T), freqs (F,))
SPECTROGRAM_REGISTRY: dict[str, SpectrogramFn] = {}


def register_spectrogram(name: str) -> Callable[[SpectrogramFn], SpectrogramFn]:
    def deco(fn: SpectrogramFn) -> SpectrogramFn:
        SPECTROGRAM_REGISTRY[name] = fn
        return fn

    return deco


def _as_float32(x: object) -> np.ndarray:
    """``x`` (any array-like, a CPU tensor included) as a float32 array, without a copy when it already is one."""
    return np.asarray(x, dtype=np.float32)


def _hop(cfg: SpectrogramConfig) -> int:
    return cfg.window_size - cfg.overlap


def _band(freqs: np.ndarray, fmin: float, fmax: float) -> np.ndarray:
    return np.flatnonzero((freqs >= fmin - 1e-9) & (freqs <= fmax + 1e-9))


def _frames(x: np.ndarray, width: int, hop: int, nfft: int) -> np.ndarray:
    """(..., n_frames, width) read-only strided view of the frames :func:`torch.stft` windows with ``center=True``
    (reflect padding): frame ``k`` holds samples ``k * hop - lead ... k * hop - lead + width - 1``, with ``lead =
    nfft // 2 - (nfft - width) // 2`` (the window centred in an ``nfft``-sample frame), ``n_frames = 1 + n_times //
    hop``. Zero padding a windowed frame to ``nfft`` points moves no sample, so its spectrum's power is the
    same."""
    n_times = x.shape[-1]
    n_frames = 1 + (n_times + 2 * (nfft // 2) - nfft) // hop
    lead = nfft // 2 - (nfft - width) // 2
    tail = max(0, (n_frames - 1) * hop - lead + width - n_times)
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(lead, tail)], mode="reflect")
    return sliding_window_view(padded, width, axis=-1)[..., : (n_frames - 1) * hop + 1 : hop, :]


def _stft_frames_power(x: np.ndarray, window: np.ndarray, nfft: int, hop: int, chunk: int = 64) -> np.ndarray:
    """``|STFT|^2`` frame by frame: (..., n_frames, nfft // 2 + 1) float32, frames-major (the transforms transpose
    their band to (..., F, T) at the end). Rows go through in chunks of ``chunk`` signals (the windowed frames and
    their spectrum stay in cache)."""
    x = _as_float32(x)
    lead, n_times = x.shape[:-1], x.shape[-1]
    flat = x.reshape(-1, n_times)
    width = window.shape[0]
    frames = _frames(flat, width, hop, nfft)
    n_frames = frames.shape[1]
    out = np.empty((flat.shape[0], n_frames, nfft // 2 + 1), np.float32)
    # windowed frames written straight into a zero-padded buffer (no padding copy inside the FFT)
    buf = np.zeros((min(chunk, flat.shape[0]), n_frames, max(nfft, width)), np.float32)
    for r0 in range(0, flat.shape[0], chunk):
        part = buf[: min(chunk, flat.shape[0] - r0)]
        np.multiply(frames[r0 : r0 + chunk], window, out=part[..., :width])
        _power(sfft.rfft(part, nfft, axis=-1), out[r0 : r0 + chunk])
    return out.reshape(*lead, *out.shape[1:])


def _power(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``|z|^2`` of a complex64 array as float32 (re^2 + im^2 on a float view, no complex abs)."""
    v = z.view(np.float32).reshape(*z.shape, 2)
    if out is None:
        out = np.empty(z.shape, np.float32)
    np.multiply(v[..., 0], v[..., 0], out=out)
    out += np.square(v[..., 1])
    return out


def _to_freq_major(power: np.ndarray) -> np.ndarray:
    """(..., T, F) array -> contiguous (..., F, T) array."""
    return np.ascontiguousarray(np.swapaxes(power, -1, -2))


@lru_cache(maxsize=8)
def _hann(n: int) -> np.ndarray:
    """Periodic Hann window (``torch.hann_window(n, periodic=True)``), float32, read-only."""
    w = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)
    w.setflags(write=False)
    return w


class SpectralCache:
    """Hann-window frame power of one signal, shared by the transforms that use it (STFT, mel, Welch features).

    The power is computed once per (window size, hop) at ``hann_nfft`` points; a transform that asks for ``nfft``
    points where ``hann_nfft`` is a multiple of it takes every (hann_nfft / nfft)-th bin: zero padding a frame to
    more points samples the same spectrum more finely, so those bins are exactly the ones it would compute. Pass
    the same array object to every transform (``cache=``); another array is computed as usual.
    """

    def __init__(self, x: np.ndarray, hann_nfft: int | None = None) -> None:
        self.x = x
        self.hann_nfft = hann_nfft
        self._power: dict[tuple[int, int], tuple[int, np.ndarray]] = {}

    def holds(self, x: object) -> bool:
        return x is self.x

    def hann_power(self, window_size: int, hop: int, nfft: int) -> np.ndarray:
        """One-sided ``|STFT|^2`` (..., n_frames, nfft // 2 + 1) of the cached signal with a periodic Hann window."""
        key = (window_size, hop)
        if key in self._power and self._power[key][0] % nfft == 0:
            n, power = self._power[key]
        else:
            n = self.hann_nfft if self.hann_nfft and self.hann_nfft % nfft == 0 else nfft
            power = _stft_frames_power(self.x, _hann(window_size), n, hop)
            self._power[key] = (n, power)
        return power[..., :: n // nfft]


def _band_slice(nfft: int, sfreq: float, fmin: float, fmax: float) -> tuple[np.ndarray, slice]:
    """The rfft frequencies of ``nfft`` points and the slice of them inside [fmin, fmax]."""
    freqs = np.fft.rfftfreq(nfft, 1.0 / sfreq)
    idx = _band(freqs, fmin, fmax)
    return freqs, slice(int(idx[0]), int(idx[-1]) + 1) if idx.size else slice(0, 0)


def _windowed_psd(
    x: np.ndarray,
    window: np.ndarray,
    sfreq: float,
    nfft: int,
    hop: int,
    fmin: float,
    fmax: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One-sided PSD (uV^2/Hz) of the sliding frames with ``window`` (window_size,), in [fmin, fmax]."""
    freqs, sl = _band_slice(nfft, sfreq, fmin, fmax)
    scale = np.float32(2.0 / (sfreq * float(np.square(window, dtype=np.float64).sum())))
    power = _stft_frames_power(x, window, nfft, hop)[..., sl]
    power *= scale
    return _to_freq_major(power), freqs[sl]


def stft_power(
    x: np.ndarray,
    sfreq: float = SFREQ,
    window_size: int = 256,
    hop: int = 128,
    nfft: int = 512,
    fmin: float = 0.5,
    fmax: float = 50.0,
    cache: SpectralCache | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Hann-window STFT power spectral density (uV^2/Hz, one-sided) restricted to ``[fmin, fmax]``.

    With a ``cache`` that holds ``x`` the frame power is taken from it (shared with the mel spectrogram)."""
    if cache is None or not cache.holds(x):
        return _windowed_psd(x, _hann(window_size), sfreq, nfft, hop, fmin, fmax)
    freqs, sl = _band_slice(nfft, sfreq, fmin, fmax)
    scale = np.float32(2.0 / (sfreq * float(np.square(_hann(window_size), dtype=np.float64).sum())))
    return _to_freq_major(cache.hann_power(window_size, hop, nfft)[..., sl] * scale), freqs[sl]


@lru_cache(maxsize=8)
def _dpss(n: int, k: int) -> np.ndarray:
    """(k, n) float64 DPSS tapers with time-half-bandwidth (k + 1) / 2."""
    from scipy.signal.windows import dpss

    return np.atleast_2d(dpss(n, NW=(k + 1) / 2, Kmax=k))


def multitaper_power(
    x: np.ndarray,
    sfreq: float = SFREQ,
    window_size: int = 256,
    hop: int = 128,
    nfft: int = 512,
    fmin: float = 0.5,
    fmax: float = 50.0,
    n_tapers: int = 3,
    chunk: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """Sliding-window multitaper PSD: mean over ``n_tapers`` DPSS tapers (time-half-bandwidth (K+1)/2).

    The frames are those of the STFT (centred, reflect-padded); the tapered DFTs of only the bins in
    ``[fmin, fmax]`` are one matrix product with all tapers at once (each taper's PSD scale folded in), which is
    cheaper than a full FFT per taper when the band is a fraction of the spectrum. ``chunk`` frames at a time."""
    freqs, sl = _band_slice(nfft, sfreq, fmin, fmax)
    n_bins = sl.stop - sl.start
    basis = _tapered_dft(window_size, nfft, n_tapers, sl.start, sl.stop, float(sfreq))
    x = _as_float32(x)
    lead, n_times = x.shape[:-1], x.shape[-1]
    frames = _frames(x.reshape(-1, n_times), window_size, hop, nfft)  # (N, T, window_size) view
    n, t = frames.shape[:2]
    flat = frames.reshape(n * t, window_size)  # one copy of the frames (they overlap in the view)
    power = np.empty((n * t, n_bins), np.float32)
    for r0 in range(0, n * t, chunk):
        coef = flat[r0 : r0 + chunk] @ basis  # (rows, 2 * K * F): re and im of every tapered bin, scaled
        np.square(coef, out=coef)
        power[r0 : r0 + chunk] = coef.reshape(-1, 2 * n_tapers, n_bins).sum(1)
    return _to_freq_major(power.reshape(*lead, t, n_bins)), freqs[sl]


@lru_cache(maxsize=8)
def _tapered_dft(window_size: int, nfft: int, n_tapers: int, k0: int, k1: int, sfreq: float) -> np.ndarray:
    """(window_size, 2 * K * (k1 - k0)): columns [cos | -sin] x taper x bin k0..k1-1 of an nfft-point DFT, times
    each DPSS taper and the square root of its PSD scale 2 / (sfreq * sum(taper^2) * K)."""
    tapers = _dpss(window_size, n_tapers)
    phase = 2 * np.pi * np.arange(window_size)[:, None] * np.arange(k0, k1)[None] / nfft
    scaled = tapers * np.sqrt(2.0 / (sfreq * np.square(tapers).sum(1, keepdims=True) * n_tapers))  # (K, W)
    cols = [trig(phase) * sign * w[:, None] for trig, sign in ((np.cos, 1.0), (np.sin, -1.0)) for w in scaled]
    basis = np.ascontiguousarray(np.concatenate(cols, 1).astype(np.float32))
    basis.setflags(write=False)
    return basis


#: log2 of the number of points the wavelet is sampled at for ``pywt.cwt`` (its default, 12, is too coarse
#: for the 0.5-1 Hz scales at 200 Hz; 16 agrees with 18 to <1% per frequency row). Used by the reference path.
MORLET_PRECISION = 16
#: The Gaussian frequency response of a complex Morlet is kept within this many standard deviations
#: (amplitude beyond it < 4e-5 of the peak).
_MORLET_SIGMAS = 4.5
#: Largest product of a scale's response width (standard deviation, cycles / sample) and its sampling step of the
#: power ``|c|^2`` (samples). At 0.075 the frame means agree with the full-rate ones to about 0.5 % per row.
_MORLET_STEP_WIDTH = 0.075


def _cmor_params(wavelet: str) -> tuple[float, float]:
    """Bandwidth B and centre frequency C of a PyWavelets complex Morlet ``'cmorB-C'``."""
    import pywt

    try:
        w = pywt.ContinuousWavelet(wavelet)
    except ValueError:
        w = None
    if w is None or w.family_name != "Complex Morlet wavelets":
        raise invalid_value("wavelet", wavelet, "complex Morlet wavelets such as 'cmor1.5-1.0'")
    return float(w.bandwidth_frequency), float(w.center_frequency)


def _frame_pool(n_frames: int, hop: int, n_times: int) -> np.ndarray:
    """(n_times, n_frames) weights: frame k averages samples [k*hop - hop/2, k*hop + hop/2), edge-replicated."""
    pool = np.zeros((n_times, n_frames), np.float64)
    for k in range(n_frames):
        t = np.clip(np.arange(k * hop - hop // 2, k * hop - hop // 2 + hop), 0, n_times - 1)
        np.add.at(pool[:, k], t, 1.0 / hop)
    return pool


def _interval_weights(u0: float, u1: float, n_grid: int) -> np.ndarray:
    """Non-negative weights over samples ``0 .. n_grid-1`` of a uniform grid (unit spacing) that integrate a smooth
    function over ``[u0, u1]``: composite Simpson (3/8 rule for an odd panel count) between the grid points inside,
    linear interpolation on the partial panels at the ends."""
    w = np.zeros(n_grid)
    i0, i1 = int(np.ceil(u0 - 1e-9)), int(np.floor(u1 + 1e-9))
    if i1 < i0:  # inside one panel
        f = int(np.floor(u0))
        a, b = u0 - f, u1 - f
        w[f] += (b - a) - (b * b - a * a) / 2
        w[f + 1] += (b * b - a * a) / 2
        return w
    if u0 < i0 - 1e-9:
        a = u0 - (i0 - 1)
        w[i0 - 1] += (1 - a) ** 2 / 2
        w[i0] += (1 - a * a) / 2
    if u1 > i1 + 1e-9:
        b = u1 - i1
        w[i1] += b - b * b / 2
        w[i1 + 1] += b * b / 2
    panels = i1 - i0
    if panels == 1:
        w[i0 : i0 + 2] += 0.5
    elif panels >= 2:
        even = panels if panels % 2 == 0 else panels - 3
        for s in range(i0, i0 + even, 2):
            w[s : s + 3] += (1 / 3, 4 / 3, 1 / 3)
        if panels % 2:
            w[i0 + even : i0 + even + 4] += (3 / 8, 9 / 8, 9 / 8, 3 / 8)
    return w


@dataclass(frozen=True)
class _MorletGroup:
    """Scales that share an FFT length and a sampling step of their power."""

    n_fft: int
    step: int  # power sampled every ``step`` samples, at t = offset + j * step
    rows: np.ndarray  # (S,) indices into the frequency axis
    first: np.ndarray  # (S,) first FFT bin k0 of each scale's band (its K bins k0 .. k0 + K - 1 are gathered)
    weights: np.ndarray  # (S, 2 K) each scale's real response (1/n_fft included) on those bins, each value twice
    # (for the interleaved re, im of the spectrum), 0 past its band
    # K: the widest band of the group, at most m = n_fft // step (the grid's points past it are zero)
    pool: np.ndarray  # (2 * n_grid, n_frames): weights of the interleaved (re^2, im^2) samples of c
    span: tuple[int, int]  # FFT bins [lo, hi) that hold every band of the group
    start: np.ndarray  # (2 (hi - lo), 2 S): interleaved (re, im) spectrum[lo:hi] -> (re, im) of c(0)
    end: np.ndarray | None  # (hi - lo, S) complex: c(n_times - 1) = spectrum[lo:hi] @ end; None when unused
    edge_pool: np.ndarray  # (1 or 2, n_frames): weights of |c(0)|^2 (and |c(n_times - 1)|^2), replicated edges


@dataclass(frozen=True)
class _MorletPlan:
    n_frames: int
    shifts: dict[int, np.ndarray]  # n_fft -> (n_fft // 2 + 1,) phase ramp that moves the grid to ``offset``
    groups: tuple[_MorletGroup, ...]


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


@lru_cache(maxsize=16)
def _morlet_plan(n_times: int, freqs: tuple[float, ...], sfreq: float, hop: int, wavelet: str) -> _MorletPlan:
    import pywt

    bw, cf = _cmor_params(wavelet)
    f = np.asarray(freqs, dtype=np.float64)
    if f.size == 0 or not np.all((f > 0) & (f < sfreq / 2)):
        raise invalid_value("freqs", freqs, f"frequencies in (0, {sfreq / 2:g}) Hz (below Nyquist)")
    scales = pywt.frequency2scale(wavelet, f / sfreq)  # in samples
    sig_f = 1.0 / (np.pi * scales * np.sqrt(2.0 * bw))  # std of each Gaussian response, cycles / sample
    # the wavelet is negligible beyond `half` samples from its centre: zero padding of `half` samples makes the
    # circular convolution linear on [0, n_times) (pywt's zero-padded edges)
    half = np.ceil(_MORLET_SIGMAS * scales * np.sqrt(bw / 2.0))
    # frame k integrates the power over [k*hop - hop/2 - 1/2, k*hop + hop/2 - 1/2]: a grid with a step dividing
    # hop/2 that passes through -1/2 has every frame boundary on it and an even number of panels per frame
    max_step = 1
    while hop % (4 * max_step) == 0:
        max_step *= 2
    offset = -0.5 - (hop // 2) % max_step
    steps = np.ones(len(f), dtype=int)
    for i, s in enumerate(sig_f):
        while 2 * steps[i] <= max_step and 2 * steps[i] * s <= _MORLET_STEP_WIDTH:
            steps[i] *= 2
    # FFT lengths: 2^a, 1.25 * 2^a or 1.5 * 2^a (multiples of max_step, cheap for pocketfft), long enough for the
    # padding and for the grid, which runs from -1/2 to two steps past n_times - 1/2
    need = n_times + np.maximum(half, 2 * steps) + 1
    sizes = np.array(sorted({int(2**a * r) for a in range(4, 31) for r in (1.0, 1.25, 1.5)}))
    sizes = sizes[sizes % max_step == 0]
    n_ffts = sizes[np.searchsorted(sizes, need)]
    fc = cf / scales  # centre frequencies, cycles / sample
    k0s = np.maximum(np.floor((fc - _MORLET_SIGMAS * sig_f) * n_ffts), 0).astype(int)
    k1s = np.minimum(np.ceil((fc + _MORLET_SIGMAS * sig_f) * n_ffts) + 1, n_ffts // 2 + 1).astype(int)
    n_frames = 1 + n_times // hop
    starts = np.arange(n_frames) * hop - hop // 2
    end_used = bool(starts[-1] + hop > n_times)
    groups = []
    for n_fft, step in sorted({(int(a), int(b)) for a, b in zip(n_ffts, steps)}):
        idx = np.flatnonzero((n_ffts == n_fft) & (steps == step))
        m, n_bins = n_fft // step, n_fft // 2 + 1
        # pywt integrates the wavelet and differentiates the convolution: a one-sample box, sinc(nu) in frequency
        nu = np.arange(n_bins) / n_fft
        lo, hi = int(k0s[idx].min()), int(k1s[idx].max())
        width = int((k1s[idx] - k0s[idx]).max())
        # the step rule (step * std <= _MORLET_STEP_WIDTH for step > 1; m = n_fft for step 1) keeps every band
        # (9 std wide) inside the m-point grid, so its bins map one to one onto the grid's spectrum
        if width > m:
            raise RuntimeError(f"Morlet plan: a band of {width} bins exceeds its {m}-point grid (n_fft {n_fft}, "
                               f"step {step}); lower _MORLET_STEP_WIDTH")  # fmt: skip
        first = np.minimum(k0s[idx], n_bins - width)  # the K-bin window stays inside the spectrum
        weights = np.zeros((len(idx), width))
        start = np.zeros((hi - lo, len(idx)))  # c(0) = spectrum[lo:hi] @ start
        for j, i in enumerate(idx):
            b = np.arange(k0s[i], k1s[i])
            resp = np.sqrt(scales[i]) * np.exp(-(np.pi**2) * bw * scales[i] ** 2 * (nu[b] - fc[i]) ** 2)
            resp *= np.sinc(nu[b]) / n_fft
            weights[j, b - first[j]] = resp
            start[b - lo, j] = resp
        # (re, im) of c(0) from the interleaved (re, im) spectrum: re = Re(S) @ start, im = Im(S) @ start
        start_ri = np.zeros((2 * (hi - lo), 2 * len(idx)))
        start_ri[0::2, : len(idx)] = start
        start_ri[1::2, len(idx) :] = start
        end = start * np.exp(2j * np.pi * np.arange(lo, hi) * (n_times - 1) / n_fft)[:, None]
        n_grid = int(np.floor((n_times - 0.5 - offset) / step)) + 2
        pool = np.zeros((n_grid, n_frames))
        edge = np.zeros((2, n_frames))
        for k, a in enumerate(starts):
            t0, t1 = max(a, 0) - 0.5, min(a + hop, n_times) - 0.5
            pool[:, k] = _interval_weights((t0 - offset) / step, (t1 - offset) / step, n_grid) * step / hop
            edge[:, k] = max(0, -a) / hop, max(0, a + hop - n_times) / hop
        groups.append(
            _MorletGroup(
                n_fft, step, _frozen(idx), _frozen(first),
                _frozen(np.repeat(weights, 2, axis=1).astype(np.float32)),
                _frozen(np.repeat(pool, 2, axis=0).astype(np.float32)), (lo, hi),
                _frozen(start_ri.astype(np.float32)),
                _frozen(end.astype(np.complex64)) if end_used else None,
                _frozen(edge[: 2 if end_used else 1].astype(np.float32)),
            )
        )  # fmt: skip
    shifts = {
        int(n): _frozen(np.exp(2j * np.pi * np.arange(n // 2 + 1) * offset / n).astype(np.complex64))
        for n in np.unique(n_ffts)
    }
    return _MorletPlan(n_frames, shifts, tuple(groups))


def _morlet_chunk(x: np.ndarray, plan: _MorletPlan, out: np.ndarray) -> None:
    """Frame-mean CWT power of the rows of ``x`` (R, n_times) float32 into ``out`` (R, F, T)."""
    r = x.shape[0]
    spectra = {n: sfft.rfft(x, n, axis=-1) for n in plan.shifts}  # complex64
    shifted = {n: spectra[n] * s for n, s in plan.shifts.items()}  # the spectra moved onto the grid
    for g in plan.groups:
        m, n_scales, width = g.n_fft // g.step, len(g.rows), g.weights.shape[1] // 2
        sp = shifted[g.n_fft].view(np.float32)  # interleaved (re, im): a real multiply per value
        # each scale's band (K bins from k0) times its response, written straight into the grid's spectrum; the
        # window's first bin lands on grid frequency 0: a phase ramp over the grid that |c|^2 does not see
        z = np.empty((r, n_scales, m), np.complex64)
        z[..., width:] = 0.0
        zf = z.view(np.float32)
        for s, (k0, w) in enumerate(zip(g.first, g.weights)):
            np.multiply(sp[:, 2 * k0 : 2 * (k0 + width)], w, out=zf[:, s, : 2 * width])
        # c sampled every `step` samples (m points): one batched inverse FFT, in place
        c = sfft.ifft(z, axis=-1, norm="forward", overwrite_x=True)
        n_grid = g.pool.shape[0] // 2
        c2 = c.reshape(r * n_scales, m).view(np.float32)[:, : 2 * n_grid]
        np.square(c2, out=c2)
        power = (c2 @ g.pool).reshape(r, n_scales, -1)
        # the replicated edge samples |c(0)|^2 (and |c(n_times - 1)|^2), exactly
        lo, hi = g.span
        band = spectra[g.n_fft][:, lo:hi]
        e0 = np.square(np.ascontiguousarray(band).view(np.float32) @ g.start)
        edges = (e0[:, :n_scales] + e0[:, n_scales:])[..., None]  # (R, S, 1)
        if g.end is not None:
            edges = np.concatenate([edges, _power(band @ g.end)[..., None]], -1)
        power += edges @ g.edge_pool
        out[:, g.rows] = power


def morlet_power(
    x: np.ndarray,
    sfreq: float = SFREQ,
    freqs: np.ndarray | None = None,
    hop: int = 128,
    wavelet: str = "cmor1.5-1.0",
    chunk: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Complex-Morlet CWT power averaged over ``hop``-sample frames on the STFT grid (``(..., F, T)``).

    The transform is PyWavelets' ``cmorB-C`` CWT (same wavelet, scales from ``pywt.frequency2scale``, same scaling,
    zero padding at the edges), so it matches ``pywt.cwt`` to about 2 % per frequency row; see
    :func:`morlet_power_reference`. It is computed band by band in the frequency domain: each scale's Gaussian
    response keeps only the FFT bins within 4.5 standard deviations, and its coefficients ``c`` are formed on a
    grid of step ``D`` (a power of two up to hop/2, the coarser the narrower the response). The frame means
    integrate ``|c|^2`` over each frame with Simpson weights on that grid (plus the replicated edge samples), so
    the power is a sum of squares with non-negative weights: never negative, whatever the input (a spike, a step,
    silence). The work per scale is proportional to its bandwidth. ``freqs`` defaults to 64 log-spaced 0.5-50 Hz.
    """
    x = np.asarray(x, dtype=np.float32)
    if freqs is None:
        freqs = np.geomspace(0.5, 50.0, 64)
    freqs = np.asarray(freqs, dtype=np.float64)
    lead, n_times = x.shape[:-1], x.shape[-1]
    plan = _morlet_plan(n_times, tuple(float(f) for f in freqs), float(sfreq), int(hop), wavelet)
    flat = x.reshape(-1, n_times)
    out = np.empty((flat.shape[0], len(freqs), plan.n_frames), dtype=np.float32)
    for s0 in range(0, flat.shape[0], chunk):
        _morlet_chunk(flat[s0 : s0 + chunk], plan, out[s0 : s0 + chunk])
    # a cheap guard: the weights and samples are non-negative, so this only removes a -0.0
    np.maximum(out, 0.0, out=out)
    return out.reshape(*lead, len(freqs), plan.n_frames), freqs


def morlet_power_reference(
    x: np.ndarray,
    sfreq: float = SFREQ,
    freqs: np.ndarray | None = None,
    hop: int = 128,
    wavelet: str = "cmor1.5-1.0",
    chunk: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """The same frame-averaged power straight from ``pywt.cwt`` (FFT method, finely sampled wavelet): the
    reference :func:`morlet_power` is tested against, and the slow path of the benchmark."""
    import pywt

    x = np.asarray(x, dtype=np.float32)
    if freqs is None:
        freqs = np.geomspace(0.5, 50.0, 64)
    freqs = np.asarray(freqs, dtype=np.float64)
    scales = pywt.frequency2scale(wavelet, freqs / sfreq)
    lead, n_times = x.shape[:-1], x.shape[-1]
    flat = x.reshape(-1, n_times)
    n_frames = 1 + n_times // hop
    pool = _frame_pool(n_frames, hop, n_times).astype(np.float32)
    out = np.empty((flat.shape[0], len(freqs), n_frames), np.float32)
    for s in range(0, flat.shape[0], chunk):
        coef, _ = pywt.cwt(
            flat[s : s + chunk],
            scales,
            wavelet,
            sampling_period=1.0 / sfreq,
            method="fft",
            axis=-1,
            precision=MORLET_PRECISION,
        )
        p = (coef.real**2 + coef.imag**2).astype(np.float32)  # (F, n, T)
        out[s : s + chunk] = (p @ pool).transpose(1, 0, 2)
    return out.reshape(*lead, len(freqs), n_frames), freqs


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10 ** (m / 2595.0) - 1.0)


@lru_cache(maxsize=4)
def _mel_filterbank(sfreq: float, nfft: int, fmin: float, fmax: float, n_mels: int) -> tuple[np.ndarray, int, int]:
    """Mel filter bank of ``torchaudio.functional.melscale_fbanks`` (HTK scale, Slaney area normalisation: the
    same triangles on the same FFT grid, computed in numpy) restricted to its non-zero FFT bins.

    Returns (fb (n_used_bins, n_mels) float32, first bin, last bin + 1).
    """
    all_freqs = np.linspace(0, int(sfreq) // 2, nfft // 2 + 1)
    f_pts = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    f_diff = np.diff(f_pts)
    slopes = f_pts[None, :] - all_freqs[:, None]  # (n_freqs, n_mels + 2)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up)) * (2.0 / (f_pts[2:] - f_pts[:-2]))
    used = np.flatnonzero(fb.sum(1) > 0)
    lo, hi = int(used[0]), int(used[-1]) + 1
    return _frozen(fb[lo:hi].astype(np.float32)), lo, hi


def _mel_centres(fmin: float, fmax: float, n_mels: int) -> np.ndarray:
    return _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2)[1:-1])


def mel_power(
    x: np.ndarray,
    sfreq: float = SFREQ,
    window_size: int = 256,
    hop: int = 128,
    nfft: int = 1024,
    fmin: float = 0.5,
    fmax: float = 50.0,
    n_mels: int = 128,
    cache: SpectralCache | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mel spectrogram: Hann-window power STFT (``window_size`` samples zero-padded to ``nfft``) projected on
    torchaudio's mel filter bank (``torchaudio.functional.melscale_fbanks``, HTK scale, Slaney-normalised), the
    same as ``torchaudio.transforms.MelSpectrogram`` but only over the bins the filters use. freqs are the filter
    centres (Hz)."""
    fb, lo, hi = _mel_filterbank(float(sfreq), nfft, float(fmin), float(fmax), n_mels)
    if cache is not None and cache.holds(x):
        power = cache.hann_power(window_size, hop, nfft)[..., lo:hi]
    else:
        power = _stft_frames_power(x, _hann(window_size), nfft, hop)[..., lo:hi]
    lead = power.shape[:-1]
    mel = power.reshape(-1, hi - lo) @ fb  # one BLAS product for every frame
    return _to_freq_major(mel.reshape(*lead, n_mels)), _mel_centres(fmin, fmax, n_mels)


# --- registry entries (config-driven) -------------------------------------------------------------------------
@register_spectrogram("stft")
def _stft(
    x: np.ndarray, cfg: SpectrogramConfig, sfreq: float, cache: SpectralCache | None = None
) -> tuple[np.ndarray, np.ndarray]:
    return stft_power(x, sfreq, cfg.window_size, _hop(cfg), cfg.nfft, cfg.freq_min, cfg.freq_max, cache)


@register_spectrogram("multitaper")
def _multitaper(
    x: np.ndarray, cfg: SpectrogramConfig, sfreq: float, cache: SpectralCache | None = None
) -> tuple[np.ndarray, np.ndarray]:
    return multitaper_power(
        x, sfreq, cfg.window_size, _hop(cfg), cfg.nfft, cfg.freq_min, cfg.freq_max, cfg.n_tapers
    )


@register_spectrogram("wavelet")
def _wavelet(
    x: np.ndarray, cfg: SpectrogramConfig, sfreq: float, cache: SpectralCache | None = None
) -> tuple[np.ndarray, np.ndarray]:
    freqs = np.geomspace(max(cfg.freq_min, 0.25), cfg.freq_max, cfg.n_wavelet_freqs)
    return morlet_power(x, sfreq, freqs, _hop(cfg), wavelet=cfg.wavelet)


@register_spectrogram("mel")
def _mel(
    x: np.ndarray, cfg: SpectrogramConfig, sfreq: float, cache: SpectralCache | None = None
) -> tuple[np.ndarray, np.ndarray]:
    return mel_power(
        x, sfreq, cfg.window_size, _hop(cfg), cfg.mel_nfft, cfg.freq_min, cfg.freq_max, cfg.n_mels, cache
    )


def compute_spectrogram(
    name: str, x: np.ndarray, cfg: SpectrogramConfig, sfreq: float = SFREQ, cache: SpectralCache | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Power ``(..., F, T)`` and frequency axis of the registered transform ``name``.

    ``cache`` (a :class:`SpectralCache` of ``x``) lets the STFT and the mel spectrogram share one FFT."""
    check_option("name", name, SPECTROGRAM_REGISTRY)
    return SPECTROGRAM_REGISTRY[name](x, cfg, sfreq, cache)


def spectral_cache(x: np.ndarray, cfg: SpectrogramConfig) -> SpectralCache:
    """A cache for the transforms of ``x`` under ``cfg``: the Hann frames at the mel FFT length when the mel
    spectrogram is among the types (the STFT and the features' Welch PSD then take every other bin of it)."""
    return SpectralCache(x, hann_nfft=cfg.mel_nfft if "mel" in cfg.types else None)


# --- chains, scaling ------------------------------------------------------------------------------------------
def chain_average(power: np.ndarray, quality: np.ndarray | None = None) -> np.ndarray:
    """Mean power of the 4 derivations of each double-banana chain: (B, >=16, F, T) -> (B, 4, F, T).

    With a (B, >=16) ``quality`` mask only usable derivations are averaged (a chain with none gives 0).
    """
    b = power.shape[0]
    p = power[:, : 4 * len(CHAIN_NAMES)].reshape(b, len(CHAIN_NAMES), 4, *power.shape[2:])
    if quality is None:
        return p.mean(2)
    w = quality[:, : 4 * len(CHAIN_NAMES)].reshape(b, len(CHAIN_NAMES), 4).astype(np.float32)
    num = np.einsum("bcdft,bcd->bcft", p, w)
    return num / np.maximum(w.sum(-1), 1.0)[..., None, None]


def log_normalize(power: np.ndarray, eps: float = 1e-6, axes: tuple[int, ...] = (-3, -2, -1)) -> np.ndarray:
    """``log(power + eps)`` standardised to zero mean and unit variance over ``axes`` (per record)."""
    lp = np.log(power + eps, dtype=np.float32)
    mean = lp.mean(axis=axes, keepdims=True)
    std = lp.std(axis=axes, keepdims=True)
    return (lp - mean) / np.maximum(std, 1e-6)


def kaggle_spectrogram_image(raw: np.ndarray) -> np.ndarray:
    """Kaggle 10-min spectrogram (..., 4, 100, 300) -> NaN filled with 0, clipped to [e^-4, e^8], log,
    standardised per record (the public-starter recipe)."""
    x = np.nan_to_num(np.asarray(raw, dtype=np.float32), nan=0.0)
    x = np.log(np.clip(x, np.exp(-4), np.exp(8)))
    mean = x.mean(axis=(-3, -2, -1), keepdims=True)
    std = x.std(axis=(-3, -2, -1), keepdims=True)
    return ((x - mean) / np.maximum(std, 1e-6)).astype(np.float32)


@dataclass(frozen=True)
class SpectrogramAxes:
    """Frequency (Hz) and frame-centre time (s) axes of one spectrogram type."""

    freqs: np.ndarray
    times: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.freqs), len(self.times)

    def to_dict(self) -> dict[str, list[float]]:
        return {
            "freqs_hz": [round(float(f), 4) for f in self.freqs],
            "times_s": [round(float(t), 4) for t in self.times],
        }


def spectrogram_axes(name: str, cfg: SpectrogramConfig, n_times: int, sfreq: float = SFREQ) -> SpectrogramAxes:
    """Axes of ``name`` for inputs of ``n_times`` samples (computed on a tiny dummy input)."""
    power, freqs = compute_spectrogram(name, np.zeros((1, n_times), np.float32), cfg, sfreq)
    times = np.arange(power.shape[-1]) * _hop(cfg) / sfreq
    return SpectrogramAxes(np.asarray(freqs, dtype=np.float64), times)
