"""Data stage: the raw HMS dataset, validated labels (one row per vote group) and patient-grouped folds."""

import time

import dagster as dg

from hms_core import folds as folds_lib
from hms_core import labels as labels_lib
from hms_core.constants import HIGH_VOTE_THRESHOLD
from hms_core.io import write_parquet, write_text
from hms_core.raw import RawDataUnavailableError, RefusedToDeleteError, ensure_raw_dataset
from hms_core.synthetic.generator import GENERATOR_VERSION
from hms_core.validation import DataValidationError, validate_raw_dir
from hms_dagster.automation import io_retry_policy
from hms_dagster.resources import WorkspaceResource, no_retry_on, progress_logger, require_input
from hms_dagster.stages import DATA, FOLDS, LABELS, RAW_DATASET

GROUP = DATA
VERSION = "1"

#: The config keys each data asset's output depends on, its upstream's included (so a change shows as stale on
#: everything it reaches at once); keys marked NOT_A_RESULT (check_files, synthetic.workers) never count.
RAW_KEYS = ("dataset.source", "dataset.raw_data_path", "dataset.synthetic", "dataset.kaggle_competition")
LABELS_KEYS = (*RAW_KEYS, "dataset.processed_data_path")
FOLDS_KEYS = (*LABELS_KEYS, "dataset.n_folds", "dataset.fold_seed")


def code_version(cfg, keys) -> str:
    """``<code VERSION>-<hash of the result-changing config keys>``: what Dagster compares to call an asset stale."""
    return f"{VERSION}-{cfg.result_hash(*keys)}"


def _md_table(rows: list[dict]) -> dg.MetadataValue:
    if not rows:
        return dg.MetadataValue.md("(empty)")
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return dg.MetadataValue.md("\n".join(lines))


def _flatten(summary: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in summary.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, str, bool)):
            out[f"{prefix}{k}"] = v
    return out


def save_resolved_config(cfg, path) -> None:
    write_text(path, f"# resolved from {cfg.source_path}\n{cfg.to_yaml()}")


def build_data_assets(cfg) -> list:
    @dg.asset(
        name=RAW_DATASET,
        group_name=GROUP,
        kinds={"parquet"},
        # the generator's version too: a generated set from an older generator is regenerated; real data keeps its
        # fingerprint (the data version), so nothing downstream goes stale when only the generator changed
        code_version=f"{code_version(cfg, RAW_KEYS)}-gen{GENERATOR_VERSION}",
        retry_policy=io_retry_policy(cfg),  # the download and the file reads
        description="The raw HMS competition folder (local, Kaggle download, or generated synthetic data), "
        "validated file by file.",
        check_specs=[
            dg.AssetCheckSpec("files_valid", asset=RAW_DATASET, description="schema, readability, lengths"),
            dg.AssetCheckSpec("nan_ratio", asset=RAW_DATASET, description="per-file NaN ratio summary"),
        ],
    )
    def raw_dataset(context: dg.AssetExecutionContext, workspace: WorkspaceResource):
        cfg = workspace.config
        t0 = time.perf_counter()
        with no_retry_on(DataValidationError, RawDataUnavailableError, RefusedToDeleteError):  # a retry can't fix
            raw = ensure_raw_dataset(cfg, progress=progress_logger(context, "raw data"))
            report = validate_raw_dir(raw.path, check_files=cfg.dataset.check_files)
            if not report.ok:
                raise DataValidationError(report)
        flat = _flatten(report.summary)
        meta = {
            "path": dg.MetadataValue.path(str(raw.path)),
            "source": raw.source,
            "fingerprint": raw.fingerprint,
            "seconds": round(time.perf_counter() - t0, 2),
            **flat,
        }
        if raw.generated:
            meta["generated"] = dg.MetadataValue.json(raw.generated)
        yield dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(raw.fingerprint))
        yield dg.AssetCheckResult(
            check_name="files_valid", passed=report.ok, metadata={"errors": len(report.errors)}
        )
        nan_stats = {k: v for k, v in flat.items() if "nan" in k.lower()}
        yield dg.AssetCheckResult(
            check_name="nan_ratio",
            passed=True,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                **nan_stats,
                "warnings": dg.MetadataValue.md(report.format() if report.warnings else "none"),
            },
        )

    @dg.asset(
        name=LABELS,
        group_name=GROUP,
        deps=[raw_dataset],
        kinds={"parquet", "duckdb"},
        code_version=code_version(cfg, LABELS_KEYS),
        description="train.csv validated and deduplicated to one row per (eeg_id, votes) group, plus the test rows.",
        check_specs=[dg.AssetCheckSpec("vote_sums", asset=LABELS, blocking=True)],
    )
    def labels(context: dg.AssetExecutionContext, workspace: WorkspaceResource):
        cfg = workspace.config
        require_input(cfg.raw_dir / "train.csv", RAW_DATASET, DATA)
        # raw_dataset opened and checked every file; here the table-level checks and deduplication run.
        train, _ = labels_lib.load_train_labels(cfg.raw_dir, check_files="none")
        test = labels_lib.load_test_windows(cfg.raw_dir)
        out = cfg.processed_dir
        labels_lib.write_labels(train, out / "labels.parquet")
        labels_lib.write_labels(test, out / "test_rows.parquet")
        save_resolved_config(cfg, out / "config.resolved.yaml")
        votes = train["total_votes"]
        counts = dict(train["expert_consensus"].value_counts().iter_rows())
        yield dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(out / "labels.parquet")),
                "rows": train.height,
                "eegs": train["eeg_id"].n_unique(),
                "patients": train["patient_id"].n_unique(),
                "test_rows": test.height,
                f"rows_with_{HIGH_VOTE_THRESHOLD}plus_votes": int((votes >= HIGH_VOTE_THRESHOLD).sum()),
                "class_counts": dg.MetadataValue.json({str(k): int(v) for k, v in counts.items()}),
                "duckdb": dg.MetadataValue.md(
                    "```python\nfrom hms_core.labels import query_labels\n"
                    f"query_labels('{out / 'labels.parquet'}', "
                    "'SELECT expert_consensus, count(*) AS n FROM labels GROUP BY 1')\n```"
                ),
            }
        )
        yield dg.AssetCheckResult(
            check_name="vote_sums",
            passed=bool((votes > 0).all()),
            metadata={"min_votes": int(votes.min()), "max_votes": int(votes.max())},
        )

    @dg.asset(
        name=FOLDS,
        group_name=GROUP,
        deps=[labels],
        kinds={"parquet"},
        code_version=code_version(cfg, FOLDS_KEYS),
        description="Patient-grouped stratified k-fold assignment; defines the fold_<k> partitions.",
        check_specs=[
            dg.AssetCheckSpec("no_patient_in_two_folds", asset=FOLDS, blocking=True),
            dg.AssetCheckSpec("class_balance", asset=FOLDS),
        ],
    )
    def folds(context: dg.AssetExecutionContext, workspace: WorkspaceResource):
        import polars as pl

        cfg = workspace.config
        train = pl.read_parquet(require_input(cfg.processed_dir / "labels.parquet", LABELS, DATA))
        assigned = folds_lib.make_folds(train, n_folds=cfg.dataset.n_folds, seed=cfg.dataset.fold_seed)
        # The labels with their fold: what every fold-partitioned asset reads.
        rows = train.join(assigned.select("eeg_id", "fold"), on="eeg_id", how="left")
        path = write_parquet(cfg.processed_dir / "folds.parquet", rows)
        report = folds_lib.check_folds(assigned, labels=train, n_folds=cfg.dataset.n_folds)
        balance = folds_lib.fold_class_balance(train, assigned)
        yield dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(path)),
                "n_folds": cfg.dataset.n_folds,
                "rows_per_fold": dg.MetadataValue.json(
                    {str(k): v for k, v in rows.group_by("fold").len().sort("fold").iter_rows()}
                ),
                "class_balance": _md_table(
                    [
                        {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                        for r in balance.to_dicts()
                    ]
                ),
            }
        )
        checks = report["checks"]
        blocking_ok = all(c["passed"] for c in checks.values() if c["blocking"])
        yield dg.AssetCheckResult(
            check_name="no_patient_in_two_folds",
            passed=bool(blocking_ok),
            metadata={n: dg.MetadataValue.json(c["details"]) for n, c in checks.items() if c["blocking"]},
        )
        cb = checks.get("class_balance", {"passed": True, "details": {}})
        yield dg.AssetCheckResult(
            check_name="class_balance",
            passed=bool(cb["passed"]),
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"details": dg.MetadataValue.json(cb["details"])},
        )

    return [raw_dataset, labels, folds]
