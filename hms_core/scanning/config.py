"""The ``scan:`` section: continuous-EEG review of hours-long recordings (:mod:`hms_core.scanning`).

Windows of ``stride_s`` seconds apart are judged on their 10-s labelled segment with the 50-s context around it,
exactly as a training row; keys that only change how fast or in how much memory a scan runs (chunk length, batch
size, threads) are marked :data:`~hms_core.config.NOT_A_RESULT`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hms_core.constants import CLASSES, EEG_WINDOW_S, LABEL_WINDOW_S, SFREQ
from hms_core.scanning.events import EventConfig

__all__ = ["CascadeConfig", "DistillConfig", "ScanConfig"]

#: ``Field(json_schema_extra=...)`` of keys that change speed or memory only (same dict as hms_core.config's).
_SPEED_ONLY = {"affects_results": False}
#: Seconds of the 50-s window on either side of the 10-s labelled segment.
MAX_CONTEXT_S = (EEG_WINDOW_S - LABEL_WINDOW_S) / 2


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DistillConfig(_Section):
    """The scanning model distilled from the ensemble (:mod:`hms_core.scanning.distill`): a small CNN on the
    chain-averaged log STFT of each 10-s segment, trained on the ensemble's probabilities (no labels)."""

    window_size: int = Field(400, ge=64, description="STFT window (samples; 400 = 2 s, 0.5 Hz bins).")
    hop: int = Field(100, ge=10, description="STFT hop (samples); scan.stride_s must be a multiple of it.")
    freq_min: float = Field(0.5, gt=0, description="Lowest STFT bin kept (Hz).")
    freq_max: float = Field(20.0, gt=0, description="Highest STFT bin kept (Hz).")
    spatial: Literal["chains", "derivations"] = Field(
        "chains",
        description="Rows of the model's input: chains = the 4 chain averages (the HMS spectrograms' layout); "
        "derivations = the 16 bipolar derivations (a focal pattern in 2 electrodes is not averaged away).",
    )
    context_s: float = Field(
        0.0,
        ge=0,
        description="Seconds of STFT frames on either side of the 10-s segment the model also reads "
        "(from the 50-s context: at most 20 s; a multiple of hop); 0 = the segment only.",
    )
    time_bins: int = Field(
        1,
        ge=1,
        le=8,
        description="Stretches of time the CNN's features are averaged over separately (1 = one mean "
        "over every frame; 3 with context_s: before, during, after the segment).",
    )
    channels: int = Field(16, ge=4, description="Width of the CNN's first convolution.")
    target_temperature: float = Field(
        1.0,
        gt=0,
        le=1,
        description="The student learns the teacher's probabilities p^(1/T) renormalised: 1 = as they are, below "
        "1 sharper (a window the ensemble leans towards seizure at 0.4 is learnt higher); the held-out KL is always "
        "against the teacher's own probabilities.",
    )
    epochs: int = Field(40, ge=1, description="Passes over the distillation windows.")
    batch_size: int = Field(256, ge=8)
    learning_rate: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    stride_s: float = Field(2.0, gt=0, description="Window stride over the training recordings (teacher windows).")
    max_windows: int | None = Field(20000, ge=50, description="Cap on teacher windows (a seeded subset).")
    recordings_dir: str | None = Field(
        None,
        description="Folder of unlabelled long recordings (EDF/BDF/...; relative to workspace.root) scanned first for "
        "more teacher windows, one pseudo-patient per file; null = the training recordings only.",
    )
    recordings_stride_s: float | None = Field(
        None,
        gt=0,
        description="Window stride over the long teacher recordings (recordings_dir, synthetic ones); null = "
        "stride_s. Windows 2 s apart overlap by 80 %: a wider stride spends the ensemble's time on more recordings.",
    )
    synthetic_recordings: int = Field(
        0,
        ge=0,
        description="Long synthetic recordings (hms_core.synthetic.long; seeds synthetic_seed, +1, ...) written "
        "under <root>/distill/synthetic and scanned as more unlabelled teacher recordings (the ensemble labels "
        "them; their truth is never read), for a workspace without long recordings of its own; 0 = none.",
    )
    synthetic_hours: float = Field(3.0, gt=0, le=24, description="Length of each synthetic teacher recording (h).")
    synthetic_seizure_share: float = Field(
        0.32,
        gt=0,
        lt=1,
        description="Share of seizures among the synthetic recordings' events (the other four classes share the "
        "rest equally; the generator's own mix is 0.32).",
    )
    synthetic_seed: int = Field(
        300, ge=0, description="First seed of the synthetic teacher recordings (keep clear of benchmark seeds)."
    )
    holdout_fraction: float = Field(
        0.25, gt=0, lt=1, description="Patients held out to measure the KL between ensemble and distilled model."
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        if self.freq_min >= self.freq_max or self.freq_max > SFREQ / 2:
            raise ValueError(f"freq_min ({self.freq_min}) must be below freq_max ({self.freq_max}) <= {SFREQ / 2}")

        def off_hop(seconds: float) -> bool:  # not a whole number of hops
            n = seconds * SFREQ
            return abs(n - round(n)) > 1e-6 or round(n) % self.hop != 0

        hop = f"hop ({self.hop} samples = {self.hop / SFREQ:g} s)"
        for key in ("stride_s", "recordings_stride_s"):
            v = getattr(self, key)
            if v is not None and off_hop(v):
                raise ValueError(f"{key} ({v}) must be a multiple of {hop}")
        if off_hop(self.context_s) or self.context_s > MAX_CONTEXT_S:
            raise ValueError(
                f"context_s ({self.context_s}) must be a multiple of {hop} and at most {MAX_CONTEXT_S:g} s (the 50-s "
                "window around the 10-s segment)"
            )
        return self


class CascadeConfig(_Section):
    """``engine: cascade``: the distilled model scans every window; the windows where it sees one of ``classes``
    (probability >= ``threshold``), and those within ``dilate_s`` of them, are judged again by every engine of the
    ensemble, whose probabilities replace the distilled model's there (the timeline's ``engine`` column says which).
    The distilled model then only has to find candidate stretches, and the ensemble decides them. Candidates are
    found chunk by chunk (``scan.chunk_s``): the dilation does not reach across a chunk's edge."""

    classes: list[str] = Field(
        default_factory=lambda: ["Seizure"],
        min_length=1,
        description="Classes whose distilled probability sends a window to the ensemble.",
    )
    threshold: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="Distilled probability of one of classes at or above which a window is a candidate.",
    )
    dilate_s: float = Field(
        20.0,
        ge=0,
        description="Windows this close (s) to a candidate are judged by the ensemble too (event edges).",
    )
    stride_s: float | None = Field(
        None,
        gt=0,
        description="Seconds between the candidate windows the ensemble judges (a multiple of scan.stride_s; the "
        "first and last of each candidate stretch always): the windows between take the probabilities linearly "
        "interpolated between their judged neighbours (engine 'interpolated'); null = every candidate window.",
    )
    events: EventConfig | None = Field(
        None,
        description="The events of a cascade scan (its own thresholds: the ensemble's probabilities in the "
        "candidate stretches are not the distilled model's); null = scan.events.",
    )

    @model_validator(mode="after")
    def _check(self) -> CascadeConfig:
        unknown = [c for c in self.classes if c not in CLASSES]
        if unknown:
            raise ValueError(f"cascade.classes: {unknown} not among {list(CLASSES)}")
        return self


class ScanConfig(_Section):
    recordings_dir: str = Field(
        "recordings", description="Folder the scan asset's sensor watches (relative to workspace.root)."
    )
    out_dir: str = Field(
        "scans", description="Where the scan asset writes <recording>/ outputs (relative to root)."
    )
    package: str | None = Field(
        None,
        description="Deployment package folder; null = the newest under <root>/models/deployments, else the "
        "workspace's trained ensemble.",
    )
    engine: Literal["auto", "ensemble", "distilled", "cascade"] = Field(
        "auto",
        description="auto: cascade when a distilled scanning model is present (distilled when there are no "
        "ensemble engines beside it), else every engine of the ensemble; cascade: the distilled model everywhere "
        "and the ensemble where it sees a cascade class (see cascade).",
    )
    distilled_model: str | None = Field(
        None,
        description="Folder of the distilled scanning model; null = the one the scan_model asset (or `hms scan "
        "--distill`) built for the package: <root>/models/scanning/<package version>.",
    )
    precision: Literal["fp32", "int8", "best"] = Field("fp32", description="Package engines the ensemble runs.")
    stride_s: float = Field(2.0, gt=0, description="Seconds between consecutive 10-s windows (SPaRCNet: 2).")
    max_missing_channels: int | None = Field(
        None, ge=0, le=19,
        description="A window with more bad (missing, flat, disconnected, popping) channels is not evaluated; "
        "null = the package's max_missing_channels (4 without one).",
    )  # fmt: skip
    filter_pad_s: float = Field(
        20.0, ge=0, description="Signal read beyond each chunk so the zero-phase filter has settled (s)."
    )
    strip_seconds: float = Field(
        30.0, gt=0, description="Columns of the hemisphere spectrogram under the timeline (s per column)."
    )
    strip_freq_max: float = Field(20.0, gt=0, le=SFREQ / 2, description="Top of the hemisphere spectrogram (Hz).")
    chunk_s: float = Field(
        900.0, ge=60, json_schema_extra=_SPEED_ONLY, description="Seconds of windows processed per chunk (memory)."
    )
    batch_size: int = Field(
        512, ge=1, json_schema_extra=_SPEED_ONLY, description="Windows per call of the distilled model."
    )
    ensemble_batch_size: int = Field(
        32, ge=1, json_schema_extra=_SPEED_ONLY,
        description="Windows per call of the ensemble engines (each window holds its 50-s context and every "
        "spectrogram type the members read: this bounds the scan's memory).",
    )  # fmt: skip
    threads: int = Field(
        2, ge=1, json_schema_extra=_SPEED_ONLY, description="torch / onnxruntime threads of a scan."
    )
    prepare_ahead: int = Field(
        2, ge=1, le=8, json_schema_extra=_SPEED_ONLY,
        description="Chunks read and prepared ahead by as many worker threads while the current one is classified "
        "(each holds a chunk in memory).",
    )  # fmt: skip
    log_predictions: bool = Field(
        True, json_schema_extra=_SPEED_ONLY,
        description="Append the evaluated windows to the workspace's prediction log (monitoring.log).",
    )  # fmt: skip
    log_stride_s: float = Field(
        60.0, gt=0, json_schema_extra=_SPEED_ONLY,
        description="Seconds between two windows written to the prediction log (1,440 a day; stride_s = every "
        "window, at ~3 ms of features each).",
    )  # fmt: skip
    log_features: bool = Field(
        True, json_schema_extra=_SPEED_ONLY,
        description="Logged windows carry the preprocessing features drift monitoring reads (band powers per "
        "chain, amplitude, flag fractions).",
    )  # fmt: skip
    events: EventConfig = EventConfig()
    distill: DistillConfig = DistillConfig()
    cascade: CascadeConfig = CascadeConfig()

    @model_validator(mode="after")
    def _check(self) -> ScanConfig:
        stride = self.stride_s * SFREQ
        if abs(stride - round(stride)) > 1e-6 or round(stride) % (SFREQ // 4):
            raise ValueError(f"stride_s ({self.stride_s}) must be a multiple of 0.25 s")
        every = self.cascade.stride_s
        if every is not None and (
            abs(every / self.stride_s - round(every / self.stride_s)) > 1e-6 or every < self.stride_s
        ):
            raise ValueError(f"cascade.stride_s ({every}) must be a multiple of stride_s ({self.stride_s})")
        if round(stride) % self.distill.hop:
            raise ValueError(
                f"stride_s ({self.stride_s} s = {round(stride)} samples) must be a multiple of distill.hop "
                f"({self.distill.hop} samples), so windows share the distilled model's STFT frames"
            )
        return self

    @property
    def stride_samples(self) -> int:
        return round(self.stride_s * SFREQ)

    def events_for(self, engine: str) -> EventConfig:
        """The event settings of a timeline from ``engine`` (a scan's resolved engine): ``cascade.events`` for the
        cascade when set, else ``events``."""
        return self.cascade.events if engine == "cascade" and self.cascade.events is not None else self.events
