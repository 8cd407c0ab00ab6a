"""Data stage: the raw HMS dataset, validated labels (one row per vote group) and patient-grouped folds."""

from __future__ import annotations

import time

import dagster as dg

from hms_core import folds as folds_lib
from hms_core import labels as labels_lib
from hms_core.io import write_parquet
from hms_core.raw import ensure_raw_dataset
from hms_core.validation import DataValidationError, validate_raw_dir
from hms_dagster.resources import WorkspaceResource

GROUP = "data"
VERSION = "1"


def _md_table(rows: list[dict]) -> dg.MetadataValue:
    if not rows:
        return dg.MetadataValue.md("(empty)")
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return dg.MetadataValue.md("\n".join(lines))


def build_data_assets(cfg) -> list:
    code = lambda *sections: f"{VERSION}-{cfg.section_hash(*sections)}"  # noqa: E731

    @dg.asset(
        group_name=GROUP,
        kinds={"parquet"},
        code_version=code("dataset"),
        description="The raw HMS competition folder (local, Kaggle download, or generated synthetic data), "
        "validated file by file.",
        check_specs=[
            dg.AssetCheckSpec("files_valid", asset="raw_dataset", description="schema, readability, lengths"),
            dg.AssetCheckSpec("nan_ratio", asset="raw_dataset", description="per-file NaN ratio summary"),
        ],
    )
    def raw_dataset(context: dg.AssetExecutionContext, workspace: WorkspaceResource):
        cfg = workspace.config
        t0 = time.perf_counter()
        last = [0.0]

        def progress(done: int, total: int) -> None:
            if total and (done == total or time.perf_counter() - last[0] > 5):
                last[0] = time.perf_counter()
                context.log.info(f"raw data: {done}/{total}")

        raw = ensure_raw_dataset(cfg, progress=progress)
        report = validate_raw_dir(raw.path, check_files=cfg.dataset.check_files)
        if not report.ok:
            raise DataValidationError(report)
        s = report.summary
        meta = {
            "path": dg.MetadataValue.path(str(raw.path)),
            "source": raw.source,
            "fingerprint": raw.fingerprint,
            "seconds": round(time.perf_counter() - t0, 2),
            **{k: v for k, v in s.items() if isinstance(v, (int, float, str))},
            "warnings": len(report.warnings),
        }
        if raw.generated:
            meta["generated"] = dg.MetadataValue.json(raw.generated)
        yield dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(raw.fingerprint))
        yield dg.AssetCheckResult(
            check_name="files_valid", passed=report.ok, metadata={"errors": len(report.errors)}
        )
        nan_stats = {k: v for k, v in s.items() if "nan" in k.lower() and isinstance(v, (int, float))}
        yield dg.AssetCheckResult(
            check_name="nan_ratio",
            passed=True,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={**nan_stats, "warnings": dg.MetadataValue.md(report.format() if report.warnings else "none")},
        )

    @dg.asset(
        group_name=GROUP,
        deps=[raw_dataset],
        kinds={"parquet", "duckdb"},
        code_version=code("dataset"),
        description="train.csv validated and deduplicated to one row per (eeg_id, votes) group, plus the test rows.",
        check_specs=[dg.AssetCheckSpec("vote_sums", asset="labels", blocking=True)],
    )
    def labels(context: dg.AssetExecutionContext, workspace: WorkspaceResource):
        cfg = workspace.config
        train = labels_lib.load_train_labels(cfg.raw_dir)
        test = labels_lib.load_test_rows(cfg.raw_dir)
        out = cfg.processed_dir
        write_parquet(out / "labels.parquet", train)
        write_parquet(out / "test_rows.parquet", test)
        votes = train[list(labels_lib.VOTE_COLUMNS)].sum(axis=1)
        counts = train["expert_consensus"].value_counts().to_dict()
        yield dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(out / "labels.parquet")),
                "rows": len(train),
                "eegs": int(train["eeg_id"].nunique()),
                "patients": int(train["patient_id"].nunique()),
                "test_rows": len(test),
                "rows_with_10plus_votes": int((votes >= 10).sum()),
                "class_counts": dg.MetadataValue.json({k: int(v) for k, v in counts.items()}),
                "duckdb": dg.MetadataValue.md(
                    f"```sql\nSELECT expert_consensus, count(*) FROM '{out / 'labels.parquet'}' GROUP BY 1\n```"
                ),
            }
        )
        yield dg.AssetCheckResult(
            check_name="vote_sums",
            passed=bool((votes > 0).all()),
            metadata={"min_votes": int(votes.min()), "max_votes": int(votes.max())},
        )

    @dg.asset(
        group_name=GROUP,
        deps=[labels],
        kinds={"parquet"},
        code_version=code("dataset.n_folds", "dataset.fold_seed"),
        description="Patient-grouped stratified k-fold assignment; defines the fold_<k> partitions.",
        check_specs=[
            dg.AssetCheckSpec("no_patient_in_two_folds", asset="folds", blocking=True),
            dg.AssetCheckSpec("class_balance", asset="folds"),
        ],
    )
    def folds(context: dg.AssetExecutionContext, workspace: WorkspaceResource):
        import pandas as pd

        cfg = workspace.config
        train = pd.read_parquet(cfg.processed_dir / "labels.parquet")
        assigned = folds_lib.assign_folds(train, n_folds=cfg.dataset.n_folds, seed=cfg.dataset.fold_seed)
        path = write_parquet(cfg.processed_dir / "folds.parquet", assigned)
        checks = folds_lib.check_folds(assigned)
        balance = folds_lib.class_balance(assigned)
        yield dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(path)),
                "n_folds": cfg.dataset.n_folds,
                "rows_per_fold": dg.MetadataValue.json(assigned["fold"].value_counts().sort_index().to_dict()),
                "class_balance": _md_table(balance.reset_index().to_dict("records")),
            }
        )
        for name in ("no_patient_in_two_folds", "class_balance"):
            passed, detail = checks[name]
            yield dg.AssetCheckResult(
                check_name=name,
                passed=bool(passed),
                severity=dg.AssetCheckSeverity.ERROR if name.startswith("no_") else dg.AssetCheckSeverity.WARN,
                metadata={k: dg.MetadataValue.json(v) if isinstance(v, (dict, list)) else v for k, v in detail.items()},
            )

    return [raw_dataset, labels, folds]
