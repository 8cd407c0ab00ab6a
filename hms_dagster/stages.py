"""The pipeline's stages and the asset jobs that materialize them.

A Dagster run targets one partition key, so a stage is a list of jobs, each run once (unpartitioned) or once per
fold. The CLI runner and the sensors/schedules both enumerate this plan; nothing else hard-codes asset names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg

from hms_core.config import PlatformConfig
from hms_dagster.assets.models import model_asset_key
from hms_dagster.assets.preprocessing import preprocessing_asset_keys

STAGE_ORDER = ("data", "preprocessing", "foundation", "models", "ensemble", "export")

#: Stages whose assets do not exist yet. The runner says so instead of pretending to run them.
NOT_BUILT: dict[str, str] = {
    "foundation": "self-supervised EEG foundation pretraining (masked reconstruction + contrastive)",
    "ensemble": "the learned ensemble over out-of-fold predictions",
    "export": "ONNX/TensorRT export, the prediction service and inference benchmarks",
}


@dataclass(frozen=True)
class StageJob:
    name: str
    partitioned: bool
    asset_keys: tuple[str, ...]
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def job(self) -> dg.UnresolvedAssetJobDefinition:
        return dg.define_asset_job(
            self.name,
            selection=dg.AssetSelection.assets(*self.asset_keys),
            description=self.description,
            tags={"hms/job": self.name, **self.tags},
        )


def stage_plan(cfg: PlatformConfig) -> dict[str, list[StageJob]]:
    models = tuple(model_asset_key(m) for m in cfg.enabled_models())
    plan: dict[str, list[StageJob]] = {
        "data": [StageJob("data_job", False, ("raw_dataset", "labels", "folds"),
                          "Resolve, validate and fold the raw dataset.")],
        "preprocessing": [
            StageJob("test_preprocessing_job", False, ("test_windows",), "Preprocess the test set."),
            StageJob("preprocessing_job", True, tuple(preprocessing_asset_keys(cfg)),
                     "Windows, spectrograms and features of one fold."),
        ],
        "foundation": [],
        "models": [StageJob("models_job", True, models, "Train every enabled classifier on one fold.",
                            {"dagster/max_retries": "1"})] if models else [],
        "ensemble": [],
        "export": [],
    }
    return plan


def all_stage_jobs(cfg: PlatformConfig) -> list[StageJob]:
    return [j for jobs in stage_plan(cfg).values() for j in jobs]
