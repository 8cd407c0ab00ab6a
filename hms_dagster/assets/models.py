"""Models stage: one fold-partitioned asset per enabled classifier of the registry.

Partition ``fold_k`` trains on every other fold, predicts fold k (out-of-fold) and the test set, and records the
figures. A blocking check fails a model whose out-of-fold KL does not beat the class-prior baseline.
"""

import dagster as dg

from hms_core.models.specs import MODEL_SPECS
from hms_dagster.assets.preprocessing import PREPROCESSING_KEYS
from hms_dagster.deployment import run_torchrun
from hms_dagster.partitions import fold_index, fold_partitions
from hms_dagster.resources import (
    WorkspaceResource,
    progress_logger,
    training_loggers,
)
from hms_dagster.stages import (
    EEG_FEATURES,
    EEG_WINDOWS,
    FOUNDATION_ENCODER,
    MODELS,
    SPECTROGRAMS,
    TEST_WINDOWS,
    model_asset_key,
)

GROUP = MODELS
VERSION = "1"
#: The preprocessing asset each input kind reads.
INPUT_ASSET = {"raw": EEG_WINDOWS, "spectrogram": SPECTROGRAMS, "features": EEG_FEATURES}


def model_result_keys(name: str) -> tuple[str, ...]:
    """What a model's fold result depends on: the preprocessing (and data) keys upstream, its own section, and only
    the ``training.*`` keys its framework's trainer reads (``ModelSpec.training_keys``)."""
    spec = MODEL_SPECS[name]
    return (*PREPROCESSING_KEYS, f"models.{name}", *(f"training.{k}" for k in spec.training_keys))


def _build_model_asset(cfg, name: str):
    spec = MODEL_SPECS[name]
    code = f"{VERSION}-{cfg.result_hash(*model_result_keys(name))}"
    upstream = INPUT_ASSET[spec.input_kind]
    key = model_asset_key(name)

    @dg.asset(
        name=key,
        group_name=GROUP,
        partitions_def=fold_partitions(cfg),
        deps=[
            dg.AssetDep(upstream, partition_mapping=dg.AllPartitionMapping()),
            dg.AssetDep(TEST_WINDOWS),
            *(
                [dg.AssetDep(FOUNDATION_ENCODER)]
                if spec.config_cls.uses_foundation_encoder(cfg.models[name])
                else []
            ),
        ],
        code_version=code,
        kinds={spec.framework},
        pool="gpu" if spec.framework == "pytorch" else None,  # one accelerator: one torch training at a time
        description=f"{spec.description}. Partition fold_k: trained on the other folds, predicts fold k.",
        check_specs=[
            dg.AssetCheckSpec(
                "beats_prior",
                asset=key,
                blocking=True,
                description="out-of-fold KL below the class-prior baseline",
            )
        ],
    )
    def _model(
        context: dg.AssetExecutionContext,
        workspace: WorkspaceResource,
    ):
        import math

        from hms_core.plots import learning_curve_markdown
        from hms_core.training import fold_job, train_job

        cfg = workspace.config
        fold = context.partition_key
        k = fold_index(fold)
        # the same job and loggers as the torchrun entry point (python -m hms_core.training.ddp --fold ...)
        job = fold_job(cfg, name, fold)
        if spec.framework == "pytorch" and cfg.operations.training_gpus > 1:
            # one process per GPU of the step's pod; train_job below then resumes its finished checkpoint
            run_torchrun(context, cfg, name, fold)
        loggers = training_loggers(workspace, job, {"dagster_run_id": context.run.run_id})
        result = train_job(job, loggers=loggers, resume=True,
                           progress=progress_logger(context, f"{name} {fold}", unit="epoch "))  # fmt: skip
        m = result.metrics
        meta = {
            k2: (round(float(v), 4) if isinstance(v, float) else v)
            for k2, v in m.items()
            if isinstance(v, (int, str)) or (isinstance(v, float) and not math.isnan(v))
        }
        meta["fold_index"] = k
        meta.update({f"path_{p}": dg.MetadataValue.path(str(v)) for p, v in result.paths.items()})
        if result.history:
            meta["learning_curve"] = dg.MetadataValue.md(learning_curve_markdown(result.history))
        yield dg.MaterializeResult(metadata=meta)
        passed = m["val_kl"] < m["prior_kl"]
        yield dg.AssetCheckResult(
            check_name="beats_prior",
            passed=bool(passed),
            severity=dg.AssetCheckSeverity.ERROR if cfg.training.quality_gate else dg.AssetCheckSeverity.WARN,
            metadata={
                "val_kl": float(m["val_kl"]),
                "prior_kl": float(m["prior_kl"]),
                "ratio": float(m["val_kl"] / m["prior_kl"]),
            },
        )

    return _model


def build_model_assets(cfg) -> list:
    return [_build_model_asset(cfg, name) for name in cfg.enabled_models()]
