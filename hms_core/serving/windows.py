"""Recording -> the 10-s windows a package scores, each with the 50-s input the training windows had.

Training fed :func:`hms_core.preprocess.process_windows` 50-s inputs (10,000 samples): the filters ran over all
of it, the central ``layout.context_length`` samples were kept, and the label belongs to the segment
``layout.segment`` inside that context. Serving builds exactly such inputs:

- input length ``W`` = 50 s (:data:`~hms_core.constants.EEG_WINDOW_SAMPLES`), or the whole recording when it is
  shorter than 50 s but at least the package's context (as :func:`hms_core.preprocess.preprocess_record` does);
- the scored segment of an input starting at sample ``s`` is ``[s + o, s + o + L)`` with
  ``o = (W - context_length) // 2 + layout.segment_start`` and ``L = layout.segment_length`` (from the package's
  layout, never from constants: 20-30 s of a 50-s input for the HMS layout);
- inputs start at ``s = 0, L, 2L, ...`` while ``s + W`` fits: consecutive, non-overlapping 10-s segments.

Edges: a window is scored only when its whole input lies inside the recording, so the first ``o`` samples and the
last ``W - o - L`` (20 s each for the HMS layout) are context only, and a tail shorter than one segment after the
last full window is not scored; nothing is padded. A 50-s HMS test file gives one window, seconds 20-30, as in
the competition. Recordings shorter than the context are refused (422).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from hms_core.constants import EEG_WINDOW_SAMPLES, SFREQ
from hms_core.partition import Layout
from hms_core.serving.errors import Unprocessable
from hms_core.serving.inputs import Recording

__all__ = ["WindowPlan", "iter_window_batches", "plan_windows", "recording_windows"]


@dataclass(frozen=True)
class WindowPlan:
    """Where the inputs and scored segments of one recording lie (samples at 200 Hz)."""

    input_samples: int
    segment_offset: int
    segment_samples: int
    starts: np.ndarray  # (B,) input start per window

    @property
    def n_windows(self) -> int:
        return len(self.starts)

    @property
    def segment_start_s(self) -> np.ndarray:
        return (self.starts + self.segment_offset) / SFREQ

    @property
    def segment_end_s(self) -> np.ndarray:
        return (self.starts + self.segment_offset + self.segment_samples) / SFREQ


def plan_windows(
    n_times: int, layout: Layout, source: str = "recording", max_windows: int | None = None
) -> WindowPlan:
    """The windows of a recording of ``n_times`` samples under ``layout`` (see the module docstring)."""
    if layout.sfreq != SFREQ:
        raise Unprocessable(f"the package's layout is at {layout.sfreq} Hz; serving resamples to {SFREQ} Hz.")
    context = layout.context_length
    if n_times < context:
        raise Unprocessable(
            f"'{source}' is too short: {n_times} samples ({n_times / SFREQ:.2f} s at {SFREQ} Hz) but the package "
            f"needs at least its context of {context} samples ({context / SFREQ:g} s); a 50-s recording gives one "
            f"window.",
            field="data",
        )
    width = min(EEG_WINDOW_SAMPLES, n_times)
    offset = (width - context) // 2 + layout.segment_start
    step = layout.segment_length
    n = 1 + (n_times - width) // step
    if max_windows is not None and n > max_windows:
        raise Unprocessable(
            f"'{source}' is {n_times / SFREQ:.0f} s long and gives {n} windows of {step / SFREQ:g} s; a request may "
            f"hold at most {max_windows} (serving.max_windows). Split the recording.",
            field="data",
        )
    return WindowPlan(width, offset, step, np.arange(n, dtype=np.int64) * step)


def _view(data: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """All inputs as a (B, W, 20) view on ``data`` (no copy)."""
    views = np.lib.stride_tricks.sliding_window_view(data, plan.input_samples, axis=0)  # (n - W + 1, 20, W)
    return views[:: plan.segment_samples][: plan.n_windows].transpose(0, 2, 1)  # starts = 0, L, 2L, ...


def recording_windows(
    rec: Recording, pkg: object, max_windows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(windows (B, W, 20), segment start seconds (B,))`` of ``rec`` under ``pkg.layout``."""
    plan = plan_windows(rec.n_times, pkg.layout, rec.source, max_windows)
    return _view(rec.data, plan), plan.segment_start_s


def iter_window_batches(rec: Recording, plan: WindowPlan, batch_size: int) -> Iterator[tuple[slice, np.ndarray]]:
    """``(window slice, float32 (b, W, 20) copy)`` per batch of at most ``batch_size`` windows."""
    views = _view(rec.data, plan)
    for i in range(0, plan.n_windows, batch_size):
        sl = slice(i, min(i + batch_size, plan.n_windows))
        yield sl, np.ascontiguousarray(views[sl], dtype=np.float32)
