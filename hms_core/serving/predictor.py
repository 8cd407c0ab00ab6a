"""The one prediction path of the service and of ``hms predict``: upload -> Recording -> windows -> the training
preprocessing -> the deployment package -> per-window results.

:class:`Predictor` wraps a loaded :class:`hms_core.export.DeploymentPackage`. For every recording it checks
what depends on the package (missing channels against ``pkg.max_missing_channels``, the sampling rate against the
package's band-pass, the length against its context), cuts the windows of :mod:`hms_core.serving.windows`,
runs :func:`hms_core.preprocess.process_windows` with ``pkg.preprocessing`` (the same code and parameters as
training) in batches of ``serving.batch_size`` and ``pkg.predict_batch``. Only the members of the blend run
(:func:`serving_members`: the combiner's members in ``package.json``, what the ensemble's selection kept; members
packaged to be reported only are not run), and only the spectrogram types and features that they read, or that the
monitoring log keeps, are computed (:func:`needed_preprocessing`). A window whose own input lacks more EEG
channels than the package allows, or that the preprocessing marked ``bad_window`` (all NaN, or outputs that were
not finite), gets no probabilities (``probabilities: null`` with the reason): never a confident answer from zeros.

Every prediction is handed to the monitoring log (:meth:`Predictor.attach_log`) from one call site,
:meth:`Predictor._log_prediction`, which never raises and never waits for the disk; its problems show in
:meth:`Predictor.log_health` (the service's ``/ready``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from hms_core.config import ServingConfig
from hms_core.constants import CLASSES, EEG_CHANNELS, SFREQ
from hms_core.eeg_io import RecordError
from hms_core.preprocess import process_windows
from hms_core.serving.errors import BadInput, ServingError, Unprocessable
from hms_core.serving.inputs import Recording, read_json, read_upload, safe_name
from hms_core.serving.windows import iter_window_batches, plan_windows

__all__ = [
    "Predictor",
    "RecordingResult",
    "WindowResult",
    "needed_preprocessing",
    "result_columns",
    "result_rows",
    "serving_members",
]

_log = logging.getLogger(__name__)

#: Quality flags reported per window (from ``BatchOutput.window_quality``), in this order.
QUALITY_FIELDS: tuple[str, ...] = (
    "bad_window", "n_missing_channels", "n_flagged_channels", "flagged_channels", "n_flagged_bipolar",
    "nan_fraction", "was_interpolated", "n_flat", "n_noisy", "n_pops", "clipped_fraction",
)  # fmt: skip


def _plain(v: Any) -> Any:
    """A JSON-ready Python value of a numpy scalar (non-finite floats -> None)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@dataclass
class WindowResult:
    """One scored 10-s window: seconds in the recording, probabilities (None when refused), uncertainty, flags."""

    index: int
    start_s: float
    end_s: float
    probabilities: dict[str, float] | None
    entropy: float | None
    disagreement: float | None
    quality: dict[str, Any]
    reason: str | None = None

    @property
    def predicted_class(self) -> str | None:
        return None if self.probabilities is None else max(self.probabilities, key=self.probabilities.get)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "predicted_class": self.predicted_class,
            "probabilities": self.probabilities,
            "uncertainty": {"entropy": self.entropy, "disagreement": self.disagreement},
            "quality": self.quality,
            "reason": self.reason,
        }


@dataclass
class RecordingResult:
    """All windows of one recording, with where they came from and the package that scored them."""

    source: str
    kind: str
    package_version: str
    precision: str
    duration_s: float
    original_sampling_rate: float
    missing_channels: tuple[str, ...]
    ignored_channels: tuple[str, ...]
    windows: list[WindowResult]
    request_id: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def window_id(self, index: int) -> str | None:
        """``<request_id>:<index>``: the monitoring log's id of the window (what a labels CSV refers to)."""
        return None if self.request_id is None else f"{self.request_id}:{index}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "package_version": self.package_version,
            "precision": self.precision,
            "request_id": self.request_id,
            "duration_s": self.duration_s,
            "original_sampling_rate": self.original_sampling_rate,
            "sampling_rate": SFREQ,
            "missing_channels": list(self.missing_channels),
            "ignored_channels": list(self.ignored_channels),
            "n_windows": len(self.windows),
            "windows": [{"window_id": self.window_id(w.index), **w.to_dict()} for w in self.windows],
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
        }


def result_columns() -> list[str]:
    """Columns of the per-window table (``hms predict --out``): the same values as the JSON response."""
    return [
        "source", "kind", "package_version", "precision", "request_id", "window_id", "window", "start_s", "end_s",
        "predicted_class",
        *(f"prob_{c}" for c in CLASSES), "entropy", "disagreement", *QUALITY_FIELDS, "reason",
    ]  # fmt: skip


def result_rows(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of :func:`result_columns` of one JSON response (``RecordingResult.to_dict()``)."""
    rows = []
    for w in response["windows"]:
        probs = w["probabilities"] or {}
        q = w["quality"]
        row = {k: response[k] for k in ("source", "kind", "package_version", "precision", "request_id")}
        row |= {"window_id": w["window_id"], "window": w["index"], "start_s": w["start_s"], "end_s": w["end_s"]}
        row |= {"predicted_class": w["predicted_class"]} | {f"prob_{c}": probs.get(c) for c in CLASSES}
        row |= {"entropy": w["uncertainty"]["entropy"], "disagreement": w["uncertainty"]["disagreement"]}
        row |= {k: (",".join(q[k]) if k == "flagged_channels" else q[k]) for k in QUALITY_FIELDS}
        rows.append(row | {"reason": w["reason"]})
    return rows


class Predictor:
    """Predictions of one deployment package (thread-safe: inference keeps no state between calls)."""

    def __init__(self, package: Any, settings: ServingConfig | None = None,
                 members: Sequence[str] | None | str = "blend") -> None:  # fmt: skip
        """``members``: ``"blend"`` (the members the blend uses, :func:`serving_members`), None (every packaged
        member, as ``pkg.predict_batch`` runs them) or a list (that includes the blend's)."""
        self.pkg = package
        self.settings = settings or ServingConfig()
        classes = tuple(package.classes)
        if classes != CLASSES:
            raise ValueError(
                f"package {package.path} has classes {list(classes)}; the platform's are {list(CLASSES)}"
            )
        if getattr(package, "requires_kaggle_spectrogram", False):
            raise ValueError(
                f"package {package.path} needs the Kaggle 10-min spectrogram as an input, which an EEG upload does "
                "not carry; export a package whose members read EEG only."
            )
        #: read once: the package's properties parse its package.json on every access
        self.preprocessing = package.preprocessing
        #: the members the service runs: those of the blend (``package.json``'s combiner, i.e. the ensemble's
        #: selection), not the packaged members it reports only; their inputs are all that is preprocessed
        self.members = (
            serving_members(package) if members == "blend" else (None if members is None else list(members))
        )
        records = getattr(package, "meta", {}).get("members")
        if records is not None and self.members is not None:
            records = [m for m in records if m.get("name") in set(self.members)]
        self._needed = {flag: needed_preprocessing(self.preprocessing, records, flag) for flag in (False, True)}
        self.layout = package.layout
        self.max_missing_channels = int(package.max_missing_channels)
        ecfg = self.preprocessing.eeg
        #: lowest input rate whose Nyquist frequency covers the package's band-pass
        self.min_sampling_rate = 2.0 * float(ecfg.filter_high)
        self._log_sink: Any = None
        self._source = "serve"
        self._log_error: str | None = None

    @classmethod
    def from_path(
        cls, path: str | Path, settings: ServingConfig | None = None, threads: int | None = None
    ) -> Predictor:
        """Load and verify (every SHA-256 of the manifest) the package at ``path``; ``threads``: onnxruntime
        intra-op threads per engine (default: the package's)."""
        from hms_core.export import load_package

        return cls(load_package(path, verify=True, threads=threads), settings)

    @property
    def run_preprocessing(self) -> Any:
        """``pkg.preprocessing`` restricted to the outputs the members read (and the features while predictions
        are logged: drift is computed on them); every output it keeps is computed exactly as in training."""
        return self._needed[self._log_sink is not None and self.settings.log_predictions]

    # --- the monitoring hook --------------------------------------------------------------------------------
    def attach_log(self, sink: Any, source: str = "serve") -> None:
        """Hand every prediction to ``sink.append(rows)`` (a :class:`hms_core.monitoring.log.PredictionLog`)."""
        self._log_sink, self._source = sink, source

    def log_health(self) -> dict[str, Any]:
        """The monitoring log's state for ``/ready``: ``{"enabled", "ok", "problems", ...}``."""
        if self._log_sink is None:
            return {"enabled": False, "ok": True, "problems": []}
        try:
            health = dict(self._log_sink.health())
        except Exception as e:  # noqa: BLE001 - a broken log must not break /ready
            health = {"ok": False, "problems": [f"health() failed: {type(e).__name__}: {e}"]}
        problems = list(health.get("problems", []))
        if self._log_error:
            problems.append(self._log_error)
        return {**health, "enabled": True, "ok": bool(health.get("ok", True)) and not self._log_error,
                "problems": problems}  # fmt: skip

    def _log_prediction(
        self, result: RecordingResult, probs: np.ndarray, batch: Any, disagreement: np.ndarray
    ) -> None:
        """The single call site of the monitoring log: rows of every window, appended without waiting; never raises."""
        if self._log_sink is None or not self.settings.log_predictions:
            return
        try:
            from hms_core.monitoring.log import prediction_rows

            rows = prediction_rows(
                probs, batch, package_version=result.package_version, input_kind=result.kind, source=self._source,
                latency_s=sum(result.seconds.values()), request_id=result.request_id,
                window_starts=[w.start_s for w in result.windows], disagreement=disagreement,
                precision=result.precision, identifiers={"file_name": result.source},
            )  # fmt: skip
            accepted = self._log_sink.append(rows)
            self._log_error = None if accepted is not False else "the prediction log refused rows (queue full)"
        except Exception as e:  # noqa: BLE001 - logging must never fail a prediction
            self._log_error = f"prediction log: {type(e).__name__}: {e}"
            _log.warning("could not log a prediction: %s", self._log_error)

    # --- reading --------------------------------------------------------------------------------------------
    @property
    def sampling_rate_range(self) -> tuple[float, float]:
        return (self.min_sampling_rate, float(self.settings.max_sampling_rate))

    def read(self, data: bytes, filename: str | None, content_type: str | None) -> Recording:
        return read_upload(data, filename, content_type, sampling_rate_range=self.sampling_rate_range)

    def read_json(self, obj: dict[str, Any], source: str = "json") -> Recording:
        return read_json(obj, source, sampling_rate_range=self.sampling_rate_range)

    def check(self, rec: Recording) -> None:
        """Refuse a recording missing more EEG channels than the package allows (422 naming them)."""
        allowed = self.max_missing_channels
        if len(rec.missing) > allowed:
            raise Unprocessable(
                f"'{rec.source}' lacks {len(rec.missing)} of the {len(EEG_CHANNELS)} EEG channels "
                f"{list(rec.missing)} (absent, or NaN throughout); package {self.pkg.version} allows at most "
                f"{allowed} missing. Found {list(rec.found)}.",
                field="channels",
            )

    # --- predicting -----------------------------------------------------------------------------------------
    def predict_recording(self, rec: Recording, request_id: str | None = None) -> RecordingResult:
        """Per-window results of one recording (raises :class:`~hms_core.serving.errors.ServingError`); window ``i``
        is ``<request_id>:<i>`` in the answer and in the monitoring log (a new random id when none is given)."""
        t0 = time.perf_counter()
        request_id = request_id or _new_request_id()
        self.check(rec)
        plan = plan_windows(rec.n_times, self.layout, rec.source, self.settings.max_windows)
        starts, ends = plan.segment_start_s, plan.segment_end_s
        probs, disagreement, entropy = [], [], []
        quality: dict[str, list[np.ndarray]] = {}
        feats = []
        seconds = {"preprocess": 0.0, "predict": 0.0}
        for sl, windows in iter_window_batches(rec, plan, self.settings.batch_size):
            t = time.perf_counter()
            ids = [f"{rec.source} window {i}" for i in range(sl.start, sl.stop)]
            try:
                out = process_windows(windows, self.run_preprocessing, ids)
            except RecordError as e:
                raise Unprocessable(str(e), field="data") from None
            t1 = time.perf_counter()
            pred = self.pkg.predict_batch(out, precision=self.settings.precision, members=self.members)
            seconds["preprocess"] += t1 - t
            seconds["predict"] += time.perf_counter() - t1
            probs.append(np.asarray(pred.probs, np.float64))
            entropy.append(np.asarray(pred.uncertainty, np.float64))
            disagreement.append(np.asarray(pred.disagreement, np.float64))
            for k, v in out.window_quality.items():
                quality.setdefault(k, []).append(np.asarray(v))
            if out.features is not None:
                feats.append(out.features)
        p, ent, dis = np.concatenate(probs), np.concatenate(entropy), np.concatenate(disagreement)
        wq = {k: np.concatenate(v) for k, v in quality.items()}
        allowed = self.max_missing_channels
        results = []
        for i in range(plan.n_windows):
            q = {k: _plain(wq[k][i]) for k in QUALITY_FIELDS if k in wq}
            if "flagged_channels" in q:
                q["flagged_channels"] = [c for c in str(q["flagged_channels"]).split(",") if c]
            reason = None
            if q.get("bad_window"):
                reason = "bad_window: the input was all NaN or gave non-finite preprocessing outputs"
            elif (q.get("n_missing_channels") or 0) > allowed:
                reason = (
                    f"{q['n_missing_channels']} EEG channels are NaN throughout this window; the package allows "
                    f"at most {allowed}"
                )
            ok = reason is None
            results.append(
                WindowResult(
                    index=i,
                    start_s=float(starts[i]),
                    end_s=float(ends[i]),
                    probabilities={c: float(p[i, k]) for k, c in enumerate(CLASSES)} if ok else None,
                    entropy=float(ent[i]) if ok else None,
                    disagreement=float(dis[i]) if ok else None,
                    quality=q,
                    reason=reason,
                )
            )
        seconds["total"] = time.perf_counter() - t0
        result = RecordingResult(
            source=rec.source,
            kind=rec.kind,
            package_version=str(self.pkg.version),
            precision=self.settings.precision,
            duration_s=rec.duration_s,
            original_sampling_rate=rec.original_sfreq,
            missing_channels=rec.missing,
            ignored_channels=rec.ignored,
            windows=results,
            request_id=request_id,
            seconds=seconds,
        )
        merged = SimpleNamespace(window_quality=wq, features=_concat(feats))
        self._log_prediction(result, p, merged, dis)
        return result

    def predict_bytes(
        self, data: bytes, filename: str | None, content_type: str | None, request_id: str | None = None
    ) -> RecordingResult:
        t = time.perf_counter()
        rec = self.read(data, filename, content_type)
        read_s = time.perf_counter() - t
        result = self.predict_recording(rec, request_id)
        result.seconds = {"read": read_s, **result.seconds}
        return result

    def predict_files(self, paths: Sequence[str | Path]) -> list[RecordingResult]:
        """``hms predict``: each file's bytes through the service's path (same checks, same numbers)."""
        results = []
        for path in paths:
            path = Path(path)
            try:
                data = path.read_bytes()
            except OSError as e:
                raise BadInput(f"'{path}' cannot be read: {e.strerror}", field="file") from None
            try:
                results.append(self.predict_bytes(data, path.name, None, _new_request_id()))
            except ServingError as e:
                e.message = e.message.replace(f"'{safe_name(path.name)}'", f"'{path}'", 1)
                raise
        return results

    def metadata(self) -> dict[str, Any]:
        """Package version, classes, members, preprocessing and the model card's summary (``/metadata``)."""
        pkg = self.pkg
        meta = getattr(pkg, "meta", {}) or {}
        members = [
            {"name": m.get("name"), "folds": list(m.get("folds", [])), "precisions": sorted(m.get("engines", {})),
             "served": self.members is None or m.get("name") in self.members}
            for m in meta.get("members", [])
        ]  # fmt: skip
        card_path = Path(pkg.path) / "model_card.md"
        card = _card_summary(card_path.read_text(encoding="utf-8")) if card_path.is_file() else ""
        return {
            "package_version": str(pkg.version),
            "package_path": Path(pkg.path).name,
            "classes": list(pkg.classes),
            "members": members,
            "combiner": {
                k: meta.get("combiner", {}).get(k) for k in ("name", "members") if k in meta.get("combiner", {})
            },
            "data_version": meta.get("data_version"),
            "metrics": meta.get("metrics"),
            "max_missing_channels": self.max_missing_channels,
            "precision": self.settings.precision,
            "threads": _threads(pkg),
            "preprocessing": self.preprocessing.model_dump(mode="json"),
            "layout": {
                "context_length": self.layout.context_length,
                "segment_start": self.layout.segment_start,
                "segment_length": self.layout.segment_length,
                "sfreq": self.layout.sfreq,
            },
            "input": {
                "kinds": ["hms_parquet", "edf", "bdf", "json"],
                "sampling_rate_range_hz": list(self.sampling_rate_range),
                "min_samples": self.layout.context_length,
                "window_s": self.layout.segment_length / SFREQ,
            },
            "model_card": card,
        }


def serving_members(package: Any) -> list[str] | None:
    """The members a prediction runs: the blend's (``package.blend_members``, the combiner's members: what the
    ensemble's member selection kept), in the package's order; None (every member) for a package object without
    a blend. Members the package carries only to report them are not run by the service: the disagreement is
    over the blend's members."""
    blend = getattr(package, "blend_members", None)
    names = getattr(package, "member_names", None)
    if not blend or not names:
        return None
    return [n for n in names if n in set(blend)]


def needed_preprocessing(cfg: Any, members: list[dict[str, Any]] | None, keep_features: bool = False) -> Any:
    """The package's preprocessing config without the spectrogram types and features no member reads.

    ``members`` are package.json's member records (``input_kind``, ``input_spec.spectrograms``). The mel type is
    kept whenever it is kept or the features are computed and training computed it, because the features then
    share its FFT frames (:func:`hms_core.spectral.spectral_cache`), so what is computed is bit-identical to
    training. Unknown member records (None) keep everything.
    """
    if not members:
        return cfg
    wanted: set[str] = set()
    features = keep_features
    for m in members:
        kind = m.get("input_kind")
        if kind == "features":
            features = True
        elif kind == "spectrogram":
            wanted |= set((m.get("input_spec") or {}).get("spectrograms") or [])
        elif kind != "raw":
            return cfg
    features = features and cfg.features.enabled
    if features and "mel" in cfg.spectrogram.types:
        wanted.add("mel")
    types = [t for t in cfg.spectrogram.types if t in wanted]
    return cfg.model_copy(
        update={
            "spectrogram": cfg.spectrogram.model_copy(update={"types": types}),
            "features": cfg.features.model_copy(update={"enabled": features}),
        }
    )


def _threads(pkg: Any) -> dict[str, int | None]:
    """Threads a request computes on: onnxruntime intra-op per engine, torch's intra-op pool (the preprocessing's
    FFTs; None when torch is not loaded)."""
    import sys

    torch = sys.modules.get("torch")
    return {"onnxruntime_intra_op": getattr(pkg, "threads", None),
            "torch_intra_op": torch.get_num_threads() if torch is not None else None}  # fmt: skip


def _card_summary(text: str, limit: int = 1500) -> str:
    """The model card's first paragraphs (up to ``limit`` characters)."""
    return text.strip()[:limit]


def _concat(frames: list[Any]) -> Any:
    if not frames:
        return None
    if len(frames) == 1:
        return frames[0]
    import polars as pl

    return pl.concat(frames, how="vertical_relaxed")


def _new_request_id() -> str:
    import uuid

    return uuid.uuid4().hex[:16]
