"""Model specifications: name, input kind and config schema of every registered classifier.

This module imports only pydantic, so the config loader can validate the ``models`` section without importing
torch. The model classes themselves live one per file next to it and register through
:mod:`hms_core.models.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hms_core.config import NOT_A_RESULT
from hms_core.constants import KAGGLE_SPECTROGRAM, SPECTROGRAM_TYPES

InputKind = Literal["raw", "spectrogram", "features"]

#: The ``training.*`` keys each framework's trainer reads (``hms_core.training``: the torch trainer, the
#: gradient-boosting trainer and the row plan / stages they share). A model's code version hashes only these, so
#: e.g. LightGBM is not made stale by torch optimiser keys it never reads. A new ``training`` key must be added
#: here for the trainers that read it (tests/hms_core/test_config.py checks that every key that changes results
#: is read by some framework, and that no key marked NOT_A_RESULT is listed).
TRAINING_KEYS: dict[str, tuple[str, ...]] = {
    "pytorch": (
        "batch_size", "learning_rate", "weight_decay", "epochs", "warmup_epochs", "min_steps", "stage2_epochs",
        "min_votes", "low_vote_weight", "early_stopping_patience", "ema_decay", "flip_tta", "augment", "device",
        "mixed_precision", "seed", "max_train_rows",
    ),
    # row plan (seed, max_train_rows), the stage-2 row selection and weights (stage2_epochs > 0, min_votes,
    # low_vote_weight) and the booster seed; rounds come from the model section, not training.epochs
    "lightgbm": ("seed", "max_train_rows", "stage2_epochs", "min_votes", "low_vote_weight"),
}  # fmt: skip


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, json_schema_extra=NOT_A_RESULT, description="Build this model's asset at all.")

    @classmethod
    def bind_workspace(cls, params: dict[str, Any], cfg: Any) -> dict[str, Any]:
        """``params`` with paths that depend on the workspace filled in (the training job calls it; default:
        unchanged). ``cfg`` is the :class:`~hms_core.config.PlatformConfig`."""
        return params

    @classmethod
    def uses_foundation_encoder(cls, params: dict[str, Any]) -> bool:
        """Does a model with these parameters start from the foundation stage's encoder (an upstream asset)?"""
        return False


class ResNet1DGRUConfig(ModelConfig):
    initial_filters: int = Field(64, ge=4)
    num_blocks: list[int] = Field(default_factory=lambda: [2, 2, 2, 2])
    dropout: float = Field(0.3, ge=0, lt=1)
    se_block: bool = True
    gru_hidden: int = Field(128, ge=8)
    kernel_size: int = Field(7, ge=3)
    downsample: int = Field(4, ge=1, description="Stride of the stem (samples per step into the blocks).")
    use_context: bool = Field(False, description="Train on the whole 50 s context instead of the 10 s segment.")


class EfficientNetConfig(ModelConfig):
    model_name: str = "efficientnet_b3"
    pretrained: bool = True
    pretrained_path: str | None = Field(None, description="Local timm checkpoint to load when pretrained.")
    num_classes: int = Field(6, ge=6, le=6)
    spectrograms: list[Literal[(*SPECTROGRAM_TYPES, KAGGLE_SPECTROGRAM)]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["stft", "mel"],
        description="Spectrogram types stacked as image channels; each image tiles the 4 chains vertically.",
        min_length=1,
    )
    image_size: tuple[int, int] | None = Field(
        None, description="Resize the tiled image to (H, W), H divisible by 4; null keeps the first type's size."
    )
    drop_rate: float = Field(0.2, ge=0, lt=1)

    @field_validator("image_size")
    @classmethod
    def _size(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (v[0] % 4 or v[0] < 16 or v[1] < 8):
            raise ValueError(f"image_size (H, W) needs H divisible by 4, H >= 16 and W >= 8, got {list(v)}")
        return v


class SPaRCNetConfig(ModelConfig):
    block_layers: int = Field(4, ge=1)
    growth_rate: int = Field(16, ge=4)
    bn_size: int = Field(16, ge=1)
    drop_prob: float = Field(0.5, ge=0, lt=1)
    input_downsample: int = Field(1, ge=1, le=8, description="Average-pool the input in time by this factor.")


class LightGBMConfig(ModelConfig):
    n_estimators: int = Field(400, ge=1)
    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(31, ge=2)
    min_child_samples: int = Field(20, ge=1)
    subsample: float = Field(0.8, gt=0, le=1)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0)
    early_stopping_rounds: int = Field(50, ge=1)
    num_threads: int = Field(
        0,
        ge=0,
        json_schema_extra=NOT_A_RESULT,
        description="LightGBM threads; 0 = all cores (deterministic training: same trees for any count).",
    )


class EEGFoundationConfig(ModelConfig):
    model_size: Literal["tiny", "base"] = Field("tiny", description="Encoder size (as foundation.model_size).")
    pretrained: bool = Field(True, description="Start from the foundation stage's encoder (else a random one).")
    encoder_path: str | None = Field(
        None,
        json_schema_extra=NOT_A_RESULT,
        description="Pretrained encoder folder; null = <workspace.root>/foundation/encoder (the asset's output, "
        "whose version the model asset tracks).",
    )
    linear_probe: bool = Field(False, description="Freeze the encoder; train only the pooling head.")
    layer_decay: float = Field(0.75, gt=0, le=1, description="Layer-wise learning-rate decay (1 = none).")
    head_dropout: float = Field(0.2, ge=0, lt=1)
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout inside the transformer blocks while fine-tuning.")

    @classmethod
    def bind_workspace(cls, params: dict[str, Any], cfg: Any) -> dict[str, Any]:
        """A relative ``encoder_path`` resolved against ``workspace.root``; null -> the foundation stage's encoder."""
        from hms_core.foundation.job import encoder_dir

        path = params.get("encoder_path")
        return {**params, "encoder_path": str(cfg.path(path) if path else encoder_dir(cfg))}

    @classmethod
    def uses_foundation_encoder(cls, params: dict[str, Any]) -> bool:
        return bool(cls.model_validate(params).pretrained)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_kind: InputKind
    config_cls: type[ModelConfig]
    module: str  # imported lazily by the registry; the module calls ``register_model``
    description: str = ""
    framework: str = "pytorch"  # what trains it: "pytorch" steps share the accelerator pool

    @property
    def training_keys(self) -> tuple[str, ...]:
        """The ``training.*`` keys this model's trainer reads (see :data:`TRAINING_KEYS`)."""
        return TRAINING_KEYS[self.framework]


MODEL_SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("resnet1d_gru", "raw", ResNet1DGRUConfig, "hms_core.models.resnet1d_gru",
                  "1D ResNet with squeeze-excitation blocks and a bidirectional GRU head on bipolar signals"),
        ModelSpec("efficientnet", "spectrogram", EfficientNetConfig, "hms_core.models.efficientnet",
                  "timm EfficientNet on stacked spectrogram images"),
        ModelSpec("sparcnet", "raw", SPaRCNetConfig, "hms_core.models.sparcnet",
                  "SPaRCNet (Jing et al. 2023) from braindecode, the clinical baseline"),
        ModelSpec("lightgbm", "features", LightGBMConfig, "hms_core.models.lightgbm_model",
                  "LightGBM on the features table with soft labels", framework="lightgbm"),
        ModelSpec("eeg_foundation", "raw", EEGFoundationConfig, "hms_core.models.eeg_foundation",
                  "Transformer over 1-s bipolar patches, pretrained self-supervised (foundation stage), fine-tuned"),
    )
}  # fmt: skip


def validate_models_section(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Validate ``models:`` of a config; returns each model's full config (defaults filled in).

    Every problem of every model is reported at once, each naming ``models.<name>.<key>``, the value and the rule.
    """
    out: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    for name, params in (section or {}).items():
        if name not in MODEL_SPECS:
            errors.append(f"models.{name}: unknown model; registered models are {sorted(MODEL_SPECS)}")
            continue
        try:
            out[name] = MODEL_SPECS[name].config_cls.model_validate(params or {}).model_dump(mode="json")
        except ValidationError as e:
            for x in e.errors():
                key = ".".join(map(str, x["loc"]))
                msg = "unknown key" if x["type"] == "extra_forbidden" else x["msg"]
                errors.append(f"models.{name}.{key}: {msg} (got {x.get('input')!r})")
    if errors:
        raise ValueError("\n  - ".join(errors))
    return out
