"""Platform configuration: one YAML file, validated with pydantic before any work starts.

A config file may name a ``base`` profile (``tiny``, ``demo``, ``full`` from ``config/``, or a path); its keys are
deep-merged over that profile. Relative paths are resolved against ``workspace.root``, which is itself resolved
against the directory the command runs in.

Every section forbids unknown keys, so a typo fails with the key named, the value and what is allowed.

Keys that change only how fast or where a step runs (worker counts, I/O batch sizes, threads, logging) are marked
``json_schema_extra=NOT_A_RESULT`` here, in one place; :meth:`PlatformConfig.result_hash` drops them, so the code
versions built from it change only when a result would.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from hms_core.constants import SFREQ, SPECTROGRAM_TYPES
from hms_core.scanning.config import ScanConfig

PROFILE_DIR = Path(__file__).resolve().parent.parent / "config"
PROFILES = ("tiny", "demo", "full")
CONFIG_ENV_VAR = "HMS_CONFIG"
DEFAULT_PROFILE = "demo"


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or invalid. The message names key, value and what is allowed."""


#: ``Field(..., json_schema_extra=NOT_A_RESULT)``: the key changes how fast or where a step runs, never what it
#: produces; :func:`result_dump` (and so every code version) leaves it out.
NOT_A_RESULT: dict[str, Any] = {"affects_results": False}


def affects_results(field: FieldInfo) -> bool:
    extra = field.json_schema_extra
    return not (isinstance(extra, dict) and extra.get("affects_results") is False)


def result_dump(model: BaseModel) -> dict[str, Any]:
    """``model.model_dump(mode="json")`` without the keys marked :data:`NOT_A_RESULT` (at any depth)."""
    return _drop_non_results(model, model.model_dump(mode="json"))


def _drop_non_results(model: BaseModel, dump: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, field in type(model).model_fields.items():
        if name not in dump or not affects_results(field):
            continue
        value = getattr(model, name)
        out[name] = _drop_non_results(value, dump[name]) if isinstance(value, BaseModel) else dump[name]
    return out


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --- workspace ------------------------------------------------------------------------------------------------
class WorkspaceConfig(Section):
    root: str = Field("runs/demo", description="Folder that holds data, artifacts, models, logs and DAGSTER_HOME.")
    dagster_home: str | None = Field(None, description="Dagster instance folder; default <root>/dagster_home.")


# --- dataset --------------------------------------------------------------------------------------------------
class SyntheticConfig(Section):
    n_patients: int = Field(100, ge=2, description="Patients in the generated training set.")
    eegs_per_patient: tuple[int, int] = Field((4, 16), description="Min and max EEGs per patient.")
    n_test: int = Field(10, ge=1, description="Test EEGs (exactly 50 s) and spectrograms (exactly 10 min).")
    seed: int = 0
    workers: int = Field(
        2,
        ge=1,
        json_schema_extra=NOT_A_RESULT,
        description="Worker processes for generation (same files for any).",
    )

    @field_validator("eegs_per_patient")
    @classmethod
    def _ordered(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1]:
            raise ValueError(f"must be (min, max) with 1 <= min <= max, got {list(v)}")
        return v


class DatasetConfig(Section):
    source: Literal["auto", "local", "kaggle", "synthetic"] = Field(
        "auto",
        description="auto: use raw_data_path if it holds train.csv, else download with Kaggle credentials, "
        "else generate synthetic data when the profile allows it.",
    )
    allow_synthetic: bool = Field(True, description="May 'auto' fall back to generated data?")
    raw_data_path: str = "data/raw"
    processed_data_path: str = "data/processed"
    processing_batch_size: int = Field(
        100, ge=1, json_schema_extra=NOT_A_RESULT, description="Windows read and written per preprocessing batch."
    )
    kaggle_competition: str = "hms-harmful-brain-activity-classification"
    n_folds: int = Field(5, ge=2, le=20)
    fold_seed: int = 42
    check_files: Literal["all", "sample", "none"] = Field(
        "all",
        json_schema_extra=NOT_A_RESULT,
        description="How many referenced parquet files raw_dataset opens to validate (the data stay the same).",
    )
    synthetic: SyntheticConfig = SyntheticConfig()


# --- preprocessing -------------------------------------------------------------------------------------------
class EEGPreprocessingConfig(Section):
    filter_low: float = Field(0.5, gt=0)
    filter_high: float = Field(50.0, gt=0)
    filter_order: int = Field(4, ge=1, le=10)
    notch_freq: float | None = Field(60.0, description="Line frequency; harmonics below Nyquist are notched too.")
    notch_quality: float = Field(30.0, gt=0)
    segment_length: int = Field(2000, ge=200, description="Samples of the labelled segment (2000 = 10 s).")
    context_length: int = Field(10000, ge=200, description="Samples of context kept (10000 = the 50 s window).")
    clip_uv: float = Field(500.0, gt=0, description="Amplitude clip after filtering (microvolts).")
    max_gap_s: float = Field(1.0, ge=0, description="NaN gaps up to this long are linearly interpolated.")
    include_central_chain: bool = Field(False, description="Add Fz-Cz and Cz-Pz to the 16 bipolar pairs.")
    missing_channels: Literal["error", "flag"] = "flag"
    all_nan_windows: Literal["error", "flag"] = Field(
        "error",
        description="A window that is NaN in every EEG channel: stop naming the record (error), or keep it as "
        "zeros with every channel flagged missing (flag).",
    )
    scaling: Literal["robust", "none"] = "robust"
    dtype: Literal["float16", "float32"] = "float16"
    max_nan_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Flag a channel when more than this fraction lies in gaps longer than max_gap_s.",
    )
    flat_uv: float = Field(0.5, ge=0, description="Flat channel: no sample-to-sample change above this (uV).")
    noisy_uv: float = Field(400.0, gt=0, description="Disconnected/noisy channel: robust std above this (uV).")
    pop_uv: float = Field(200.0, gt=0, description="Electrode pop: a sample-to-sample jump above this (uV).")
    max_pops: int = Field(5, ge=0, description="Flag a channel with more electrode pops than this per window.")

    @model_validator(mode="after")
    def _check(self) -> EEGPreprocessingConfig:
        if self.filter_low >= self.filter_high:
            raise ValueError(f"filter_low ({self.filter_low}) must be below filter_high ({self.filter_high})")
        if self.filter_high >= SFREQ / 2:
            raise ValueError(f"filter_high ({self.filter_high}) must be below Nyquist ({SFREQ / 2} Hz)")
        if self.segment_length > self.context_length:
            raise ValueError(
                f"segment_length ({self.segment_length}) must not exceed context_length ({self.context_length})"
            )
        if self.context_length > 50 * SFREQ:
            raise ValueError(f"context_length ({self.context_length}) must be at most {50 * SFREQ} samples (50 s)")
        return self

    @property
    def segment_slice(self) -> slice:
        """Where the labelled segment sits inside the stored context (centred): the one source of truth used by
        preprocessing, the partition manifest, training, plots and serving."""
        start = (self.context_length - self.segment_length) // 2
        return slice(start, start + self.segment_length)


SpectrogramType = Literal[SPECTROGRAM_TYPES]  # the tuple unpacks into the Literal's values


class SpectrogramConfig(Section):
    types: list[SpectrogramType] = Field(default_factory=lambda: list(SPECTROGRAM_TYPES))
    window_size: int = Field(256, ge=16)
    overlap: int = Field(128, ge=0)
    nfft: int = Field(512, ge=16)
    freq_min: float = Field(0.5, ge=0)
    freq_max: float = Field(50.0, gt=0)
    n_mels: int = Field(128, ge=8)
    n_wavelet_freqs: int = Field(64, ge=8)
    n_tapers: int = Field(3, ge=1)
    use_kaggle_spectrograms: bool = True
    span: Literal["segment", "context"] = Field(
        "segment", description="Signal the spectrograms cover: the labelled segment or the whole context."
    )
    mel_nfft: int = Field(
        1024, ge=16, description="FFT size of the mel spectrogram (finer bins for narrow filters)."
    )
    wavelet: str = Field("cmor1.5-1.0", description="PyWavelets complex Morlet wavelet for the CWT.")

    @model_validator(mode="after")
    def _check(self) -> SpectrogramConfig:
        if self.overlap >= self.window_size:
            raise ValueError(f"overlap ({self.overlap}) must be below window_size ({self.window_size})")
        if self.nfft < self.window_size:
            raise ValueError(f"nfft ({self.nfft}) must be at least window_size ({self.window_size})")
        if self.freq_min >= self.freq_max:
            raise ValueError(f"freq_min ({self.freq_min}) must be below freq_max ({self.freq_max})")
        if self.freq_max > SFREQ / 2:
            raise ValueError(f"freq_max ({self.freq_max}) must be at most Nyquist ({SFREQ / 2} Hz)")
        return self


class FeaturesConfig(Section):
    enabled: bool = True
    span: Literal["segment", "context"] = Field(
        "segment", description="Signal the features describe: the labelled segment or the whole context."
    )


class PreprocessingConfig(Section):
    eeg: EEGPreprocessingConfig = EEGPreprocessingConfig()
    spectrogram: SpectrogramConfig = SpectrogramConfig()
    features: FeaturesConfig = FeaturesConfig()
    max_flagged_fraction: float = Field(
        0.25,
        ge=0,
        le=1,
        json_schema_extra=NOT_A_RESULT,
        description="Asset check: largest allowed fraction of flagged (bad) channels (a check threshold: the "
        "arrays do not change with it).",
    )
    max_bad_window_fraction: float = Field(
        0.01,
        ge=0,
        le=1,
        json_schema_extra=NOT_A_RESULT,
        description="Blocking asset check: largest allowed fraction of windows that could not be "
        "judged (all-NaN input, or a transform output that was not finite and was zeroed); such windows are kept, "
        "flagged in index.parquet's 'bad_window' column, and the fold carries on below this fraction.",
    )
    workers: int = Field(
        2,
        ge=1,
        json_schema_extra=NOT_A_RESULT,
        description="Worker processes building a partition (1 = in the calling process).",
    )


# --- models / training --------------------------------------------------------------------------
class AugmentConfig(Section):
    flip: float = Field(0.5, ge=0, le=1, description="Probability of a left/right hemisphere flip.")
    time_shift_s: float = Field(2.0, ge=0)
    channel_dropout: float = Field(0.1, ge=0, le=1)
    mixup_alpha: float = Field(0.0, ge=0, description="0 disables mixup.")


class TrainingConfig(Section):
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    epochs: int = Field(10, ge=1)
    warmup_epochs: float = Field(1.0, ge=0)
    min_steps: int = Field(0, ge=0, description="Stretch short schedules to this many optimizer steps.")
    stage2_epochs: int = Field(0, ge=0, description="Second stage on rows with >= min_votes votes (0 = off).")
    min_votes: int = Field(10, ge=1)
    low_vote_weight: float = Field(1.0, ge=0, le=1, description="Loss weight of rows below min_votes.")
    early_stopping_patience: int = Field(5, ge=1)
    ema_decay: float | None = Field(0.99, description="EMA of weights; null disables.")
    flip_tta: bool = True
    augment: AugmentConfig = AugmentConfig()
    num_workers: int = Field(0, ge=0, json_schema_extra=NOT_A_RESULT, description="DataLoader worker processes.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: bool = True
    gradient_checkpointing: bool = Field(
        False,
        json_schema_extra=NOT_A_RESULT,
        description="Recompute activations in the backward pass (less memory, same gradients).",
    )
    seed: int = 0
    max_train_rows: int | None = Field(None, ge=1, description="Cap on training rows per fold (smoke runs).")
    quality_gate: bool = Field(
        True,
        json_schema_extra=NOT_A_RESULT,
        description="Blocking check: a model's out-of-fold KL must beat the class-prior baseline (sets the check's "
        "severity; the model is the same).",
    )
    torch_threads: int = Field(
        0,
        ge=0,
        json_schema_extra=NOT_A_RESULT,
        description="torch intra-op threads while training (0 = torch default); 1 avoids OpenMP "
        "oversubscription when other processes share the cores.",
    )


class FoundationConfig(Section):
    """The self-supervised pretraining of the EEG foundation encoder (``hms_core.foundation``): masked patch
    reconstruction + InfoNCE on windows of every recording, train and test, never a label."""

    enabled: bool = Field(True, json_schema_extra=NOT_A_RESULT, description="Build the foundation_encoder asset.")
    model_size: Literal["tiny", "base"] = Field(
        "tiny", description="Encoder size: tiny (CPU, seconds per 100 steps) or base (about 4.8 M parameters)."
    )
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout inside the transformer blocks.")
    steps: int = Field(2000, ge=1, description="Optimiser steps of the pretraining.")
    batch_size: int = Field(64, ge=2, description="Windows per step (all ranks together); InfoNCE needs >= 2.")
    learning_rate: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(100, ge=0, description="Linear warm-up, then cosine decay to 1 % of the rate.")
    mask_ratio: float = Field(0.5, gt=0, lt=1, description="Fraction of the usable patches masked per window.")
    temperature: float = Field(0.2, gt=0, description="InfoNCE temperature between the two augmented views.")
    reconstruction_weight: float = Field(1.0, ge=0, description="Weight of the masked raw-patch MSE.")
    spectrum_weight: float = Field(0.5, ge=0, description="Weight of the masked log-amplitude-spectrum MSE.")
    contrastive_weight: float = Field(0.1, ge=0, description="Weight of the InfoNCE term.")
    spectrum_target: bool = Field(True, description="Also reconstruct each masked patch's log-amplitude spectrum.")
    window_s: int = Field(10, ge=1, le=50, description="Pretraining window length in 1-s patches (seconds).")
    stride_s: int = Field(5, ge=1, description="Windows start every stride_s seconds inside each 50-s block.")
    include_test: bool = Field(True, description="Pretrain on the test recordings too (signals only, no labels).")
    max_recordings: int | None = Field(None, ge=1, description="Cap on recordings (a seeded random subset).")
    max_hours: float | None = Field(None, gt=0, description="Cap on recording hours (a seeded random subset).")
    eval_windows: int = Field(64, ge=1, description="Held-out windows of the evaluation loss.")
    checkpoint_every: int = Field(
        100, ge=1, json_schema_extra=NOT_A_RESULT, description="Atomic checkpoint (and evaluation) every N steps."
    )
    log_every: int = Field(10, ge=1, json_schema_extra=NOT_A_RESULT, description="Loss curve point every N steps.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: bool = Field(True, description="float16 autocast on CUDA (ignored on CPU).")
    seed: int = 0
    torch_threads: int = Field(
        0, ge=0, json_schema_extra=NOT_A_RESULT, description="torch intra-op threads (0 = torch default)."
    )

    @model_validator(mode="after")
    def _check(self) -> FoundationConfig:
        if self.reconstruction_weight + self.spectrum_weight * self.spectrum_target + self.contrastive_weight <= 0:
            raise ValueError(
                "at least one of reconstruction_weight, spectrum_weight, contrastive_weight must be > 0"
            )
        return self


CombinerName = Literal["mean", "log_linear", "stacking"]


class EnsembleConfig(Section):
    """The ensemble stage: combiners fitted on every enabled classifier's out-of-fold predictions, chosen and
    scored by nested cross-validation over the patient folds, calibration, uncertainty, report and submission."""

    members: list[str] | None = Field(
        None, description="Classifiers to combine; null = every enabled model of the 'models' section."
    )
    combiners: list[CombinerName] = Field(
        default_factory=lambda: ["mean", "log_linear", "stacking"],
        min_length=1,
        description="Combiners the nested CV chooses from: mean of probabilities, non-negative weights on "
        "log-probabilities + per-class bias, multinomial stacking on the members' log-probabilities.",
    )
    min_member_gain: float = Field(
        0.001,
        ge=0,
        description="Greedy member selection: a member joins only if it lowers the inner-CV KL by "
        "at least this much.",
    )
    stacking_l2: float = Field(
        0.01, gt=0, description="L2 penalty of the stacking model (towards the geometric mean of the members)."
    )
    calibration: bool = Field(True, description="Fit a temperature + per-class bias on out-of-fold predictions.")
    bootstrap_resamples: int = Field(1000, ge=10, description="Patient bootstrap resamples for intervals.")
    seed: int = Field(0, description="Seed of the bootstrap and of the example windows.")
    review_list_size: int = Field(50, ge=1, description="Windows in the ranked review list.")
    report_examples: int = Field(6, ge=0, description="Example windows (predicted vs voted) in the report.")
    submission: bool = Field(True, description="Write submission.csv for the test set.")
    register_model: bool = Field(
        True, json_schema_extra=NOT_A_RESULT, description="Register the ensemble in the MLflow model registry."
    )
    registered_model_name: str = Field("hms-ensemble", json_schema_extra=NOT_A_RESULT)
    quality_gate: bool = Field(
        True,
        json_schema_extra=NOT_A_RESULT,
        description="Blocking check: the ensemble's nested-CV KL must not be worse than its best member's "
        "(sets the check's severity; the ensemble is the same).",
    )


Precision = Literal["fp32", "int8"]


class ExportConfig(Section):
    """The export stage (``hms_core.export``): every fold model of every kept ensemble member as an ONNX engine
    (flip TTA inside the graph), gated by parity against torch, plus the combiner and calibration, in a verified
    deployment package under ``<root>/models/deployments/<version>/`` that runs with numpy + onnxruntime alone."""

    enabled: bool = Field(True, json_schema_extra=NOT_A_RESULT, description="Build the export assets.")
    members: Literal["all", "kept"] | list[str] = Field(
        "all",
        description="Members in the package: all = every ensemble member (the kept ones make the blend, every "
        "one is reported per window and in the disagreement), kept = only those the blend uses, or a list that "
        "includes every kept member.",
    )
    precisions: list[Precision] = Field(
        default_factory=lambda: ["fp32", "int8"],
        min_length=1,
        description="Engines built per fold model: fp32 (always deployable when parity holds) and int8 "
        "(dynamic quantisation for recurrent/transformer members, static calibrated for CNNs).",
    )
    exporter: Literal["auto", "dynamo", "torchscript"] = Field(
        "auto",
        description="auto: torch.onnx dynamo exporter first, the TorchScript exporter where it fails or "
        "fails parity; dynamo / torchscript: only that one.",
    )
    opset: int = Field(
        18, ge=17, le=23, description="ONNX opset of the TorchScript exporter (dynamo picks its own)."
    )
    rewrites: list[Literal["unroll_gru", "conv1d_as_2d"]] = Field(
        default_factory=lambda: ["unroll_gru", "conv1d_as_2d"],
        description="Rewrites of the exported graph into the same maths in a form onnxruntime's CPU kernels run "
        "faster (hms_core.export.onnx_export.REWRITES; parity still measured on every engine): unroll_gru (GRU "
        "layers as unrolled MatMuls instead of onnxruntime's GRU kernel), conv1d_as_2d (1-D convolutions as 2-D "
        "ones of height 1, so the load-time NCHWc layout optimisation covers them).",
    )
    rewrite_min_batch: int = Field(
        12,
        ge=1,
        description="A member whose graph the rewrites changed also gets fp32 engines exported without them, which "
        "the package runs for batches below this many windows (one GRU kernel node and plain 1-D convolutions are "
        "faster for a few windows: a demo GRU fold 0.7 vs 1.7 ms at 1 window, 4.4 vs 4.7 ms at 8, then 24 vs 9 ms "
        "at 16; a SPaRCNet fold 0.98 vs 1.12 ms at 1, equal at 4, 22.4 vs 20.6 ms at 32); 1 = rewritten at every "
        "size.",
    )
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "extended",
        description="onnxruntime graph optimisation level applied offline; the optimised model is saved.",
    )
    fp32_tolerance: float = Field(
        1e-4, gt=0, description="Blocking parity: max |p_onnx - p_torch| over the parity windows for fp32 engines."
    )
    int8_kl_tolerance: float = Field(
        0.01,
        gt=0,
        description="int8 kept only if the mean KL(torch || int8) over the parity windows is below this.",
    )
    parity_windows: int = Field(
        64, ge=1, description="Held-out windows (the fold's validation partition) per check."
    )
    calibration_windows: int = Field(
        256, ge=1, description="Training windows (the fold's train partitions) that calibrate static int8."
    )
    max_missing_channels: int = Field(
        2,
        ge=0,
        le=19,
        description="The service refuses a recording missing more of the 19 EEG channels than this.",
    )
    final_models: dict[str, Literal["folds", "refit"]] = Field(
        default_factory=dict,
        description="Per ensemble member, what the package deploys: folds (the default for a member not named "
        "here: its k fold models, averaged) or refit (one model trained on every fold's rows for the median over "
        "the folds of the epochs / boosting rounds up to each fold's best; the refit_<model> asset). The blend is "
        "the one fitted on the fold models' out-of-fold predictions, applied to the refit's output.",
    )
    tensorrt: bool = Field(
        True,
        json_schema_extra=NOT_A_RESULT,
        description="Build TensorRT fp16 engines when tensorrt imports and a CUDA GPU is present (else recorded).",
    )
    intra_op_threads: int = Field(
        2, ge=0, json_schema_extra=NOT_A_RESULT, description="onnxruntime intra-op threads (0 = one per core)."
    )
    benchmark_runs: int = Field(
        5, ge=1, json_schema_extra=NOT_A_RESULT, description="Timed batches per engine for the latency metadata."
    )


# --- serving: the prediction service (hms_core.serving) and `hms predict`; never changes a pipeline result ----
class ServingConfig(Section):
    host: str = Field(
        "127.0.0.1", json_schema_extra=NOT_A_RESULT, description="Address `hms serve` binds to (loopback only)."
    )
    port: int = Field(8000, ge=1, le=65535, json_schema_extra=NOT_A_RESULT, description="Port of `hms serve`.")
    package: str | None = Field(
        None,
        json_schema_extra=NOT_A_RESULT,
        description="Deployment package folder; null = the `latest` one under <root>/models/deployments.",
    )
    precision: Literal["fp32", "int8", "best"] = Field(
        "fp32", json_schema_extra=NOT_A_RESULT, description="Engine precision the service asks the package for."
    )
    max_request_mb: float = Field(
        64.0, gt=0, json_schema_extra=NOT_A_RESULT, description="Largest request body (Content-Length and stream)."
    )
    max_files: int = Field(16, ge=1, json_schema_extra=NOT_A_RESULT, description="Files per /predict/batch call.")
    max_windows: int = Field(
        720, ge=1, json_schema_extra=NOT_A_RESULT, description="10-s windows per request (720 = 2 h of EEG)."
    )
    batch_size: int = Field(
        32, ge=1, json_schema_extra=NOT_A_RESULT, description="Windows preprocessed and predicted per engine call."
    )
    max_concurrency: int = Field(
        2, ge=1, json_schema_extra=NOT_A_RESULT, description="Requests predicted at once; more get 503 at once."
    )
    queue_timeout_s: float = Field(
        0.05, ge=0, json_schema_extra=NOT_A_RESULT, description="How long a request waits for a free slot."
    )
    max_sampling_rate: float = Field(
        8192.0, gt=0, json_schema_extra=NOT_A_RESULT, description="Highest input sampling rate accepted (Hz)."
    )
    api_key_env: str = Field(
        "HMS_API_KEY",
        json_schema_extra=NOT_A_RESULT,
        description="Environment variable holding the API key; auth is on when it is set and not empty.",
    )
    log_predictions: bool = Field(
        True, json_schema_extra=NOT_A_RESULT, description="Append every prediction to the monitoring log."
    )


# --- operations: how the platform runs itself (automation, instance storage, cluster); never a result ---------
class OperationsConfig(Section):
    automation: Literal["stopped", "running"] = Field(
        "stopped",
        json_schema_extra=NOT_A_RESULT,
        description="Initial state of the automation sensors (declarative automation and the raw-data sensor) "
        "on an instance that has not seen them; switch them in the UI (Automation) afterwards.",
    )
    automation_interval_s: int = Field(
        30, ge=5, json_schema_extra=NOT_A_RESULT, description="Seconds between automation condition evaluations."
    )
    raw_data_interval_s: int = Field(
        60, ge=5, json_schema_extra=NOT_A_RESULT, description="Seconds between two looks at the raw data folder."
    )
    retrain_cron: str | None = Field(
        "0 3 * * 0",
        json_schema_extra=NOT_A_RESULT,
        description="Cron of the scheduled retrain of every model fold (UTC); null = only on data changes.",
    )
    io_retries: int = Field(
        2,
        ge=0,
        le=10,
        json_schema_extra=NOT_A_RESULT,
        description="Retries of a failed I/O step (download, file reads and writes, model registry).",
    )
    io_retry_delay_s: float = Field(
        2.0, ge=0, json_schema_extra=NOT_A_RESULT, description="First retry delay; doubles per retry, +-jitter."
    )
    instance_storage: Literal["sqlite", "postgres"] = Field(
        "sqlite",
        json_schema_extra=NOT_A_RESULT,
        description="Dagster run/event/schedule storage written into a new instance's dagster.yaml: sqlite files "
        "in DAGSTER_HOME, or PostgreSQL (dagster-postgres) at the URL in postgres_url_env.",
    )
    postgres_url_env: str = Field(
        "HMS_DAGSTER_PG_URL",
        json_schema_extra=NOT_A_RESULT,
        description="Environment variable with the PostgreSQL URL (postgresql+psycopg2://user:pw@host:port/db); "
        "read by Dagster at start-up, never written to a file.",
    )
    executor: Literal["multiprocess", "k8s"] = Field(
        "multiprocess",
        json_schema_extra=NOT_A_RESULT,
        description="multiprocess: steps as local processes; k8s: one Kubernetes pod per step (dagster-k8s).",
    )
    training_gpus: int = Field(
        1,
        ge=0,
        le=16,
        json_schema_extra=NOT_A_RESULT,
        description="GPUs a torch training step requests on Kubernetes (nvidia.com/gpu); above 1 the step runs "
        "torchrun with one process per GPU.",
    )


# --- monitoring: the prediction log and the daily drift / quality assets (hms_core.monitoring) -------------------
class MonitoringLogConfig(Section):
    """The prediction log (``hms_core.monitoring.log.PredictionLog``): how it writes, never what a model does."""

    store_identifiers: bool = Field(
        False,
        json_schema_extra=NOT_A_RESULT,
        description="Keep record names / ids a caller passes (file names, eeg_id, patient_id); off = dropped.",
    )
    queue_rows: int = Field(
        100_000,
        ge=1,
        json_schema_extra=NOT_A_RESULT,
        description="Most rows waiting for the background writer; beyond it new rows are dropped and counted.",
    )
    flush_rows: int = Field(2000, ge=1, json_schema_extra=NOT_A_RESULT, description="Write once this many wait.")
    flush_interval_s: float = Field(
        5.0, gt=0, json_schema_extra=NOT_A_RESULT, description="Write at least this often while rows wait."
    )
    min_free_mb: float = Field(
        100.0,
        ge=0,
        json_schema_extra=NOT_A_RESULT,
        description="Stop writing (rows stay queued, /ready reports it) when the disk has less free space.",
    )


class DriftConfig(Section):
    """``prediction_drift``: each logged day against the training distribution stored in the package."""

    n_bins: int = Field(10, ge=2, le=50, description="Quantile bins of the reference per feature (PSI).")
    reference_sample: int = Field(
        2000, ge=50, description="Training values kept per feature in the reference for the KS test."
    )
    psi_warn: float = Field(0.1, gt=0, description="Population stability index of a feature: warn at or above.")
    psi_error: float = Field(0.25, gt=0, description="PSI at or above which a feature has drifted (error).")
    ks_alpha: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="Family-wise level of the two-sample KS tests (Bonferroni over the features): a feature "
        "counts as drifted only when its PSI is over a threshold and its KS p-value is below ks_alpha / n_features.",
    )
    max_error_features: int = Field(
        0, ge=0, description="The drift check fails (ERROR) when more features than this have drifted."
    )
    min_windows: int | None = Field(
        None,
        ge=1,
        description="Windows a day needs before drift is judged; null = the size at which an unshifted day's PSI "
        "stays under psi_warn (hms_core.monitoring.drift.min_windows_for_psi). Fewer: the check warns.",
    )
    features: list[str] | None = Field(
        None, description="Monitored features; null = hms_core.monitoring.log.monitored_feature_columns()."
    )


class QualityConfig(Section):
    """``prediction_quality``: KL and calibration of a day's windows once expert votes for them arrive."""

    labels_dir: str = Field(
        "monitoring/labels",
        description="Folder (under the workspace) where CSVs of expert votes are dropped: window_id + the six "
        "*_vote columns.",
    )
    min_labelled: int = Field(20, ge=1, description="Labelled windows a day needs before quality is judged.")
    kl_warn_ratio: float = Field(
        1.25, gt=0, description="Warn when the day's KL exceeds the reference (out-of-fold) KL times this."
    )
    kl_error_ratio: float = Field(1.5, gt=0, description="Fail (ERROR) above the reference KL times this.")
    ece_warn: float = Field(0.1, gt=0, lt=1, description="Warn when the top-label ECE reaches this.")
    ece_error: float = Field(0.2, gt=0, lt=1, description="Fail (ERROR) when the top-label ECE reaches this.")


class MonitoringConfig(Section):
    enabled: bool = Field(True, json_schema_extra=NOT_A_RESULT, description="Build the monitoring assets.")
    root: str = Field(
        "monitoring",
        json_schema_extra=NOT_A_RESULT,
        description="Folder (under the workspace) of the prediction log (predictions/) and the daily reports.",
    )
    start_date: str = Field(
        "2026-12-01", json_schema_extra=NOT_A_RESULT, description="First day of the daily partitions (YYYY-MM-DD)."
    )
    request_retraining: bool = Field(
        True,
        json_schema_extra=NOT_A_RESULT,
        description="A drift or quality check that fails with ERROR marks its evaluation retrain=true, which "
        "the operations automation turns into the retraining cascade; false: the checks only report.",
    )
    log: MonitoringLogConfig = MonitoringLogConfig()
    drift: DriftConfig = DriftConfig()
    quality: QualityConfig = QualityConfig()

    @model_validator(mode="after")
    def _thresholds(self) -> MonitoringConfig:
        from datetime import date

        if self.drift.psi_warn >= self.drift.psi_error:
            raise ValueError(
                f"monitoring.drift.psi_warn ({self.drift.psi_warn}) must be below psi_error ({self.drift.psi_error})"
            )
        q = self.quality
        if q.kl_warn_ratio >= q.kl_error_ratio:
            raise ValueError(
                f"monitoring.quality.kl_warn_ratio ({q.kl_warn_ratio}) must be below kl_error_ratio ({q.kl_error_ratio})"
            )
        if q.ece_warn >= q.ece_error:
            raise ValueError(f"monitoring.quality.ece_warn ({q.ece_warn}) must be below ece_error ({q.ece_error})")
        try:
            date.fromisoformat(self.start_date)
        except ValueError:
            raise ValueError(
                f"monitoring.start_date must be a date such as '2026-12-01', got {self.start_date!r}"
            ) from None
        return self


# --- logging: where runs are recorded, never what they produce ------------------------------------------------
class LoggingConfig(Section):
    wandb_project: str = Field("hms-eeg", json_schema_extra=NOT_A_RESULT)
    wandb_mode: Literal["offline", "online", "disabled"] = Field("offline", json_schema_extra=NOT_A_RESULT)
    mlflow_tracking_uri: str | None = Field(
        "sqlite:///{root}/mlflow.db",
        json_schema_extra=NOT_A_RESULT,
        description="null disables MLflow; {root} is the workspace root.",
    )
    mlflow_experiment: str = Field("hms-eeg", json_schema_extra=NOT_A_RESULT)
    log_dir: str = Field("logs", json_schema_extra=NOT_A_RESULT)


class PlatformConfig(Section):
    profile: str = Field("custom", description="Name of the profile this config came from.")
    workspace: WorkspaceConfig = WorkspaceConfig()
    dataset: DatasetConfig = DatasetConfig()
    preprocessing: PreprocessingConfig = PreprocessingConfig()
    foundation: FoundationConfig = FoundationConfig()
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    training: TrainingConfig = TrainingConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    export: ExportConfig = ExportConfig()
    serving: ServingConfig = ServingConfig()
    operations: OperationsConfig = OperationsConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    scan: ScanConfig = ScanConfig()
    logging: LoggingConfig = LoggingConfig()
    #: The YAML file this config was read from (provenance only; relative roots resolve against the working
    #: directory, not against this file).
    source_path: str | None = Field(None, exclude=True)

    @field_validator("models")
    @classmethod
    def _models(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from hms_core.models.specs import validate_models_section

        return validate_models_section(v)

    @model_validator(mode="after")
    def _ensemble_members(self) -> PlatformConfig:
        wanted = self.ensemble.members
        if wanted is not None:
            unknown = [m for m in wanted if m not in self.enabled_models()]
            if unknown:
                raise ValueError(
                    f"ensemble.members: {unknown} are not enabled models; allowed are {self.enabled_models()} "
                    "(or null for every enabled model)"
                )
        unknown = [m for m in self.export.final_models if m not in self.ensemble_members()]
        if unknown:
            raise ValueError(
                f"export.final_models: {unknown} are not ensemble members; allowed keys are "
                f"{self.ensemble_members()}, each set to 'folds' or 'refit'"
            )
        return self

    def refit_models(self) -> list[str]:
        """The ensemble members ``export.final_models`` deploys as a refit on every fold, in member order."""
        return [m for m in self.ensemble_members() if self.export.final_models.get(m) == "refit"]

    def ensemble_members(self) -> list[str]:
        """The classifiers the ensemble combines: ``ensemble.members`` or every enabled model."""
        return list(self.ensemble.members) if self.ensemble.members is not None else self.enabled_models()

    @property
    def ensemble_dir(self) -> Path:
        return self.path("ensemble")

    # --- resolved paths ---------------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.workspace.root).expanduser().resolve()

    def path(self, p: str | os.PathLike[str]) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else self.root / q

    @property
    def raw_dir(self) -> Path:
        return self.path(self.dataset.raw_data_path)

    @property
    def processed_dir(self) -> Path:
        return self.path(self.dataset.processed_data_path)

    @property
    def models_dir(self) -> Path:
        return self.path("models")

    @property
    def logs_dir(self) -> Path:
        return self.path(self.logging.log_dir)

    @property
    def dagster_home(self) -> Path:
        return self.path(self.workspace.dagster_home or "dagster_home")

    @property
    def mlflow_uri(self) -> str | None:
        uri = self.logging.mlflow_tracking_uri
        return None if uri is None else uri.replace("{root}", str(self.root))

    @property
    def fold_names(self) -> list[str]:
        return [f"fold_{i}" for i in range(self.dataset.n_folds)]

    def enabled_models(self) -> list[str]:
        return [name for name, cfg in self.models.items() if cfg.get("enabled", True)]

    # --- hashing / saving -------------------------------------------------------------------------------------
    def result_dump(self) -> dict[str, Any]:
        """The config without its :data:`NOT_A_RESULT` keys; each model section through its spec's schema."""
        from hms_core.models.specs import MODEL_SPECS

        dump = result_dump(self)
        dump["models"] = {
            name: result_dump(MODEL_SPECS[name].config_cls.model_validate(params))
            for name, params in self.models.items()
        }
        return dump

    def result_hash(self, *keys: str) -> str:
        """Short stable hash of the named keys (dotted paths such as ``preprocessing.eeg`` or ``training.seed``)
        with every key marked :data:`NOT_A_RESULT` left out: the config part of a code version."""
        dump, full = self.result_dump(), self.model_dump(mode="json")
        picked = {}
        for key in keys:
            node: Any = dump
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    if _lookup(full, key) is not _MISSING:
                        raise ValueError(
                            f"Config key '{key}' is marked NOT_A_RESULT (it never changes what a step "
                            "produces); leave it out of result_hash"
                        )
                    raise ValueError(
                        f"Config key '{key}' does not exist (result_hash takes dotted paths such as "
                        "'preprocessing.eeg')"
                    )
                node = node[part]
            picked[key] = node
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def config_hash(self) -> str:
        """Hash of the whole resolved config (every key, the root resolved): the exact config a run was built with."""
        dump = self.model_dump(mode="json")
        dump["workspace"]["root"] = str(self.root)
        return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


_MISSING = object()


def _lookup(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_config_path(name_or_path: str | os.PathLike[str]) -> Path:
    s = str(name_or_path)
    if s in PROFILES or (not s.endswith((".yaml", ".yml")) and (PROFILE_DIR / f"{s}.yaml").exists()):
        return PROFILE_DIR / f"{s}.yaml"
    p = Path(s).expanduser()
    if not p.exists():
        raise ConfigError(
            f"Config file '{p}' does not exist. Pass a YAML path or one of the profiles {list(PROFILES)}."
        )
    return p


def _read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path.resolve() in _seen:
        raise ConfigError(f"Config '{path}': 'base' profiles form a cycle: {[str(p) for p in _seen]}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"Config '{path}' is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"Config '{path}' must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        base_path = resolve_config_path(base) if str(base) in PROFILES else (path.parent / str(base))
        if str(base) not in PROFILES and not base_path.exists():
            base_path = resolve_config_path(base)
        data = _deep_merge(_read_yaml(base_path, (*_seen, path.resolve())), data)
    return data


def _format_validation_error(path: Path | str, err: ValidationError) -> str:
    lines = [f"Invalid config '{path}':"]
    for e in err.errors():
        key = ".".join(str(x) for x in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see config/demo.yaml for every key)"
        got = e.get("input")
        if key == "models":  # the models validator already names model, key and value
            lines.append(f"  - {msg}")
        elif isinstance(got, (dict, list)) and len(repr(got)) > 80:
            lines.append(f"  - {key}: {msg}")
        else:
            lines.append(f"  - {key}: {msg}; got {got!r}")
    return "\n".join(lines)


def load_config(
    name_or_path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None
) -> PlatformConfig:
    """Load and validate a config by profile name or path; ``None`` reads ``$HMS_CONFIG`` or the demo profile."""
    name_or_path = name_or_path or os.environ.get(CONFIG_ENV_VAR) or DEFAULT_PROFILE
    path = resolve_config_path(name_or_path)
    data = _read_yaml(path)
    if overrides:
        data = _deep_merge(data, overrides)
    try:
        cfg = PlatformConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(path, e)) from None
    cfg.source_path = str(path.resolve())
    return cfg


def parse_override(expr: str) -> dict[str, Any]:
    """``'training.epochs=3'`` -> ``{'training': {'epochs': 3}}`` (value parsed as YAML)."""
    if "=" not in expr:
        raise ConfigError(f"Override '{expr}' must look like section.key=value")
    key, value = expr.split("=", 1)
    node: dict[str, Any] = {}
    cur = node
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur[p] = {}
        cur = cur[p]
    cur[parts[-1]] = yaml.safe_load(value)
    return node
