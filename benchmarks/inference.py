"""Inference speed: torch eager vs onnxruntime fp32 vs int8, per member and for the whole ensemble, side by side.

    python -m benchmarks.inference [--config tiny] [--package PATH] [--threads 2] [--runs 15] [--batches 1 32]
                                   [--baseline PACKAGE] [--service [--requests 40 --concurrency 2]]

Reads the deployment package (default: ``latest.json`` under ``<root>/models/deployments`` of ``--config``) and the
workspace's trained fold models, builds each member's inputs once from rows of the test partition (repeated up to
the batch size) and times, in one process on ``--threads`` threads (torch intra-op = onnxruntime intra-op):

- per member (all its fold models, as the package runs it): torch eager (the very module each engine was exported
  from, :class:`~hms_core.export.onnx_export.TTAProbs`: softmax with flip TTA as one doubled batch, in
  ``torch.inference_mode``; LightGBM's own booster for the features member), the fp32 engines and the int8 engines
  (where the package has them), as the package runs them (each member's folds as one merged graph);
- the whole ensemble: every member + the combiner and calibration (``hms_core.ensemble`` for torch, numpy in the
  package), inputs built from the preprocessed rows on both sides (``member_inputs``); ``int8`` is the package's
  ``best`` precision; ``BLEND ONLY`` is what the service runs (the blend's members, not the reported ones).

``--baseline PACKAGE`` (a package of the same members, e.g. exported by an earlier version: without the fused
attention) adds its fp32 engines run as the runtime ran them before (one session per fold, load-time level
``basic``): ``base ms`` and ``x_<member>_b<batch>_new_vs_base`` (baseline time / fp32 time), side by side. With
``--baseline-runtime current`` the baseline runs with today's runtime (merged fold graph, level ``all``), so the
columns compare the engines alone (e.g. a package exported without ``export.rewrites``).

The variants run interleaved, repetition by repetition (so a busy machine slows all of them alike); the figure is
the median wall time, and the median CPU time of the process (every thread) per call beside it (``cpu x``: the
eager / fp32 ratio of CPU times, steadier than wall time on a shared machine). Run it with
``OMP_WAIT_POLICY=PASSIVE`` so torch's OpenMP threads sleep between calls as onnxruntime's do (spinning threads
inflate CPU time). On a CUDA machine the same is timed for torch CUDA and onnxruntime's CUDA provider (and TensorRT
when ``tensorrt`` imports), with the device named. ``--service`` adds the service latency from
:func:`benchmarks.service.service_benchmark` (a real ``hms serve`` under a bounded httpx load) to the same RESULT
line. The last line is

    RESULT threads=2 ... ensemble_b1_eager_ms=... ensemble_b1_fp32_ms=... speedup_fp32_b1=... speedup_cpu_fp32_b1=...
           ... x_<member>_b<batch>_fp32=... min_member_speedup_fp32_b32=... [service_p50_ms=... service_p95_ms=...
           service_cpu_ms_per_request=... server_preprocess_p50_ms=...] load_avg_1m=...
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["inference_benchmark", "main"]


def _load() -> float:
    return os.getloadavg()[0]


def _median_ms(fns: dict[str, Callable[[], Any]], runs: int) -> dict[str, float]:
    """Each function's median wall time (ms) over ``runs`` rounds, the functions interleaved within a round; the
    median CPU time of the process (all its threads, ms) per call under ``<name>_cpu``."""
    for f in fns.values():  # warm-up: first-call allocations, lazy session init
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for k, f in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t0) * 1e3)
            cpu[k].append((time.process_time() - c0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()} | {
        f"{k}_cpu": statistics.median(v) for k, v in cpu.items()
    }


def _batch(batch: Any, n: int) -> Any:
    from types import SimpleNamespace

    idx = np.resize(np.arange(len(batch.bipolar)), n)
    feats = None if batch.features is None else batch.features.iloc[idx].reset_index(drop=True)
    return SimpleNamespace(bipolar=batch.bipolar[idx], spectrograms={t: a[idx] for t, a in batch.spectrograms.items()},
                           features=feats)  # fmt: skip


def _eager(models: list[Any], x: np.ndarray) -> Callable[[], np.ndarray]:
    """A member's eager prediction over its fold models (mean): the module each engine was exported from
    (:class:`~hms_core.export.onnx_export.TTAProbs`: softmax, flip TTA as one doubled batch), in
    ``torch.inference_mode``, on torch's own kernels (its fused CPU attention included)."""
    import torch

    from hms_core.export.onnx_export import TTAProbs

    if models[0].input_kind == "features":
        return lambda: np.mean([m.model.predict_proba(x) for m in models], axis=0)
    xt = torch.from_numpy(x)
    mods = [TTAProbs(m.model, m.config["training"].get("flip_tta", True)).eval() for m in models]

    @torch.inference_mode()
    def run() -> np.ndarray:
        return np.mean([mod(xt).numpy() for mod in mods], axis=0)

    return run


def inference_benchmark(package: str | Path, cfg: Any, threads: int = 2, runs: int = 15,
                        batches: tuple[int, ...] = (1, 32), log: Callable[[str], None] = print,
                        baseline: str | Path | None = None,
                        baseline_runtime: str = "old") -> dict[str, Any]:  # fmt: skip
    """The timings of the module docstring; returns the RESULT fields. ``baseline``: another package of the same
    members (e.g. one exported by an earlier version) run as the runtime ran engines before the fold merge and the
    load-time level ``all`` (``baseline_runtime="old"``: one session per fold, level ``basic``) or as the runtime
    runs them now (``"current"``), timed beside the others (``base ms``)."""
    import torch

    from hms_core.checks import check_option
    from hms_core.ensemble.build import load_ensemble
    from hms_core.export import load_package, member_inputs
    from hms_core.export.package import batch_from_partition
    from hms_core.partition import load_partition
    from hms_core.training.job import TEST_PARTITION
    from hms_core.training.predict import load_trained

    torch.set_num_threads(threads)
    pkg = load_package(package, threads=threads, providers=["CPUExecutionProvider"])
    models = {n: [load_trained(cfg.models_dir / n / f) for f in pkg.member(n)["folds"]] for n in pkg.member_names}
    ens = load_ensemble(cfg.ensemble_dir)
    base = batch_from_partition(load_partition(cfg.processed_dir / "windows" / TEST_PARTITION))
    pkg.warm_up("fp32")
    pkg.warm_up("best")
    old = None
    if baseline is not None:
        check_option("baseline_runtime", baseline_runtime, ("old", "current"))
        current = baseline_runtime == "current"
        old = load_package(baseline, threads=threads, providers=["CPUExecutionProvider"], merged=current,
                           level="all" if current else "basic")  # fmt: skip
        if sorted(old.member_names) != sorted(pkg.member_names):
            raise ValueError(f"--baseline {baseline} has members {old.member_names}, not {pkg.member_names}")
        old.warm_up("fp32")
    blend = pkg.blend_members
    base_how = ("merged folds, level all (the current runtime)" if baseline_runtime == "current"
                else "per-fold sessions, level basic")  # fmt: skip
    res: dict[str, Any] = {"threads": threads, "package": pkg.version, "members": len(pkg.member_names),
                           "blend_members": len(blend)}  # fmt: skip
    speed_fp32: dict[int, list[float]] = {}
    log(f"package {pkg.version} ({pkg.path}); {threads} threads (torch and onnxruntime); median of {runs} "
        f"interleaved runs; the blend uses {blend}; load average {_load():.1f}")  # fmt: skip
    log(f"{'member':<16}{'batch':>6}{'eager ms':>10}{'fp32 ms':>9}{'int8 ms':>9}{'fp32 x':>8}{'int8 x':>8}"
        f"{'cpu x':>7}" + (f"{'base ms':>9}{'base x':>8}" if old else "")
        + "  (cpu x: eager / fp32 CPU time" + (f"; base: the baseline package, {base_how})" if old else ")"))  # fmt: skip
    for b in batches:
        batch = _batch(base, b)
        speed_fp32[b] = []
        for name in pkg.member_names:
            m = pkg.member(name)
            x = member_inputs(m, batch, pkg.meta["layout"])
            fns = {"eager": _eager(models[name], x),
                   "fp32": lambda n=name, x=x: pkg.member_probs_from_inputs(n, x, "fp32")}  # fmt: skip
            if "int8" in m["engines"]:
                fns["int8"] = lambda n=name, x=x: pkg.member_probs_from_inputs(n, x, "int8")
            if old is not None:
                fns["base"] = lambda n=name, x=x: old.member_probs_from_inputs(n, x, "fp32")
            t = _median_ms(fns, runs)
            speed_fp32[b].append(t["eager"] / t["fp32"])
            i8 = t.get("int8")
            i8_ms = "-" if i8 is None else f"{i8:.2f}"
            i8_x = "-" if i8 is None else f"{t['eager'] / i8:.2f}"
            cpu_x = t["eager_cpu"] / max(t["fp32_cpu"], 1e-6)
            base_cols = f"{t['base']:>9.2f}{t['eager'] / t['base']:>8.2f}" if old is not None else ""
            log(f"{name:<16}{b:>6}{t['eager']:>10.2f}{t['fp32']:>9.2f}{i8_ms:>9}{t['eager'] / t['fp32']:>8.2f}"
                f"{i8_x:>8}{cpu_x:>7.2f}{base_cols}")  # fmt: skip
            if old is not None:
                res[f"x_{name}_b{b}_base"] = round(t["eager"] / t["base"], 2)
                res[f"x_{name}_b{b}_new_vs_base"] = round(t["base"] / t["fp32"], 2)
            res[f"{name}_b{b}_eager_ms"], res[f"{name}_b{b}_fp32_ms"] = round(t["eager"], 3), round(t["fp32"], 3)
            res[f"x_{name}_b{b}_fp32"] = round(t["eager"] / t["fp32"], 2)
            if i8 is not None:
                res[f"{name}_b{b}_int8_ms"] = round(i8, 3)
                res[f"x_{name}_b{b}_int8"] = round(t["eager"] / i8, 2)

        def torch_ensemble(batch=batch) -> np.ndarray:
            probs = {}
            for name in pkg.member_names:
                p = _eager(models[name], member_inputs(pkg.member(name), batch, pkg.meta["layout"]))()
                probs[name] = p / p.sum(axis=1, keepdims=True)
            return ens.predict(probs)

        fns = {"eager": torch_ensemble, "fp32": lambda batch=batch: pkg.predict_batch(batch, "fp32"),
               "int8": lambda batch=batch: pkg.predict_batch(batch, "best"),
               "served": lambda batch=batch: pkg.predict_batch(batch, "fp32", members=blend)}  # fmt: skip
        if old is not None:
            fns["base"] = lambda batch=batch: old.predict_batch(batch, "fp32")
        t = _median_ms(fns, runs)
        log(f"{'ENSEMBLE':<16}{b:>6}{t['eager']:>10.2f}{t['fp32']:>9.2f}{t['int8']:>9.2f}"
            f"{t['eager'] / t['fp32']:>8.2f}{t['eager'] / t['int8']:>8.2f}"
            f"{t['eager_cpu'] / max(t['fp32_cpu'], 1e-6):>7.2f}   (int8 = precision best)")  # fmt: skip
        log(f"{'BLEND ONLY':<16}{b:>6}{'':>10}{t['served']:>9.2f}{'':>9}{t['eager'] / t['served']:>8.2f}"
            f"{'':>8}{t['eager_cpu'] / max(t['served_cpu'], 1e-6):>7.2f}   (what the service runs: {blend})")  # fmt: skip
        if old is not None:
            log(f"{'BASELINE':<16}{b:>6}{'':>10}{t['base']:>9.2f}{'':>9}{t['eager'] / t['base']:>8.2f}{'':>8}"
                f"{t['eager_cpu'] / max(t['base_cpu'], 1e-6):>7.2f}   (the baseline package, {base_how}: "
                f"{t['base'] / t['fp32']:.2f}x the time of fp32)")  # fmt: skip
            res[f"speedup_base_b{b}"] = round(t["eager"] / t["base"], 2)
            res[f"new_vs_base_b{b}"] = round(t["base"] / t["fp32"], 2)
        for k in [k for k in ("eager", "fp32", "int8", "served", "base") if k in t]:
            res[f"ensemble_b{b}_{k}_ms"] = round(t[k], 3)
            res[f"ensemble_b{b}_{k}_cpu_ms"] = round(t[f"{k}_cpu"], 3)
        res[f"speedup_fp32_b{b}"] = round(t["eager"] / t["fp32"], 2)
        res[f"speedup_int8_b{b}"] = round(t["eager"] / t["int8"], 2)
        res[f"speedup_cpu_fp32_b{b}"] = round(t["eager_cpu"] / max(t["fp32_cpu"], 1e-6), 2)
        res[f"min_member_speedup_fp32_b{b}"] = round(min(speed_fp32[b]), 2)
    res["load_avg_1m"] = round(_load(), 2)
    res.update(gpu_benchmark(pkg, models, base, runs, log))
    return res


def gpu_benchmark(pkg: Any, models: dict[str, list[Any]], base: Any, runs: int,
                  log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """torch CUDA vs onnxruntime CUDA (and TensorRT fp16 when it imports) for every torch member at batch 32; on a
    machine without CUDA: ``gpu=none`` and why."""
    import importlib.util

    import onnxruntime as ort
    import torch

    from hms_core.export import member_inputs
    from hms_core.export.runtime import make_session, run_probs

    if not torch.cuda.is_available() or "CUDAExecutionProvider" not in ort.get_available_providers():
        why = "no CUDA device" if not torch.cuda.is_available() else "onnxruntime has no CUDAExecutionProvider"
        log(f"GPU: skipped ({why})")
        return {"gpu": "none"}
    device = torch.cuda.get_device_name(0)
    out: dict[str, Any] = {"gpu": device.replace(" ", "_")}
    providers = {"ort_cuda": ["CUDAExecutionProvider"]}
    if (
        importlib.util.find_spec("tensorrt") is not None
        and "TensorrtExecutionProvider" in ort.get_available_providers()
    ):
        providers["ort_trt_fp16"] = [
            ("TensorrtExecutionProvider", {"trt_fp16_enable": True}),
            "CUDAExecutionProvider",
        ]
    batch = _batch(base, 32)
    for name in pkg.member_names:
        m = pkg.member(name)
        if m["input_kind"] == "features":
            continue
        x = member_inputs(m, batch, pkg.meta["layout"])
        xt = torch.from_numpy(x).cuda()
        mods = [tm.model.cuda().eval() for tm in models[name]]

        @torch.inference_mode()
        def torch_cuda(mods=mods, xt=xt) -> None:
            for mod in mods:
                torch.softmax(mod(torch.cat([xt, mod.flip_input(xt)])), dim=1)
            torch.cuda.synchronize()

        fns: dict[str, Callable[[], Any]] = {"torch_cuda": torch_cuda}
        for label, prov in providers.items():
            sess = [make_session(pkg.path / m["engines"]["fp32"][f], pkg.threads, prov) for f in m["folds"]]
            fns[label] = lambda sess=sess, x=x: [run_probs(s, x) for s in sess]
        t = _median_ms(fns, runs)
        log(f"GPU {device} {name} b32: " + ", ".join(f"{k} {v:.2f} ms" for k, v in t.items()))
        out.update({f"{name}_b32_{k}_ms": round(v, 3) for k, v in t.items()})
        for tm in models[name]:
            tm.model.cpu()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from hms_core.config import load_config
    from hms_core.export import latest_package
    from hms_core.export.runtime import DEPLOYMENTS_DIR

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--package", type=Path, default=None, help="package folder (default: the workspace's latest)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--service", action="store_true", help="also the service latency (benchmarks.service)")
    ap.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a package of the same members timed beside, "
        "one session per fold at level basic (the runtime before the fold merge)",
    )
    ap.add_argument(
        "--baseline-runtime",
        choices=("old", "current"),
        default="old",
        help="run --baseline as the runtime before the fold merge (old) or as today's (current)",
    )
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    package = args.package or latest_package(cfg.models_dir / DEPLOYMENTS_DIR)
    res = inference_benchmark(package, cfg, args.threads, args.runs, tuple(args.batches), baseline=args.baseline,
                              baseline_runtime=args.baseline_runtime)  # fmt: skip
    if args.service:
        from benchmarks.service import service_benchmark

        res.update(service_benchmark(package, args.config, requests=args.requests, concurrency=args.concurrency))
    keys = [k for k in res if k.startswith(("threads", "members", "blend_members", "ensemble_", "speedup_",
                                            "new_vs_base", "min_member_", "x_", "service_", "server_", "load_avg",
                                            "gpu"))]  # fmt: skip
    print("RESULT " + " ".join(f"{k}={res[k]}" for k in keys), flush=True)
    return res


if __name__ == "__main__":
    main()
