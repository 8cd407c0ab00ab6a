"""One day of monitoring, end to end on files: what the ``prediction_drift`` / ``prediction_quality`` assets run.

- :func:`drift_day`: the day's logged rows, split by the package version that predicted them, each against the
  reference stored in that version's package (``<root>/models/deployments/<version>/reference/``); the verdict is
  the worst one. Writes ``<monitoring root>/reports/drift/<day>.json`` and ``<day>.features.parquet``.
- :func:`quality_day`: the same rows joined with the expert votes in ``monitoring.quality.labels_dir``; writes
  ``reports/quality/<day>.json``.
- :func:`drift_history` / :func:`quality_history`: every day's report so far, for the trend plots.

A day without predictions, or whose package has no reference, is ``insufficient`` (not judged), never ``ok``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from hms_core.monitoring.drift import INSUFFICIENT, compute_drift, worst
from hms_core.monitoring.log import monitoring_dir, read_predictions
from hms_core.monitoring.quality import compute_quality, read_labels
from hms_core.monitoring.reference import Reference, ReferenceDataError, load_reference

if TYPE_CHECKING:
    from hms_core.config import PlatformConfig

__all__ = ["DayResult", "drift_day", "drift_history", "quality_day", "quality_history", "reference_for_version"]


def predictions_dir(cfg: PlatformConfig) -> Path:
    return monitoring_dir(cfg) / "predictions"


def reports_dir(cfg: PlatformConfig, kind: str) -> Path:
    return monitoring_dir(cfg) / "reports" / kind


def reference_for_version(cfg: PlatformConfig, version: str) -> Reference:
    """The drift reference stored in the deployment package ``version`` of this workspace."""
    from hms_core.export.runtime import DEPLOYMENTS_DIR, PACKAGE_FILE

    folder = cfg.models_dir / DEPLOYMENTS_DIR / version
    meta_path = folder / PACKAGE_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise ReferenceDataError(
            f"predictions of package {version!r} were logged but {meta_path} does not exist (the package was "
            "removed or built in another workspace)"
        ) from None
    except (OSError, json.JSONDecodeError) as e:
        raise ReferenceDataError(f"{meta_path} is not readable JSON ({e})") from None
    rel = meta.get("reference")
    if not rel:
        raise ReferenceDataError(f"{meta_path} has no drift reference ('reference' is {rel!r}); re-export it")
    return load_reference(folder / rel)


@dataclass
class DayResult:
    """A day's verdict (``ok`` / ``warn`` / ``error`` / ``insufficient``), why, and the files written."""

    day: str
    status: str
    reasons: list[str]
    n_windows: int
    summary: dict[str, Any]  # per package version: the report's to_dict()
    table: pd.DataFrame  # drift: per feature and version; quality: per class and version
    paths: dict[str, Path] = field(default_factory=dict)


def _versions(rows: pd.DataFrame) -> list[str]:
    return (
        sorted(rows["package_version"].astype(str).unique()) if "package_version" in rows.columns else ["unknown"]
    )


def drift_day(cfg: PlatformConfig, day: str) -> DayResult:
    """Drift of ``day`` (``YYYY-MM-DD``, UTC) against each logging package's reference; writes the day's report."""
    from hms_core.io import write_json, write_parquet

    rows = read_predictions(predictions_dir(cfg), day)
    status, reasons, summary, tables = INSUFFICIENT, [], {}, []
    if rows.empty:
        reasons.append(f"nothing was logged on {day} ({predictions_dir(cfg)})")
    else:
        status = None
        for v in _versions(rows):
            part = rows[rows["package_version"].astype(str) == v] if "package_version" in rows.columns else rows
            try:
                rep = compute_drift(reference_for_version(cfg, v), part, cfg.monitoring.drift)
            except (ReferenceDataError, ValueError) as e:
                summary[v] = {"status": INSUFFICIENT, "reasons": [str(e)], "n_windows": len(part)}
                reasons.append(f"package {v}: {e}")
                status = worst(status or INSUFFICIENT, INSUFFICIENT)
                continue
            summary[v] = rep.to_dict()
            reasons += [f"package {v}: {r}" for r in rep.reasons]
            status = worst(status, rep.status) if status else rep.status
            tables.append(rep.features.assign(package_version=v))
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        columns=["feature", "psi", "ks_stat", "ks_pvalue", "n", "ref_median", "median", "status", "package_version"]
    )  # fmt: skip
    out = reports_dir(cfg, "drift")
    paths = {
        "features": write_parquet(out / f"{day}.features.parquet", table),
        "report": write_json(out / f"{day}.json", {"day": day, "status": status, "reasons": reasons,
                                                   "n_windows": len(rows), "versions": summary}),
    }  # fmt: skip
    return DayResult(day, status, reasons, len(rows), summary, table, paths)


def quality_day(cfg: PlatformConfig, day: str) -> DayResult:
    """KL and calibration of ``day``'s logged windows that have expert votes; writes the day's report."""
    from hms_core.io import write_json

    q = cfg.monitoring.quality
    rows = read_predictions(predictions_dir(cfg), day)
    labels = read_labels(cfg.path(q.labels_dir))
    status, reasons, summary, tables = INSUFFICIENT, [], {}, []
    if rows.empty:
        reasons.append(f"nothing was logged on {day} ({predictions_dir(cfg)})")
    else:
        status = None
        for v in _versions(rows):
            part = rows[rows["package_version"].astype(str) == v] if "package_version" in rows.columns else rows
            try:
                ref = reference_for_version(cfg, v)
            except ReferenceDataError as e:
                ref = None
                note = str(e)
            rep = compute_quality(ref, part, labels, q)
            if ref is None:
                rep.reasons.append(f"no reference KL ({note})")
            summary[v] = rep.to_dict()
            reasons += [f"package {v}: {r}" for r in rep.reasons]
            status = worst(status, rep.status) if status else rep.status
            if rep.per_class is not None:
                tables.append(rep.per_class.assign(package_version=v))
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    path = write_json(reports_dir(cfg, "quality") / f"{day}.json",
                      {"day": day, "status": status, "reasons": reasons, "n_windows": len(rows), "versions": summary})  # fmt: skip
    return DayResult(day, status, reasons, len(rows), summary, table, {"report": path})


def _reports(cfg: PlatformConfig, kind: str, until: str | None) -> list[dict[str, Any]]:
    folder = reports_dir(cfg, kind)
    docs = []
    for f in sorted(folder.glob("????-??-??.json")) if folder.is_dir() else []:
        if until is not None and f.stem > until:
            continue
        try:
            docs.append(json.loads(f.read_text()))
        except (OSError, json.JSONDecodeError):
            continue  # a report being replaced; the next materialization rewrites it
    return docs


def drift_history(cfg: PlatformConfig, until: str | None = None) -> pd.DataFrame:
    """One row per (day, package version, feature) with its PSI and status, from every drift report so far."""
    folder = reports_dir(cfg, "drift")
    frames = []
    for doc in _reports(cfg, "drift", until):
        f = folder / f"{doc['day']}.features.parquet"
        if f.exists():
            frames.append(pd.read_parquet(f).assign(day=doc["day"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["day", "feature", "psi"])


def quality_history(cfg: PlatformConfig, until: str | None = None) -> pd.DataFrame:
    """One row per (day, package version) with KL, expected KL, ECE and labelled windows."""
    recs = []
    for doc in _reports(cfg, "quality", until):
        for v, s in doc.get("versions", {}).items():
            recs.append({"day": doc["day"], "package_version": v, "kl": s.get("kl"), "expected_kl": s.get("expected_kl"),
                         "ece": s.get("ece"), "n_labelled": s.get("n_labelled"), "status": s.get("status")})  # fmt: skip
    return pd.DataFrame(
        recs, columns=["day", "package_version", "kl", "expected_kl", "ece", "n_labelled", "status"]
    )
