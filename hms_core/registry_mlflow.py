"""The ensemble in the MLflow model registry, so a deployment can name an exact version.

:func:`register_ensemble` opens one MLflow run (experiment ``logging.mlflow_experiment``) that logs the ensemble's
config as params, its figures as metrics, its files (``ensemble.json``, weights, predictions, metrics, review list,
report, submission) as artifacts under ``ensemble/``, and its lineage as tags (each member fold's weights SHA-256,
the data version); then registers that artifact folder as a new version of ``ensemble.registered_model_name``
(a plain registered model with artifacts: ``ensemble.json`` loads with
:func:`hms_core.ensemble.build.load_ensemble`, no pickle). The version carries the same tags and the metrics, so
``models:/hms-ensemble/3`` names one exact ensemble and what it was built from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hms_core.tracking import MLflowLogger

__all__ = ["ARTIFACT_PATH", "lineage_tags", "register_ensemble"]

ARTIFACT_PATH = "ensemble"


def lineage_tags(ensemble_doc: Mapping[str, Any]) -> dict[str, str]:
    """Tags naming what the ensemble was built from: members kept/dropped, combiner, each member checkpoint's
    SHA-256 (first 16 hex digits) per fold, the data version hashes, the config hash."""
    lin = ensemble_doc.get("lineage", {})
    tags = {
        "hms/combiner": str(ensemble_doc["combiner"]["kind"]),
        "hms/members": ",".join(ensemble_doc.get("kept_members", [])),
        "hms/dropped_members": ",".join(ensemble_doc.get("dropped_members", [])) or "-",
        "hms/ensemble_config_hash": str(ensemble_doc.get("config_hash", "")),
    }
    for name, folds in lin.get("members", {}).items():
        for k, info in enumerate(folds):
            if info.get("weights_sha256"):
                tags[f"hms/checkpoint/{name}/fold_{k}"] = info["weights_sha256"][:16]
    for name, digest in lin.get("data_version", {}).items():
        tags[f"hms/data_version/{name}"] = str(digest)
    return tags


def _metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {k: float(metrics[k]) for k in ("ensemble_kl", "ensemble_kl_high_votes", "best_member_kl", "gain_vs_best")
           if isinstance(metrics.get(k), (int, float))}  # fmt: skip
    for name, m in metrics.get("members", {}).items():
        out[f"member_{name}_kl"] = float(m["kl"])
    cal = metrics.get("calibration", {})
    for k in ("ece_before", "ece_after"):
        if isinstance(cal.get(k), (int, float)):
            out[f"calibration_{k}"] = float(cal[k])
    return out


def register_ensemble(tracking_uri: str, experiment: str, artifact_location: str | os.PathLike[str],
                      ensemble_dir: str | os.PathLike[str], model_name: str, files: Sequence[str | os.PathLike[str]],
                      metrics: Mapping[str, Any], params: Mapping[str, Any],
                      extra_tags: Mapping[str, str] | None = None) -> dict[str, str]:  # fmt: skip
    """Log the run and register a new model version; returns ``{run_id, model_name, version, model_uri}``."""
    ensemble_dir = Path(ensemble_dir)
    doc = json.loads((ensemble_dir / "ensemble.json").read_text())
    tags = {**lineage_tags(doc), **dict(extra_tags or {})}
    run = MLflowLogger(tracking_uri, experiment, artifact_location, run_name="ensemble", tags=tags)
    run.on_start(params)
    client = run.client
    for f in files:
        p = Path(f)
        if p.is_file():
            rel = p.parent.relative_to(ensemble_dir) if p.is_relative_to(ensemble_dir) else Path()
            client.log_artifact(run.run_id, str(p), artifact_path=str(Path(ARTIFACT_PATH) / rel).rstrip("/."))
    run.on_end(_metrics(metrics))
    source = f"{client.get_run(run.run_id).info.artifact_uri}/{ARTIFACT_PATH}"
    try:
        client.get_registered_model(model_name)
    except Exception:  # noqa: BLE001 - not registered yet (MlflowException RESOURCE_DOES_NOT_EXIST)
        client.create_registered_model(model_name, description="HMS learned ensemble (ensemble.json: no pickle)")
    mv = client.create_model_version(model_name, source, run_id=run.run_id, tags=tags,
                                     description=f"nested-CV KL {metrics.get('ensemble_kl', float('nan')):.4f}")  # fmt: skip
    return {"run_id": run.run_id, "model_name": model_name, "version": str(mv.version),
            "model_uri": f"models:/{model_name}/{mv.version}"}  # fmt: skip
