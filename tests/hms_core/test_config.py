"""The platform config: which keys change results (and so code versions), reserved sections, profiles."""

from __future__ import annotations

import pytest

from hms_core.config import (
    ConfigError,
    PlatformConfig,
    TrainingConfig,
    affects_results,
    load_config,
    parse_override,
)
from hms_core.models.specs import MODEL_SPECS, TRAINING_KEYS


def _non_result_keys(model_cls, prefix: str = "") -> set[str]:
    out = set()
    for name, field in model_cls.model_fields.items():
        if not affects_results(field):
            out.add(prefix + name)
        elif isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields"):
            out |= _non_result_keys(field.annotation, f"{prefix}{name}.")
    return out


def test_the_keys_that_never_change_a_result_are_marked_in_one_place():
    core = ("workspace.", "dataset.", "preprocessing.", "training.", "logging.")
    assert {k for k in _non_result_keys(PlatformConfig) if k.startswith(core)} == {
        "dataset.processing_batch_size", "dataset.check_files", "dataset.synthetic.workers",
        "preprocessing.workers", "preprocessing.max_flagged_fraction", "preprocessing.max_bad_window_fraction",
        "training.num_workers", "training.torch_threads", "training.gradient_checkpointing", "training.quality_gate",
        "logging.wandb_project", "logging.wandb_mode", "logging.mlflow_tracking_uri", "logging.mlflow_experiment",
        "logging.log_dir",
    }  # fmt: skip
    assert _non_result_keys(MODEL_SPECS["lightgbm"].config_cls) == {"enabled", "num_threads"}


@pytest.mark.parametrize("override", [
    "preprocessing.workers=7", "dataset.processing_batch_size=3", "training.torch_threads=5",
    "training.num_workers=4", "logging.wandb_mode=disabled", "logging.mlflow_tracking_uri=null",
    "logging.log_dir=elsewhere", "dataset.synthetic.workers=3", "models.lightgbm.num_threads=3",
])  # fmt: skip
def test_speed_and_logging_keys_leave_the_result_hash_unchanged(override):
    base = load_config("tiny")
    changed = load_config("tiny", overrides=parse_override(override))
    keys = ("dataset", "preprocessing", "training", "logging", "models.lightgbm")
    assert changed.model_dump() != base.model_dump()
    assert changed.result_hash(*keys) == base.result_hash(*keys)
    assert changed.config_hash != base.config_hash  # the exact config still differs


def test_a_filter_change_changes_the_preprocessing_hash():
    base = load_config("tiny")
    changed = load_config("tiny", overrides=parse_override("preprocessing.eeg.filter_high=40"))
    assert changed.result_hash("preprocessing") != base.result_hash("preprocessing")
    assert changed.result_hash("dataset", "training") == base.result_hash("dataset", "training")


def test_result_hash_rejects_unknown_and_non_result_keys():
    cfg = load_config("tiny")
    with pytest.raises(ValueError, match="'preprocessing.workers' is marked NOT_A_RESULT"):
        cfg.result_hash("preprocessing.workers")
    with pytest.raises(ValueError, match="'preprocessing.eeg.filter_hi' does not exist"):
        cfg.result_hash("preprocessing.eeg.filter_hi")


def test_every_training_key_that_changes_results_is_read_by_some_trainer():
    fields = TrainingConfig.model_fields
    result_keys = {k for k, f in fields.items() if affects_results(f)}
    declared = {k for keys in TRAINING_KEYS.values() for k in keys}
    assert declared <= result_keys, declared - result_keys  # no NOT_A_RESULT or unknown key declared
    assert result_keys <= declared, result_keys - declared  # a new result key must name the trainers that read it
    assert {s.framework for s in MODEL_SPECS.values()} <= set(TRAINING_KEYS)
    gbm = set(MODEL_SPECS["lightgbm"].training_keys)
    assert not gbm & {"batch_size", "learning_rate", "weight_decay", "warmup_epochs", "ema_decay", "augment"}


def test_sampling_rate_is_not_a_config_key():
    """HMS EEG is 200 Hz (hms_core.constants.SFREQ); a key that could take only that value is gone."""
    with pytest.raises(ConfigError, match="dataset.eeg_sampling_rate: unknown key"):
        load_config("tiny", overrides=parse_override("dataset.eeg_sampling_rate=200"))
