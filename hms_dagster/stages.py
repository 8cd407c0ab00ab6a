"""The pipeline's stages, their asset keys and the asset jobs that materialize them: the one list of each.

A Dagster run targets one partition key, so a stage is a list of jobs, each run once (unpartitioned) or once per
fold. The CLI, the runner, the status view, the assets (as group names) and the sensors all use the names
defined here; nothing else spells a stage or an asset key. This module imports Dagster only when a job is built,
so the CLI can list the stages without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hms_core.config import PlatformConfig

if TYPE_CHECKING:
    import dagster as dg

# --- stages ---------------------------------------------------------------------------------------------------
DATA = "data"
PREPROCESSING = "preprocessing"
FOUNDATION = "foundation"
MODELS = "models"
ENSEMBLE = "ensemble"
EXPORT = "export"
STAGE_ORDER = (DATA, PREPROCESSING, FOUNDATION, MODELS, ENSEMBLE, EXPORT)
#: ``hms run --stage all``: every built stage in order.
ALL = "all"
#: Group of the daily monitoring assets (not a stage of ``hms run``: ``hms monitor`` runs a day).
MONITORING = "monitoring"
#: Group of the scan assets (not a stage of ``hms run``: the folder sensor or ``hms scan`` runs a recording).
SCAN = "scan"

#: Stages whose assets do not exist yet. The runner says so instead of pretending to run them.
NOT_BUILT: dict[str, str] = {}

# --- asset keys -----------------------------------------------------------------------------------------------
RAW_DATASET = "raw_dataset"
LABELS = "labels"
FOLDS = "folds"
EEG_WINDOWS = "eeg_windows"
SPECTROGRAMS = "spectrograms"
KAGGLE_SPECTROGRAMS = "kaggle_spectrograms"
EEG_FEATURES = "eeg_features"
TEST_WINDOWS = "test_windows"
ENSEMBLE_MODEL = "ensemble_model"
EVALUATION_REPORT = "evaluation_report"
SUBMISSION = "submission"
REGISTERED_ENSEMBLE = "registered_ensemble"
FOUNDATION_ENCODER = "foundation_encoder"
#: The op (step key) of the fold preprocessing multi-asset: one step writes all of a fold's arrays.
PREPROCESS_FOLD = "preprocess_fold"
PREDICTION_DRIFT = "prediction_drift"  # monitoring (daily partitions)
PREDICTION_QUALITY = "prediction_quality"  # monitoring (daily partitions)
DRIFT_CHECK = "drift_within_limits"  # check of PREDICTION_DRIFT
QUALITY_CHECK = "quality_within_limits"  # check of PREDICTION_QUALITY
SCAN_TIMELINE = "scan_timeline"  # scan (dynamic partitions RECORDINGS_PARTITIONS)
SCAN_MODEL = "scan_model"  # scan: the distilled scanning model of the deployment package
RECORDINGS_PARTITIONS = "recordings"  # scan: one partition per file of scan.recordings_dir
ONNX_ENGINES = "onnx_engines"
DEPLOYMENT_PACKAGE = "deployment_package"

# --- jobs -----------------------------------------------------------------------------------------------------
DATA_JOB = "data_job"
TEST_PREPROCESSING_JOB = "test_preprocessing_job"
PREPROCESSING_JOB = "preprocessing_job"
MODELS_JOB = "models_job"
ENSEMBLE_JOB = "ensemble_job"
FOUNDATION_JOB = "foundation_job"
MONITORING_JOB = "monitoring_job"
SCAN_JOB = "scan_job"
SCAN_MODEL_JOB = "scan_model_job"
SCAN_SENSOR = "scan_recordings_sensor"
EXPORT_JOB = "export_job"


def model_asset_key(name: str) -> str:
    return f"model_{name}"


def refit_asset_key(name: str) -> str:
    """The export stage's refit of model ``name`` on every fold (``export.final_models: {name: refit}``)."""
    return f"refit_{name}"


def ensemble_asset_keys(cfg: PlatformConfig) -> list[str]:
    """The ensemble stage's assets: the ensemble and its report, the submission (``ensemble.submission``) and the
    registered model (``ensemble.register_model`` with MLflow on); none without an ensemble member."""
    if not cfg.ensemble_members():
        return []
    keys = [ENSEMBLE_MODEL, EVALUATION_REPORT]
    if cfg.ensemble.submission:
        keys.append(SUBMISSION)
    if cfg.ensemble.register_model and cfg.mlflow_uri is not None:
        keys.append(REGISTERED_ENSEMBLE)
    return keys


def export_asset_keys(cfg: PlatformConfig) -> list[str]:
    """The export stage's assets (``export.enabled``): the refits on every fold (``export.final_models``), the
    ONNX engines and the deployment package; none without an ensemble (the package reproduces it)."""
    if not cfg.export.enabled or ENSEMBLE_MODEL not in ensemble_asset_keys(cfg):
        return []
    return [*(refit_asset_key(m) for m in cfg.refit_models()), ONNX_ENGINES, DEPLOYMENT_PACKAGE]


def preprocessing_asset_keys(cfg: PlatformConfig) -> list[str]:
    """The fold-level outputs of one preprocessing pass, in lineage order."""
    keys = [EEG_WINDOWS, SPECTROGRAMS, EEG_FEATURES]
    if cfg.preprocessing.spectrogram.use_kaggle_spectrograms:
        keys.insert(2, KAGGLE_SPECTROGRAMS)
    return keys


@dataclass(frozen=True)
class StageJob:
    name: str
    partitioned: bool
    asset_keys: tuple[str, ...]
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    #: The asset group the job selects (less ``exclude``); ``asset_keys`` is then what the group holds, checked
    #: by tests/hms_dagster/test_definitions.py. None: the job selects ``asset_keys``.
    group: str | None = None
    exclude: tuple[str, ...] = ()

    def selection(self) -> dg.AssetSelection:
        import dagster as dg

        if self.group is None:
            return dg.AssetSelection.assets(*self.asset_keys)
        sel = dg.AssetSelection.groups(self.group)
        return sel - dg.AssetSelection.assets(*self.exclude) if self.exclude else sel

    def job(self, extra_tags: dict[str, str] | None = None) -> dg.UnresolvedAssetJobDefinition:
        import dagster as dg

        return dg.define_asset_job(
            self.name,
            selection=self.selection(),
            description=self.description,
            tags={"hms/job": self.name, **self.tags, **(extra_tags or {})},
        )


def stage_plan(cfg: PlatformConfig) -> dict[str, list[StageJob]]:
    models = tuple(model_asset_key(m) for m in cfg.enabled_models())
    plan: dict[str, list[StageJob]] = {
        DATA: [StageJob(DATA_JOB, False, (RAW_DATASET, LABELS, FOLDS), "Resolve, validate and fold the raw dataset.",
                        group=DATA)],
        PREPROCESSING: [
            StageJob(TEST_PREPROCESSING_JOB, False, (TEST_WINDOWS,), "Preprocess the test set."),
            StageJob(PREPROCESSING_JOB, True, tuple(preprocessing_asset_keys(cfg)),
                     "Windows, spectrograms and features of one fold.", group=PREPROCESSING, exclude=(TEST_WINDOWS,)),
        ],
        FOUNDATION: [StageJob(FOUNDATION_JOB, False, (FOUNDATION_ENCODER,),
                              "Pretrain the EEG foundation encoder on every recording (no labels).", group=FOUNDATION)]
        if cfg.foundation.enabled else [],
        MODELS: [StageJob(MODELS_JOB, True, models, "Train every enabled classifier on one fold.",
                          {"dagster/max_retries": "1"}, group=MODELS)] if models else [],
        ENSEMBLE: [StageJob(ENSEMBLE_JOB, False, tuple(ensemble_asset_keys(cfg)),
                            "Blend every fold of every member: ensemble, report, submission, registry.", group=ENSEMBLE)]
        if ensemble_asset_keys(cfg) else [],
        EXPORT: [StageJob(EXPORT_JOB, False, tuple(export_asset_keys(cfg)),
                          "Refit where configured, export every final model to ONNX (parity-gated), build the "
                          "package.",
                          group=EXPORT)]
        if export_asset_keys(cfg) else [],
    }  # fmt: skip
    return plan


def all_stage_jobs(cfg: PlatformConfig) -> list[StageJob]:
    return [j for jobs in stage_plan(cfg).values() for j in jobs]


def stage_of_asset(cfg: PlatformConfig) -> dict[str, str]:
    """Asset key -> the stage that materializes it."""
    return {a: s for s, jobs in stage_plan(cfg).items() for j in jobs for a in j.asset_keys}
