"""Scan stage: the distilled scanning model (``scan_model``) and one ``scan_timeline`` partition per recording
dropped into ``scan.recordings_dir``.

``scan_model`` distils the deployment package's ensemble (:func:`hms_core.scanning.distill.distill`: teacher windows
from the training recordings, a small CNN on shared STFT frames, exported to ONNX) into
``<root>/models/scanning/<package version>/``, written into a temporary folder and moved into place when complete.
Its metadata carry the held-out KL(ensemble || distilled) beside the KL a constant class prior would have, the top
class agreement, the model's size and its speed against the ensemble's; a check warns when it does not beat the
prior. The scan asset and ``hms scan`` then use it by default (``scan.engine: auto``: the cascade, the distilled
model on every window and the ensemble on its seizure candidates; ``scan.distilled_model`` names another folder).

A unit drops EDF/BDF files into the folder; :func:`build_scan_sensor`'s sensor (cursor: the files it has seen,
with their size and modification time) adds each new file as a dynamic partition of ``recordings`` and requests
its run (run key = file + size + mtime, so a request is never repeated and a replaced file is scanned again).
The asset calls :func:`hms_core.scanning.engine.scan_recording` and records the timeline plot, the burden table,
the figures and the output paths as metadata. It depends on the deployment package (or, before the export stage
exists, on the trained ensemble) so the lineage shows what classified the windows.
"""

import base64
import json
from pathlib import Path

import dagster as dg

from hms_core.config import PlatformConfig
from hms_dagster.resources import WorkspaceResource, no_retry_on, progress_logger
from hms_dagster.stages import (
    ENSEMBLE_MODEL,
    RAW_DATASET,
    RECORDINGS_PARTITIONS,
    SCAN,
    SCAN_JOB,
    SCAN_MODEL,
    SCAN_MODEL_JOB,
    SCAN_SENSOR,
    SCAN_TIMELINE,
)

__all__ = ["RECORDING_SUFFIXES", "build_scan_definitions", "list_recordings", "recordings_partitions"]

GROUP = SCAN
VERSION = "1"
#: Files the sensor picks up: what :func:`hms_core.recording.open_recording` reads (EDF/BDF via pyEDFlib, the
#: rest via MNE).
RECORDING_SUFFIXES: tuple[str, ...] = (".edf", ".bdf", ".rec", ".fif", ".vhdr", ".set", ".cnt", ".gdf")
#: A file modified less than this long ago may still be copying in: the sensor waits for it.
SETTLE_S = 10.0

recordings_partitions = dg.DynamicPartitionsDefinition(name=RECORDINGS_PARTITIONS)


def recordings_dir(cfg: PlatformConfig) -> Path:
    return cfg.root / cfg.scan.recordings_dir


def list_recordings(folder: Path, settle_s: float = SETTLE_S) -> dict[str, str]:
    """Recording file name -> ``"<size>-<mtime_ns>"`` of the settled recordings directly in ``folder``."""
    import time

    if not folder.is_dir():
        return {}
    now = time.time()
    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in RECORDING_SUFFIXES:
            st = p.stat()
            if now - st.st_mtime >= settle_s:
                out[p.name] = f"{st.st_size}-{st.st_mtime_ns}"
    return out


def _png_markdown(path: Path, title: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"**{title}**\n\n![{title}](data:image/png;base64,{data})"


def _burden_markdown(summary: dict) -> str:
    lines = ["| class | events | burden (of evaluated time) | longest (s) | first onset (s) | worst stretch burden |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for cls, c in summary.get("classes", {}).items():
        burden = "n/a" if c.get("burden") is None else f"{100 * c['burden']:.1f} %"
        worst = c.get("worst_stretch", {}).get("burden")
        first = c.get("first_onset_s")
        lines.append(f"| {cls} | {c['n_events']} | {burden} | {c['longest_event_s']:.0f} | "
                     f"{'-' if first is None else f'{first:.0f}'} | "
                     f"{'n/a' if worst is None else f'{100 * worst:.1f} %'} |")  # fmt: skip
    return "\n".join(lines)


def _upstream(asset_keys: set[str]) -> list[str]:
    """What classifies the windows: the deployment package when the export stage is built, else the ensemble."""
    from hms_dagster import stages

    package = getattr(stages, "DEPLOYMENT_PACKAGE", None)
    if package and package in asset_keys:
        return [package]
    return [ENSEMBLE_MODEL] if ENSEMBLE_MODEL in asset_keys else []


#: The distilled model beats the constant class prior on the held-out patients' windows (a warning otherwise).
BEATS_PRIOR_CHECK = "beats_class_prior"


def scan_model_metadata(metrics: dict, meta: dict, folder: Path) -> dict:
    """The scan_model asset's metadata from ``distill.json``'s figures."""
    kl, prior = metrics.get("kl_heldout"), metrics.get("kl_heldout_constant_prior")
    speed, teacher = metrics.get("windows_per_s"), metrics.get("teacher_windows_per_s")
    return {
        "kl_heldout_vs_ensemble": kl,
        "kl_heldout_constant_prior": prior,
        "kl_train_vs_ensemble": metrics.get("kl_train"),
        "top1_agreement_heldout": metrics.get("top1_agreement_heldout"),
        "teacher_windows": metrics.get("windows"),
        "heldout_windows": metrics.get("heldout_windows"),
        "heldout_patients": len(metrics.get("heldout_patients", [])),
        "parameters": metrics.get("parameters"),
        "model_bytes": metrics.get("model_bytes"),
        "windows_per_s": speed,
        "teacher_windows_per_s": teacher,
        "speedup_vs_ensemble": round(speed / teacher, 1) if speed and teacher else None,
        "teacher": meta.get("teacher"),
        "onnx_max_abs_logit_diff": meta.get("onnx_max_abs_logit_diff"),
        "path": dg.MetadataValue.path(str(folder)),
    }


_BEATS_PRIOR_SPEC = dg.AssetCheckSpec(
    BEATS_PRIOR_CHECK, asset=SCAN_MODEL,
    description="held-out KL(ensemble || distilled) below the KL of a constant class prior",
)  # fmt: skip


def build_scan_definitions(cfg: PlatformConfig, asset_keys: set[str]) -> tuple[list, dict, list]:
    """(assets, jobs, sensors) of the scan stage; ``asset_keys``: the keys of the assets already defined."""
    upstream = _upstream(asset_keys)

    @dg.asset(
        name=SCAN_MODEL,
        group_name=GROUP,
        deps=[*upstream, *([RAW_DATASET] if RAW_DATASET in asset_keys else [])],
        code_version=f"{VERSION}-{cfg.result_hash('scan.distill', 'scan.max_missing_channels', 'scan.precision')}",
        kinds={"onnx", "pytorch"},
        check_specs=[_BEATS_PRIOR_SPEC],
        description="The scanning model distilled from the deployment package's ensemble (no labels): "
        "<root>/models/scanning/<package version>/, used by scan_timeline and `hms scan` (scan.engine auto).",
    )
    def scan_model(context: dg.AssetExecutionContext, workspace: WorkspaceResource):
        from hms_core.scanning.distill import distill

        cfg = workspace.config
        res = distill(cfg, None, progress=progress_logger(context, "teacher recordings"), log=context.log.info)
        kl, prior = res.metrics.get("kl_heldout"), res.metrics.get("kl_heldout_constant_prior")
        ok = kl is not None and prior is not None and kl < prior
        check = dg.AssetCheckResult(
            check_name=BEATS_PRIOR_CHECK, passed=bool(ok), severity=dg.AssetCheckSeverity.WARN,
            metadata={"kl_heldout": kl, "kl_constant_prior": prior},
            description=None if ok else "the distilled model does not beat a constant class prior on held-out "
            "windows: scan with scan.engine ensemble, or distil from more teacher windows",
        )  # fmt: skip
        return dg.MaterializeResult(metadata=scan_model_metadata(res.metrics, res.meta, res.folder),
                                    check_results=[check])  # fmt: skip

    @dg.asset(
        name=SCAN_TIMELINE,
        group_name=GROUP,
        partitions_def=recordings_partitions,
        deps=[*upstream, SCAN_MODEL],
        code_version=f"{VERSION}-{cfg.result_hash('scan')}",
        kinds={"onnx", "pandas"},
        description="Class-probability timeline of one recording of scan.recordings_dir (10-s windows every "
        "scan.stride_s s, not-evaluated windows marked), events.tsv, EDF+ annotations, burden summary, plot.",
    )
    def scan_timeline(context: dg.AssetExecutionContext, workspace: WorkspaceResource):
        from hms_core.eeg_io import RecordError
        from hms_core.scanning.engine import scan_recording

        cfg = workspace.config
        name = context.partition_key
        path = recordings_dir(cfg) / name
        out = cfg.root / cfg.scan.out_dir / Path(name).stem
        with no_retry_on(RecordError, FileNotFoundError):
            res = scan_recording(path, None, cfg.scan, out, platform=cfg,
                                 progress=progress_logger(context, f"scan {name}", unit="window "))  # fmt: skip
        summary = res.outputs.summary
        paths = res.outputs.paths
        meta = {
            "timeline": dg.MetadataValue.md(_png_markdown(paths["plot"], f"{name}: timeline")),
            "burden": dg.MetadataValue.md(_burden_markdown(summary)),
            "engine": res.engine,
            "package_version": res.package_version,
            "duration_h": round(res.duration_s / 3600, 3),
            "windows": res.n_windows,
            "windows_evaluated": res.n_evaluated,
            "windows_ensemble": res.n_ensemble,
            "not_evaluated_s": summary.get("not_evaluated_s"),
            "events": len(res.outputs.events),
            "scan_seconds": round(res.seconds, 2),
            "realtime_factor": round(res.realtime_factor, 1),
            "channels_missing": ", ".join(res.channels_missing) or "none",
            "summary": dg.MetadataValue.json(json.loads(paths["summary"].read_text())),
            **{f"path_{k}": dg.MetadataValue.path(str(v)) for k, v in paths.items()},
        }
        return dg.MaterializeResult(metadata=meta)

    job = dg.define_asset_job(
        SCAN_JOB, selection=dg.AssetSelection.assets(SCAN_TIMELINE), tags={"hms/job": SCAN_JOB},
        description="Scan one recording of scan.recordings_dir (a partition of 'recordings').",
    )  # fmt: skip
    model_job = dg.define_asset_job(
        SCAN_MODEL_JOB, selection=dg.AssetSelection.assets(SCAN_MODEL), tags={"hms/job": SCAN_MODEL_JOB},
        description="Distil the deployment package's ensemble into the scanning model.",
    )  # fmt: skip
    return [scan_model, scan_timeline], {SCAN_JOB: job, SCAN_MODEL_JOB: model_job}, [build_scan_sensor(cfg, job)]


def build_scan_sensor(cfg: PlatformConfig, job) -> dg.SensorDefinition:
    folder = recordings_dir(cfg)

    @dg.sensor(name=SCAN_SENSOR, job=job, minimum_interval_seconds=30,
               description=f"New recordings in {folder}: add a 'recordings' partition and scan it.")  # fmt: skip
    def scan_recordings_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        files = list_recordings(folder)
        new = {name: sig for name, sig in files.items() if seen.get(name) != sig}
        if not new:
            return dg.SensorResult(skip_reason=f"no new recordings in {folder}")
        known = set(context.instance.get_dynamic_partitions(RECORDINGS_PARTITIONS))
        add = sorted(n for n in new if n not in known)
        return dg.SensorResult(
            run_requests=[dg.RunRequest(partition_key=n, run_key=f"{n}@{s}") for n, s in sorted(new.items())],
            dynamic_partitions_requests=[recordings_partitions.build_add_request(add)] if add else [],
            cursor=json.dumps({**seen, **new}, sort_keys=True),
        )

    return scan_recordings_sensor
