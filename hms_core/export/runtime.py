"""The deployment package at run time: numpy + onnxruntime only (importing this module never imports torch).

A package (written by :mod:`hms_core.export.package`) is a folder ``<root>/models/deployments/<version>/``:

``manifest.json``  ``{"format", "version", "files": {relpath: sha256}}``: every other file of the folder
``package.json``   classes, preprocessing parameters, partition layout, members (input spec, one engine per fold and
                   precision), combiner, calibration, data version, metrics, the drift reference's path
``model_card.md``  what the model is for, its figures with intervals, its limits
``engines/<member>/fold_<k>.<precision>.onnx``  probabilities ``(B, 6)`` from the member's input ``x``, flip TTA
                   inside the graph where the member was evaluated with it; ``refit.<precision>.onnx`` instead for
                   a member deployed as one refit on every fold (its ``folds`` are ``["refit"]``);
                   ``<fold>.fp32_small.onnx`` (exported without ``export.rewrites``: e.g. the GRU as onnxruntime's
                   kernel, not unrolled) for batches below the member's ``small_batch.below`` rows
``reference/``     the training distribution for drift monitoring

:func:`load_package` checks every SHA-256 of the manifest first (a changed, missing or extra file is refused,
naming it). :meth:`DeploymentPackage.predict_batch` turns a preprocessed batch
(:class:`hms_core.preprocess.BatchOutput`) into each member's inputs exactly as training did
(:func:`member_inputs`: the stored dtype, the labelled segment, the tiled spectrogram image, the feature columns),
averages each member over its fold models (as the ensemble does for test rows), blends and calibrates in numpy.

Sessions: each member's fold engines run as one graph with the fold mean inside (:func:`merge_folds`, built in
memory at load time from the verified files), at onnxruntime's full optimisation level (the CPU-specific layout
rewrites happen at load time), with the package's intra-op threads (``load_package(threads=...)``: the service
gives each concurrent request its share of the cores), one inter-op thread and no spinning.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hms_core.checks import check_option
from hms_core.constants import CHAIN_FLIP, CHAIN_NAMES, CLASSES, N_CLASSES
from hms_core.io import sha256_file

__all__ = [
    "DEPLOYMENTS_DIR",
    "LATEST_FILE",
    "MANIFEST_FILE",
    "PACKAGE_FILE",
    "PRECISIONS",
    "DeploymentPackage",
    "PackageError",
    "PackagePrediction",
    "combine",
    "latest_package",
    "load_package",
    "member_inputs",
    "merge_folds",
    "resize_bilinear",
    "verify_manifest",
]

FORMAT = 1
MANIFEST_FILE = "manifest.json"
PACKAGE_FILE = "package.json"
CARD_FILE = "model_card.md"
#: ``<root>/models/deployments/latest.json``: ``{"version", "path"}`` of the newest complete package.
LATEST_FILE = "latest.json"
DEPLOYMENTS_DIR = "deployments"
#: Precisions :meth:`DeploymentPackage.predict_batch` accepts: ``best`` = int8 where deployed, else fp32.
PRECISIONS = ("fp32", "int8", "best")
#: Suffix of a member's small-batch engine set (:meth:`DeploymentPackage.engine_set`).
SMALL_SUFFIX = "_small"
#: Member probabilities are clipped to this before logs (:data:`hms_core.ensemble.combiners.LOG_EPS`).
LOG_EPS = 1e-7
N_CHAINS = len(CHAIN_NAMES)
CHAIN_FLIP_ORDER = tuple(CHAIN_NAMES.index(CHAIN_FLIP[c]) for c in CHAIN_NAMES)


class PackageError(ValueError):
    """A deployment package is missing, incomplete, altered, or cannot take the input it was given."""


# --- manifest -------------------------------------------------------------------------------------------------
def package_files(path: str | os.PathLike[str]) -> list[str]:
    """Every file under ``path`` except the manifest, as sorted POSIX paths relative to ``path``."""
    root = Path(path)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.relative_to(root).as_posix() != MANIFEST_FILE)  # fmt: skip


def verify_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check that the files of the package at ``path`` are exactly those of its manifest, byte for byte (SHA-256).
    Returns the manifest; raises :class:`PackageError` naming the first file that differs, is missing or extra."""
    root = Path(path)
    mpath = root / MANIFEST_FILE
    if not mpath.is_file():
        raise PackageError(f"{mpath} does not exist: {root} is not a complete deployment package "
                           "(`hms run --stage export` writes one)")  # fmt: skip
    try:
        manifest = json.loads(mpath.read_text())
        files = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as e:
        raise PackageError(
            f"{mpath} is not a valid manifest ({e}); expected {{'format', 'version', 'files'}}"
        ) from e
    if manifest.get("format") != FORMAT:
        raise PackageError(f"{mpath}: format {manifest.get('format')!r} is not supported (expected {FORMAT})")
    have = set(package_files(root))
    missing = sorted(set(files) - have)
    if missing:
        raise PackageError(
            f"{root / missing[0]} is listed in {mpath} but missing ({len(missing)} file(s) missing)"
        )
    extra = sorted(have - set(files))
    if extra:
        raise PackageError(f"{root / extra[0]} is not listed in {mpath}: the package was altered after it was "
                           f"written ({len(extra)} unlisted file(s)); refusing to load it")  # fmt: skip
    for rel in sorted(files):
        digest = sha256_file(root / rel)
        if digest != files[rel]:
            raise PackageError(f"{root / rel} does not match its SHA-256 in {mpath} (expected {files[rel][:16]}..., "
                               f"got {digest[:16]}...): the file was changed; refusing to load the package")  # fmt: skip
    return manifest


# --- inputs: what each member reads, from a preprocessed batch ------------------------------------------------
def _stored(a: Any, dtype: str) -> np.ndarray:
    """``a`` as the partition stored it (``layout.dtype``) and read it back (float32): training saw these values."""
    a = np.asarray(a)
    if np.dtype(dtype) != np.float32:
        a = a.astype(dtype)
    return a.astype(np.float32, copy=False)


def _nan_to_num(a: np.ndarray) -> np.ndarray:
    """``np.nan_to_num(a)`` (NaN -> 0, +-inf -> the largest finite values), without its copies and masks when ``a``
    is finite throughout (the float64 sum of float32 values is finite exactly then), as preprocessed batches are."""
    if np.isfinite(a.sum(dtype=np.float64)):
        return a
    return np.nan_to_num(a)


def _bilinear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale = np.float32(n_in / n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def resize_bilinear(a: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize the last two axes of ``a`` to ``size`` like ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)`` (no antialiasing), in float32."""
    a = np.asarray(a, dtype=np.float32)
    h, w = int(size[0]), int(size[1])
    if a.shape[-2:] == (h, w):
        return a
    r0, r1, lr = _bilinear_axis(a.shape[-2], h)
    c0, c1, lc = _bilinear_axis(a.shape[-1], w)
    top, bottom = a[..., r0, :], a[..., r1, :]
    lr = lr[:, None]
    rows = top * (np.float32(1) - lr) + bottom * lr
    return rows[..., c0] * (np.float32(1) - lc) + rows[..., c1] * lc


def _feature_matrix(features: Any, names: Sequence[str]) -> np.ndarray:
    if features is None:
        raise PackageError("this package has a features member but the batch has no features "
                           "(process_windows(..., compute_features=True) computes them)")  # fmt: skip
    cols = set(features.columns)
    missing = [c for c in names if c not in cols]
    if missing:
        raise PackageError(
            f"the batch's features lack {len(missing)} column(s) the package reads, e.g. {missing[:5]}"
        )
    names = list(names)
    if hasattr(features, "select") and not hasattr(features, "iloc"):  # polars: one conversion, not one per column
        return np.ascontiguousarray(features.select(names).to_numpy(), dtype=np.float32)
    return np.ascontiguousarray(features[names].to_numpy(), dtype=np.float32)  # pandas


def member_inputs(member: Mapping[str, Any], out: Any, layout: Mapping[str, Any]) -> np.ndarray:
    """The model input ``x`` of ``member`` (a ``package.json`` member entry) for the preprocessed batch ``out``
    (``.bipolar (B, C, context)``, ``.spectrograms {type: (B, 4, F, T)}``, ``.features`` table), read as training read
    its partition (:mod:`hms_core.training.inputs`)."""
    kind = member["input_kind"]
    if kind == "features":
        return _feature_matrix(getattr(out, "features", None), member["feature_names"])
    spec, dtype = member["input_spec"], layout["dtype"]
    if kind == "raw":
        x = np.asarray(out.bipolar)
        if x.ndim != 3 or x.shape[1] != spec["n_chans"]:
            raise PackageError(f"member '{member['name']}' reads bipolar (batch, {spec['n_chans']}, samples), "
                               f"got {x.shape}")  # fmt: skip
        if not spec["use_context"]:
            n = int(spec["n_times"])
            start = int(np.clip(layout["segment_start"], 0, x.shape[-1] - n))
            x = x[:, :, start : start + n]
        elif x.shape[-1] != spec["n_times"]:
            raise PackageError(f"member '{member['name']}' reads the whole context of {spec['n_times']} samples, "
                               f"got {x.shape[-1]}")  # fmt: skip
        return np.ascontiguousarray(_nan_to_num(_stored(x, dtype)))
    if kind != "spectrogram":
        raise PackageError(f"member '{member['name']}': unknown input kind {kind!r}")
    tile = tuple(spec["tile"])
    chans = []
    for t in spec["spectrograms"]:
        if t not in out.spectrograms:
            raise PackageError(f"member '{member['name']}' reads the '{t}' spectrogram but the batch has "
                               f"{sorted(out.spectrograms)}")  # fmt: skip
        a = _stored(out.spectrograms[t], dtype)
        if a.ndim != 4 or a.shape[1] != N_CHAINS:
            raise PackageError(f"spectrogram '{t}': expected (batch, {N_CHAINS}, F, T), got {a.shape}")
        a = _nan_to_num(resize_bilinear(a, tile))
        chans.append(a.reshape(a.shape[0], N_CHAINS * tile[0], tile[1]))
    return np.ascontiguousarray(np.stack(chans, axis=1))


# --- the blend, in numpy (same arithmetic as hms_core.ensemble.combiners / calibration) -----------------------
def _log_probs(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), LOG_EPS, 1.0)
    return np.log(q / q.sum(axis=-1, keepdims=True))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def combine(combiner: Mapping[str, Any], calibration: Mapping[str, Any] | None,
            member_probs: Mapping[str, np.ndarray]) -> np.ndarray:  # fmt: skip
    """The fitted combiner (``Combiner.to_dict()``) over its members' probabilities, then the calibrator
    (``Calibrator.to_dict()``) when there is one: the numbers :func:`hms_core.ensemble.nested.ensemble_predict`
    gives, without scipy."""
    names = list(combiner["members"])
    missing = [m for m in names if m not in member_probs]
    if missing:
        raise PackageError(f"predictions of ensemble members {missing} are missing; got {sorted(member_probs)}")
    p = np.stack([np.asarray(member_probs[m], dtype=np.float64) for m in names])
    kind, params = combiner["kind"], combiner.get("params") or {}
    if kind == "mean":
        out = p.mean(axis=0)
    elif kind == "log_linear":
        out = _softmax(
            np.tensordot(np.asarray(params["weights"]), _log_probs(p), axes=1) + np.asarray(params["bias"])
        )
    elif kind == "stacking":
        lp = _log_probs(p)
        x = lp.transpose(1, 0, 2).reshape(lp.shape[1], -1)
        out = _softmax(x @ np.asarray(params["coef"]) + np.asarray(params["intercept"]))
    else:
        raise PackageError(f"Invalid value for the 'combiner.kind' parameter. Allowed values are ['mean', "
                           f"'log_linear', 'stacking'], but got {kind!r} instead.")  # fmt: skip
    if calibration:
        bias = calibration.get("bias")
        b = np.zeros(N_CLASSES) if bias is None else np.asarray(bias, dtype=np.float64)
        out = _softmax(_log_probs(out) / float(calibration["temperature"]) + b)
    return out


def entropy(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=1)


def kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) per row (q clipped to :data:`LOG_EPS`)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.clip(np.asarray(q, dtype=np.float64), LOG_EPS, 1.0)
    return np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(q)), 0.0).sum(axis=1)


# --- sessions -------------------------------------------------------------------------------------------------
#: Load-time graph optimisation levels of :func:`session_options`.
LOAD_LEVELS = ("basic", "all")


def session_options(threads: int, level: str = "all") -> Any:
    """Session options: ``threads`` intra-op threads, one inter-op thread, no spinning, load-time optimisation
    ``level`` (``all``: the default; ``basic``: only the portable rewrites, as the engines were saved)."""
    import onnxruntime as ort

    check_option("level", level, LOAD_LEVELS)

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # bursty request load: threads sleep between requests instead of spinning on the cores
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # engines are saved optimised up to `export.graph_optimization` (portable rewrites); the layout rewrites of
    # level "all" (blocked NCHWc convolutions for this CPU's vector width) are hardware-specific, so they are done
    # here, at load time, where they are cheap: about 2x on the CNN members at batch 32. The export's parity gate
    # measures sessions made with these options.
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if level == "all"
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)  # fmt: skip
    so.log_severity_level = 3
    return so


def default_providers() -> list[str]:
    """CUDA when onnxruntime has it (a GPU build on a GPU machine), then CPU. TensorRT is opt-in
    (``providers=[...]``): it builds engines per input shape at first use."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


def make_session(path: str | os.PathLike[str] | bytes, threads: int = 2, providers: Sequence[str] | None = None,
                 level: str = "all") -> Any:  # fmt: skip
    """An onnxruntime session of the model at ``path`` (or serialized model bytes) with :func:`session_options`."""
    import onnxruntime as ort

    src = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(
        src, session_options(threads, level), providers=list(providers or default_providers())
    )


def merge_folds(paths: Sequence[str | os.PathLike[str]]) -> bytes | None:
    """One ONNX model computing what :meth:`DeploymentPackage.member_probs` computes from the fold engines at
    ``paths``: every fold's graph on the shared input ``x``, each fold's probabilities divided by their row sum,
    their mean as ``probs``. One session run per member instead of one per fold (per-run overhead, thread hand-offs:
    what dominates at batch 1). Returns None where the folds cannot share a graph (different opsets, model-local
    functions), and the caller keeps one session per fold."""
    import onnx
    from onnx import TensorProto, compose, helper

    models = [onnx.load(str(p)) for p in paths]
    opsets = [{o.domain or "ai.onnx": o.version for o in m.opset_import} for m in models]
    names = [(m.graph.input[0].name, m.graph.output[0].name) for m in models]
    if (any(o != opsets[0] for o in opsets) or any(m.functions for m in models)
            or any(len(m.graph.input) != 1 or len(m.graph.output) != 1 or n != ("x", "probs") for m, n in zip(models, names))):  # fmt: skip
        return None
    new_reduce = opsets[0].get("ai.onnx", 1) >= 13  # ReduceSum takes its axes as an input from opset 13
    graph = helper.make_graph([], "fold_mean", [models[0].graph.input[0]], [])
    axes = helper.make_tensor("fold_mean/axes", TensorProto.INT64, [1], [1])
    inv = helper.make_tensor("fold_mean/inv_k", TensorProto.FLOAT, [], [1.0 / len(models)])
    graph.initializer.extend([axes, inv] if new_reduce else [inv])
    normed = []
    for k, m in enumerate(models):
        g = compose.add_prefix_graph(m.graph, f"fold{k}/", rename_inputs=False)
        graph.node.extend(g.node)
        graph.initializer.extend(g.initializer)
        graph.sparse_initializer.extend(g.sparse_initializer)
        graph.value_info.extend(g.value_info)
        out = g.output[0].name
        rowsum = (helper.make_node("ReduceSum", [out, axes.name], [f"{out}/rowsum"], keepdims=1) if new_reduce
                  else helper.make_node("ReduceSum", [out], [f"{out}/rowsum"], keepdims=1, axes=[1]))  # fmt: skip
        graph.node.extend([rowsum, helper.make_node("Div", [out, f"{out}/rowsum"], [f"{out}/normed"])])
        normed.append(f"{out}/normed")
    graph.node.extend([helper.make_node("Sum", normed, ["fold_mean/sum"]),
                       helper.make_node("Mul", ["fold_mean/sum", inv.name], ["probs"])])  # fmt: skip
    out_info = onnx.ValueInfoProto()
    out_info.CopyFrom(models[0].graph.output[0])
    graph.output.append(out_info)
    merged = helper.make_model(graph, opset_imports=list(models[0].opset_import),
                               ir_version=max(m.ir_version for m in models))  # fmt: skip
    return merged.SerializeToString()


def run_probs(session: Any, x: np.ndarray) -> np.ndarray:
    """An engine's probabilities for ``x`` as float64 rows summing to 1 (``predict_torch`` normalises the same)."""
    p = np.asarray(session.run(["probs"], {"x": x})[0], dtype=np.float64)
    return p / p.sum(axis=1, keepdims=True)


# --- the package ----------------------------------------------------------------------------------------------
@dataclass
class PackagePrediction:
    probs: np.ndarray  # (B, 6) the calibrated blend, CLASSES order
    members: dict[str, np.ndarray]  # member -> (B, 6), mean over its fold models
    uncertainty: np.ndarray  # (B,) entropy (nats) of probs
    disagreement: np.ndarray  # (B,) mean over members of KL(member || blend)
    precision: dict[str, str] = field(default_factory=dict)  # member -> the precision that ran


@dataclass
class DeploymentPackage:
    path: Path
    meta: dict[str, Any]
    threads: int = 2
    providers: list[str] | None = None
    #: run each member's fold engines as one merged graph (:func:`merge_folds`); False: one session per fold
    merged: bool = True
    #: load-time graph optimisation (:data:`LOAD_LEVELS`)
    level: str = "all"
    _sessions: dict[tuple[str, str, str], Any] = field(default_factory=dict, repr=False)

    @property
    def version(self) -> str:
        return str(self.meta["version"])

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def preprocessing(self) -> Any:
        from hms_core.config import PreprocessingConfig

        return PreprocessingConfig.model_validate(self.meta["preprocessing"])

    @property
    def layout(self) -> Any:
        from hms_core.partition import Layout

        return Layout.from_dict(self.meta["layout"])

    @property
    def max_missing_channels(self) -> int:
        return int(self.meta["max_missing_channels"])

    @property
    def requires_kaggle_spectrogram(self) -> bool:
        return bool(self.meta["requires_kaggle_spectrogram"])

    @property
    def member_names(self) -> list[str]:
        return [m["name"] for m in self.meta["members"]]

    @property
    def blend_members(self) -> list[str]:
        return list(self.meta["combiner"]["members"])

    @property
    def reference(self) -> Any:
        """The drift reference stored with the package (:func:`hms_core.monitoring.reference.load_reference` of
        its ``reference/`` folder; ``None`` when the package has none)."""
        rel = self.meta.get("reference")
        if not rel:
            return None
        from hms_core.monitoring.reference import load_reference

        return load_reference(self.path / rel)

    def member(self, name: str) -> dict[str, Any]:
        for m in self.meta["members"]:
            if m["name"] == name:
                return m
        raise PackageError(f"{self.path / PACKAGE_FILE} has no member {name!r}; members: {self.member_names}")

    def engine_precision(self, member: Mapping[str, Any], precision: str) -> str:
        """The precision ``precision`` resolves to for ``member`` (``best``: the member's ``best`` entry, int8 where
        every fold has an int8 engine that passed parity and ran faster than fp32 when exported, else fp32)."""
        check_option("precision", precision, PRECISIONS)
        engines = member["engines"]
        if precision == "best":
            best = member.get("best", "fp32")
            return best if len(engines.get(best, {})) == len(member["folds"]) else "fp32"
        if len(engines.get(precision, {})) != len(member["folds"]):
            why = member.get("skipped", {}).get(precision, "not built")
            raise PackageError(f"member '{member['name']}' has no {precision} engine for every fold ({why}); "
                               "use precision='fp32' or 'best'")  # fmt: skip
        return precision

    @staticmethod
    def engine_set(member: Mapping[str, Any], precision: str, batch: int) -> str:
        """Which engines of ``member`` run a batch of ``batch`` rows at the resolved ``precision``: ``precision``,
        or ``<precision>_small`` (the member's ``small_batch`` engines, exported without ``export.rewrites``:
        faster for a few rows) below ``small_batch.below`` rows when every fold has one."""
        sb = member.get("small_batch")
        if sb and batch < int(sb["below"]) and len(sb["engines"].get(precision, {})) == len(member["folds"]):
            return f"{precision}{SMALL_SUFFIX}"
        return precision

    @staticmethod
    def _engines(member: Mapping[str, Any], engine_set: str) -> Mapping[str, str]:
        if engine_set.endswith(SMALL_SUFFIX):
            return member["small_batch"]["engines"][engine_set.removesuffix(SMALL_SUFFIX)]
        return member["engines"][engine_set]

    def session(self, member: str, fold: str, precision: str) -> Any:
        """The session of one fold engine (``precision``: a precision or an :meth:`engine_set`)."""
        key = (member, fold, precision)
        if key not in self._sessions:
            rel = self._engines(self.member(member), precision)[fold]
            self._sessions[key] = make_session(self.path / rel, self.threads, self.providers, self.level)
        return self._sessions[key]

    def merged_session(self, member: str, precision: str) -> Any | None:
        """The session of the member's fold engines merged into one graph (:func:`merge_folds`), None where they
        cannot be merged (then :meth:`member_probs_from_inputs` runs one session per fold)."""
        key = (member, "*", precision)
        if key not in self._sessions:
            m = self.member(member)
            model = merge_folds([self.path / self._engines(m, precision)[f] for f in m["folds"]])
            self._sessions[key] = (None if model is None
                                   else make_session(model, self.threads, self.providers, self.level))  # fmt: skip
        return self._sessions[key]

    def member_probs(self, name: str, out: Any, precision: str = "fp32") -> tuple[np.ndarray, str]:
        """One member's probabilities: the mean over its fold models, renormalised (as the ensemble's test
        predictions, :func:`hms_core.ensemble.members.load_members`)."""
        m = self.member(name)
        return self.member_probs_from_inputs(name, member_inputs(m, out, self.meta["layout"]), precision)

    def member_probs_from_inputs(
        self, name: str, x: np.ndarray, precision: str = "fp32"
    ) -> tuple[np.ndarray, str]:
        """:meth:`member_probs` on the member's ready-made input ``x`` (:func:`member_inputs`)."""
        m = self.member(name)
        prec = self.engine_precision(m, precision)
        which = self.engine_set(m, prec, len(x))
        merged = self.merged_session(name, which) if self.merged else None
        if merged is not None:
            return run_probs(merged, x), prec
        mean = np.mean([run_probs(self.session(name, f, which), x) for f in m["folds"]], axis=0)
        return mean / mean.sum(axis=1, keepdims=True), prec

    def predict_batch(
        self, out: Any, precision: str = "fp32", members: Sequence[str] | None = None
    ) -> PackagePrediction:
        """Probabilities of the preprocessed batch ``out`` (:class:`hms_core.preprocess.BatchOutput`).

        ``members``: the members to run (default: every packaged member). They must include every member of the
        blend (:attr:`blend_members`); the disagreement is then the mean over those members."""
        check_option("precision", precision, PRECISIONS)
        names = self.member_names if members is None else [n for n in self.member_names if n in set(members)]
        unknown = sorted(set(members or ()) - set(self.member_names))
        lacking = [n for n in self.blend_members if n not in names]
        if unknown or lacking:
            raise PackageError(f"members {list(members or ())} must be packaged members {self.member_names} that "
                               f"include the blend's {self.blend_members}"
                               + (f" (unknown: {unknown})" if unknown else "")
                               + (f" (missing from the blend: {lacking})" if lacking else ""))  # fmt: skip
        members, used = {}, {}
        for name in names:
            members[name], used[name] = self.member_probs(name, out, precision)
        probs = combine(self.meta["combiner"], self.meta.get("calibration"), members)
        dis = np.mean([kl_rows(p, probs) for p in members.values()], axis=0)
        return PackagePrediction(probs, members, entropy(probs), dis, used)

    def warm_up(self, precision: str = "best", members: Sequence[str] | None = None) -> None:
        """Open every session ``precision`` uses for ``members`` (default: all; the first request then pays no
        load time)."""
        for m in self.meta["members"]:
            if members is not None and m["name"] not in members:
                continue
            prec = self.engine_precision(m, precision)
            for which in {self.engine_set(m, prec, 1), prec}:  # the small-batch engines too, where it has them
                if not (self.merged and self.merged_session(m["name"], which) is not None):
                    for f in m["folds"]:
                        self.session(m["name"], f, which)


def load_package(path: str | os.PathLike[str], verify: bool = True, threads: int | None = None,
                 providers: Sequence[str] | None = None, merged: bool = True,
                 level: str = "all") -> DeploymentPackage:  # fmt: skip
    """Open the package at ``path`` (a version folder, or a ``deployments`` folder: its ``latest.json``).
    ``verify`` checks every file against the manifest first (:func:`verify_manifest`); ``threads`` onnxruntime
    intra-op threads per session (default: the package's ``export.intra_op_threads``); ``merged`` runs each
    member's fold engines as one graph (:func:`merge_folds`); ``level`` the load-time graph optimisation
    (:data:`LOAD_LEVELS`)."""
    root = Path(path)
    if (root / LATEST_FILE).is_file() and not (root / PACKAGE_FILE).is_file():
        root = latest_package(root)
    if not root.is_dir():
        raise PackageError(f"{root} is not a folder: pass a deployment package folder "
                           f"(<workspace>/models/{DEPLOYMENTS_DIR}/<version>)")  # fmt: skip
    manifest = verify_manifest(root) if verify else None
    ppath = root / PACKAGE_FILE
    if not ppath.is_file():
        raise PackageError(f"{ppath} does not exist: {root} is not a deployment package")
    meta = json.loads(ppath.read_text())
    if manifest is not None and manifest.get("version") != meta.get("version"):
        raise PackageError(f"{ppath}: version {meta.get('version')!r} differs from the manifest's "
                           f"{manifest.get('version')!r}")  # fmt: skip
    if list(meta.get("classes", [])) != list(CLASSES):
        raise PackageError(f"{ppath}: classes {meta.get('classes')} differ from {list(CLASSES)}")
    t = meta.get("threads", 2) if threads is None else threads
    check_option("level", level, LOAD_LEVELS)
    return DeploymentPackage(root, meta, int(t), list(providers) if providers else None, bool(merged), level)


def latest_package(deployments: str | os.PathLike[str]) -> Path:
    """The package ``<deployments>/latest.json`` points at (written last by the export, so it is complete)."""
    d = Path(deployments)
    p = d / LATEST_FILE
    if not p.is_file():
        raise PackageError(f"{p} does not exist: no deployment package was built under {d} "
                           "(run `hms run --stage export`)")  # fmt: skip
    try:
        rel = json.loads(p.read_text())["path"]
    except (ValueError, KeyError, TypeError) as e:
        raise PackageError(f"{p} is not a valid pointer ({e}); expected {{'version', 'path'}}") from e
    target = d / rel
    if not (target / PACKAGE_FILE).is_file():
        raise PackageError(f"{p} points at {target}, which is not a deployment package")
    return target
