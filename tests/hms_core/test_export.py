"""The deployment package (hms_core.export): inputs, blend, parity with the torch ensemble, manifest, no torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from hms_core.export import PackageError, combine, latest_package, load_package, member_inputs
from hms_core.export.runtime import resize_bilinear


def test_resize_bilinear_matches_torch_interpolate():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    for src, size in [
        ((2, 4, 8, 12), (3, 5)),
        ((1, 4, 5, 7), (16, 32)),
        ((2, 4, 9, 9), (9, 4)),
        ((1, 4, 6, 6), (6, 6)),
    ]:
        a = rng.normal(size=src).astype(np.float32)
        ref = F.interpolate(torch.from_numpy(a), size=size, mode="bilinear", align_corners=False).numpy()
        np.testing.assert_allclose(resize_bilinear(a, size), ref, atol=2e-6, rtol=0)


def test_combine_matches_the_ensemble_combiners_and_calibration():
    from hms_core.ensemble.calibration import Calibrator
    from hms_core.ensemble.combiners import make_combiner
    from hms_core.ensemble.nested import ensemble_predict

    rng = np.random.default_rng(1)
    names = ["a", "b", "c"]
    p = rng.dirichlet(np.ones(6), size=(3, 40))
    y = rng.dirichlet(np.ones(6) * 0.5, size=40)
    for kind in ("mean", "log_linear", "stacking"):
        comb = make_combiner(kind, names).fit(p, y)
        cal = Calibrator.fit(comb.predict(p), y)
        probs = dict(zip(names, p))
        want = ensemble_predict(comb, cal, probs)
        got = combine(json.loads(json.dumps(comb.to_dict())), json.loads(json.dumps(cal.to_dict())), probs)
        np.testing.assert_allclose(got, want, atol=1e-12, rtol=0)
        np.testing.assert_allclose(combine(comb.to_dict(), None, probs), comb.predict(p), atol=1e-12, rtol=0)


def test_member_inputs_from_process_windows_equal_the_training_path(
    deployment_package, trained_workspace, tmp_path
):
    """Serving preprocesses with process_windows and builds inputs in numpy; training wrote the same outputs to a
    partition and read them through RowDataset / feature_matrix. Both must give the model the same tensors."""
    from hms_core.constants import EEG_FILE_COLUMNS
    from hms_core.partition import Layout, load_partition, write_partition
    from hms_core.preprocess import process_windows
    from hms_core.training.data import RowDataset, all_rows
    from hms_core.training.inputs import InputSpec, feature_matrix

    pkg = load_package(deployment_package)
    eegs = sorted((trained_workspace.cfg.raw_dir / "train_eegs").glob("*.parquet"))[:3]
    windows = np.stack([pd.read_parquet(f)[list(EEG_FILE_COLUMNS)].to_numpy(np.float32)[:10000] for f in eegs])
    out = process_windows(windows, pkg.preprocessing, compute_features=True)
    layout = Layout.from_dict(pkg.meta["layout"])
    arrays = {"bipolar": out.bipolar, **{f"spec_{t}": a for t, a in out.spectrograms.items()}}
    index = pd.DataFrame({"eeg_id": np.arange(len(windows)), "patient_id": 1, "fold": 0})
    write_partition(tmp_path / "p", index, arrays, layout, features=out.features)
    part = load_partition(tmp_path / "p")
    kinds = set()
    for m in pkg.meta["members"]:
        got = member_inputs(m, out, pkg.meta["layout"])
        if m["input_kind"] == "features":
            want = feature_matrix(part, m["feature_names"])
        else:
            ds = RowDataset([part], all_rows(part), InputSpec.from_dict(m["input_spec"]), with_targets=False)
            want = np.stack([ds[i][0].numpy() for i in range(len(ds))])
        kinds.add(m["input_kind"])
        assert got.dtype == np.float32 and got.shape == want.shape, m["name"]
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6, err_msg=m["name"])
    assert kinds == {"raw", "spectrogram", "features"}


def _torch_ensemble(cfg, part, names):
    from hms_core.ensemble.build import load_ensemble
    from hms_core.training.predict import load_trained

    members = {}
    for name in names:
        mean = np.mean([load_trained(cfg.models_dir / name / f).predict(part) for f in cfg.fold_names], axis=0)
        members[name] = mean / mean.sum(axis=1, keepdims=True)
    return load_ensemble(cfg.ensemble_dir).predict(members), members


def test_package_reproduces_the_torch_ensemble_on_test_rows(deployment_package, trained_workspace):
    from hms_core.export.package import batch_from_partition
    from hms_core.partition import load_partition
    from hms_core.training.predict import PRED_COLUMNS

    cfg = trained_workspace.cfg
    pkg = load_package(deployment_package)
    assert pkg.classes == ["Seizure", "LPD", "GPD", "LRDA", "GRDA", "Other"] and pkg.max_missing_channels >= 0
    assert set(pkg.member_names) == set(cfg.ensemble_members())  # export.members: all
    part = load_partition(cfg.processed_dir / "windows" / "test")
    want, members = _torch_ensemble(cfg, part, pkg.member_names)
    pred = pkg.predict_batch(batch_from_partition(part), precision="fp32")
    tol = cfg.export.fp32_tolerance
    assert np.abs(pred.probs - want).max() <= tol
    for name, p in members.items():
        assert np.abs(pred.members[name] - p).max() <= tol, name
    # ... and the ensemble stage's own test predictions (test_pred.parquet, from the training runs)
    test_pred = pd.read_parquet(cfg.ensemble_dir / "test_pred.parquet").set_index("eeg_id")
    np.testing.assert_allclose(
        pred.probs, test_pred.loc[part.index["eeg_id"], list(PRED_COLUMNS)], atol=tol, rtol=0
    )
    assert pred.uncertainty.shape == pred.disagreement.shape == (len(part),)
    assert np.all(pred.uncertainty >= 0) and np.all(pred.disagreement >= 0)
    best = pkg.predict_batch(batch_from_partition(part), precision="best")
    assert best.precision == {m["name"]: m["best"] for m in pkg.meta["members"]}
    assert any("int8" in m["engines"] for m in pkg.meta["members"])  # int8 passed for some member
    assert (
        float(np.mean([np.sum(w * np.log(w / b)) for w, b in zip(want, best.probs)]))
        <= cfg.export.int8_kl_tolerance
    )
    card = (deployment_package / "model_card.md").read_text()
    assert "Intended use" in card and "95 % CI" in card and "Limits" in card
    assert pkg.reference is not None and pkg.meta["reference"] == "reference"


def test_runtime_imports_neither_torch_nor_scipy(deployment_package, trained_workspace, tmp_path):
    from hms_core.export.package import batch_from_partition
    from hms_core.partition import load_partition

    part = load_partition(trained_workspace.cfg.processed_dir / "windows" / "test")
    batch = batch_from_partition(part)
    np.savez(
        tmp_path / "batch.npz", bipolar=batch.bipolar, **{f"spec_{t}": a for t, a in batch.spectrograms.items()}
    )
    batch.features.to_parquet(tmp_path / "features.parquet")
    code = textwrap.dedent(f"""
        import json, sys
        from types import SimpleNamespace
        import numpy as np, pandas as pd
        import hms_core.export
        pkg = hms_core.export.load_package({str(deployment_package)!r})
        z = np.load({str(tmp_path / "batch.npz")!r})
        b = SimpleNamespace(bipolar=z["bipolar"], features=pd.read_parquet({str(tmp_path / "features.parquet")!r}),
                            spectrograms={{k[5:]: z[k] for k in z.files if k.startswith("spec_")}})
        pred = pkg.predict_batch(b, precision="best")
        print(json.dumps({{"probs": pred.probs.tolist(), "torch": "torch" in sys.modules,
                          "scipy": "scipy" in sys.modules}}))
    """)
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["torch"] is False and got["scipy"] is False
    want = load_package(deployment_package).predict_batch(batch, precision="best").probs
    np.testing.assert_allclose(np.asarray(got["probs"]), want, atol=1e-7, rtol=0)


def test_a_changed_missing_or_extra_file_is_refused_naming_it(deployment_package, tmp_path):
    pkg_dir = tmp_path / deployment_package.name
    shutil.copytree(deployment_package, pkg_dir)
    assert load_package(pkg_dir).version == pkg_dir.name
    engine = min(pkg_dir.glob("engines/*/fold_1.fp32.onnx"))
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=f"{engine.name}.*does not match its SHA-256"):
        load_package(pkg_dir)
    load_package(pkg_dir, verify=False)  # only verification refuses it
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    (pkg_dir / "engines" / "extra.onnx").write_bytes(b"x")
    with pytest.raises(PackageError, match="extra.onnx is not listed"):
        load_package(pkg_dir)
    (pkg_dir / "engines" / "extra.onnx").unlink()
    (pkg_dir / "model_card.md").unlink()
    with pytest.raises(PackageError, match="model_card.md is listed .* but missing"):
        load_package(pkg_dir)
    # the deployments folder resolves through latest.json to the newest package
    assert latest_package(deployment_package.parent) == deployment_package
    assert load_package(deployment_package.parent).path == deployment_package


def test_a_member_failing_parity_is_left_out_or_stops_the_package(deployment_package, trained_workspace, tmp_path):
    from copy import deepcopy

    from hms_core.export.package import build_package, load_engines
    from tests.conftest import copy_workspace

    ws = copy_workspace(trained_workspace, tmp_path / "copy")
    engines = load_engines(ws.cfg)
    kept = engines.doc["kept"]
    bad = deepcopy(engines)
    rec = next(
        r for r in bad.records if r["member"] == kept[0] and r["precision"] == "fp32" and r["fold"] == "fold_1"
    )
    rec.update(deployed=False, reason="parity 3.0e-02 > fp32_tolerance 0.0001")
    with pytest.raises(PackageError, match=f"no deployable fp32 engine for \\['{kept[0]}/fold_1'\\]"):
        build_package(ws.cfg, bad)
    reported = [m for m in engines.doc["members"] if m not in kept]
    if not reported:
        pytest.skip("the tiny ensemble kept every member: no reported-only member to leave out")
    bad = deepcopy(engines)
    bad.doc["members"] = [*kept, reported[0]]  # a small package: the blend's members + the one left out
    rec = next(r for r in bad.records if r["member"] == reported[0] and r["precision"] == "fp32")
    rec.update(deployed=False, reason="parity 3.0e-02 > fp32_tolerance 0.0001")
    res = build_package(ws.cfg, bad)
    assert [m["name"] for m in res.meta["members"]] == kept
    assert reported[0] in res.meta["left_out"]
    assert load_package(res.path).predict_batch  # the smaller package verifies and loads


def test_the_dynamo_exporter_passes_parity_on_a_cnn_member(trained_workspace, tmp_path):
    """``export.exporter: auto`` (demo, full) tries torch.onnx's dynamo exporter first; the tiny profile uses the
    TorchScript one (dynamo costs ~5-40 s per fold model). One member through dynamo, gated like the stage."""
    from hms_core.export.onnx_export import TTAProbs, export_torch
    from hms_core.export.package import _torch_reference, batch_from_partition
    from hms_core.export.runtime import make_session, run_probs
    from hms_core.partition import load_partition
    from hms_core.training.predict import load_trained

    cfg = trained_workspace.cfg
    tm = load_trained(cfg.models_dir / "efficientnet" / "fold_0")
    val = load_partition(cfg.processed_dir / "windows" / "fold_0")
    rows = np.arange(min(8, len(val)))
    entry = {"name": "efficientnet", "input_kind": tm.input_kind, "input_spec": tm.input_spec.to_dict()}
    x = member_inputs(entry, batch_from_partition(val, rows), val.layout.to_dict())
    path = export_torch(TTAProbs(tm.model, True), x, tmp_path / "e.onnx", "dynamo")
    p = run_probs(make_session(path, 2, ["CPUExecutionProvider"]), x)
    assert np.abs(p - _torch_reference(tm, val, rows)).max() <= cfg.export.fp32_tolerance
    assert run_probs(make_session(path, 2, ["CPUExecutionProvider"]), x[:1]).shape == (1, 6)  # dynamic batch


def test_lightgbm_engine_takes_lightgbm_branches_for_inputs_at_the_thresholds(tmp_path):
    """ONNX trees compare in float32: a double threshold rounded *up* by the converter sent inputs just above it
    down the wrong branch (3.7e-4 on a demo fold). Inputs placed on the float32 values next to every threshold
    must give LightGBM's probabilities."""
    import lightgbm as lgb
    import onnxruntime as ort

    from hms_core.export.onnx_export import export_lightgbm, float32_thresholds

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 4)) * rng.uniform(0.01, 1000, size=4)
    y = (x[:, 0] > 0).astype(int) + 2 * (x[:, 1] > x[:, 2])
    booster = lgb.train({"objective": "multiclass", "num_class": 4, "verbose": -1, "num_leaves": 8},
                        lgb.Dataset(x, y), num_boost_round=20)  # fmt: skip
    rounded = float32_thresholds(booster)
    splits = booster.trees_to_dataframe().dropna(subset=["threshold"])
    splits = splits[
        splits["threshold"].abs() > 1e-30
    ]  # not LightGBM's +-1e-35 "zero" splits (zero-as-missing band)
    probe = np.repeat(x[:1].astype(np.float32), 2 * len(splits), axis=0)
    for i, (feat, t) in enumerate(zip(splits["split_feature"], splits["threshold"], strict=True)):
        j = int(str(feat).removeprefix("Column_"))
        below = (
            np.float32(t) if np.float64(np.float32(t)) <= t else np.nextafter(np.float32(t), np.float32(-np.inf))
        )
        probe[2 * i, j], probe[2 * i + 1, j] = below, np.nextafter(below, np.float32(np.inf))
    want = booster.predict(probe.astype(np.float64))
    assert np.array_equal(rounded.predict(probe.astype(np.float64)), want)  # same model for float32 inputs
    path = export_lightgbm(booster, 4, tmp_path / "lgbm.onnx")
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["probs"], {"x": probe})[0]
    assert np.abs(got - want).max() < 1e-5


def test_merged_fold_graph_equals_the_mean_of_the_fold_engines(deployment_package, trained_workspace):
    """Each member's fold engines run as one graph (fold mean inside): the same probabilities as one session per
    fold averaged in numpy, for every member and precision."""
    from hms_core.export.package import batch_from_partition
    from hms_core.partition import load_partition

    part = load_partition(trained_workspace.cfg.processed_dir / "windows" / "test")
    batch = batch_from_partition(part)
    merged, per_fold = load_package(deployment_package), load_package(deployment_package, merged=False)
    for m in merged.meta["members"]:
        assert merged.merged_session(m["name"], "fp32") is not None, m["name"]
        x = member_inputs(m, batch, merged.meta["layout"])
        for prec in m["engines"]:
            a, _ = merged.member_probs_from_inputs(m["name"], x, prec)
            b, _ = per_fold.member_probs_from_inputs(m["name"], x, prec)
            assert np.abs(a - b).max() <= 1e-6, (m["name"], prec)
    np.testing.assert_allclose(merged.predict_batch(batch).probs, per_fold.predict_batch(batch).probs, atol=1e-6)


def test_attention_exports_as_the_fused_kernel_within_parity(deployment_package, tmp_path):
    """The foundation member's attention blocks are onnxruntime's MultiHeadAttention in the deployed engines
    (passed parity like every engine); SDPA with a key-padding mask through the same symbolic matches torch, and
    a call the fused op does not cover (causal) keeps torch's decomposition."""
    import onnxruntime as ort
    import torch
    import torch.nn.functional as F

    from hms_core.export.onnx_export import FUSED_ATTENTION_OP, count_ops, fused_attention
    from hms_core.foundation.model import Block

    pkg = load_package(deployment_package)
    foundation = [m for m in pkg.meta["members"] if m["name"] == "eeg_foundation"]
    assert foundation, "the tiny profile packages the foundation member"
    for m in foundation:
        for fold, rel in m["engines"]["fp32"].items():
            assert count_ops(pkg.path / rel, FUSED_ATTENTION_OP) >= 1, fold  # one per encoder block
            assert m["parity"]["fp32"][fold]["max_abs_diff"] <= pkg.meta["tolerances"]["fp32_max_abs"]

    class Causal(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = x.reshape(x.shape[0], x.shape[1], 2, 16).transpose(1, 2)
            return F.scaled_dot_product_attention(q, q, q, is_causal=True).transpose(1, 2).reshape(x.shape)

    torch.manual_seed(0)
    block = Block(32, 2, 64, 0.0).eval()
    x = torch.randn(3, 40, 32)
    keep = torch.ones(3, 40, dtype=torch.bool)
    keep[1, 10:30] = False
    for name, module, args, n_fused in (("block", block, (x, keep), 1), ("causal", Causal(), (x,), 0)):
        path = tmp_path / f"{name}.onnx"
        names = ["x", "keep"][: len(args)]
        with torch.no_grad(), fused_attention(2, 18):
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=18, input_names=names,
                              dynamic_axes={n: {0: "batch"} for n in names})  # fmt: skip
        assert count_ops(path, FUSED_ATTENTION_OP) == n_fused, name
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {n: a.numpy() for n, a in zip(names, args)})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, module(*args).numpy(), atol=1e-5, rtol=0, err_msg=name)


def test_unrolled_gru_and_1d_convs_as_2d_keep_the_outputs(tmp_path):
    """export.rewrites: UnrolledGRU computes nn.GRU's output and final state (both directions, with and without
    biases); the exported graph has no GRU node, keeps a dynamic batch axis, and after conv1d_as_2d (strided,
    padded, dilated, grouped 1-D convolutions, batch norm fused) gives the same probabilities as before."""
    import onnxruntime as ort
    import torch

    from hms_core.export.onnx_export import UnrolledGRU, conv1d_as_2d, count_ops, export_torch, optimise
    from hms_core.export.runtime import make_session, run_probs

    torch.manual_seed(0)
    x = torch.randn(3, 17, 5)
    for bidirectional, bias in ((True, True), (False, True), (True, False)):
        gru = torch.nn.GRU(5, 7, batch_first=True, bidirectional=bidirectional, bias=bias).eval()
        with torch.no_grad():
            (want, h_want), (got, h_got) = gru(x), UnrolledGRU(gru)(x)
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6, rtol=0)
        np.testing.assert_allclose(h_got.numpy(), h_want.numpy(), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="one-layer batch_first"):
        UnrolledGRU(torch.nn.GRU(5, 7, num_layers=2, batch_first=True))

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Sequential(
                torch.nn.Conv1d(4, 8, 7, stride=2, padding=3, bias=False), torch.nn.BatchNorm1d(8),
                torch.nn.ReLU(), torch.nn.Conv1d(8, 8, 3, padding=2, dilation=2, groups=2),
            )  # fmt: skip
            self.gru = torch.nn.GRU(8, 6, batch_first=True, bidirectional=True)
            self.head = torch.nn.Linear(12, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seq, _ = self.gru(self.conv(x).transpose(1, 2))
            return torch.softmax(self.head(seq.mean(1)), dim=1)

    net = Net().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        net.conv[1].running_mean.uniform_(-1, 1)
        net.conv[1].running_var.uniform_(0.5, 2)
    xs = np.random.default_rng(0).normal(size=(5, 4, 40)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(xs)).numpy()
    raw = export_torch(net, xs, tmp_path / "raw.onnx", "torchscript", unroll=True)
    assert count_ops(raw, "GRU") == 0
    opt = optimise(raw, tmp_path / "opt.onnx", "extended")
    before = run_probs(make_session(opt, 1, ["CPUExecutionProvider"]), xs)
    assert conv1d_as_2d(opt, tmp_path / "2d.onnx") == 2
    sess = make_session(tmp_path / "2d.onnx", 1, ["CPUExecutionProvider"])
    after = run_probs(sess, xs)
    np.testing.assert_allclose(after, before, atol=1e-6, rtol=0)
    np.testing.assert_allclose(after, want / want.sum(1, keepdims=True), atol=1e-5, rtol=0)
    assert run_probs(sess, xs[:1]).shape == (1, 6)  # the batch axis stays dynamic
    plain = ort.InferenceSession(str(tmp_path / "2d.onnx"), providers=["CPUExecutionProvider"])
    assert plain.run(None, {"x": xs})[0].shape == (5, 6)


def test_a_gru_member_runs_its_gru_kernel_engines_below_rewrite_min_batch(deployment_package, trained_workspace):
    """export.rewrites: the GRU member's main engines have no GRU node; its small_batch engines (exported without
    the rewrites) keep onnxruntime's GRU kernel and run batches below export.rewrite_min_batch; both agree with
    torch. A member the rewrites left unchanged (2-D CNN, features) has no small_batch engines."""
    from hms_core.export.onnx_export import count_ops
    from hms_core.export.package import _torch_reference, batch_from_partition
    from hms_core.partition import load_partition
    from hms_core.training.predict import load_trained

    cfg = trained_workspace.cfg
    pkg = load_package(deployment_package)
    m = pkg.member("resnet1d_gru")
    sb = m["small_batch"]
    assert sb["below"] == cfg.export.rewrite_min_batch > 1 and set(sb["engines"]["fp32"]) == set(m["folds"])
    assert "small_batch" in pkg.member("sparcnet")  # 1-D convolutions rewritten as 2-D
    assert all("small_batch" not in pkg.member(n) for n in ("efficientnet", "lightgbm") if n in pkg.member_names)
    for f in m["folds"]:
        assert count_ops(pkg.path / m["engines"]["fp32"][f], "GRU") == 0
        assert count_ops(pkg.path / sb["engines"]["fp32"][f], "GRU") == 1
    part = load_partition(cfg.processed_dir / "windows" / "test")
    rows = np.resize(np.arange(len(part)), sb["below"])
    x = member_inputs(m, batch_from_partition(part, rows), pkg.meta["layout"])
    want = np.mean([_torch_reference(load_trained(cfg.models_dir / "resnet1d_gru" / f), part, rows)
                    for f in m["folds"]], axis=0)  # fmt: skip
    want /= want.sum(axis=1, keepdims=True)
    assert pkg.engine_set(m, "fp32", len(x)) == "fp32" and pkg.engine_set(m, "fp32", len(x) - 1) == "fp32_small"
    big, _ = pkg.member_probs_from_inputs("resnet1d_gru", x)
    small, _ = pkg.member_probs_from_inputs("resnet1d_gru", x[:-1])
    tol = cfg.export.fp32_tolerance
    assert np.abs(big - want).max() <= tol and np.abs(small - want[:-1]).max() <= tol
    assert ("resnet1d_gru", "*", "fp32_small") in pkg._sessions and ("resnet1d_gru", "*", "fp32") in pkg._sessions
