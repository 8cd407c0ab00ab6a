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
    "REWRITES",
    "TTAProbs",
    "UnrolledGRU",
    "attention_heads",
    "conv1d_as_2d",
    "count_ops",
    "export_lightgbm",
    "export_torch",
    "float32_thresholds",
    "optimise",
    "quant_mode",
    "quantize",
    "unroll_gru",
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


#: The fused attention kernel of onnxruntime's CPU (and CUDA) providers (contrib domain ``com.microsoft``).
FUSED_ATTENTION_OP = "MultiHeadAttention"


def attention_heads(module: nn.Module) -> int | None:
    """The number of heads of every attention block of ``module`` that calls ``F.scaled_dot_product_attention``
    (:class:`hms_core.foundation.model.Block`), or None when it has none or blocks with different head counts
    (then the exporter's own attention graph is kept)."""
    from hms_core.foundation.model import Block

    heads = {int(m.heads) for m in module.modules() if isinstance(m, Block)}
    return heads.pop() if len(heads) == 1 else None


@contextlib.contextmanager
def fused_attention(heads: int | None, opset: int) -> Any:
    """While exporting with the TorchScript exporter, ``aten::scaled_dot_product_attention`` with a broadcast
    boolean key-padding mask ``(B, 1, 1, L)`` (the foundation encoder's) becomes one ``com.microsoft``
    ``MultiHeadAttention`` node (query/key/value ``(B, L, heads * head_dim)``, ``key_padding_mask (B, L)`` int32,
    scale ``1/sqrt(head_dim)``: the maths of SDPA); any other call keeps torch's own decomposition.

    The stock decomposition (MatMul, Where over a float mask, Softmax, a NaN guard over the whole ``(B, heads, L, L)``
    score tensor, MatMul) runs at about half of torch's fused CPU kernel; the contrib op runs the whole attention
    in one kernel. Masked keys get ``-10000`` instead of ``-inf`` before the softmax: ``exp`` underflows to 0 in
    float32 either way (no token row is fully masked: the encoder attends to every token of a window without a
    usable derivation). Parity is measured on every engine like any other export."""
    if heads is None:
        yield
        return
    from torch.onnx import symbolic_helper as sh
    from torch.onnx._internal.torchscript_exporter import _type_utils, symbolic_opset9, symbolic_opset14

    stock = symbolic_opset14.scaled_dot_product_attention

    @sh.parse_args("v", "v", "v", "v", "f", "b", "v", "b")
    def symbolic(g: Any, query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0,
                 is_causal: bool = False, scale: Any = None, enable_gqa: bool = False) -> Any:  # fmt: skip
        mask_ok = (
            not sh._is_none(attn_mask)
            and _type_utils.JitScalarType.from_value(attn_mask) == _type_utils.JitScalarType.BOOL
            and sh._get_tensor_rank(attn_mask) == 4
            and (sh._get_tensor_sizes(attn_mask) or [None] * 4)[1:3] == [1, 1]
        )
        if not mask_ok or is_causal or enable_gqa or dropout_p != 0.0 or not sh._is_none(scale):
            return stock.__wrapped__(g, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)

        def const(v: list[int]) -> Any:
            return g.op("Constant", value_t=torch.tensor(v, dtype=torch.int64))

        def bsd(t: Any) -> Any:  # (B, heads, L, head_dim) -> (B, L, heads * head_dim)
            return g.op("Reshape", g.op("Transpose", t, perm_i=[0, 2, 1, 3]), const([0, 0, -1]))

        mask = g.op("Cast", g.op("Reshape", attn_mask, const([0, -1])), to_i=6)  # (B, L) int32, 1 = attend
        out = g.op(f"com.microsoft::{FUSED_ATTENTION_OP}", bsd(query), bsd(key), bsd(value),
                   symbolic_opset9.unused(g), mask, num_heads_i=int(heads))  # fmt: skip
        return g.op("Transpose", g.op("Reshape", out, const([0, 0, int(heads), -1])), perm_i=[0, 2, 1, 3])

    name = "aten::scaled_dot_product_attention"
    torch.onnx.register_custom_op_symbolic(name, symbolic, int(opset))
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic(name, int(opset))


def count_ops(path: str | os.PathLike[str], op_type: str) -> int:
    """How many nodes of ``op_type`` the ONNX model at ``path`` has (e.g. :data:`FUSED_ATTENTION_OP`)."""
    import onnx

    return sum(n.op_type == op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


#: Rewrites of ``export.rewrites``: the same maths in a form onnxruntime's CPU kernels run faster (every engine is
#: still measured against the torch module it came from). ``unroll_gru``: :class:`UnrolledGRU` (torch side, before
#: export); ``conv1d_as_2d``: :func:`conv1d_as_2d` (on the saved graph).
REWRITES = ("unroll_gru", "conv1d_as_2d")


class UnrolledGRU(nn.Module):
    """A one-layer ``batch_first`` :class:`torch.nn.GRU` (uni- or bidirectional, zero initial state) as plain tensor
    ops over the fixed number of time steps of the export example: one MatMul projects the input of every step and
    direction, then each step advances both directions in one batched ``(D, B, H) @ (D, H, 3H)`` MatMul.

    onnxruntime's ``GRU`` kernel runs each step's small GEMMs through its thread pool (a hand-off per step and
    direction): a demo GRU member spent 56 % of its engine time there, about 5x what torch's own loop takes for the
    same layer. The unrolled graph runs the same maths (PyTorch's gate order r, z, n; ``n = tanh(W_in x + b_in +
    r * (W_hn h + b_hn))``) as a few hundred small nodes. The time axis is fixed by the export example (a member's
    input length is fixed by its input spec); the batch axis stays dynamic. ``forward`` returns ``(output, h_n)``
    like :class:`~torch.nn.GRU`."""

    def __init__(self, gru: nn.GRU) -> None:
        super().__init__()
        if not supports_unrolling(gru):
            raise ValueError("UnrolledGRU supports a one-layer batch_first nn.GRU without dropout between layers")
        hid = gru.hidden_size
        dirs = ["", "_reverse"] if gru.bidirectional else [""]

        def param(kind: str, d: str) -> torch.Tensor:
            return getattr(gru, f"{kind}_l0{d}").detach().float() if gru.bias or kind.startswith("weight") \
                else torch.zeros(3 * hid)  # fmt: skip

        b_hh = [param("bias_hh", d) for d in dirs]
        # the r and z biases of the recurrent product add linearly: folded into the input projection's bias
        b_in = [param("bias_ih", d) + torch.cat([b[: 2 * hid], torch.zeros(hid)]) for d, b in zip(dirs, b_hh)]
        self.register_buffer("w_in", torch.cat([param("weight_ih", d) for d in dirs], 0).t().contiguous())
        self.register_buffer("b_in", torch.cat(b_in, 0))
        self.register_buffer("w_hh", torch.stack([param("weight_hh", d).t() for d in dirs]).contiguous())
        self.register_buffer("b_hn", torch.stack([b[2 * hid :] for b in b_hh]).unsqueeze(1))
        self.hidden, self.dirs = hid, len(dirs)

    def forward(self, x: torch.Tensor, hx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if hx is not None:
            raise ValueError("UnrolledGRU starts from a zero state (as the exported models call their GRU)")
        steps, hid, d = x.shape[1], self.hidden, self.dirs
        g = (x @ self.w_in + self.b_in).reshape(x.shape[0], steps, d, 3 * hid).permute(1, 2, 0, 3)  # (T, D, B, 3H)
        if d == 2:  # the reverse direction reads the steps backwards
            g = torch.stack([g[:, 0], g[:, 1].flip(0)], 1)
        h = g[0, :, :, :hid] * 0.0  # (D, B, H) zeros; the batch size comes from the input
        outs = []
        for t in range(steps):
            gh = torch.matmul(h, self.w_hh)
            rz = torch.sigmoid(g[t, :, :, : 2 * hid] + gh[..., : 2 * hid])
            n = torch.tanh(g[t, :, :, 2 * hid :] + rz[..., :hid] * (gh[..., 2 * hid :] + self.b_hn))
            h = n + rz[..., hid:] * (h - n)
            outs.append(h)
        seq = torch.stack(outs, 0)  # (T, D, B, H)
        seq = torch.cat([seq[:, 0], seq[:, 1].flip(0)], -1) if d == 2 else seq[:, 0]
        return seq.transpose(0, 1), h


def supports_unrolling(gru: nn.Module) -> bool:
    return isinstance(gru, nn.GRU) and gru.num_layers == 1 and gru.batch_first and not gru.proj_size


def unroll_gru(module: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``module`` with every :func:`supports_unrolling` GRU replaced by :class:`UnrolledGRU`, and how
    many were replaced (0: ``module`` itself is returned)."""
    import copy

    if not any(supports_unrolling(m) for m in module.modules()):
        return module, 0
    out, n = copy.deepcopy(module), 0
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if supports_unrolling(child):
                setattr(parent, name, UnrolledGRU(child))
                n += 1
    return out.eval(), n


def conv1d_as_2d(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> int:
    """Rewrite every 1-D ``Conv`` / ``FusedConv`` of the ONNX model at ``src`` as a 2-D one of height 1 between an
    ``Unsqueeze`` and a ``Squeeze`` (weights ``(O, I, k) -> (O, I, 1, k)``, attributes likewise), save it to
    ``dst`` and return how many were rewritten.

    onnxruntime's load-time layout optimisation (level ``all``: blocked NCHWc convolutions for the CPU's vector
    width) covers 2-D convolutions only; 1-D ones run its generic im2col path. Run this on the optimised graph,
    after the batch-norm and activation fusions, which see the original 1-D convolutions."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    axes = "conv1d_as_2d/axes"
    nodes, n = [], 0
    for node in graph.node:
        w = inits.get(node.input[1]) if node.op_type in ("Conv", "FusedConv") and len(node.input) > 1 else None
        if w is None or len(w.dims) != 3:
            nodes.append(node)
            continue
        n += 1
        w4 = numpy_helper.from_array(numpy_helper.to_array(w)[:, :, None, :], f"{w.name}/as2d")
        graph.initializer.append(w4)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        k = int(attrs.get("kernel_shape", [w.dims[2]])[0])
        pads = list(attrs.get("pads", [0, 0]))
        attrs.update(kernel_shape=[1, k], strides=[1, *attrs.get("strides", [1])],
                     dilations=[1, *attrs.get("dilations", [1])], pads=[0, pads[0], 0, pads[1]])  # fmt: skip
        ins = list(node.input)
        for i in [0, *range(3, len(ins))]:  # the data input and FusedConv's optional sum input Z
            if ins[i]:
                nodes.append(helper.make_node("Unsqueeze", [ins[i], axes], [f"{ins[i]}/as2d_{node.name}"]))
                ins[i] = f"{ins[i]}/as2d_{node.name}"
        ins[1] = w4.name
        out = node.output[0]
        nodes.append(helper.make_node(node.op_type, ins, [f"{out}/as2d"], name=node.name, domain=node.domain,
                                      **attrs))  # fmt: skip
        nodes.append(helper.make_node("Squeeze", [f"{out}/as2d", axes], [out]))
    if not n:
        onnx.save(model, str(dst))
        return 0
    graph.initializer.append(numpy_helper.from_array(np.array([2], dtype=np.int64), axes))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for nd in graph.node for i in nd.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    with atomic_path(dst, suffix=".onnx") as tmp:
        onnx.save(model, str(tmp))
    return n


def export_torch(module: nn.Module, example: np.ndarray, path: str | os.PathLike[str], exporter: str,
                 opset: int = 18, fuse_attention: bool = True, unroll: bool = False) -> Path:  # fmt: skip
    """Export ``module`` (``x -> probs``) to ``path`` with a dynamic batch axis, with ``exporter`` (dynamo |
    torchscript). With ``fuse_attention`` the TorchScript exporter writes the attention blocks as onnxruntime's
    fused ``MultiHeadAttention`` (:func:`fused_attention`); with ``unroll`` its GRUs are exported as
    :class:`UnrolledGRU` (:func:`unroll_gru`). Raises whatever the exporter raises."""
    check_option("exporter", exporter, EXPORTERS[1:])
    module = module.eval()
    if unroll:
        module = unroll_gru(module)[0]
    x = torch.from_numpy(np.ascontiguousarray(example[: max(2, min(len(example), 3))]))
    if len(x) < 2:  # an example batch of 1 lets the exporters freeze the batch axis
        x = torch.cat([x, x])
    heads = attention_heads(module) if fuse_attention and exporter == "torchscript" else None
    with atomic_path(path, suffix=".onnx") as tmp, _quiet(), torch.no_grad(), fused_attention(heads, opset):
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
    import onnx
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
            # onnx's shape inference has no types for contrib ops (the fused MultiHeadAttention): every tensor of
            # these graphs is float32, and the value_info entries it could not type are dropped afterwards
            quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fmt: skip
            model = onnx.load(str(tmp))
            typed = [
                v for v in model.graph.value_info if v.type.tensor_type.elem_type != onnx.TensorProto.UNDEFINED
            ]
            if len(typed) != len(model.graph.value_info):
                del model.graph.value_info[:]
                model.graph.value_info.extend(typed)
                onnx.save(model, str(tmp))
        else:
            if calibration is None or len(calibration) == 0:
                raise ValueError("static int8 quantisation needs calibration inputs (training windows)")
            quantize_static(str(src), str(tmp), _Batches(calibration), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            calibrate_method=CalibrationMethod.MinMax)  # fmt: skip
    return Path(dst)
