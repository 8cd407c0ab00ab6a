"""The export stage on files: every fold model of every packaged member to ONNX, gated by parity, then the package.

:func:`export_engines` (the ``onnx_engines`` asset) writes into ``<root>/models/export/``: for each member and fold
the fp32 engine (dynamo exporter first with ``export.exporter: auto``, the TorchScript exporter where dynamo fails
or fails parity) and, for torch members, the int8 engine (dynamic for recurrent/attention models, static calibrated
on the fold's training windows for CNNs); each measured on the fold's held-out validation windows against torch
(:meth:`~hms_core.training.predict.TrainedModel.predict`, flip TTA included) with inputs built by the runtime
(:func:`hms_core.export.runtime.member_inputs`), so the parity covers the numpy input building too. An fp32 engine
over ``export.fp32_tolerance`` (max abs probability difference) or an int8 one over ``export.int8_kl_tolerance``
(mean KL(torch || int8)) is not deployed; ``engines.json`` says why. A member that ``export.final_models`` sets to
``refit`` has one final model instead of one per fold, ``<root>/models/<member>/refit``
(:mod:`hms_core.training.refit`), exported and measured the same way on fold 0's parity rows (:func:`parity_fold`);
the package lists it as the member's only fold ``refit``, so the runtime runs it where it would average the fold
engines.

:func:`build_package` (the ``deployment_package`` asset) copies the deployable engines into a new version folder
with ``package.json``, the config, the model card, the drift reference and the SHA-256 manifest, moves it into
place in one rename, points ``latest.json`` at it, and checks it against the torch ensemble on the test partition.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from hms_core.config import PlatformConfig
from hms_core.constants import CLASSES, KAGGLE_SPECTROGRAM
from hms_core.export.runtime import (
    CARD_FILE,
    DEPLOYMENTS_DIR,
    FORMAT,
    LATEST_FILE,
    MANIFEST_FILE,
    PACKAGE_FILE,
    PackageError,
    kl_rows,
    load_package,
    make_session,
    member_inputs,
    package_files,
    run_probs,
)
from hms_core.io import sha256_file, write_json, write_text
from hms_core.partition import PartitionError

__all__ = ["ENGINES_FILE", "EXPORT_DIR", "SMALL_BATCH", "EnginesResult", "PackageResult", "batch_from_partition",
           "build_package", "export_engines", "member_folds", "package_members", "parity_fold",
           "tensorrt_status"]  # fmt: skip

EXPORT_DIR = "export"
ENGINES_FILE = "engines.json"
REFERENCE_DIR = "reference"


def batch_from_partition(part: Any, rows: np.ndarray | None = None) -> SimpleNamespace:
    """Rows of a processed partition shaped like a :class:`hms_core.preprocess.BatchOutput` (bipolar,
    spectrograms, features), as stored: what a model trained on the partition read."""
    rows = np.arange(len(part)) if rows is None else np.asarray(rows)
    specs = {t: np.asarray(part.array(f"spec_{t}")[rows]) for t in part.layout.spectrogram_types
             if part.has(f"spec_{t}")}  # fmt: skip
    feats = None
    try:
        feats = part.features().iloc[rows].reset_index(drop=True)
    except PartitionError:  # a partition without features.parquet: members reading features then say so
        feats = None
    return SimpleNamespace(bipolar=np.asarray(part.array("bipolar")[rows]), spectrograms=specs, features=feats)


def tensorrt_status() -> tuple[bool, str]:
    """Whether TensorRT fp16 engines can be built here, and why not."""
    import importlib.util

    import onnxruntime as ort

    if importlib.util.find_spec("tensorrt") is None:
        return False, ("the tensorrt Python package is not installed (optional GPU extra; its wheel downloads from "
                       "NVIDIA's index)")  # fmt: skip
    import torch

    if not torch.cuda.is_available():
        return False, "tensorrt imports but no CUDA GPU is visible (torch.cuda.is_available() is False)"
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        return False, (f"onnxruntime has no TensorrtExecutionProvider (providers: {ort.get_available_providers()}); "
                       "install onnxruntime-gpu")  # fmt: skip
    return True, f"TensorRT on {torch.cuda.get_device_name(0)}"


def package_members(cfg: PlatformConfig, kept: list[str]) -> list[str]:
    """The members the package holds (``export.members``): every ensemble member, the kept ones, or a list that
    includes every kept member."""
    names = cfg.ensemble_members()
    sel = cfg.export.members
    if sel == "all":
        return list(names)
    if sel == "kept":
        return list(kept)
    unknown = [m for m in sel if m not in names]
    lacking = [m for m in kept if m not in sel]
    if unknown or lacking:
        raise ValueError(
            f"Invalid value for the 'export.members' parameter: {sel}. It must be a subset of the ensemble members "
            f"{names} that includes every member the ensemble kept {kept}"
            + (f" (unknown: {unknown})" if unknown else "")
            + (f" (missing kept: {lacking})" if lacking else "")
        )
    return [m for m in names if m in sel]


# --- engines --------------------------------------------------------------------------------------------------
@dataclass
class EnginesResult:
    out_dir: Path
    doc: dict[str, Any]  # engines.json
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed_kept_fp32(self) -> list[str]:
        """``member/fold`` of the blend whose fp32 engine is not deployable: the package cannot reproduce it."""
        kept = set(self.doc["kept"])
        return [f"{r['member']}/{r['fold']}" for r in self.records
                if r["precision"] == "fp32" and r["member"] in kept and not r["deployed"]]  # fmt: skip


def _latency_ms(session: Any, x: np.ndarray, runs: int) -> float:
    session.run(["probs"], {"x": x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(["probs"], {"x": x})
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


class _Partitions:
    """Each fold's partition opened once (opening one reads its index and features tables)."""

    def __init__(self, cfg: PlatformConfig) -> None:
        self.cfg, self._open = cfg, {}

    def __call__(self, fold: str) -> Any:
        from hms_core.partition import load_partition

        if fold not in self._open:
            self._open[fold] = load_partition(self.cfg.processed_dir / "windows" / fold)
        return self._open[fold]


def member_folds(cfg: PlatformConfig, name: str) -> list[str]:
    """The final models the package deploys for member ``name``: its refit on every fold
    (``export.final_models: {name: refit}``, :mod:`hms_core.training.refit`) or its fold models."""
    from hms_core.training.refit import REFIT

    return [REFIT] if cfg.export.final_models.get(name) == "refit" else list(cfg.fold_names)


def parity_fold(cfg: PlatformConfig, fold: str) -> str:
    """The fold partition whose rows measure the engine of final model ``fold``: the fold's own validation rows
    (held out from that fold model), fold 0's for a refit. A refit trained on those rows, but parity compares the
    engine with the torch module it was exported from on the same inputs: it needs inputs that did not calibrate
    int8 (the calibration windows come from the other folds), not rows the model never saw; the package's check
    against the torch ensemble runs on the test partition, held out from every model."""
    return fold if fold in cfg.fold_names else cfg.fold_names[0]


def _calibration_inputs(cfg: PlatformConfig, member: dict[str, Any], fold: str, layout: dict[str, Any],
                        parts: _Partitions) -> np.ndarray:  # fmt: skip
    """Up to ``export.calibration_windows`` inputs from the fold's training partitions (every other fold)."""
    want, xs = cfg.export.calibration_windows, []
    others = [f for f in cfg.fold_names if f != fold]
    per = -(-want // max(len(others), 1))
    for f in others:
        part = parts(f)
        rows = np.linspace(0, len(part) - 1, min(per, len(part))).round().astype(int)
        xs.append(member_inputs(member, batch_from_partition(part, np.unique(rows)), layout))
    return np.concatenate(xs)[:want]


def _torch_reference(tm: Any, part: Any, rows: np.ndarray) -> np.ndarray:
    """What :meth:`TrainedModel.predict` gives for ``rows`` of ``part`` (the same code, on a row subset)."""
    from hms_core.training.data import RowDataset
    from hms_core.training.inputs import feature_matrix
    from hms_core.training.predict import predict_torch

    if tm.input_kind == "features":
        return tm.model.predict_proba(feature_matrix(part, tm.config["feature_names"])[rows])
    pairs = np.stack([np.zeros(len(rows), np.int64), rows.astype(np.int64)], axis=1)
    ds = RowDataset([part], pairs, tm.input_spec, with_targets=False)
    return predict_torch(tm.model, ds, 64, tm.device, tm.config["training"].get("flip_tta", True))


def _member_entry(tm: Any, name: str, refit_dir: Path | None = None) -> dict[str, Any]:
    """A member's entry of ``package.json``; ``refit_dir``: the member deploys this refit (its ``refit.json``:
    epochs, rows, the rule) instead of its fold models."""
    from hms_core.training.refit import read_refit

    kind = tm.input_kind
    entry = {"name": name, "input_kind": kind,
             "input_spec": None if tm.input_spec is None else tm.input_spec.to_dict(),
             "feature_names": list(tm.config.get("feature_names") or []) if kind == "features" else [],
             "flip_tta": kind != "features" and bool(tm.config.get("training", {}).get("flip_tta", True)),
             "final": "folds" if refit_dir is None else "refit"}  # fmt: skip
    if refit_dir is not None:
        r = read_refit(refit_dir)
        entry["refit"] = {k: r[k] for k in ("framework", "epochs", "stage_epochs", "fold_counts", "warmup_epochs",
                                            "rows", "rule", "in_sample_val_kl") if k in r}  # fmt: skip
    return entry


def _parity(session: Any, x: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    p = run_probs(session, x)
    return float(np.abs(p - ref).max()), float(kl_rows(ref, p).mean())


def export_engines(cfg: PlatformConfig, progress: Callable[[int, int], None] | None = None,
                   log: Callable[[str], None] | None = None) -> EnginesResult:  # fmt: skip
    """Every engine of the module docstring into ``<root>/models/export/`` (cleared first), with
    ``engines.json``: one record per (member, fold, precision) with exporter, parity, size, latency, deployed or
    why not."""
    import torch

    from hms_core.ensemble.build import load_ensemble
    from hms_core.export.onnx_export import (
        FUSED_ATTENTION_OP,
        TTAProbs,
        conv1d_as_2d,
        count_ops,
        export_lightgbm,
        export_torch,
        optimise,
        quant_mode,
        quantize,
        supports_unrolling,  # fmt: skip
    )
    from hms_core.training.predict import load_trained

    say = log or (lambda msg: None)
    e = cfg.export
    ens = load_ensemble(cfg.ensemble_dir)
    members = package_members(cfg, ens.members)
    out = cfg.models_dir / EXPORT_DIR
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    threads = e.intra_op_threads
    torch.set_num_threads(max(threads, 1))
    trt_ok, trt_reason = tensorrt_status() if e.tensorrt else (False, "export.tensorrt is false")
    records: list[dict[str, Any]] = []
    parts = _Partitions(cfg)
    entries: dict[str, dict[str, Any]] = {}
    layout: dict[str, Any] | None = None
    finals = {name: member_folds(cfg, name) for name in members}
    total, done = sum(len(f) for f in finals.values()), 0
    for name in members:
        exporter_ok: str | None = None  # the exporter that passed on an earlier fold of this member
        for fold in finals[name]:
            model_dir = cfg.models_dir / name / fold
            if fold not in cfg.fold_names and not (model_dir / "final" / "config.json").is_file():
                raise PackageError(f"{model_dir / 'final' / 'config.json'} does not exist: export.final_models "
                                   f"sets '{name}' to refit; materialize the refit_{name} asset first (`hms run "
                                   "--stage export` builds it)")  # fmt: skip
            tm = load_trained(model_dir)
            pfold = parity_fold(cfg, fold)
            val = parts(pfold)
            fold_layout = val.layout.to_dict()
            if layout is None:
                layout = fold_layout
            elif fold_layout != layout:
                raise PackageError(f"{val.path}: its layout differs from fold {cfg.fold_names[0]}'s; one package "
                                   "needs one preprocessing (re-run `hms run --stage preprocessing`)")  # fmt: skip
            entry = entries.setdefault(name, _member_entry(tm, name, model_dir if fold not in cfg.fold_names
                                                           else None))  # fmt: skip
            rows = np.arange(min(e.parity_windows, len(val)))
            x = member_inputs(entry, batch_from_partition(val, rows), layout)
            ref = _torch_reference(tm, val, rows)
            d = out / name
            d.mkdir(exist_ok=True)
            base = {"member": name, "fold": fold, "parity_windows": len(rows), "parity_fold": pfold}
            # fp32
            tried: list[str] = []
            rec: dict[str, Any] = {**base, "precision": "fp32", "deployed": False}
            if tm.input_kind == "features":
                order = ["onnxmltools"]
            elif e.exporter == "auto":
                order = [exporter_ok] if exporter_ok else ["dynamo", "torchscript"]
                if exporter_ok == "dynamo":
                    order.append("torchscript")
            else:
                order = [e.exporter]
            raw = d / f"{fold}.fp32.raw.onnx"
            for exp in order:
                t0 = time.perf_counter()
                try:
                    rewrites: dict[str, int] = {}
                    if exp == "onnxmltools":
                        export_lightgbm(tm.model.booster, len(entry["feature_names"]), raw)
                    else:
                        unroll = "unroll_gru" in e.rewrites
                        export_torch(TTAProbs(tm.model, entry["flip_tta"]), x, raw, exp, e.opset, unroll=unroll)
                        if unroll:
                            rewrites["unroll_gru"] = sum(supports_unrolling(m) for m in tm.model.modules())
                    path = optimise(raw, d / f"{fold}.fp32.onnx", e.graph_optimization)
                    if "conv1d_as_2d" in e.rewrites and exp != "onnxmltools":
                        rewrites["conv1d_as_2d"] = conv1d_as_2d(path, path)
                    sess = make_session(path, threads, ["CPUExecutionProvider"])
                    err, kl = _parity(sess, x, ref)
                except Exception as ex:  # noqa: BLE001 - an exporter fails in its own ways: record it, try the next
                    tried.append(f"{exp}: {type(ex).__name__}: {str(ex).splitlines()[0][:300] if str(ex) else ''}")
                    continue
                secs = time.perf_counter() - t0
                rec.update(exporter=exp, max_abs_diff=err, kl=kl, export_seconds=round(secs, 2), path=str(path),
                           rewrites=rewrites)  # fmt: skip
                if exp != "onnxmltools":  # attention blocks written as onnxruntime's fused kernel (onnx_export)
                    rec["fused_attention_nodes"] = count_ops(path, FUSED_ATTENTION_OP)
                if err <= e.fp32_tolerance:
                    rec.update(deployed=True, size_bytes=path.stat().st_size,
                               latency_ms_b1=_latency_ms(sess, x[:1], e.benchmark_runs))  # fmt: skip
                    exporter_ok = exp if exp != "onnxmltools" else None
                    break
                tried.append(f"{exp}: parity {err:.2e} > fp32_tolerance {e.fp32_tolerance:g}")
            if tried:
                rec["attempts"] = tried
            if not rec["deployed"]:
                rec["reason"] = "; ".join(tried) or "no exporter tried"
            records.append(rec)
            say(f"{name} {fold} fp32: " + (f"{rec['exporter']} parity {rec['max_abs_diff']:.1e}" if rec["deployed"]
                                           else f"not deployed ({rec['reason']})"))  # fmt: skip
            if rec["deployed"] and any(rec["rewrites"].values()) and e.rewrite_min_batch > 1:
                records.append(_small_batch_engine(tm, entry, x, ref, d, {**base, "exporter": rec["exporter"]}, e))
            # int8
            if "int8" in e.precisions:
                rec8: dict[str, Any] = {**base, "precision": "int8", "deployed": False}
                if tm.input_kind == "features":
                    rec8["reason"] = (
                        "not applicable: a tree ensemble compares thresholds, it has no matmuls to quantise"
                    )
                elif not rec["deployed"]:
                    rec8["reason"] = "no deployable fp32 export to quantise"
                else:
                    mode = quant_mode(tm.model)
                    rec8["mode"] = mode
                    try:
                        calib = _calibration_inputs(cfg, entry, pfold, layout, parts) if mode == "static" else None
                        q = quantize(raw, d / f"{fold}.int8.q.onnx", mode, calib)
                        path8 = optimise(q, d / f"{fold}.int8.onnx", e.graph_optimization)
                        q.unlink(missing_ok=True)
                        sess8 = make_session(path8, threads, ["CPUExecutionProvider"])
                        err8, kl8 = _parity(sess8, x, ref)
                        rec8.update(max_abs_diff=err8, kl=kl8, path=str(path8), exporter=rec["exporter"],
                                    calibration_windows=0 if calib is None else len(calib))  # fmt: skip
                        if kl8 <= e.int8_kl_tolerance:
                            rec8.update(deployed=True, size_bytes=path8.stat().st_size,
                                        latency_ms_b1=_latency_ms(sess8, x[:1], e.benchmark_runs))  # fmt: skip
                        else:
                            rec8["reason"] = (
                                f"mean KL(torch || int8) {kl8:.2e} > int8_kl_tolerance {e.int8_kl_tolerance:g}"
                            )
                            path8.unlink(missing_ok=True)
                    except Exception as ex:  # noqa: BLE001 - recorded: the engine is not deployed
                        rec8["reason"] = f"quantisation failed: {type(ex).__name__}: {str(ex)[:300]}"
                records.append(rec8)
            raw.unlink(missing_ok=True)
            records.append({**base, "precision": "fp16_tensorrt", "deployed": False,
                            **(_tensorrt_engine(d, fold, rec, x, ref, e) if trt_ok and rec["deployed"]
                               else {"reason": trt_reason if not trt_ok else "no deployable fp32 engine"})})  # fmt: skip
            done += 1
            if progress:
                progress(done, total)
    doc = {
        "format": FORMAT, "created": datetime.now(UTC).isoformat(timespec="seconds"), "members": members,
        "kept": ens.members, "folds": cfg.fold_names, "member_folds": finals, "layout": layout, "entries": entries,
        "tolerances": {"fp32_max_abs": e.fp32_tolerance, "int8_mean_kl": e.int8_kl_tolerance},
        "tensorrt": {"available": trt_ok, "reason": trt_reason}, "records": records,
        "ensemble_sha256": sha256_file(cfg.ensemble_dir / "ensemble.json"), "torch": torch.__version__,
    }  # fmt: skip
    write_json(out / ENGINES_FILE, doc)
    return EnginesResult(out, doc, records)


#: Records of the fp32 engines exported without ``export.rewrites`` that a package runs for batches below
#: ``export.rewrite_min_batch`` (:func:`_small_batch_engine`).
SMALL_BATCH = "fp32_small"


def _small_batch_engine(tm: Any, entry: dict[str, Any], x: np.ndarray, ref: np.ndarray, d: Path,
                        base: dict[str, Any], e: Any) -> dict[str, Any]:  # fmt: skip
    """The fold's fp32 engine exported without the rewrites (GRU layers as onnxruntime's ``GRU`` kernel, 1-D
    convolutions as they are), for batches below ``export.rewrite_min_batch``: a few windows run faster on one GRU
    node than on the few hundred of :class:`~hms_core.export.onnx_export.UnrolledGRU` (a demo fold: 0.7 vs 1.7 ms
    at 1 window; 24 vs 9 ms at 16, where the kernel hands every step to its thread pool), and on plain 1-D
    convolutions than on 2-D ones with their layout reorders (a SPaRCNet fold: 0.98 vs 1.12 ms at 1, 22.4 vs 20.6
    ms at 32). Measured against torch like the main engine, deployed only within ``export.fp32_tolerance``."""
    from hms_core.export.onnx_export import TTAProbs, export_torch, optimise

    fold = base["fold"]
    rec: dict[str, Any] = {**base, "precision": SMALL_BATCH, "deployed": False, "below": e.rewrite_min_batch}
    raw = d / f"{fold}.{SMALL_BATCH}.raw.onnx"
    try:
        export_torch(TTAProbs(tm.model, entry["flip_tta"]), x, raw, base["exporter"], e.opset, unroll=False)
        path = optimise(raw, d / f"{fold}.{SMALL_BATCH}.onnx", e.graph_optimization)
        raw.unlink(missing_ok=True)
        sess = make_session(path, e.intra_op_threads, ["CPUExecutionProvider"])
        err, kl = _parity(sess, x, ref)
    except Exception as ex:  # noqa: BLE001 - recorded: the package then runs the rewritten engine at every size
        return {**rec, "reason": f"export failed: {type(ex).__name__}: {str(ex)[:300]}"}
    rec.update(max_abs_diff=err, kl=kl, path=str(path))
    if err <= e.fp32_tolerance:
        rec.update(deployed=True, size_bytes=path.stat().st_size,
                   latency_ms_b1=_latency_ms(sess, x[:1], e.benchmark_runs))  # fmt: skip
    else:
        rec["reason"] = f"parity {err:.2e} > fp32_tolerance {e.fp32_tolerance:g}"
    return rec


def _tensorrt_engine(d: Path, fold: str, rec: dict[str, Any], x: np.ndarray, ref: np.ndarray, e: Any) -> dict:
    """A TensorRT fp16 engine of the fp32 export (onnxruntime's TensorRT provider, engine cached next to it),
    measured like the others; kept beside the package's CPU engines, used on a GPU with ``providers``."""
    import onnxruntime as ort

    cache = d / f"{fold}.trt"
    cache.mkdir(exist_ok=True)
    opts = {"trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}
    try:
        sess = ort.InferenceSession(
            rec["path"], providers=[("TensorrtExecutionProvider", opts), "CUDAExecutionProvider"]
        )
        p = run_probs(sess, x)
        kl = float(kl_rows(ref, p).mean())
        return {"kl": kl, "max_abs_diff": float(np.abs(p - ref).max()), "cache": str(cache),
                "latency_ms_b1": _latency_ms(sess, x[:1], e.benchmark_runs),
                "reason": "measured; TensorRT engines are cached per GPU and not part of the CPU package"}  # fmt: skip
    except Exception as ex:  # noqa: BLE001 - recorded: the engine is not deployed
        return {"reason": f"TensorRT build failed: {type(ex).__name__}: {str(ex)[:300]}"}


# --- package --------------------------------------------------------------------------------------------------
@dataclass
class PackageResult:
    path: Path
    version: str
    meta: dict[str, Any]
    checks: dict[str, Any]
    manifest_files: int
    total_bytes: int


def _version(engines_doc: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(engines_doc, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{digest}"


def _fmt_ci(m: dict[str, Any], key: str) -> str:
    lo, hi = m.get(f"{key}_low"), m.get(f"{key}_high")
    v = m.get(key)
    if v is None:
        return "n/a"
    return f"{v:.3f}" + (f" (95 % CI {lo:.3f}-{hi:.3f})" if lo is not None and hi is not None else "")


def _refit_unit(member: dict[str, Any]) -> str:
    return "boosting rounds" if member["refit"].get("framework") == "lightgbm" else "epochs"


def model_card(meta: dict[str, Any], metrics: dict[str, Any], cfg: PlatformConfig) -> str:
    ens = metrics.get("ensemble", {})
    refits = [m for m in meta["members"] if m.get("final") == "refit"]
    lines = [
        f"# HMS EEG classifier: deployment package {meta['version']}", "",
        "## Intended use",
        "Research decision support: the six-class distribution (" + ", ".join(CLASSES) + ") that expert raters "
        "would vote for a 10-s EEG segment centred in a 50-s window (HMS Harmful Brain Activity Classification "
        "protocol: 19 referential channels of the 10-20 system + EKG, 200 Hz, double-banana bipolar montage).",
        "It is not a diagnostic device: every prediction is for review by a clinician reading the EEG.", "",
        "## Data", f"- profile `{cfg.profile}`, data version {json.dumps(meta['data_version'])}",
        (f"- {metrics.get('n_rows', 'n/a')} labelled windows of {metrics.get('n_patients', 'n/a')} patients, "
        f"{cfg.dataset.n_folds} patient-grouped folds"), "",
        "## Model",
        f"- members: {', '.join(m['name'] for m in meta['members'])}; blend: `{meta['combiner']['kind']}` over "
        f"{', '.join(meta['combiner']['members'])}" + (", calibrated (temperature + per-class bias)"
                                                       if meta.get("calibration") else ""),
        ("- each member is the mean over its fold models" + (", except the refits below" if refits else "")
         + "; ONNX engines (fp32, int8 where it passed) run with numpy + onnxruntime"),
        *(f"- `{m['name']}` is one refit on every fold's {m['refit'].get('rows', 'n/a')} rows (one engine instead "
          f"of one per fold): {m['refit'].get('epochs')} {_refit_unit(m)} ({m['refit'].get('rule', '')}); the "
          "blend fitted on the fold models' out-of-fold predictions is applied to its output, so the metrics below "
          "are the fold models' (a refit has no held-out rows of its own)" for m in refits), "",
        "## Metrics (nested cross-validation, patient-bootstrap 95 % intervals)",
        f"- KL divergence, all windows: {_fmt_ci(ens, 'kl')}",
        f"- KL divergence, windows with >= 10 votes: {_fmt_ci(ens, 'kl_high_votes')}",
        f"- best single member `{metrics.get('best_member')}`: KL {metrics.get('best_member_kl', float('nan')):.3f}",
        f"- accuracy (top class vs top vote): {ens.get('accuracy', float('nan')):.3f}", "",
        "## Engines and parity",
        (f"- fp32 engines deployed only if max |p_onnx - p_torch| <= {cfg.export.fp32_tolerance:g} on held-out "
        f"windows; int8 only if mean KL(torch || int8) <= {cfg.export.int8_kl_tolerance:g}"),
        (f"- package vs torch ensemble on the test partition: max abs difference "
        f"{meta.get('parity', {}).get('fp32_max_abs_vs_torch', float('nan')):.2e}"), "",
        "## Limits",
        f"- recordings missing more than {meta['max_missing_channels']} of the 19 EEG channels are refused",
        ("- trained on the data above only: other montages, sampling rates (resampled to 200 Hz), neonatal EEG, "
        "or populations not in the training data are out of scope; intervals are from few patients when the "
        "profile is small (demo/tiny profiles use synthetic EEG and say nothing about real performance)"),
        "- predictions are per 10-s window; long recordings are scanned window by window",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def _reference(cfg: PlatformConfig, dest: Path) -> tuple[str | None, str]:
    """The monitoring reference (``hms_core.monitoring.reference``) into ``dest``; (relpath or None, note)."""
    try:
        from hms_core.monitoring.reference import reference_from_workspace
    except ImportError as ex:
        return None, f"hms_core.monitoring.reference is not available ({ex})"
    reference_from_workspace(cfg).save(dest)
    return REFERENCE_DIR, "hms_core.monitoring.reference.reference_from_workspace"


def _test_parity(cfg: PlatformConfig, pkg: Any, engines: EnginesResult) -> dict[str, Any]:
    """The package against the torch ensemble on the test partition: every member's fold models through
    ``TrainedModel.predict`` averaged over folds, blended by ``load_ensemble`` (and against the ensemble's own
    ``test_pred.parquet``); fp32 max abs difference and the KL of the ``best`` precision to torch."""
    import pandas as pd

    from hms_core.ensemble.build import TEST_FILE, load_ensemble
    from hms_core.partition import load_partition
    from hms_core.training.job import TEST_PARTITION
    from hms_core.training.predict import PRED_COLUMNS, load_trained

    test_dir = cfg.processed_dir / "windows" / TEST_PARTITION
    part = load_partition(test_dir)
    batch = batch_from_partition(part)
    member_probs = {}
    for name in pkg.member_names:  # each member's final models: its fold models or its refit
        acc = [load_trained(cfg.models_dir / name / f).predict(part) for f in pkg.member(name)["folds"]]
        mean = np.mean(acc, axis=0)
        member_probs[name] = mean / mean.sum(axis=1, keepdims=True)
    torch_ens = load_ensemble(cfg.ensemble_dir).predict(member_probs)
    fp32 = pkg.predict_batch(batch, "fp32")
    best = pkg.predict_batch(batch, "best")
    out = {"test_rows": len(part), "fp32_max_abs_vs_torch": float(np.abs(fp32.probs - torch_ens).max()),
           "best_kl_vs_torch": float(kl_rows(torch_ens, best.probs).mean()),
           "best_max_abs_vs_torch": float(np.abs(best.probs - torch_ens).max()),
           "best_precision": best.precision}  # fmt: skip
    tp = cfg.ensemble_dir / TEST_FILE
    if any(pkg.member(n)["folds"] != list(cfg.fold_names) for n in pkg.member_names):
        out["vs_test_pred"] = ("not comparable: the ensemble's test_pred.parquet averages fold models the package "
                               "replaces by refits")  # fmt: skip
    elif tp.is_file() and "eeg_id" in part.index.columns:
        t = pd.read_parquet(tp).set_index("eeg_id")
        ids = part.index["eeg_id"].to_numpy()
        if set(ids) <= set(t.index):
            out["fp32_max_abs_vs_test_pred"] = float(
                np.abs(fp32.probs - t.loc[ids, list(PRED_COLUMNS)].to_numpy()).max()
            )
    return out


def build_package(
    cfg: PlatformConfig, engines: EnginesResult, log: Callable[[str], None] | None = None
) -> PackageResult:
    """The versioned package of the module docstring from ``engines`` (see :func:`export_engines`)."""
    from hms_core.ensemble.build import METRICS_FILE, load_ensemble

    say = log or (lambda msg: None)
    doc = engines.doc
    if engines.failed_kept_fp32:
        raise PackageError(f"no deployable fp32 engine for {engines.failed_kept_fp32} (members the blend uses): "
                           f"see {engines.out_dir / ENGINES_FILE}; the package would not reproduce the ensemble")  # fmt: skip
    ens = load_ensemble(cfg.ensemble_dir)
    if doc["ensemble_sha256"] != sha256_file(cfg.ensemble_dir / "ensemble.json"):
        raise PackageError(f"{cfg.ensemble_dir / 'ensemble.json'} changed since the engines were exported "
                           f"({engines.out_dir / ENGINES_FILE}); re-run the export stage")  # fmt: skip
    version = _version(doc)
    deployments = cfg.models_dir / DEPLOYMENTS_DIR
    tmp = deployments / f".tmp-{version}"
    final = deployments / version
    for old in deployments.glob(".tmp-*") if deployments.is_dir() else []:  # what an interrupted build left
        shutil.rmtree(old, ignore_errors=True)
    tmp.mkdir(parents=True)
    members = []
    names = [m for m in doc["members"] if all(r["deployed"] for r in engines.records
                                              if r["member"] == m and r["precision"] == "fp32")]  # fmt: skip
    left_out = {m: "an fp32 engine failed parity (engines.json)" for m in doc["members"] if m not in names}
    for name in names:
        entry = dict(doc["entries"][name])
        entry["folds"] = list(doc.get("member_folds", {}).get(name, doc["folds"]))
        entry["engines"], entry["skipped"], entry["exporter"], entry["parity"] = {}, {}, {}, {}
        small: dict[str, str] = {}
        below = 1
        for r in (r for r in engines.records if r["member"] == name):
            prec = r["precision"]
            if prec == "fp16_tensorrt":
                continue
            if prec == SMALL_BATCH:
                if r["deployed"]:
                    small[r["fold"]] = rel = f"engines/{name}/{r['fold']}.{SMALL_BATCH}.onnx"
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(r["path"], tmp / rel)
                    entry["parity"].setdefault(SMALL_BATCH, {})[r["fold"]] = {"max_abs_diff": r["max_abs_diff"],
                                                                             "kl": r["kl"]}  # fmt: skip
                    below = int(r["below"])
                continue
            if r["deployed"]:
                rel = f"engines/{name}/{r['fold']}.{prec}.onnx"
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(r["path"], tmp / rel)
                entry["engines"].setdefault(prec, {})[r["fold"]] = rel
                entry["parity"].setdefault(prec, {})[r["fold"]] = {
                    "max_abs_diff": r["max_abs_diff"],
                    "kl": r["kl"],
                }
                entry["exporter"][r["fold"]] = r.get("exporter")
            else:
                entry["skipped"].setdefault(prec, {})[r["fold"]] = r.get("reason", "")
        if len(entry["engines"].get("int8", {})) != len(entry["folds"]):
            entry["engines"].pop("int8", None)  # int8 is used only where every fold of the member has one
        if small and len(small) == len(entry["folds"]) and len(entry["engines"].get("fp32", {})) == len(small):
            # batches below `below` run the engines without the rewrites (SMALL_BATCH), larger ones the rewritten
            entry["small_batch"] = {"below": below, "engines": {"fp32": small}}
        else:
            for rel in small.values():  # a fold without one: every batch runs the rewritten engines
                (tmp / rel).unlink()
            entry["parity"].pop(SMALL_BATCH, None)
        # precision "best": int8 only where it passed and was faster than fp32 at export (batch 1, summed over folds)
        fp32_b1 = SMALL_BATCH if "small_batch" in entry else "fp32"  # what a batch of 1 runs
        lat = {prec: sum(r.get("latency_ms_b1") or 0.0 for r in engines.records
                         if r["member"] == name and r["precision"] == (fp32_b1 if prec == "fp32" else prec)
                         and r["deployed"])
               for prec in ("fp32", "int8")}  # fmt: skip
        entry["latency_ms_b1"] = lat
        entry["best"] = "int8" if "int8" in entry["engines"] and lat["int8"] < lat["fp32"] else "fp32"
        members.append(entry)
    metrics_path = cfg.ensemble_dir / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    ref_rel, ref_note = _reference(cfg, tmp / REFERENCE_DIR)
    layout = doc["layout"]
    uses_kaggle = any(KAGGLE_SPECTROGRAM in (m["input_spec"] or {}).get("spectrograms", []) for m in members)
    meta: dict[str, Any] = {
        "format": FORMAT, "version": version, "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "classes": list(CLASSES), "preprocessing": cfg.preprocessing.model_dump(mode="json"), "layout": layout,
        "members": members, "left_out": left_out, "combiner": ens.combiner.to_dict(),
        "calibration": ens.calibrator.to_dict() if ens.calibrator else None,
        "max_missing_channels": cfg.export.max_missing_channels, "requires_kaggle_spectrogram": uses_kaggle,
        "data_version": ens.doc.get("lineage", {}).get("data_version", {}),
        "metrics": {k: metrics.get(k) for k in ("ensemble_kl", "ensemble_kl_high_votes", "best_member",
                                                 "best_member_kl", "gain_vs_best", "chosen_combiner")}
        | {"ensemble": {k: v for k, v in metrics.get("ensemble", {}).items() if not isinstance(v, dict)}},
        "refit_members": [m["name"] for m in members if m.get("final") == "refit"],
        "reference": ref_rel, "reference_source": ref_note, "threads": cfg.export.intra_op_threads,
        "tensorrt": doc["tensorrt"], "tolerances": doc["tolerances"], "config_hash": cfg.config_hash,
    }  # fmt: skip
    write_json(tmp / PACKAGE_FILE, meta)
    write_text(tmp / "config.yaml", cfg.to_yaml())
    # a first, private check on the unfinished folder: the parity figures go into the card and package.json
    write_manifest(tmp, version)
    parity = _test_parity(cfg, load_package(tmp), engines)
    meta["parity"] = parity
    write_json(tmp / PACKAGE_FILE, meta)
    write_text(tmp / CARD_FILE, model_card(meta, metrics, cfg))
    write_manifest(tmp, version)
    os.replace(tmp, final)
    write_json(deployments / LATEST_FILE, {"version": version, "path": version})
    pkg = load_package(final)  # what a consumer does: every SHA-256 verified
    files = package_files(final)
    say(f"package {version}: {len(files)} files, fp32 vs torch {parity['fp32_max_abs_vs_torch']:.1e}")
    return PackageResult(
        final, version, pkg.meta, parity, len(files), sum((final / f).stat().st_size for f in files)
    )


def write_manifest(path: Path, version: str) -> Path:
    files = {rel: sha256_file(path / rel) for rel in package_files(path)}
    return write_json(path / MANIFEST_FILE, {"format": FORMAT, "version": version, "files": files})


def load_engines(cfg: PlatformConfig) -> EnginesResult:
    """The engines the ``onnx_engines`` asset wrote (``<root>/models/export/engines.json``)."""
    out = cfg.models_dir / EXPORT_DIR
    path = out / ENGINES_FILE
    if not path.is_file():
        raise PackageError(f"{path} does not exist: run the onnx_engines asset first (`hms run --stage export`)")
    doc = json.loads(path.read_text())
    return EnginesResult(out, doc, list(doc["records"]))


def recheck_int8(cfg: PlatformConfig, engines: EnginesResult) -> list[str]:
    """Every deployed int8 engine read back from disk against its fold's fp32 engine on the parity windows:
    ``member/fold (KL)`` of those over ``export.int8_kl_tolerance`` (the int8 gate, re-measured on the files)."""
    e, layout, bad, parts = cfg.export, engines.doc["layout"], [], _Partitions(cfg)
    by_key = {(r["member"], r["fold"], r["precision"]): r for r in engines.records}
    for r in engines.records:
        if r["precision"] != "int8" or not r["deployed"]:
            continue
        val = parts(r.get("parity_fold", r["fold"]))
        rows = np.arange(min(e.parity_windows, len(val)))
        x = member_inputs(engines.doc["entries"][r["member"]], batch_from_partition(val, rows), layout)
        p32 = run_probs(make_session(by_key[(r["member"], r["fold"], "fp32")]["path"], e.intra_op_threads), x)
        p8 = run_probs(make_session(r["path"], e.intra_op_threads), x)
        kl = float(kl_rows(p32, p8).mean())
        if not kl <= e.int8_kl_tolerance:
            bad.append(f"{r['member']}/{r['fold']} ({kl:.2e})")
    return bad
