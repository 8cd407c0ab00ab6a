"""Export stage: refits on every fold where configured, ONNX engines of every final model and the verified
deployment package (``hms_core.export``).

Every asset is unpartitioned: they read every fold of every member (a package averages a member over its fold
models, as the ensemble does for test rows), they follow the unpartitioned ``ensemble_model`` and a Dagster run
cannot mix partitioned and unpartitioned assets. ``refit_<model>`` (one per member that ``export.final_models``
sets to ``refit``) trains that member once on every fold's rows (``hms_core.training.refit``: the length from the
fold runs, read through an ``AllPartitionMapping`` on ``model_<model>``); ``onnx_engines`` then exports the refit
(one engine) instead of the member's fold models, and the blend fitted on the fold models' out-of-fold predictions
is applied to its output. ``onnx_engines`` depends on ``ensemble_model`` and refuses to run
when that asset's blocking check (``not_worse_than_best_member``, with ``ensemble.quality_gate``) failed on its
latest materialization, so a gated ensemble is never exported from another run either.

Checks (blocking): ``fp32_parity`` (every fp32 engine within ``export.fp32_tolerance`` of torch on held-out windows;
ERROR when a member of the blend has none, WARN when only a reported member was left out), ``int8_tolerance`` (every
deployed int8 engine, read back from disk, within ``export.int8_kl_tolerance`` of its fp32 engine),
``manifest_verified`` (the written package loads with every SHA-256 checked), ``matches_torch_ensemble`` (the
package's fp32 probabilities on the test partition within ``export.fp32_tolerance`` of the torch ensemble's) and
``int8_ensemble_kl`` (the ``best`` precision's mean KL to the torch ensemble within ``export.int8_kl_tolerance``).
"""

import dagster as dg

from hms_core.config import PlatformConfig
from hms_core.models.specs import MODEL_SPECS
from hms_dagster.assets.models import INPUT_ASSET, model_result_keys
from hms_dagster.resources import WorkspaceResource, progress_logger, training_loggers
from hms_dagster.stages import (
    DEPLOYMENT_PACKAGE,
    ENSEMBLE_MODEL,
    EXPORT,
    FOUNDATION_ENCODER,
    ONNX_ENGINES,
    TEST_WINDOWS,
    export_asset_keys,
    model_asset_key,
    refit_asset_key,
)

GROUP = EXPORT
VERSION = "4"  # 2: fused MultiHeadAttention; 3: refits (export.final_models); 4: export.rewrites
REFIT_VERSION = "1"
ENSEMBLE_CHECK = "not_worse_than_best_member"
FP32_CHECK, INT8_CHECK = "fp32_parity", "int8_tolerance"
MANIFEST_CHECK, ENSEMBLE_PARITY_CHECK, INT8_ENSEMBLE_CHECK = (
    "manifest_verified",
    "matches_torch_ensemble",
    "int8_ensemble_kl",
)


def _fmt(v, spec: str = ".1e") -> str:
    return "-" if v is None else format(v, spec)


def engines_table_markdown(records: list[dict]) -> str:
    lines = ["| member | fold | precision | exporter | max abs diff | mean KL | size KiB | batch-1 ms | deployed / why not |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in records:
        size = r.get("size_bytes")
        lines.append(
            f"| {r['member']} | {r['fold']} | {r['precision']} | {r.get('exporter') or '-'} | {_fmt(r.get('max_abs_diff'))} "
            f"| {_fmt(r.get('kl'))} | {'-' if size is None else round(size / 1024)} | {_fmt(r.get('latency_ms_b1'), '.2f')} "
            f"| {'yes' if r['deployed'] else (r.get('reason') or 'no').replace('|', '/')[:160]} |"
        )
    return "\n".join(lines)


def _ensemble_gate(context: dg.AssetExecutionContext, cfg: PlatformConfig) -> None:
    """Refuse to export an ensemble whose blocking quality check failed on its latest materialization."""
    if not cfg.ensemble.quality_gate:
        return
    key = dg.AssetCheckKey(dg.AssetKey(ENSEMBLE_MODEL), ENSEMBLE_CHECK)
    rec = context.instance.event_log_storage.get_latest_asset_check_execution_by_key([key]).get(key)
    ev = rec.evaluation if rec is not None else None
    if ev is not None and not ev.passed:
        raise dg.Failure(f"the ensemble's blocking check {ENSEMBLE_MODEL}:{ENSEMBLE_CHECK} failed on its latest "
                         "materialization: its nested-CV KL is worse than its best member's; not exporting it "
                         "(fix the ensemble, or set ensemble.quality_gate: false)")  # fmt: skip


def _build_refit_asset(cfg: PlatformConfig, name: str):
    spec = MODEL_SPECS[name]
    key = refit_asset_key(name)

    @dg.asset(
        name=key,
        group_name=GROUP,
        deps=[
            dg.AssetDep(model_asset_key(name), partition_mapping=dg.AllPartitionMapping()),
            dg.AssetDep(INPUT_ASSET[spec.input_kind], partition_mapping=dg.AllPartitionMapping()),
            dg.AssetDep(TEST_WINDOWS),
            *(
                [dg.AssetDep(FOUNDATION_ENCODER)]
                if spec.config_cls.uses_foundation_encoder(cfg.models[name])
                else []
            ),
        ],
        code_version=f"{REFIT_VERSION}-{cfg.result_hash(*model_result_keys(name))}",
        kinds={spec.framework},
        pool="gpu" if spec.framework == "pytorch" else None,  # one accelerator: one torch training at a time
        description=f"{spec.description}, refit on every fold's rows for the median of the fold runs' best "
        "epochs / boosting rounds: the package deploys it instead of the fold models (export.final_models).",
    )
    def _refit(context: dg.AssetExecutionContext, workspace: WorkspaceResource):
        import math

        from hms_core.plots import learning_curve_markdown
        from hms_core.training.refit import plan_refit, refit_job, run_refit

        cfg = workspace.config
        plan = plan_refit(cfg, name)
        job = refit_job(cfg, name, plan)
        context.log.info(f"{name} refit: {plan.epochs} {'rounds' if plan.framework == 'lightgbm' else 'epochs'} "
                         f"(stages {list(plan.stage_epochs)}) from the folds' {plan.fold_counts}")  # fmt: skip
        loggers = training_loggers(workspace, job, {"dagster_run_id": context.run.run_id})
        out = run_refit(job, plan, loggers=loggers, resume=True,
                        progress=progress_logger(context, f"{name} refit", unit="epoch "))  # fmt: skip
        m = out.result.metrics
        meta = {
            "epochs" if plan.framework == "pytorch" else "boosting_rounds": plan.epochs,
            "stage_epochs": dg.MetadataValue.json(list(plan.stage_epochs)),
            "fold_counts": dg.MetadataValue.json(plan.fold_counts),
            "rule": plan.rule,
            "rows": out.rows,
            "train_partitions": len(job.train_dirs),
            "warmup_epochs": plan.warmup_epochs if plan.warmup_epochs is not None else "n/a",
            "in_sample_val_kl": round(float(m["val_kl"]), 4) if not math.isnan(m["val_kl"]) else "nan",
            "in_sample_note": f"{job.val_dir.name}'s rows are training rows of the refit: a check, not an "
            "estimate",
            "seconds": round(float(m.get("seconds", 0.0)), 1),
            **{f"path_{p}": dg.MetadataValue.path(str(v)) for p, v in out.result.paths.items()},
        }  # fmt: skip
        if out.result.history and plan.framework == "pytorch":
            meta["learning_curve"] = dg.MetadataValue.md(learning_curve_markdown(out.result.history))
        return dg.MaterializeResult(metadata=meta)

    return _refit


def build_export_assets(cfg: PlatformConfig) -> list:
    if not export_asset_keys(cfg):
        return []
    code = f"{VERSION}-{cfg.result_hash('export')}"
    refits = [_build_refit_asset(cfg, name) for name in cfg.refit_models()]

    @dg.asset(
        name=ONNX_ENGINES,
        group_name=GROUP,
        deps=[ENSEMBLE_MODEL, *(refit_asset_key(n) for n in cfg.refit_models())],
        code_version=code,
        kinds={"onnx"},
        description="Every final model of every packaged member (its fold models, or its refit) as ONNX (flip "
        "TTA in the graph), optimised by onnxruntime; fp32 and int8, each measured against torch; TensorRT "
        "fp16 on a GPU.",
        check_specs=[
            dg.AssetCheckSpec(
                FP32_CHECK,
                asset=ONNX_ENGINES,
                blocking=True,
                description="every fp32 engine within export.fp32_tolerance of torch",
            ),
            dg.AssetCheckSpec(
                INT8_CHECK,
                asset=ONNX_ENGINES,
                blocking=True,
                description="every deployed int8 engine within export.int8_kl_tolerance of fp32",
            ),
        ],
    )
    def onnx_engines(context: dg.AssetExecutionContext, workspace: WorkspaceResource):
        from hms_core.export.package import ENGINES_FILE, export_engines, recheck_int8

        cfg = workspace.config
        _ensemble_gate(context, cfg)
        res = export_engines(cfg, progress=progress_logger(context, "export", unit="fold model "),
                             log=context.log.info)  # fmt: skip
        recs = res.records
        fp32 = [r for r in recs if r["precision"] == "fp32"]
        int8 = [r for r in recs if r["precision"] == "int8"]
        trt = res.doc["tensorrt"]
        exporters = sorted({f"{r['member']}: {r.get('exporter')}" for r in fp32 if r["deployed"]})
        meta = {
            "engines": dg.MetadataValue.md(engines_table_markdown(recs)),
            "fp32_deployed": sum(r["deployed"] for r in fp32), "fp32_total": len(fp32),
            "int8_deployed": sum(r["deployed"] for r in int8), "int8_total": len(int8),
            "fp32_max_abs_diff": max((r["max_abs_diff"] for r in fp32 if r["deployed"]), default=0.0),
            "exporters": ", ".join(exporters),
            "not_deployed": dg.MetadataValue.json({f"{r['member']}/{r['fold']}/{r['precision']}": r.get("reason", "")
                                                   for r in recs if not r["deployed"]}),
            "tensorrt": trt["reason"] if not trt["available"] else f"available: {trt['reason']}",
            "path": dg.MetadataValue.path(str(res.out_dir / ENGINES_FILE)),
        }  # fmt: skip
        yield dg.MaterializeResult(metadata=meta)
        failed = [r for r in fp32 if not r["deployed"]]
        kept_failed = res.failed_kept_fp32
        yield dg.AssetCheckResult(
            check_name=FP32_CHECK,
            passed=not failed,
            severity=dg.AssetCheckSeverity.ERROR if kept_failed else dg.AssetCheckSeverity.WARN,
            metadata={"tolerance": cfg.export.fp32_tolerance, "failed": ", ".join(f"{r['member']}/{r['fold']}" for r in failed)
                      or "none", "blend_members_failed": ", ".join(kept_failed) or "none",
                      "max_abs_diff": meta["fp32_max_abs_diff"],
                      "why": "; ".join(f"{r['member']}/{r['fold']}: {r.get('reason', '')}" for r in failed)[:1000]
                      or "none"},
        )  # fmt: skip
        bad = recheck_int8(cfg, res)
        yield dg.AssetCheckResult(
            check_name=INT8_CHECK,
            passed=not bad,
            metadata={"tolerance": cfg.export.int8_kl_tolerance, "rechecked": meta["int8_deployed"],
                      "over_tolerance": ", ".join(bad) or "none"},
        )  # fmt: skip

    @dg.asset(
        name=DEPLOYMENT_PACKAGE,
        group_name=GROUP,
        deps=[ONNX_ENGINES],
        code_version=code,
        kinds={"onnx"},
        description="Versioned deployment package under models/deployments/: engines, preprocessing, layout, "
        "classes, config, model card, drift reference and SHA-256 manifest; latest.json points at it.",
        check_specs=[
            dg.AssetCheckSpec(
                MANIFEST_CHECK,
                asset=DEPLOYMENT_PACKAGE,
                blocking=True,
                description="the package loads with every file's SHA-256 verified",
            ),
            dg.AssetCheckSpec(
                ENSEMBLE_PARITY_CHECK,
                asset=DEPLOYMENT_PACKAGE,
                blocking=True,
                description="fp32 package vs torch ensemble on the test partition",
            ),
            dg.AssetCheckSpec(
                INT8_ENSEMBLE_CHECK,
                asset=DEPLOYMENT_PACKAGE,
                blocking=True,
                description="the 'best' precision's mean KL to the torch ensemble",
            ),
        ],
    )
    def deployment_package(context: dg.AssetExecutionContext, workspace: WorkspaceResource):
        from hms_core.export import PackageError, load_package
        from hms_core.export.package import build_package, load_engines

        cfg = workspace.config
        res = build_package(cfg, load_engines(cfg), log=context.log.info)
        p, e = res.checks, cfg.export
        meta = {
            "version": res.version, "path": dg.MetadataValue.path(str(res.path)),
            "files": res.manifest_files, "total_mib": round(res.total_bytes / 2**20, 2),
            "members": ", ".join(m["name"] for m in res.meta["members"]),
            "blend": f"{res.meta['combiner']['kind']} over {', '.join(res.meta['combiner']['members'])}",
            "left_out": dg.MetadataValue.json(res.meta["left_out"]),
            "best_precision": dg.MetadataValue.json(p["best_precision"]),
            "fp32_max_abs_vs_torch": p["fp32_max_abs_vs_torch"], "best_kl_vs_torch": p["best_kl_vs_torch"],
            "test_rows": p["test_rows"], "reference": res.meta.get("reference") or "none",
            "model_card": dg.MetadataValue.path(str(res.path / "model_card.md")),
        }  # fmt: skip
        yield dg.MaterializeResult(metadata=meta)
        try:
            load_package(res.path, verify=True)
            ok, why = True, "every file matches manifest.json"
        except PackageError as ex:
            ok, why = False, str(ex)
        yield dg.AssetCheckResult(check_name=MANIFEST_CHECK, passed=ok,
                                  metadata={"files": res.manifest_files, "result": why})  # fmt: skip
        yield dg.AssetCheckResult(
            check_name=ENSEMBLE_PARITY_CHECK, passed=p["fp32_max_abs_vs_torch"] <= e.fp32_tolerance,
            metadata={"max_abs_diff": p["fp32_max_abs_vs_torch"], "tolerance": e.fp32_tolerance,
                      "test_rows": p["test_rows"]},
        )  # fmt: skip
        yield dg.AssetCheckResult(
            check_name=INT8_ENSEMBLE_CHECK, passed=p["best_kl_vs_torch"] <= e.int8_kl_tolerance,
            metadata={"mean_kl": p["best_kl_vs_torch"], "tolerance": e.int8_kl_tolerance,
                      "max_abs_diff": p["best_max_abs_vs_torch"]},
        )  # fmt: skip

    return [*refits, onnx_engines, deployment_package]
