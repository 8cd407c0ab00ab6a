"""Ensemble stage: unpartitioned assets over every fold of every ensemble member (``hms_core.ensemble``).

``ensemble_model`` reads each member's out-of-fold and test predictions of all folds (an ``AllPartitionMapping``
on every ``model_<name>`` asset, so the lineage shows it) and carries the blocking check
``not_worse_than_best_member``: its downstream assets (report, submission, registry) run only when the ensemble's
nested-CV KL is not worse than its best member's.
"""

import dagster as dg

from hms_core.config import PlatformConfig
from hms_core.constants import HIGH_VOTE_THRESHOLD
from hms_dagster.automation import io_retry_policy
from hms_dagster.resources import WorkspaceResource, progress_logger
from hms_dagster.stages import (
    ENSEMBLE,
    ENSEMBLE_MODEL,
    EVALUATION_REPORT,
    FOLDS,
    REGISTERED_ENSEMBLE,
    SUBMISSION,
    ensemble_asset_keys,
    model_asset_key,
)

GROUP = ENSEMBLE
VERSION = "1"
CHECK = "not_worse_than_best_member"


def _kl_table_markdown(metrics: dict) -> str:
    lines = [f"| model | KL all rows [95 % CI] | KL >= {HIGH_VOTE_THRESHOLD} votes [95 % CI] |", "|---|---|---|"]
    for name, m in [*metrics["members"].items(), ("**ensemble (nested CV)**", metrics["ensemble"])]:
        lines.append(f"| {name} | {m['kl']:.4f} [{m['kl_low']:.4f}, {m['kl_high']:.4f}] | "
                     f"{m['kl_high_votes']:.4f} [{m['kl_high_votes_low']:.4f}, {m['kl_high_votes_high']:.4f}] |")  # fmt: skip
    return "\n".join(lines)


def _png_markdown(path, title: str) -> str:
    import base64
    from pathlib import Path

    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"**{title}**\n\n![{title}](data:image/png;base64,{data})"


def build_ensemble_assets(cfg: PlatformConfig) -> list:
    members = cfg.ensemble_members()
    if not members:
        return []
    code = f"{VERSION}-{cfg.result_hash('ensemble')}"
    keys = ensemble_asset_keys(cfg)

    @dg.asset(
        name=ENSEMBLE_MODEL,
        group_name=GROUP,
        deps=[
            *(dg.AssetDep(model_asset_key(m), partition_mapping=dg.AllPartitionMapping()) for m in members),
            dg.AssetDep(FOLDS),
        ],
        code_version=code,
        kinds={"scipy"},
        description="Learned blend of the members' out-of-fold predictions, chosen and scored by nested CV over "
        "the patient folds; calibration, uncertainty, review list.",
        check_specs=[
            dg.AssetCheckSpec(
                CHECK,
                asset=ENSEMBLE_MODEL,
                blocking=True,
                description="nested-CV KL not worse than the best member's out-of-fold KL",
            )
        ],
    )
    def ensemble_model(context: dg.AssetExecutionContext, workspace: WorkspaceResource):
        from hms_core.ensemble.build import build_ensemble

        cfg = workspace.config
        out = build_ensemble(cfg, progress=progress_logger(context, "ensemble", unit="step "))
        m = out.metrics
        meta = {
            "ensemble_kl": round(m["ensemble_kl"], 4),
            "ensemble_kl_high_votes": round(m["ensemble_kl_high_votes"], 4),
            "best_member": m["best_member"],
            "best_member_kl": round(m["best_member_kl"], 4),
            "gain_vs_best_pct": round(100 * m["gain_vs_best"], 2),
            "chosen_combiner": m["chosen_combiner"],
            "kept_members": ", ".join(m["kept_members"]),
            "dropped_members": ", ".join(m["dropped_members"]) or "none",
            "nested_kl_by_combiner": dg.MetadataValue.json({k: round(v, 4) for k, v in m["nested_kl_by_combiner"].items()}),
            "kl_table": dg.MetadataValue.md(_kl_table_markdown(m)),
            "ece_before": round(m["calibration"]["ece_before"], 4),
            "ece_after": round(m["calibration"]["ece_after"], 4),
            "entropy_spearman": round(m["uncertainty"]["entropy_spearman"], 4),
            "rows": m["n_rows"],
            **{f"path_{k}": dg.MetadataValue.path(str(v)) for k, v in out.paths.items()},
        }  # fmt: skip
        yield dg.MaterializeResult(metadata=meta)
        yield dg.AssetCheckResult(
            check_name=CHECK,
            passed=bool(m["check_not_worse_than_best"]),
            severity=dg.AssetCheckSeverity.ERROR if cfg.ensemble.quality_gate else dg.AssetCheckSeverity.WARN,
            metadata={
                "ensemble_kl": float(m["ensemble_kl"]),
                "best_member": m["best_member"],
                "best_member_kl": float(m["best_member_kl"]),
            },
        )

    @dg.asset(name=EVALUATION_REPORT, group_name=GROUP, deps=[ENSEMBLE_MODEL], code_version=code, kinds={"html"},
              description="Self-contained HTML evaluation report + PNGs; logged to MLflow and W&B.")  # fmt: skip
    def evaluation_report(context: dg.AssetExecutionContext, workspace: WorkspaceResource):
        import json

        from hms_core.ensemble.build import METRICS_FILE
        from hms_core.ensemble.report import write_report
        from hms_core.ensemble.trackers import log_report

        cfg = workspace.config
        paths = write_report(cfg.ensemble_dir, cfg.ensemble.report_examples, cfg.ensemble.seed)
        metrics = json.loads((cfg.ensemble_dir / METRICS_FILE).read_text())
        logged = log_report(cfg, paths, metrics, {"dagster_run_id": context.run.run_id})
        meta = {name: dg.MetadataValue.md(_png_markdown(p, name.replace("_", " "))) for name, p in paths.items()
                if str(p).endswith(".png")}  # fmt: skip
        meta["report_html"] = dg.MetadataValue.path(str(paths["html"]))
        meta.update({k: v for k, v in logged.items()})
        return dg.MaterializeResult(metadata=meta)

    assets = [ensemble_model, evaluation_report]

    if SUBMISSION in keys:

        @dg.asset(name=SUBMISSION, group_name=GROUP, deps=[ENSEMBLE_MODEL], code_version=code, kinds={"csv"},
                  retry_policy=io_retry_policy(cfg),
                  description="submission.csv in the exact Kaggle format (validated before it is written); "
                  "`hms submit` uploads it.")  # fmt: skip
        def submission(workspace: WorkspaceResource):
            from hms_core.ensemble.build import write_submission_file

            path, df = write_submission_file(workspace.config)
            return dg.MaterializeResult(metadata={
                "path": dg.MetadataValue.path(str(path)), "rows": len(df),
                "preview": dg.MetadataValue.md(df.head(5).to_markdown(index=False)),
            })  # fmt: skip

        assets.append(submission)

    if REGISTERED_ENSEMBLE in keys:

        @dg.asset(name=REGISTERED_ENSEMBLE, group_name=GROUP,
                  deps=[ENSEMBLE_MODEL, EVALUATION_REPORT, *([SUBMISSION] if SUBMISSION in keys else [])],
                  code_version=code, kinds={"mlflow"}, retry_policy=io_retry_policy(cfg),
                  description="A new version of the ensemble in the MLflow model registry (metrics, config, lineage).")  # fmt: skip
        def registered_ensemble(context: dg.AssetExecutionContext, workspace: WorkspaceResource):
            import json

            from hms_core.config import result_dump
            from hms_core.ensemble.build import METRICS_FILE
            from hms_core.registry_mlflow import register_ensemble

            cfg = workspace.config
            d = cfg.ensemble_dir
            files = [p for p in d.rglob("*") if p.is_file() and not p.name.startswith(".")]
            metrics = json.loads((d / METRICS_FILE).read_text())
            params = {f"ensemble.{k}": v for k, v in result_dump(cfg.ensemble).items()}
            info = register_ensemble(cfg.mlflow_uri, cfg.logging.mlflow_experiment, cfg.root / "mlflow_artifacts", d,
                                     cfg.ensemble.registered_model_name, files, metrics, params,
                                     {"dagster_run_id": context.run.run_id})  # fmt: skip
            return dg.MaterializeResult(metadata=info)

        assets.append(registered_ensemble)
    return assets
