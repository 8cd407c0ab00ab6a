"""Preprocessing stage: per-fold processed windows, spectrograms, Kaggle spectrograms and features.

One streaming pass (``hms_core.partition.build_partition``) writes all of a fold's arrays; the multi-asset
reports them as separate assets so lineage shows what each classifier reads.
"""

from pathlib import Path

import dagster as dg

from hms_core.partition import CHECK_NAMES
from hms_dagster.assets.data import FOLDS_KEYS, LABELS_KEYS
from hms_dagster.automation import io_retry_policy
from hms_dagster.partitions import fold_index, fold_partitions
from hms_dagster.resources import WorkspaceResource, progress_logger, require_input
from hms_dagster.stages import (
    DATA,
    EEG_WINDOWS,
    FOLDS,
    KAGGLE_SPECTROGRAMS,
    LABELS,
    PREPROCESS_FOLD,
    PREPROCESSING,
    RAW_DATASET,
    SPECTROGRAMS,
    TEST_WINDOWS,
    preprocessing_asset_keys,
)

GROUP = PREPROCESSING
VERSION = "2"  # 2: partition layout v2 (manifest carries the layout), bad_window column

#: The config keys a fold's (and the test set's) arrays depend on, upstream ones included; NOT_A_RESULT keys
#: (workers, the I/O batch size, check thresholds) are dropped by result_hash.
PREPROCESSING_KEYS = (*FOLDS_KEYS, "preprocessing")
TEST_WINDOWS_KEYS = (*LABELS_KEYS, "preprocessing")


def code_version(cfg, keys) -> str:
    return f"{VERSION}-{cfg.result_hash(*keys)}"


def _build(context, cfg, rows, split: str, out_dir: Path) -> dict:
    """One streaming pass over ``rows`` of the ``train`` or ``test`` split into ``out_dir``; the manifest."""
    from hms_core.partition import build_partition

    return build_partition(
        rows,
        eeg_dir=cfg.raw_dir / f"{split}_eegs",
        spec_dir=cfg.raw_dir / f"{split}_spectrograms",
        out_dir=out_dir,
        cfg=cfg.preprocessing,
        batch_size=cfg.dataset.processing_batch_size,
        progress=progress_logger(context, out_dir.name, unit="windows "),
    ).to_dict()


def _metadata_for(key: str, manifest: dict, out_dir: Path) -> dict:
    """Split one partition manifest into the metadata of each asset it produced."""
    shapes = manifest.get("shapes", {})
    common = {"rows": manifest.get("n_rows"), "seconds": manifest.get("seconds")}
    if key == EEG_WINDOWS:
        files = ["index.parquet", "bipolar.npy", "referential.npy", "ekg.npy", "quality.npy"]
        extra = {
            "flagged_fraction": manifest.get("flagged_fraction"),
            "n_flagged_channels": manifest.get("n_flagged_channels"),
            "records_per_second": manifest.get("records_per_second"),
            "step_seconds": dg.MetadataValue.json(manifest.get("step_seconds", {})),
        }
    elif key == SPECTROGRAMS:
        files = sorted(p.name for p in out_dir.glob("spec_*.npy") if p.name != "spec_kaggle.npy")
        extra = {
            "frequency_axes_hz": dg.MetadataValue.json(
                {k: [min(v), max(v), len(v)] for k, v in manifest.get("frequency_axes", {}).items() if v}
            )
        }
    elif key == KAGGLE_SPECTROGRAMS:
        files = ["spec_kaggle.npy"]
        extra = {}
    else:
        files = ["features.parquet"]
        extra = {"n_features": manifest.get("n_features")}
    present = [f for f in files if (out_dir / f).exists()]
    return {
        **common,
        **{k: v for k, v in extra.items() if v is not None},
        "path": dg.MetadataValue.path(str(out_dir)),
        "files": dg.MetadataValue.json(
            {
                f: "x".join(map(str, shapes[f.split(".")[0]])) if f.split(".")[0] in shapes else "table"
                for f in present
            }
        ),
        "bytes": sum((out_dir / f).stat().st_size for f in present),
    }


def build_preprocessing_assets(cfg) -> list:
    keys = preprocessing_asset_keys(cfg)
    code = code_version(cfg, PREPROCESSING_KEYS)
    specs = [
        dg.AssetSpec(k, group_name=GROUP, deps=[FOLDS, RAW_DATASET], code_version=code, kinds={"numpy"})
        for k in keys
    ]
    check_specs = [dg.AssetCheckSpec(c, asset=EEG_WINDOWS, blocking=True) for c in CHECK_NAMES]

    @dg.multi_asset(
        name=PREPROCESS_FOLD,
        specs=specs,
        check_specs=check_specs,
        partitions_def=fold_partitions(cfg),
        retry_policy=io_retry_policy(cfg),  # reads the raw recordings, writes the fold's arrays
        description="Filter, montage, artifact handling, scaling, spectrograms and features for one fold.",
    )
    def preprocess_fold(context: dg.AssetExecutionContext, workspace: WorkspaceResource):
        import pandas as pd

        from hms_core.partition import partition_checks
        from hms_core.plots import example_figure_markdown

        cfg = workspace.config
        k = fold_index(context.partition_key)
        all_rows = pd.read_parquet(require_input(cfg.processed_dir / "folds.parquet", FOLDS, DATA))
        rows = all_rows[all_rows["fold"] == k].reset_index(drop=True)
        patient_folds = dict(zip(all_rows["patient_id"], all_rows["fold"]))
        out_dir = cfg.processed_dir / "windows" / context.partition_key
        manifest = _build(context, cfg, rows, "train", out_dir)
        plots = example_figure_markdown(out_dir)
        for key in keys:
            meta = _metadata_for(key, manifest, out_dir)
            if key in (EEG_WINDOWS, SPECTROGRAMS) and plots:
                meta["examples"] = dg.MetadataValue.md(plots[key])
            yield dg.MaterializeResult(asset_key=key, metadata=meta)
        for name, (passed, detail) in partition_checks(
            out_dir, cfg.preprocessing, fold=k, patient_folds=patient_folds
        ).items():
            yield dg.AssetCheckResult(
                asset_key=EEG_WINDOWS, check_name=name, passed=bool(passed), metadata=_jsonable(detail)
            )

    @dg.asset(
        name=TEST_WINDOWS,
        group_name=GROUP,
        deps=[LABELS, RAW_DATASET],
        code_version=code_version(cfg, TEST_WINDOWS_KEYS),
        kinds={"numpy"},
        retry_policy=io_retry_policy(cfg),
        description="The test set preprocessed exactly like the training windows (for test predictions).",
    )
    def test_windows(context: dg.AssetExecutionContext, workspace: WorkspaceResource):
        import pandas as pd

        cfg = workspace.config
        rows = pd.read_parquet(require_input(cfg.processed_dir / "test_rows.parquet", LABELS, DATA)).assign(
            fold=-1
        )
        out_dir = cfg.processed_dir / "windows" / "test"
        manifest = _build(context, cfg, rows, "test", out_dir)
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(out_dir)),
                "rows": manifest.get("n_rows"),
                "seconds": manifest.get("seconds"),
            }
        )

    return [preprocess_fold, test_windows]


def _jsonable(detail: dict) -> dict:
    out = {}
    for k, v in (detail or {}).items():
        if isinstance(v, (dict, list, tuple)):
            out[k] = dg.MetadataValue.json(v if not isinstance(v, tuple) else list(v))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
        else:
            out[k] = str(v)
    return out
