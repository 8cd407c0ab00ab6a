"""The training distribution that production predictions are compared with (stored in the deployment package).

:func:`build_reference` summarises, per monitored feature (:func:`hms_core.monitoring.log.monitored_feature_columns`
plus the predictions' ``entropy``), the training values as quantile bins (``n_bins`` bins with equal training mass;
a value taken by many windows, e.g. a flagged fraction of 0, gets a bin of its own) and keeps a seeded sample of
the values for the two-sample KS test. The predicted class mix comes from the ensemble's nested out-of-fold
predictions (what the deployed model predicts on windows it has not seen), not from its fit on the training rows,
and so do the reference KL (overall and per vote-count bucket, so that a day with other vote counts is compared
fairly) and the top-label ECE against the experts' votes.

On disk (:meth:`Reference.save`, read back by :func:`load_reference`): a folder with ``reference.json`` (bins,
class mix, metrics, provenance) and ``features_sample.parquet`` / ``predictions_sample.parquet`` (the KS samples),
about 1 MB for 57 features x 2,000 values. No identifiers, only feature values and predictions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hms_core.checks import check_range
from hms_core.constants import CLASSES, N_CLASSES

if TYPE_CHECKING:
    from hms_core.config import PlatformConfig

__all__ = [
    "REFERENCE_FILE",
    "FeatureBins",
    "Reference",
    "ReferenceDataError",
    "bin_proportions",
    "build_reference",
    "load_reference",
    "quantile_edges",
    "reference_from_workspace",
]

REFERENCE_FILE = "reference.json"
FEATURES_SAMPLE_FILE = "features_sample.parquet"
PREDICTIONS_SAMPLE_FILE = "predictions_sample.parquet"
FORMAT = 1
#: Pseudo-count added to every bin before proportions are taken (both sides), so an empty bin has a finite log.
BIN_PSEUDOCOUNT = 0.5
#: The prediction-side monitored column (entropy of the six probabilities, nats).
ENTROPY = "entropy"
_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


class ReferenceDataError(ValueError):
    """A reference cannot be built or read; the message names the file or input and what was expected."""


def quantile_edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Inner bin edges (at most ``n_bins - 1``, increasing, unique) at the ``1/n_bins ... (n-1)/n_bins`` quantiles of
    ``values``. Bin ``i`` is ``(edges[i-1], edges[i]]`` (the first and last are open), so a point mass (many
    windows at exactly 0) falls into one bin whose upper edge is that value."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.zeros(0)
    return np.unique(np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1]))


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return np.bincount(np.searchsorted(edges, v, side="left"), minlength=len(edges) + 1).astype(np.float64)


def bin_proportions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each bin of ``edges``, with :data:`BIN_PSEUDOCOUNT` added to every bin."""
    c = bin_counts(values, edges) + BIN_PSEUDOCOUNT
    return c / c.sum()


@dataclass
class FeatureBins:
    """One monitored feature in the training data: its bins, their shares and a few quantiles."""

    edges: np.ndarray
    proportions: np.ndarray
    n: int
    quantiles: dict[str, float]

    @classmethod
    def fit(cls, values: np.ndarray, n_bins: int) -> FeatureBins:
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        edges = quantile_edges(v, n_bins)
        q = np.quantile(v, _QUANTILES) if v.size else np.full(len(_QUANTILES), np.nan)
        return cls(
            edges,
            bin_proportions(v, edges),
            int(v.size),
            {f"p{round(p * 100):02d}": float(x) for p, x in zip(_QUANTILES, q)},
        )

    def to_dict(self) -> dict[str, Any]:
        return {"edges": self.edges.tolist(), "proportions": self.proportions.tolist(), "n": self.n,
                "quantiles": self.quantiles}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureBins:
        return cls(np.asarray(d["edges"], np.float64), np.asarray(d["proportions"], np.float64), int(d["n"]),
                   {k: float(v) for k, v in d["quantiles"].items()})  # fmt: skip


@dataclass
class Reference:
    """The training distribution: bins per monitored column, KS samples, the out-of-fold class mix and metrics."""

    bins: dict[str, FeatureBins]
    features_sample: pd.DataFrame
    predictions_sample: pd.DataFrame
    class_mix: np.ndarray  # (6,) share of each predicted (argmax) class, CLASSES order
    mean_probs: np.ndarray  # (6,) mean predicted probability
    n_windows: int  # training windows the feature bins come from
    n_predictions: int  # out-of-fold rows the prediction side comes from
    n_bins: int
    metrics: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        """The monitored input features (not ``entropy``)."""
        return [c for c in self.bins if c != ENTROPY]

    def sample(self, column: str) -> np.ndarray:
        """The stored training values of ``column`` (for the KS test)."""
        frame = self.predictions_sample if column == ENTROPY else self.features_sample
        if column not in frame.columns:
            raise ReferenceDataError(f"the reference has no sample of {column!r}; it holds {sorted(self.bins)}")
        v = frame[column].to_numpy(np.float64)
        return v[np.isfinite(v)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "classes": list(CLASSES), "n_bins": self.n_bins, "n_windows": self.n_windows,
            "n_predictions": self.n_predictions, "class_mix": self.class_mix.tolist(),
            "mean_probs": self.mean_probs.tolist(), "metrics": self.metrics, "source": self.source,
            "bins": {k: b.to_dict() for k, b in self.bins.items()},
        }  # fmt: skip

    def save(self, folder: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``reference.json`` and the two sample files into ``folder`` (atomically, each)."""
        from hms_core.io import write_json, write_parquet

        folder = Path(folder)
        return {
            "features_sample": write_parquet(folder / FEATURES_SAMPLE_FILE, self.features_sample),
            "predictions_sample": write_parquet(folder / PREDICTIONS_SAMPLE_FILE, self.predictions_sample),
            "reference": write_json(folder / REFERENCE_FILE, self.to_dict()),
        }


def _finite_column(df: pd.DataFrame, c: str, where: str) -> np.ndarray:
    v = pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64)
    if not np.isfinite(v).any():
        raise ReferenceDataError(f"{where}: column {c!r} has no finite value")
    return v


def build_reference(
    features: pd.DataFrame,
    predictions: np.ndarray,
    *,
    targets: np.ndarray | None = None,
    votes: np.ndarray | None = None,
    columns: list[str] | None = None,
    n_bins: int = 10,
    sample_size: int = 2000,
    seed: int = 0,
    source: dict[str, Any] | None = None,
) -> Reference:
    """The reference of the training windows' ``features`` (one row per window, the preprocessing features table)
    and the ensemble's out-of-fold ``predictions`` (N, 6) with, optionally, their soft ``targets`` (N, 6) and
    vote counts ``votes`` (N,) for the reference KL and ECE.

    ``columns``: the monitored features (default :func:`~hms_core.monitoring.log.monitored_feature_columns`);
    the ones the table lacks (e.g. the gamma band when the filter stops below 30 Hz) are left out and listed in
    ``source["missing_features"]``. ``sample_size`` values per column are kept for the KS test (seeded)."""
    from hms_core.ensemble.calibration import expected_calibration_error
    from hms_core.ensemble.uncertainty import VOTE_BUCKETS, entropy
    from hms_core.metrics import kl_divergence_rows
    from hms_core.monitoring.log import monitored_feature_columns

    check_range("n_bins", n_bins, 2, 50)
    check_range("sample_size", sample_size, 1)
    if len(features) == 0:
        raise ReferenceDataError("build_reference: the features table has no rows (no training windows)")
    p = np.asarray(predictions, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != N_CLASSES or len(p) == 0:
        raise ReferenceDataError(
            f"build_reference: predictions must be shaped (n_rows > 0, {N_CLASSES}), got {p.shape}"
        )
    wanted = list(columns) if columns is not None else monitored_feature_columns()
    present = [c for c in wanted if c in features.columns]
    if not present:
        raise ReferenceDataError(
            f"build_reference: none of the monitored features {wanted[:5]}... is a column of the features table "
            f"(it has {list(features.columns)[:8]}...)"
        )
    rng = np.random.default_rng(seed)
    bins: dict[str, FeatureBins] = {}
    vals = {c: _finite_column(features, c, "build_reference features") for c in present}
    for c in present:
        bins[c] = FeatureBins.fit(vals[c], n_bins)
    ent = entropy(p)
    bins[ENTROPY] = FeatureBins.fit(ent, n_bins)
    fi = np.sort(rng.choice(len(features), size=min(sample_size, len(features)), replace=False))
    pi = np.sort(rng.choice(len(p), size=min(sample_size, len(p)), replace=False))
    features_sample = pd.DataFrame({c: vals[c][fi].astype(np.float32) for c in present})
    predictions_sample = pd.DataFrame({ENTROPY: ent[pi]} | {c: p[pi, k] for k, c in enumerate(CLASSES)})
    class_mix = np.bincount(p.argmax(axis=1), minlength=N_CLASSES) / len(p)
    metrics: dict[str, Any] = {}
    if targets is not None:
        y = np.asarray(targets, dtype=np.float64)
        kl = kl_divergence_rows(y, p)
        metrics = {"kl": float(kl.mean()), "ece": expected_calibration_error(p, y), "n_labelled": len(y)}
        if votes is not None:
            v = np.asarray(votes, dtype=np.float64)
            metrics["kl_by_votes"] = [
                {"lo": lo, "hi": hi, "rows": int(m.sum()), "kl": float(kl[m].mean()) if m.any() else None}
                for lo, hi in VOTE_BUCKETS
                for m in [(v >= lo) & ((v < hi) if hi is not None else True)]
            ]
    src = {"created": datetime.now(UTC).isoformat(timespec="seconds"),
           "missing_features": [c for c in wanted if c not in features.columns]} | dict(source or {})  # fmt: skip
    return Reference(
        bins=bins, features_sample=features_sample, predictions_sample=predictions_sample, class_mix=class_mix,
        mean_probs=p.mean(axis=0), n_windows=len(features), n_predictions=len(p), n_bins=int(n_bins),
        metrics=metrics, source=src,
    )  # fmt: skip


def reference_from_workspace(cfg: PlatformConfig, folds: list[str] | None = None) -> Reference:
    """The reference of a trained workspace: the features tables of every fold partition (``folds``: default all
    of ``cfg.fold_names``; the final ensemble is fitted on all of them) and the ensemble's nested out-of-fold
    predictions (``<root>/ensemble/oof.parquet``) with their targets and vote counts; ``monitoring.drift`` sets
    the bins, the sample size and the features. This is what the export stage stores in the package."""
    from hms_core.ensemble.build import OOF_FILE
    from hms_core.partition import PartitionError, load_partition
    from hms_core.training.predict import PRED_COLUMNS, TARGET_COLUMNS

    d = cfg.monitoring.drift
    tables = []
    used = []
    for fold in folds or cfg.fold_names:
        path = cfg.processed_dir / "windows" / fold
        try:
            tables.append(load_partition(path).features())
        except PartitionError as e:
            raise ReferenceDataError(f"monitoring reference: {e}") from None
        used.append(fold)
    oof_path = cfg.ensemble_dir / OOF_FILE
    if not oof_path.exists():
        raise ReferenceDataError(
            f"monitoring reference: {oof_path} does not exist; run the ensemble stage first (hms run --stage ensemble)"
        )
    oof = pd.read_parquet(oof_path)
    missing = [c for c in PRED_COLUMNS if c not in oof.columns]
    if missing:
        raise ReferenceDataError(f"monitoring reference: {oof_path} lacks the prediction columns {missing}")
    targets = oof[list(TARGET_COLUMNS)].to_numpy(np.float64) if set(TARGET_COLUMNS) <= set(oof.columns) else None
    votes = oof["total_votes"].to_numpy(np.float64) if "total_votes" in oof.columns else None
    return build_reference(
        pd.concat(tables, ignore_index=True), oof[list(PRED_COLUMNS)].to_numpy(np.float64), targets=targets,
        votes=votes, columns=d.features, n_bins=d.n_bins, sample_size=d.reference_sample, seed=0,
        source={"folds": used, "oof": str(oof_path), "workspace": str(cfg.root)},
    )  # fmt: skip


def load_reference(folder: str | os.PathLike[str]) -> Reference:
    """Read a reference folder written by :meth:`Reference.save`."""
    folder = Path(folder)
    path = folder / REFERENCE_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReferenceDataError(f"{path} does not exist: not a monitoring reference folder") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ReferenceDataError(f"{path} is not readable JSON ({e})") from None
    if doc.get("format") != FORMAT or doc.get("classes") != list(CLASSES):
        raise ReferenceDataError(
            f"{path}: format {doc.get('format')!r} / classes {doc.get('classes')!r}; expected format {FORMAT} "
            f"and classes {list(CLASSES)}"
        )
    try:
        fs = pd.read_parquet(folder / FEATURES_SAMPLE_FILE)
        ps = pd.read_parquet(folder / PREDICTIONS_SAMPLE_FILE)
    except (OSError, ValueError) as e:
        raise ReferenceDataError(f"{folder}: a sample file is missing or unreadable ({e})") from None
    return Reference(
        bins={k: FeatureBins.from_dict(b) for k, b in doc["bins"].items()}, features_sample=fs,
        predictions_sample=ps, class_mix=np.asarray(doc["class_mix"], np.float64),
        mean_probs=np.asarray(doc["mean_probs"], np.float64), n_windows=int(doc["n_windows"]),
        n_predictions=int(doc["n_predictions"]), n_bins=int(doc["n_bins"]), metrics=doc.get("metrics", {}),
        source=doc.get("source", {}),
    )  # fmt: skip
