"""What classifies the scanner's windows: the deployment package's engines, a workspace's trained ensemble (before a
package is exported), or the distilled scanning model.

The first two take the per-window :class:`~hms_core.preprocess.BatchOutput` (``needs_batch``); the distilled model
takes the front end's shared STFT frames (:func:`hms_core.scanning.frontend.distill_inputs`). Every predictor
returns :class:`Prediction` (probabilities in :data:`~hms_core.constants.CLASSES` order and the members'
disagreement, NaN where there are no members).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hms_core.config import PlatformConfig, PreprocessingConfig
from hms_core.constants import CLASSES
from hms_core.preprocess import BatchOutput

__all__ = [
    "DISTILLED_DIR",
    "Cascade",
    "Prediction",
    "WorkspaceEnsemble",
    "entropy",
    "interpolate_between",
    "load_distilled",
    "mean_kl_to",
]

#: Folder (inside a deployment package, or ``<root>/scanning`` for a workspace) of the distilled scanning model.
DISTILLED_DIR = "scanning"
DEFAULT_MAX_MISSING = 4


@dataclass
class Prediction:
    probs: np.ndarray  # (B, 6)
    disagreement: np.ndarray  # (B,) members' mean KL to the blend; NaN without members


def entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1.0)
    return -(p * np.log(p)).sum(-1)


def mean_kl_to(members: dict[str, np.ndarray], blend: np.ndarray) -> np.ndarray:
    """Mean over members of KL(member || blend), per row."""
    if not members:
        return np.full(len(blend), np.nan)
    q = np.clip(blend, 1e-12, 1.0)
    kls = [(np.clip(m, 1e-12, 1) * np.log(np.clip(m, 1e-12, 1) / q)).sum(-1) for m in members.values()]
    return np.mean(kls, axis=0)


class WorkspaceEnsemble:
    """A workspace's trained ensemble (every fold of every kept member, the fitted combiner and calibrator) as a
    predictor over :class:`BatchOutput`, with the inputs :mod:`hms_core.training.inputs` builds from a partition.
    It stands for the deployment package until one is exported (torch, not ONNX)."""

    kind = "ensemble"
    needs_batch = True

    def __init__(self, cfg: PlatformConfig, threads: int = 2) -> None:
        import torch

        from hms_core.ensemble.build import load_ensemble
        from hms_core.training.predict import load_trained

        torch.set_num_threads(threads)
        self.ensemble = load_ensemble(cfg.ensemble_dir)
        self.preprocessing: PreprocessingConfig = cfg.preprocessing
        self.version = f"workspace:{cfg.root}@{self.ensemble.doc.get('created', cfg.config_hash)}"
        self.max_missing_channels = DEFAULT_MAX_MISSING
        self.path = Path(cfg.ensemble_dir)
        self.models: dict[str, list[Any]] = {}
        for name in self.ensemble.members:
            folds = sorted((Path(cfg.models_dir) / name).glob("fold_*"))
            self.models[name] = [load_trained(f) for f in folds if (f / "final" / "config.json").is_file()]
            if not self.models[name]:
                raise FileNotFoundError(f"{Path(cfg.models_dir) / name} holds no trained fold (final/config.json)")
        loaded = [m for ms in self.models.values() for m in ms]
        #: the spectrogram types and whether the features table are read by a kept member (the scan builds no more)
        self.spectrogram_types = sorted({t for m in loaded if m.input_kind != "features" and m.input_spec.kind != "raw"
                                         for t in m.input_spec.spectrograms})  # fmt: skip
        self.needs_features = any(m.input_kind == "features" for m in loaded)

    def _member(self, models: list[Any], out: BatchOutput) -> np.ndarray:
        import torch

        from hms_core.training.inputs import build_spectrogram_image

        probs = []
        for m in models:
            if m.input_kind == "features":
                x = out.features.select(m.config["feature_names"]).to_numpy().astype(np.float32)
                probs.append(m.model.predict_proba(x))
                continue
            spec = m.input_spec
            if spec.kind == "raw":
                sl = slice(None) if spec.use_context else self.preprocessing.eeg.segment_slice
                x = torch.from_numpy(np.nan_to_num(np.ascontiguousarray(out.bipolar[:, : spec.n_chans, sl])))
            else:
                x = build_spectrogram_image({t: out.spectrograms[t] for t in spec.spectrograms}, spec.spectrograms,
                                            spec.tile)  # fmt: skip
            x = x.to(torch.float16).float()  # the partitions store float16: the same rounding as training
            with torch.no_grad():
                p = torch.softmax(m.model(x).float(), 1)
                if m.config["training"].get("flip_tta", True):
                    p = 0.5 * (p + torch.softmax(m.model(m.model.flip_input(x)).float(), 1))
            probs.append(p.numpy().astype(np.float64))
        p = np.mean(probs, axis=0)
        return p / p.sum(1, keepdims=True)

    def predict(self, out: BatchOutput) -> Prediction:
        members = {name: self._member(models, out) for name, models in self.models.items()}
        blend = self.ensemble.predict(members)
        return Prediction(blend, mean_kl_to(members, blend))


class PackageEnsemble:
    """The deployment package's engines: every fold of every member the package's combiner blends (members the
    package only reports are not run), blended and calibrated as :meth:`hms_core.export.DeploymentPackage.
    predict_batch` does."""

    kind = "ensemble"
    needs_batch = True

    def __init__(self, pkg: Any, precision: str = "fp32") -> None:
        self.pkg = pkg
        self.precision = precision
        self.preprocessing: PreprocessingConfig = pkg.preprocessing
        self.version = str(pkg.version)
        self.max_missing_channels = int(getattr(pkg, "max_missing_channels", DEFAULT_MAX_MISSING))
        self.path = Path(pkg.path)
        self.members = list(pkg.blend_members)
        entries = [pkg.member(m) for m in self.members]
        self.spectrogram_types = sorted({t for m in entries if m["input_kind"] == "spectrogram"
                                         for t in m["input_spec"]["spectrograms"]})  # fmt: skip
        self.needs_features = any(m["input_kind"] == "features" for m in entries)

    def predict(self, out: BatchOutput) -> Prediction:
        from hms_core.export.runtime import combine, kl_rows

        members = {m: self.pkg.member_probs(m, out, self.precision)[0] for m in self.members}
        probs = combine(self.pkg.meta["combiner"], self.pkg.meta.get("calibration"), members)
        dis = np.mean([kl_rows(p, probs) for p in members.values()], axis=0)
        return Prediction(np.asarray(probs, np.float64), np.asarray(dis, np.float64))


class DistilledModel:
    """The distilled scanning model: ``model.onnx`` + ``distill.json`` in a :data:`DISTILLED_DIR` folder."""

    kind = "distilled"
    needs_batch = False

    def __init__(self, folder: str | os.PathLike[str], preprocessing: PreprocessingConfig, threads: int = 2,
                 max_missing_channels: int = DEFAULT_MAX_MISSING, version: str = "") -> None:  # fmt: skip

        from hms_core.scanning.config import DistillConfig

        self.path = Path(folder)
        self.meta = json.loads((self.path / "distill.json").read_text())
        self.dcfg = DistillConfig.model_validate(self.meta["config"])
        self.n_frames = int(self.meta["n_frames"])
        if list(self.meta.get("classes", CLASSES)) != list(CLASSES):
            raise ValueError(f"{self.path / 'distill.json'}: classes {self.meta['classes']} != {list(CLASSES)}")
        self.session = self.session_for(self.path / "model.onnx", threads)
        self.preprocessing = preprocessing
        self.max_missing_channels = max_missing_channels
        self.version = version or self.meta.get("teacher", "")

    @staticmethod
    def session_for(path: Path, threads: int) -> Any:
        """An onnxruntime CPU session of ``path`` with ``threads`` intra-op threads and the package engines' options
        (:func:`~hms_core.export.runtime.session_options`): no spinning, so the idle intra-op threads between two
        batches leave the cores to the threads preparing the next chunks (12-15 % less CPU for a 24-h scan)."""
        import onnxruntime as ort

        from hms_core.export.runtime import session_options

        return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])

    def predict_inputs(self, spec: np.ndarray, scalars: np.ndarray) -> Prediction:
        (logits,) = self.session.run(None, {"spec": spec, "scalars": scalars})
        z = logits - logits.max(1, keepdims=True)
        p = np.exp(z.astype(np.float64))
        p /= p.sum(1, keepdims=True)
        return Prediction(p, np.full(len(p), np.nan))


@dataclass
class Cascade:
    """The distilled model on every window, the ensemble (``teacher``: a package or workspace ensemble) on the
    candidate windows :meth:`candidates` picks from the distilled model's probabilities (``scan.cascade``)."""

    distilled: DistilledModel
    teacher: Any
    cfg: Any  # hms_core.scanning.config.CascadeConfig
    stride_s: float

    kind = "cascade"

    @property
    def preprocessing(self) -> PreprocessingConfig:
        return self.teacher.preprocessing

    def candidates(self, probs: np.ndarray, evaluated: np.ndarray) -> np.ndarray:
        """Windows (a boolean mask over consecutive windows ``probs`` (W, 6), NaN where not evaluated) the ensemble
        judges: an evaluated window with a cascade class at or above the threshold, or within ``dilate_s`` of one."""
        cols = [CLASSES.index(c) for c in self.cfg.classes]
        hit = evaluated & (np.nan_to_num(probs[:, cols], nan=0.0) >= self.cfg.threshold).any(1)
        reach = round(self.cfg.dilate_s / self.stride_s)
        if reach and hit.any():
            hit = np.convolve(hit.astype(np.int32), np.ones(2 * reach + 1, np.int32), "same") > 0
        return hit & evaluated

    def judged(self, candidates: np.ndarray) -> np.ndarray:
        """Of a candidate mask over consecutive windows, those the ensemble runs on: every ``cascade.stride_s``
        of each stretch of consecutive candidates, counted from its first window, and its last window."""
        every = round(self.cfg.stride_s / self.stride_s) if self.cfg.stride_s else 1
        idx = np.flatnonzero(candidates)
        if every <= 1 or not len(idx):
            return candidates.copy()
        gap = np.diff(idx) > 1
        first = idx[np.r_[True, gap]]
        last = idx[np.r_[gap, True]]
        run_first = first[np.searchsorted(first, idx, side="right") - 1]
        out = np.zeros_like(candidates)
        out[idx[((idx - run_first) % every == 0) | np.isin(idx, last)]] = True
        return out


def interpolate_between(probs: np.ndarray, judged: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Rows ``fill`` of ``probs`` (W, C) linearly interpolated, per column, between the nearest rows ``judged`` on
    either side (each fill row must lie between two judged rows), renormalised to sum to 1."""
    at, to = np.flatnonzero(judged), np.flatnonzero(fill)
    out = np.stack([np.interp(to, at, probs[at, j]) for j in range(probs.shape[1])], 1)
    return out / out.sum(1, keepdims=True)


def load_distilled(folder: Path, preprocessing: PreprocessingConfig, threads: int, max_missing: int,
                   version: str) -> DistilledModel | None:  # fmt: skip
    """The distilled model in ``folder`` when it holds one (every SHA-256 of its manifest.json checked), else None."""
    from hms_core.io import sha256_file

    if not ((folder / "model.onnx").is_file() and (folder / "distill.json").is_file()):
        return None
    manifest = folder / "manifest.json"
    files = json.loads(manifest.read_text()).get("files", {}) if manifest.is_file() else {}
    for rel in ("model.onnx", "distill.json"):
        if rel not in files or sha256_file(folder / rel) != files[rel]:
            raise ValueError(f"{folder / rel} does not match {manifest} (expected sha256 {files.get(rel)}); "
                             "rebuild the distilled model (`hms scan --distill`)")  # fmt: skip
    return DistilledModel(folder, preprocessing, threads, max_missing, version)
