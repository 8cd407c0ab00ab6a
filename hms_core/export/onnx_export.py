"""Torch / LightGBM -> ONNX: the graphs, the exporter fallback, offline optimisation and int8 quantisation.

Every engine maps ``x`` (the member's input, dynamic batch axis) to ``probs`` (B, 6): the softmax, and for a member
evaluated with flip TTA (``training.flip_tta``) the mean of the softmax of the input and of its left/right mirror
(:meth:`~hms_core.models.base.EEGClassifier.flip_input`), both in one pass of the doubled batch. So an engine
reproduces :meth:`hms_core.training.predict.TrainedModel.predict` by itself. Nothing here decides whether an engine
is good: :mod:`hms_core.export.package` measures parity against torch and deploys only engines that pass.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hms_core.checks import check_option
from hms_core.io import atomic_path

__all__ = [
    "EXPORTERS",
    "TTAProbs",
    "export_lightgbm",
    "export_torch",
    "float32_thresholds",
    "optimise",
    "quant_mode",
    "quantize",
]

#: Exporters of ``export.exporter``: ``auto`` tries dynamo, then the TorchScript-based one.
EXPORTERS = ("auto", "dynamo", "torchscript")
#: Opset of the LightGBM converter (onnxmltools 1.16 supports up to 15 for its ai.onnx ops).
LIGHTGBM_OPSET = 15
#: Modules that make a model's int8 version dynamic (weights int8, activations quantised per batch at run time):
#: recurrent layers and transformers (LayerNorm marks the hand-written blocks of hms_core.foundation.model too).
DYNAMIC_QUANT_MODULES = (nn.RNNBase, nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.LayerNorm)
_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
           "all": "ORT_ENABLE_ALL"}  # fmt: skip


class TTAProbs(nn.Module):
    """``x -> probs``: softmax of ``model(x)``, averaged with that of the mirrored input when ``tta``."""

    def __init__(self, model: nn.Module, tta: bool) -> None:
        super().__init__()
        self.model, self.tta = model, bool(tta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.tta:
            return torch.softmax(self.model(x).float(), dim=1)
        b = x.shape[0]
        p = torch.softmax(self.model(torch.cat([x, self.model.flip_input(x)], dim=0)).float(), dim=1)
        return 0.5 * (p[:b] + p[b:])


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporters print progress and warn about every traced branch; keep the stage log readable."""
    buf = io.StringIO()
    # the root logger too: onnxruntime.quantization warns through it ("please consider pre-processing ...")
    loggers = [logging.getLogger(n) for n in ("", "torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def export_torch(module: nn.Module, example: np.ndarray, path: str | os.PathLike[str], exporter: str,
                 opset: int = 18) -> Path:  # fmt: skip
    """Export ``module`` (``x -> probs``) to ``path`` with a dynamic batch axis, with ``exporter`` (dynamo |
    torchscript). Raises whatever the exporter raises."""
    check_option("exporter", exporter, EXPORTERS[1:])
    module = module.eval()
    x = torch.from_numpy(np.ascontiguousarray(example[: max(2, min(len(example), 3))]))
    if len(x) < 2:  # an example batch of 1 lets the exporters freeze the batch axis
        x = torch.cat([x, x])
    with atomic_path(path, suffix=".onnx") as tmp, _quiet(), torch.no_grad():
        if exporter == "dynamo":
            torch.onnx.export(module, (x,), str(tmp), dynamo=True, external_data=False, input_names=["x"],
                              output_names=["probs"], dynamic_shapes={"x": {0: torch.export.Dim("batch", max=65536)}},
                              optimize=True, verbose=False)  # fmt: skip
        else:
            torch.onnx.export(module, (x,), str(tmp), dynamo=False, opset_version=int(opset), input_names=["x"],
                              output_names=["probs"], dynamic_axes={"x": {0: "batch"}, "probs": {0: "batch"}},
                              do_constant_folding=True)  # fmt: skip
    return Path(path)


def float32_thresholds(booster: Any) -> Any:
    """The booster with every numeric split threshold ``t`` (a double) replaced by the largest float32 ``<= t``.

    For float32 inputs ``x`` (what the package feeds), ``x <= t`` and ``x <= t32`` agree, so the predictions do not
    change; but ONNX's TreeEnsemble stores thresholds as float32, and the converter's round-to-nearest moves a
    threshold *above* ``t`` in about half the splits, sending inputs in ``(t, t32]`` down the wrong branch (a
    demo LightGBM fold gave a 3.7e-4 probability difference). Categorical splits (decision_type bit 0) are kept.
    """
    import lightgbm as lgb

    lines = booster.model_to_string().split("\n")
    at = None  # index of the current tree's threshold line (it comes before its decision_type line)
    for i, line in enumerate(lines):
        if line.startswith("threshold="):
            at = i
        elif line.startswith("decision_type=") and at is not None:
            categorical = np.array([int(v) & 1 for v in line.split("=", 1)[1].split()], dtype=bool)
            t = np.array([float(v) for v in lines[at].split("=", 1)[1].split()], dtype=np.float64)
            if len(categorical) != len(t):
                raise ValueError(f"LightGBM model text: {len(t)} thresholds but {len(categorical)} decision types")
            t32 = t.astype(np.float32)
            up = t32.astype(np.float64) > t
            t32[up] = np.nextafter(t32[up], np.float32(-np.inf))
            lines[at] = "threshold=" + " ".join(repr(float(v)) for v in np.where(categorical, t, t32))
            at = None
    # tree_sizes (byte offsets of the tree blocks) no longer holds; without it LightGBM reads the trees in order
    return lgb.Booster(model_str="\n".join(line for line in lines if not line.startswith("tree_sizes=")))


def export_lightgbm(booster: Any, n_features: int, path: str | os.PathLike[str]) -> Path:
    """A LightGBM booster as ``x (B, n_features) float32 -> probs (B, 6)`` (onnxmltools; the class label output
    is removed: the package reads probabilities only). Thresholds are first rounded down to float32
    (:func:`float32_thresholds`), so the float32 tree ensemble takes LightGBM's branches for float32 inputs."""
    import onnx
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    booster = float32_thresholds(booster)
    with _quiet():
        model = convert_lightgbm(booster, initial_types=[("x", FloatTensorType([None, int(n_features)]))],
                                 zipmap=False, target_opset=LIGHTGBM_OPSET)  # fmt: skip
    graph = model.graph
    keep = [o for o in graph.output if o.name == "probabilities"]
    if len(keep) != 1:
        raise ValueError(f"the LightGBM converter gave outputs {[o.name for o in graph.output]}, "
                         "expected one named 'probabilities'")  # fmt: skip
    for node in graph.node:
        node.output[:] = ["probs" if o == "probabilities" else o for o in node.output]
    keep[0].name = "probs"
    del graph.output[:]
    graph.output.extend(keep)
    with atomic_path(path, suffix=".onnx") as tmp:
        onnx.save(model, str(tmp))
    return Path(path)


def optimise(src: str | os.PathLike[str], dst: str | os.PathLike[str], level: str) -> Path:
    """onnxruntime's graph optimisations at ``level`` applied once, offline, and the optimised model saved."""
    import onnxruntime as ort

    check_option("graph_optimization", level, tuple(_LEVELS))
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
    so.log_severity_level = 3
    with atomic_path(dst, suffix=".onnx") as tmp:
        so.optimized_model_filepath = str(tmp)
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return Path(dst)


def quant_mode(model: nn.Module) -> str:
    """``dynamic`` for recurrent and attention models (their activations vary too much per input to calibrate
    once), ``static`` (calibrated activations) for convolutional ones."""
    return "dynamic" if any(isinstance(m, DYNAMIC_QUANT_MODULES) for m in model.modules()) else "static"


class _Batches:
    """onnxruntime's CalibrationDataReader over calibration inputs, ``batch`` rows at a time."""

    def __init__(self, x: np.ndarray, batch: int = 16) -> None:
        self._it: Iterable[np.ndarray] = iter([x[i : i + batch] for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        nxt = next(iter(self._it), None)  # type: ignore[call-overload]
        return None if nxt is None else {"x": nxt}

    def rewind(self) -> None:  # pragma: no cover - single pass
        pass


def quantize(src: str | os.PathLike[str], dst: str | os.PathLike[str], mode: str,
             calibration: np.ndarray | None = None) -> Path:  # fmt: skip
    """int8 ``dst`` from the fp32 export ``src``: dynamic (weights int8, activations per batch) or static (QDQ,
    activations calibrated on ``calibration`` inputs: training windows, never the parity windows)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    check_option("mode", mode, ("dynamic", "static"))
    with atomic_path(dst, suffix=".onnx") as tmp, _quiet():
        if mode == "dynamic":
            quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8)
        else:
            if calibration is None or len(calibration) == 0:
                raise ValueError("static int8 quantisation needs calibration inputs (training windows)")
            quantize_static(str(src), str(tmp), _Batches(calibration), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            calibrate_method=CalibrationMethod.MinMax)  # fmt: skip
    return Path(dst)
